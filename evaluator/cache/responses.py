"""The response cache: SQLite in WAL mode, one row per request, written the moment its answer arrives.

Keyed on what determines the answer (model identity, endpoint kind, full request body), never on host or
port. Answers and errors live in separate tables: an error is never read back as an answer, and a later
answer for the same key replaces the error. Beside them: each model's profile as it was run (so read-only
commands find models defined inline in a suite), each run's scores with how complete they are, and claims
on requests in flight (so two runs of the same questions at once do not both pay for them), and the runs
`forget` took out of every ranking (their answers and scores kept). Several processes may share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from evaluator.cache.sqlite import BUSY_TIMEOUT_S, ReadOnlyFile, SharedFile
from evaluator.errors import InputError
from evaluator.redact import redact

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, qid TEXT NOT NULL, text TEXT NOT NULL, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, attempts INTEGER,
    created_at REAL NOT NULL, request TEXT NOT NULL, source TEXT, logprobs TEXT);
CREATE TABLE IF NOT EXISTS errors (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, qid TEXT NOT NULL, kind TEXT NOT NULL, status INTEGER,
    message TEXT, attempts INTEGER, latency_s REAL, created_at REAL NOT NULL, request TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, profile TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, data TEXT NOT NULL, data_sha256 TEXT NOT NULL,
    protocol TEXT NOT NULL, rendering TEXT NOT NULL, variant TEXT NOT NULL,
    questions INTEGER NOT NULL, answered INTEGER NOT NULL, scored INTEGER NOT NULL, errors INTEGER NOT NULL,
    unscored INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost REAL, details TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS task_scores (
    run TEXT NOT NULL, skill TEXT NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL,
    questions INTEGER NOT NULL, scored INTEGER NOT NULL, errors INTEGER NOT NULL, unscored INTEGER NOT NULL,
    score REAL, prompt_tokens INTEGER, completion_tokens INTEGER, official TEXT,
    PRIMARY KEY (run, skill, task));
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL, provider_status TEXT,
    requests INTEGER NOT NULL, done INTEGER NOT NULL, failed INTEGER NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, note TEXT);
CREATE TABLE IF NOT EXISTS batch_items (
    batch TEXT NOT NULL, key TEXT NOT NULL, qid TEXT NOT NULL, request TEXT NOT NULL, PRIMARY KEY (batch, key));
CREATE TABLE IF NOT EXISTS forgotten (model TEXT NOT NULL, variant TEXT, created_at REAL NOT NULL);
"""
FILE_NAME = "responses.sqlite"
OWN_TABLES = {"answers", "errors"}
CLAIM_LEASE_S = 180.0
RUN_COLUMNS = ("key", "model", "data", "data_sha256", "protocol", "rendering", "variant", "questions", "answered",
               "scored", "errors", "unscored", "status", "reason", "prompt_tokens", "completion_tokens", "cost",
               "details", "created_at")
TASK_COLUMNS = ("skill", "task", "metric", "questions", "scored", "errors", "unscored", "score", "prompt_tokens",
                "completion_tokens", "official")
RUN_SCHEMA = {"key": pl.String, "model": pl.String, "data": pl.String, "data_sha256": pl.String,
              "protocol": pl.String, "rendering": pl.String, "variant": pl.String, "questions": pl.Int64,
              "answered": pl.Int64, "scored": pl.Int64, "errors": pl.Int64, "unscored": pl.Int64,
              "status": pl.String, "reason": pl.String, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
              "cost": pl.Float64, "details": pl.String, "created_at": pl.Float64}
TASK_SCHEMA = {"run": pl.String, "skill": pl.String, "task": pl.String, "metric": pl.String,
               "questions": pl.Int64, "scored": pl.Int64, "errors": pl.Int64, "unscored": pl.Int64,
               "score": pl.Float64, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "official": pl.String}


MAX_COUNT = 2**31 - 1  # a stored token count above this is no count (the client keeps none larger)
# an answer's arrival time where it is a number (an old or hostile file may hold text there)
TIME = "CASE WHEN typeof(created_at) IN ('integer', 'real') THEN created_at END"
REQUIRED = {"runs": {"key", "model", "data", "data_sha256", "protocol", "rendering", "variant", "questions",
                     "answered", "scored", "errors", "unscored", "status", "details", "created_at"},
            "task_scores": {"run", "skill", "task", "metric", "questions", "scored", "errors", "unscored"}}


