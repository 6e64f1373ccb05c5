"""Text-to-image with the adapters of a model's stack, images that carry their parameters, strength sweeps.

    model = open_model("base.safetensors", tokenizer="tok/")
    stack = AdapterStack(model)
    stack.add("style.safetensors", strength=0.8)
    images = generate(model, "a castle <lora:ink:0.6>", seed=1, lora_dir="loras/")
    save_png(images[0], "out/castle.png")

Seeds: image i of a call uses ``seed + i`` (A1111's convention); the noise comes from a CPU generator, so a
seed gives the same picture on any device. Tags in the prompt (``sdlora.prompt_tags``) add adapters for
this call only. Every image carries A1111's ``parameters`` text:

    a castle <lora:ink:0.6> <lora:style:0.8>
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: base,
    Lora hashes: "ink: 1a2b3c4d5e6f, style: 0f9e8d7c6b5a", Version: sdlora 0.1.0

(adapters added through the stack rather than the prompt are written as tags after the prompt, so A1111
and other readers see every adapter with its strengths.) ``sweep`` renders a labelled grid: one column per
strength, one row per seed.
"""
from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from sdlora import __version__
from sdlora.inference import conditioning, prompt_tags, render, samplers
from sdlora.inference.embeddings import EmbeddingLibrary
from sdlora.errors import ConfigError
from sdlora.files.tensors import atomic_path
from sdlora.models import BaseModel
from sdlora.inference.stack import AdapterStack

MAX_SEED = 2**32 - 1


@dataclass
class Generated:
    """One image: PIL image, the float pixels it was made from, its seed and A1111 parameters text."""

    image: Image.Image
    array: np.ndarray  # (H, W, 3) float32 in [0, 1]
    seed: int
    parameters: str
    notes: list[str] = field(default_factory=list)  # what the call adjusted or could not apply


def seeds_for(seed: int | None, count: int) -> list[int]:
    """``count`` seeds from ``seed`` upward; a random start when ``seed`` is None or -1."""
    if seed is None or seed == -1:
        seed = random.randint(0, MAX_SEED)
    return [(int(seed) + i) % (MAX_SEED + 1) for i in range(max(1, int(count)))]


@contextlib.contextmanager
def prompt_adapters(model: BaseModel, tags: list[prompt_tags.Tag], lora_dir: str | Path | None
                    ) -> Iterator[AdapterStack | None]:
    """Apply a prompt's tags for the duration of the block: tags naming an adapter already in the stack
    set its strengths, others load the file from ``lora_dir``; all is undone afterwards."""
    if not tags:
        yield model.stack
        return
    stack = model.stack if model.stack is not None else AdapterStack(model)
    added: list[str] = []
    restore: list[tuple[str, float, float | None, str | None]] = []
    try:
        for tag in tags:
            if tag.name in stack:
                a = stack[tag.name]
                restore.append((a.name, a.strength, a.te_strength, a.block_spec))
                stack.set_strength(tag.name, tag.strength, te_strength=tag.te_strength,
                                   block_weights=tag.block_weights if tag.block_weights else a.block_spec)
            else:
                path = prompt_tags.find_adapter_file(tag.name, lora_dir)
                stack.add(path, name=tag.name, strength=tag.strength, te_strength=tag.te_strength,
                          block_weights=tag.block_weights)
                added.append(tag.name)
        yield stack
    finally:
        for name in reversed(added):
            stack.remove(name)
        for name, s, te, bw in reversed(restore):
            stack.set_strength(name, s, te_strength=te, block_weights=bw)


def parameters_text(model: BaseModel, prompt: str, negative_prompt: str, *, steps: int, sampler: str,
                    cfg: float, seed: int, width: int, height: int, extra: dict[str, str] | None = None) -> str:
    """A1111's ``parameters`` text. ``prompt`` is as the user wrote it (tags kept); adapters of the stack
    that it does not name are appended as tags, and every adapter's short hash goes in ``Lora hashes``."""
    named = {t.name for t in prompt_tags.parse_prompt(prompt)[1]}
    adapters = model.stack.describe() if model.stack is not None else []
    shown = prompt + "".join(
        " " + prompt_tags.format_tag(a["name"], a["strength"], a["te_strength"], a["block_weights"])
        for a in adapters if a["name"] not in named)
    lines = [shown]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    fields = [("Steps", str(steps)), ("Sampler", samplers.label(sampler)), ("CFG scale", f"{cfg:g}"),
              ("Seed", str(seed)), ("Size", f"{width}x{height}")]
    if model.model_hash():
        fields.append(("Model hash", model.model_hash()))
    fields.append(("Model", model.name))
    hashes = [f"{a['name']}: {a['short_hash']}" for a in adapters if a["short_hash"]]
    if hashes:
        fields.append(("Lora hashes", '"' + ", ".join(hashes) + '"'))
    fields += list((extra or {}).items())
    fields.append(("Version", f"sdlora {__version__}"))
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def to_pil(array: np.ndarray) -> Image.Image:
    """(H, W, 3) floats in [0, 1] -> an RGB image."""
    return Image.fromarray((array * 255).round().clip(0, 255).astype(np.uint8))


