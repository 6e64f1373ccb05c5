"""The `sdlora` command line. Thin: parse arguments, call the library, print."""
from __future__ import annotations

import argparse
import sys

from sdlora import __version__
from sdlora.errors import SdloraError

# Each module of sdlora/commands exposes `register(subparsers)`; the parser it adds sets `func`.

# Each module of sdlora/commands exposes `register(subparsers)`; the parser it adds sets `func`.
# Modules are found by name, so a new command needs no edit here.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdlora",
        description="Train, inspect, apply, merge and bake LoRA / LyCORIS adapters for Stable Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"sdlora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib
    import pkgutil

    from sdlora import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"sdlora.commands.{info.name}").register(sub)
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
