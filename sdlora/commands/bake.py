"""`sdlora bake --model M --lora F:S [--lora ...] --out OUT [--format single-file|diffusers] [--dtype fp16]`."""
from __future__ import annotations

from pathlib import Path

from sdlora.files.streaming import clean_stale
from sdlora.tools.bake import bake
from sdlora.inference.stack import parse_adapter_arg
from sdlora.commands.generate import add_model_args


def run(args) -> int:
    specs = [parse_adapter_arg(s) for s in args.lora]
    target = Path(args.out)
    for line in clean_stale(target.parent, lambda name: name == target.name):  # what a killed bake left
        print(f"sdlora: note: {line}")
    out = bake(args.model, specs, args.out, format=args.format, dtype=args.dtype, tokenizer=args.tokenizer,
               family=args.family, prediction_type=args.prediction_type, config=args.config,
               strict=not args.no_strict, progress=not args.quiet)
    names = ", ".join(f"{s.path}:{s.strength:g}" for s in specs) or "no adapters"
    print(f"baked {names} into {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bake", help="fold adapters into a base model and save it",
                       description="Fold adapters at their strengths (text-encoder strengths and block weights "
                       "too) into the base model and write it as one original-layout .safetensors file or a "
                       "diffusers folder. Streams tensor by tensor; the output appears only when complete.")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file or folder")
    p.add_argument("--format", choices=("single-file", "diffusers"),
                   help="default: single-file for a .safetensors path, diffusers otherwise")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: as the base model stores it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