def _render(model: BaseModel, prompt: str, negative_prompt: str, seed: int, steps: int, cfg: float,
            width: int, height: int, on_step: Any, **encoding: Any) -> np.ndarray:
    """One image as (H, W, 3) floats in [0, 1]; ``prompt`` has no tags left. ``encoding``: clip_skip,
    syntax, embeddings (``conditioning.build``)."""
    cond = conditioning.build(model, prompt, negative_prompt, **encoding)
    kwargs = conditioning.to_device(cond.kwargs, model.unet.device)
    return render.render(model, kwargs, [seed], render.Job(int(steps), float(cfg), width, height), on_step)[0]


def _progress(total: int, enabled: bool) -> tuple[Any, Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="sdlora", unit="step", disable=not enabled)

    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        bar.update(1)
        return kwargs

    return bar, on_step


def _prepare(model: BaseModel, sampler: str, width: int | None, height: int | None) -> tuple[int, int]:
    model.pipe.scheduler = samplers.make_scheduler(sampler, model.base_scheduler, model.prediction_type)
    model.pipe.set_progress_bar_config(disable=True)
    size = model.default_size
    return int(width or size), int(height or size)


def _batches(seeds: list[int], size: int) -> list[list[int]]:
    size = max(1, int(size))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def _job_fields(job: render.Job) -> dict[str, str]:
    return {"Denoising strength": f"{job.denoise:g}"} if job.mode != "txt2img" else {}


def generate(model: BaseModel, prompt: str, negative_prompt: str = "", *, seed: int | None = None,
             steps: int = 20, cfg: float = 7.0, sampler: str = "euler a", width: int | None = None,
             height: int | None = None, count: int = 1, lora_dir: str | Path | None = None,
             progress: bool = True, batch_size: int = 1, clip_skip: int | None = None, prompt_syntax: bool = True,
             embeddings: EmbeddingLibrary | None = None, init_image: Any = None, mask: Any = None,
             denoise: float | None = None, extra_fields: dict[str, str] | None = None) -> list[Generated]:
    """``count`` images for ``prompt`` with the model's adapters (its stack, plus the prompt's tags),
    ``batch_size`` per pipeline pass (image i is the same picture either way). Prompts are read with A1111's
    syntax (``sdlora.inference.prompts``) unless ``prompt_syntax`` is False; ``clip_skip`` defaults to the
    adapters' ``ss_clip_skip`` when they agree; ``embeddings`` resolves textual inversions; ``init_image``
    (a path or PIL image) with ``denoise`` makes it img2img, plus ``mask`` inpainting. ``width``/``height``
    default to the model's native size. Raises ConfigError for an unknown sampler or bad inputs and
    AdapterFileError for a tag whose adapter is not found. Each image's ``notes`` say what was adjusted."""
    clean, tags = prompt_tags.parse_prompt(prompt)
    samplers.label(sampler)  # unknown names fail before any work
    w, h = _prepare(model, sampler, width, height)
    job = render.load_inputs(render.Job(int(steps), float(cfg), w, h), init_image, mask, denoise)
    seeds = seeds_for(seed, count)
    out: list[Generated] = []
    with prompt_adapters(model, tags, lora_dir):
        cond = conditioning.build(model, clean, negative_prompt, clip_skip=clip_skip, syntax=prompt_syntax,
                                  embeddings=embeddings)
        kwargs = conditioning.to_device(cond.kwargs, model.unet.device)
        fields = {**_job_fields(job), **cond.fields, **(extra_fields or {})}
        notes = job.notes + cond.notes
        run_steps = steps if job.mode == "txt2img" else max(1, int(steps * job.denoise))
        batches = _batches(seeds, batch_size)
        bar, on_step = _progress(len(batches) * run_steps, progress)  # one tick per pipeline step
        with bar:
            for batch in batches:
                for s, array in zip(batch, render.render(model, kwargs, batch, job, on_step)):
                    text = parameters_text(model, prompt, negative_prompt, steps=steps, sampler=sampler, cfg=cfg,
                                           seed=s, width=w, height=h, extra=fields)
                    out.append(Generated(to_pil(array), array, s, text, notes))
    return out


