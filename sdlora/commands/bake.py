"""`sdlora bake --model M --lora F:S [--lora ...] --out OUT [--format single-file|diffusers] [--dtype fp16]`."""
from __future__ import annotations

from sdlora.commands.generate import add_model_args


def register(sub) -> None:
    p = sub.add_parser("bake", help="fold adapters into a base model and save it",
                       description="Fold adapters at their strengths (text-encoder strengths and block weights "
                       "too) into the base model and write it as one original-layout .safetensors file or a "
                       "diffusers folder. Streams tensor by tensor; the output appears only when complete.")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file or folder")
    p.add_argument("--format", choices=("single-file", "diffusers"),
                   help="default: single-file for a .safetensors path, diffusers otherwise")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: as the base model stores it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func="sdlora.commands.actions.bake:run")
