"""Load Shopping MMLU data: the official data.zip layout, task files and skill-format JSON Lines.

Every problem is an `InputError` naming file, line and field; nothing is returned half-loaded.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from evaluator.errors import InputError
from evaluator.paths import open_regular
from evaluator.data.records import (
    TASK_TYPE_METRIC,
    TYPE_FOLDERS,
    Metric,
    Question,
    TaskType,
    generation_metric,
    question_id,
)

SKILL_FIELDS = ("input_field", "output_field", "task_name", "task_type", "metric")
MAX_INT = 2**62  # integers in truths must fit the int64 columns they are scored in
MAX_RELEVANCE = 64.0  # 2^relevance - 1 stays finite and exact; the official weights are small
TASK_FIELDS = ("input_field", "target_field")
MC_COLUMNS = ("question", "choices", "answer")
REVIEW_RATING = "review_rating_prediction"


@dataclass(frozen=True)
class DataFile:
    """One data file and the questions in it, in file order."""

    path: Path
    kind: str  # "skill" or "task"
    questions: list[Question]


@dataclass(frozen=True)
class Dataset:
    """The files of one data PATH in a fixed order; `questions` concatenates them. `sha256` identifies the
    content (file names within the folder and bytes), so results on the same data compare wherever it lies."""

    root: Path
    files: list[DataFile]
    sha256: str = ""

    @property
    def questions(self) -> list[Question]:
        return [q for f in self.files for q in f.questions]

    @property
    def groups(self) -> str:
        """What the `skill` column holds: skills, or task types where no skills/ folder names them."""
        return "task type" if all(q.skill in TYPE_FOLDERS for q in self.questions) else "skill"


def content_sha256(root: Path, paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        name = path.relative_to(root).as_posix() if path != root else path.name
        digest.update(f"{name}\0{path.stat().st_size}\0".encode("utf-8", "surrogateescape"))
        with open_regular(path) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def load(path: str | Path, protocol: str = "skill") -> Dataset:
    """Load a skill file, a task file, or a data.zip folder (skills/ for `skill`, type folders for `task`)."""
    root = Path(path)
    if not root.exists():
        raise InputError(_missing(root), path=root)
    if root.is_dir():
        paths = data_files(root, protocol)
        files = [_load_file(p, skill_map=_skill_map(root)) for p in paths]
    else:
        paths = [root]
        files = [_load_file(root, skill_map=_skill_map(_data_root_of(root)))]
    _dedupe_ids(files)
    try:
        digest = content_sha256(root, paths)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=root) from None
    return Dataset(root=root, files=files, sha256=digest)


def data_files(root: Path, protocol: str) -> list[Path]:
    """The data files of a folder, in the order responses must follow: skill files for the skill protocol;
    the type folders' task files for the task protocol (skill files where a folder has no type folders)."""
    if protocol not in ("skill", "task"):
        raise InputError(f"unknown protocol {protocol!r}: use 'skill' or 'task'")
    if protocol == "task":
        found = []
        for folder in TYPE_FOLDERS:
            pattern = "*_dataset.csv" if folder == "multiple_choice" else "*_dataset.json"
            found += sorted((root / folder).glob(pattern))
        if found:
            return found
    found = sorted((root / "skills").glob("*.json")) + sorted((root / "skills").glob("*.jsonl"))
    if not found:
        found = sorted(p for p in root.glob("*.json*") if p.is_file())
    if not found:
        raise InputError("no data files: expected skills/*.json, multiple_choice/*_dataset.csv, "
                         "{retrieval,ranking,named_entity_recognition,generation}/*_dataset.json (the data.zip "
                         "layout) or *.json(l) skill files", path=root)
    return found


def _missing(path: Path) -> str:
    """Why data is not there, and where it is (or would sit in) the data.zip layout, the exact command that
    puts it there."""
    import shlex

    file = path.suffix in (".json", ".jsonl", ".csv")
    root = _data_root_of(path) if file else path
    if (file and root == path.parent) or root.exists():  # a file of the user's own, or one missing from a layout
        return "no such file or folder"
    try:
        shown = root.absolute().relative_to(Path.cwd())
    except ValueError:
        shown = root.absolute()
    return (f"no such file or folder: `shopping-mmlu data download --dest {shlex.quote(str(shown))}` puts the "
            "official data there")


def _data_root_of(file: Path) -> Path:
    """The data.zip root a file sits in (its type or skills folder's parent), for the task -> skill map."""
    return file.parent.parent if file.parent.name in (*TYPE_FOLDERS, "skills") else file.parent


def _skill_map(root: Path) -> dict[str, str]:
    """task_name -> skill, read from a skills/ folder beside the task folders, when there is one."""
    mapping: dict[str, str] = {}
    for skill_file in sorted((root / "skills").glob("*.json")) if (root / "skills").is_dir() else []:
        for line_no, record in _json_lines(skill_file):
            task = record.get("task_name")
            if isinstance(task, str):
                mapping.setdefault(task, record.get("track") or skill_file.stem)
    return mapping


