"""Plan a suite on one GPU node: memory per model, tensor-parallel size, and a schedule that keeps GPUs busy.

Memory: weights (parameters × dtype bytes) × 1.2 for activations and CUDA graphs, plus 2 GiB of KV cache
headroom, split over the tensor-parallel GPUs. The TP size is the profile's, doubled until one share fits in
a GPU's usable memory (90%). The schedule is event-driven: the largest models are placed first; a model's
server may start on GPUs that are still evaluating another model when their memory has room (start-up
overlaps work), and a GPU evaluates one model at a time. The same policy drives `--dry-run`, the simulated
node benchmark and the real runner.
"""

from __future__ import annotations

import heapq
import os
import re
import subprocess
from dataclasses import dataclass, field

from servers.profiles import ModelProfile

GIB = 2**30
USABLE = 0.9
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "auto": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float
    node: int = 0  # which node of a cluster (0 on one node)
    device: str | None = None  # what CUDA_VISIBLE_DEVICES names it by (a MIG instance's UUID); None: the index

    @property
    def visible_as(self) -> int | str:
        return self.device or self.index


QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,mig.mode.current", "--format=csv,noheader,nounits"]
MIG_LINE = re.compile(r"^\s*MIG\s+(\d+)g\.(\d+)gb\s+Device\s+(\d+):\s*\(UUID:\s*(MIG-[^)\s]+)\)", re.I)
GPU_LINE = re.compile(r"^GPU\s+(\d+):")


def _smi(args: list[str]) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def read_inventory(smi_output: str | None = None, listing: str | None = None,
                   visible: str | None = None) -> list[Gpu]:
    """The GPUs this node may use, by nvidia-smi's (PCI bus) indices: `QUERY`'s rows (index, uuid, name,
    memory MiB, MIG mode); a GPU in MIG mode is its MIG instances instead (from `nvidia-smi -L`, each named by
    its UUID, with the memory of its profile, e.g. 3g.40gb); a row whose memory is not a number ([N/A]) is
    left out. `CUDA_VISIBLE_DEVICES` (`visible`), where the user set it, keeps only the GPUs it names (by
    index or UUID); servers get CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA counts as nvidia-smi does."""
    if smi_output is None:
        smi_output = _smi(QUERY) or ""
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus, uuids, mig_parents = [], {}, set()
    for line in smi_output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:  # index, name, memory: the older query
            parts = [parts[0], "", parts[1], parts[2], ""]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        index, uuid, name, memory = int(parts[0]), parts[1], parts[2], parts[3]
        uuids[index] = uuid
        if len(parts) > 4 and parts[4].lower() == "enabled":
            mig_parents.add(index)
            continue
        try:
            mib = float(memory)
        except ValueError:  # [N/A], [Not Supported]
            continue
        if mib > 0:
            gpus.append(Gpu(index, name, mib / 1024))  # named by its index: servers count in PCI bus order
    if mig_parents:
        gpus += _mig_instances(listing if listing is not None else (_smi(["nvidia-smi", "-L"]) or ""), mig_parents)
    if visible is not None:
        wanted = {v.strip() for v in visible.split(",") if v.strip()}
        gpus = [g for g in gpus if {str(g.index), g.device, uuids.get(g.index)} & wanted]
    return gpus


def _mig_instances(listing: str, parents: set[int]) -> list[Gpu]:
    """MIG instances of the GPUs in MIG mode, from `nvidia-smi -L`; indices 1000 × (GPU + 1) + instance, so
    they never meet a whole GPU's."""
    found, current, name = [], None, ""
    for line in listing.splitlines():
        gpu = GPU_LINE.match(line)
        if gpu:
            current = int(gpu.group(1))
            name = line.split(":", 1)[1].split("(UUID")[0].strip()
            continue
        mig = MIG_LINE.match(line)
        if mig and current in parents:
            memory_gib = int(mig.group(2)) * 1e9 / GIB  # the profile's GB
            found.append(Gpu(1000 * (current + 1) + int(mig.group(3)), f"{name} MIG {mig.group(1)}g.{mig.group(2)}gb",
                             memory_gib, device=mig.group(4)))
    return found


def synthetic_inventory(count: int, memory_gib: float, ids: list[int] | None = None, nodes: int = 1) -> list[Gpu]:
    """`count` GPUs per node on `nodes` nodes (indices run on across nodes), for planning and tests."""
    if ids is not None:
        return [Gpu(i, "planned", memory_gib) for i in ids]
    return [Gpu(n * count + i, "planned", memory_gib, n) for n in range(nodes) for i in range(count)]


def per_node(gpus: list[Gpu]) -> int:
    """GPUs on the largest node."""
    counts: dict[int, int] = {}
    for g in gpus:
        counts[g.node] = counts.get(g.node, 0) + 1
    return max(counts.values(), default=0)


