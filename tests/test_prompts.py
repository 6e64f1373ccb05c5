"""A1111 prompt syntax: the parser's weights, the 75-token chunks (BREAK, the comma rule), the weighting and
mean rule numerically, clip skip, SDXL's two encoders and pooled output, and exact equality with the
diffusers pipeline's own encoding for short plain prompts. The tiny tokenizer reads one token per
character, so token counts are character counts."""
from __future__ import annotations

import pytest
import torch

from sdlora.errors import ConfigError
from sdlora.inference import prompts
from sdlora.inference.prompt_parser import parse_attention
from sdlora.models import from_pipeline
from tiny import tiny_pipeline

torch.set_num_threads(1)


def _trained_like(model):
    """A tiny model whose final layer norms have a bias, as trained CLIP encoders do (an untrained one
    normalises every token to mean 0, which leaves the mean rule nothing to keep)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for enc in model.text_encoders:
            ln = prompts.final_layer_norm(enc)
            ln.bias.copy_(0.2 + 0.1 * torch.randn(ln.bias.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def sd1():
    return _trained_like(from_pipeline(tiny_pipeline("sd1")))


@pytest.fixture(scope="module")
def sdxl():
    return _trained_like(from_pipeline(tiny_pipeline("sdxl")))


def _pairs(prompt: str) -> list[tuple[str, float]]:
    return [("BREAK" if p.is_break else p.text, round(p.weight, 6)) for p in parse_attention(prompt).pieces]


def test_parser_weights() -> None:
    assert _pairs("a (red) ((blue)) [grey] (gold:1.3) (dim:0.5) x") == [
        ("a ", 1.0), ("red", 1.1), (" ", 1.0), ("blue", 1.21), (" ", 1.0), ("grey", round(1 / 1.1, 6)),
        (" ", 1.0), ("gold", 1.3), (" ", 1.0), ("dim", 0.5), (" x", 1.0)]
    assert _pairs("(a (b:1.5) c)") == [("a ", 1.1), ("b", 1.65), (" c", 1.1)]
    assert _pairs(r"\(literal\) \[too\]") == [("(literal) [too]", 1.0)]
    assert _pairs("castle BREAK dragon") == [("castle", 1.0), ("BREAK", 1.0), ("dragon", 1.0)]
    assert _pairs("breakfast, Break") == [("breakfast, Break", 1.0)]  # only the upper-case word
    assert _pairs("(word:abc)") == [("word:abc", 1.1)]  # a weight that is not a number is text


def test_parser_notes_unbalanced_brackets() -> None:
    stray = parse_attention("a) b")
    assert _pairs("a) b") == [("a) b", 1.0)] and "no opening bracket" in stray.notes[0]
    unclosed = parse_attention("x (open rest")
    assert [(p.text, round(p.weight, 4)) for p in unclosed.pieces] == [("x ", 1.0), ("open rest", 1.1)]
    assert "never closed" in unclosed.notes[0] and "character 3" in unclosed.notes[0]
    assert parse_attention("fine (ok:1.2)").notes == []


def test_chunks_of_75_and_break(sd1) -> None:
    tok = sd1.tokenizers[0]
    long = "a" * 160  # one token per character
    chunks, _ = prompts.prompt_chunks(sd1, long)
    assert [len(c.tokens) for c in chunks] == [75, 75, 10]
    chunks, _ = prompts.prompt_chunks(sd1, "abc BREAK de BREAK f")
    assert [len(c.tokens) for c in chunks] == [3, 2, 1]
    ids = prompts.chunk_ids(chunks[1], tok)
    assert ids.shape == (77,) and ids[0] == tok.bos_token_id and ids[3] == tok.eos_token_id
    assert (ids[4:] == tok.pad_token_id).all()
    assert [len(c.tokens) for c in prompts.prompt_chunks(sd1, "")[0]] == [0]
    exact, _ = prompts.prompt_chunks(sd1, "b" * 75)
    assert len(exact) == 1


def test_comma_backtrack(sd1) -> None:
    # a comma at token index 60 (15 tokens before the end): the 14 tokens after it move on
    text = "a" * 60 + "," + "b" * 30
    chunks, _ = prompts.prompt_chunks(sd1, text)
    assert [len(c.tokens) for c in chunks] == [61, 30]
    # a comma at index 50 (25 from the end) is too far back: a plain cut at 75
    text = "a" * 50 + "," + "b" * 40
    assert [len(c.tokens) for c in prompts.prompt_chunks(sd1, text)[0]] == [75, 16]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_short_plain_prompt_is_bitwise_diffusers(family) -> None:
    model = from_pipeline(tiny_pipeline(family))
    pos, neg = prompts.encode(model, "a red cat on a mat", "blurry")
    with torch.no_grad():
        ref = model.pipe.encode_prompt("a red cat on a mat", device=torch.device("cpu"), num_images_per_prompt=1,
                                       do_classifier_free_guidance=True, negative_prompt="blurry")
    assert torch.equal(pos.embeds, ref[0]) and torch.equal(neg.embeds, ref[1])
    if family == "sdxl":
        assert torch.equal(pos.pooled, ref[2]) and torch.equal(neg.pooled, ref[3])
        assert pos.embeds.shape == (1, 77, 64)


def test_weights_and_mean_rule(sd1) -> None:
    enc, tok = sd1.text_encoders[0], sd1.tokenizers[0]
    pos, _ = prompts.encode(sd1, "a (cat:1.5) [dog]")
    chunk = prompts.Chunk(tok("a cat dog", add_special_tokens=False).input_ids, [])
    with torch.no_grad():
        z = enc(prompts.chunk_ids(chunk, tok)[None])[0]
    w = torch.ones(77)  # tokens after BOS: "a</w>", "c" "a" "t</w>" (x1.5), "d" "o" "g</w>" (/1.1)
    weights = [1.0] + [1.5] * 3 + [1 / 1.1] * 3
    w[1:1 + len(weights)] = torch.tensor(weights)
    expected = z * w[None, :, None]
    expected = expected * (z.mean() / expected.mean())
    assert torch.allclose(pos.embeds, expected, atol=1e-6)
    assert torch.allclose(pos.embeds.mean(), z.mean(), atol=1e-6)  # the mean is kept
    assert not torch.allclose(pos.embeds, z, atol=1e-4)


def test_long_prompt_concatenates_chunks_and_pads_negative(sd1) -> None:
    enc, tok = sd1.text_encoders[0], sd1.tokenizers[0]
    pos, neg = prompts.encode(sd1, "x" * 100, "")
    assert pos.embeds.shape == neg.embeds.shape == (1, 154, 32) and pos.chunks == 2
    with torch.no_grad():
        first = enc(prompts.chunk_ids(prompts.Chunk(tok("x" * 100, add_special_tokens=False).input_ids[:75]), tok)[None])[0]
        empty = enc(tok("", padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    assert torch.equal(pos.embeds[:, :77], first)
    assert torch.equal(neg.embeds[:, :77], empty) and torch.equal(neg.embeds[:, 77:], empty)


def test_clip_skip(sd1, sdxl) -> None:
    """SD1: hidden state -2 with the final layer norm (what diffusers' clip_skip=1 computes; its own code
    path reads ``text_model.final_layer_norm``, which transformers 5 no longer has). SDXL: diffusers'."""
    pos, _ = prompts.encode(sd1, "a cat", clip_skip=2)
    enc, tok = sd1.text_encoders[0], sd1.tokenizers[0]
    with torch.no_grad():
        ids = tok("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        ref = prompts.final_layer_norm(enc)(enc(ids, output_hidden_states=True).hidden_states[-2])
        xl_ref = sdxl.pipe.encode_prompt("a cat", device=torch.device("cpu"), num_images_per_prompt=1,
                                         do_classifier_free_guidance=False, clip_skip=1)[0]
    assert torch.equal(pos.embeds, ref)
    assert not torch.equal(pos.embeds, prompts.encode(sd1, "a cat")[0].embeds)
    assert torch.equal(prompts.encode(sdxl, "a cat", clip_skip=2)[0].embeds, xl_ref)
    with pytest.raises(ConfigError, match="only 2 layers"):
        prompts.encode(sd1, "a cat", clip_skip=5)


def test_sdxl_long_prompt_pooled_from_first_chunk(sdxl) -> None:
    pos, neg = prompts.encode(sdxl, "y" * 75 + " yyyyy BREAK z", "")
    assert pos.embeds.shape == (1, 3 * 77, 64) and pos.pooled.shape == (1, 32)
    first_only, _ = prompts.encode(sdxl, "y" * 75)
    assert torch.equal(pos.pooled, first_only.pooled)
    assert torch.equal(pos.embeds[:, :77], first_only.embeds)
    assert torch.count_nonzero(neg.embeds) == 0  # empty SDXL negative: zeros (force_zeros_for_empty_prompt)


def test_plain_mode_reads_brackets_as_text(sd1) -> None:
    syntax, _ = prompts.encode(sd1, "(cat:1.5)")
    plain, _ = prompts.encode(sd1, "(cat:1.5)", syntax=False)
    with torch.no_grad():
        ref = sd1.pipe.encode_prompt("(cat:1.5)", device=torch.device("cpu"), num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)[0]
    assert torch.equal(plain.embeds, ref) and not torch.allclose(syntax.embeds, ref)
