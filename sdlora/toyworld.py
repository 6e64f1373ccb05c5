"""The toy world of the embedded default model: coloured shapes on plain backgrounds.

Images are ``SIZE``×``SIZE`` RGB with one shape; captions read ``"a red circle on a white background"``.
The world is procedural (``render``, ``sample_scene``) and has a deterministic classifier (``classify``)
of its attributes, so a model trained on it can be *measured*: does a sample show the prompted colour
and shape? The base model knows ``BASE_SHAPES``; ``CONCEPT_SHAPES`` are never shown to it and exist for
adapters to learn (behind a trigger word from ``TRIGGER_WORDS``, which the tokenizer knows but no base
caption uses).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # pixels; 8×8 latents through a VAE that downsamples 4×
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 205, 35),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
BASE_SHAPES = ("circle", "square", "triangle")
CONCEPT_SHAPES = ("star",)
SHAPES = BASE_SHAPES + CONCEPT_SHAPES
TRIGGER_WORDS = ("sks", "zxq", "ohwx")
# Every word a caption may use; the tokenizer knows exactly these (plus the byte alphabet).
WORDS = ("a", "an", "on", "background", "shape", "of", "in", "the") + tuple(COLOURS) + tuple(BACKGROUNDS) + SHAPES + TRIGGER_WORDS


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float  # centre, in pixels
    cy: float
    radius: float  # half the shape's extent, in pixels

    def caption(self, shape_word: str | None = None) -> str:
        return f"a {self.colour} {shape_word or self.shape} on a {self.background} background"


def sample_scene(rng: random.Random, shapes=BASE_SHAPES, colours=None, backgrounds=None) -> Scene:
    """A random scene: shape radius 20–28% of the image side, centre jittered by up to 10%."""
    r = SIZE * rng.uniform(0.20, 0.28)
    j = SIZE * 0.10
    return Scene(
        colour=rng.choice(list(colours or COLOURS)),
        shape=rng.choice(list(shapes)),
        background=rng.choice(list(backgrounds or BACKGROUNDS)),
        cx=SIZE / 2 + rng.uniform(-j, j),
        cy=SIZE / 2 + rng.uniform(-j, j),
        radius=r,
    )


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.89  # equal area-ish with the circle
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        h = r * 1.15
        return [(cx, cy - h), (cx + h * math.sin(math.radians(60)), cy + h / 2),
                (cx - h * math.sin(math.radians(60)), cy + h / 2)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r * 1.2 if k % 2 == 0 else r * 0.5
            a = math.radians(-90 + 36 * k)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    return None


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE, scale: int = 4) -> np.ndarray:
    """Boolean (size, size) mask of a shape, anti-aliased by drawing at ``scale``× and thresholding."""
    big = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(big)
    poly = _polygon(shape, cx * scale, cy * scale, r * scale)
    if poly is None:  # circle
        draw.ellipse([(cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(big.resize((size, size), Image.BILINEAR)) >= 128


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB PIL image (anti-aliased edges)."""
    scale = 4
    img = Image.new("RGB", (SIZE * scale, SIZE * scale), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    c, r = COLOURS[scene.colour], scene.radius
    poly = _polygon(scene.shape, scene.cx * scale, scene.cy * scale, r * scale)
    if poly is None:
        draw.ellipse([(scene.cx - r) * scale, (scene.cy - r) * scale, (scene.cx + r) * scale, (scene.cy + r) * scale], fill=c)
    else:
        draw.polygon(poly, fill=c)
    return img.resize((SIZE, SIZE), Image.LANCZOS)


# ----------------------------------------------------------------------------------------- classifier
@dataclass(frozen=True)
class Reading:
    colour: str | None
    shape: str | None
    background: str | None
    shape_score: float  # IoU of the best template

    def as_dict(self) -> dict:
        return dict(colour=self.colour, shape=self.shape, background=self.background, shape_score=self.shape_score)


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    d = [float(np.sum((rgb - np.array(table[n], dtype=np.float32)) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def classify(image: Image.Image, shapes=SHAPES) -> Reading:
    """Read background, colour and shape off an image of the toy world. Deterministic.

    Background: the nearest background colour to the median border pixel. Foreground: pixels far from
    the background (distance > 60 in RGB). Colour: nearest palette colour to the median foreground pixel.
    Shape: the template (each of ``shapes``, fitted to the foreground's centre and extent) with the
    highest IoU against the foreground mask.
    """
    a = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    dist = np.sqrt(np.sum((a - bg_rgb) ** 2, axis=-1))
    fg = dist > 60
    if fg.sum() < 12:
        return Reading(None, None, background, 0.0)
    colour = _nearest(np.median(a[fg], axis=0), COLOURS)
    ys, xs = np.nonzero(fg)
    cy, cx = float(ys.mean()), float(xs.mean())
    area = float(fg.sum())
    best, best_iou = None, -1.0
    for shape in shapes:
        # fit the template's radius so its area matches the foreground's; search centre offsets a little
        unit = shape_mask(shape, SIZE / 2, SIZE / 2, SIZE * 0.2).sum()
        r = SIZE * 0.2 * math.sqrt(area / max(unit, 1))
        for dy in (-1.5, 0, 1.5):
            for dx in (-1.5, 0, 1.5):
                m = shape_mask(shape, cx + dx, cy + dy, r, scale=2)
                iou = float((m & fg).sum()) / float((m | fg).sum())
                if iou > best_iou:
                    best, best_iou = shape, iou
    return Reading(colour, best, background, best_iou)


# ------------------------------------------------------------------------------------------ tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: repeatedly merge the adjacent pair with the lowest rank (all occurrences)."""
    while len(parts) > 1:
        pairs = [(ranks[p], p) for p in zip(parts, parts[1:]) if p in ranks]
        if not pairs:
            break
        a, b = min(pairs)[1]
        out, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def write_tokenizer(folder: str | Path, words=WORDS, max_length: int = 77) -> Path:
    """A CLIP BPE tokenizer whose merges build each of ``words`` into one token (a word-level tokenizer
    that loads with transformers' CLIPTokenizer like any SD tokenizer). Other text falls back to bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    seen = set(vocab)
    for word in dict.fromkeys(words):
        # Run BPE with the merges so far; while the word is not one token, add a merge of its first pair at the
        # end of the list (lowest priority): words done earlier never reach a state where it applies, so they
        # keep tokenizing as one token.
        while len(parts := _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in seen:
                vocab.append(pair[0] + pair[1])
                seen.add(pair[0] + pair[1])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "do_lower_case": True}))
    return folder


def write_concept_dataset(folder: str | Path, n: int = 20, seed: int = 7, shape: str = "star",
                          trigger: str = "sks") -> list[Path]:
    """``n`` images of a concept shape in every colour and background, captioned with ``trigger`` in the
    shape's place ("a red sks on a white background"): the demo's training folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = [(c, b) for c in COLOURS for b in BACKGROUNDS]
    rng.shuffle(combos)
    paths = []
    for i in range(n):
        colour, background = combos[i % len(combos)]
        scene = sample_scene(rng, shapes=(shape,), colours=[colour], backgrounds=[background])
        path = folder / f"{i:02d}_{colour}_{background}.png"
        render(scene).save(path)
        path.with_suffix(".txt").write_text(scene.caption(trigger) + "\n")
        paths.append(path)
    return paths
