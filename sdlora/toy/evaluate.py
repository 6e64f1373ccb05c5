"""The toy world's figures of a model, from generated samples read by the deterministic classifier.

- ``concept_rate``: share of samples of ``a <colour> <trigger> on a <background> background`` that show the
  concept shape; ``concept_colour``: share of those whose colour is the prompted one;
- ``prior_accuracy``: share of samples of the base prompts ``a <colour> <shape> on a <background>
  background`` that show the prompted colour *and* shape (with the adapter at that strength);
- ``diversity``: mean pixel RMS distance between samples of one concept prompt at different seeds
  (0 = every seed gives the same picture; needs two or more samples per prompt).

Samples are generated in batches with one CPU generator per sample (seed ``seed + k`` for the k-th sample
of a prompt list), so a figure does not depend on the batch size. ``evaluate`` is the generic evaluation
(``sdlora.evaluation``) with these figures added for a toy-world model.
"""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sdlora.evaluation import run
from sdlora.evaluation.run import STRENGTHS, EvalRow
from sdlora.evaluation.validation import ValidationSet
from sdlora.inference.generate import _prepare, to_pil
from sdlora.models import BaseModel
from sdlora.toy import world as tw


def is_toy_model(model: BaseModel) -> bool:
    """True for a model of the toy world (its tokenizer knows exactly the toy vocabulary)."""
    try:
        vocab = model.tokenizers[0].get_vocab()
    except Exception:  # noqa: BLE001 - any tokenizer without a vocabulary is not the toy one
        return False
    return len(vocab) < 1000 and all(f"{w}</w>" in vocab for w in tw.WORDS)


def toy_sets(model: BaseModel, concept_shape: str = "star", trigger: str = "sks", n: int = 12
             ) -> tuple[ValidationSet, ValidationSet]:
    """Held-out toy images: ``n`` of the concept (a seed the demo's training folder does not use) and
    ``n`` of the base shapes, with their captions."""
    rng = random.Random(90210)
    combos = [(c, b) for c in tw.COLOURS for b in tw.BACKGROUNDS]
    concept = [tw.sample_scene(rng, shapes=(concept_shape,), colours=[c], backgrounds=[b])
               for c, b in combos[:n]]
    rng = random.Random(4321)
    prior = [tw.sample_scene(rng) for _ in range(n)]
    return (ValidationSet.from_images(model, "concept", [tw.render(s) for s in concept],
                                      [s.caption(trigger) for s in concept], tw.SIZE),
            ValidationSet.from_images(model, "prior", [tw.render(s) for s in prior],
                                      [s.caption() for s in prior], tw.SIZE))


@torch.no_grad()
def sample_batch(model: BaseModel, captions: Sequence[str], seeds: Sequence[int], *, steps: int = 25,
                 cfg: float = 3.0, sampler: str = "ddim", batch: int = 64, size: int | None = None
                 ) -> list[np.ndarray]:
    """One image per (caption, seed) as (H, W, 3) floats in [0, 1], generated ``batch`` at a time with the
    model's current adapters; sample k uses its own CPU generator seeded with ``seeds[k]``."""
    w, h = _prepare(model, sampler, size, size)
    out: list[np.ndarray] = []
    for start in range(0, len(captions), batch):
        caps = list(captions[start:start + batch])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch]]
        res = model.pipe(prompt=caps, num_inference_steps=int(steps), guidance_scale=float(cfg), width=w,
                         height=h, generator=gens, output_type="np")
        out.extend(np.asarray(img, dtype=np.float32) for img in res.images)
    return out


def concept_prompts(trigger: str = "sks") -> list[tw.Scene]:
    return [tw.Scene(c, trigger, b, 0, 0, 0) for c in tw.COLOURS for b in tw.BACKGROUNDS]


