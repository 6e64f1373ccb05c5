"""What `sdlora studio` does once its options (sdlora/commands/studio.py) are parsed."""
from __future__ import annotations

from sdlora.commands.studio import resolve_token
from sdlora.studio.serve import serve


def run(args) -> int:
    return serve(args.root, args.host, args.port, resolve_token(args.host, args.token))
