"""`sdlora studio [--root DIR] [--host 127.0.0.1] [--port 7860] [--token T]`: the local web app and REST API."""
from __future__ import annotations

import secrets


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def resolve_token(host: str, token: str | None) -> str | None:
    """The token the server requires: the given one; a new one for a host other than the loopback; else none."""
    if token:
        return token
    if host not in LOCAL_HOSTS:
        return secrets.token_urlsafe(18)
    return None


def register(sub) -> None:
    p = sub.add_parser("studio", help="the web app and REST API: datasets, training jobs, adapters, generation, tools",
                       description="Serve sdlora studio (pages and a REST API with its OpenAPI page at /docs) over "
                       "the files under --root. Listens on 127.0.0.1 unless --host says otherwise; any other host "
                       "needs a token on every request (given with --token, or generated and printed).")
    p.add_argument("--root", default=".", metavar="DIR", help="the folder the studio works in (default: here); "
                   "datasets, configs/ presets, runs and adapters are found under it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", help="require this token on every request (default: none on 127.0.0.1, a generated "
                   "one on any other host)")
    p.set_defaults(func="sdlora.commands.actions.studio:run")
