"""Generate: a model, a LoRA stack (strength, text-encoder strength, block weights per adapter), prompt with
``<lora:name:w>`` tags, sampler, steps, CFG, seed, size, strength sweeps. Images are written to
ROOT/outputs/generate as ``sdlora generate`` writes them, with A1111 parameters."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from sdlora.errors import SdloraError
from sdlora.inference import samplers
from sdlora.inference.blocks import PRESETS_17
from sdlora.studio.context import Invalid, studio_of
from sdlora.studio.paths import DEFAULT_NAME, NotFound, inside, model_path, relative

router = APIRouter(tags=["generate"])
OUT = "outputs/generate"


class LoraItem(BaseModel):
    path: str = Field(..., description="adapter file relative to the root")
    strength: float = Field(1.0, ge=-10, le=10)
    te_strength: float | None = Field(None, ge=-10, le=10, description="empty: follows strength")
    block_weights: str | None = Field(None, max_length=400, description="a preset (OUTD, ...) or comma-separated values")


class GenerateBody(BaseModel):
    model: str = Field(DEFAULT_NAME, description="'default' (the embedded model) or a path under the root")
    loras: list[LoraItem] = Field(default_factory=list, max_length=16)
    prompt: str = Field(..., min_length=1, max_length=4000)
    negative: str = Field("", max_length=4000)
    sampler: str = "euler a"
    steps: int = Field(20, ge=1, le=150)
    cfg: float = Field(7.0, ge=0, le=30)
    seed: int = Field(-1, ge=-1, le=2**32 - 1, description="-1: random")
    width: int | None = Field(None, ge=8, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=8, le=2048, multiple_of=8)
    count: int = Field(1, ge=1, le=8)
    sweep: list[float] | None = Field(None, max_length=12, description="strengths for a sweep grid")
    sweep_lora: str | None = None


@router.get("/api/generate/options")
def options() -> dict[str, Any]:
    return {"samplers": samplers.sampler_names(), "block_presets": list(PRESETS_17), "default_model": DEFAULT_NAME}


def _request(root: Path, body: GenerateBody) -> dict[str, Any]:
    model = model_path(root, body.model, "model")
    if not model.exists():
        raise NotFound(f"model = {body.model!r}: no such model folder or file", "model")
    try:
        samplers.label(body.sampler)
    except SdloraError as exc:
        raise Invalid(str(exc), "sampler") from None
    adapters, names = [], set()
    for i, item in enumerate(body.loras):
        path = inside(root, item.path, field=f"loras[{i}].path", must_exist=True)
        if path.suffix != ".safetensors" or not path.is_file():
            raise Invalid(f"loras[{i}].path = {item.path!r} is not a .safetensors adapter file", f"loras[{i}].path")
        name, n = path.stem, 2
        while name in names:
            name, n = f"{path.stem}-{n}", n + 1
        names.add(name)
        adapters.append({"name": name, "path": str(path), "strength": item.strength, "te_strength": item.te_strength,
                         "block_weights": item.block_weights, "mtime": path.stat().st_mtime_ns})
    if body.sweep and not adapters and "<lora:" not in body.prompt:
        raise Invalid("sweep: a strength sweep needs at least one adapter in loras or a <lora:...> tag", "sweep")
    if body.sweep_lora and body.sweep_lora not in names:
        raise Invalid(f"sweep_lora = {body.sweep_lora!r} is not in the stack ({', '.join(names) or 'empty'})",
                          "sweep_lora")
    return {"model": str(model), "adapters": adapters, "prompt": body.prompt, "negative": body.negative,
            "sampler": body.sampler, "steps": body.steps, "cfg": body.cfg, "seed": body.seed, "width": body.width,
            "height": body.height, "count": body.count, "sweep": body.sweep, "sweep_lora": body.sweep_lora,
            "out": str(root / OUT), "lora_dir": str(root)}


@router.post("/api/generate")
def generate(request: Request, body: GenerateBody) -> dict[str, Any]:
    """Render with the cached model and stack; returns the PNGs and what changed in the stack."""
    studio = studio_of(request)
    resp = studio.generator.call(_request(studio.root, body))
    if "error" in resp:
        err = SdloraError(resp["error"])
        err.field = resp.get("field")
        raise err
    for im in resp["images"]:
        im["path"] = relative(studio.root, im["path"])
    return resp


@router.get("/api/generate/images")
def recent(request: Request, limit: int = 24) -> list[dict[str, Any]]:
    """The newest generated images with their A1111 parameters."""
    from sdlora.inference.generate import read_parameters

    root = studio_of(request).root
    folder = root / OUT
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.png"), key=lambda p: p.name)[-max(1, min(limit, 200)):]
    return [{"path": relative(root, p), "parameters": read_parameters(p)} for p in reversed(files)]
