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
    star_signature: float = 0.0  # 5-fold radial signature (h5 of ``radial_harmonics``)

    def as_dict(self) -> dict:
        return dict(colour=self.colour, shape=self.shape, background=self.background, shape_score=self.shape_score,
                    star_signature=self.star_signature)


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    d = [float(np.sum((rgb - np.array(table[n], dtype=np.float32)) ** 2)) for n in names]
    return names[int(np.argmin(d))]


#: A shape reads as a star when the 5-fold part of its outline's radius is at least this share of its mean
#: radius and larger than the 3- and 4-fold parts. Measured on rendered 10-point outlines (radius 6.5-9.5 px,
#: blur 0-1 px, rotated 0-10 degrees): a pentagon (inner/outer radius 0.81, convex) gives 0.052-0.086, stars
#: with inner/outer 0.65 give 0.104-0.170, the world's own star (0.42) 0.174-0.334; 4-fold (square) and
#: 3-fold (triangle) outlines give under 0.04 here.
STAR_SIGNATURE = 0.10


def radial_harmonics(coverage: np.ndarray, orders=(3, 4, 5), n_rays: int = 72) -> dict[int, float]:
    """The outline's radius around the foreground centroid, r(θ) at ``n_rays`` angles (the outermost place
    where a ray's bilinear ``coverage`` falls below 0.5, to a quarter pixel), and for each order k the
    amplitude of its k-th Fourier component divided by the mean radius: about 0.13 for a square (k=4), 0.26
    for a triangle (k=3), 0.17-0.33 for the world's star (k=5), under 0.02 for a circle."""
    h, w = coverage.shape
    ys, xs = np.nonzero(coverage >= 0.5)
    if len(ys) == 0:
        return {k: 0.0 for k in orders}
    cy, cx = float(ys.mean()), float(xs.mean())
    theta = 2 * np.pi * np.arange(n_rays) / n_rays
    steps = np.arange(0.0, float(max(h, w)), 0.25)
    py = cy + np.sin(theta)[:, None] * steps[None, :]
    px = cx + np.cos(theta)[:, None] * steps[None, :]
    inside = (py >= 0) & (px >= 0) & (py <= h - 1) & (px <= w - 1)
    py, px = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)
    y0, x0 = np.floor(py).astype(int), np.floor(px).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = py - y0, px - x0
    v = (coverage[y0, x0] * (1 - fy) * (1 - fx) + coverage[y0, x1] * (1 - fy) * fx
         + coverage[y1, x0] * fy * (1 - fx) + coverage[y1, x1] * fy * fx) * inside
    falls = (v[:, :-1] >= 0.5) & (v[:, 1:] < 0.5)
    radius = np.zeros(n_rays)
    for ray in range(n_rays):
        j = np.nonzero(falls[ray])[0]
        if len(j):
            j = j[-1]
            a, b = v[ray, j], v[ray, j + 1]
            radius[ray] = steps[j] + 0.25 * (a - 0.5) / max(a - b, 1e-6)
    mean = float(radius.mean())
    if mean <= 0:
        return {k: 0.0 for k in orders}
    return {k: float(abs(np.sum(radius * np.exp(-1j * k * theta))) * 2 / n_rays / mean) for k in orders}


def classify(image: Image.Image, shapes=SHAPES) -> Reading:
    """Read background, colour and shape off an image of the toy world. Deterministic.

    Background: the nearest background colour to the median border pixel. Foreground: pixels far from
    the background (distance > 60 in RGB). Colour: nearest palette colour to the median foreground pixel.
    Shape: ``star`` (when in ``shapes``) if the outline's 5-fold radial signature is at least
    ``STAR_SIGNATURE`` and exceeds its 3- and 4-fold ones: the star is the world's one non-convex shape, and
    its five points are what a generated image's soft edges shorten, so the points are read from the outline
    rather than matched against sharp ones. Otherwise the template (each other shape of ``shapes``, fitted
    to the foreground's centre and extent) with the highest IoU against the foreground mask.
    """
    a = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    dist = np.sqrt(np.sum((a - bg_rgb) ** 2, axis=-1))
    fg = dist > 60
    if fg.sum() < 12:
        return Reading(None, None, background, 0.0)
    fg_rgb = np.median(a[fg], axis=0)
    colour = _nearest(fg_rgb, COLOURS)
    # coverage: how much of each pixel the shape covers (anti-aliased and soft edges lie between 0 and 1)
    coverage = np.clip(dist / max(float(np.sqrt(np.sum((fg_rgb - bg_rgb) ** 2))), 1.0), 0.0, 1.0)
    sig = radial_harmonics(coverage)
    if "star" in shapes and sig[5] >= STAR_SIGNATURE and sig[5] > max(sig[3], sig[4]):
        return Reading(colour, "star", background, _best_template(fg, ("star",))[1], sig[5])
    best, best_iou = _best_template(fg, [s for s in shapes if s != "star"] or list(shapes))
    return Reading(colour, best, background, best_iou, sig[5])


def _best_template(fg: np.ndarray, shapes) -> tuple[str | None, float]:
    """The shape whose template, area-matched to the foreground and centred on it (±1.5 px), has the
    highest IoU with it."""
    ys, xs = np.nonzero(fg)
    cy, cx = float(ys.mean()), float(xs.mean())
    area = float(fg.sum())
    best, best_iou = None, -1.0
    for shape in shapes:
        unit = shape_mask(shape, SIZE / 2, SIZE / 2, SIZE * 0.2).sum()
        r = SIZE * 0.2 * math.sqrt(area / max(unit, 1))
        for dy in (-1.5, 0, 1.5):
            for dx in (-1.5, 0, 1.5):
                m = shape_mask(shape, cx + dx, cy + dy, r, scale=2)
                iou = float((m & fg).sum()) / float((m | fg).sum())
                if iou > best_iou:
                    best, best_iou = shape, iou
    return best, best_iou


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
