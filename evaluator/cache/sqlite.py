"""SQLite files shared by threads and processes, with one ownership rule: in each process, one writer thread
owns the only connection that writes a file; every other thread reads through a connection of its own.

Why: a connection shared by threads deadlocks. Python's sqlite3 calls some SQLite functions while holding
the GIL; a thread that holds the GIL while it waits for a shared connection's mutex, a thread that holds that
mutex while it waits for the file's write lock, and a thread that holds the write lock but needs the GIL
never move again (seen with a claim-renewal thread beside a fan-out). With one writer per process, no thread
of ours waits for a write lock another thread of ours holds; readers in WAL mode never wait for writers.

Writes are functions run by the writer in a transaction; several callers' functions share one commit (group
commit), each inside a savepoint so one failure does not undo the others. A caller waits for its commit, so
"kept" still means on disk. Creating a file and its schema happens under a file lock (`flock`), so threads
and processes opening a fresh cache at once never see a half-made one.
"""

from __future__ import annotations

import fcntl
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

from evaluator.queues import drain

BUSY_TIMEOUT_S = 120.0
GROUP_MAX = 512  # writes per commit at most
T = TypeVar("T")


@contextmanager
def creation_lock(path: Path):
    """An exclusive `flock` on `<path>.lock` beside the file: schema creation and migration, one at a time
    across threads (each opens its own descriptor) and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode that waits (with the GIL released) for another process's lock."""
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return db


def open_shared(path: Path, schema: str, setup: Callable[[sqlite3.Connection], None] | None = None,
                check: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    """A writable connection to a file whose WAL mode and schema exist, made under the creation lock:
    `check(db)` first (refuse a file that is not ours), then the schema, then `setup(db)` (migrations)."""
    def prepare(db: sqlite3.Connection) -> None:
        if check is not None:
            check(db)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(schema)
        if setup is not None:
            setup(db)

    with creation_lock(path):
        db = connect(path)
        try:
            wait_locked(lambda: prepare(db))
        except BaseException:
            db.close()
            raise
    return db


class _Writer:
    """The thread that owns a file's write connection in this process."""

    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db = db
        self.users = 0
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"sqlite-writer:{name}", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if threading.current_thread() is self.thread:  # a write inside a write: run it in place
            return fn(self.db)
        done: Future = Future()
        self.jobs.put((fn, done))
        return done.result()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(30)

    def _loop(self) -> None:
        drain(self.jobs, self._commit, GROUP_MAX)
        self.db.close()
        while True:  # a write that came after the close hears so instead of waiting forever
            try:
                late = self.jobs.get_nowait()
            except queue.Empty:
                return
            if late is not None:
                late[1].set_exception(sqlite3.ProgrammingError("the file was closed"))

    def _commit(self, group: list) -> None:
        results: list = []
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for fn, _ in group:
                    self.db.execute("SAVEPOINT one")
                    try:
                        results.append((True, fn(self.db)))
                        self.db.execute("RELEASE one")
                    except Exception as exc:  # noqa: BLE001: this caller's failure, not the group's
                        self.db.execute("ROLLBACK TO one")
                        self.db.execute("RELEASE one")
                        results.append((False, exc))
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except Exception as exc:  # noqa: BLE001: the commit itself failed (a full disk): every caller hears it
            results = [(False, exc)] * len(group)
        for (_, done), (ok, value) in zip(group, results):
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)


class _PerThread:
    """A connection for each thread that reads, opened on first use; never shared."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        return connect(self.path)

    def read(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._open()
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()
        self._local = threading.local()


class SharedFile(_PerThread):
    """One SQLite file as a process uses it: `write(fn)` through the process's single writer, `read()` a
    connection of the calling thread's own."""

    _writers: dict[str, _Writer] = {}
    _writers_lock = threading.Lock()

    def __init__(self, path: Path, schema: str, setup: Callable[[sqlite3.Connection], None] | None = None,
                 check: Callable[[sqlite3.Connection], None] | None = None) -> None:
        super().__init__(path)
        self.key = str(self.path.resolve())
        with self._writers_lock:  # the writer is made (and the schema created) once per process
            writer = self._writers.get(self.key)
            if writer is None:
                writer = _Writer(open_shared(self.path, schema, setup, check), self.path.name)
                self._writers[self.key] = writer
            writer.users += 1
        self._writer: _Writer | None = writer

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise sqlite3.ProgrammingError("the file was closed")
        return self._writer.submit(fn)

    def close(self) -> None:
        super().close()
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with self._writers_lock:
            writer.users -= 1
            last = writer.users == 0
            if last:
                self._writers.pop(self.key, None)
        if last:
            writer.close()


class ReadOnlyFile(_PerThread):
    """A file opened for reading only (report, compare, inspect): never created or changed, works on a
    read-only disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read()  # fail now, not at the first query

    def _open(self) -> sqlite3.Connection:
        for query in ("mode=ro", "immutable=1"):
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{query}", uri=True, check_same_thread=False)
            try:
                db.execute("PRAGMA schema_version").fetchone()
                return db
            except sqlite3.OperationalError:
                db.close()
        raise sqlite3.OperationalError("cannot be opened read-only")

    def write(self, fn):
        raise sqlite3.OperationalError("attempt to write a readonly database")


def wait_locked(fn: Callable[[], T], seconds: float = BUSY_TIMEOUT_S) -> T:
    """Run `fn`, retrying while SQLite answers 'database is locked' at once (it does, for a schema change
    racing another), for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
