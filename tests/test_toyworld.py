"""The toy world of the embedded default: its tokenizer, renderer, classifier and concept data set."""
from __future__ import annotations

import random

import numpy as np
import pytest
from transformers import CLIPTokenizer

from sdlora.toy import world as tw


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(str(tw.write_tokenizer(tmp_path_factory.mktemp("tok"))))


def test_every_word_is_one_token(tokenizer):
    """A regression: merges written word by word once left 'green' as g/re/e/n (the 're' merge of 'red'
    ranked first), so the model could not tell green from the other colours."""
    for word in tw.WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = tokenizer("a green sks on a white background").input_ids
    assert len(ids) == 2 + 7 and len(set(ids[1:-1])) == 6  # bos, 7 words (a twice), eos
    assert tokenizer.tokenize("zebra") != ["zebra</w>"]  # unknown words fall back to pieces, never fail


def test_bpe_matches_the_tokenizer_on_arbitrary_word_lists(tmp_path):
    rng = random.Random(0)
    letters = "abcdegilnorstu"
    words = tuple(dict.fromkeys("".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(60)))
    tok = CLIPTokenizer.from_pretrained(str(tw.write_tokenizer(tmp_path, words=words)))
    assert [w for w in words if tok.tokenize(w) != [w + "</w>"]] == []


def test_classifier_reads_rendered_scenes():
    rng = random.Random(123)
    scenes = [tw.sample_scene(rng, shapes=tw.SHAPES) for _ in range(400)]
    reads = [tw.classify(tw.render(s)) for s in scenes]
    assert all(r.colour == s.colour for r, s in zip(reads, scenes))
    assert all(r.background == s.background for r, s in zip(reads, scenes))
    shape_ok = sum(r.shape == s.shape for r, s in zip(reads, scenes)) / len(scenes)
    assert shape_ok >= 0.99
    stars = [r for r, s in zip(reads, scenes) if s.shape == "star"]
    assert len(stars) > 50 and sum(r.shape == "star" for r in stars) / len(stars) >= 0.98


def test_classifier_on_blank_and_base_only():
    from PIL import Image

    blank = tw.classify(Image.new("RGB", (tw.SIZE, tw.SIZE), tw.BACKGROUNDS["gray"]))
    assert blank.shape is None and blank.background == "gray"
    star = tw.render(tw.Scene("red", "star", "white", 16, 16, 8))
    assert tw.classify(star).shape == "star"
    assert tw.classify(star, shapes=tw.BASE_SHAPES).shape in tw.BASE_SHAPES  # restricted to the base shapes


def _outline(points: int, inner: float, radius: float, blur: float, rot: float = 0.0, fill=(40, 80, 225),
             bg=(245, 245, 245)):
    """A 2·points-vertex outline (outer ``radius``, inner ``inner``·radius), drawn at 4× and reduced like
    ``render``, then blurred by ``blur`` px: generated images have softer edges than the renderer's."""
    import math

    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("RGB", (tw.SIZE * 4, tw.SIZE * 4), bg)
    pts = []
    for k in range(2 * points):
        r = radius if k % 2 == 0 else radius * inner
        a = math.radians(-90 + rot + 180 / points * k)
        pts.append(((16 + r * math.cos(a)) * 4, (16 + r * math.sin(a)) * 4))
    ImageDraw.Draw(img).polygon(pts, fill=fill)
    img = img.resize((tw.SIZE, tw.SIZE), Image.LANCZOS)
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


@pytest.mark.parametrize("blur", [0.0, 0.6, 1.0])
def test_classifier_reads_blunt_stars_and_no_convex_shape_as_a_star(blur):
    """A regression: generated stars have shorter, rounder points than the renderer's, and the area-matched
    IoU template read clear five-pointed stars (inner/outer radius 0.6) as circles or squares. The star is
    read from its outline's 5-fold signature; a pentagon (convex: inner/outer 0.81) or a blurred circle,
    square or triangle is not a star."""
    from PIL import ImageFilter

    for radius in (6.5, 8.0, 9.5):
        for inner in (0.42, 0.5, 0.6, 0.65):
            img = _outline(5, inner, radius, blur, rot=5)
            assert tw.classify(img).shape == "star", (radius, inner)
            assert tw.classify(img, shapes=tw.BASE_SHAPES).shape in tw.BASE_SHAPES
        pentagon = tw.classify(_outline(5, 0.81, radius, blur))
        assert pentagon.shape != "star" and pentagon.star_signature < tw.STAR_SIGNATURE
        for shape in tw.BASE_SHAPES:
            img = tw.render(tw.Scene("green", shape, "gray", 16, 16, radius))
            img = img.filter(ImageFilter.GaussianBlur(blur)) if blur else img
            assert tw.classify(img).shape == shape, (shape, radius)


def test_radial_harmonics_of_known_outlines():
    def coverage(img):
        a = np.asarray(img, dtype=np.float32)
        return np.clip(np.sqrt(((a - 245.0) ** 2).sum(-1)) / np.sqrt(((np.array([40, 80, 225]) - 245.0) ** 2).sum()), 0, 1)

    circle = tw.radial_harmonics(coverage(_outline(36, 1.0, 8.0, 0.0)))  # a 72-gon: a circle at this size
    assert max(circle.values()) < 0.02
    star = tw.radial_harmonics(coverage(_outline(5, 0.42, 8.0, 0.0)))
    assert star[5] > 0.25 and star[3] < 0.05 and star[4] < 0.05
    square = tw.radial_harmonics(coverage(_outline(4, 0.7071, 8.0, 0.0, rot=45)))  # vertices at the corners
    assert 0.1 < square[4] < 0.16 and square[5] < 0.03
    assert tw.radial_harmonics(np.zeros((32, 32))) == {3: 0.0, 4: 0.0, 5: 0.0}


def test_render_is_deterministic():
    s = tw.Scene("blue", "triangle", "black", 15.5, 16.2, 7.3)
    assert np.array_equal(np.asarray(tw.render(s)), np.asarray(tw.render(s)))


def test_concept_dataset(tmp_path):
    paths = tw.write_concept_dataset(tmp_path, n=20)
    assert len(paths) == 20 and all(p.is_file() for p in paths)
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    assert all(c.startswith("a ") and " sks on a " in c for c in captions)
    assert not any(shape in c for c in captions for shape in tw.SHAPES)  # the trigger stands for the shape
    assert len({(c.split()[1], c.split()[-2]) for c in captions}) == 12  # every colour × background pair
    from PIL import Image

    assert all(tw.classify(Image.open(p)).shape == "star" for p in paths)
