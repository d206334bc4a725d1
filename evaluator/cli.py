"""The `shopping-mmlu` command line."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evaluator import download as downloading
from evaluator import loaders
from evaluator.errors import InputError
from evaluator.prompts import Protocol
from evaluator.report import print_scores
from evaluator.responses import read_responses
from evaluator.scoring import EmbeddingUnavailable, ScoringOptions, score
from evaluator.scoring.embeddings import ENGLISH_MODEL, MULTILINGUAL_MODEL, EmbeddingConfig

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fast, faithful Shopping MMLU evaluation.")
data_app = typer.Typer(no_args_is_help=True, help="Get and inspect Shopping MMLU data.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

EMBEDDING_HELP = "sentence-transformer model for 'sent-transformer' rows: hub name or local folder"
MULTILINGUAL_HELP = "model for 'multilingual-sent-transformer' rows: hub name or local folder"


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


@app.command("demo")
def demo_command(
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the scores as JSON here"),
    multilingual_model: str = typer.Option(MULTILINGUAL_MODEL, "--multilingual-model", help=MULTILINGUAL_HELP),
) -> None:
    """Score the shipped sample set against the sample responses shipped beside it."""
    folder = sample_dir()
    console.print(f"Scoring the sample set in {folder}")
    options = ScoringOptions(embeddings=EmbeddingConfig(multilingual=multilingual_model))
    _score_and_report(folder, folder / "responses", options, json_out)


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


def main() -> None:
    """Entry point: bad input is one clear line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except InputError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
