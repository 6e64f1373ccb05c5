"""What `sdlora bake` does once its options (sdlora/commands/bake.py) are parsed."""
from __future__ import annotations

from pathlib import Path

from sdlora.files.streaming import clean_stale
from sdlora.inference.stack import parse_adapter_arg
from sdlora.tools.bake import bake


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
