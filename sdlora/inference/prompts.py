"""Prompts encoded as A1111 and ComfyUI encode them: 75-token chunks, emphasis weights, long prompts.

``encode(model, prompt, negative)`` -> ``Conditioning`` (what the diffusers pipelines take as
``prompt_embeds`` / ``negative_prompt_embeds`` [/ pooled for SDXL]):

1. the prompt is read as weighted pieces (``prompt_parser.parse_attention``; ``syntax=False``: one piece);
2. each piece is tokenized (no BOS/EOS) with the first tokenizer (SDXL: both encoders read those ids, as
   in A1111 and ComfyUI, so a "!" in the text is the "!" token there; SD 2.x's own tokenizer, like
   diffusers', reads "!" as its pad token, id 0) and the tokens are laid into chunks of 75: a BREAK, or a
   full chunk, starts the next one. A1111's comma rule: when a chunk is full and another token follows, and one of the chunk's
   last 20 tokens is a comma, the tokens after the last comma move on to the next chunk (the full chunk is
   padded instead). A textual-inversion embedding of n vectors takes n slots and never straddles chunks;
3. each chunk becomes 77 ids: BOS, its tokens, EOS, then the tokenizer's pad token (SD1: EOS, as in
   A1111; SD2 / SDXL's second encoder: "!", as diffusers and ComfyUI lay it out). An empty prompt is one
   chunk of BOS + EOS + padding;
4. each chunk is encoded on its own (the text encoder's output, or a hidden layer with clip skip, below)
   and, when any weight differs from 1, each token's output is multiplied by its weight and the chunk is
   rescaled so its mean equals the unweighted mean (A1111's ``z *= original_mean / new_mean``);
5. the chunks are concatenated: (1, 77 x chunks, width); prompt and negative are padded to the same
   number of chunks with encoded empty chunks. SDXL: the two encoders' outputs are concatenated per
   token (width 768 + 1280) and the pooled embedding is encoder 2's of the first chunk.

Clip skip N (A1111 numbering, 1 = the last layer): SD1/SD2 take hidden state -N with the final layer norm
(diffusers' ``clip_skip = N - 1``); SDXL takes hidden state -(N + 1) (penultimate for N = 1, diffusers'
convention; A1111 ignores clip skip for SDXL by default). A prompt of at most 75 tokens with no syntax gives
exactly the embeddings the diffusers pipeline computes itself (SDXL: when it has no "!", see 2).

Not as A1111 does: the chunk layout puts EOS right after the text and pads after it (diffusers' and
ComfyUI's layout; for SD1, whose pad token is EOS, that is the same ids as A1111); prompt editing
``[a:b:step]`` and alternation ``[a|b]`` are not implemented (see ``prompt_parser``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sdlora.errors import ConfigError
from sdlora.inference.prompt_parser import Piece, parse_attention

CHUNK = 75
COMMA_BACKTRACK = 20


@dataclass
class Slot:
    """A textual-inversion embedding placed at ``position`` of a chunk's tokens (0 = first after BOS)."""

    position: int
    vectors: list[torch.Tensor]  # one (n, width_i) tensor per text encoder


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # at most 75 ids, no BOS/EOS
    weights: list[float] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)


