"""What `sdlora merge` does once its options (sdlora/commands/merge.py) are parsed."""
from __future__ import annotations

from sdlora.tools import merge, parse_input


def run(args) -> int:
    report = merge([parse_input(s) for s in args.inputs], args.out, method=args.method, rank=args.rank,
                   conv_rank=args.conv_rank, energy=args.energy, model=args.model, family=args.family,
                   to=args.to, unet_names=args.unet_names, dtype=args.dtype)
    print(report.format())
    return 0
