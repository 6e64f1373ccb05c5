"""Adapter modules (LoRA/LoCon, LoHa, LoKr, DoRA, full deltas) and the Network that attaches them.

This layer knows torch layers and tensors only: never file keys, never model families.
"""
from sdlora.networks.base import AdapterModule
from sdlora.networks.full import FullModule, NormModule
from sdlora.networks.loha import LoHaModule
from sdlora.networks.lokr import LoKrModule, factorization
from sdlora.networks.lora import LoRAModule
from sdlora.networks.network import ALGORITHMS, PRESETS, file_algorithm, Network, NetworkConfig, preset_modules, select_modules, module_key, split_module_key

__all__ = [
    "AdapterModule", "LoRAModule", "LoHaModule", "LoKrModule", "FullModule", "NormModule", "factorization",
    "ALGORITHMS", "PRESETS", "file_algorithm", "Network", "NetworkConfig", "preset_modules", "select_modules", "module_key", "split_module_key",
]
