"""Put first on the PYTHONPATH of a vLLM server we start (by `servers/guard.py`): every Python process of that
server, however it was started (spawned or forked), dies within half a second of its parent.

Why: vLLM's engine core and workers are children of its API server, which is a child of our guard. When the
guard itself is killed (Ray SIGKILLs a dead actor's direct child; an OOM killer; `kill -9`), its clean-up never
runs: the API server dies with it (the guard arms PR_SET_PDEATHSIG), but the engine core and workers would live
on, holding a GPU. Each process here watches its own parent instead, in a daemon thread (not PR_SET_PDEATHSIG:
that fires when the parent *thread* exits, and vLLM starts processes from helper threads).

Only where `SHOPPING_MMLU_LIFELINE` is set; the site's own `sitecustomize` (further on the path) still runs.
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
    """Run the site's own `sitecustomize` (the next one on the path, which ours hides) as Python would have:
    found on the path without ours, executed under its name, its changes to `sys.path` kept. Importing it by
    name instead would need `sys.modules` and `sys.path` juggled, which undid those changes and, where there
    was none, made the import system print `Error in sitecustomize ... KeyError` in every process."""
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    here = os.path.dirname(os.path.abspath(__file__))
    spec = PathFinder.find_spec(__name__, [p for p in sys.path if os.path.abspath(p or ".") != here])
    if spec is None or spec.loader is None:
        return
    site = module_from_spec(spec)
    sys.modules[__name__] = site  # what `import sitecustomize` gives from now on, as without us
    spec.loader.exec_module(site)


_chain()
