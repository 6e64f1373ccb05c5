"""The entry point of a job's child process: ``python -m sdlora.studio.child COMMAND ARGS...`` runs one
``sdlora`` command exactly as the CLI does. SIGINT is given Python's default handler first (a server started
in the background inherits an ignored SIGINT), so Stop reaches the trainer's clean interrupt."""
from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress comes from events.jsonl; the log stays readable
    from sdlora.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
