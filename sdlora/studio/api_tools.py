"""Tools as jobs: bake, merge, resize, extract, convert and eval, each the ``sdlora`` command of that name
run in a child process; its report is the job's log. Arguments come from a table below, never a shell."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from sdlora.studio.api_jobs import describe
from sdlora.studio.context import Invalid, studio_of
from sdlora.studio.paths import NotFound, inside, model_path, relative

router = APIRouter(tags=["tools"])
_DTYPES = ["fp32", "fp16", "bf16"]
_FORMATS = ["kohya", "lycoris", "peft"]

# tool -> fields: (name, flag or "" for positional, kind, required, choices). Kinds: model (a model path or
# "default"), in (an existing file), out (a file or folder to write), adapters (a list of {path, weight}),
# int, float, choice, floats (comma-separated numbers). ``model`` of merge / resize / convert: the base model,
# needed for adapters of a non-standard model (the embedded default is one).
TOOLS: dict[str, list[tuple[str, str, str, bool, list[str] | None]]] = {
    "bake": [("model", "--model", "model", True, None), ("adapters", "--lora", "adapters", True, None),
             ("out", "--out", "out", True, None), ("format", "--format", "choice", False, ["single-file", "diffusers"]),
             ("dtype", "--dtype", "choice", False, _DTYPES)],
    "merge": [("adapters", "", "adapters", True, None), ("out", "--out", "out", True, None),
              ("method", "--method", "choice", False, ["concat", "svd"]), ("rank", "--rank", "int", False, None),
              ("energy", "--energy", "float", False, None), ("to", "--to", "choice", False, _FORMATS),
              ("dtype", "--dtype", "choice", False, _DTYPES), ("model", "--model", "model", False, None)],
    "resize": [("file", "", "in", True, None), ("out", "--out", "out", True, None), ("rank", "--rank", "int", False, None),
               ("conv_rank", "--conv-rank", "int", False, None), ("energy", "--energy", "float", False, None),
               ("dtype", "--dtype", "choice", False, _DTYPES), ("model", "--model", "model", False, None)],
    "extract": [("base", "--base", "model", True, None), ("tuned", "--tuned", "model", True, None),
                ("out", "--out", "out", True, None), ("rank", "--rank", "int", False, None),
                ("conv_rank", "--conv-rank", "int", False, None), ("energy", "--energy", "float", False, None),
                ("dtype", "--dtype", "choice", False, _DTYPES)],
    "convert": [("file", "", "in", True, None), ("to", "--to", "choice", True, _FORMATS),
                ("unet_names", "--unet-names", "choice", False, ["sgm", "diffusers"]), ("out", "--out", "out", True, None),
                ("model", "--model", "model", False, None)],
    "eval": [("adapters", "", "adapters", True, None), ("model", "--model", "model", False, None),
             ("strengths", "--strengths", "floats", False, None), ("per_prompt", "--per-prompt", "int", False, None),
             ("out", "--out", "out", True, None)],
}
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@router.get("/api/tools")
def list_tools() -> dict[str, list[dict[str, Any]]]:
    return {tool: [{"name": n, "kind": k, "required": r, "choices": c, "flag": f} for n, f, k, r, c in fields]
            for tool, fields in TOOLS.items()}


def _value(root: Path, tool: str, name: str, kind: str, value: Any, choices) -> list[str]:
    """The argument words for one field."""
    if kind == "model":
        if not isinstance(value, str):
            raise Invalid(f"{name}: give a model path relative to the root, or 'default'", name)
        path = model_path(root, value, name)
        if not path.exists():
            raise NotFound(f"{name} = {value!r}: no such model", name)
        return [str(path)]
    if kind == "in":
        path = inside(root, str(value), field=name, must_exist=True)
        return [str(path)]
    if kind == "out":
        path = inside(root, str(value), field=name)
        if path.exists() and tool != "eval":
            raise Invalid(f"{name} = {value!r} exists already; choose a new name (nothing is overwritten)", name)
        return [str(path)]
    if kind == "adapters":
        if not isinstance(value, list) or not value:
            raise Invalid(f"{name}: give a list of adapters, e.g. [{{\"path\": \"runs/a.safetensors\", "
                              "\"weight\": 1}]", name)
        words = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise Invalid(f"{name}[{i}]: each adapter is {{\"path\": ..., \"weight\": ...}}", f"{name}[{i}]")
            path = inside(root, item["path"], field=f"{name}[{i}].path", must_exist=True)
            weight = item.get("weight")
            if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
                raise Invalid(f"{name}[{i}].weight = {weight!r} is not a number", f"{name}[{i}].weight")
            words.append(str(path) if weight is None or tool == "eval" else f"{path}:{float(weight):g}")
        return words
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise Invalid(f"{name} = {value!r} is not allowed: it must be a whole number, 0 or more", name)
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise Invalid(f"{name} = {value!r} is not allowed: it must be a number", name)
    if kind == "choice" and value not in choices:
        raise Invalid(f"{name} = {value!r} is not allowed: use one of {', '.join(choices)}", name)
    if kind == "floats" and (not isinstance(value, str) or not all(_NUMBER.match(v.strip()) for v in value.split(","))):
        raise Invalid(f"{name} = {value!r} is not allowed: give comma-separated numbers, e.g. 0,0.5,1", name)
    return [str(value)]


def tool_argv(root: Path, tool: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """(the sdlora command's arguments, the output path shown) for ``body``; raises for bad fields."""
    if tool not in TOOLS:
        raise NotFound(f"no tool {tool!r}; the tools are {', '.join(TOOLS)}", "tool")
    fields = TOOLS[tool]
    unknown = sorted(set(body) - {f[0] for f in fields})
    if unknown:
        raise Invalid(f"{unknown[0]} is not a field of {tool} (its fields: {', '.join(f[0] for f in fields)})",
                          unknown[0])
    argv, positional, out = [tool], [], ""
    for name, flag, kind, required, choices in fields:
        value = body.get(name)
        if value in (None, ""):
            if required:
                raise Invalid(f"{name} is required for {tool}", name)
            continue
        words = _value(root, tool, name, kind, value, choices)
        if name == "out":
            out = relative(root, words[0])
        if not flag:
            positional += words
        elif kind == "adapters":
            for w in words:
                argv += [flag, w]
        else:
            argv += [flag, *words]
    return argv + positional, out


@router.post("/api/tools/{tool}")
def run_tool(request: Request, tool: str, body: dict[str, Any]) -> dict[str, Any]:
    """Queue the tool as a job; the job's log holds its report."""
    studio = studio_of(request)
    argv, out = tool_argv(studio.root, tool, body)
    return describe(studio, studio.runner.submit("tool", f"{tool} -> {out}", argv))
