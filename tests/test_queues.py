"""The one queue-draining loop behind the SQLite writer and the scoring stage."""

from __future__ import annotations

import queue

from evaluator.queues import drain


def test_drain_serves_what_waits_in_capped_groups_and_stops_at_the_close():
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(6):
        jobs.put(i)
    jobs.put(None)
    jobs.put("late")
    groups: list[list] = []
    drain(jobs, groups.append, group_max=3)
    assert groups == [[0, 1, 2], [3, 4, 5]]  # everything before the close, three at a time
    assert jobs.get_nowait() == "late"  # after the close: left for the owner to refuse
    for i in range(4):
        jobs.put(i)
    jobs.put(None)
    groups.clear()
    drain(jobs, groups.append, group_max=3)
    assert groups == [[0, 1, 2], [3]]  # a close met inside a group ends the loop after that group


def test_drain_without_a_cap_serves_everything_waiting_in_one_pass():
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(1000):
        jobs.put(i)
    jobs.put(None)
    groups: list[list] = []
    drain(jobs, groups.append)
    assert groups == [list(range(1000))]
