"""The one loop behind each thread that owns a resource (a SQLite file's writer, the night's scoring stage):
take jobs from a queue in groups, so that what arrived together is served in one pass."""

from __future__ import annotations

import queue
from typing import Callable


def drain(jobs: queue.SimpleQueue, serve: Callable[[list], None], group_max: int | None = None) -> None:
    """Serve `jobs` a group at a time (whatever is waiting, up to `group_max`) until a None arrives; jobs
    queued before the None are served first. Returns when closed, leaving what came after for the owner."""
    while True:
        job = jobs.get()
        if job is None:
            return
        group = [job]
        while group_max is None or len(group) < group_max:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                jobs.put(None)  # close after this group
                break
            group.append(job)
        serve(group)
