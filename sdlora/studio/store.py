"""The job and history store: one SQLite table (standard library sqlite3) in ROOT/.sdlora-studio/studio.db.

A job is one child process: a training (``sdlora train``), its resumption, or a tool (bake, merge, resize,
extract, convert, eval). Status moves queued -> running -> done | failed | stopped | cancelled; a job that
was running when the server went away is marked ``interrupted`` at the next start (resumable when it is a
training with a saved state).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

FINISHED = ("done", "failed", "stopped", "cancelled", "interrupted")
_COLUMNS = ("id", "kind", "title", "argv", "status", "created", "started", "finished", "returncode", "error",
            "out_dir", "config_path", "log_path", "pid", "resume_of")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, title TEXT NOT NULL, argv TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, returncode INTEGER, error TEXT,
    out_dir TEXT, config_path TEXT, log_path TEXT, pid INTEGER, resume_of INTEGER
)"""


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(zip(_COLUMNS, row))
        job["argv"] = json.loads(job["argv"])
        return job

    def add(self, kind: str, title: str, argv: list[str], *, out_dir: str | None = None,
            config_path: str | None = None, resume_of: int | None = None) -> dict[str, Any]:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (kind, title, argv, status, created, out_dir, config_path, resume_of) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (kind, title, json.dumps(argv), time.time(), out_dir, config_path, resume_of))
            job_id = cur.lastrowid
        return self.get(job_id)

    def get(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row)

    def list(self, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY id DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def update(self, job_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job fields {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def next_queued(self) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE status = 'queued' "
                                   "ORDER BY id LIMIT 1").fetchone()
        return self._row(row)

    def mark_lost(self) -> int:
        """Jobs left 'running' by a server that went away become 'interrupted'; returns how many."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET status = 'interrupted', finished = ?, error = "
                                   "'the studio server stopped while this job ran' WHERE status = 'running'",
                                   (time.time(),))
        return cur.rowcount
