"""What `sdlora train` does once its options (sdlora/commands/train.py) are parsed."""
from __future__ import annotations

from pathlib import Path

from sdlora.adapters.clients import LYCORIS_MODULE, kohya_cannot_load
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
    problem = kohya_cannot_load(trainer.network)
    if problem is not None:
        print(f"sdlora: note: kohya's own LoRA loader (networks.lora) cannot read this network: {problem}; the file "
              f"is labelled {LYCORIS_MODULE!r} so A1111/Forge and kohya route it to the LyCORIS loader (ComfyUI and "
              "LyCORIS read it as it is)")
    if args.check:
        print(f"config is valid; {trainer.total_steps} steps of {len(trainer.dataset.items)} images would be trained")
        return 0
    result = trainer.run()
    return 130 if result.interrupted else 0
