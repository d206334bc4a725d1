"""Suites: the planner on made-up inventories, the dry run, and the runner on a simulated node (fake servers
with start-up delays in front of the loopback stub)."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from builders import run_cli, write_jsonl
from evaluator.runs import suite as suite_runner
from servers.planner import (
    USABLE,
    estimated_eval_s,
    estimated_startup_s,
    memory_gib,
    plan_node,
    read_inventory,
    schedule,
    synthetic_inventory,
)
from servers.profiles import ModelProfile, load_profiles
from benchmarks.stubs.openai_stub import Stub
from servers.suite import Suite, load_suite

PROFILES = load_profiles()


def local(name: str, params: float) -> ModelProfile:
    return ModelProfile(name=name, model=f"org/{name}", params_b=params, dtype="bfloat16")


def check_invariants(plan, gpus) -> None:
    """No GPU over its usable memory at any moment; one evaluation at a time per GPU; TP distinct GPUs."""
    usable = {g.index: g.memory_gib * USABLE for g in gpus}
    moments = sorted({p.start_s for p in plan.placements} | {p.eval_start_s for p in plan.placements})
    for t in moments:
        for gpu in usable:
            held = sum(p.share_gib for p in plan.placements if gpu in p.gpus and p.start_s <= t < p.end_s)
            assert held <= usable[gpu] + 1e-9
    for p in plan.placements:
        assert len(set(p.gpus)) == p.tp and p.start_s <= p.ready_s <= p.eval_start_s < p.end_s
        for q in plan.placements:
            if p is not q and set(p.gpus) & set(q.gpus):
                assert p.end_s <= q.eval_start_s or q.end_s <= p.eval_start_s


def test_one_24gb_gpu_takes_7b_but_not_13b_or_70b():
    gpus = synthetic_inventory(1, 24)
    plan = plan_node([local("a7", 7), local("b13", 13), local("c70", 70), local("d2", 2)], gpus)
    assert {p.profile.name: p.tp for p in plan.placements} == {"a7": 1, "d2": 1}
    assert sorted(p.profile.name for p in plan.unplaceable) == ["b13", "c70"]
    check_invariants(plan, gpus)


def test_four_16gb_gpus_split_models_by_tensor_parallel():
    gpus = synthetic_inventory(4, 16)
    models = [local("a7", 7), local("b13", 13), local("c70", 70), local("d05", 0.5)]
    plan = schedule(models, gpus, estimated_startup_s, estimated_eval_s)
    assert {p.profile.name: p.tp for p in plan.placements} == {"a7": 2, "b13": 4, "d05": 1}
    assert [p.profile.name for p in plan.unplaceable] == ["c70"]
    check_invariants(plan, gpus)
    check_invariants(plan_node(models, gpus), gpus)


def test_eight_80gb_gpus_run_eight_7b_models_at_once():
    gpus = synthetic_inventory(8, 80)
    plan = plan_node([local(f"m{i}", 7) for i in range(8)], gpus)
    assert all(p.start_s == 0 and p.tp == 1 for p in plan.placements)
    assert sorted(g for p in plan.placements for g in p.gpus) == list(range(8))
    check_invariants(plan, gpus)


def test_a_70b_on_four_gpus_while_7bs_use_the_rest():
    gpus = synthetic_inventory(8, 80)
    plan = schedule([local("big", 70)] + [local(f"s{i}", 7) for i in range(8)], gpus, estimated_startup_s,
                    estimated_eval_s)
    big = next(p for p in plan.placements if p.profile.name == "big")
    assert big.tp == 4 and big.start_s == 0
    first_wave = [p for p in plan.placements if p.profile.name != "big" and p.start_s == 0]
    assert len(first_wave) == 4 and not {g for p in first_wave for g in p.gpus} & set(big.gpus)
    check_invariants(plan, gpus)


def test_paper_suite_packs_eight_80gb_gpus():
    suite = load_suite(PROFILES_DIR / "paper.toml")
    gpus = synthetic_inventory(8, 80)
    plan = plan_node([m for m in suite.models if m.is_local], gpus)
    assert len(plan.placements) == 27 and not plan.unplaceable
    assert plan.gpu_busy_fraction >= 0.85 and plan.wall_s <= 0.3 * plan.sequential_s
    check_invariants(plan, gpus)


def test_random_suites_keep_the_invariants():
    rng = random.Random(2)
    for _ in range(30):
        gpus = synthetic_inventory(rng.choice([1, 2, 4, 8]), rng.choice([16, 24, 40, 80]))
        models = [local(f"m{i}", rng.choice([0.5, 2, 7, 13, 34, 70])) for i in range(rng.randint(1, 12))]
        plan = plan_node(models, gpus)
        assert len(plan.placements) + len(plan.unplaceable) == len(models)
        check_invariants(plan, gpus)


def test_inventory_reader_parses_nvidia_smi():
    text = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n"
    gpus = read_inventory(text)
    assert [g.index for g in gpus] == [0, 1] and gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[0].memory_gib == pytest.approx(79.65, abs=0.01)
    assert read_inventory("") == []


def test_memory_estimate_of_a_7b_in_half_precision():
    """Bounds from facts, not the planner's formula restated: 7e9 parameters × 2 bytes of weights, vLLM's fixed
    start-up costs of at least 1.5 GiB and 2 GiB of KV headroom for an unknown shape below; a 24 GB card,
    which serves a 7B in bf16, above. Doubling the parameters adds their weights (and a little activation
    room, not a second set of fixed costs); float32 doubles the weights' bytes."""
    weights = 7e9 * 2 / 2**30
    estimate = memory_gib(local("x", 7))
    assert weights + 1.5 + 2 <= estimate <= 24e9 / 2**30
    assert weights <= memory_gib(local("y", 14)) - estimate <= 1.3 * weights
    fp32 = ModelProfile(name="z", model="org/z", params_b=7, dtype="float32")
    assert memory_gib(fp32) - estimate >= weights


