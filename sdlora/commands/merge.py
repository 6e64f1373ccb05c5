"""`sdlora merge A.safetensors[:wA] B.safetensors[:wB] ... --out C [--method concat|svd] [--rank R | --energy E]`."""
from __future__ import annotations

from sdlora.commands.args import add_format_args, add_rank_args, add_reference_args


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge adapters into one whose ΔW is the weighted sum of theirs",
                       description="Merge adapters: the result's ΔW is Σ wᵢ·ΔWᵢ for every module. concat (the "
                       "default without --rank/--energy) stacks LoRA factors exactly; svd re-factorises the exact "
                       "sum of any algorithms to a rank and prints the error.")
    p.add_argument("inputs", nargs="+", metavar="FILE[:WEIGHT]", help="adapter files with optional weights (default 1)")
    p.add_argument("--method", choices=("concat", "svd"), help="concat (exact, LoRA inputs) or svd (any algorithm)")
    add_rank_args(p)
    add_reference_args(p)
    add_format_args(p)
    p.set_defaults(func="sdlora.commands.actions.merge:run")
