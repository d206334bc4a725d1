"""Property-based fuzzing of the loaders and the responses reader: a clear InputError or a clean load."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluator.data import loaders
from evaluator.errors import InputError
from evaluator.data.responses import read_outputs

VALID = {"input_field": "q", "output_field": 1, "task_name": "t", "task_type": "multiple-choice",
         "metric": "accuracy"}
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=8)


@st.composite
def skill_lines(draw) -> bytes:
    """Valid records, mutated records (a field dropped or replaced), and raw garbage lines."""
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["valid", "drop", "replace", "garbage", "bytes"]))
        record = dict(VALID)
        if kind == "drop":
            record.pop(draw(st.sampled_from(sorted(VALID))))
        elif kind == "replace":
            record[draw(st.sampled_from(sorted(VALID)))] = draw(JSON_VALUES)
        if kind == "garbage":
            lines.append(draw(st.text(max_size=40)).encode("utf-8", "surrogatepass"))
        elif kind == "bytes":
            lines.append(draw(st.binary(max_size=40)))
        else:
            lines.append(json.dumps(record).encode())
    return b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"


def check(load, path: Path) -> None:
    try:
        load(path)
    except InputError as exc:
        assert exc.path is not None and Path(exc.path).name == path.name
        assert exc.line is not None or "no data rows" in exc.message or "not a Shopping MMLU" in exc.message
        assert str(exc).startswith(str(path))


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(skill_lines())
def test_skill_files(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "skill.json"
        path.write_bytes(content)
        check(loaders.load, path)


@SETTINGS
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=30), st.text(max_size=5)), min_size=1, max_size=5),
       st.booleans())
def test_multiple_choice_csv(rows, review):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "multiple_choice" / ("review_rating_prediction_dataset.csv" if review
                                                    else "x_dataset.csv")
        path.parent.mkdir()
        path.write_text("question,choices,answer\n" + "\n".join(",".join(json.dumps(c) for c in r) for r in rows),
                        encoding="utf-8", errors="surrogatepass")
        check(loaders.load, path)


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),
                          JSON_VALUES.map(lambda v: json.dumps({"model_output": v}).encode()),
                          st.text(max_size=30).map(lambda t: json.dumps({"model_output": t}).encode())),
                min_size=1, max_size=6))
def test_responses_reader(lines):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "out.json"
        path.write_bytes(b"\n".join(lines) + b"\n")
        check(read_outputs, path)
