"""Train: the config schema, presets from ROOT/configs, validation (the trainer's own), save as TOML, queue."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from sdlora.studio.api_jobs import describe
from sdlora.studio.context import Conflict, Invalid, studio_of
from sdlora.studio.paths import NotFound, STATE_DIR, inside, relative
from sdlora.studio.trainconfig import from_form, read_preset, schema, to_form, write_toml
from sdlora.trainers.config import apply_override, dump_toml, parse_override

router = APIRouter(tags=["train"])
_PRESET = re.compile(r"^[\w.-]{1,80}$")


class ConfigBody(BaseModel):
    config: dict[str, Any] = Field(..., description="sections as the schema lists them; paths relative to the root")


class SaveBody(ConfigBody):
    path: str = Field(..., description="where to write the TOML, relative to the root, e.g. configs/mine.toml")
    overwrite: bool = False


class QueueBody(BaseModel):
    config: dict[str, Any] | None = Field(None, description="sections as the schema lists them (or give preset)")
    preset: str | None = Field(None, description="instead of config: a preset name from configs/")
    set: list[str] = Field(default_factory=list, max_length=100,
                           description="overrides as `sdlora train --set` takes them, e.g. training.max_steps=30")
    title: str = Field("", max_length=200)


@router.get("/api/train/schema")
def get_schema() -> dict[str, Any]:
    """Every config section's fields with type, default, allowed values and range (from the dataclasses)."""
    return schema()


@router.get("/api/train/presets")
def presets(request: Request) -> list[dict[str, str]]:
    """The TOML configs in ROOT/configs."""
    root = studio_of(request).root
    folder = root / "configs"
    if not folder.is_dir():
        return []
    return [{"name": p.stem, "path": relative(root, p)} for p in sorted(folder.glob("*.toml"))]


@router.get("/api/train/presets/{name}")
def preset(request: Request, name: str) -> dict[str, Any]:
    """One preset as form data (read and validated as ``sdlora train`` reads it)."""
    root = studio_of(request).root
    if not _PRESET.match(name):
        raise Invalid(f"name = {name!r} is not a preset name", "name")
    path = inside(root, f"configs/{name}.toml", field="name")
    if not path.is_file():
        raise NotFound(f"no preset {name!r} (looked for configs/{name}.toml)", "name")
    return {"name": name, "config": read_preset(root, path)}


@router.post("/api/train/validate")
def validate(request: Request, body: ConfigBody) -> dict[str, Any]:
    """The config checked by the trainer's validation; 422 with its sentence and field when invalid."""
    root = studio_of(request).root
    cfg = from_form(root, body.config)
    return {"ok": True, "config": to_form(root, cfg), "toml": dump_toml(cfg)}


@router.post("/api/train/save")
def save(request: Request, body: SaveBody) -> dict[str, Any]:
    """Write the config as TOML (paths relative to the file) that ``sdlora train PATH`` runs unchanged."""
    root = studio_of(request).root
    cfg = from_form(root, body.config)
    if not body.path.endswith(".toml"):
        raise Invalid(f"path = {body.path!r}: give a .toml file name", "path")
    target = inside(root, body.path)
    if target.exists() and not body.overwrite:
        raise Conflict(f"{body.path} exists; set overwrite to replace it", "path")
    text = write_toml(cfg, target)
    return {"path": relative(root, target), "toml": text}


def _busy(studio, out_dir: str) -> dict | None:
    for job in studio.store.list():
        if job["status"] in ("queued", "running") and job["out_dir"] == out_dir:
            return job
    return None


@router.post("/api/train/queue")
def queue(request: Request, body: QueueBody) -> dict[str, Any]:
    """Validate, save the TOML under .sdlora-studio/configs/, and queue ``sdlora train`` on it. The config is
    the form's, or a preset's with ``set`` overrides (paths relative to the root)."""
    studio = studio_of(request)
    if (body.config is None) == (body.preset is None):
        raise Invalid("give either config (the form's sections) or preset (a name from configs/)", "config")
    form = body.config if body.config is not None else preset(request, body.preset)["config"]
    for text in body.set:
        parts, value = parse_override(text)
        apply_override(form, parts, value)
    cfg = from_form(studio.root, form)
    out_dir = str(cfg.output_dir)
    other = _busy(studio, out_dir)
    if other is not None:
        raise Conflict(f"output.dir = {relative(studio.root, out_dir)!r} is used by job {other['id']} "
                       f"({other['status']}); pick another output.dir or wait for it", "output.dir")
    target = studio.root / STATE_DIR / "configs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.output.name}.toml"
    n = 1
    while target.exists():
        target = target.with_name(f"{target.stem.split('~')[0]}~{n}.toml")
        n += 1
    write_toml(cfg, target)
    title = body.title or f"train {cfg.output.name}"
    job = studio.runner.submit("train", title, ["train", str(target)], out_dir=out_dir, config_path=str(target))
    return describe(studio, job)