def memory_gib(profile: ModelProfile) -> float:
    """GPU memory to reserve for the whole model (all TP shares together): the weights × 1.2 (activations,
    CUDA graphs), plus the KV cache of its context (`max_model_len`, else the model's own) and at least
    `BATCH_ROOM` tokens, where the model's shape is known; else 2 GiB of KV headroom."""
    from servers.model_config import BATCH_ROOM, model_shape

    dtype_bytes = DTYPE_BYTES.get(profile.dtype, 2)
    weights = (profile.params_b or 7.0) * 1e9 * dtype_bytes * 1.2 / GIB
    shape = model_shape(profile)
    if shape is None:
        return weights + 2.0
    tokens = max(BATCH_ROOM, min(profile.max_model_len or shape.context, shape.context))
    return weights + shape.kv_bytes_per_token(dtype_bytes) * tokens / GIB


def tensor_parallel(profile: ModelProfile, gpu_memory_gib: float, gpu_count: int, width: int | None = None) -> int | None:
    """The smallest GPU count (the profile's TP, doubled) whose share fits one GPU; on a cluster whose nodes
    have `width` GPUs, beyond one node only whole nodes (pipeline parallel across them). None if nothing
    fits."""
    width = width or gpu_count
    tp = max(1, profile.tensor_parallel_size)
    sizes = []
    while tp <= width:
        sizes.append(tp)
        tp *= 2
    sizes += [k * width for k in range(2, gpu_count // width + 1) if k * width >= profile.tensor_parallel_size]
    for size in sizes:
        if memory_gib(profile) / size <= gpu_memory_gib * USABLE:
            return size
    return None


@dataclass
class Placement:
    profile: ModelProfile
    tp: int | None
    memory_gib: float
    gpus: list[int] = field(default_factory=list)
    start_s: float = 0.0  # server start (simulated or planned)
    ready_s: float = 0.0
    eval_start_s: float = 0.0
    end_s: float = 0.0

    @property
    def share_gib(self) -> float:
        return self.memory_gib / (self.tp or 1)


@dataclass
class Schedule:
    placements: list[Placement]
    unplaceable: list[Placement]
    wall_s: float
    gpu_busy_fraction: float
    sequential_s: float


def schedule(profiles: list[ModelProfile], gpus: list[Gpu], startup_s, eval_s, order_by: str = "memory",
             widen: bool = False) -> Schedule:
    """Simulate the policy: `startup_s(profile, tp)` and `eval_s(profile, tp)` give each model's times;
    `order_by` is the placement priority: "memory", "gpu_seconds" (eval × TP) or "seconds" (eval), largest
    first. `widen` doubles the TP of models that need several GPUs anyway: thinner shares can start on GPUs
    that are still evaluating another model."""
    def tp_for(p: ModelProfile) -> int | None:
        tp = tensor_parallel(p, min(g.memory_gib for g in gpus), len(gpus), per_node(gpus)) if gpus else None
        return tp * 2 if widen and tp is not None and 2 <= tp < per_node(gpus) and tp * 2 <= per_node(gpus) else tp

    plans = [Placement(p, tp_for(p), memory_gib(p)) for p in profiles]
    node_of = {g.index: g.node for g in gpus}
    width = per_node(gpus)
    unplaceable = [p for p in plans if p.tp is None]
    priority = {"memory": lambda p: p.memory_gib,
                "gpu_seconds": lambda p: eval_s(p.profile, p.tp) * p.tp,
                "seconds": lambda p: eval_s(p.profile, p.tp)}[order_by]
    queue = sorted((p for p in plans if p.tp is not None), key=lambda p: (-priority(p), p.profile.name))
    free_mem = {g.index: g.memory_gib * USABLE for g in gpus}
    busy_until = {g.index: 0.0 for g in gpus}  # when each GPU's evaluation queue drains
    waiting = {g.index: 0 for g in gpus}  # models started or ready on a GPU, not yet evaluating
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, placement index)
    now, seq, busy_total = 0.0, 0, 0.0
    done: list[Placement] = []
    order = list(queue)

    def try_start() -> None:
        nonlocal seq
        for plan in list(order):
            candidates = sorted((i for i in free_mem if free_mem[i] >= plan.share_gib and waiting[i] == 0),
                                key=lambda i: (busy_until[i], i))
            chosen = _choose(candidates, plan.tp, node_of, width)
            if chosen is None:
                continue
            for i in chosen:
                free_mem[i] -= plan.share_gib
                waiting[i] += 1
            plan.gpus, plan.start_s = chosen, now
            order.remove(plan)
            seq += 1
            heapq.heappush(events, (now + startup_s(plan.profile, plan.tp), seq, "ready", plans.index(plan)))

    try_start()
    while events:
        now, _, kind, index = heapq.heappop(events)
        plan = plans[index]
        if kind == "ready":
            plan.ready_s = now
            plan.eval_start_s = max(now, *(busy_until[i] for i in plan.gpus))
            plan.end_s = plan.eval_start_s + eval_s(plan.profile, plan.tp)
            for i in plan.gpus:
                busy_until[i] = plan.end_s
            seq += 1
            heapq.heappush(events, (plan.eval_start_s, seq, "evaluating", index))
            heapq.heappush(events, (plan.end_s, seq, "done", index))
        elif kind == "evaluating":
            for i in plan.gpus:
                waiting[i] -= 1
            try_start()
        else:
            for i in plan.gpus:
                free_mem[i] += plan.share_gib
            busy_total += (plan.end_s - plan.eval_start_s) * plan.tp
            done.append(plan)
            try_start()
    wall = max((p.end_s for p in done), default=0.0)
    sequential = sum(startup_s(p.profile, p.tp) + eval_s(p.profile, p.tp) for p in done)
    busy = busy_total / (wall * len(gpus)) if wall and gpus else 0.0
    return Schedule(sorted(done, key=lambda p: p.start_s), unplaceable, wall, busy, sequential)


def _choose(candidates: list[int], tp: int, node_of: dict[int, int], width: int) -> list[int] | None:
    """`tp` free GPUs on one node (the first node in `candidates` order that has them), or, for a model
    larger than a node, whole nodes; None if they are not free now."""
    by_node: dict[int, list[int]] = {}
    for i in candidates:
        by_node.setdefault(node_of[i], []).append(i)
    if tp <= width:
        for gpus in by_node.values():
            if len(gpus) >= tp:
                return gpus[:tp]
        return None
    whole = [gpus for gpus in by_node.values() if len(gpus) == width]
    need = tp // width
    return [i for gpus in whole[:need] for i in gpus] if len(whole) >= need else None


def split_parallel(tp: int, width: int) -> tuple[int, int]:
    """(tensor, pipeline) sizes for `tp` GPUs on nodes of `width`: tensor within a node, pipeline across."""
    return (tp, 1) if tp <= width or width == 0 else (width, tp // width)


def estimated_startup_s(profile: ModelProfile, tp: int) -> float:
    """Stated start-up model for a GPU node: ~60 s of engine start and CUDA graph capture, plus loading the
    weights share at ~2 GiB/s per GPU."""
    return 60.0 + 0.5 * memory_gib(profile) / tp


def estimated_eval_s(profile: ModelProfile, tp: int, requests: int = 20_799) -> float:
    """Stated evaluation model: a 7B model answers the 20,799 skill-wise questions in ~350 s on one
    H100-class GPU (~60 req/s); time grows with size and shrinks with TP (sub-linearly); 60 s floor."""
    params = profile.params_b or 7.0
    return 60.0 + 290.0 * (params / 7.0) / tp ** 0.85 * requests / 20_799


# vLLM-CPU as measured (benchmarks/RESULTS.md, 2026-11-27/28): SmolLM2-135M-Instruct, bfloat16, 2 cores, 64 in
# flight, answered the 96 development questions in 9.13 s (10.5 req/s) and their 52 one-token multiple-choice
# ones at 23.2 q/s; solved for seconds per estimated input token (4 characters) and per output-budget token.
CPU_MEASURED_B, CPU_S_PER_TOKEN_IN, CPU_S_PER_TOKEN_OUT = 0.135, 2.9e-4, 8.6e-4
CPU_STARTUP_S = 75.0  # the same model's vLLM-CPU start-up, cold (73.6 s measured)
NIGHT_S = 10 * 3600.0


def estimated_cpu_s(profile: ModelProfile, tokens_in: int, tokens_out: int) -> float | None:
    """A rough time for one model on vLLM-CPU (one after another, on a machine like the one measured): the
    measured small model's cost per token scaled by parameters (each step reads every weight), plus start-up
    and loading the weights; None where the model's size is unknown."""
    if not profile.params_b:
        return None
    tokens_s = tokens_in * CPU_S_PER_TOKEN_IN + tokens_out * CPU_S_PER_TOKEN_OUT
    return CPU_STARTUP_S + 0.5 * profile.params_b * DTYPE_BYTES.get(profile.dtype, 2) + \
        tokens_s * profile.params_b / CPU_MEASURED_B


def plan_node(profiles: list[ModelProfile], gpus: list[Gpu], requests: int = 20_799) -> Schedule:
    """The shortest of the schedules the placement priorities give, with the stated time estimates (what
    --dry-run shows and the runner follows). Simulating is cheap, so trying each beats guessing one."""
    def evaluation(p: ModelProfile, tp: int) -> float:
        return estimated_eval_s(p, tp, requests)

    candidates = [schedule(profiles, gpus, estimated_startup_s, evaluation, order_by, widen)
                  for order_by in ("memory", "gpu_seconds", "seconds") for widen in (False, True)]
    return min(candidates, key=lambda plan: plan.wall_s)