def _load_file(path: Path, skill_map: dict[str, str]) -> DataFile:
    if path.suffix == ".csv":
        return DataFile(path, "task", _load_multiple_choice(path, skill_map))
    first = next(_json_lines(path), None)
    if first is None:
        raise InputError("the file has no data rows", path=path)
    if "task_type" in first[1] or "task_name" in first[1]:
        return DataFile(path, "skill", _load_skill_file(path))
    if "target_field" in first[1]:
        return DataFile(path, "task", _load_task_file(path, skill_map))
    raise InputError("not a Shopping MMLU file: expected skill-format fields "
                     f"{', '.join(SKILL_FIELDS)} or task-format fields {', '.join(TASK_FIELDS)}",
                     path=path, line=first[0])


def json_lines(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line number, value, text) for each non-blank line of a JSON Lines file (a leading byte-order mark is
    allowed, as pandas allows it). Each line is decoded on its own, so bad UTF-8 is reported where it is."""
    try:
        handle = open_regular(path)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=path) from None
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path,
                                 line=line_no) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})",
                                 path=path, line=line_no) from None
            except (RecursionError, ValueError) as exc:
                raise InputError(f"malformed JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}",
                                 path=path, line=line_no) from None
            yield line_no, value, line


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of a data file: each an object, with Unicode text."""
    for line_no, record, line in json_lines(path):
        if not isinstance(record, dict):
            raise InputError("each line must be a JSON object", path=path, line=line_no)
        if "\\ud" in line.lower() and _has_lone_surrogate(record):
            raise InputError("a string holds a lone surrogate (\\ud800-\\udfff): not Unicode text",
                             path=path, line=line_no)
        yield line_no, record


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _require(record: dict[str, Any], field: str, path: Path, line: int) -> Any:
    if field not in record:
        raise InputError("missing field", path=path, line=line, field=field)
    return record[field]


def _load_skill_file(path: Path) -> list[Question]:
    questions = []
    for line_no, record in _json_lines(path):
        values = {f: _require(record, f, path, line_no) for f in SKILL_FIELDS}
        task_type = _enum(TaskType, values["task_type"], path, line_no, "task_type")
        metric = _enum(Metric, values["metric"], path, line_no, "metric")
        skill = record.get("track") or path.stem
        task = _text(values["task_name"], path, line_no, "task_name")
        text = _text(values["input_field"], path, line_no, "input_field")
        truth = check_truth(values["output_field"], metric, path, line_no, "output_field")
        questions.append(Question(qid=question_id(task, text, truth), source=str(path), row=len(questions),
                                  skill=str(skill), task=task, task_type=task_type, metric=metric,
                                  input=text, truth=truth))
    return questions


def _task_of(path: Path) -> str:
    return path.stem.removesuffix("_dataset")


def _load_task_file(path: Path, skill_map: dict[str, str]) -> list[Question]:
    folder = path.parent.name
    if folder not in TYPE_FOLDERS or folder == "multiple_choice":
        raise InputError("cannot tell this task file's type: keep it in a folder named one of "
                         "retrieval, ranking, named_entity_recognition, generation", path=path)
    task_type = TYPE_FOLDERS[folder]
    task = _task_of(path)
    metric = generation_metric(task) if task_type is TaskType.GENERATION else TASK_TYPE_METRIC[task_type]
    skill = skill_map.get(task, folder)
    questions = []
    for line_no, record in _json_lines(path):
        text = _text(_require(record, "input_field", path, line_no), path, line_no, "input_field")
        truth = check_truth(_require(record, "target_field", path, line_no), metric, path, line_no, "target_field")
        questions.append(Question(qid=question_id(task, text, truth), source=str(path), row=len(questions),
                                  skill=skill, task=task, task_type=task_type, metric=metric,
                                  input=text, truth=truth))
    return questions


