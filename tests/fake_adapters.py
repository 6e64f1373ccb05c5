"""Adapter files and tokenizer folders for the model / stack / generate / bake tests: random (seeded) weights
large enough to change the tiny models' images, written in the kohya format sdlora writes."""
from __future__ import annotations

import pathlib

import torch

from sdlora.adapters import save_adapter
from sdlora.models import BaseModel
from sdlora.networks import Network, NetworkConfig
from tiny import tiny_tokenizer

STD = {"lora": 0.08, "loha": 0.35, "lokr": 0.2}


def make_adapter(model: BaseModel, path: str | pathlib.Path, *, algo: str = "lora", preset: str = "attn-mlp",
                 rank: int = 4, seed: int = 0, dora: bool = False) -> Network:
    """An adapter for ``model`` with random weights (alpha = rank/2), saved to ``path``; returns its Network
    (not attached)."""
    cfg = NetworkConfig(algo=algo, rank=rank, alpha=rank / 2, preset=preset, dora=dora)
    net = Network.create(model.components(), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.endswith("dora_scale"):
                p.copy_(torch.randn(p.shape, generator=gen) * STD[algo])
    save_adapter(net, path, model.family, unet_config=model.unet.config)
    return net


def tokenizer_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder holding the tiny byte-level CLIP tokenizer (vocab.json + merges.txt)."""
    folder = tmp_path / "tokenizer"
    tiny_tokenizer(folder)
    return folder
