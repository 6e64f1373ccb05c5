"""`sdlora train CONFIG [--set section.key=value ...] [--resume DIR] [--check]`: learn an adapter."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("train", help="train a LoRA / LyCORIS adapter from an image folder (TOML config)",
                       description="Train an adapter. The adapter is written to <output.dir>/<output.name>.safetensors, "
                                   "resumable states to <output.dir>/state-N/.")
    p.add_argument("config", nargs="?", help="TOML config (see configs/); optional with --resume")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set training.max_steps=200 (repeatable)")
    p.add_argument("--resume", metavar="DIR", help="a state-N folder, or an output folder (its latest state)")
    p.add_argument("--check", action="store_true", help="validate the config, scan the data, open the model, build the network and caches, then stop")
    p.set_defaults(func="sdlora.commands.actions.train:run")
