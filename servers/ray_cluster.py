"""The suite on a Ray cluster: each local model's vLLM server runs as a Ray actor on a node that has the GPUs
it needs, bound to an address the driver can reach; the driver keeps the response cache and the fan-out.

A model that fits one node gets a placement group holding its tensor-parallel GPUs in one bundle (so on one
node); its actor runs the server (under our guard) with those GPUs.
A model larger than a node runs on vLLM's own multi-node execution (`--distributed-executor-backend ray`,
tensor × pipeline parallel): we reserve its GPUs until Ray can give them all, then hand them over to vLLM (see
`RayServers._hand_over`); the actor, which holds no GPU itself, starts the API server on the node of the first
GPU and vLLM's own placement group takes them. The driver pings each actor; an actor whose node is lost dies,
the driver stops that model's fan-out at once, and the suite places the model again elsewhere (answers
already cached are kept). Actors are not detached: when the driver ends, Ray ends them, and the guard in
each actor ends its server. Ray is an optional extra (`pip install shopping-mmlu[ray]`).

vLLM on the nodes: the actors run in the Python that Ray runs on each node; the server runs in vLLM's Python,
`vllm_python` (the suite's `[ray] vllm_python`, else the driver's $SHOPPING_MMLU_VLLM_PYTHON), sent to the
actor in its `runtime_env` (a driver's environment does not reach Ray's workers); without either, each node's
own setting or Python.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evaluator.errors import InputError
from servers.profiles import ModelProfile

PING_S = 1.0
RESERVE_POLL_S = 1  # a reservation Ray cannot give yet is withdrawn and asked again this often
HANDOVER_S = 600.0  # the longest a hand-over holds back other placements while vLLM's group forms
_placing = threading.Lock()  # every reservation and hand-over of this driver, one at a time


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the 'ray' package: pip install 'shopping-mmlu[ray]'") from None
    return ray


def shipped_modules() -> list[str]:
    """Our packages, as Ray's `py_modules` ships them to every worker: the actors unpickle `ServerActor` and
    start `servers/guard.py` there, on nodes where this package may not be installed."""
    import evaluator
    import prompts
    import servers

    return [str(Path(m.__file__).parent) for m in (evaluator, servers, prompts)]


def connect(address: str) -> dict:
    """Join the cluster at `address` ('auto': the one running on this machine), shipping our code to its
    workers; returns its resources."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace="shopping-mmlu", log_to_driver=False, configure_logging=False,
                     runtime_env={"py_modules": shipped_modules()})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot join the Ray cluster at {address!r}: {str(exc)[:300]}", field="--ray") from None
    return ray.cluster_resources()


