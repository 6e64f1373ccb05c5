"""`sdlora demo [--out DIR]`: train, sweep, bake and evaluate on the embedded default model."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job end to end on the embedded default model (CPU, minutes)")
    p.add_argument("--out", default="sdlora-demo", help="folder for everything the demo writes")
    p.add_argument("--steps", type=int, default=1200, help="training steps")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--per-prompt", type=int, default=2, help="samples per prompt in the evaluation")
    p.set_defaults(func="sdlora.commands.actions.demo:run")
