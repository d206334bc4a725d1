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
