"""What `sdlora extract` does once its options (sdlora/commands/extract.py) are parsed."""
from __future__ import annotations

from sdlora.tools import extract


def run(args) -> int:
    report = extract(args.base, args.tuned, args.out, rank=args.rank, conv_rank=args.conv_rank,
                     energy=args.energy, dtype=args.dtype)
    print(report.format())
    return 0
