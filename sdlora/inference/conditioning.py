"""What the pipeline is conditioned on for one generate call: prompt encoding, clip skip, embeddings.

``build(model, prompt, negative, ...)`` returns the pipeline arguments (``prompt_embeds`` and friends from
``sdlora.inference.prompts``, or the plain strings when A1111 syntax is off and nothing else asks for
custom encoding, which is then exactly diffusers' own path), the notes to show the user, and the fields
the image's A1111 parameters get (``Clip skip``, ``TI hashes``, ``Prompt syntax``).

Clip skip: the caller's value; else, when every loaded adapter's ``ss_clip_skip`` metadata (kohya's
training setting) agrees, that value, with a note; else 1 (no skip).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sdlora.errors import AdapterFileError
from sdlora.files import tensors as files
from sdlora.inference import prompts
from sdlora.inference.embeddings import EmbeddingLibrary


@dataclass
class Conditioned:
    kwargs: dict[str, Any]  # prompt_embeds, negative_prompt_embeds[, pooled...] or prompt / negative_prompt
    notes: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    clip_skip: int = 1


def adapters_clip_skip(model: Any) -> tuple[int | None, list[str]]:
    """The ``ss_clip_skip`` every adapter of the model's stack was trained with, when they all say the same;
    (None, notes) when they disagree or none says."""
    stack = model.stack
    values: dict[str, int] = {}
    for adapter in list(stack) if stack is not None else []:
        try:
            raw = files.read_metadata(adapter.path).get("ss_clip_skip", "")
        except (AdapterFileError, OSError):
            continue
        if raw.strip() not in ("", "None"):
            try:
                values[adapter.name] = int(float(raw))
            except ValueError:
                continue
    if not values:
        return None, []
    if len(set(values.values())) > 1:
        shown = ", ".join(f"{n}: {v}" for n, v in values.items())
        return None, [f"the adapters were trained with different clip skips ({shown}); using 1 (pass --clip-skip)"]
    (value,) = set(values.values())
    return value, [f"clip skip {value}, as the adapters were trained (ss_clip_skip); --clip-skip overrides"]


def resolve_clip_skip(model: Any, clip_skip: int | None) -> tuple[int, list[str]]:
    if clip_skip is not None:
        return int(clip_skip), []
    value, notes = adapters_clip_skip(model)
    return (value or 1), notes


def build(model: Any, prompt: str, negative: str = "", *, clip_skip: int | None = None, syntax: bool = True,
          embeddings: EmbeddingLibrary | None = None) -> Conditioned:
    """The pipeline arguments for ``prompt`` / ``negative`` on ``model`` with its current adapters."""
    skip, notes = resolve_clip_skip(model, clip_skip)
    fields: dict[str, str] = {}
    if skip > 1:
        fields["Clip skip"] = str(skip)
    if not syntax:
        fields["Prompt syntax"] = "plain"
    used = embeddings.used(prompt, negative) if embeddings is not None else []
    if used:
        fields["TI hashes"] = '"' + ", ".join(f"{e.name}: {files.short_hash(e.path)}" for e in used) + '"'
    if not syntax and skip == 1 and not used:
        kwargs: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative or None}
        return Conditioned(kwargs, notes, fields, skip)
    split = embeddings.split if embeddings is not None else prompts._plain
    pos, neg = prompts.encode(model, prompt, negative, clip_skip=skip, syntax=syntax, split=split)
    dtype = model.text_encoders[-1].dtype if model.family == "sdxl" else model.text_encoders[0].dtype
    notes += pos.notes + neg.notes
    if pos.chunks > 1:
        notes.append(f"the prompts are longer than 75 tokens: encoded as {pos.chunks} chunks of 75, as A1111 does")
    return Conditioned(prompts.pipeline_kwargs(pos, neg, dtype), notes, fields, skip)


def to_device(kwargs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
