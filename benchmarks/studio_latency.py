"""Studio latency under load: page and API requests to a ``sdlora studio`` server while a training runs on
the same machine (the issue's target: p95 under 200 ms), with a Jobs page's event stream open.

    python benchmarks/studio_latency.py                    # about 1 minute on 2 CPU cores
    python benchmarks/studio_latency.py --rounds 60 --json out.json

A root with the demo dataset and the quickstart preset (embedded default model, long enough to outlast the
measurement) is made in a temporary folder; a server is started on a free 127.0.0.1 port; a training is
queued through the API and, once it has logged its first step, ``--rounds`` rounds of the requests below
are sent one after another with a short pause (a person clicking through the pages), each timed from the
request to the last byte. Then the training is stopped and the server ended. Only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from studiokit import make_root, wait_for  # noqa: E402

REQUESTS = [  # (label, path): what the six pages load
    ("page /", "/"), ("page app.js", "/static/app.js"), ("page jobs.js", "/static/pages/jobs.js"),
    ("GET /api/datasets", "/api/datasets"), ("GET /api/datasets/images", "/api/datasets/images?path=datasets/demo"),
    ("GET /api/thumb", "/api/thumb?path=datasets/demo/00_blue_gray.png&size=128"),
    ("GET /api/train/schema", "/api/train/schema"), ("GET /api/train/presets/quickstart", "/api/train/presets/quickstart"),
    ("GET /api/jobs", "/api/jobs"), ("GET /api/jobs/1", "/api/jobs/1"), ("GET /api/adapters", "/api/adapters"),
    ("GET /api/generate/options", "/api/generate/options"), ("GET /api/tools", "/api/tools"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        resp.read()
        assert resp.status == 200, url
    return time.perf_counter() - t0


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _follow(url: str, stop: threading.Event, counts: dict) -> None:
    """An open Jobs page: read the job's server-sent events until ``stop``."""
    with urllib.request.urlopen(url, timeout=60) as resp:
        for line in resp:
            if line.startswith(b"event: "):
                counts["events"] = counts.get("events", 0) + 1
            if stop.is_set():
                return


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
    return values[k]


def measure(rounds: int, pause: float) -> dict:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sdlora-studio-bench-"))
    root = make_root(tmp / "root", steps=100000)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "sdlora.cli", "studio", "--root", str(root), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    try:
        wait_for(lambda: _ok(base + "/api/health"), 60)
        cfg = json.loads(urllib.request.urlopen(base + "/api/train/presets/quickstart").read())["config"]
        job = _post(base + "/api/train/queue", {"config": cfg})
        wait_for(lambda: (json.loads(urllib.request.urlopen(f"{base}/api/jobs/{job['id']}").read())
                          .get("progress") or {}).get("step", 0) >= 1, 180)
        counts: dict = {}
        follower = threading.Thread(target=_follow, args=(f"{base}/api/jobs/{job['id']}/events", stop, counts),
                                    daemon=True)
        follower.start()
        times: dict[str, list[float]] = {label: [] for label, _ in REQUESTS}
        t0 = time.time()
        for _ in range(rounds):
            for label, path in REQUESTS:
                times[label].append(_get(base + path))
                time.sleep(pause)
        elapsed = time.time() - t0
        status = json.loads(urllib.request.urlopen(f"{base}/api/jobs/{job['id']}").read())
        assert status["status"] == "running", "the training ended during the measurement"
        _post(f"{base}/api/jobs/{job['id']}/stop", {})
        everything = [t for ts in times.values() for t in ts]
        return {
            "requests": len(everything), "seconds": round(elapsed, 1), "training_step_at_end": status["progress"]["step"],
            "training_its": status["progress"]["its"], "sse_messages": counts.get("events", 0),
            "p50_ms": round(1000 * statistics.median(everything), 1), "p95_ms": round(1000 * pct(everything, 0.95), 1),
            "max_ms": round(1000 * max(everything), 1),
            "per_request": {label: {"p50_ms": round(1000 * statistics.median(ts), 1),
                                    "p95_ms": round(1000 * pct(ts, 0.95), 1)} for label, ts in times.items()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }
    finally:
        stop.set()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def _ok(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the page and API requests (13 each)")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between requests")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    result = measure(args.rounds, args.pause)
    print(f"{result['requests']} requests in {result['seconds']} s while a training ran "
          f"({result['training_its']} it/s; an SSE stream open, {result['sse_messages']} messages): "
          f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms")
    for label, r in result["per_request"].items():
        print(f"  {label:36s} p50 {r['p50_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
