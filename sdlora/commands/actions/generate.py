"""What `sdlora generate` does once its options (sdlora/commands/generate.py) are parsed."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from sdlora.errors import ConfigError
from sdlora.files import tensors as files
from sdlora.inference import samplers
from sdlora.inference.embeddings import EmbeddingLibrary, encoder_widths
from sdlora.inference.generate import generate, next_index, save_png, sweep
from sdlora.inference.rerender import png_arguments
from sdlora.inference.stack import AdapterStack, parse_adapter_arg
from sdlora.models import open_model
from sdlora.models.vae_file import replace_vae


def _parse_sweep(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {text!r}: give comma-separated strengths, e.g. 0,0.25,0.5,0.75,1") from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def _note(lines: list[str]) -> None:
    for line in dict.fromkeys(lines):
        print(f"sdlora: note: {line}", file=sys.stderr)


def _check_numbers(args) -> None:
    """Steps, size, CFG and the output folder: a sentence before any model is opened."""
    if args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: give 1 or more sampling steps (20 is usual)")
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value is not None and (value < 8 or value % 8):
            raise ConfigError(f"{flag} {value}: give a multiple of 8 (the VAE works on 8x8 pixel cells), "
                              f"e.g. {max(8, value // 8 * 8)}")
    if not math.isfinite(args.cfg):
        raise ConfigError(f"--cfg {args.cfg}: give a finite guidance scale (7 is usual)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: this is a file; --out names a folder for the PNGs")


def _check_args(args) -> None:
    if args.prompt is None and args.from_png is None:
        raise ConfigError("give --prompt TEXT (or --from-png IMAGE.png to re-render an image from its parameters)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give 1 or more images per pass")
    _check_numbers(args)
    if args.sweep or args.sweep_lora:
        clash = [flag for flag, on in (("--from-png", args.from_png), ("--init-image", args.init_image),
                                       ("--mask", args.mask), ("--batch-size", args.batch_size > 1)) if on]
        if clash:
            raise ConfigError(f"--sweep renders a text-to-image grid one cell at a time; it does not combine "
                              f"with {', '.join(clash)}")


def run(args) -> int:
    _check_args(args)
    samplers.label(args.sampler)  # fail on a bad name before loading anything
    strengths = _parse_sweep(args.sweep)
    specs = [parse_adapter_arg(s) for s in args.lora]
    device = _device(args.device)
    dtype = None if args.dtype == "auto" else files.parse_dtype(args.dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = open_model(args.model, family=args.family, prediction_type=args.prediction_type, dtype=dtype,
                       tokenizer=args.tokenizer, config=args.config)
    extra = {}
    if args.vae:
        replace_vae(model, args.vae)
        extra["VAE"] = Path(args.vae).stem
    library = None
    if args.embedding or args.embeddings_dir:
        library = EmbeddingLibrary(encoder_widths(model), args.embedding, args.embeddings_dir, args.allow_pickle)
    model.pipe.to(device)
    stack = AdapterStack(model, strict=not args.no_strict)
    for spec in specs:
        stack.add(spec.path, strength=spec.strength, te_strength=spec.te_strength, block_weights=spec.block_weights)
    if args.mode == "fused":
        stack.fuse()
    common = dict(negative_prompt=args.negative_prompt, seed=args.seed, count=args.count, steps=args.steps,
                  cfg=args.cfg, sampler=args.sampler, width=args.width, height=args.height, lora_dir=args.lora_dir,
                  progress=not args.quiet)
    out = Path(args.out)
    if args.sweep or args.sweep_lora:
        grid = sweep(model, args.prompt, strengths, adapter=args.sweep_lora, clip_skip=args.clip_skip,
                     prompt_syntax=not args.plain_prompts, embeddings=library, **common)
        path = save_png(grid, out / f"{next_index(out):05d}-sweep-{grid.seed}.png")
        print(path)
        return 0
    common.update(batch_size=args.batch_size, clip_skip=args.clip_skip, prompt_syntax=not args.plain_prompts,
                  embeddings=library, init_image=args.init_image, mask=args.mask, denoise=args.denoise,
                  extra_fields=extra, prompt=args.prompt)
    if args.from_png:
        found, notes = png_arguments(args.from_png, model, args.lora_dir)
        _note(notes)
        common.update(found)
    images = generate(model, **common)
    _note(images[0].notes if images else [])
    index = next_index(out)
    for i, image in enumerate(images):
        print(save_png(image, out / f"{index + i:05d}-{image.seed}.png"))
    return 0
