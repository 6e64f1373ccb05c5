"""Adapter modules (LoRA/LoCon, LoHa, LoKr, DoRA, full deltas) and the Network that attaches them.

This layer knows torch layers and tensors only: never file keys, never model families.
"""
from .base import AdapterModule
from .full import FullModule, NormModule
from .loha import LoHaModule
from .lokr import LoKrModule, factorization
from .lora import LoRAModule
from .network import ALGORITHMS, PRESETS, Network, NetworkConfig, preset_modules, select_modules, slot, unslot

__all__ = [
    "AdapterModule", "LoRAModule", "LoHaModule", "LoKrModule", "FullModule", "NormModule", "factorization",
    "ALGORITHMS", "PRESETS", "Network", "NetworkConfig", "preset_modules", "select_modules", "slot", "unslot",
]
