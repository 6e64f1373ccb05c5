"""Textual-inversion embeddings, used in prompts as A1111 and ComfyUI use them.

Formats read (the vectors are (n, width) for n tokens):
- A1111 ``.safetensors``: ``emb_params`` (n, width);
- A1111 ``.pt`` (pickle, only with ``allow_pickle``, loaded ``weights_only``): ``string_to_param["*"]``;
- diffusers ``learned_embeds.safetensors`` / ``.bin``: one tensor under its token, e.g. ``"<cat-toy>"``
  (width,) or (n, width);
- SDXL pairs: ``clip_l`` (n, 768) for the first encoder and ``clip_g`` (n, 1280) for the second.

In a prompt an embedding is named ``embedding:NAME`` (ComfyUI; NAME must exist) or by its bare name (A1111;
matched case-insensitively as a whole word, otherwise the text is left alone). NAME is the file name
without extension, from the files given (``--embedding FILE``) or the folder (``--embeddings-dir``). The
vectors replace the token embeddings of their slots at encoding time (``sdlora.inference.prompts``); the
model's vocabulary and weights are never changed. A bad or mismatched file raises a ConfigError naming the
file and the width the model expects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlora.errors import AdapterFileError, ConfigError
from sdlora.files import tensors as files

SUFFIXES = (".safetensors", ".pt", ".bin")
PICKLES = (".pt", ".bin")
_NAME = r"[^\s,()\[\]:<>|]+"


@dataclass
class Embedding:
    name: str
    path: Path
    vectors: list[torch.Tensor]  # one (n, width) tensor per text encoder of the model

    @property
    def count(self) -> int:
        return int(self.vectors[0].shape[0])


def _read(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in PICKLES:
        if not allow_pickle:
            raise ConfigError(f"{path}: a pickled embedding can run code when loaded and is not read; pass "
                              "--allow-pickle (allow_pickle=True) if you trust it, or use a .safetensors one")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"{path}: cannot be read as a weights-only pickle ({type(exc).__name__}); "
                              "it is not an embedding file") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: the pickle holds a {type(obj).__name__}, not an embedding")
        params = obj.get("string_to_param")
        if isinstance(params, dict):
            obj = {f"string_to_param.{k}": v for k, v in params.items()}
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    try:
        return files.read_tensors(path)[0]
    except AdapterFileError as exc:
        raise ConfigError(str(exc).replace("adapter", "embedding")) from None


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    return t[None] if t.ndim == 1 else t


def _describe(widths: list[int]) -> str:
    if len(widths) == 2:
        return f"clip_l ({widths[0]} wide) and clip_g ({widths[1]} wide) vectors, as SDXL embeddings hold"
    return f"vectors {widths[0]} wide"


def vectors_for(tensors: dict[str, torch.Tensor], widths: list[int], path: Path) -> list[torch.Tensor]:
    """Per-encoder (n, width) float32 vectors from an embedding file's tensors, checked against ``widths``
    (each text encoder's token-embedding width)."""
    where = f"{path}: this model expects {_describe(widths)}"
    if "clip_l" in tensors or "clip_g" in tensors:
        if len(widths) != 2:
            raise ConfigError(f"{where}, but the file is an SDXL embedding (clip_l / clip_g); use it with SDXL")
        if "clip_l" not in tensors or "clip_g" not in tensors:
            raise ConfigError(f"{where}, but the file holds only one of clip_l / clip_g")
        found = [_as_rows(tensors["clip_l"]), _as_rows(tensors["clip_g"])]
    else:
        picked = [t for k, t in tensors.items() if k in ("emb_params", "string_to_param.*")] or \
            [t for t in tensors.values() if t.is_floating_point() and t.ndim in (1, 2)]
        if len(picked) != 1:
            raise ConfigError(f"{where}; the file holds {len(tensors)} tensors and none is an embedding "
                              "(emb_params, string_to_param, <token>, or clip_l + clip_g)")
        if len(widths) == 2:
            raise ConfigError(f"{where}, but the file holds one set {_as_rows(picked[0]).shape[-1]} wide (an "
                              "SD 1.x / 2.x embedding)")
        found = [_as_rows(picked[0])]
    for t, w in zip(found, widths):
        if t.ndim != 2 or t.shape[1] != w or t.shape[0] < 1:
            raise ConfigError(f"{where}, but it holds {tuple(t.shape)}: it was made for another model family")
        if not torch.isfinite(t).all():
            raise ConfigError(f"{path}: the embedding holds NaN or Inf values; the file is broken")
    if found[0].shape[0] != found[-1].shape[0] or found[0].shape[0] > 75:
        raise ConfigError(f"{path}: {found[0].shape[0]} vectors; an embedding has 1 to 75 (the same count for "
                          "clip_l and clip_g)")
    return [t.detach().float().clone() for t in found]


def load_embedding(path: str | Path, widths: list[int], *, name: str | None = None,
                   allow_pickle: bool = False) -> Embedding:
    """One embedding file, checked against the model's encoder widths (ConfigError otherwise)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such embedding file")
    return Embedding(name or path.stem, path, vectors_for(_read(path, allow_pickle), widths, path))


def encoder_widths(model: Any) -> list[int]:
    """The token-embedding width of each of ``model``'s text encoders."""
    return [int(e.get_input_embeddings().embedding_dim) for e in model.text_encoders]


class EmbeddingLibrary:
    """The embeddings a generation may use: files named up front (loaded now) and a folder (read when a
    prompt names one). ``split`` is the ``prompts.Splitter`` that finds them in prompt text."""

    def __init__(self, widths: list[int], files_: list[str | Path] = (), folder: str | Path | None = None,
                 allow_pickle: bool = False) -> None:
        self.widths, self.allow_pickle = widths, allow_pickle
        self.folder = Path(folder).expanduser() if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise ConfigError(f"--embeddings-dir {self.folder}: no such folder")
        self.loaded: dict[str, Embedding] = {}
        for f in files_:
            e = load_embedding(f, widths, allow_pickle=allow_pickle)
            self.loaded[e.name.lower()] = e
        self.available: dict[str, Path] = {e.name.lower(): e.path for e in self.loaded.values()}
        if self.folder is not None:
            for p in sorted(self.folder.iterdir()):
                if p.suffix.lower() in SUFFIXES and p.stem.lower() not in self.available:
                    self.available[p.stem.lower()] = p
        names = sorted(self.available, key=len, reverse=True)
        bare = "|".join(re.escape(n) for n in names)
        self._pattern = re.compile(rf"embedding:({_NAME})" + (rf"|(?<![\w-])({bare})(?![\w-])" if bare else ""),
                                   re.IGNORECASE)

    def get(self, name: str) -> Embedding:
        key = name.lower()
        for suffix in SUFFIXES:  # "embedding:bad.pt" as some prompts write it
            if key.endswith(suffix) and key[: -len(suffix)] in self.available:
                key = key[: -len(suffix)]
        if key not in self.loaded:
            if key not in self.available:
                where = f"in {self.folder}" if self.folder else "(no --embeddings-dir given)"
                known = ", ".join(sorted(self.available)) or "none"
                raise ConfigError(f"embedding:{name}: no such embedding {where}; known: {known}")
            self.loaded[key] = load_embedding(self.available[key], self.widths,
                                              allow_pickle=self.allow_pickle)
        return self.loaded[key]

    def split(self, text: str) -> list[tuple[str, Any]]:
        """``text`` as ("text", str) and ("embedding", per-encoder vectors) parts."""
        out: list[tuple[str, Any]] = []
        last = 0
        for m in self._pattern.finditer(text):
            out.append(("text", text[last:m.start()]))
            out.append(("embedding", self.get(m.group(1) or m.group(2)).vectors))
            last = m.end()
        out.append(("text", text[last:]))
        return [p for p in out if p[0] == "embedding" or p[1]]

    def used(self, *prompts_: str) -> list[Embedding]:
        """The embeddings the prompts name (loading them)."""
        names = {(m.group(1) or m.group(2)).lower() for p in prompts_ for m in self._pattern.finditer(p)}
        return [self.get(n) for n in sorted(names)]
