"""`sdlora inspect FILE [--json]`: what an adapter file holds, without a model."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show what an adapter file holds (algorithms, family, ranks, metadata)")
    p.add_argument("file", help="adapter file (.safetensors)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--allow-pickle", action="store_true", help="read a .ckpt/.pt file (weights only)")
    p.set_defaults(func="sdlora.commands.actions.inspect:run")
