"""Caches of VAE latents and text-encoder outputs, keyed by content.

A latent's key is the sha256 of: the image file's bytes, its bucket, resize and crop box, flip, how
transparency is handled, and the VAE's identity (class, config and a sample of its weights). A text
output's key: the caption, the encoders' and tokenizers' identities and clip_skip. So a second run on
unchanged data encodes nothing, and a changed image (or a moved crop, a new VAE) re-encodes only what it
changes. Entries live in memory, and also on disk as safetensors under the cache folder when asked.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sdlora.files import tensors as files
from sdlora.errors import AdapterFileError
from sdlora.trainers.data import Item, Subset
from sdlora.files.images import BadImage, crop_box, decode, to_bucket


# Pixels per VAE call while filling the latent cache: eight 90×90 images, four 128×128, one 256×256 or larger.
PIXELS_PER_ENCODE = 256 * 256


def _sha(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def module_identity(module: torch.nn.Module) -> str:
    """A fingerprint of a model: class, config, every tensor's name/shape/dtype and the bytes of a few."""
    h = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(data, sort_keys=True, default=str).encode())
    state = list(module.state_dict().items())
    for name, t in state:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
    for i in sorted({0, len(state) // 3, 2 * len(state) // 3, len(state) - 1} if state else set()):
        t = state[i][1].detach().to("cpu").contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_identity(tokenizer) -> str:
    return _sha(type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.model_max_length)


class Store:
    """Tensors by key, in memory and (when ``folder`` is set) as safetensors files there."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        self.encoded = 0  # entries computed in this run
        self.reused = 0  # entries found (in memory or on disk)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        hit = self.memory.get(key)
        if hit is None and self.folder is not None and self._path(key).is_file():
            try:
                hit, _ = files.read_tensors(self._path(key))
            except AdapterFileError:
                hit = None  # a damaged cache file is recomputed and rewritten
            if hit is not None:
                self.memory[key] = hit
        if hit is not None:
            self.reused += 1
        return hit

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        self.memory[key] = tensors
        self.encoded += 1
        if self.folder is not None:
            files.write_tensors(self._path(key), tensors, hashes=False)


class LatentCache:
    """Latents (and loss masks) of images fitted to their buckets with a centre crop."""

    def __init__(self, store: Store, encode: Callable[[torch.Tensor], torch.Tensor], vae_id: str,
                 factor: int, background: str):
        self.store, self.encode, self.vae_id = store, encode, vae_id
        self.factor, self.background = factor, background

    def key(self, item: Item, subset: Subset, flip: bool) -> str:
        (nw, nh), (left, top) = crop_box(item.size, item.bucket, "center", None)
        masked = subset.alpha_mode == "mask" and item.has_alpha_mask
        return _sha("latents-v1", item.digest(), item.bucket, (nw, nh, left, top), flip, subset.alpha_mode,
                    self.background if item.has_alpha_mask else "", masked, self.vae_id)

    def get(self, items: list[Item], subsets: list[Subset], flips: list[bool]) -> list[dict[str, torch.Tensor]]:
        """One entry per item ({"latents": (4, h, w)[, "mask": (1, h, w)]}), encoding the missing ones."""
        keys = [self.key(it, subsets[it.subset], f) for it, f in zip(items, flips)]
        found = {k: self.store.get(k) for k in dict.fromkeys(keys)}
        missing = [(k, it, f) for k, it, f in zip(keys, items, flips) if found[k] is None]
        todo = {}
        for k, it, f in missing:
            todo.setdefault(k, (it, f))
        if todo:
            samples = [fit(it, subsets[it.subset], f, "center", None, self.background) for it, f in todo.values()]
            latents = self.encode(torch.stack([s.pixels for s in samples]))
            for (k, _), s, lat in zip(todo.items(), samples, latents):
                entry = {"latents": lat}
                if s.mask is not None:
                    entry["mask"] = F.interpolate(s.mask[None], size=lat.shape[-2:], mode="area")[0]
                self.store.put(k, entry)
                found[k] = self.store.memory[k]
        return [found[k] for k in keys]

    def fill(self, items: list[Item], subsets: list[Subset], batch_size: int = 8,
             on_bad: Callable[[Item, str], None] | None = None, pixels: int = PIXELS_PER_ENCODE) -> None:
        """Make sure every item (and its mirror image, where its subset flips) is cached; same-bucket batches
        of at most ``batch_size`` images and ``pixels`` pixels per VAE call (at least one image), so the VAE's
        activations while caching stay those of one 256×256 image: no higher peak memory than encoding one
        image per step. An image that cannot be read any more (deleted or damaged since the scan) is left
        out and passed to ``on_bad`` with the reason (without ``on_bad`` the error is raised)."""
        todo = sorted(((it, f) for it in items for f in ((False, True) if subsets[it.subset].flip else (False,))),
                      key=lambda x: (x[0].bucket, x[1]))
        groups: dict = {}
        for it, f in todo:
            groups.setdefault(it.bucket, []).append((it, f))
        for bucket, group in groups.items():
            per_call = max(1, min(batch_size, pixels // (bucket[0] * bucket[1])))
            for k in range(0, len(group), per_call):
                chunk = group[k:k + per_call]
                try:
                    self.get([it for it, _ in chunk], subsets, [f for _, f in chunk])
                except (BadImage, OSError):
                    if on_bad is None:
                        raise
                    self._fill_one_by_one(chunk, subsets, on_bad)

    def _fill_one_by_one(self, chunk: list[tuple[Item, bool]], subsets: list[Subset],
                         on_bad: Callable[[Item, str], None]) -> None:
        bad: set[int] = set()
        for it, f in chunk:
            if id(it) in bad:
                continue
            try:
                self.get([it], subsets, [f])
            except BadImage as exc:
                bad.add(id(it))
                on_bad(it, str(exc))
            except OSError as exc:
                bad.add(id(it))
                on_bad(it, f"cannot be read ({exc.strerror or exc})")


class TextCache:
    """Text-encoder outputs per caption: {"hidden": (77, D)[, "pooled": (P,)]}."""

    def __init__(self, store: Store, encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]],
                 text_id: str):
        self.store, self.encode, self.text_id = store, encode, text_id

    def key(self, caption: str) -> str:
        return _sha("text-v1", caption, self.text_id)

    def get(self, captions: list[str]) -> list[dict[str, torch.Tensor]]:
        keys = [self.key(c) for c in captions]
        found = {k: self.store.get(k) for k in dict.fromkeys(keys)}
        todo = {k: c for k, c in zip(keys, captions) if found[k] is None}
        if todo:
            with torch.no_grad():
                hidden, pooled = self.encode(list(todo.values()))
            for i, k in enumerate(todo):
                entry = {"hidden": hidden[i].float()}
                if pooled is not None:
                    entry["pooled"] = pooled[i].float()
                self.store.put(k, entry)
                found[k] = self.store.memory[k]
        return [found[k] for k in keys]

    def fill(self, captions: list[str], batch_size: int = 16) -> None:
        captions = list(dict.fromkeys(captions))
        for k in range(0, len(captions), batch_size):
            self.get(captions[k:k + batch_size])


def fit(item: Item, subset: Subset, flip: bool, crop: str, rng, background: str):
    """Decode ``item`` and fit it to its bucket (see images.to_bucket)."""
    decoded = decode(item.path, subset.alpha_mode, background)
    return to_bucket(decoded, item.bucket, crop, flip, rng)
