"""The response cache: SQLite in WAL mode, one row per request, written the moment its answer arrives.

Keyed on what determines the answer (model identity, endpoint kind, full request body), never on host or
port. Answers and errors live in separate tables: an error is never read back as an answer, and a later
answer for the same key replaces the error. Several processes may share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from evaluator.errors import InputError
from evaluator.cache.sqlite import open_shared

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, qid TEXT NOT NULL, text TEXT NOT NULL, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, attempts INTEGER,
    created_at REAL NOT NULL, request TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS errors (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, qid TEXT NOT NULL, kind TEXT NOT NULL, status INTEGER,
    message TEXT, attempts INTEGER, latency_s REAL, created_at REAL NOT NULL, request TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL, data TEXT NOT NULL, protocol TEXT NOT NULL, rendering TEXT NOT NULL,
    skill TEXT NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL, n INTEGER NOT NULL, errors INTEGER NOT NULL,
    score REAL, prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL NOT NULL,
    PRIMARY KEY (model, data, protocol, rendering, skill, task));
"""
FILE_NAME = "responses.sqlite"


def request_key(identity: dict, endpoint: str, body: dict) -> str:
    """sha256 over the model identity, the endpoint kind and the full body, in canonical JSON."""
    canonical = json.dumps({"model": identity, "endpoint": endpoint, "body": body}, sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class ResponseCache:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / FILE_NAME
        try:
            self.db = open_shared(self.path, SCHEMA)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: Exception) -> InputError:
        return InputError(f"the response cache cannot be read ({exc}); move the file aside to start a new cache "
                          "(its answers are then re-requested), or pass --cache with another folder", path=self.path)

    @contextmanager
    def _guard(self):
        """Corruption found mid-query is the same clear error as at open (a busy lock is not corruption)."""
        try:
            yield
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None

    def close(self) -> None:
        self.db.close()

    def answers(self, keys: list[str]) -> dict[str, Answer]:
        with self._guard():
            found: dict[str, Answer] = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self.db.execute(
                    "SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM answers "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                for key, *fields in rows:
                    found[key] = Answer(*fields)
            return found

    def put_answer(self, key: str, model: str, qid: str, request: dict, answer: Answer, latency_s: float,
                   attempts: int) -> None:
        """One transaction per answer: a crash loses at most what was in flight."""
        with self._guard():
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                (key, model, qid, answer.text, answer.finish_reason, answer.prompt_tokens,
                                 answer.completion_tokens, latency_s, attempts, time.time(),
                                 json.dumps(request, ensure_ascii=False)))
                self.db.execute("DELETE FROM errors WHERE key = ?", (key,))

    def put_error(self, key: str, model: str, qid: str, request: dict, kind: str, status: int | None,
                  message: str, attempts: int, latency_s: float) -> None:
        with self._guard():
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("INSERT OR REPLACE INTO errors VALUES (?,?,?,?,?,?,?,?,?,?)",
                                (key, model, qid, kind, status, message[:2000], attempts, latency_s, time.time(),
                                 json.dumps(request, ensure_ascii=False)))

    def save_scores(self, model: str, data: str, protocol: str, rendering: str, tasks: pl.DataFrame) -> None:
        """tasks: skill, task, metric, n, errors, score, prompt_tokens, completion_tokens."""
        with self._guard():
            now = time.time()
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("DELETE FROM scores WHERE model=? AND data=? AND protocol=? AND rendering=?",
                                (model, data, protocol, rendering))
                self.db.executemany(
                    "INSERT INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(model, data, protocol, rendering, r["skill"], r["task"], r["metric"], r["n"], r["errors"],
                      r["score"], r["prompt_tokens"], r["completion_tokens"], now)
                     for r in tasks.iter_rows(named=True)])

    def scores(self) -> pl.DataFrame:
        with self._guard():
            rows = self.db.execute("SELECT model, data, protocol, rendering, skill, task, metric, n, errors, score, "
                                   "prompt_tokens, completion_tokens, created_at FROM scores").fetchall()
            schema = {"model": pl.String, "data": pl.String, "protocol": pl.String, "rendering": pl.String,
                      "skill": pl.String, "task": pl.String, "metric": pl.String, "n": pl.Int64, "errors": pl.Int64,
                      "score": pl.Float64, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
                      "created_at": pl.Float64}
            return pl.DataFrame(rows, schema=schema, orient="row")
