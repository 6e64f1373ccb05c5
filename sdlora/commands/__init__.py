"""The CLI's commands. `sdlora/commands/<name>.py` defines the options of `sdlora <name>` (its
`register(subparsers)` adds one parser) and imports only argparse, the standard library and light sdlora
modules; what the command does lives in `sdlora/commands/actions/<name>.py` (`run(args)`), named by the
parser's `func` as "module:function" and imported by sdlora.cli only after parsing.

A new command: add both modules and list the first in COMMANDS."""
from __future__ import annotations

from sdlora.commands import (bake, convert, demo, eval, extract, generate, inspect, merge, resize, studio,
                             train)

COMMANDS = (bake, convert, demo, eval, extract, generate, inspect, merge, resize, studio, train)
