"""What `sdlora resize` does once its options (sdlora/commands/resize.py) are parsed."""
from __future__ import annotations

from sdlora.tools import resize


def run(args) -> int:
    report = resize(args.file, args.out, rank=args.rank, energy=args.energy, conv_rank=args.conv_rank,
                    model=args.model, family=args.family, to=args.to, unet_names=args.unet_names, dtype=args.dtype)
    print(report.format())
    return 0
