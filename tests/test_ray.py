"""The suite on a real local Ray cluster of several raylets with made-up GPU counts (Ray's own test
utilities), with loopback stub servers standing in for vLLM where no GPU exists, and one vLLM-CPU model end
to end: placement across nodes, a node removed mid-run, a killed suite resumed, no server left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'shopping-mmlu[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402
from rich.console import Console  # noqa: E402

from builders import our_processes, write_jsonl  # noqa: E402
from evaluator.cache.responses import ResponseCache  # noqa: E402
from evaluator.runs import suite as suite_runner  # noqa: E402
from servers.planner import synthetic_inventory  # noqa: E402
from servers.profiles import ModelProfile, get_profile  # noqa: E402
from servers.ray_cluster import RayServers, cluster_inventory  # noqa: E402
from servers.suite import Suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 200


def stub_command(latency: str = "0.02"):
    """The loopback stub in vLLM's place, on the port the server was given, reachable from the driver."""
    def command(server) -> list[str]:
        return [sys.executable, "-m", "benchmarks.stubs.openai_stub", "--port", str(server.port), "--host",
                "0.0.0.0", "--latency", latency, latency, "--served-model-name", server.profile.name]
    return command


def stub_processes() -> set[int]:
    """This session's stub servers (never another test run's on a shared machine)."""
    return our_processes(lambda cmdline, _status: "openai_stub" in cmdline)