PROFILES_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "servers" / "suites"


# ---------------------------------------------------------------- dry run

def test_dry_run_plans_every_model_and_sends_nothing(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "data.json", [
        {"input_field": f"Q{i}\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": 0, "task_name": "t",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(50)])
    with Stub() as stub:
        suite_file = tmp_path / "suite.toml"
        suite_file.write_text(f'[suite]\ndata = "{data}"\n[models]\nllama2-70b = {{}}\nqwen7b = {{}}\n'
                              f'gpt-4o = {{ api_base = "{stub.base_url}" }}\n', encoding="utf-8")
        code, out, err = run_cli(["suite", suite_file, "--dry-run", "--gpus", "4", "--gpu-mem", "80"],
                                 capsys, monkeypatch)
        assert code == 0, err
        assert sum(stub.seen.values()) == 0
    for needle in ("llama2-70b", "qwen7b", "gpt-4o", "Nothing was sent", "API cost ceiling"):
        assert needle in out.replace("\n", " ") or needle in out


def test_suite_file_errors(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite]\nname = 'x'\n[models]\na = {}\n", encoding="utf-8")
    code, _, err = run_cli(["suite", bad, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and "suite.data" in err
    bad.write_text("[suite]\ndata = 'd'\n[models]\nnew-model = { params_b = 7 }\n", encoding="utf-8")
    code, _, err = run_cli(["suite", bad, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and "models.new-model" in err and "model" in err


def test_a_suites_ray_table_names_vllms_python_on_the_nodes(tmp_path, capsys, monkeypatch):
    """`[ray] vllm_python` reaches the cluster's placement (suite --ray); it is a path on the nodes, so a
    relative one is one line naming the key."""
    import servers.ray_cluster
    from evaluator.errors import InputError

    suite_file = tmp_path / "night.toml"
    head = "[suite]\ndata = 'd'\n[models]\ndemo = {}\n[ray]\n"
    suite_file.write_text(head + "vllm_python = '/opt/vllm/bin/python'\n", encoding="utf-8")
    assert load_suite(suite_file).vllm_python == "/opt/vllm/bin/python"
    given = {}

    def placing(address, log_dir, **kwargs):
        given.update(kwargs, address=address)
        raise InputError("no cluster here")

    monkeypatch.setattr(servers.ray_cluster, "RayServers", placing)
    code, _, err = run_cli(["suite", suite_file, "--ray", "auto", "--cache", tmp_path / "cache"], capsys,
                           monkeypatch)
    assert code == 2 and given == {"address": "auto", "vllm_python": "/opt/vllm/bin/python"}, err
    suite_file.write_text(head + "vllm_python = 'venv/bin/python'\n", encoding="utf-8")
    code, _, err = run_cli(["suite", suite_file, "--dry-run"], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ray.vllm_python" in err and "absolute" in err
# ---------------------------------------------------------------- the runner on a simulated node

class FakeServer:
    """Stands for a vLLM server: a start-up delay, then the shared stub answers for it."""

    def __init__(self, stub: Stub, delay: float, log: list) -> None:
        self.base_url = stub.base_url
        self.log = log
        time.sleep(delay)

    def stop(self) -> None:
        self.log.append(("stop", time.monotonic()))


def simulated_suite(tmp_path, names: list[str]) -> Suite:
    data = write_jsonl(tmp_path / "data.json", [
        {"input_field": f"Q{i}?", "output_field": i % 4, "task_name": f"t{i % 3}",
         "task_type": "multiple-choice", "metric": "accuracy"} for i in range(300)])
    return Suite(name="sim", data=data, protocol="skill", render=None, concurrency=16,
                 models=[local(n, 7) for n in names])


def test_start_up_overlaps_evaluation_and_a_rerun_resumes_from_the_cache(tmp_path):
    suite = simulated_suite(tmp_path, ["m1", "m2", "m3", "m4"])
    gpus = synthetic_inventory(2, 80)
    starts: list = []
    with Stub(latency=(0.005, 0.01)) as stub:
        def start(profile, cache, console, device="auto", gpu_ids=None):
            starts.append((profile.name, gpu_ids, time.monotonic()))
            return FakeServer(stub, 0.5, [])

        outcomes = suite_runner.run_suite(suite, gpus, tmp_path / "cache", Console(quiet=True), start_server=start)
        assert [o.status for o in outcomes] == ["complete"] * 4
        assert all(o.sent == 300 and o.errors == 0 for o in outcomes)
        overlapped = [(a.model, b.model) for a in outcomes for b in outcomes
                      if a is not b and a.evaluating_at < b.started_at < a.finished_at]
        assert overlapped, "no server started while another model was evaluating"
        assert {tuple(ids) for _, ids, _ in starts} == {(0,), (1,)}

        starts.clear()
        again = suite_runner.run_suite(suite, gpus, tmp_path / "cache", Console(quiet=True), start_server=start)
    assert [o.status for o in again] == ["complete"] * 4 and starts == [] and all(o.sent == 0 for o in again)  # resumed: no server started
    assert [o.overall for o in again] == [o.overall for o in outcomes]


def test_a_model_that_fails_is_retried_once_then_marked_failed_and_the_suite_goes_on(tmp_path):
    suite = simulated_suite(tmp_path, ["good", "broken"])
    attempts = {"broken": 0}
    lock = threading.Lock()
    with Stub() as stub:
        def start(profile, cache, console, device="auto", gpu_ids=None):
            if profile.name == "broken":
                with lock:
                    attempts["broken"] += 1
                raise RuntimeError("vLLM server for 'broken' exited (code 1); log tail: CUDA out of memory")
            return FakeServer(stub, 0.1, [])

        outcomes = suite_runner.run_suite(suite, synthetic_inventory(1, 80), tmp_path / "cache",
                                          Console(quiet=True), start_server=start)
    by_name = {o.model: o for o in outcomes}
    assert by_name["good"].status == "complete" and by_name["broken"].status == "failed"
    assert attempts["broken"] == 2 and "out of memory" in by_name["broken"].message


def test_the_runner_tracks_real_server_objects(tmp_path):
    """Servers are dataclasses (unhashable): the live-server registry must not need hashing."""
    from dataclasses import dataclass

    @dataclass
    class Unhashable:
        base_url: str

        def stop(self) -> None:
            pass

    suite = simulated_suite(tmp_path, ["only"])
    with Stub() as stub:
        outcomes = suite_runner.run_suite(suite, [], tmp_path / "cache", Console(quiet=True),
                                          start_server=lambda *a, **k: Unhashable(stub.base_url))
    assert [o.status for o in outcomes] == ["complete"]


def test_a_cluster_plan_keeps_tensor_parallel_groups_on_one_node():
    rng = random.Random(5)
    for _ in range(20):
        nodes, per = rng.choice([2, 3, 4]), rng.choice([2, 4, 8])
        gpus = synthetic_inventory(per, 40, nodes=nodes)
        node_of = {g.index: g.node for g in gpus}
        models = [local(f"m{i}", rng.choice([0.5, 7, 13, 20, 34, 70, 140])) for i in range(rng.randint(1, 10))]
        plan = plan_node(models, gpus)
        check_invariants(plan, gpus)
        for p in plan.placements:
            spanned = {node_of[i] for i in p.gpus}
            if p.tp <= per:
                assert len(spanned) == 1, (p.profile.name, p.gpus)
            else:  # larger than a node: whole nodes, for pipeline parallelism across them
                assert p.tp % per == 0 and len(spanned) == p.tp // per


def test_the_dry_run_plans_a_cluster_with_nodes(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "d.json", [{"input_field": "q", "output_field": 0, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"}])
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\ndata = "{data}"\n[models]\nllama2-70b = {{}}\nqwen7b = {{}}\nbig = {{ model = "x", '
                     'params_b = 300 }\n', encoding="utf-8")
    code, out, err = run_cli(["suite", suite, "--dry-run", "--gpus", "4", "--gpu-mem", "80", "--nodes", "3"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert "3 nodes" in out and "n0" in out.replace("n1", "n0").replace("n2", "n0")
    assert " all" in out  # the 300B model takes whole nodes
    code, _, err = run_cli(["suite", suite, "--nodes", "2"], capsys, monkeypatch)
    assert code == 2 and "--dry-run" in err


def test_the_inventory_survives_na_memory_finds_mig_instances_and_honours_cuda_visible_devices():
    query = ("0, GPU-aaaa, NVIDIA H100 80GB HBM3, 81559, Disabled\n"
             "1, GPU-bbbb, NVIDIA A100-SXM4-80GB, [N/A], Enabled\n"
             "2, GPU-cccc, NVIDIA H100 80GB HBM3, [N/A], [N/A]\n"
             "3, GPU-dddd, NVIDIA H100 80GB HBM3, 81559, [N/A]\n")
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\n"
               "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-bbbb)\n"
               "  MIG 3g.40gb     Device  0: (UUID: MIG-1111)\n"
               "  MIG 3g.40gb     Device  1: (UUID: MIG-2222)\n"
               "GPU 3: NVIDIA H100 80GB HBM3 (UUID: GPU-dddd)\n")
    gpus = read_inventory(query, listing, visible=None)
    assert [g.visible_as for g in gpus] == [0, 3, "MIG-1111", "MIG-2222"]  # GPU 2 ([N/A] memory) left out
    assert gpus[2].memory_gib == pytest.approx(40e9 / 2**30) and "MIG 3g.40gb" in gpus[2].name
    assert len({g.index for g in gpus}) == 4
    assert [g.visible_as for g in read_inventory(query, listing, visible="3,MIG-2222")] == [3, "MIG-2222"]
    assert [g.visible_as for g in read_inventory(query, listing, visible="GPU-aaaa")] == [0]
    assert read_inventory(query, listing, visible="") == []  # CUDA_VISIBLE_DEVICES="": no GPU at all
    old = read_inventory("0, NVIDIA H100 80GB HBM3, 81559\n", "", visible=None)  # the three-column query
    assert [g.index for g in old] == [0]


def test_a_server_on_a_gpu_counts_devices_as_nvidia_smi_does():
    from servers.vllm_server import VLLMServer

    server = VLLMServer(ModelProfile(name="m", model="org/m"), "org/m", Path("/tmp/m.log"), device="gpu",
                        gpu_ids=[3, "MIG-2222"])
    env = server.environment()
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["CUDA_VISIBLE_DEVICES"] == "3,MIG-2222"


def test_a_completion_suite_keeps_chat_only_api_models_on_chat(tmp_path):
    from evaluator.prompts import Rendering

    gpt = ModelProfile(name="gpt", model="gpt-x", provider="openai", rendering="chat")
    local_model = local("l", 7)
    other = ModelProfile(name="o", model="o", provider="openai-compatible", rendering="chat")
    suite = Suite(name="s", data=tmp_path, protocol="skill", render="completion", concurrency=8,
                  models=[gpt, local_model, other])
    modes = [suite_runner._config(suite, m, tmp_path).render_mode for m in suite.models]
    assert modes == [Rendering.CHAT, Rendering.COMPLETION, Rendering.COMPLETION]


def test_no_server_stops_on_a_gpu_while_another_starts_there(tmp_path):
    """vLLM profiles free memory while it starts: a neighbour that stops then makes it abort. With starts of
    0.6 s and quick models, stops must wait for the start on their GPU to end."""
    suite = simulated_suite(tmp_path, ["a1", "a2", "a3", "a4", "a5", "a6"])
    gpus = synthetic_inventory(1, 80)  # one GPU: every start overlaps another model's evaluation
    events: list = []
    lock = threading.Lock()

    class Timed:
        def __init__(self, stub, ids) -> None:
            self.base_url, self.ids = stub.base_url, ids
            with lock:
                events.append(("start", tuple(ids), time.monotonic()))
            time.sleep(0.6)
            with lock:
                events.append(("ready", tuple(ids), time.monotonic()))

        def stop(self) -> None:
            with lock:
                events.append(("stop", tuple(self.ids), time.monotonic()))

    with Stub() as stub:
        outcomes = suite_runner.run_suite(suite, gpus, tmp_path / "cache", Console(quiet=True),
                                          start_server=lambda p, c, con, device="auto", gpu_ids=None: Timed(stub, gpu_ids))
    assert [o.status for o in outcomes] == ["complete"] * 6
    starts = [(t, next(r for k, i, r in events if k == "ready" and r >= t)) for k, _, t in events if k == "start"]
    stops = [t for k, _, t in events if k == "stop"]
    assert len(stops) == 6
    assert not [s for s in stops for begin, end in starts if begin < s < end], "a server stopped during a start"


def qwen_like(folder: Path) -> Path:
    """A weights folder whose config.json has Qwen1.5-7B's attention: no grouped-query attention, 32k context."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "hidden_size": 4096, "max_position_embeddings": 32768}), encoding="utf-8")
    return folder


def test_the_plan_reserves_the_kv_cache_of_the_planned_context(tmp_path):
    from servers.model_config import model_shape

    weights = qwen_like(tmp_path / "qwen")
    profile = ModelProfile(name="qwen", model=str(weights), params_b=7.7, dtype="bfloat16")
    shape = model_shape(profile)
    assert shape.kv_bytes_per_token(2) == 0.5 * 2**20 and shape.context == 32768
    # its config.json gives the widths (hidden 4096, MLP 4 x 4096) but no vocabulary: the start-up profile's
    # activations for 8,192 tokens (twice the widest tensors), 256 sequences x 262,144 tokens x 18 bytes, 2.5 GiB
    weights_gib = 7.7e9 * 2 / 2**30 + (8192 * (2 * 4096 + 3 * 5 * 4096) * 2 * 2 + 256 * 262144 * 18) / 2**30 + 2.5
    assert memory_gib(profile) == pytest.approx(weights_gib + 16.0)  # its whole 32k context: 16 GiB of KV
    fitted = profile.model_copy(update={"max_model_len": 4096})
    assert memory_gib(fitted) == pytest.approx(weights_gib + 8.0)  # 16k tokens of batch room at least
    stated = ModelProfile(name="s", model="org/s", params_b=8, dtype="bfloat16", num_layers=32, num_kv_heads=8,
                          head_dim=128, context_len=8192, vocab_size=128256)
    fixed = (2 * 8192 * (28 * 8e9 / 32) ** 0.5 * 2 + 256 * 128256 * 18) / 2**30 + 2.5
    assert memory_gib(stated) == pytest.approx(8e9 * 2 / 2**30 + fixed + 0.125 * 16384 / 1024)


def test_a_suite_fits_max_model_len_to_its_data_and_the_dry_run_says_what_each_model_gets(tmp_path, capsys,
                                                                                          monkeypatch):
    from servers.vllm_server import VLLMServer

    weights = qwen_like(tmp_path / "qwen")
    data = write_jsonl(tmp_path / "d.json", [
        {"input_field": "word " * 1500, "output_field": "x", "task_name": "g", "task_type": "generation",
         "metric": "rougel"}, {"input_field": "Q?", "output_field": 1, "task_name": "m",
                               "task_type": "multiple-choice", "metric": "accuracy"}])
    suite_file = tmp_path / "s.toml"
    suite_file.write_text(f'[suite]\ndata = "{data}"\n[models]\nqwen = {{ model = "{weights}", params_b = 7.7, '
                          f'dtype = "bfloat16" }}\nmystery = {{ model = "org/mystery", params_b = 7, '
                          f'dtype = "bfloat16" }}\n', encoding="utf-8")
    fitted = suite_runner.fit_context(load_suite(suite_file))
    qwen = next(m for m in fitted.models if m.name == "qwen")
    assert qwen.max_model_len == 4096  # 7,500 characters (≤ 3,750 tokens) + 100 to generate, rounded up
    assert next(m for m in fitted.models if m.name == "mystery").max_model_len is None  # its shape is unknown
    command = VLLMServer(qwen, str(weights), tmp_path / "q.log", device="gpu").command()
    assert command[command.index("--max-model-len") + 1] == "4096"
    plan = tmp_path / "plan.json"
    code, out, err = run_cli(["suite", suite_file, "--dry-run", "--gpus", "1", "--gpu-mem", "80", "--json", plan],
                             capsys, monkeypatch)
    assert code == 0, out + err
    assert "4k" in out and "KV cache unknown for 1 local model(s) (mystery)" in out
    records = {r["name"]: r for r in json.loads(plan.read_text())["models"]}
    assert records["qwen"]["max_model_len"] == 4096 and records["qwen"]["kv_cache_gib"] == 8.0
    fixed = (8192 * (2 * 4096 + 3 * 5 * 4096) * 2 * 2 + 256 * 262144 * 18) / 2**30 + 2.5  # the start-up profile's
    assert records["qwen"]["memory_gib"] == pytest.approx(7.7e9 * 2 / 2**30 + fixed + 8.0, abs=0.01)
    assert records["qwen"]["gpus"] == [0] and records["qwen"]["tp"] == 1 and records["mystery"]["kv_cache_gib"] is None
    for line in out.splitlines():
        assert len(line) <= 80, line


def test_the_paper_suite_plans_onto_8_x_80_gib_with_each_models_kv_cache(tmp_path, capsys, monkeypatch):
    """Every local model of the paper's suite states its attention shape and vocabulary (read from copies of
    the published config.json) and reserves its weights plus the KV cache of 16k tokens or its planned
    context, whichever is more, computed here from the shape; no model is planned 'KV unknown'."""
    from servers.model_config import BATCH_ROOM

    dev = Path(__file__).resolve().parents[2] / "shared" / "data" / "kddcup24_development.jsonl"
    if not dev.exists():
        pytest.skip("the KDD development set is not beside the checkout (../shared/data)")
    text = (PROFILES_DIR / "paper.toml").read_text(encoding="utf-8")
    suite = tmp_path / "paper.toml"
    suite.write_text(text.replace('data = "../../data/shopping_mmlu"', f'data = "{dev}"'), encoding="utf-8")
    plan_file = tmp_path / "plan.json"
    code, out, err = run_cli(["suite", suite, "--dry-run", "--gpus", "8", "--gpu-mem", "80", "--json", plan_file],
                             capsys, monkeypatch)
    assert code == 0, err
    plan = json.loads(plan_file.read_text())["models"]
    profiles = load_profiles()
    local = [m for m in plan if m["provider"] == "vllm"]
    assert len(local) == 27 and all(m["placed"] for m in local)
    stated = [m for m in local if profiles[m["name"]].num_layers]
    assert len(stated) == 27 and all(profiles[m["name"]].vocab_size for m in local)
    for m in stated:
        p = profiles[m["name"]]
        tokens = max(BATCH_ROOM, m["max_model_len"])
        kv = 2 * p.num_layers * p.num_kv_heads * p.head_dim * 2 * tokens / 2 ** 30  # K and V, 2 bytes each
        weights = p.params_b * 1e9 * 2 / 2 ** 30
        assert m["max_model_len"] <= p.context_len and abs(m["kv_cache_gib"] - kv) < 0.01, m
        assert m["memory_gib"] >= weights + kv, m
    assert "KV cache unknown" not in out


def test_a_server_the_suite_started_is_reported_as_ours_with_its_start_up(tmp_path):
    """A local model answered through a server the suite started says so in its results (kind, start-up
    seconds), as a run that starts its own server does, not as someone else's endpoint."""
    from evaluator.provenance import server_kind

    suite = simulated_suite(tmp_path, ["m1"])
    with Stub() as stub:
        def start(profile, cache, console, device="auto", gpu_ids=None):
            server = FakeServer(stub, 0.0, [])
            server.startup_s = 12.5
            return server

        [outcome] = suite_runner.run_suite(suite, synthetic_inventory(1, 80), tmp_path / "cache", Console(quiet=True),
                                           start_server=start)
    assert outcome.status == "complete"
    assert outcome.result.timings["startup_s"] == 12.5
    assert server_kind(outcome.result.config) == "vllm (started by us)"


def test_a_suite_fetches_the_config_json_it_cannot_find_and_plans_the_kv_cache_from_it(tmp_path, capsys,
                                                                                        monkeypatch):
    """Online, a model whose shape is neither stated nor cached has its config.json fetched from the hub into
    the Hugging Face cache before planning, so its reservation covers its KV cache, and its tokenizer.json, so
    its prompts are counted with it (those two files only); a gated model without a token and one the hub does
    not know stay 'KV unknown', and the run says why."""
    import json as json_lib

    from benchmarks.stubs.hub_stub import HubStub
    from evaluator.scoring.embeddings import _hub_reachable

    config = {"model_type": "qwen2", "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
              "hidden_size": 5120, "max_position_embeddings": 32768}
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": 1, "task_name": "t",
                                             "task_type": "multiple-choice", "metric": "accuracy"} for i in range(5)])
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\ndata = "{data}"\n[models]\n'
                     'open = { model = "org/open-14b", params_b = 14 }\n'
                     'gated = { model = "org/gated-7b", params_b = 7 }\n'
                     'unknown = { model = "org/nowhere-7b", params_b = 7 }\n', encoding="utf-8")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, when first imported
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "Q0?": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with HubStub({"org/open-14b": {"config.json": json_lib.dumps(config).encode(),
                                   "tokenizer.json": tokenizer.to_str().encode()},
                  "org/gated-7b": {"config.json": b"{}"}}, gated={"org/gated-7b"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        _hub_reachable.cache_clear()
        try:
            code, out, err = run_cli(["suite", suite, "--dry-run", "--gpus", "1", "--gpu-mem", "80", "--json",
                                      tmp_path / "plan.json"], capsys, monkeypatch)
        finally:
            _hub_reachable.cache_clear()
    assert code == 0, err
    assert any(path.endswith("/org/open-14b/resolve/main/config.json") for path in hub.requests)
    assert list((tmp_path / "hf" / "hub" / "models--org--open-14b" / "snapshots").glob("*/tokenizer.json"))
    assert not any(path.endswith(("model.safetensors", ".bin")) for path in hub.requests)  # no weights fetched
    assert list((tmp_path / "hf" / "hub" / "models--org--open-14b" / "snapshots").glob("*/config.json"))
    plan = {m["name"]: m for m in json_lib.loads((tmp_path / "plan.json").read_text())["models"]}
    assert plan["open"]["kv_cache_gib"] == pytest.approx(2 * 40 * 40 * 128 * 2 * 16384 / 2 ** 30)
    assert plan["open"]["max_model_len"] == 1024 and plan["open"]["kv_shape_from"].endswith("config.json")
    assert plan["gated"]["kv_cache_gib"] is None and plan["unknown"]["kv_cache_gib"] is None
    said = " ".join((out + err).split())
    assert "config.json not fetched for 2 model(s) (gated, unknown)" in said
