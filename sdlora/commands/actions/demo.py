"""What `sdlora demo` does once its options (sdlora/commands/demo.py) are parsed."""
from __future__ import annotations

from sdlora.toy.demo import run_demo


def run(args) -> int:
    run_demo(args.out, steps=args.steps, seed=args.seed, per_prompt=args.per_prompt)
    return 0
