"""`sdlora extract --base M0 --tuned M1 --rank R [--conv-rank R2] --out OUT`."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("extract", help="extract a LoRA/LoCon from the difference of two checkpoints",
                       description="ΔW = tuned − base per layer, factorised by SVD; prints the error report. The "
                       "tuned model's tensors are streamed from its files.")
    p.add_argument("--base", required=True, help="the base model (diffusers folder)")
    p.add_argument("--tuned", required=True, help="the fine-tuned or baked model of the same architecture")
    p.add_argument("--rank", type=int, help="rank of Linear and 1×1 conv layers")
    p.add_argument("--conv-rank", type=int, help="rank of k×k convs (default: --rank; 0 skips them)")
    p.add_argument("--energy", type=float, help="per layer, the smallest rank keeping this share (0, 1] of "
                   "ΔW's squared singular values (capped by --rank)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="output precision (default: the base's)")
    p.add_argument("--out", required=True, help="output adapter file")
    p.set_defaults(func="sdlora.commands.actions.extract:run")
