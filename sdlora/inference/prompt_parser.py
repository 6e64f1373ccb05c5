"""A1111's emphasis syntax: a prompt read as (text, weight) pieces and BREAK markers.

Written against A1111's documented behaviour ("Features: Attention/emphasis"):

    (word)        weight x 1.1          ((word))   x 1.21 (brackets multiply)
    [word]        weight / 1.1          (word:1.3) weight x 1.3 (a number before the closing round bracket)
    \\( \\) \\[ \\]   the literal characters
    BREAK         (upper case, a word of its own) ends the current 75-token chunk

Bad syntax is read as A1111 reads it, and each case is noted (``Parsed.notes``):
- a closing bracket with no opening one is literal text;
- an opening bracket that is never closed weights everything after it (x1.1 for "(", /1.1 for "["), as in
  A1111;
- ``(word:abc)``: a weight that is not a number is literal text (the round brackets still give x1.1).
Neighbouring pieces of equal weight are joined. Not implemented: A1111's prompt editing
``[from:to:when]`` and alternation ``[a|b]`` (read as emphasis and text: ``[a:b:0.5]`` is "a:b:0.5" / 1.1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

ROUND, SQUARE = 1.1, 1 / 1.1
# one token of the emphasis grammar: escapes, brackets, ":<number>)" closing a weighted group, plain text
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass
class Piece:
    """A run of prompt text with one weight; ``is_break`` marks a BREAK (text "", weight 1)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


@dataclass
class Parsed:
    pieces: list[Piece]
    notes: list[str] = field(default_factory=list)


def _scale(pieces: list[Piece], start: int, factor: float) -> None:
    for p in pieces[start:]:
        if not p.is_break:
            p.weight *= factor


def _add_text(pieces: list[Piece], text: str) -> None:
    for i, part in enumerate(_BREAK.split(text)):
        if i > 0:
            pieces.append(Piece("", 1.0, is_break=True))
        pieces.append(Piece(part, 1.0))


def parse_attention(prompt: str) -> Parsed:
    """``prompt`` as pieces with A1111's weights, e.g. "a (red:1.5) [cat]" ->
    [("a ", 1.0), ("red", 1.5), (" ", 1.0), ("cat", 0.909...)]; see the module docstring for the rules."""
    pieces: list[Piece] = []
    notes: list[str] = []
    rounds: list[tuple[int, int]] = []  # (piece index where the group starts, character position)
    squares: list[tuple[int, int]] = []
    for m in _TOKEN.finditer(prompt):
        text, number = m.group(0), m.group(1)
        if text.startswith("\\"):  # an escaped character; a lone backslash is dropped, as in A1111
            pieces.append(Piece(text[1:], 1.0))
        elif text == "(":
            rounds.append((len(pieces), m.start()))
        elif text == "[":
            squares.append((len(pieces), m.start()))
        elif number is not None and rounds and _is_number(number):
            _scale(pieces, rounds.pop()[0], float(number))
        elif number is not None:  # ":1.2.3)" or ":5)" with no open "(": the text, then the bracket
            notes.append(f"{text.strip()!r} at character {m.start() + 1}: not a weight there; read as text")
            _add_text(pieces, text[:-1])
            _close(pieces, rounds, ")", m.start() + len(text) - 1, notes)
        elif text in (")", "]"):
            _close(pieces, rounds if text == ")" else squares, text, m.start(), notes)
        else:
            _add_text(pieces, text)
    for stack, factor, sign in ((rounds, ROUND, "("), (squares, SQUARE, "[")):
        for start, pos in stack:
            notes.append(f"{sign!r} at character {pos + 1} is never closed: it weights the rest of the prompt "
                         f"(x{factor:.4g}), as A1111 reads it")
            _scale(pieces, start, factor)
    return Parsed(_join(pieces), notes)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _close(pieces: list[Piece], stack: list[tuple[int, int]], bracket: str, pos: int, notes: list[str]) -> None:
    if stack:
        _scale(pieces, stack.pop()[0], ROUND if bracket == ")" else SQUARE)
        return
    notes.append(f"{bracket!r} at character {pos + 1} has no opening bracket: kept as text")
    _add_text(pieces, bracket)


def _join(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for p in pieces:
        if out and not p.is_break and not out[-1].is_break and out[-1].weight == p.weight:
            out[-1].text += p.text
        else:
            out.append(p)
    return out or [Piece("", 1.0)]

