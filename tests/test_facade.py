"""The public façade: `import sdlora` is cheap, and each public name is the library's own object."""
from __future__ import annotations

import subprocess
import sys

import pytest

import sdlora
from sdlora.adapters import load_adapter, save_adapter
from sdlora.inference.generate import generate, save_png
from sdlora.inference.stack import AdapterSpec, AdapterStack
from sdlora.models import open_model
from sdlora.networks import Network, NetworkConfig
from sdlora.tools.bake import bake
from sdlora.trainers import load_config, train

EXPECTED = {"open_model": open_model, "AdapterStack": AdapterStack, "AdapterSpec": AdapterSpec, "generate": generate, "save_png": save_png,
            "bake": bake, "load_adapter": load_adapter, "save_adapter": save_adapter, "Network": Network,
            "NetworkConfig": NetworkConfig, "train": train, "load_config": load_config}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_public_name_is_the_real_object(name):
    assert getattr(sdlora, name) is EXPECTED[name]
    assert name in dir(sdlora) and name in sdlora.__all__


def test_the_public_names_are_exactly_these():
    assert set(sdlora.__all__) == set(EXPECTED) | {"__version__"}


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'open_modle'"):
        sdlora.open_modle  # noqa: B018
    assert not hasattr(sdlora, "Trainer")


def test_import_sdlora_loads_neither_torch_nor_diffusers():
    code = ("import sys, sdlora\nprint(sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors') "
            "if m in sys.modules), sdlora.__version__)\nsdlora.open_model\nprint('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert first == f"[] {sdlora.__version__}"
    assert second == "True"  # the first use of a name imports its module
