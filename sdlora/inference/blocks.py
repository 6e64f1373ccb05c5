"""Block weights ("LBW"): a strength per UNet block, as the A1111 "LoRA Block Weight" extension defines them.

Vectors (values in this order):
    SD1 / SD2, 17: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03 ... OUT11
    SD1 / SD2, 26: BASE, IN00 ... IN11, M00, OUT00 ... OUT11
    SDXL, 12:      BASE, IN04, IN05, IN07, IN08, M00, OUT00 ... OUT05
    SDXL, 20:      BASE, IN00 ... IN08, M00, OUT00 ... OUT08
BASE is the text encoders. A short vector sets the blocks it does not list to 0, as the extension does.

Which block a module is in, by its original (SGM) name: ``input_blocks.N`` -> INnn, ``middle_block`` -> M00,
``output_blocks.N`` -> OUTnn, text encoders -> BASE. Modules outside the numbered blocks (our rule; the
extension leaves them at 1): ``conv_in`` is ``input_blocks.0`` -> IN00; the time and added-condition
embeddings (``time_embed``, ``label_emb``), which feed every block, -> BASE; ``conv_norm_out`` / ``conv_out``
(``out.0`` / ``out.2``) -> the last OUT block (OUT11, SDXL OUT08), the block they follow.

Presets (the extension's defaults, 17 values, SD1/SD2): NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS,
OUTALL, ALL0.5. NONE and ALL also work for SDXL.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sdlora import keys
from sdlora.errors import ConfigError
from sdlora.models.families import config_value

IDS_26 = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
IDS_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(3, 12)]
IDS_20 = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
IDS_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(6)]
VECTORS: dict[str, dict[int, list[str]]] = {
    "sd1": {17: IDS_17, 26: IDS_26}, "sd2": {17: IDS_17, 26: IDS_26}, "sdxl": {12: IDS_12, 20: IDS_20},
}
FULL = {"sd1": 26, "sd2": 26, "sdxl": 20}
PRESETS_17: dict[str, list[float]] = {
    "NONE": [0.0] * 17,
    "ALL": [1.0] * 17,
    "INS": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "IND": [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "INALL": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "MIDD": [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    "OUTD": [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    "OUTS": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    "OUTALL": [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "ALL0.5": [0.5] * 17,
}


def finite_strength(value: Any, what: str) -> float:
    """``value`` as a float; ConfigError naming ``what`` (e.g. "--lora style.safetensors:nan: the strength")
    for a value that is not a number or is NaN/Inf (it would turn every adapted weight into NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number; give e.g. 0.8") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} is {value!r}; strengths and block weights must be finite numbers, e.g. 0.8")
    return number


def _vector(spec: str | Sequence[float], family: str) -> list[float]:
    if not isinstance(spec, str):
        return [float(v) for v in spec]
    name = spec.strip()
    if name.upper() in PRESETS_17:
        if family == "sdxl" and name.upper() not in ("ALL", "NONE"):
            raise ConfigError(f"block-weight preset {name!r} is for SD1/SD2 (17 values); for SDXL give 12 or "
                              "20 values, or ALL / NONE")
        values = PRESETS_17[name.upper()]
        return [float(values[0])] * 20 if family == "sdxl" else [float(v) for v in values]
    try:
        return [float(v) for v in name.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ConfigError(f"block weights {spec!r} are neither comma-separated numbers nor a preset "
                          f"({', '.join(PRESETS_17)})") from None


def parse_block_weights(spec: str | Sequence[float], family: str) -> dict[str, float]:
    """{block id: weight} over every block of ``family`` (26 ids for SD1/SD2, 20 for SDXL) from a vector
    (comma-separated text or numbers) or a preset name. Raises ConfigError naming the allowed lengths."""
    values = [finite_strength(v, f"block weight {i + 1} of {spec!r}") for i, v in enumerate(_vector(spec, family))]
    ids = VECTORS[family].get(len(values))
    if ids is None:
        sizes = " or ".join(str(n) for n in VECTORS[family])
        first = VECTORS[family][min(VECTORS[family])]
        raise ConfigError(f"block weights for {family} take {sizes} values ({', '.join(first[:4])}, ...); got "
                          f"{len(values)}")
    full = dict.fromkeys(VECTORS[family][FULL[family]], 0.0)
    full.update(zip(ids, values))
    return full


def _out_blocks(unet_config: Any) -> int:
    """How many output blocks the UNet has: Σ (layers_per_block + 1) over its up blocks."""
    up = list(config_value(unet_config, "up_block_types"))
    layers = config_value(unet_config, "layers_per_block", 2)
    layers = list(layers) if isinstance(layers, (list, tuple)) else [int(layers)] * len(up)
    return sum(n + 1 for n in layers)


def block_of(component: str, path: str, unet_config: Any) -> str:
    """The block id of a module: BASE, INnn, M00 or OUTnn (rules in the module docstring)."""
    if component != "unet":
        return "BASE"
    sgm = keys.unet_sgm_path(path, unet_config)
    if sgm is None:
        raise ConfigError(f"the UNet module {path!r} has no original-layout name, so it has no block")
    head = sgm.split(".")
    if head[0] == "input_blocks":
        return f"IN{int(head[1]):02d}"
    if head[0] == "middle_block":
        return "M00"
    if head[0] == "output_blocks":
        return f"OUT{int(head[1]):02d}"
    if head[0] == "out":
        return f"OUT{_out_blocks(unet_config) - 1:02d}"
    return "BASE"  # time_embed, label_emb


def module_weight(weights: dict[str, float], component: str, path: str, unet_config: Any) -> float:
    """The block weight that applies to one module."""
    block = block_of(component, path, unet_config)
    if block not in weights:
        raise ConfigError(f"the UNet has a block {block} that block-weight vectors do not cover")
    return weights[block]