def save_png(image: Generated | Image.Image, path: str | Path, parameters: str | None = None) -> Path:
    """Write a PNG with its ``parameters`` text chunk, atomically."""
    pil = image.image if isinstance(image, Generated) else image
    text = image.parameters if isinstance(image, Generated) and parameters is None else parameters
    info = PngInfo()
    if text:
        info.add_text("parameters", text)
    path = Path(path)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", pnginfo=info)
    return path


def read_parameters(path: str | Path) -> str | None:
    """The ``parameters`` text of a PNG (as A1111 writes and reads it), or None."""
    with Image.open(path) as im:
        return im.info.get("parameters")


def next_index(folder: str | Path) -> int:
    """The next free image number in ``folder`` (files named ``NNNNN-...png``)."""
    folder = Path(folder)
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
    return max(numbers, default=-1) + 1


# ------------------------------------------------------------------------------------------- sweeps
def sweep(model: BaseModel, prompt: str, strengths: Sequence[float] | None = None, *,
          adapter: str | None = None, negative_prompt: str = "", seed: int | None = None, count: int = 1,
          steps: int = 20, cfg: float = 7.0, sampler: str = "euler a", width: int | None = None,
          height: int | None = None, lora_dir: str | Path | None = None,
          progress: bool = True, clip_skip: int | None = None, prompt_syntax: bool = True,
          embeddings: EmbeddingLibrary | None = None) -> Generated:
    """A labelled grid: one column per strength in ``strengths`` (applied to ``adapter``, or to every adapter
    of the stack and the prompt), one row per seed (``count`` seeds from ``seed``). Text-encoder strengths
    follow the strength unless set separately. Strengths are restored afterwards. Returns the grid with the
    first cell's parameters plus a ``Sweep`` field."""
    clean, tags = prompt_tags.parse_prompt(prompt)
    samplers.label(sampler)
    w, h = _prepare(model, sampler, width, height)
    seeds = seeds_for(seed, count)
    columns = list(strengths) if strengths else [None]
    with prompt_adapters(model, tags, lora_dir) as stack:
        targets = [adapter] if adapter else [a.name for a in stack] if stack is not None else []
        if strengths and not targets:
            raise ConfigError("a strength sweep needs at least one adapter (--lora or a <lora:...> tag)")
        saved = [(n, stack[n].strength) for n in targets]
        cells: list[list[np.ndarray]] = [[] for _ in seeds]
        first_text = ""
        bar, on_step = _progress(len(seeds) * len(columns) * steps, progress)
        try:
            with bar:
                for value in columns:
                    for name in targets if value is not None else []:
                        stack.set_strength(name, value)
                    for row, s in enumerate(seeds):
                        cells[row].append(_render(model, clean, negative_prompt, s, steps, cfg, w, h, on_step,
                                                  clip_skip=clip_skip, syntax=prompt_syntax, embeddings=embeddings))
                        if not first_text:
                            first_text = parameters_text(model, prompt, negative_prompt, steps=steps,
                                                         sampler=sampler, cfg=cfg, seed=s, width=w, height=h)
        finally:
            for name, value in saved:
                stack.set_strength(name, value)
    who = adapter or ", ".join(targets) or "model"
    col_labels = [f"{who}: {v:g}" if v is not None else "" for v in columns]
    grid = grid_image(cells, col_labels, [f"seed {s}" for s in seeds])
    values = ", ".join(f"{v:g}" for v in strengths) if strengths else "-"
    text = first_text + f', Sweep: "{who}: {values}; seeds {seeds[0]}..{seeds[-1]}"'
    return Generated(grid, np.asarray(grid, dtype=np.float32) / 255.0, seeds[0], text)


def grid_image(cells: list[list[np.ndarray]], column_labels: list[str], row_labels: list[str]) -> Image.Image:
    """Cells (rows of (H, W, 3) float images) on a white sheet with a label above each column and left of
    each row."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        box = probe.textbbox((0, 0), text, font=font)
        return box[2] - box[0], box[3] - box[1]

    h, w = cells[0][0].shape[:2]
    pad = 4
    left = max((size(t)[0] for t in row_labels), default=0) + 2 * pad
    top = max((size(t)[1] for t in column_labels if t), default=0) + 2 * pad
    col_w = max(w, max((size(t)[0] for t in column_labels), default=0) + 2 * pad)
    sheet = Image.new("RGB", (left + col_w * len(cells[0]), top + h * len(cells)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(column_labels):
        draw.text((left + c * col_w + (col_w - size(text)[0]) // 2, pad), text, fill="black", font=font)
    for r, row in enumerate(cells):
        y = top + r * h
        draw.text((pad, y + (h - size(row_labels[r])[1]) // 2), row_labels[r], fill="black", font=font)
        for c, cell in enumerate(row):
            sheet.paste(to_pil(cell), (left + c * col_w + (col_w - w) // 2, y))
    return sheet
