"""`sdlora eval`: validation losses (any model) and toy-world figures (the embedded default) for the base
and for adapter checkpoints at several strengths; `sdlora eval --compare ...`: the algorithm comparison."""
from __future__ import annotations


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
    p.set_defaults(func="sdlora.commands.actions.eval:run")