def _load_multiple_choice(path: Path, skill_map: dict[str, str]) -> list[Question]:
    task = _task_of(path)
    review = REVIEW_RATING in task
    questions = []
    try:  # a leading byte-order mark, as pandas reads it
        handle = io.TextIOWrapper(open_regular(path), encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path=path) from None
    csv.field_size_limit(2**31 - 1)  # pandas, the official reader, takes fields of any length
    with handle:
        try:
            reader = csv.DictReader(handle)
            missing = [c for c in MC_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"missing column(s) {', '.join(missing)} in the header", path=path, line=1,
                                 field=missing[0])
            for record in reader:
                line_no = reader.line_num
                if None in record or any(record[c] is None for c in MC_COLUMNS):
                    raise InputError("malformed CSV row: wrong number of columns", path=path, line=line_no)
                answer = _integer(record["answer"], path, line_no, "answer")
                choices = [] if review else _choices(record["choices"], path, line_no)  # review prints none
                if review and not 1 <= answer <= 5:
                    raise InputError(f"rating {answer} is not within 1-5", path=path, line=line_no, field="answer")
                if not review and not 0 <= answer < len(choices):
                    raise InputError(f"answer {answer} is not a choice index (0-{len(choices) - 1})",
                                     path=path, line=line_no, field="answer")
                text = record["question"]
                if _has_lone_surrogate([text, choices]):
                    raise InputError("a field holds a lone surrogate: not Unicode text", path=path, line=line_no)
                questions.append(Question(qid=question_id(task, text, answer), source=str(path),
                                          row=len(questions), skill=skill_map.get(task, "multiple_choice"),
                                          task=task, task_type=TaskType.MULTIPLE_CHOICE,
                                          metric=Metric.ACCURACY, input=text, truth=answer, choices=choices))
        except csv.Error as exc:
            raise InputError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text ({exc.reason})", path=path, line=reader.line_num + 1) from None
    if not questions:
        raise InputError("the file has no data rows", path=path)
    return questions


def _choices(raw: str, path: Path, line: int) -> list[str]:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise InputError("unparsable choices: expected a Python list literal of 4 strings",
                         path=path, line=line, field="choices") from None
    if not isinstance(value, list) or len(value) < 4:
        raise InputError("choices must be a list of (at least) 4 entries; the official prompt prints 4",
                         path=path, line=line, field="choices")
    return [str(v) for v in value]


def _enum(kind: type, value: Any, path: Path, line: int, field: str):
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise InputError(f"unknown {field.replace('_', ' ')} {value!r} (expected one of {allowed})",
                         path=path, line=line, field=field) from None


def _text(value: Any, path: Path, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=field)
    return value


def _integer(value: Any, path: Path, line: int, field: str) -> int:
    if isinstance(value, bool):
        raise InputError("expected an integer, got a boolean", path=path, line=line, field=field)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, int):
        if abs(value) >= MAX_INT:
            raise InputError(f"integer {str(value)[:30]} is out of range", path=path, line=line, field=field)
        return value
    raise InputError(f"expected an integer, got {str(value)[:80]!r}", path=path, line=line, field=field)


def check_truth(value: Any, metric: Metric, path: Path, line: int, field: str):
    """The truth in the shape its metric needs, or an InputError saying which shape was expected."""
    def is_list_of(kind) -> bool:
        return isinstance(value, list) and bool(value) and all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value)

    if metric is Metric.ACCURACY:
        return _integer(value, path, line, field) if not isinstance(value, str) else value
    if metric is Metric.HIT_RATE_3:
        if not is_list_of(int) or any(abs(v) >= MAX_INT for v in value):
            raise InputError(f"the hit rate@3 truth must be a non-empty list of integers, got {str(value)[:80]}",
                             path=path, line=line, field=field)
        return value
    if metric is Metric.NDCG:  # relevance weights: integers or fractions (e.g. [1, 0.01, 0.1, 1, 0])
        if not is_list_of((int, float)) or not all(_weight(v) for v in value):
            raise InputError(f"the ndcg truth must be a non-empty list of finite relevance weights from 0 to "
                             f"{MAX_RELEVANCE:g}, got {str(value)[:80]}", path=path, line=line, field=field)
        return value
    if metric is Metric.MICRO_F1:
        if not is_list_of(str):
            raise InputError(f"the micro f1 truth must be a non-empty list of strings, got {value!r:.80}",
                             path=path, line=line, field=field)
        return value
    if metric in (Metric.SENT_TRANSFORMER, Metric.MULTILINGUAL_SENT_TRANSFORMER):
        if isinstance(value, str) or is_list_of(str):
            return value
        raise InputError(f"the {metric.value} truth must be a string or a list of strings, got {value!r:.80}",
                         path=path, line=line, field=field)
    if not isinstance(value, str):
        raise InputError(f"the {metric.value} truth must be a string, got {value!r:.80}",
                         path=path, line=line, field=field)
    return value


def _weight(value: float) -> bool:
    try:
        return math.isfinite(float(value)) and 0 <= value <= MAX_RELEVANCE
    except OverflowError:
        return False


def _dedupe_ids(files: list[DataFile]) -> None:
    """Identical questions of one task get #2, #3... so every id is unique within a dataset."""
    seen: Counter[str] = Counter()
    for data_file in files:
        for i, q in enumerate(data_file.questions):
            seen[q.qid] += 1
            if seen[q.qid] > 1:
                data_file.questions[i] = q.model_copy(update={"qid": f"{q.qid}#{seen[q.qid]}"})
