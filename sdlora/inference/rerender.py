"""``generate --from-png``: the generate() arguments that re-render an image from its A1111 parameters.

The prompt (with its ``<lora:NAME:...>`` tags), negative prompt, steps, sampler, CFG scale, seed, size,
clip skip and sdlora's ``Prompt syntax`` field are applied; each tag's adapter is found in the LoRA folder
by the hash in ``Lora hashes`` or by name (``pnginfo.locate_adapters``), and one that is missing is named.
The adapters are added to the model's stack in the order ``Lora hashes`` lists them (the order they were
loaded in: their contributions are summed in that order, so the re-render is bit for bit), at the
strengths of their tags.
A model hash that differs from the model given, and every field sdlora does not apply (hires fix,
extensions, ...), are reported as notes, never dropped silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlora.inference import pnginfo, prompt_tags
from sdlora.inference.stack import AdapterStack


def png_arguments(path: str | Path, model: Any, lora_dir: str | Path | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """(generate() keyword arguments, notes) for the PNG at ``path`` on ``model``; its adapters are added to
    ``model``'s stack (see the module docstring)."""
    s = pnginfo.read_settings(path)
    _, tags = prompt_tags.parse_prompt(s.prompt)
    by_name = {t.name: t for t in tags}
    order = [n for n in s.lora_hashes if n in by_name] + [n for n in by_name if n not in s.lora_hashes]
    adapter_files, notes = pnginfo.locate_adapters(order, s.lora_hashes, lora_dir)
    stack = model.stack if model.stack is not None else AdapterStack(model)
    for name in order:
        if name not in stack:
            t = by_name[name]
            stack.add(adapter_files[name], name=name, strength=t.strength, te_strength=t.te_strength,
                      block_weights=t.block_weights)
    args: dict[str, Any] = dict(prompt=s.prompt, negative_prompt=s.negative_prompt)
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
    if s.fields.get("VAE"):
        notes.append(f"the image was made with the VAE {s.fields['VAE']}; pass --vae with that file to use it")
    if s.embedding_hashes:
        notes.append(f"the prompts use embeddings ({', '.join(s.embedding_hashes)}); they are read from "
                     "--embeddings-dir")
    if s.unknown:
        notes.append("fields not applied by sdlora: " + "; ".join(s.unknown))
    return args, notes
