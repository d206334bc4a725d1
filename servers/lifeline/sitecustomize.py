"""Put first on the PYTHONPATH of a vLLM server we start (by `servers/guard.py`): every Python process of that
server, however it was started (spawned or forked), dies within half a second of its parent.

Why: vLLM's engine core and workers are children of its API server, which is a child of our guard. When the
guard itself is killed (Ray SIGKILLs a dead actor's direct child; an OOM killer; `kill -9`), its clean-up never
runs: the API server dies with it (the guard arms PR_SET_PDEATHSIG), but the engine core and workers would live
on, holding a GPU. Each process here watches its own parent instead, in a daemon thread (not PR_SET_PDEATHSIG:
that fires when the parent *thread* exits, and vLLM starts processes from helper threads).

Only where `SHOPPING_MMLU_LIFELINE` is set; another `sitecustomize` further on the path still runs.
"""

import os
import signal
import sys
import threading
import time


def _watch(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)


def _arm() -> None:
    threading.Thread(target=_watch, args=(os.getppid(),), name="shopping-mmlu-lifeline", daemon=True).start()


if os.environ.get("SHOPPING_MMLU_LIFELINE"):
    _arm()
    os.register_at_fork(after_in_child=_arm)


def _chain() -> None:
    """Run the next `sitecustomize` on the path, the one ours hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    del sys.modules["sitecustomize"]
    saved, sys.path[:] = list(sys.path), rest
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


_chain()
