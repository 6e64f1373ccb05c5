"""What `sdlora eval` does once its options (sdlora/commands/eval.py) are parsed."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdlora import evaluation as ev
from sdlora.errors import ConfigError
from sdlora.models import open_model
from sdlora.toy import evaluate as tev
from sdlora.toy.compare import compare
from sdlora.toy.demo import default_model_path


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--strengths {text!r}: give numbers separated by commas, e.g. 0,0.5,1") from None


def run(args) -> int:
    if args.compare:
        compare(args.out, [a.strip() for a in args.compare.split(",") if a.strip()], steps=args.steps,
                check_every=args.check_every, seed=42 if args.seed is None else args.seed, per_prompt=args.per_prompt, model_path=args.model)
        return 0

    strengths = _floats(args.strengths)
    model = open_model(args.model or default_model_path(), dtype=torch.float32, tokenizer=args.tokenizer)
    model.pipe.set_progress_bar_config(disable=True)
    toy = tev.is_toy_model(model) if args.toy is None else args.toy
    sets = []
    if args.concept:
        sets.append(ev.ValidationSet.from_folder(model, args.concept, "concept", args.resolution))
    if args.prior:
        sets.append(ev.ValidationSet.from_folder(model, args.prior, "prior", args.resolution))
    if toy and not sets:
        sets = list(tev.toy_sets(model, trigger=args.trigger))
    if not sets and not toy:
        raise ConfigError("nothing to measure: give --concept DIR (held-out images of what the adapter learned, "
                          "with .txt captions) and optionally --prior DIR (images of what it should not change)")
    for vs in sets:
        for name, why in vs.skipped:
            print(f"eval: skipped {vs.name} image {name}: {why}")
    for path in args.adapters:
        if not Path(path).is_file():
            raise ConfigError(f"adapter {path} does not exist")
    rows = tev.evaluate(model, args.adapters, strengths=strengths, sets=sets, toy=toy, per_prompt=args.per_prompt,
                       seed=1000 if args.seed is None else args.seed, trigger=args.trigger)
    paths = ev.write_outputs(rows, args.out, {"model": str(args.model or default_model_path()),
                                              "strengths": strengths, "toy": toy})
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print(ev.format_table(rows))
    print(f"eval: table {paths['table']}, plot {paths['plot']}, data {paths['json']}")
    return 0