def _typed(value, dtype):
    """A value read from the cache if it has its column's type, else None: an old or hostile file may hold a
    BLOB, text or a huge integer anywhere (SQLite types values, not columns)."""
    if dtype == pl.String:
        return value if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if dtype == pl.Int64:
        return value if isinstance(value, int) else None
    return float(value) if math.isfinite(value) else None


def _count(value) -> int | None:
    value = _typed(value, pl.Int64)
    return value if value is not None and 0 <= value <= MAX_COUNT else None


def _typed_rows(rows: list[tuple], schema: dict, table: str) -> list[tuple]:
    """Rows with every value typed (`_typed`); a row missing a value it cannot go without is left out."""
    out = []
    for row in rows:
        typed = tuple(_typed(value, dtype) for value, dtype in zip(row, schema.values()))
        if all(value is not None for value, column in zip(typed, schema) if column in REQUIRED[table]):
            out.append(typed)
    return out


def request_key(identity: dict, endpoint: str, body: dict) -> str:
    """sha256 over the model identity, the endpoint kind and the full body, in canonical JSON."""
    canonical = json.dumps({"model": identity, "endpoint": endpoint, "body": body}, sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def run_key(model: str, data_sha256: str, protocol: str, rendering: str, variant: str) -> str:
    """One run's identity: the same model on the same data content under the same settings."""
    return hashlib.sha256(json.dumps([model, data_sha256, protocol, rendering, variant]).encode()).hexdigest()


def _clean(text: str | None, limit: int) -> str | None:
    """Redacted, bounded, and storable (lone surrogates cannot be encoded for SQLite)."""
    if text is None:
        return None
    return redact(text[:limit]).encode("utf-8", "replace").decode("utf-8")


def process_owner() -> str:
    """Who holds a claim: host, pid and the process's start time (so a reused pid is not mistaken for us)."""
    try:
        start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "0"
    return f"{socket.gethostname()}:{os.getpid()}:{start}"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True  # another machine's: only its lease can end it
    pid, _, start = rest.partition(":")
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return False
    return fields[19] == start and fields[0] != "Z"


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None = None
    source: str | None = None  # None: a live request; "batch:<id>": a provider batch
    # the first token's top log-probabilities (JSON), where the request asked; "refused" (http.LOGPROBS_REFUSED)
    # where the endpoint refused them and the question was asked again without them
    logprobs: str | None = None


SESSIONS_KEPT = 50  # answering sessions per run record: the newest ones


def sessions_of(details: str | None) -> list[dict]:
    """The answering sessions in a run record's details (none where the details are old or unreadable)."""
    try:
        parsed = json.loads(details or "{}")
    except (ValueError, RecursionError):
        return []
    sessions = parsed.get("answered_by") if isinstance(parsed, dict) else None
    return [s for s in sessions if isinstance(s, dict)][-SESSIONS_KEPT:] if isinstance(sessions, list) else []


def merge_sessions(before: list[dict], new: list[dict]) -> list[dict]:
    """`before` then the sessions of `new` it lacks, the newest SESSIONS_KEPT (merging twice changes nothing)."""
    seen = [json.dumps(s, sort_keys=True) for s in before]
    return (before + [s for s in new if json.dumps(s, sort_keys=True) not in seen])[-SESSIONS_KEPT:]


def _with_sessions(details: str | None, sessions: list[dict]) -> str:
    try:
        parsed = json.loads(details or "{}")
    except (ValueError, RecursionError):
        parsed = {}
    parsed = parsed if isinstance(parsed, dict) else {}
    return json.dumps({**parsed, "answered_by": sessions})


class CacheFull(Exception):
    """The cache's disk is full: answers can no longer be kept, so nothing more may be bought."""


def _migrate(db: sqlite3.Connection) -> None:
    """Run under the creation lock. Version 0/1 kept one `scores` row per task keyed on the data path: move
    them under runs. Version 3 says where each answer came from (live or a batch), version 4 keeps the
    first token's log-probabilities where a request asked for them."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in db.execute("PRAGMA table_info(answers)")}
        if "source" not in columns:
            db.execute("ALTER TABLE answers ADD COLUMN source TEXT")
        if "logprobs" not in columns:
            db.execute("ALTER TABLE answers ADD COLUMN logprobs TEXT")
        old = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='scores'").fetchone()
        if old:
            rows = db.execute("SELECT model, data, protocol, rendering, skill, task, metric, n, errors, "
                              "score, prompt_tokens, completion_tokens, created_at FROM scores").fetchall()
            runs: dict[tuple, list] = {}
            for row in rows:
                runs.setdefault(row[:4], []).append(row)
            for (model, data, protocol, rendering), tasks in runs.items():
                key = run_key(model, f"path:{data}", protocol, rendering, "")
                scored = sum(t[7] for t in tasks)
                errors = sum(t[8] for t in tasks)
                record = (key, model, data, f"path:{data}", protocol, rendering, "", scored + errors, scored,
                          scored, errors, 0, "complete" if errors == 0 else "incomplete",
                          None, sum(t[10] or 0 for t in tasks), sum(t[11] or 0 for t in tasks), None,
                          json.dumps({"migrated": "scored before version 2 kept data hashes"}),
                          max(t[12] for t in tasks))
                db.execute(f"INSERT OR REPLACE INTO runs VALUES ({','.join('?' * len(RUN_COLUMNS))})", record)
                db.executemany(f"INSERT OR REPLACE INTO task_scores VALUES ({','.join('?' * 12)})",
                               [(key, t[4], t[5], t[6], t[7] + t[8], t[7], t[8], 0, t[9], t[10], t[11], None)
                                for t in tasks])
            db.execute("DROP TABLE scores")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class ResponseCache:
    """The cache as one process uses it: reads on the calling thread's own connection, every write through
    the process's single writer thread (see `evaluator.cache.sqlite`). Safe to share between threads."""

    def __init__(self, folder: Path, read_only: bool = False) -> None:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError("the cache must be a folder, and this is a file", path=folder)
        self.path = folder / FILE_NAME
        if self.path.exists() and not self.path.is_file():
            raise InputError("the response cache is not a file", path=self.path)
        try:
            if read_only:
                if not self.path.is_file():
                    raise InputError("no response cache here: nothing has been run with this --cache",
                                     path=folder.parent)
                try:
                    self._file = ReadOnlyFile(self.path)
                except sqlite3.OperationalError:
                    raise InputError("the response cache cannot be opened read-only", path=self.path) from None
                self._check_schema(self.db)
                if self.db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    self._file.close()
                    self._update_old(folder)
                    self._file = ReadOnlyFile(self.path)
            else:
                self._file = SharedFile(self.path, SCHEMA, setup=_migrate, check=self._check_foreign)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise InputError(f"the response cache stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s "
                                 f"({exc}); is another run stuck on it?", path=self.path) from None
            raise self._unusable(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None
        except OSError as exc:  # the folder or its lock file cannot be made
            raise self._unusable(exc) from None

    def _update_old(self, folder: Path) -> None:
        """An older cache met by a reading command: updated in place once (its answers are kept), where the
        file can be written; otherwise say how."""
        try:
            SharedFile(self.path, SCHEMA, setup=_migrate, check=self._check_foreign).close()
        except (sqlite3.Error, OSError):
            raise InputError("this response cache was written by an older version and cannot be updated here "
                             "(read-only); run any command on a writable copy of it once", path=self.path) from None

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's own connection (for reads)."""
        return self._file.read()

    def _check_schema(self, db: sqlite3.Connection) -> None:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not OWN_TABLES <= tables:
            raise InputError(f"this SQLite file is not a shopping-mmlu response cache (its tables: "
                             f"{', '.join(sorted(tables))[:200] or 'none'}); pass --cache with another folder",
                             path=self.path)

    def _check_foreign(self, db: sqlite3.Connection) -> None:
        """Never add our tables to someone else's database; a file with no tables yet is a cache being made."""
        if db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
            self._check_schema(db)

    def _unreadable(self, exc: Exception) -> InputError:
        return InputError(f"the response cache cannot be read ({exc}); move the file aside to start a new cache "
                          "(its answers are then re-requested), or pass --cache with another folder", path=self.path)

    def _unusable(self, exc: Exception) -> InputError:
        return InputError(f"the response cache cannot be used ({exc}): check that its folder is writable and its "
                          "disk has room, or pass --cache with another folder", path=self.path)

    @contextmanager
    def _guard(self):
        """Corruption found mid-query is the same clear error as at open; a full disk is `CacheFull`; a busy
        lock is neither and propagates."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "full" in text:
                raise CacheFull(f"the disk holding {self.path} is full: answers cannot be kept ({text})") from None
            if "readonly" in text or "read-only" in text:
                raise self._unusable(exc) from None
            raise
        except sqlite3.DatabaseError as exc:
            if any(word in str(exc) for word in ("malformed", "not a database", "encrypted", "corrupt")):
                raise self._unreadable(exc) from None
            raise InputError(f"the response cache refused a value ({exc}); the cache itself is fine",
                             path=self.path) from None

    def _write(self, fn):
        with self._guard():
            return self._file.write(fn)

    def close(self) -> None:
        self._file.close()

    # ------------------------------------------------------------------ answers and errors

    def answers(self, keys: list[str]) -> dict[str, Answer]:
        with self._guard():
            found: dict[str, Answer] = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self.db.execute(
                    "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, latency_s, source, logprobs "
                    "FROM answers "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                for key, text, finish, prompt_tokens, completion_tokens, latency, source, logprobs in rows:
                    if isinstance(text, str):  # any other text is no answer: the question counts as unasked
                        found[key] = Answer(text, _typed(finish, pl.String), _count(prompt_tokens),
                                            _count(completion_tokens), _typed(latency, pl.Float64),
                                            _typed(source, pl.String), _typed(logprobs, pl.String))
            return found

    def errors(self, keys: list[str]) -> dict[str, tuple[str, int | None, str, float]]:
        """key -> (kind, status, message, created_at) for the keys that have an error row."""
        with self._guard():
            found = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self.db.execute("SELECT key, kind, status, message, created_at FROM errors "
                                       f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                for key, kind, status, message, created_at in rows:
                    if isinstance(kind, str):  # typed as written (an old or hostile file may hold anything)
                        found[key] = (kind, _typed(status, pl.Int64), _typed(message, pl.String),
                                      _typed(created_at, pl.Float64))
            return found

    def put_answer(self, key: str, model: str, qid: str, request: dict, answer: Answer, latency_s: float,
                   attempts: int) -> None:
        """Committed before this returns (several callers may share the commit): a crash loses at most what
        was in flight."""
        row = (key, model, qid, answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens,
               latency_s, attempts, time.time(), json.dumps(request, ensure_ascii=False), answer.source,
               answer.logprobs)

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO answers (key, model, qid, text, finish_reason, prompt_tokens, "
                       "completion_tokens, latency_s, attempts, created_at, request, source, logprobs) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            db.execute("DELETE FROM errors WHERE key = ?", (key,))
            db.execute("DELETE FROM claims WHERE key = ?", (key,))

        self._write(write)

    def put_error(self, key: str, model: str, qid: str, request: dict, kind: str, status: int | None,
                  message: str, attempts: int, latency_s: float) -> None:
        row = (key, model, qid, _clean(kind, 40), status, _clean(message, 2000), attempts, latency_s, time.time(),
               json.dumps(request, ensure_ascii=False))

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO errors VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            db.execute("DELETE FROM claims WHERE key = ?", (key,))

        self._write(write)

    # ------------------------------------------------------------------ claims on requests in flight

    def claim(self, keys: list[str], owner: str, refresh: bool = False) -> set[str]:
        """The keys this owner may send: not answered meanwhile (unless it asks again on purpose), and
        unclaimed, already its own, or held by a dead or lapsed owner."""
        def write(db: sqlite3.Connection) -> list[str]:
            now = time.time()
            held: dict[str, tuple[str, float]] = {}
            answered: set[str] = set()
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ','.join('?' * len(chunk))
                for key, who, expires in db.execute(
                        f"SELECT key, owner, expires FROM claims WHERE key IN ({marks})", chunk):
                    held[key] = (who, expires)
                if not refresh:
                    answered.update(k for (k,) in db.execute(
                        f"SELECT key FROM answers WHERE key IN ({marks})", chunk))
            alive: dict[str, bool] = {}
            mine = []
            for key in keys:
                if key in answered:
                    continue
                if key in held:
                    who, expires = held[key]
                    if who != owner and expires > now and alive.setdefault(who, _owner_alive(who)):
                        continue
                mine.append(key)
            db.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                           [(k, owner, now + CLAIM_LEASE_S) for k in mine])
            return mine

        return set(self._write(write))

    def renew_claims(self, owner: str) -> None:
        self._write(lambda db: db.execute("UPDATE claims SET expires = ? WHERE owner = ?",
                                          (time.time() + CLAIM_LEASE_S, owner)))

    def release_claims(self, owner: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM claims WHERE owner = ?", (owner,)))

    # ------------------------------------------------------------------ provider batches

    def record_batch(self, batch_id: str, provider: str, model: str, items: list[tuple[str, str, dict]]) -> None:
        """The batch and its questions, kept the moment it exists, so a killed run re-attaches to it."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO batches VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (batch_id, provider, model, "submitted", None, len(items), 0, 0, now, now, None))
            db.executemany("INSERT OR REPLACE INTO batch_items VALUES (?,?,?,?)",
                           [(batch_id, key, qid, json.dumps(body, ensure_ascii=False)) for key, qid, body in items])

        self._write(write)

    def open_batches(self, model: str, provider: str) -> list[dict]:
        """This model's batches whose results have not been read yet."""
        columns = ("id", "provider", "model", "state", "provider_status", "requests", "done", "failed",
                   "created_at", "updated_at", "note")
        with self._guard():
            rows = self.db.execute(f"SELECT {', '.join(columns)} FROM batches WHERE model = ? AND provider = ? "
                                   "AND state = 'submitted' ORDER BY created_at", (model, provider)).fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def batch_ids(self, provider: str) -> frozenset[str]:
        """Every batch of this provider the cache has recorded, whatever its state."""
        with self._guard():
            rows = self.db.execute("SELECT id FROM batches WHERE provider = ?", (provider,)).fetchall()
        return frozenset(r[0] for r in rows)

    def batch_items(self, batch_id: str) -> dict[str, tuple[str, dict]]:
        with self._guard():
            rows = self.db.execute("SELECT key, qid, request FROM batch_items WHERE batch = ?", (batch_id,)).fetchall()
        return {key: (qid, json.loads(request)) for key, qid, request in rows}

    def update_batch(self, batch_id: str, state: str, provider_status: str | None, done: int, failed: int,
                     note: str | None = None) -> None:
        row = (state, _clean(provider_status, 100), done, failed, time.time(), _clean(note, 2000), batch_id)
        self._write(lambda db: db.execute("UPDATE batches SET state = ?, provider_status = ?, done = ?, failed = ?, "
                                          "updated_at = ?, note = ? WHERE id = ?", row))

    # ------------------------------------------------------------------ models, runs, scores

    def put_model(self, name: str, profile: dict) -> None:
        row = (name, json.dumps(profile, ensure_ascii=False, sort_keys=True), time.time())
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?)", row))

    def model(self, name: str) -> dict | None:
        """The profile `name` was last run with, as recorded."""
        with self._guard():
            row = self.db.execute("SELECT rowid, profile FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            profile = json.loads(row[1]) if isinstance(row[1], str) else None
        except (ValueError, RecursionError):
            profile = None
        if not isinstance(profile, dict):
            raise InputError(f"the response cache's table models, row {row[0]} ({name[:100]!r}): its profile is "
                             "not a JSON object", path=self.path)
        return profile

    def saved_run(self, key: str) -> dict | None:
        with self._guard():
            row = self.db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE key = ?", (key,)).fetchone()
        typed = _typed_rows([row] if row else [], RUN_SCHEMA, "runs")
        return dict(zip(RUN_COLUMNS, typed[0])) if typed else None

    def answer_span(self, keys: list[str]) -> tuple[int, float | None, float | None]:
        """How many of `keys` have an answer, and when the first and the last of them arrived."""
        count, first, last = 0, None, None
        with self._guard():
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                n, low, high = self.db.execute(f"SELECT count(*), min({TIME}), max({TIME}) FROM answers "
                                               f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchone()
                if n:
                    count += n
                    first = low if first is None else min(first, low)
                    last = high if last is None else max(last, high)
        return count, first, last

    def save_run(self, record: dict, tasks: list[dict]) -> dict | None:
        """Save a run's scores unless the saved ones cover more questions or more answers; returns the saved
        record that was kept instead (None when this one was saved). Either way the saved record's answering
        sessions (`details.answered_by`: which runs sent the answers, when, to what server) are kept with
        this one's, so a run scored from the cache still says what answered it."""
        if record.get("reason"):  # a reason may quote a server that echoed our key
            record = {**record, "reason": redact(record["reason"])}

        def write(db: sqlite3.Connection) -> dict | None:
            row = db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE key = ?", (record["key"],)).fetchone()
            typed = _typed_rows([row] if row else [], RUN_SCHEMA, "runs")  # an unreadable one is replaced
            details = record["details"]
            if typed:
                saved = dict(zip(RUN_COLUMNS, typed[0]))
                sessions = merge_sessions(sessions_of(saved["details"]), sessions_of(details))
                if saved["questions"] > record["questions"] or saved["answered"] > record["answered"]:
                    if sessions != sessions_of(saved["details"]):
                        db.execute("UPDATE runs SET details = ? WHERE key = ?",
                                   (_with_sessions(saved["details"], sessions), record["key"]))
                    return saved
                details = _with_sessions(details, sessions)
            db.execute(f"INSERT OR REPLACE INTO runs VALUES ({','.join('?' * len(RUN_COLUMNS))})",
                       tuple(details if c == "details" else record[c] for c in RUN_COLUMNS))
            db.execute("DELETE FROM task_scores WHERE run = ?", (record["key"],))
            db.executemany(f"INSERT INTO task_scores VALUES ({','.join('?' * (len(TASK_COLUMNS) + 1))})",
                           [(record["key"], *(t[c] for c in TASK_COLUMNS)) for t in tasks])
            return None

        return self._write(write)

    def _has_forgotten(self) -> bool:
        """Whether the cache has `forget`'s table (one written before it existed is read as it is)."""
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'forgotten'").fetchone() \
            is not None

    def _kept(self, forgotten: bool) -> str:
        """The SQL condition on `runs` that leaves out the runs `forget` took out of every view (none where
        `forgotten` is asked for, or where the cache predates the table)."""
        if forgotten or not self._has_forgotten():
            return "1"
        return ("NOT EXISTS (SELECT 1 FROM forgotten f WHERE f.model = runs.model "
                "AND (f.variant IS NULL OR f.variant = runs.variant))")

    def runs(self, forgotten: bool = False) -> pl.DataFrame:
        """The saved runs, without those `forget` took out of the rankings unless `forgotten`."""
        with self._guard():
            rows = self.db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
                                   f"WHERE {self._kept(forgotten)}").fetchall()
        return pl.DataFrame(_typed_rows(rows, RUN_SCHEMA, "runs"), schema=RUN_SCHEMA, orient="row")

    def task_scores(self, forgotten: bool = False) -> pl.DataFrame:
        with self._guard():
            rows = self.db.execute(f"SELECT run, {', '.join(TASK_COLUMNS)} FROM task_scores WHERE run IN "
                                   f"(SELECT key FROM runs WHERE {self._kept(forgotten)}) ORDER BY rowid").fetchall()
        return pl.DataFrame(_typed_rows(rows, TASK_SCHEMA, "task_scores"), schema=TASK_SCHEMA, orient="row")

    def forgotten(self) -> list[tuple[str, str | None]]:
        """(model, variant) of each `forget` in force; variant None: every run of the model."""
        with self._guard():
            if not self._has_forgotten():
                return []
            return self.db.execute("SELECT model, variant FROM forgotten ORDER BY created_at").fetchall()

    def forget(self, model: str, variant: str | None, undo: bool = False) -> int:
        """Take a model's runs (one variant's, or all) out of every ranking and view, or (`undo`) put them
        back (without a variant: all of them); the answers and scores stay. Returns how many entries an undo
        removed."""
        def write(db: sqlite3.Connection) -> int:
            if undo and variant is None:
                return db.execute("DELETE FROM forgotten WHERE model = ?", (model,)).rowcount
            match = "model = ? AND " + ("variant IS NULL" if variant is None else "variant = ?")
            removed = db.execute(f"DELETE FROM forgotten WHERE {match}",
                                 (model,) if variant is None else (model, variant)).rowcount
            if not undo:
                db.execute("INSERT INTO forgotten VALUES (?, ?, ?)", (model, variant, time.time()))
            return removed

        return self._write(write)
