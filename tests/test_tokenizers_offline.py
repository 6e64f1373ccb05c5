"""The shipped CLIP vocabulary: ids against an independent BPE written here from CLIP's definition and
against transformers' CLIPTokenizer read from the same files, for 200+ varied prompts; and single-file
SD1 / SD2 / SDXL checkpoints (tiny, with CLIP's 49,408-token vocabulary) that open with no Hugging Face
cache, no network and no --tokenizer."""
from __future__ import annotations

import gzip
import random
import unicodedata

import pytest
import regex
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from fake_adapters import tokenizer_dir
from sdlora.errors import ModelError
from sdlora.models import clip_bpe
from sdlora import models
from sdlora.models import tokenizers
from tiny import tiny_pipeline

torch.set_num_threads(1)

# CLIP's pre-tokenizer pattern (OpenAI's SimpleTokenizer, with transformers' normalisation: NFC, runs of
# whitespace as one space, lower case; OpenAI's ftfy/html clean-up is not part of transformers' tokenizer).
_PATTERN = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                         r"[^\s\p{L}\p{N}]+")


class ReferenceBPE:
    """CLIP's byte-level BPE, written from its definition and read straight from the gz merges file."""

    def __init__(self) -> None:
        lines = gzip.decompress(clip_bpe.ASSET.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(x.split()) for x in lines[1:49152 - 256 - 2 + 1]]
        self.ranks = {m: i for i, m in enumerate(merges)}
        # GPT-2's byte map, written here again: printable latin-1 bytes first (as themselves), then the rest
        keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
        rest = [b for b in range(256) if b not in keep]
        self.byte_char = {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(rest)}}
        base = list(self.byte_char.values())
        words = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
        self.ids = {w: i for i, w in enumerate(words + ["<|startoftext|>", "<|endoftext|>"])}

    def _bpe(self, word: str) -> list[str]:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, _ = min(ranked)
            if best == 1 << 30:
                break
            pair = next((parts[i], parts[i + 1]) for r, i in ranked if r == best)
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return parts

    def encode(self, text: str) -> list[int]:
        text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
        ids = [self.ids["<|startoftext|>"]]
        for piece in _PATTERN.findall(text):
            mapped = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            ids += [self.ids[p] for p in self._bpe(mapped)]
        return ids + [self.ids["<|endoftext|>"]]


_FIXED = [
    "a photo of a cat", "masterpiece, best quality, 1girl, solo, long hair, looking at viewer",
    "(masterpiece:1.2), ((best quality)), [blurry], \\(literal\\) parens", "a castle BREAK a dragon",
    "café crème brûlée, naïve façade", "東京の夜景, ネオン", "🎨🖌️ painting of a 🐱", "Москва зимой", "ÆØÅ æøå ß",
    "it's, they're, we've, I'm, you'll, he'd", "3.14159 2026 4k 8K uhd 1080p!", "wow! amazing!", "<lora:style:0.8> a knight",
    "embedding:EasyNegative, bad_hands_5", "   lots   of\tspaces\nand\nnewlines   ", "!!!???...,,,;;;",
    "(((((deep))))) [[[[shallow]]]] {curly} <angle>", "a" * 120, "score_9, score_8_up, rating_safe",
    "HTML &amp; entities &lt;3", "mixed123numbers456and789words", "emoji👍inside👍words", "tab\tseparated",
    "ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ", "e\u0301 combining accent", "", " ", "BREAK", "(word:1.3) (word:abc) (unbalanced",
]
_WORDS = ["a", "photo", "wow!", "portrait", "of", "cat", "dragon", "castle", "masterpiece", "best", "quality", "highres",
          "1girl", "solo", "smile", "blue", "eyes", "détaillé", "ñandú", "日本", "город", "🌸", "☕", "x2", "42",
          "3.5", "50mm", "f/1.8", "octane", "render", "trending", "on", "artstation", "don't", "it's", "—", "…",
          "«quote»", "über", "naïve", "BREAK", "EasyNegative", "bad-hands", "score_9", "lora", "ß", "Ω"]
_WRAPS = ["{}", "({})", "(({}))", "[{}]", "({}:1.3)", "({}:0.7)", "\\({}\\)", "{},", "{}.", "<lora:{}:0.6>"]


