"""What `sdlora convert` does once its options (sdlora/commands/convert.py) are parsed."""
from __future__ import annotations

from sdlora.tools import convert


def run(args) -> int:
    report = convert(args.file, args.out, to=args.to, unet_names=args.unet_names, model=args.model,
                     family=args.family, dora_columns=args.dora_columns)
    print(report.format())
    return 0
