"""Run a suite: API models at once, each under its own limits; local models packed onto the GPUs as the
planner says, the next server starting while others still evaluate; failures isolated; resumable.

Resuming is the response cache's doing: a model whose answers are all cached is scored without a server, a
half-done one sends only what is missing. A model that fails (its server does not start, or it dies mid-run)
is tried once more, then marked failed with the reason; the suite goes on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console

from evaluator.runs import runner
from evaluator.prompts import Protocol, Rendering
from evaluator.runs.runner import RunConfig
from servers.planner import Gpu, Placement, plan_node
from servers.profiles import ModelProfile
from servers.suite import Suite

ATTEMPTS = 2
_live: dict[int, object] = {}  # id -> server running now, stopped if the suite is interrupted
_live_lock = threading.Lock()


@dataclass
class Outcome:
    model: str
    status: str  # "done", "cached" (nothing to send), "failed"
    overall: float | None = None
    errors: int = 0
    sent: int = 0
    cached: int = 0
    seconds: float = 0.0
    message: str = ""
    started_at: float = 0.0  # monotonic times, for overlap checks and reports
    evaluating_at: float = 0.0
    finished_at: float = 0.0


class GpuPool:
    """Memory and slots per GPU, shared by the model threads, with the planner's rules: a server may start
    on a GPU whose memory has room and where no other server is waiting to evaluate; a GPU evaluates one
    model at a time."""

    def __init__(self, gpus: list[Gpu]) -> None:
        self.free = {g.index: g.memory_gib * 0.9 for g in gpus}
        self.waiting = {g.index: 0 for g in gpus}
        self.evaluating: set[int] = set()
        self.cond = threading.Condition()

    def reserve(self, ids: list[int], share: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: all(self.free[i] >= share and self.waiting[i] == 0 for i in ids))
            for i in ids:
                self.free[i] -= share
                self.waiting[i] += 1

    def begin_evaluation(self, ids: list[int]) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not (set(ids) & self.evaluating))
            self.evaluating |= set(ids)
            for i in ids:
                self.waiting[i] -= 1
            self.cond.notify_all()

    def release(self, ids: list[int], share: float, evaluating: bool) -> None:
        with self.cond:
            for i in ids:
                self.free[i] += share
                if not evaluating:
                    self.waiting[i] -= 1
            if evaluating:
                self.evaluating -= set(ids)
            self.cond.notify_all()


def _config(suite: Suite, profile: ModelProfile, cache: Path | None, base_url: str | None = None) -> RunConfig:
    return RunConfig(profile=profile, data=suite.data, protocol=Protocol(suite.protocol),
                     rendering=Rendering(suite.render) if suite.render else None, base_url=base_url,
                     concurrency=profile.concurrency or suite.concurrency, cache_dir=cache, progress=False)


def _score(config: RunConfig, outcome: Outcome, console: Console) -> None:
    result = runner.execute(config, console)
    outcome.overall = result.scores.for_model(config.profile.name)["overall"]
    outcome.errors, outcome.sent, outcome.cached, outcome.seconds = (result.errors, result.sent, result.cached,
                                                                     result.seconds)


def run_suite(suite: Suite, gpus: list[Gpu], cache: Path | None, console: Console,
              start_server: Callable = runner.start_server, device: str = "auto") -> list[Outcome]:
    """Run every model of the suite; returns one Outcome per model, in the suite's order."""
    outcomes = {m.name: Outcome(m.name, "pending") for m in suite.models}
    api = [m for m in suite.models if not m.is_local]
    local = [m for m in suite.models if m.is_local]
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            console.print(message)

    def attempt(profile: ModelProfile, body: Callable[[Outcome], None]) -> None:
        outcome = outcomes[profile.name]
        for number in range(1, ATTEMPTS + 1):
            try:
                body(outcome)
                outcome.status = "done" if outcome.sent else "cached"
                say(f"[green]{profile.name}[/]: {outcome.status}, overall "
                    f"{'-' if outcome.overall is None else f'{outcome.overall:.4f}'}, {outcome.sent} sent, "
                    f"{outcome.cached} cached, {outcome.errors} errors")
                return
            except Exception as exc:  # isolate: this model fails, the suite goes on
                outcome.message = str(exc).strip()[-1500:] or type(exc).__name__
                say(f"[red]{profile.name}[/]: attempt {number} failed: {outcome.message.splitlines()[0][:200]}")
        outcome.status = "failed"

    def run_api(profile: ModelProfile) -> None:
        attempt(profile, lambda outcome: _score(_config(suite, profile, cache), outcome, console))

    def run_local(profile: ModelProfile, placement: Placement | None, pool: GpuPool | None) -> None:
        def body(outcome: Outcome) -> None:
            config = _config(suite, profile, cache)
            if runner.pending(config) == 0:
                _score(config, outcome, console)  # resumed: all answers cached, no server
                return
            ids = placement.gpus if placement else None
            served = profile
            if placement is not None:
                share = placement.share_gib
                memory = min(g.memory_gib for g in gpus if g.index in ids)
                served = profile.model_copy(update={"tensor_parallel_size": placement.tp,
                                                    "gpu_memory_utilization": round(min(0.9, share / memory), 3)})
                pool.reserve(ids, share)
            evaluating = False
            try:
                outcome.started_at = time.monotonic()
                say(f"{profile.name}: starting its server" + (f" on GPUs {ids}" if ids else ""))
                server = start_server(served, config.cache_folder, console, device=device, gpu_ids=ids)
                with _live_lock:
                    _live[id(server)] = server
                try:
                    if pool is not None:
                        pool.begin_evaluation(ids)
                        evaluating = True
                    outcome.evaluating_at = time.monotonic()
                    _score(_config(suite, profile, cache, base_url=server.base_url), outcome, console)
                    outcome.finished_at = time.monotonic()
                finally:
                    server.stop()
                    with _live_lock:
                        _live.pop(id(server), None)
            finally:
                if pool is not None:
                    pool.release(ids, placement.share_gib, evaluating)

        attempt(profile, body)

    threads = [threading.Thread(target=run_api, args=(p,), name=p.name) for p in api]
    if gpus:
        plan = plan_node(local, gpus)
        pool = GpuPool(gpus)
        for failed in plan.unplaceable:
            outcomes[failed.profile.name].status = "failed"
            outcomes[failed.profile.name].message = (f"needs ~{failed.memory_gib:.0f} GiB: does not fit "
                                                     f"{len(gpus)} GPU(s) of {gpus[0].memory_gib:.0f} GiB")
        for placement in plan.placements:  # planned order; each thread waits for its GPUs
            threads.append(threading.Thread(target=run_local, args=(placement.profile, placement, pool),
                                            name=placement.profile.name))
    else:  # no GPU: local models one after another (each takes the whole machine)
        def sequential() -> None:
            for profile in local:
                run_local(profile, None, None)
        threads.append(threading.Thread(target=sequential, name="local"))
    try:
        for thread in threads:
            thread.daemon = True  # an interrupt ends the suite; the servers are stopped below
            thread.start()
            time.sleep(0.01)  # keep the planned order when threads compete for the same GPUs
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        with _live_lock:
            running = list(_live.values())
        for server in running:
            server.stop()
        raise
    return [outcomes[m.name] for m in suite.models]
