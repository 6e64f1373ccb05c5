"""The DreamBooth-style trainer: config, data, caches, loop, checkpoints, samples.

    from sdlora.trainers import load_config, train
    result = train(load_config("my.toml", ["training.max_steps=200"]))
"""
from sdlora.trainers.config import TrainConfig, load_config
from sdlora.trainers.loop import Trainer, TrainingStopped, TrainResult, train

__all__ = ["TrainConfig", "load_config", "Trainer", "TrainResult", "TrainingStopped", "train"]
