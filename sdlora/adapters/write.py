"""Writing adapter files: ``adapter_tensors`` names a Network's tensors in a dialect; ``save_adapter`` adds the
kohya ``ss_*`` metadata, modelspec keys and hashes (or diffusers' adapter metadata), and writes atomically
through ``files``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdlora import keys
from sdlora.adapters.load import unet_config_of
from sdlora.adapters.metadata import build_metadata, peft_metadata
from sdlora.files import tensors as files
from sdlora.errors import AdapterFileError
from sdlora.networks import AdapterModule, Network
from sdlora.networks.lora import LoRAModule

DIALECTS = ("kohya", "peft")


def module_name(component: str, path: str, family: str, unet_config: Any, dialect: str = "kohya") -> str:
    if dialect == "kohya":
        return keys.kohya_name(component, path, family, unet_config)
    if dialect == "peft":
        return keys.peft_name(component, path)
    raise AdapterFileError(f"unknown key dialect {dialect!r}; use one of {', '.join(DIALECTS)}")


def adapter_tensors(network: Network, family: str, unet_config: Any = None, dialect: str = "kohya"
                    ) -> dict[str, torch.Tensor]:
    """The Network's tensors under file keys of ``dialect`` (kohya: ``lora_unet_…``; peft: ``unet.….lora_A.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for component, path, module in network.items_by_module():
        name = module_name(component, path, family, unet_config, dialect)
        state = {k: v.detach() for k, v in module.state_dict().items()}
        if dialect == "peft":
            state = _peft_state(module, state, name)
        for suffix, value in state.items():
            out[f"{name}.{suffix}"] = value.float() if suffix == "alpha" else value
    return out


def _peft_state(module: AdapterModule, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    if not isinstance(module, LoRAModule) or module.tucker or module.diff_b is not None:
        what = "Tucker LoRA" if isinstance(module, LoRAModule) and module.tucker else module.algo
        raise AdapterFileError(f"{name}: the diffusers/PEFT format holds plain LoRA/LoCon only, not {what}; "
                               "save it in the kohya format (it loads in diffusers too)")
    return peft_module_tensors(state, module.kind == "linear")


def peft_module_tensors(state: dict[str, torch.Tensor], linear: bool) -> dict[str, torch.Tensor]:
    """One plain LoRA/LoCon module's tensors under PEFT's names: the one PEFT writer.

    ``state`` has kohya's suffixes: down (r, in[, kh, kw]), up (out, r[, 1, 1]), optionally the DoRA
    magnitude with ``out`` values in any shape; PEFT's magnitude is (out,) for a Linear layer and
    (1, out, 1, 1) for a Conv2d (``linear`` False). alpha is left out: PEFT keeps it in the metadata."""
    down, up = LoRAModule.file_suffixes
    out = {keys.PEFT_SUFFIX[down]: state[down], keys.PEFT_SUFFIX[up]: state[up]}
    dora = state.get(AdapterModule.dora_suffix)
    if dora is not None:
        dora = dora.reshape(-1)
        out[keys.PEFT_SUFFIX[AdapterModule.dora_suffix]] = dora if linear else dora.reshape(1, -1, 1, 1)
    return out


def save_adapter(network: Network, path: str | Path, family: str, *, unet_config: Any = None,
                 dtype: str | torch.dtype | None = None, dialect: str = "kohya",
                 metadata: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``network`` to ``path`` atomically. kohya/lycoris dialects carry ``metadata`` (see
    ``build_metadata``) plus hashes; the peft dialect carries diffusers' adapter metadata so the real
    alphas survive. Returns the metadata written."""
    if unet_config is None:
        unet_config = unet_config_of(network.models)
    tensors = adapter_tensors(network, family, unet_config, dialect)
    if dialect == "peft":
        meta = peft_metadata(network)
        meta.update({k: v for k, v in (metadata or {}).items() if k.startswith(("sdlora_", "modelspec."))})
        return files.write_tensors(path, tensors, meta, dtype=dtype, hashes=False)
    meta = dict(metadata) if metadata is not None else build_metadata(network, family, name=Path(path).stem)
    return files.write_tensors(path, tensors, meta, dtype=dtype, hashes=True)
