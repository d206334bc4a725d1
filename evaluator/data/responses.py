"""Read model outputs in the official inference-output format: JSON Lines of `{"model_output": str}`.

One line per data row, in the data file's row order. For a data folder, either one file covering all its
data files in order, or a folder with one file per data file (`STEM.json`, `STEM.jsonl`, or a `STEM/` folder
holding exactly one such file, as skill_inference_results/ lays them out; for a task file `TASK_dataset.json`
also `TASK.json`, `TASK.jsonl` or `TASK/`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from evaluator.errors import InputError
from evaluator.data.loaders import Dataset, json_lines


def read_outputs(path: Path) -> list[str]:
    """The `model_output` of every non-blank line, with a clear error for anything else."""
    outputs: list[str] = []
    for line_no, record, _ in json_lines(path):
        if not isinstance(record, dict) or "model_output" not in record:
            raise InputError("missing field", path=path, line=line_no, field="model_output")
        value = record["model_output"]
        if not isinstance(value, str):
            raise InputError(f"expected a string, got {type(value).__name__}", path=path, line=line_no,
                             field="model_output")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the output holds a lone surrogate: not Unicode text", path=path, line=line_no,
                             field="model_output") from None
        outputs.append(value)
    return outputs


def _file_for(folder: Path, stem: str) -> Path:
    """`STEM.json(l)` or `STEM/` with one file; a task file's responses may drop `_dataset` (`TASK.jsonl`)."""
    stems = [stem] + ([stem.removesuffix("_dataset")] if stem.endswith("_dataset") else [])
    found = [c for s in stems for c in (folder / f"{s}.json", folder / f"{s}.jsonl") if c.is_file()]
    if len(found) > 1:
        raise InputError(f"responses for data file '{stem}' are ambiguous: {', '.join(p.name for p in found)}",
                         path=folder)
    if found:
        return found[0]
    for name in stems:
        sub = folder / name
        if sub.is_dir():
            inside = sorted(p for p in sub.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
            if len(inside) == 1:
                return inside[0]
            raise InputError(f"expected exactly one .json/.jsonl file in {sub}, found {len(inside)}", path=sub)
    expected = " or ".join(f"{s}.json, {s}.jsonl, {s}/" for s in stems)
    raise InputError(f"no responses for data file '{stem}': expected {expected}", path=folder)


def read_responses(path: str | Path, dataset: Dataset) -> pl.DataFrame:
    """Responses aligned with the dataset's questions: columns `row` (0-based over the dataset) and `output`."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_dir():
        outputs: list[str] = []
        for data_file in dataset.files:
            stem = data_file.path.stem
            source = _file_for(path, stem)
            got = read_outputs(source)
            _check_count(source, len(got), data_file.path, len(data_file.questions))
            outputs += got
    else:
        outputs = read_outputs(path)
        total = sum(len(f.questions) for f in dataset.files)
        data_name = dataset.files[0].path if len(dataset.files) == 1 else dataset.root
        _check_count(path, len(outputs), data_name, total)
    return pl.DataFrame({"row": pl.Series(range(len(outputs)), dtype=pl.UInt32),
                         "output": pl.Series(outputs, dtype=pl.String)})


def _check_count(responses: Path, got: int, data: Path, expected: int) -> None:
    if got != expected:
        raise InputError(f"{got} responses for {expected} questions in {data}: the official format has one "
                         "line per data row, in order", path=responses)
