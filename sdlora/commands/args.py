"""argparse arguments the adapter-tool commands (merge, resize) share."""
from __future__ import annotations


def add_rank_args(p) -> None:
    p.add_argument("--rank", type=int, help="target rank of Linear and 1×1 conv modules (capped at full rank)")
    p.add_argument("--conv-rank", type=int, help="target rank of k×k conv modules (default: --rank)")
    p.add_argument("--energy", type=float, help="per module, the smallest rank keeping this share (0, 1] of ΔW's "
                   "squared singular values (capped by --rank)")


def add_reference_args(p) -> None:
    p.add_argument("--model", help="base model folder: needed for DoRA inputs (their change depends on W) and "
                   "for adapters of non-standard models; otherwise the family's shipped config is used")
    p.add_argument("--family", choices=("sd1", "sd2", "sdxl"), help="model family when the files do not say")


def add_format_args(p) -> None:
    p.add_argument("--to", choices=("kohya", "lycoris", "peft"), help="output format (default: the input's)")
    p.add_argument("--unet-names", choices=("sgm", "diffusers"), help="kohya UNet names (default: the input's)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="output precision (default: the input's)")
    p.add_argument("--out", required=True, help="output adapter file")
