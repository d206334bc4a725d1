"""No server process outlives its guard, even when the guard itself is killed (as Ray kills a dead actor's
direct child): every Python process under the guard watches its own parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from servers.guard import _alive

ROOT = Path(__file__).resolve().parents[1]

TREE = textwrap.dedent("""
    import multiprocessing, os, sys, threading, time

    def sleeper(tag):
        with open(sys.argv[1], "a") as out:
            out.write(f"{tag} {os.getpid()}\\n")
        time.sleep(600)

    def spawned_parent():  # a spawned child that forks a grandchild of its own, like vLLM's engine core
        if os.fork() == 0:
            sleeper("grandchild")
        sleeper("spawned")

    if __name__ == "__main__":
        multiprocessing.set_start_method("spawn")
        multiprocessing.Process(target=spawned_parent).start()
        threading.Thread(target=lambda: multiprocessing.get_context("fork").Process(
            target=sleeper, args=("forked-from-thread",)).start()).start()
        sleeper("server")
""")


def test_killing_the_guard_leaves_no_process_of_its_server(tmp_path):
    script, pids = tmp_path / "tree.py", tmp_path / "pids.txt"
    script.write_text(TREE, encoding="utf-8")
    guard = subprocess.Popen([sys.executable, str(ROOT / "servers" / "guard.py"), "--parent", str(os.getpid()),
                              "--", sys.executable, str(script), str(pids)], start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().splitlines()) < 4):
        time.sleep(0.1)
    tree = {line.split()[0]: int(line.split()[1]) for line in pids.read_text().splitlines()}
    assert set(tree) == {"server", "spawned", "grandchild", "forked-from-thread"}
    time.sleep(1.5)  # alive and well while the guard lives: the lifeline does not fire on its own
    assert all(_alive(pid) for pid in tree.values())
    guard.send_signal(signal.SIGKILL)  # no clean-up can run
    guard.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree.values()):
        time.sleep(0.2)
    left = {tag: pid for tag, pid in tree.items() if _alive(pid)}
    for pid in left.values():
        os.kill(pid, signal.SIGKILL)
    assert not left, f"outlived the guard: {left}"


def test_another_sitecustomize_still_runs(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITE_RAN'] = '1'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "servers" / "lifeline"), str(other)]),
           "SHOPPING_MMLU_LIFELINE": "1"}
    done = subprocess.run([sys.executable, "-c", "import os, threading; print(os.environ.get('OTHER_SITE_RAN'), "
                           "[t.name for t in threading.enumerate()])"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 ") and "shopping-mmlu-lifeline" in done.stdout


def test_the_sites_own_sitecustomize_keeps_its_path_changes_and_nothing_is_printed(tmp_path):
    """A site's `sitecustomize` that extends `sys.path` (as sites do for shared package folders) keeps its
    change under ours; with or without one, a server's stderr carries nothing of ours."""
    site, shared = tmp_path / "site", tmp_path / "shared-packages"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.append({str(shared)!r})\n", encoding="utf-8")
    probe = "import sys, sitecustomize; print(sys.path[-1], sitecustomize.__file__)"
    lifeline = str(ROOT / "servers" / "lifeline")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([lifeline, str(site)]), "SHOPPING_MMLU_LIFELINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.split() == [str(shared), str(site / "sitecustomize.py")]
    alone = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, "PYTHONPATH": lifeline})
    assert alone.returncode == 0 and alone.stdout == "ok\n" and alone.stderr == "", alone.stderr


def test_the_guard_signals_only_the_processes_it_saw_not_a_pid_reused_by_a_stranger(tmp_path):
    """The guard remembers (pid, start time): a remembered pid now held by another process (pid reuse) is
    neither killed nor has its children adopted, while the processes it did see still are killed."""
    from servers.guard import Guard, _stat

    stranger = subprocess.Popen(["sh", "-c", "sleep 120 & wait"], start_new_session=True)
    guard = Guard(["sleep", "120"], grace_s=1.0, parent=os.getpid())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                                                   and (_stat(int(p.name)) or [0, 0])[1] == str(stranger.pid)]:
            time.sleep(0.05)
        started = int(_stat(stranger.pid)[19])
        guard.seen[stranger.pid] = started - 1  # as if a server process once had this pid and is gone
        guard.track()
        assert set(guard.seen) == {guard.process.pid, stranger.pid}  # the stranger's child is not adopted
        guard._kill_all(signal.SIGKILL)
        guard.process.wait(10)
        time.sleep(0.2)
        assert stranger.poll() is None and _alive(stranger.pid, started), "the guard killed a stranger"
        guard.seen[stranger.pid] = started  # the process it really saw: that one it kills
        guard._kill_all(signal.SIGKILL)
        assert stranger.wait(10) == -signal.SIGKILL
    finally:
        try:
            os.killpg(stranger.pid, signal.SIGKILL)  # its child too
        except ProcessLookupError:
            pass
        stranger.wait()
        guard.process.kill()
        guard.process.wait()
