"""sdlora: LoRA / LyCORIS adapters for Stable Diffusion (SD 1.x, SD 2.x, SDXL).

The public API, importable from here without knowing the layout:

    import sdlora
    model = sdlora.open_model("sdlora/assets/default")
    stack = sdlora.AdapterStack(model)
    stack.add("my-lora.safetensors", strength=0.8)
    sdlora.save_png(sdlora.generate(model, "a photo of sks", seed=1)[0], "out.png")

The names are loaded lazily (PEP 562): `import sdlora` itself imports neither torch nor diffusers; the
first use of a name imports the module that defines it (listed in _PUBLIC).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines (or re-exports) it
_PUBLIC: dict[str, str] = {
    "open_model": "sdlora.models",
    "AdapterStack": "sdlora.inference.stack",
    "AdapterSpec": "sdlora.inference.stack",
    "generate": "sdlora.inference.generate",
    "save_png": "sdlora.inference.generate",
    "bake": "sdlora.tools.bake",
    "load_adapter": "sdlora.adapters",
    "save_adapter": "sdlora.adapters",
    "Network": "sdlora.networks",
    "NetworkConfig": "sdlora.networks",
    "train": "sdlora.trainers",
    "load_config": "sdlora.trainers",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached here)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'sdlora' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
