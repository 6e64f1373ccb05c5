"""The CLIP tokenizer vocabulary, built offline from the BPE merges shipped in the package.

Every Stable Diffusion text encoder (SD 1.x's CLIP ViT-L/14, SD 2.x's OpenCLIP ViT-H/14, SDXL's CLIP-L and
OpenCLIP ViT-bigG/14) uses the same 49,408-token vocabulary. It is defined by OpenAI's merges file
``bpe_simple_vocab_16e6.txt.gz`` (shipped at sdlora/assets/clip/, from open-clip-torch, MIT licence; see the
LICENSE file beside it) as:

    256 byte characters (GPT-2's bytes-to-unicode map: printable bytes first, so "!" is id 0)
    + the same 256 with "</w>" appended (end of word)
    + one token per merge, for the first 49152 - 256 - 2 merges of the file (lines 1..48894)
    + "<|startoftext|>" (49406) and "<|endoftext|>" (49407)

``write_vocab_files(folder)`` writes that as vocab.json + merges.txt, the files transformers'
``CLIPTokenizer`` reads; ``clip_tokenizer(pad_token)`` builds the tokenizer from them. SD 1.x and SDXL's
first encoder pad with "<|endoftext|>"; SD 2.x and SDXL's second encoder pad with "!" (id 0), as their
reference diffusers repositories do.
"""
from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

ASSET = Path(__file__).resolve().parent.parent / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MERGE_COUNT = 49152 - 256 - 2  # merges that make vocabulary entries (the rest of the file is unused)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = VOCAB_SIZE - 2, VOCAB_SIZE - 1


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters, in CLIP's order:
    first the 188 printable latin-1 bytes ("!".."~", "¡".."¬", "®".."ÿ"), each mapped to itself, then the
    other 68 bytes in byte order, mapped to chr(256), chr(257), ... ("!" is token 0)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


@functools.lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    """The 48,894 merge pairs that define CLIP's vocabulary, read from the shipped gz file."""
    lines = gzip.decompress(ASSET.read_bytes()).decode("utf-8").split("\n")
    pairs = [tuple(line.split()) for line in lines[1:MERGE_COUNT + 1]]
    if len(pairs) != MERGE_COUNT or any(len(p) != 2 for p in pairs):
        raise RuntimeError(f"{ASSET}: not CLIP's BPE merges file (reinstall sdlora)")
    return tuple(pairs)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def clip_vocab() -> dict[str, int]:
    """token -> id for the 49,408 CLIP tokens, in CLIP's order."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(p) for p in clip_merges()] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab


def write_vocab_files(folder: str | Path) -> Path:
    """Write vocab.json and merges.txt (with the "#version: 0.2" header) into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(), ensure_ascii=False), encoding="utf-8")
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in clip_merges())
    (folder / "merges.txt").write_text(text, encoding="utf-8")
    return folder


def clip_tokenizer(pad_token: str = EOS, max_length: int = 77) -> Any:
    """transformers' CLIPTokenizer over the shipped vocabulary (from files written to a temporary folder,
    so any transformers release reads them), padding with ``pad_token`` ("<|endoftext|>" or "!"), with
    ``model_max_length`` = ``max_length``. Never touches the network."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="sdlora_clip_") as tmp:
        write_vocab_files(tmp)
        tok = CLIPTokenizer.from_pretrained(tmp, local_files_only=True, pad_token=pad_token,
                                            model_max_length=max_length)
    return tok
