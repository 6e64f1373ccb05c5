"""`sdlora eval`: validation losses (any model) and toy-world figures (the embedded default) for the base
and for adapter checkpoints at several strengths; `sdlora eval --compare ...`: the algorithm comparison."""
from __future__ import annotations

import json
from pathlib import Path


def _floats(text: str) -> list[float]:
    from sdlora.errors import ConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--strengths {text!r}: give numbers separated by commas, e.g. 0,0.5,1") from None


def run(args) -> int:
    from sdlora.errors import ConfigError

    if args.compare:
        from sdlora.toy.compare import compare

        compare(args.out, [a.strip() for a in args.compare.split(",") if a.strip()], steps=args.steps,
                check_every=args.check_every, seed=42 if args.seed is None else args.seed, per_prompt=args.per_prompt, model_path=args.model)
        return 0

    import torch

    from sdlora import evaluation as ev
    from sdlora.toy import evaluate as tev
    from sdlora.toy.demo import default_model_path
    from sdlora.models import open_model

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


def register(sub) -> None:
    p = sub.add_parser("eval", help="validation loss and concept figures for the base and adapter checkpoints",
                       description=__doc__)
    p.add_argument("adapters", nargs="*", help="adapter files (e.g. the checkpoints of one training)")
    p.add_argument("--model", default=None, help="base model (default: the embedded default)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for a single-file model")
    p.add_argument("--strengths", default="0,0.25,0.5,0.75,1,1.25", help="adapter strengths, comma-separated")
    p.add_argument("--concept", default=None, help="held-out images of the concept (with .txt captions)")
    p.add_argument("--prior", default=None, help="images of what the adapter should leave alone (with captions)")
    p.add_argument("--resolution", type=int, default=None, help="square size for the validation images "
                   "(default: the model's native size)")
    toy = p.add_mutually_exclusive_group()
    toy.add_argument("--toy", dest="toy", action="store_true", default=None,
                     help="toy-world figures (automatic for the embedded default)")
    toy.add_argument("--no-toy", dest="toy", action="store_false")
    p.add_argument("--trigger", default="sks", help="trigger word of the toy concept")
    p.add_argument("--per-prompt", type=int, default=4, help="samples per toy prompt")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default 1000); with --compare the "
                   "training seed (default 42)")
    p.add_argument("--out", default="sdlora-eval", help="folder for eval.json, eval.txt and eval.png")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--compare", default=None, metavar="ALGOS",
                   help="instead: train and compare these algorithms on the demo concept, e.g. lora,locon,loha,lokr")
    p.add_argument("--steps", type=int, default=1000, help="--compare: training steps per algorithm")
    p.add_argument("--check-every", type=int, default=250, help="--compare: checkpoint interval")
    p.set_defaults(func=run)
