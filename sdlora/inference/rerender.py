"""``generate --from-png``: the generate() arguments that re-render an image from its A1111 parameters.

The prompt (with its ``<lora:NAME:...>`` tags), negative prompt, steps, sampler, CFG scale, seed, size,
clip skip and sdlora's ``Prompt syntax`` field are applied; each tag's adapter is found in the LoRA folder
by the hash in ``Lora hashes`` or by name (``pnginfo.locate_adapters``), and one that is missing is named.
A model hash that differs from the model given, and every field sdlora does not apply (hires fix,
extensions, ...), are reported as notes, never dropped silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlora.inference import pnginfo, prompt_tags


def png_arguments(path: str | Path, model: Any, lora_dir: str | Path | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """(generate() keyword arguments, notes) for the PNG at ``path`` on ``model``."""
    s = pnginfo.read_settings(path)
    _, tags = prompt_tags.parse_prompt(s.prompt)
    names = list(dict.fromkeys(t.name for t in tags))
    adapter_files, notes = pnginfo.locate_adapters(names, s.lora_hashes, lora_dir)
    args: dict[str, Any] = dict(prompt=s.prompt, negative_prompt=s.negative_prompt, adapter_files=adapter_files)
    v = dict(s.values)
    if "prompt_syntax" in v:
        args["prompt_syntax"] = v.pop("prompt_syntax")
    denoise = v.pop("denoise", None)
    if denoise is not None:
        notes.append(f"the image was made from an init image (Denoising strength: {denoise:g}); pass "
                     "--init-image to re-run it as img2img, else it is rendered from text")
    args.update(v)
    wanted = s.fields.get("Model hash")
    have = model.model_hash()
    if wanted and have and wanted.lower() != have.lower():
        notes.append(f"the image was made with model hash {wanted} ({s.fields.get('Model', '?')}); this model's "
                     f"hash is {have}: the image will differ")
    if s.embedding_hashes:
        notes.append(f"the prompts use embeddings ({', '.join(s.embedding_hashes)}); they are read from "
                     "--embeddings-dir")
    if s.unknown:
        notes.append("fields not applied by sdlora: " + "; ".join(s.unknown))
    return args, notes
