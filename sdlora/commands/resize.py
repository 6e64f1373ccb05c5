"""`sdlora resize FILE --rank R | --energy E [--conv-rank R2] --out OUT`."""
from __future__ import annotations

from sdlora.commands.args import add_format_args, add_rank_args, add_reference_args


def register(sub) -> None:
    p = sub.add_parser("resize", help="re-rank an adapter (any algorithm) into LoRA/LoCon by SVD",
                       description="Re-rank every module by SVD of its ΔW into a LoRA/LoCon; alpha/rank is kept so "
                       "a strength means the same. Prints the relative error overall and for the worst modules.")
    p.add_argument("file", help="adapter file (.safetensors)")
    add_rank_args(p)
    add_reference_args(p)
    add_format_args(p)
    p.set_defaults(func="sdlora.commands.actions.resize:run")