def varied_prompts(count: int = 240) -> list[str]:
    """The fixed prompts above plus random ones (seeded) from the word pool and emphasis wrappers; about a
    quarter are longer than 77 tokens."""
    rng = random.Random(14)
    out = list(_FIXED)
    while len(out) < count:
        n = rng.choice([3, 8, 20, 60, 90])
        out.append(" ".join(rng.choice(_WRAPS).format(rng.choice(_WORDS)) for _ in range(n)))
    return out


def test_vocabulary_is_clips() -> None:
    vocab = clip_bpe.clip_vocab()
    assert len(vocab) == 49408
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    tok = clip_bpe.clip_tokenizer()
    # ids everyone who used CLIP has seen: "a photo of a cat"
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token_id == 49407 and clip_bpe.clip_tokenizer("!").pad_token_id == 0


def test_ids_match_reference_bpe_and_transformers_from_files(tmp_path) -> None:
    prompts = varied_prompts()
    assert len(prompts) >= 200
    shipped = tokenizers.shipped_tokenizers("sdxl")
    reference = ReferenceBPE()
    folder = str(clip_bpe.write_vocab_files(tmp_path / "tok"))
    from_files = CLIPTokenizer.from_pretrained(folder)
    from_files_bang = CLIPTokenizer.from_pretrained(folder, pad_token="!")
    long_ones = bangs = 0
    for prompt in prompts:
        ids = shipped[0](prompt, truncation=False).input_ids
        assert ids == from_files(prompt, truncation=False).input_ids, prompt
        assert ids == reference.encode(prompt), prompt
        ids2 = shipped[1](prompt, truncation=False).input_ids
        assert ids2 == from_files_bang(prompt, truncation=False).input_ids, prompt
        # with "!" as its pad token, transformers reads a "!" in the text as that special token (id 0), as the
        # SD 2.x / SDXL reference tokenizers do; elsewhere the ids are the same
        if "!" in prompt:
            assert 0 in ids2
            bangs += 1
        else:
            assert ids2 == ids, prompt
        long_ones += len(ids) > 77
    assert long_ones >= 40 and bangs >= 2


def test_padding_per_family() -> None:
    sd1, = tokenizers.shipped_tokenizers("sd1")
    sd2, = tokenizers.shipped_tokenizers("sd2")
    l, g = tokenizers.shipped_tokenizers("sdxl")
    padded = {name: t("a cat", padding="max_length", max_length=77).input_ids for name, t in
              [("sd1", sd1), ("sd2", sd2), ("l", l), ("g", g)]}
    assert padded["sd1"] == padded["l"] == [49406, 320, 2368] + [49407] * 74
    assert padded["sd2"] == padded["g"] == [49406, 320, 2368, 49407] + [0] * 73


# ---------------------------------------------------------------- single files open with nothing else
def _with_clip_vocab(pipe) -> None:
    """Swap the tiny text encoders for ones of the same width with CLIP's 49,408-token vocabulary."""
    for name in ("text_encoder", "text_encoder_2"):
        old = getattr(pipe, name, None)
        if old is None:
            continue
        cfg = CLIPTextConfig(**{**old.config.to_dict(), "vocab_size": 49408, "bos_token_id": 49406,
                                "eos_token_id": 49407, "pad_token_id": 49407})
        torch.manual_seed(3)
        cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        setattr(pipe, name, cls(cfg).eval())
        pipe.register_modules(**{name: getattr(pipe, name)})


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_opens_offline_with_no_cache_and_no_tokenizer(family, tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-home" / "hub"))
    pipe = tiny_pipeline(family)
    _with_clip_vocab(pipe)
    path = models.save_model(models.from_pipeline(pipe), tmp_path / f"{family}.safetensors")
    model = models.open_model(path)
    pads = {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]
    assert [t.pad_token for t in model.tokenizers] == pads
    assert model.tokenizers[0]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = torch.tensor([model.tokenizers[0]("a cat", padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        assert torch.equal(model.text_encoders[0](ids)[0], pipe.text_encoder(ids)[0])
    # --tokenizer still overrides: the tiny byte tokenizer (vocab 514) is used as given
    forced = models.open_model(path, tokenizer=tokenizer_dir(tmp_path))
    assert len(forced.tokenizers[0]) == 514


def test_tiny_vocab_models_still_need_a_tokenizer(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    path = models.save_model(models.from_pipeline(tiny_pipeline("sd1")), tmp_path / "m.safetensors")
    with pytest.raises(ModelError, match="514-token vocabulary"):
        models.open_model(path)
