"""The generation worker: one child process (multiprocessing, spawn) that keeps the last model and its
``AdapterStack`` loaded between requests, so a crash in generation never takes the server down and a
changed strength is one ``stack.set_strength`` call (no reload, nothing else re-patched).

A request is a dict: model (absolute path), adapters [{name, path, strength, te_strength, block_weights}],
prompt, negative, sampler, steps, cfg, seed, width, height, count, sweep (strengths or None), sweep_lora,
out (folder), lora_dir (where ``<lora:name:w>`` tags are looked up). The answer lists the PNGs written
(as ``sdlora generate`` writes them: ``NNNNN-SEED.png`` with A1111 parameters) and what changed in the
stack: model_loaded, added, removed, updated, kept.
"""
from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

from sdlora.errors import SdloraError


class WorkerCrashed(SdloraError):
    """The generation process died; the next request starts a new one."""


class _State:
    def __init__(self):
        self.model = None
        self.model_path: str | None = None
        self.versions: dict[str, int] = {}  # adapter name -> file mtime when it was loaded

    def _open(self, path: str) -> bool:
        if self.model is not None and self.model_path == path:
            return False
        import torch

        from sdlora.inference.stack import AdapterStack
        from sdlora.models import open_model

        self.model = None
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = open_model(path, dtype=torch.float16 if device == "cuda" else torch.float32)
        model.pipe.to(device)
        AdapterStack(model)
        self.model, self.model_path = model, path
        return True

    def _sync(self, wanted: list[dict[str, Any]]) -> dict[str, list[str]]:
        stack = self.model.stack
        want = {a["name"]: a for a in wanted}
        changes: dict[str, list[str]] = {"added": [], "removed": [], "updated": [], "kept": []}
        for adapter in list(stack):
            w = want.get(adapter.name)
            if w is None or str(Path(adapter.path).resolve()) != w["path"] or \
                    self.versions.get(adapter.name) != w.get("mtime"):
                stack.remove(adapter.name)
                changes["removed"].append(adapter.name)
        for name, w in want.items():
            if name not in stack:
                stack.add(w["path"], name=name, strength=w["strength"], te_strength=w.get("te_strength"),
                          block_weights=w.get("block_weights") or None)
                self.versions[name] = w.get("mtime")
                changes["added"].append(name)
                continue
            a = stack[name]
            same = (a.strength == w["strength"] and a.te_strength == w.get("te_strength")
                    and (a.block_spec or None) == (w.get("block_weights") or None))
            if same:
                changes["kept"].append(name)
            else:
                stack.set_strength(name, w["strength"], te_strength=w.get("te_strength"),
                                   block_weights=w.get("block_weights") or None)
                changes["updated"].append(name)
        return changes

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        from sdlora.inference.generate import generate, next_index, save_png, sweep

        loaded = self._open(req["model"])
        changes = self._sync(req["adapters"])
        common = dict(negative_prompt=req["negative"], seed=req["seed"], count=req["count"], steps=req["steps"],
                      cfg=req["cfg"], sampler=req["sampler"], width=req["width"], height=req["height"],
                      lora_dir=req["lora_dir"], progress=False)
        out = Path(req["out"])
        index = next_index(out)
        if req.get("sweep"):
            grid = sweep(self.model, req["prompt"], req["sweep"], adapter=req.get("sweep_lora"), **common)
            written = [(save_png(grid, out / f"{index:05d}-sweep-{grid.seed}.png"), grid)]
        else:
            images = generate(self.model, req["prompt"], **common)
            written = [(save_png(im, out / f"{index + i:05d}-{im.seed}.png"), im) for i, im in enumerate(images)]
        return {"images": [{"path": str(p), "seed": im.seed, "parameters": im.parameters} for p, im in written],
                "model_loaded": loaded, **changes}


def serve(conn) -> None:
    """The worker's loop (runs in the child process)."""
    state = _State()
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        if req is None:
            return
        try:
            resp = state.handle(req)
        except SdloraError as exc:
            resp = {"error": str(exc), "field": getattr(exc, "field", None)}
        except Exception as exc:  # a bug or a broken file: reported, the worker lives on
            resp = {"error": f"generation failed ({type(exc).__name__}: {exc})", "field": None, "internal": True}
        conn.send(resp)


class GenerateWorker:
    """The server's handle on the worker process; one request at a time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(child,), name="sdlora-studio-generate", daemon=True)
        self._proc.start()
        child.close()

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def call(self, req: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
        with self._lock:
            self._ensure()
            try:
                self._conn.send(req)
                if not self._conn.poll(timeout):
                    self._proc.kill()
                    raise WorkerCrashed(f"generation took longer than {timeout:g} s and was stopped; try fewer "
                                        "steps or a smaller size")
                return self._conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                self._proc.join(5)
                code = self._proc.exitcode
                self._proc = None
                raise WorkerCrashed(f"the generation process died (exit code {code}); the server is fine and the "
                                    "next request starts a new one") from None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
                self._proc.join(5)
                if self._proc.is_alive():
                    self._proc.kill()
            self._proc = None
