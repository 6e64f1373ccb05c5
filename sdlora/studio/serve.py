"""Run the studio with uvicorn and print where it is."""
from __future__ import annotations

from pathlib import Path

from sdlora.errors import ConfigError
from sdlora.studio.paths import STATE_DIR


def address(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(root: str | Path, host: str, port: int, token: str | None) -> int:
    import uvicorn

    from sdlora.studio.app import create_app

    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--root {root}: no such folder; name the folder that holds your datasets and runs")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: use a port number between 1 and 65535")
    app = create_app(folder, token=token)
    print(f"sdlora studio on {folder}")
    if not (folder / "datasets").is_dir():
        print("  note: no datasets/ folder here; any folder of images under the root is listed as a dataset")
    print(f"  open {address(host, port, token)}   (REST API: {address(host, port, None)}docs)")
    if token:
        print("  every request needs the token (the link above carries it; or the header Authorization: Bearer TOKEN)")
    print(f"  jobs and history: {folder / STATE_DIR / 'studio.db'}; Ctrl+C stops (a running training saves its state)")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return 0
