"""The job runner: one job at a time, each in a child process, so a crash never takes the server down.

A job's command line is a list of ``sdlora`` arguments (never a shell string), run as
``python -m sdlora.studio.child ARGS`` with the root as working folder; stdout and stderr go to
``ROOT/.sdlora-studio/jobs/<id>.log``. Stop sends SIGINT: the trainer finishes its step and saves the adapter
and a resumable state (exit code 130 -> ``stopped``). A failed job keeps the ``sdlora: error: ...`` sentence.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sdlora.studio.store import FINISHED, JobStore

ERROR_PREFIX = "sdlora: error: "


def error_sentence(log_path: Path, returncode: int) -> str | None:
    """What went wrong, from a finished job's log and exit code (None for a clean exit)."""
    if returncode in (0, 130):
        return None
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(ERROR_PREFIX):  # the CLI's sentence may go on over the lines after it
            return "\n".join([lines[i][len(ERROR_PREFIX):]] + lines[i + 1:]).strip()
    if returncode < 0:
        return (f"the job's process was ended by signal {-returncode} (a crash, or killed); the server is fine: "
                "see the job's log")
    tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return f"the job's process exited with code {returncode}" + (f": {tail}" if tail else "")


class Runner:
    def __init__(self, root: Path, store: JobStore):
        self.root = root
        self.store = store
        self.jobs_dir = store.path.parent / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._wake = threading.Event()
        self._closing = False
        self._procs: dict[int, subprocess.Popen] = {}
        self._stopping: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.store.mark_lost()
        self._thread = threading.Thread(target=self._loop, name="sdlora-studio-jobs", daemon=True)
        self._thread.start()

    def log_path(self, job_id: int) -> Path:
        return self.jobs_dir / f"{job_id}.log"

    def submit(self, kind: str, title: str, argv: list[str], **fields: Any) -> dict[str, Any]:
        job = self.store.add(kind, title, argv, **fields)
        self.store.update(job["id"], log_path=str(self.log_path(job["id"])))
        self._wake.set()
        return self.store.get(job["id"])

    def stop(self, job_id: int) -> dict[str, Any] | None:
        """Cancel a queued job, or interrupt a running one (SIGINT: the trainer saves adapter + state)."""
        job = self.store.get(job_id)
        if job is None:
            return None
        with self._lock:
            proc = self._procs.get(job_id)
            if job["status"] == "queued" and proc is None:
                self.store.update(job_id, status="cancelled", finished=time.time())
            elif proc is not None and proc.poll() is None:
                self._stopping.add(job_id)
                os.kill(proc.pid, signal.SIGINT)
        return self.store.get(job_id)

    def running(self) -> list[int]:
        with self._lock:
            return [i for i, p in self._procs.items() if p.poll() is None]

    def shutdown(self, timeout: float = 60.0) -> None:
        """Interrupt the running job (its state is saved) and stop taking new ones."""
        self._closing = True
        self._wake.set()
        with self._lock:
            procs = dict(self._procs)
        for job_id, proc in procs.items():
            if proc.poll() is None:
                self._stopping.add(job_id)
                os.kill(proc.pid, signal.SIGINT)
        deadline = time.time() + timeout
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._closing:
            job = self.store.next_queued()
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        log_path = self.log_path(job_id)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        with open(log_path, "ab") as log:
            with self._lock:
                if self.store.get(job_id)["status"] != "queued":
                    return
                proc = subprocess.Popen([sys.executable, "-m", "sdlora.studio.child", *job["argv"]],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(self.root), env=env, start_new_session=True)
                self._procs[job_id] = proc
            self.store.update(job_id, status="running", started=time.time(), pid=proc.pid,
                              log_path=str(log_path))
            rc = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
            stopping = job_id in self._stopping
            self._stopping.discard(job_id)
        if rc == 0:
            status = "done"
        elif rc == 130 or (stopping and rc in (-signal.SIGINT, 1)):
            status = "interrupted" if self._closing else "stopped"
        else:
            status = "failed"
        self.store.update(job_id, status=status, finished=time.time(), returncode=rc,
                          error=error_sentence(log_path, rc) if status == "failed" else
                          ("the studio server stopped while this job ran" if status == "interrupted" else None))


def is_finished(job: dict[str, Any]) -> bool:
    return job["status"] in FINISHED
