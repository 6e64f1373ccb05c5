"""Adapter files <-> Networks: every dialect in, kohya/LyCORIS (or diffusers/PEFT) out, never silently.

read.py: ``AdapterFile`` (a file's tensors per module and what they hold); load.py: ``load_adapter`` and
its ``LoadReport``; metadata.py: ``build_metadata`` / ``peft_metadata``; write.py: ``adapter_tensors`` and
``save_adapter``.
"""
from sdlora.adapters.read import AdapterFile, module_algo, module_rank
from sdlora.adapters.load import LoadReport, adaptable_paths, module_from_file_tensors, load_adapter, unet_config_of
from sdlora.adapters.metadata import build_metadata, network_summary, peft_metadata
from sdlora.adapters.write import DIALECTS, adapter_tensors, module_name, save_adapter
from sdlora.models.families import BASE_MODEL_VERSION, FAMILY_NAMES, MODELSPEC_ARCH

__all__ = ["AdapterFile", "module_algo", "module_rank", "LoadReport", "adaptable_paths", "module_from_file_tensors",
           "load_adapter", "unet_config_of", "build_metadata", "network_summary", "peft_metadata", "DIALECTS",
           "adapter_tensors", "module_name", "save_adapter", "BASE_MODEL_VERSION", "FAMILY_NAMES",
           "MODELSPEC_ARCH"]
