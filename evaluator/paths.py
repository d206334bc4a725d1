"""Names never become paths unescaped, and outputs never overwrite inputs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from evaluator.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, limit: int = 80) -> str:
    """A file name made from any string (a model name such as '../../x' or '/tmp/x'): letters, digits, '.',
    '_' and '-' only, never hidden, never '.' or '..'; a short hash of the original is added whenever the
    name had to change, so different names stay different files."""
    cleaned = _UNSAFE.sub("_", name).strip("._-")[:limit] or "model"
    if cleaned != name:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned


def check_output_file(path: Path, inputs: list[Path | None], flag: str) -> Path:
    """`path` as a file we may (re)write: not a folder, not one of the run's input files."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder: name a file to write", path=path, field=flag)
    target = path.resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            raise InputError(f"would overwrite the input {source}: name another file", path=path, field=flag)
    return path


OUR_FILES = {"results.json", "samples.jsonl", "official"}


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_folder(path: Path, inputs: list[Path | None], flag: str = "--output",
                        ours: set[str] = OUR_FILES, marker: str = "results.json",
                        format_name: str = "shopping-mmlu results") -> Path:
    """Where a results folder may be written: a new or empty folder, or one we wrote before (our `marker`
    file in our format, and nothing but our files); never an input or a folder holding one, never inside
    an input. A link is followed: the folder written is its target. Returns the resolved folder."""
    import json

    target = Path(path).resolve()
    if target.exists() and not target.is_dir():
        raise InputError("is a file: name a folder", path=path, field=flag)
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        if _inside(target, source) or _inside(source, target):
            raise InputError(f"would write over or inside the input {source}: name another folder", path=path,
                             field=flag)
    if target.is_dir():
        present = {p.name for p in target.iterdir()}
        if present:
            try:
                doc = json.loads((target / marker).read_text(encoding="utf-8"))
                written_by_us = isinstance(doc, dict) and doc.get("format") == format_name
            except (OSError, ValueError):
                written_by_us = False
            if not written_by_us or not present <= ours:
                raise InputError("holds files this tool did not write: name a new or empty folder (a results "
                                 "folder is replaced as a whole)", path=path, field=flag)
    return target


SUITE_FILES = {"suite.log", "models", "leaderboard.md", "leaderboard.csv", "leaderboard.json", "summary.json",
               "report.html"}


def check_suite_folder(path: Path, inputs: list[Path | None]) -> Path:
    """A suite's folder: new, empty, or one a suite wrote (its `suite.log`, and only a suite's files, so an
    interrupted night resumes into it); never an input, a folder holding one, or inside one."""
    target = Path(path).resolve()
    if target.exists() and not target.is_dir():
        raise InputError("is a file: name a folder", path=path, field="--output")
    for source in inputs:
        if source is not None and (_inside(target, Path(source).resolve()) or _inside(Path(source).resolve(), target)):
            raise InputError(f"would write over or inside the input {Path(source).resolve()}: name another folder",
                             path=path, field="--output")
    if target.is_dir():
        present = {p.name for p in target.iterdir() if not p.name.startswith(".")}
        if present and ("suite.log" not in present or not present <= SUITE_FILES):
            raise InputError("holds files no suite wrote: name a new or empty folder", path=path, field="--output")
    return target