def gpus_per_node() -> list[float]:
    ray = _ray()
    return [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")]


def cluster_inventory(memory_gib: float) -> list:
    """The cluster's GPUs as the planner sees them: each alive node's, `memory_gib` each (Ray does not say)."""
    from servers.planner import Gpu

    gpus, index = [], 0
    for node, count in enumerate(c for c in gpus_per_node() if c > 0):
        for _ in range(int(count)):
            gpus.append(Gpu(index, "ray", memory_gib, node))
            index += 1
    return gpus


@dataclass
class ServerSpec:
    """What an actor needs to start one model's server (sent to the node by Ray)."""

    profile: ModelProfile
    weights: str
    log_dir: str
    tp: int
    pp: int = 1
    multi_node: bool = False
    device: str = "auto"
    cluster_address: str | None = None


class ServerActor:
    """Runs on the node Ray chose: starts the server with the GPUs Ray gave it, reports where it listens."""

    def __init__(self, spec: ServerSpec, command: Callable | None = None) -> None:
        self.spec = spec
        self.command = command
        self.server = None

    def start(self) -> dict:
        import ray

        from servers.vllm_server import VLLMServer

        spec = self.spec
        ip = ray.util.get_node_ip_address()
        # Ray may give GPU ids as integers or as UUID strings: CUDA_VISIBLE_DEVICES takes either
        gpu_ids = [str(g) for g in ray.get_gpu_ids()] if not spec.multi_node else None
        log_dir = Path(spec.log_dir)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            log_dir = Path("/tmp") / "shopping-mmlu-logs"  # the driver's cache is not on this node's disks
            log_dir.mkdir(parents=True, exist_ok=True)
        from evaluator.paths import safe_name

        log = log_dir / f"{safe_name(spec.profile.name)}-{time.strftime('%Y%m%d-%H%M%S')}-ray.log"
        profile = spec.profile.model_copy(update={"tensor_parallel_size": spec.tp,
                                                  "pipeline_parallel_size": spec.pp})
        if spec.multi_node:
            profile = profile.model_copy(update={"extra_args": [*profile.extra_args,
                                                                "--distributed-executor-backend", "ray"]})
        weights = spec.weights
        if profile.source == "hub" and weights == profile.model and self.command is None:
            from servers.weights import ensure_weights

            weights = ensure_weights(profile, log)  # on this node, before the start-up limit runs
        server = VLLMServer(profile, weights, log, device=spec.device, host=ip, gpu_ids=gpu_ids,
                            startup_timeout=1800.0)
        if self.command is not None:  # another OpenAI-compatible server in vLLM's place (tests, other engines)
            server.command = lambda: self.command(server)
        elif not Path(server.python).is_file():
            raise RuntimeError(f"vLLM's Python {server.python} is not on node {ip}: name the Python that has "
                               "vLLM on the nodes in the suite ([ray] vllm_python)")
        if spec.multi_node and spec.cluster_address:
            os.environ.setdefault("RAY_ADDRESS", spec.cluster_address)
        server.__enter__()
        self.server = server
        return {"base_url": f"http://{ip}:{server.port}/v1", "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ip, "gpus": gpu_ids or [], "log": str(log), "command": server.command()}

    def ping(self) -> bool:
        return self.server is not None and self.server.process is not None and self.server.process.poll() is None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class Placed:
    """A model's server on the cluster, seen from the driver."""

    actor: object
    group: object | None
    base_url: str
    node_id: str
    gpus: list[int]
    command: list[str]
    lost: threading.Event
    _stop_watch: threading.Event

    def stop(self) -> None:
        ray = _ray()
        self._stop_watch.set()
        try:
            ray.get(self.actor.stop.remote(), timeout=60)
        except Exception:  # noqa: BLE001: a dead actor has nothing left to stop
            pass
        try:
            ray.kill(self.actor)
        except Exception:  # noqa: BLE001
            pass
        if self.group is not None:
            try:
                ray.util.remove_placement_group(self.group)
            except Exception:  # noqa: BLE001
                pass


class RayServers:
    """Places model servers on the cluster; `command` replaces vLLM's command line (tests use a stub);
    `vllm_python` is the Python that runs vLLM on the nodes (default: the driver's $SHOPPING_MMLU_VLLM_PYTHON,
    if set)."""

    def __init__(self, address: str, log_dir: Path, command: Callable | None = None,
                 vllm_python: str | None = None) -> None:
        from servers.vllm_server import VLLM_PYTHON_ENV

        self.address = address
        self.log_dir = log_dir
        self.command = command
        python = vllm_python or os.environ.get(VLLM_PYTHON_ENV)
        # merged by Ray into the job's runtime_env (env_vars key by key): the actor and its server see it
        self.runtime_env = {"env_vars": {VLLM_PYTHON_ENV: python}} if python else None
        connect(address)

    def start(self, profile: ModelProfile, weights: str, tp: int, pp: int = 1, device: str = "auto") -> Placed:
        """Reserve the GPUs (blocks until Ray can), start the server, and watch it."""
        ray = _ray()
        from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                                    PlacementGroupSchedulingStrategy)

        per_node = max(gpus_per_node() or [0.0])
        multi_node = tp * pp > per_node > 0
        spec = ServerSpec(profile=profile, weights=weights, log_dir=str(self.log_dir), tp=tp, pp=pp,
                          multi_node=multi_node, device=device, cluster_address=self.address)
        remote = ray.remote(ServerActor)
        group = None
        if multi_node:
            # vLLM's API server is a new Ray driver, in no placement group of ours: vLLM makes its own group
            # ({"GPU": 1} per worker, PACK, the first on its own node) and waits for it. So the GPUs are
            # reserved in a group of that shape, the actor goes to the node of its first GPU (outside the
            # group, holding none), and the group is handed over to vLLM's as the server starts.
            held = self._reserve([{"GPU": 1}] * (tp * pp), "PACK")
            node = ray.util.placement_group_table(held)["bundles_to_node_id"][0]
            actor = remote.options(num_cpus=0, num_gpus=0, max_restarts=0, runtime_env=self.runtime_env,
                                   scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                                   ).remote(spec, self.command)
        elif per_node == 0:  # a CPU-only cluster
            actor = remote.options(num_cpus=1, num_gpus=0, max_restarts=0, runtime_env=self.runtime_env
                                   ).remote(spec, self.command)
        else:
            group = self._reserve([{"GPU": tp, "CPU": 1}], "STRICT_PACK")  # one node's GPUs
            strategy = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=0)
            actor = remote.options(num_cpus=1, num_gpus=tp, max_restarts=0, runtime_env=self.runtime_env,
                                   scheduling_strategy=strategy).remote(spec, self.command)
        try:
            started = self._hand_over(held, actor, tp * pp) if multi_node else actor.start.remote()
            info = ray.get(started)
        except Exception as exc:  # noqa: BLE001: a server that does not start, or a node lost while it starts
            try:
                ray.kill(actor)
            finally:
                if group is not None:
                    ray.util.remove_placement_group(group)
            raise RuntimeError(f"the server for '{profile.name}' did not start on the cluster: "
                               f"{str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__}")
        lost, stop = threading.Event(), threading.Event()
        placed = Placed(actor, group, info["base_url"], info["node_id"], info["gpus"], info["command"], lost, stop)
        threading.Thread(target=self._watch, args=(placed,), daemon=True).start()
        return placed

    @staticmethod
    def _reserve(bundles: list[dict], strategy: str):
        """A placement group holding these bundles, once Ray can give them all (blocks until then). No group
        of ours is ever left pending: each try is made, and withdrawn if Ray cannot give it yet, under
        `_placing`, so none can take the GPUs a hand-over frees for vLLM."""
        ray = _ray()
        from ray.util.placement_group import placement_group

        while True:
            with _placing:
                group = placement_group(bundles, strategy=strategy)
                if group.wait(RESERVE_POLL_S):
                    return group
                ray.util.remove_placement_group(group)
            time.sleep(RESERVE_POLL_S)

    @staticmethod
    def _hand_over(held, actor, gpus: int):
        """Free the GPUs we hold for vLLM and start the server, which makes vLLM's group; other placements of
        this driver wait until that group holds `gpus` GPUs (or the start ended, or HANDOVER_S passed).
        Returns the start's reference. Not covered: another Ray job of the cluster taking the freed GPUs first
        (vLLM then waits, up to its own 1800 s, as for any busy cluster). Tested on one machine's raylets with
        vLLM's start-up written from its source (tests/vllm_on_ray.py); only a GPU cluster shows vLLM's engine
        joining the raylet of the actor's node, its `node:<ip>` pin telling machines apart, and its workers
        loading and talking (NCCL) across the nodes of the group."""
        ray = _ray()
        with _placing:
            before = set(ray.util.placement_group_table())
            ray.util.remove_placement_group(held)
            started = actor.start.remote()
            deadline = time.monotonic() + HANDOVER_S
            while time.monotonic() < deadline and not ray.wait([started], timeout=0.5)[0]:
                if any(key not in before and group["state"] == "CREATED"
                       and sum(b.get("GPU", 0) for b in group["bundles"].values()) >= gpus
                       for key, group in ray.util.placement_group_table().items()):
                    break
        return started

    @staticmethod
    def _watch(placed: Placed) -> None:
        """Ping the actor; if it (its node) is gone, say so at once."""
        ray = _ray()
        while not placed._stop_watch.wait(PING_S):
            try:
                if not ray.get(placed.actor.ping.remote(), timeout=30):
                    placed.lost.set()
                    return
            except Exception:  # noqa: BLE001: RayActorError, a timeout: the server is gone
                if not placed._stop_watch.is_set():
                    placed.lost.set()
                return

