"""One pass of the diffusers pipeline for several seeds: text-to-image, img2img or inpainting.

``render(model, conditioning, seeds, job)`` renders ``len(seeds)`` images in one batch. Image i's noise
comes from its own CPU generator seeded with ``seeds[i]`` (the start latents, and the sampler's noise for
ancestral samplers, are drawn per image), so image i is the same picture whether it is rendered alone or in
a batch; the batched UNet's arithmetic differs in the last bits (about 1e-6 on [0, 1] pixels on CPU).

img2img and inpainting run diffusers' own ``*Img2ImgPipeline`` / ``*InpaintPipeline`` built with
``from_pipe`` from the model's pipeline: the same UNet, VAE and text encoders, so the adapter stack applies.
The init image is resized to the render size (with a note); the mask (white = repaint) must be the init
image's size. ``denoise`` is diffusers' ``strength`` (A1111's "Denoising strength": steps x denoise are run).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdlora.errors import ConfigError
from sdlora.files import images

_DERIVED: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


@dataclass
class Job:
    """What every image of a call shares."""

    steps: int
    cfg: float
    width: int
    height: int
    init_image: Image.Image | None = None  # RGB, already at (width, height)
    mask: Image.Image | None = None  # L, at (width, height); needs init_image
    denoise: float = 0.75
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "inpaint" if self.mask is not None else "img2img" if self.init_image is not None else "txt2img"


def _open(path: str | Path, what: str) -> Image.Image:
    try:
        return images.decode(path).image
    except images.BadImage as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc})") from None


def load_inputs(job: Job, init_image: str | Path | Image.Image | None, mask: str | Path | Image.Image | None,
                denoise: float | None) -> Job:
    """``job`` with the init image (resized to the job's size, noted) and mask (the init image's size, else
    a ConfigError naming both) read and checked."""
    if mask is not None and init_image is None:
        raise ConfigError("--mask needs --init-image: inpainting repaints the white part of the mask on the "
                          "init image")
    if denoise is not None:
        if not 0.0 < float(denoise) <= 1.0:
            raise ConfigError(f"--denoise {denoise}: give a strength above 0 and at most 1 (e.g. 0.75)")
        job.denoise = float(denoise)
    if init_image is None:
        return job
    init = init_image.convert("RGB") if isinstance(init_image, Image.Image) else _open(init_image, "--init-image")
    size = (job.width, job.height)
    if mask is not None:
        m = mask if isinstance(mask, Image.Image) else _open(mask, "--mask")
        if m.size != init.size:
            raise ConfigError(f"--mask is {m.size[0]}x{m.size[1]} but the init image is {init.size[0]}x"
                              f"{init.size[1]}; give a mask of the init image's size (white = repaint)")
        job.mask = m.convert("L").resize(size, Image.Resampling.LANCZOS) if m.size != size else m.convert("L")
    if init.size != size:
        job.notes.append(f"the init image is {init.size[0]}x{init.size[1]}; resized to {size[0]}x{size[1]}")
        init = init.resize(size, Image.Resampling.LANCZOS)
    job.init_image = init
    return job


def pipeline_for(model: Any, mode: str) -> Any:
    """The model's pipeline for ``mode`` (txt2img, img2img, inpaint); the derived ones are made once per
    pipeline with ``from_pipe`` and share every component; they take the current scheduler each call."""
    if mode == "txt2img":
        return model.pipe
    cache = _DERIVED.setdefault(model.pipe, {})
    if mode not in cache:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = AutoPipelineForInpainting if mode == "inpaint" else AutoPipelineForImage2Image
        cache[mode] = auto.from_pipe(model.pipe)
    pipe = cache[mode]
    pipe.scheduler = model.pipe.scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(seeds: list[int]) -> torch.Generator | list[torch.Generator]:
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    return gens[0] if len(gens) == 1 else gens


@torch.no_grad()
def render(model: Any, conditioning: dict[str, torch.Tensor], seeds: list[int], job: Job,
           on_step: Any = None) -> list[np.ndarray]:
    """``len(seeds)`` images as (H, W, 3) float32 arrays in [0, 1]; ``conditioning`` is the pipeline's
    ``prompt_embeds`` / ``negative_prompt_embeds`` [/ pooled] for one image (repeated for the batch), or
    ``prompt`` / ``negative_prompt`` strings."""
    pipe = pipeline_for(model, job.mode)
    kwargs: dict[str, Any] = dict(conditioning, num_inference_steps=int(job.steps), guidance_scale=float(job.cfg),
                                  generator=_generators(seeds), num_images_per_prompt=len(seeds),
                                  output_type="np", callback_on_step_end=on_step)
    if job.mode == "txt2img":
        kwargs.update(width=int(job.width), height=int(job.height))
    else:
        kwargs.update(image=job.init_image, strength=float(job.denoise))
    if job.mode == "inpaint":
        kwargs.update(mask_image=job.mask, width=int(job.width), height=int(job.height))
    out = pipe(**kwargs)
    return [np.asarray(img, dtype=np.float32) for img in out.images]
