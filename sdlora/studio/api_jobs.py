"""Jobs: queue and history, progress from the trainer's events.jsonl, live events (SSE), stop, resume,
"sample now" / "save now" through the trainer's control.json."""
from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

from sdlora.studio.context import Conflict, Invalid, studio_of
from sdlora.studio.paths import NotFound, relative
from sdlora.studio.store import FINISHED
from sdlora.trainers import control

router = APIRouter(tags=["jobs"])
TICK = 0.5  # seconds between live updates: at most two a second
LOG_LINES = 200
_BAR = re.compile(r"^\s*\w+:\s+\d+%\|")  # tqdm progress redraws: the events carry the progress


def log_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.strip() and not _BAR.match(ln)]


class ControlBody(BaseModel):
    action: str


def _job(studio, job_id: int) -> dict[str, Any]:
    job = studio.store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", "id")
    return job


def _events_path(job: dict[str, Any]) -> Path | None:
    return Path(job["out_dir"]) / "events.jsonl" if job["kind"] == "train" and job["out_dir"] else None


def _clean(root: Path, event: dict[str, Any]) -> dict[str, Any]:
    if "images" in event:
        event["images"] = [relative(root, p) for p in event["images"]]
    for key in ("adapter", "state"):
        if event.get(key):
            event[key] = relative(root, event[key])
    return event


def read_lines(path: Path | None, offset: int) -> tuple[list[str], int, bool]:
    """Complete lines of ``path`` after byte ``offset``: (lines, new offset, whether the file was restarted)."""
    if path is None or not path.is_file():
        return [], offset, False
    size = path.stat().st_size
    reset = size < offset
    if reset:
        offset = 0
    if size == offset:
        return [], offset, reset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    return lines, offset + end, reset