@dataclass
class Conditioning:
    """Encoded prompt: ``embeds`` (1, 77 x chunks, width), ``pooled`` (1, proj) for SDXL else None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None
    chunks: int
    notes: list[str] = field(default_factory=list)


# (text) -> [(kind, value)]: "text" pieces and "embedding" hits (value: list of per-encoder (n, w) tensors)
Splitter = Callable[[str], list[tuple[str, Any]]]


def _plain(text: str) -> list[tuple[str, Any]]:
    return [("text", text)]


def tokenize_pieces(pieces: list[Piece], tokenizer: Any, split: Splitter = _plain) -> list[Chunk]:
    """Lay the pieces' tokens into chunks of at most 75 (rules in the module docstring)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    if comma == tokenizer.unk_token_id:  # a vocabulary without CLIP's comma token: no comma rule
        comma = -2
    chunks: list[Chunk] = []
    cur = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal cur, last_comma
        chunks.append(cur)
        cur, last_comma = Chunk(), -1

    for piece in pieces:
        if piece.is_break:
            close()
            continue
        for kind, value in split(piece.text):
            if kind == "embedding":
                n = int(value[0].shape[0])
                if len(cur.tokens) + n > CHUNK:
                    close()
                cur.slots.append(Slot(len(cur.tokens), value))
                cur.tokens += [0] * n
                cur.weights += [piece.weight] * n
                continue
            for token in tokenizer(value, add_special_tokens=False, truncation=False).input_ids:
                if token == comma:
                    last_comma = len(cur.tokens)
                elif len(cur.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                    moved = Chunk(cur.tokens[last_comma + 1:], cur.weights[last_comma + 1:],
                                  [Slot(s.position - last_comma - 1, s.vectors) for s in cur.slots
                                   if s.position > last_comma])
                    cur.tokens, cur.weights = cur.tokens[:last_comma + 1], cur.weights[:last_comma + 1]
                    cur.slots = [s for s in cur.slots if s.position <= last_comma]
                    close()
                    cur = moved
                if len(cur.tokens) == CHUNK:
                    close()
                cur.tokens.append(token)
                cur.weights.append(piece.weight)
    if cur.tokens or not chunks:
        close()
    return chunks


def chunk_ids(chunk: Chunk, tokenizer: Any) -> torch.Tensor:
    """(77,) ids: BOS, the chunk's tokens, EOS, then ``tokenizer``'s pad id."""
    pad = CHUNK - len(chunk.tokens)
    ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    return torch.tensor(ids, dtype=torch.long)


def chunk_weights(chunk: Chunk) -> torch.Tensor:
    """(77,) weights: 1 for BOS, EOS and padding."""
    return torch.tensor([1.0, *chunk.weights, 1.0] + [1.0] * (CHUNK - len(chunk.tokens)))


def _slot_hook(slots: list[Slot], index: int) -> Callable:
    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for s in slots:
            v = s.vectors[index].to(output.device, output.dtype)
            output[:, 1 + s.position:1 + s.position + v.shape[0]] = v
        return output

    return hook


def encode_chunk(encoder: Any, ids: torch.Tensor, slots: list[Slot], index: int, *, sdxl: bool,
                 clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77, width) hidden states of one chunk, and the projected pooled output (encoder 2 of SDXL)."""
    handle = None
    if slots:
        handle = encoder.get_input_embeddings().register_forward_hook(_slot_hook(slots, index))
    try:
        ids = ids[None].to(encoder.device)
        if not sdxl and clip_skip <= 1:
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    pooled = out[0] if out[0].ndim == 2 else None
    if sdxl:
        return out.hidden_states[-(clip_skip + 1)], pooled
    return final_layer_norm(encoder)(out.hidden_states[-clip_skip]), pooled


def final_layer_norm(encoder: Any) -> Any:
    """The encoder's final LayerNorm (under ``text_model`` in transformers 4, at the top in 5)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``z`` (1, 77, width) with each token's output times its weight, rescaled to the unweighted mean."""
    if bool((weights == 1).all()):
        return z
    original = z.mean()
    z = z * weights.to(z.device, z.dtype)[None, :, None]
    new = z.mean()
    return z * (original / new) if bool(new != 0) else z


def encode_chunks(model: Any, chunks: list[Chunk], clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77 x len(chunks), width) and the pooled output (SDXL) for ``chunks`` on ``model``'s encoders."""
    sdxl = model.family == "sdxl"
    encoders, toks = model.text_encoders, model.tokenizers
    parts, pooled = [], None
    for n, chunk in enumerate(chunks):
        per_encoder = []
        for i, (enc, tok) in enumerate(zip(encoders, toks)):
            z, p = encode_chunk(enc, chunk_ids(chunk, tok), chunk.slots, i, sdxl=sdxl, clip_skip=clip_skip)
            per_encoder.append(apply_weights(z, chunk_weights(chunk)))
            if n == 0 and p is not None and i == len(encoders) - 1:
                pooled = p
        parts.append(torch.cat(per_encoder, dim=-1))
    return torch.cat(parts, dim=1), pooled


def prompt_chunks(model: Any, prompt: str, *, syntax: bool = True, split: Splitter = _plain
                  ) -> tuple[list[Chunk], list[str]]:
    """The chunks of ``prompt`` (emphasis read when ``syntax``) and notes about its syntax."""
    if syntax:
        parsed = parse_attention(prompt)
        pieces, notes = parsed.pieces, parsed.notes
    else:
        pieces, notes = [Piece(prompt)], []
    return tokenize_pieces(pieces, model.tokenizers[0], split), notes


def _zeros_for_empty(model: Any, negative: str) -> bool:
    return model.family == "sdxl" and not negative.strip() and \
        bool(getattr(model.pipe.config, "force_zeros_for_empty_prompt", False))


@torch.no_grad()
def encode(model: Any, prompt: str, negative: str = "", *, clip_skip: int | None = None, syntax: bool = True,
           split: Splitter = _plain) -> tuple[Conditioning, Conditioning]:
    """(positive, negative) conditionings of the same length (see the module docstring). An empty SDXL
    negative is zeros when the pipeline's ``force_zeros_for_empty_prompt`` says so (diffusers' rule)."""
    skip = 1 if clip_skip is None else int(clip_skip)
    if skip < 1:
        raise ConfigError(f"clip skip {clip_skip}: give 1 (the last layer, no skip) or more, e.g. 2")
    depth = min(int(e.config.num_hidden_layers) for e in model.text_encoders)
    if skip > depth:
        raise ConfigError(f"clip skip {skip}: this model's text encoder has only {depth} layers")
    pos_chunks, notes = prompt_chunks(model, prompt, syntax=syntax, split=split)
    neg_chunks, neg_notes = prompt_chunks(model, negative, syntax=syntax, split=split)
    count = max(len(pos_chunks), len(neg_chunks))
    pos_chunks += [Chunk() for _ in range(count - len(pos_chunks))]
    neg_chunks += [Chunk() for _ in range(count - len(neg_chunks))]
    pos, pooled = encode_chunks(model, pos_chunks, skip)
    if _zeros_for_empty(model, negative):
        neg, neg_pooled = torch.zeros_like(pos), torch.zeros_like(pooled) if pooled is not None else None
    else:
        neg, neg_pooled = encode_chunks(model, neg_chunks, skip)
    return (Conditioning(pos, pooled, count, notes),
            Conditioning(neg, neg_pooled, count, [f"negative prompt: {n}" for n in neg_notes]))


def pipeline_kwargs(pos: Conditioning, neg: Conditioning, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The diffusers pipeline arguments for a pair of conditionings."""
    out = {"prompt_embeds": pos.embeds.to(dtype), "negative_prompt_embeds": neg.embeds.to(dtype)}
    if pos.pooled is not None:
        out["pooled_prompt_embeds"] = pos.pooled.to(dtype)
        out["negative_pooled_prompt_embeds"] = neg.pooled.to(dtype)
    return out


def token_count(model: Any, prompt: str) -> int:
    """Tokens of ``prompt`` after emphasis syntax is read (BOS/EOS not counted)."""
    return sum(len(c.tokens) for c in prompt_chunks(model, prompt)[0])