def prior_prompts() -> list[tw.Scene]:
    return [tw.Scene(c, s, b, 0, 0, 0) for c in tw.COLOURS for s in tw.BASE_SHAPES for b in tw.BACKGROUNDS]


def toy_figures(model: BaseModel, *, per_prompt: int = 2, seed: int = 1000, steps: int = 25, cfg: float = 3.0,
                concept_shape: str = "star", trigger: str = "sks", prior: bool = True, batch: int = 64) -> dict:
    """Concept rate, concept colour accuracy, diversity and (when ``prior``) prior accuracy of the model as
    it stands (adapters and strengths as set)."""
    concept = concept_prompts(trigger)
    caps = [sc.caption() for sc in concept for _ in range(per_prompt)]
    seeds = [seed + k for k in range(len(caps))]
    imgs = sample_batch(model, caps, seeds, steps=steps, cfg=cfg, batch=batch)
    reads = [tw.classify(to_pil(a)) for a in imgs]
    wanted = [sc for sc in concept for _ in range(per_prompt)]
    out: dict = {
        "concept_rate": sum(r.shape == concept_shape for r in reads) / len(reads),
        "concept_colour": sum(r.colour == sc.colour for r, sc in zip(reads, wanted)) / len(reads),
        "diversity": _diversity(imgs, per_prompt),
        "samples_concept": len(reads),
    }
    if prior:
        scenes = prior_prompts()
        caps = [sc.caption() for sc in scenes for _ in range(per_prompt)]
        pseeds = [seed + 50000 + k for k in range(len(caps))]
        pimgs = sample_batch(model, caps, pseeds, steps=steps, cfg=cfg, batch=batch)
        wanted = [sc for sc in scenes for _ in range(per_prompt)]
        preads = [tw.classify(to_pil(a), shapes=tw.SHAPES) for a in pimgs]
        out["prior_accuracy"] = sum(r.shape == sc.shape and r.colour == sc.colour
                                    for r, sc in zip(preads, wanted)) / len(preads)
        out["prior_colour"] = sum(r.colour == sc.colour for r, sc in zip(preads, wanted)) / len(preads)
        out["prior_shape"] = sum(r.shape == sc.shape for r, sc in zip(preads, wanted)) / len(preads)
        out["prior_shows_concept"] = sum(r.shape == concept_shape for r in preads) / len(preads)
        out["samples_prior"] = len(preads)
    return out


def _diversity(images: list[np.ndarray], per_prompt: int) -> float | None:
    if per_prompt < 2:
        return None
    dists = []
    for start in range(0, len(images), per_prompt):
        group = images[start:start + per_prompt]
        for a, b in itertools.combinations(group, 2):
            dists.append(float(np.sqrt(((a - b) ** 2).mean())))
    return float(np.mean(dists)) if dists else None


def evaluate(model: BaseModel, adapters: Sequence[str | Path] = (), *, strengths: Sequence[float] = STRENGTHS,
             sets: Sequence[ValidationSet] = (), toy: bool | None = None, per_prompt: int = 2, seed: int = 1000,
             steps: int = 25, cfg: float = 3.0, trigger: str = "sks", concept_shape: str = "star",
             prior_at: Sequence[float] | None = None, log: Callable[[str], None] = print) -> list[EvalRow]:
    """``sdlora.evaluation.evaluate`` with, for a toy-world model, the toy figures in every row.
    ``prior_at`` limits the adapter rows' prior-accuracy samples to those strengths (all when None; the
    base row always has them)."""
    toy = is_toy_model(model) if toy is None else toy

    def figures(strength: float, base: bool) -> dict:
        prior = base or prior_at is None or any(math.isclose(strength, p) for p in prior_at)
        return toy_figures(model, per_prompt=per_prompt, seed=seed, steps=steps, cfg=cfg,
                           concept_shape=concept_shape, trigger=trigger, prior=prior)

    return run.evaluate(model, adapters, strengths=strengths, sets=sets, figures=figures if toy else None, log=log)