def _parse(root: Path, lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            out.append(_clean(root, json.loads(line)))
        except ValueError:
            continue
    return out


def summary(root: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    """step / total / loss / lr / it/s / ETA, the samples and the saves, from a training's events."""
    steps = [e for e in events if e["kind"] == "step"]
    last = steps[-1] if steps else None
    starts = [e for e in events if e["kind"] == "start"]
    total = (last or (starts[-1] if starts else {})).get("total")
    step = last["step"] if last else (starts[-1]["step"] if starts else 0)
    its = last.get("its") if last else None
    return {"step": step, "total": total, "loss": last.get("loss") if last else None,
            "lr": last.get("lr") if last else None, "its": its,
            "eta_s": round((total - step) / its, 1) if its and total else None,
            "samples": [e for e in events if e["kind"] == "sample"],
            "saves": [e for e in events if e["kind"] == "save"],
            "ended": next((e["status"] for e in reversed(events) if e["kind"] == "end"), None)}


_parsed: dict[str, tuple[bytes, int, list[dict[str, Any]]]] = {}  # file -> (first line, bytes read, events)
_parsed_lock = threading.Lock()


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.readline(200)
    except OSError:
        return b""


def job_events(root: Path, path: Path | None) -> list[dict[str, Any]]:
    """A training's events so far; each file is read once, then only what was added (a long training's
    file has a line per step). A file started anew (another first line: a fresh run) is read from the start."""
    if path is None:
        return []
    with _parsed_lock:
        head = _head(path)
        seen, offset, events = _parsed.get(str(path), (b"", 0, []))
        if head != seen:
            offset, events = 0, []
        lines, new_offset, reset = read_lines(path, offset)
        events = _parse(root, lines) if reset else events + _parse(root, lines)
        _parsed[str(path)] = (head, new_offset, events)
        return events


def _resumable(job: dict[str, Any]) -> bool:
    out = job.get("out_dir")
    return job["kind"] == "train" and job["status"] in FINISHED and job["status"] != "done" and bool(out) and \
        any(Path(out).glob("state-*/trainer.json"))


def describe(studio, job: dict[str, Any], with_events: bool = False) -> dict[str, Any]:
    out = dict(job)
    out["argv"] = [relative(studio.root, a) if a.startswith(str(studio.root)) else a for a in job["argv"]]
    for key in ("out_dir", "config_path"):
        if out.get(key):
            out[key] = relative(studio.root, out[key])
    out.pop("log_path", None)
    out["resumable"] = _resumable(job)
    if job["kind"] == "train":
        events = job_events(studio.root, _events_path(job))
        out["progress"] = summary(studio.root, events)
        if with_events:
            out["points"] = [{"step": e["step"], "loss": e.get("loss"), "lr": e.get("lr")}
                             for e in events if e["kind"] == "step"]
    return out


@router.get("/api/jobs")
def list_jobs(request: Request) -> list[dict[str, Any]]:
    studio = studio_of(request)
    return [describe(studio, j) for j in studio.store.list()]


@router.get("/api/jobs/{job_id}")
def get_job(request: Request, job_id: int) -> dict[str, Any]:
    """One job with its progress and every loss / LR point so far."""
    studio = studio_of(request)
    return describe(studio, _job(studio, job_id), with_events=True)


@router.get("/api/jobs/{job_id}/log", response_class=PlainTextResponse)
def get_log(request: Request, job_id: int) -> str:
    studio = studio_of(request)
    _job(studio, job_id)
    path = studio.runner.log_path(job_id)
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join(log_lines(text.splitlines()))


@router.post("/api/jobs/{job_id}/stop")
def stop(request: Request, job_id: int) -> dict[str, Any]:
    """Cancel a queued job; interrupt a running one (a training saves its adapter and a resumable state)."""
    studio = studio_of(request)
    job = _job(studio, job_id)
    if job["status"] in FINISHED:
        raise Conflict(f"job {job_id} has already finished ({job['status']})", "id")
    return describe(studio, studio.runner.stop(job_id))


@router.post("/api/jobs/{job_id}/resume")
def resume(request: Request, job_id: int) -> dict[str, Any]:
    """Queue ``sdlora train --resume OUT`` for a stopped or interrupted training (from its latest state)."""
    studio = studio_of(request)
    job = _job(studio, job_id)
    if not _resumable(job):
        raise Conflict(f"job {job_id} cannot be resumed: only a stopped, failed or interrupted training with a "
                       "saved state can", "id")
    for other in studio.store.list():
        if other["status"] in ("queued", "running") and other["out_dir"] == job["out_dir"]:
            raise Conflict(f"job {other['id']} already works on {relative(studio.root, job['out_dir'])}", "id")
    title = f"resume {job['title'].removeprefix('resume ')}"
    new = studio.runner.submit("train", title, ["train", "--resume", job["out_dir"]], out_dir=job["out_dir"],
                               config_path=job["config_path"], resume_of=job_id)
    return describe(studio, new)


@router.post("/api/jobs/{job_id}/control")
def control_job(request: Request, job_id: int, body: ControlBody) -> dict[str, Any]:
    """Ask a running training to draw samples (``sample``) or save adapter + state (``save``) after its
    current step."""
    studio = studio_of(request)
    job = _job(studio, job_id)
    if body.action not in control.ACTIONS:
        raise Invalid(f"action = {body.action!r} is not allowed: use one of {', '.join(control.ACTIONS)}",
                          "action")
    if job["kind"] != "train" or job["status"] != "running":
        raise Conflict(f"job {job_id} is not a running training ({job['status']})", "id")
    return {"id": job_id, "action": body.action, "seq": control.request(job["out_dir"], body.action)}


@router.get("/api/jobs/{job_id}/events")
async def events(request: Request, job_id: int) -> StreamingResponse:
    """Server-sent events, at most two a second: ``update`` {status, events (new trainer events), log (new
    log lines), progress}, then ``end`` when the job has finished."""
    studio = studio_of(request)
    _job(studio, job_id)

    async def stream():
        ev_off, log_off, seen_status, head = 0, 0, None, b""
        log_path = studio.runner.log_path(job_id)
        while True:
            job = studio.store.get(job_id)
            path = _events_path(job)
            started_anew = path is not None and ev_off > 0 and _head(path) != head
            if started_anew:  # a fresh run rewrote the file since the last tick
                ev_off = 0
            lines, ev_off, reset = read_lines(path, ev_off)
            reset = reset or started_anew
            if path is not None and lines:
                head = _head(path)
            log, log_off, _ = read_lines(log_path, log_off)
            log = log_lines(log)
            new = _parse(studio.root, lines)
            if new or log or reset or job["status"] != seen_status:
                seen_status = job["status"]
                data = {"status": job["status"], "error": job["error"], "reset": reset, "events": new,
                        "log": log[-LOG_LINES:], "resumable": _resumable(job)}
                yield f"event: update\ndata: {json.dumps(data)}\n\n"
            elif job["status"] in FINISHED:
                yield f"event: end\ndata: {json.dumps({'status': job['status'], 'error': job['error']})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(TICK)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
