"""The LoHa/LoKr peer: the ``lycoris-lora`` package's modules, trained in the same loop as the PEFT peer
(``peer_peft.train``), on the same layers as sdlora.

sdlora's ``preset = "all"`` (every Linear and Conv2d of the UNet) is LyCORIS's ``full`` preset
(Transformer2DModel, ResnetBlock2D, Downsample2D, Upsample2D blocks plus conv_in, conv_out and the
time-embedding MLP); the runner checks that both adapt the same number of layers with the same number of
trainable parameters. The network is built as kohya's scripts and LyCORIS's own trainer build it:
``create_lycoris(unet, 1.0, linear_dim, linear_alpha, algo=..., preset="full", conv_dim, conv_alpha,
factor)``, then ``apply_to()`` (bypass of each layer's forward), then ``prepare_optimizer_params``.
"""
from __future__ import annotations

import peer_peft

_KEEP: list = []  # the network object must outlive the injection call


def lycoris_network(unet, p: dict) -> list:
    import torch
    from lycoris import create_lycoris

    kwargs = {"algo": p["algo"], "preset": "full"}
    if p.get("conv_rank") is not None:
        kwargs.update(conv_dim=p["conv_rank"], conv_alpha=p["conv_alpha"])
    if p.get("factor") is not None:
        kwargs["factor"] = p["factor"]
    net = create_lycoris(unet, 1.0, linear_dim=p["rank"], linear_alpha=p["alpha"], **kwargs)
    net.apply_to()
    net.to(next(unet.parameters()).device, torch.float32)
    _KEEP.append(net)
    params = [q for group in net.prepare_optimizer_params(p["lr"]) for q in group["params"]]
    return params


def count_layers(unet) -> int:
    return len(_KEEP[-1].loras)


def train(p: dict, on_step=None) -> dict:
    import logging

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    return peer_peft.train(p, adapter=lycoris_network, count_layers=count_layers, on_step=on_step)
