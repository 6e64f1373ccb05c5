"""The toy world of the embedded default: its tokenizer, renderer, classifier and concept data set."""
from __future__ import annotations

import random

import numpy as np
import pytest
from transformers import CLIPTokenizer

from sdlora import toyworld as tw


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
