"""The `sdlora` command line. Thin: parse arguments, call the library, print.

Start-up stays light. The parsers come from sdlora.commands, whose modules import only argparse, the
standard library and light sdlora modules; each parser's `func` names its action as "module:function"
(e.g. "sdlora.commands.actions.generate:run"). `main` imports that module after parsing: this is the CLI's
one lazy import, so `sdlora --help` and `sdlora COMMAND --help` load neither torch nor diffusers.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from sdlora import __version__
from sdlora.commands import COMMANDS
from sdlora.errors import SdloraError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdlora",
        description="Train, inspect, apply, merge and bake LoRA / LyCORIS adapters for Stable Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"sdlora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def action(target: str) -> Callable[[argparse.Namespace], int | None]:
    """The function a parser's ``func`` names: "package.module:function", imported now (the lazy point)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    try:  # Ctrl+C at any point, start-up (parsing, the action's imports) included, is one line
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(action(args.func)(args) or 0)
    except SdloraError as exc:
        print(f"sdlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
