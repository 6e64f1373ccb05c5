"""What `sdlora train` does once its options (sdlora/commands/train.py) are parsed."""
from __future__ import annotations

from pathlib import Path

from sdlora.errors import ConfigError
from sdlora.trainers import Trainer, load_config
from sdlora.trainers.state import find_state


def run(args) -> int:
    config = args.config
    if config is None:
        if not args.resume:
            raise ConfigError("name a config file (sdlora train CONFIG.toml), or --resume an output folder")
        config = find_state(args.resume).parent / "config.toml"  # the resolved config saved with the states
    cfg = load_config(Path(config), args.set)
    trainer = Trainer(cfg, resume=args.resume)
    if args.check:
        print(f"config is valid; {trainer.total_steps} steps of {len(trainer.dataset.items)} images would be trained")
        return 0
    result = trainer.run()
    return 130 if result.interrupted else 0
