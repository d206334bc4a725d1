"""A guard between us and a vLLM server, so that no engine process outlives the command that started it.

vLLM does not act on SIGTERM while it starts, and its workers can survive a signal to their group. The guard
runs the server in a session of its own, remembers every descendant it has seen, and when it is told to stop
(SIGTERM or SIGINT), or when its parent dies (even by SIGKILL: the kernel tells it), it sends SIGTERM to the
server's group, then SIGKILL to every process it has seen once a short grace period has passed. If the guard
itself is killed, the server's processes die anyway: each watches its own parent (`servers/lifeline/`). It exits with
the server's exit code. It imports nothing heavy and nothing from vLLM:

    python servers/guard.py --parent PID --grace 10 -- python -m vllm.entrypoints.launchers.api_server.entry ...
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_S = 0.25


def die_with_parent(sig: int) -> None:
    """Linux: this process gets `sig` when its parent dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (the first is field 3, the state), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_of(parents: set[int]) -> dict[int, int]:
    """The children of these pids, each with its start time (field 22, clock ticks since boot)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and int(fields[1]) in parents:
            found[int(entry.name)] = int(fields[19])
    return found


def _alive(pid: int, start: int | None = None) -> bool:
    """Alive and not a zombie; with `start`, also the same process that was seen (a pid is reused once its
    process is gone: a remembered pid alone may name a stranger)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (start is None or int(fields[19]) == start)


def _signal(pid: int, start: int, sig: int) -> None:
    """Signal the process seen as (pid, start) and no other: a pidfd pins the process before its start time is
    checked, so the pid cannot be reused between the check and the signal."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (an old kernel): the check and the kill, as close as can be
        if _alive(pid, start):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return
    try:
        if _alive(pid, start):
            signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def lifeline_env() -> dict[str, str]:
    """The environment of the guarded server: every Python process in it dies with its parent (see
    `servers/lifeline/sitecustomize.py`), so killing the guard itself leaves no engine process behind."""
    env = dict(os.environ)
    lifeline = str(Path(__file__).resolve().with_name("lifeline"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (lifeline, env.get("PYTHONPATH")) if p)
    env["SHOPPING_MMLU_LIFELINE"] = "1"
    return env


class Guard:
    def __init__(self, command: list[str], grace_s: float, parent: int) -> None:
        self.grace_s = grace_s
        self.parent = parent
        self.stop_requested = False
        self.process = subprocess.Popen(command, start_new_session=True, env=lifeline_env(),
                                        preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        fields = _stat(self.process.pid)
        self.seen = {self.process.pid: int(fields[19]) if fields else -1}  # pid -> start time

    def track(self) -> None:
        """Remember every descendant, with its start time: a worker that moves to another group is still ours;
        the children of a pid now reused by a stranger are not."""
        self.seen.update(_children_of({pid for pid, start in self.seen.items() if _alive(pid, start)}))

    def should_stop(self) -> bool:
        return self.stop_requested or os.getppid() != self.parent

    def run(self) -> int:
        while self.process.poll() is None:
            if self.should_stop():
                return self.stop()
            self.track()
            time.sleep(POLL_S)
        self.track()
        self._kill_all(signal.SIGKILL)  # the server is gone: none of its processes may stay
        return self.process.returncode

    def stop(self) -> int:
        self.track()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and any(_alive(p, t) for p, t in self.seen.items()):
            self.track()
            self.process.poll()
            time.sleep(POLL_S)
        self._kill_all(signal.SIGKILL)
        self.process.wait()
        return self.process.returncode if self.process.returncode is not None else -signal.SIGKILL

    def _group_is_ours(self) -> bool:
        """The server's group id is still its: the server is not yet reaped, or a process we saw is still in
        the group (Linux does not reuse a pid that is some group's id while that group has members)."""
        return self.process.returncode is None or any(
            _alive(pid, start) and (_stat(pid) or [None] * 3)[2] == str(self.process.pid)
            for pid, start in self.seen.items())

    def _kill_all(self, sig: int) -> None:
        self.track()
        if self._group_is_ours():
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
        for pid, start in self.seen.items():
            _signal(pid, start, sig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--parent", type=int, default=None, help="the pid whose death stops the server")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to guard")
    die_with_parent(signal.SIGTERM)
    guard = Guard(command, args.grace, args.parent or os.getppid())

    def request_stop(*_) -> None:
        guard.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if os.getppid() != guard.parent:  # the parent died before the signal could be armed
        guard.stop_requested = True
    sys.exit(guard.run())


if __name__ == "__main__":
    main()