def no_stub_left(within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while stub_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    return not stub_processes()


@pytest.fixture(scope="module")
def cluster():
    """A head without GPUs and two workers with two made-up GPUs each."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    workers = [cluster.add_node(num_cpus=4, num_gpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
             log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def models(names_tp: list[tuple[str, float]]) -> list[ModelProfile]:
    return [ModelProfile(name=name, model=f"org/{name}", params_b=params, dtype="bfloat16")
            for name, params in names_tp]


def suite_of(tmp_path: Path, profiles: list[ModelProfile], n: int = N) -> Suite:
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": f"t{i % 3}",
                                              "task_type": "multiple-choice", "metric": "accuracy"}
                                             for i in range(n)])
    return Suite(name="ray", data=data, protocol="skill", render=None, concurrency=8, models=profiles)


@pytest.mark.ray
def test_models_are_placed_across_the_nodes_with_their_gpus_together(cluster, tmp_path):
    # 40 GiB GPUs: a 20B model needs two of them (tensor parallel 2, on one node); 7B models take one
    suite = suite_of(tmp_path, models([("big-20b", 20), ("a-7b", 7), ("b-7b", 7), ("c-7b", 7)]), 60)
    servers = RayServers(cluster[0].address, tmp_path / "logs", command=stub_command("0.005"))
    inventory = cluster_inventory(40.0)
    assert [g.node for g in inventory] == [0, 0, 1, 1]
    outcomes = suite_runner.run_suite(suite, inventory, tmp_path / "cache", Console(quiet=True),
                                      ray_servers=servers)
    assert [o.status for o in outcomes] == ["complete"] * 4, [o.message for o in outcomes]
    by_name = {o.model: o for o in outcomes}
    assert by_name["big-20b"].gpus == 2
    assert len({o.node for o in outcomes}) == 2  # both worker nodes were used
    assert no_stub_left()


@pytest.mark.ray
def test_a_node_lost_mid_run_sends_the_model_elsewhere_and_the_scores_equal_one_node(cluster, tmp_path):
    import threading

    head, _ = cluster
    suite = suite_of(tmp_path, models([("moving-7b", 7)]))
    servers = RayServers(head.address, tmp_path / "logs", command=stub_command("0.03"))
    placed_on: list[str] = []
    original_start = servers.start

    def start_and_remember(*args, **kwargs):
        placed = original_start(*args, **kwargs)
        placed_on.append(placed.node_id)
        return placed

    servers.start = start_and_remember
    done: dict = {}

    def run() -> None:
        done["outcomes"] = suite_runner.run_suite(suite, cluster_inventory(40.0), tmp_path / "cache",
                                                  Console(quiet=True), ray_servers=servers)

    runner_thread = threading.Thread(target=run, daemon=True)
    runner_thread.start()
    cache = tmp_path / "cache" / "responses"
    deadline = time.monotonic() + 120
    answered = 0
    while time.monotonic() < deadline and answered < 30:  # wait until some answers are kept
        if (cache / "responses.sqlite").exists():
            db = ResponseCache(cache)
            answered = db.db.execute("SELECT count(*) FROM answers").fetchone()[0]
            db.close()
        time.sleep(0.2)
    assert answered >= 30 and placed_on
    lost = next(node for node in head.list_all_nodes() if node.node_id == placed_on[0])
    head.remove_node(lost)  # the raylet dies, and the server's actor with it
    head.add_node(num_cpus=4, num_gpus=2)  # keep the cluster's size for the other tests
    runner_thread.join(300)
    assert not runner_thread.is_alive()
    outcome = done["outcomes"][0]
    assert outcome.status == "complete" and len(placed_on) == 2 and placed_on[1] != placed_on[0], outcome.message
    assert outcome.cached >= 30  # answers already cached were kept; only the rest was asked again
    one_node = suite_runner.run_suite(suite_of(tmp_path / "one", models([("moving-7b", 7)])),
                                      synthetic_inventory(1, 40), tmp_path / "one-cache", Console(quiet=True),
                                      start_server=lambda *a, **k: _LocalStub())
    assert one_node[0].overall == outcome.overall
    assert one_node[0].result.scores.for_model("moving-7b")["tasks"] == \
        outcome.result.scores.for_model("moving-7b")["tasks"]
    assert no_stub_left()


class _LocalStub:
    """The same stub answers on one node, in this process."""

    def __init__(self) -> None:
        from benchmarks.stubs.openai_stub import Stub

        self.stub = Stub().start()
        self.base_url = self.stub.base_url

    def stop(self) -> None:
        self.stub.stop()


@pytest.mark.ray
def test_a_suite_killed_on_the_cluster_resumes_and_leaves_no_server(cluster, tmp_path):
    head, _ = cluster
    suite_file = tmp_path / "ray.toml"
    data = write_jsonl(tmp_path / "d.json", [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": "t",
                                              "task_type": "multiple-choice", "metric": "accuracy"}
                                             for i in range(N)])
    suite_file.write_text(f'[suite]\ndata = "{data}"\nconcurrency = 4\n[models]\n'
                          f'slow-7b = {{ model = "org/slow-7b", params_b = 7 }}\n', encoding="utf-8")
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\nfrom pathlib import Path\nfrom rich.console import Console\n"
        "from evaluator.runs import suite as suite_runner\nfrom servers.ray_cluster import RayServers, cluster_inventory\n"
        "from servers.suite import load_suite\nfrom tests_stub import stub_command\n"
        f"servers = RayServers({head.address!r}, Path({str(tmp_path / 'logs')!r}), command=stub_command('0.05'))\n"
        f"suite_runner.run_suite(load_suite({str(suite_file)!r}), cluster_inventory(40.0), Path({str(tmp_path / 'cache')!r}), "
        "Console(), ray_servers=servers)\n", encoding="utf-8")
    (tmp_path / "tests_stub.py").write_text(
        "import sys\n\ndef stub_command(latency):\n    def command(server):\n"
        "        return [sys.executable, '-m', 'benchmarks.stubs.openai_stub', '--port', str(server.port), '--host',"
        " '0.0.0.0', '--latency', latency, latency, '--served-model-name', server.profile.name]\n"
        "    return command\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    first = subprocess.Popen([sys.executable, str(driver)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    cache = tmp_path / "cache" / "responses"
    deadline = time.monotonic() + 120
    answered = 0
    while time.monotonic() < deadline and answered < 20:
        if (cache / "responses.sqlite").exists():
            db = ResponseCache(cache)
            answered = db.db.execute("SELECT count(*) FROM answers").fetchone()[0]
            db.close()
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the driver dies: Ray ends its actors, the guard ends each server
    first.wait()
    assert answered >= 20
    assert no_stub_left(30), "a server outlived the suite"
    servers = RayServers(head.address, tmp_path / "logs", command=stub_command("0.005"))
    from servers.suite import load_suite

    outcomes = suite_runner.run_suite(load_suite(suite_file), cluster_inventory(40.0), tmp_path / "cache",
                                      Console(quiet=True), ray_servers=servers)
    assert outcomes[0].status == "complete" and outcomes[0].cached >= 20 and outcomes[0].sent <= N - 20
    assert no_stub_left()


@pytest.mark.ray
def test_a_model_larger_than_a_node_runs_on_vllm_multi_node_execution(cluster, tmp_path):
    # 2 GPUs of 40 GiB per node; a 40B model needs 4: tensor parallel 2 on each of 2 nodes (pipeline 2)
    servers = RayServers(cluster[0].address, tmp_path / "logs", command=stub_command("0.005"))
    suite = suite_of(tmp_path, models([("huge-40b", 40)]), 20)
    outcomes = suite_runner.run_suite(suite, cluster_inventory(40.0), tmp_path / "cache", Console(quiet=True),
                                      ray_servers=servers)
    assert outcomes[0].status == "complete", outcomes[0].message
    assert outcomes[0].gpus == 4  # placed by the suite as 2 × 2, reserved by us, then handed over to vLLM
    gpu_nodes = {n.node_id for n in cluster[0].list_all_nodes()
                 if n.node_id != cluster[0].head_node.node_id}
    assert outcomes[0].node in gpu_nodes  # vLLM started on the node of the first GPU: never the GPU-less head
    assert no_stub_left()


def test_the_vllm_command_for_a_multi_node_model():
    from servers.ray_cluster import ServerSpec
    from servers.vllm_server import VLLMServer

    spec = ServerSpec(profile=get_profile("llama2-70b"), weights="meta-llama/Llama-2-70b-hf", log_dir="/tmp", tp=4,
                      pp=2, multi_node=True)
    profile = spec.profile.model_copy(update={"tensor_parallel_size": spec.tp, "pipeline_parallel_size": spec.pp,
                                              "extra_args": ["--distributed-executor-backend", "ray"]})
    command = VLLMServer(profile, spec.weights, Path("/tmp/x.log"), device="gpu", host="0.0.0.0",
                         port=8000).command()
    joined = " ".join(command)
    assert "--tensor-parallel-size 4" in joined and "--pipeline-parallel-size 2" in joined
    assert "--distributed-executor-backend ray" in joined and "--host 0.0.0.0" in joined


@lru_cache(maxsize=1)
def vllm_available() -> bool:
    """Probed once, when a test that needs it is about to run (string conditions below)."""
    from servers.vllm_server import vllm_python

    python = vllm_python()
    return Path(python).exists() and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0


@pytest.mark.skipif("not vllm_available()", reason="no vLLM: build .venv-vllm (make test does)")
@pytest.mark.ray
@pytest.mark.vllm
def test_the_demo_model_on_vllm_cpu_end_to_end_on_the_cluster(cluster, tmp_path):
    from evaluator.cli import sample_dir

    servers = RayServers(cluster[0].address, tmp_path / "logs")
    suite = Suite(name="ray-demo", data=sample_dir(), protocol="skill", render=None, concurrency=32,
                  models=[get_profile("demo")])
    outcomes = suite_runner.run_suite(suite, [], tmp_path / "cache", Console(quiet=True), ray_servers=servers)
    outcome = outcomes[0]
    assert outcome.status == "incomplete" and outcome.errors == 0 and outcome.sent == 26  # multilingual unscored
    assert outcome.node is not None
    results = outcome.result
    assert results.answered == 26


@pytest.mark.skipif("not vllm_available()", reason="no vLLM: build .venv-vllm (make test does)")
@pytest.mark.ray
@pytest.mark.vllm
def test_a_lost_node_leaves_no_vllm_process(cluster, tmp_path):
    """The demo model's vLLM-CPU server placed on a worker node, then the node's raylet removed: Ray SIGKILLs
    the actor's direct child (our guard), and still no vLLM process is left 30 s later."""
    from servers import demo_model
    from test_vllm import leftover, vllm_processes

    head, _ = cluster
    weights = str(demo_model.ensure_demo_model(tmp_path / "cache"))
    servers = RayServers(head.address, tmp_path / "logs")
    before = vllm_processes()
    placed = servers.start(get_profile("demo"), weights, 1, device="cpu")
    try:
        assert len(vllm_processes() - before) >= 2  # the API server and its engine core
        node = next(n for n in head.list_all_nodes() if n.node_id == placed.node_id)
        head.remove_node(node)
        head.add_node(num_cpus=4, num_gpus=2)  # keep the cluster's size for the other tests
        assert placed.lost.wait(60)  # the driver saw it
        assert leftover(before, 30) == set(), "vLLM processes outlived their lost node by 30 s"
    finally:
        placed.stop()


@pytest.mark.ray
def test_the_driver_ships_our_code_to_workers_that_do_not_have_it(cluster, tmp_path):
    """A driver joining through `connect` (as `suite --ray` does) runs its actors on code Ray shipped with it
    (py_modules), not on an installed copy: the workers need nothing of ours installed."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys\n"
        "from servers.ray_cluster import connect\n"
        "connect(sys.argv[1])\n"
        "import ray\n"
        "where = ray.get(ray.remote(num_cpus=0.1)(lambda: (__import__('servers.ray_cluster').__file__,"
        " __import__('evaluator.cache.sqlite').__file__)).remote())\n"
        "print('WHERE', *where)\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script), cluster[0].address], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    paths = next(line for line in done.stdout.splitlines() if line.startswith("WHERE")).split()[1:]
    assert all("runtime_resources" in p and not p.startswith(str(ROOT)) for p in paths), paths


def vllm_on_ray_command(world: int, wait: str = "30"):
    """vLLM's Ray start-up in its place (tests/vllm_on_ray.py), then the stub; built in the actor, on its node."""
    def command(server) -> list[str]:
        node = ray.get_runtime_context().get_node_id()
        return [sys.executable, str(ROOT / "tests" / "vllm_on_ray.py"), "--world", str(world), "--node", node,
                "--wait", wait, "--", "--port", str(server.port), "--host", "0.0.0.0", "--latency", "0.005",
                "0.005", "--served-model-name", server.profile.name]
    return command


def gpu_groups() -> dict[str, float]:
    """Placement groups holding GPUs now: id -> GPUs."""
    return {key: sum(b.get("GPU", 0) for b in group["bundles"].values())
            for key, group in ray.util.placement_group_table().items()
            if group["state"] == "CREATED" and any(b.get("GPU") for b in group["bundles"].values())}


@pytest.mark.ray
def test_a_model_larger_than_a_node_hands_its_gpus_to_vllms_own_placement_group(cluster, tmp_path):
    """vLLM's engine, a new Ray driver, forms its own group of 4 GPUs from the ones we reserved, while a
    single-node model asked for meanwhile waits instead of taking them; once the big model stops, vLLM's
    group goes with its driver and the waiting model gets its GPUs. (What only a GPU cluster shows: vLLM's
    engine on the actor's node, its workers in the group's bundles on two machines, NCCL between them.)"""
    import threading

    from servers import ray_cluster

    head, _ = cluster
    big = RayServers(head.address, tmp_path / "logs", command=vllm_on_ray_command(4))
    small = RayServers(head.address, tmp_path / "logs", command=stub_command("0.005"))
    reserved, placed_small = threading.Event(), {}
    hand_over = ray_cluster.RayServers._hand_over

    def hand_over_later(held, actor, gpus):
        reserved.set()  # the small model now asks for its GPUs while ours are still held
        time.sleep(3 * ray_cluster.RESERVE_POLL_S)
        return hand_over(held, actor, gpus)

    big._hand_over = hand_over_later
    second = threading.Thread(target=lambda: reserved.wait(120) and placed_small.update(
        placed=small.start(models([("small-7b", 7)])[0], "org/small-7b", 2)), daemon=True)
    second.start()
    placed = big.start(models([("huge-40b", 40)])[0], "org/huge-40b", 2, 2, device="gpu")
    try:
        assert placed.group is None  # nothing of ours holds the GPUs
        assert list(gpu_groups().values()) == [4.0]  # vLLM's own group has them all
        log = next((tmp_path / "logs").glob("huge-40b-*-ray.log")).read_text()
        assert f"placement group {next(iter(gpu_groups()))} ready" in log  # the group vLLM's engine made
        assert "placed" not in placed_small  # still waiting: vLLM's GPUs were not taken from it
    finally:
        placed.stop()
    second.join(120)
    assert "placed" in placed_small, "the waiting model was never placed"
    try:
        assert list(gpu_groups().values()) == [2.0]  # vLLM's group went with its driver
    finally:
        placed_small["placed"].stop()
    assert no_stub_left()


@pytest.mark.ray
def test_the_actor_runs_vllm_with_the_python_the_suite_names(cluster, tmp_path, monkeypatch):
    """`[ray] vllm_python` (or the driver's $SHOPPING_MMLU_VLLM_PYTHON) reaches the actor through its
    runtime_env: the server starts with that Python on the node; one that is not there is one clear line."""
    from servers.vllm_server import VLLM_PYTHON_ENV

    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)
    env = tmp_path / "vllm-env" / "bin"
    env.mkdir(parents=True)
    (env / "python").symlink_to(sys.executable)

    def with_server_python(server) -> list[str]:
        return [server.python, "-m", "benchmarks.stubs.openai_stub", "--port", str(server.port), "--host",
                "0.0.0.0", "--latency", "0.005", "0.005", "--served-model-name", server.profile.name]

    servers = RayServers(cluster[0].address, tmp_path / "logs", command=with_server_python,
                         vllm_python=str(env / "python"))
    placed = servers.start(models([("py-7b", 7)])[0], "org/py-7b", 1)
    try:
        assert placed.command[0] == str(env / "python")
    finally:
        placed.stop()
    monkeypatch.setenv(VLLM_PYTHON_ENV, "/opt/vllm/bin/python")  # the driver's own setting, as make sets it
    assert RayServers(cluster[0].address, tmp_path / "logs").runtime_env == {
        "env_vars": {VLLM_PYTHON_ENV: "/opt/vllm/bin/python"}}
    missing = RayServers(cluster[0].address, tmp_path / "logs", vllm_python="/nowhere/bin/python")
    with pytest.raises(RuntimeError, match=r"vLLM's Python /nowhere/bin/python is not on node .*\[ray\] vllm_python"):
        missing.start(models([("py-7b", 7)])[0], "org/py-7b", 1)
    assert no_stub_left()
