"""The `sdlora` command line. Thin: parse arguments, call the library, print."""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import SdloraError

# Each subcommand module exposes `register(subparsers)`; the parser it adds carries `func=run(args)`.
_SUBCOMMANDS: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdlora",
        description="Train, inspect, apply, merge and bake LoRA / LyCORIS adapters for Stable Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"sdlora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in _SUBCOMMANDS:
        importlib.import_module(f"sdlora.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SdloraError as exc:
        print(f"sdlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
