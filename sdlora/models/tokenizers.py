"""CLIP tokenizers for base models, found offline.

A single-file checkpoint holds no tokenizer. ``find_tokenizers`` takes it, in this order, from
1. a path the user names: a folder with ``vocab.json`` + ``merges.txt`` (used for every text encoder), or a
   diffusers model folder (``tokenizer/`` and, for SDXL, ``tokenizer_2/``);
2. the CLIP vocabulary shipped with sdlora (``sdlora.models.clip_bpe``), when every text encoder has CLIP's
   49,408-token vocabulary (the caller passes ``vocab_sizes``): CLIP-L padding with "<|endoftext|>" for SD1
   and SDXL's first encoder, padding with "!" for SD2 and SDXL's second encoder, as their reference
   repositories do. Real SD checkpoints always take this path, so they open with no cache and no network;
3. the local Hugging Face cache (never downloaded): ``openai/clip-vit-large-patch14`` for SD1 and SDXL's
   first encoder; ``stabilityai/stable-diffusion-2-1[-base]`` (tokenizer/) for SD2, and
   ``stabilityai/stable-diffusion-xl-base-1.0`` (tokenizer_2/) or ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``
   for SDXL's second encoder, falling back to the CLIP-L files. SD2 and SDXL's second encoder pad with "!"
   as their reference pipelines do; a user's folder is used exactly as it is.
Otherwise a ModelError says how to provide one.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdlora.errors import ModelError
from sdlora.models import clip_bpe

CLIP_L = "openai/clip-vit-large-patch14"
# (repo, subfolder, pad token to force or None)
_CACHE: dict[str, list[tuple[str, str, str | None]]] = {
    "clip-l": [(CLIP_L, "", None)],
    "sd2": [("stabilityai/stable-diffusion-2-1", "tokenizer", None),
            ("stabilityai/stable-diffusion-2-1-base", "tokenizer", None), (CLIP_L, "", "!")],
    "sdxl-2": [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2", None),
               ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "", "!"), (CLIP_L, "", "!")],
}


def _is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()
                              or (path / "tokenizer.json").is_file())


def load_tokenizer(folder: str | Path, *, pad_token: str | None = None, max_length: int = 77) -> Any:
    """A CLIPTokenizer from a local folder (never the network). A folder without a tokenizer_config.json
    gets CLIP's 77-token limit (``max_length``) instead of transformers' unbounded default."""
    from transformers import CLIPTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    try:
        tok = CLIPTokenizer.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot be read as a CLIP tokenizer ({exc}); it needs vocab.json and "
                         "merges.txt") from None
    if not tok.model_max_length or tok.model_max_length > 100_000:
        tok.model_max_length = max_length
    return tok


def _from_cache(kind: str) -> tuple[Path, str | None] | None:
    from huggingface_hub import try_to_load_from_cache

    for repo, sub, pad in _CACHE[kind]:
        name = f"{sub}/vocab.json" if sub else "vocab.json"
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and (Path(found).parent / "merges.txt").is_file():
            return Path(found).parent, pad
    return None


def cache_hint() -> str:
    """Where the Hugging Face cache keeps the CLIP-L tokenizer on this machine."""
    from huggingface_hub import constants

    return str(Path(constants.HF_HUB_CACHE) / ("models--" + CLIP_L.replace("/", "--")))


def missing_message(what: str, vocab_sizes: Sequence[int] | None = None) -> str:
    odd = [int(v) for v in vocab_sizes or [] if int(v) != clip_bpe.VOCAB_SIZE]
    why = (f" The shipped CLIP tokenizer does not fit: its text encoder has a {odd[0]}-token vocabulary, not "
           f"CLIP's {clip_bpe.VOCAB_SIZE}." if odd else "")
    return (f"{what} needs a CLIP tokenizer and none was found (a single-file checkpoint holds none).{why} "
            "Give one with --tokenizer DIR (tokenizer=DIR in Python): a folder with vocab.json and merges.txt, "
            "or a diffusers model folder with a tokenizer/ subfolder; or put openai/clip-vit-large-patch14 "
            f"in the Hugging Face cache ({cache_hint()}), e.g. with `huggingface-cli download "
            "openai/clip-vit-large-patch14` on a machine with internet access, then copy the cache over.")


def shipped_tokenizers(family: str, max_length: int = 77) -> list[Any]:
    """The family's tokenizers built from the shipped CLIP vocabulary: [CLIP-L] for SD1, [OpenCLIP-H
    padding with "!"] for SD2, [CLIP-L, OpenCLIP-bigG padding with "!"] for SDXL."""
    if family == "sd2":
        return [clip_bpe.clip_tokenizer("!", max_length)]
    first = clip_bpe.clip_tokenizer(clip_bpe.EOS, max_length)
    return [first, clip_bpe.clip_tokenizer("!", max_length)] if family == "sdxl" else [first]


def find_tokenizers(family: str, path: str | Path | None = None, *, what: str = "this model",
                    max_length: int = 77, vocab_sizes: Sequence[int] | None = None) -> list[Any]:
    """[tokenizer] for SD1/SD2, [tokenizer, tokenizer_2] for SDXL: from ``path``; else the shipped CLIP
    vocabulary when ``vocab_sizes`` (each text encoder's ``vocab_size``) are all CLIP's 49,408; else the
    local cache; else a ModelError saying how to provide one."""
    count = 2 if family == "sdxl" else 1
    if path is not None:
        path = Path(path).expanduser()
        if _is_tokenizer_dir(path / "tokenizer"):
            first = load_tokenizer(path / "tokenizer", max_length=max_length)
            second = path / "tokenizer_2"
            rest = [load_tokenizer(second, max_length=max_length) if _is_tokenizer_dir(second) else first]
            return [first, *rest][:count]
        if _is_tokenizer_dir(path):
            tok = load_tokenizer(path, max_length=max_length)
            return [tok] * count
        raise ModelError(f"{path}: no tokenizer there (no vocab.json and merges.txt, and no tokenizer/ "
                         "subfolder). Point --tokenizer at a CLIP tokenizer folder or a diffusers model folder.")
    if vocab_sizes and all(int(v) == clip_bpe.VOCAB_SIZE for v in vocab_sizes):
        return shipped_tokenizers(family, max_length)
    kinds = ["sd2"] if family == "sd2" else ["clip-l", "sdxl-2"][:count]
    out = []
    for kind in kinds:
        found = _from_cache(kind)
        if found is None:
            raise ModelError(missing_message(what, vocab_sizes))
        out.append(load_tokenizer(found[0], pad_token=found[1], max_length=max_length))
    return out


def save_tokenizer(tok: Any, folder: str | Path) -> None:
    """Save a tokenizer so that both transformers 4 (slow CLIPTokenizer: vocab.json + merges.txt) and 5
    (tokenizer.json) read it."""
    folder = Path(folder)
    tok.save_pretrained(str(folder))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return
    model = json.loads(backend.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
