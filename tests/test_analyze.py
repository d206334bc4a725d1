"""`analyze`: the paper's analyses over one ranking of a night on a loopback endpoint, checked against plain
re-computations from the exported tables, with incomplete models left out and named."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import polars as pl
import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl

SKILLS = ("concept", "reasoning", "behavior", "multilingual")
# name: (accuracy, params_b, family, base)
MODELS = {"fam-1b": (0.30, 1.0, "fam", None), "fam-3b": (0.50, 3.0, "fam", None),
          "fam-10b": (0.70, 10.0, "fam", None), "fam-3b-chat": (0.80, 3.0, "fam", "fam-3b"),
          "other-7b": (0.60, 7.0, "other", None)}


def data(path: Path, n: int = 96) -> Path:
    return write_jsonl(path, [{"input_field": f"MC question {i}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ",
                               "output_field": i % 4, "task_name": f"{SKILLS[i % 4]}_t{i % 3}",
                               "task_type": "multiple-choice", "metric": "accuracy", "track": SKILLS[i % 4]}
                              for i in range(n)])


def answer(body: dict) -> str:
    """Right with the model's accuracy, decided per question by a hash; the accuracy grows with i % 4 for the
    tuned model only, so skills do not move together exactly."""
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    i = int(re.search(r"MC question (\d+)\?", prompt).group(1))
    name = body["model"]
    accuracy = MODELS[name][0] + (0.05 * (i % 4) if name == "fam-3b-chat" else 0.0)
    draw = int(hashlib.sha256(f"{name}|{i}".encode()).hexdigest()[:8], 16) / 2 ** 32
    return str(i % 4) if draw < accuracy else str((i + 1) % 4)


def night(tmp_path: Path, capsys, monkeypatch) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    with Stub(answers=answer) as stub:
        lines = [f'[suite]\nname = "tags"\ndata = "{data(tmp_path / "d.json")}"\n[models]']
        for name, (_, params, family, base) in MODELS.items():
            tags = f'params_b = {params}, family = "{family}"' + (f', base = "{base}"' if base else "")
            lines.append(f'"{name}" = {{ provider = "openai-compatible", model = "{name}", '
                         f'api_base = "{stub.base_url}", {tags} }}')
        # a model whose endpoint is gone: failed, kept in the table, left out of every statistic
        lines.append('"gone-2b" = { provider = "openai-compatible", model = "gone-2b", '
                     'api_base = "http://127.0.0.1:9/v1", params_b = 2.0, family = "fam" }')
        suite = tmp_path / "tags.toml"
        suite.write_text("\n".join(lines) + "\n", encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", cache, "--output", tmp_path / "night"], capsys,
                                 monkeypatch)
    assert code != 0 or "gone-2b" in out + err  # the failed model makes the night incomplete
    return cache, tmp_path / "d.json"


def spearman(x: list[float], y: list[float]) -> float:
    """Textbook: Pearson's r of the average ranks."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda k: values[k])
        out = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for k in range(start, end + 1):
                out[order[k]] = (start + end) / 2 + 1
            start = end + 1
        return out

    a, b = ranks(x), ranks(y)
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b))
    return cov / math.sqrt(sum((p - ma) ** 2 for p in a) * sum((q - mb) ** 2 for q in b))


def test_analyze_writes_the_four_analyses_from_a_night(tmp_path, capsys, monkeypatch):
    cache, _ = night(tmp_path, capsys, monkeypatch)
    external = tmp_path / "leaderboard.csv"
    external.write_text("model,score\nfam-1b,40\nfam-3b,45\nfam-10b,60\nfam-3b-chat,58\nother-7b,52\n"
                        "not-here,70\nfam-3b,oops\n", encoding="utf-8")
    out = tmp_path / "analysis"
    code, stdout, stderr = run_cli(["analyze", "--cache", cache, "--output", out, "--external", external,
                                    "--bootstrap", "500"], capsys, monkeypatch)
    assert code == 0, stdout + stderr
    assert "left out: gone-2b (failed" in stdout and "5 of 6 runs complete" in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80

    wide = pl.read_csv(out / "wide.csv")
    parquet = pl.read_parquet(out / "wide.parquet")
    assert wide.height == 6 and wide.columns == parquet.columns and wide["label"].equals(parquet["label"])
    assert wide["overall"].equals(parquet["overall"], null_equal=True)  # full precision in the CSV too
    row = wide.filter(pl.col("label") == "fam-3b-chat").row(0, named=True)
    assert (row["params_b"], row["family"], row["base"], row["complete"]) == (3.0, "fam", "fam-3b", True)
    assert 0 < row["overall_stderr"] < 0.1
    tasks = [c for c in wide.columns if c.startswith("task:")]
    assert len(tasks) == 12
    for r in wide.filter(pl.col("complete")).iter_rows(named=True):  # a skill is the mean of its tasks
        mean = sum(r[f"task:concept_t{k}"] for k in range(3)) / 3
        assert abs(r["skill:concept"] - mean) < 1e-12

    complete = wide.filter(pl.col("complete"))
    corr = pl.read_csv(out / "correlation_skills.csv")
    pair = corr.filter((pl.col("a") == "overall") & (pl.col("b") == "skill:concept")).row(0, named=True)
    assert pair["n"] == 5
    assert abs(pair["spearman"] - spearman(complete["overall"].to_list(), complete["skill:concept"].to_list())) < 1e-6
    diagonal = corr.filter(pl.col("a") == pl.col("b"))
    assert (diagonal["spearman"] - 1.0).abs().max() < 1e-9
    assert pl.read_csv(out / "correlation_tasks.csv").height == 12 * 12

    scaling = pl.read_csv(out / "scaling.csv")
    base_series = scaling.filter((pl.col("family") == "fam") & (pl.col("series") == "base"))
    assert base_series["label"].to_list() == ["fam-1b", "fam-3b", "fam-10b"]  # the failed gone-2b is not there
    slope = base_series["per_decade"][0]
    xs = [math.log10(v) for v in base_series["params_b"]]
    ys = base_series["overall"].to_list()
    mx, my = sum(xs) / 3, sum(ys) / 3
    assert abs(slope - sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)) < 1e-6
    assert slope > 0

    pairs = pl.read_csv(out / "base_vs_tuned.csv")
    overall = pairs.filter(pl.col("level") == "overall").row(0, named=True)
    by_label = {r["label"]: r["overall"] for r in wide.iter_rows(named=True)}
    assert (overall["tuned"], overall["base"], overall["n"]) == ("fam-3b-chat", "fam-3b", 96)
    assert abs(overall["diff"] - (by_label["fam-3b-chat"] - by_label["fam-3b"])) < 1e-9
    assert overall["low"] <= overall["diff"] <= overall["high"] and overall["low"] > 0
    assert set(pairs.filter(pl.col("level") == "skill")["skill"]) == set(SKILLS)

    ext = pl.read_csv(out / "external.csv").row(0, named=True)
    scores = {"fam-1b": 40, "fam-3b": 45, "fam-10b": 60, "fam-3b-chat": 58, "other-7b": 52}
    assert ext["measure"] == "overall" and ext["n"] == 5
    assert abs(ext["spearman"] - spearman([by_label[m] for m in scores], list(scores.values()))) < 1e-6
    text = (out / "analysis.md").read_text(encoding="utf-8")
    assert "gone-2b (failed" in text and "not-here" in text and "1 row(s) without a finite score" in text
    for png in ("correlation_skills.png", "correlation_tasks.png", "scaling.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "analysis.json").read_text())["ranking"]["complete"] == 5

    code, _, stderr = run_cli(["analyze", "--cache", cache, "--output", out], capsys, monkeypatch)
    assert code == 0, stderr  # our own folder is written again, without the earlier external comparison
    assert not (out / "external.csv").exists() and (out / "wide.csv").exists()


def test_analyze_refuses_what_it_must_not_touch_or_cannot_choose(tmp_path, capsys, monkeypatch):
    cache, data_file = night(tmp_path, capsys, monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine", encoding="utf-8")
    code, _, err = run_cli(["analyze", "--cache", cache, "--output", mine], capsys, monkeypatch)
    assert code == 2 and "did not write" in err and (mine / "thesis.tex").read_text() == "mine"
    code, _, err = run_cli(["analyze", "--cache", cache, "--output", tmp_path / "a", "--protocol", "task"],
                           capsys, monkeypatch)
    assert code == 2 and "no saved run" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\nx,1\n", encoding="utf-8")
    code, _, err = run_cli(["analyze", "--cache", cache, "--output", tmp_path / "b", "--external", bad],
                           capsys, monkeypatch)
    assert code == 2 and "`model` and `score`" in err
    code, _, err = run_cli(["analyze", "--cache", tmp_path / "nothing", "--output", tmp_path / "c"], capsys,
                           monkeypatch)
    assert code == 2 and "no response cache" in err


def test_the_markdown_leaderboard_pastes_into_a_paper(tmp_path, capsys, monkeypatch):
    """Short skill names, three decimals, answered of total and a complete mark; the data path once in the
    heading, not on every row; every row has the header's number of cells."""
    cache, data_file = night(tmp_path, capsys, monkeypatch)
    code, out, err = run_cli(["report", "--cache", cache, "--format", "md"], capsys, monkeypatch)
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = lines[start:lines.index("", start)]  # the scores; their standard errors follow in a table of their own
    header = table[0]
    assert header == ("| # | model | overall | ± s.e. | concept | reasoning | behavior | multilingual | answered | "
                      "complete |")
    cells = header.count(" | ")
    assert all(line.count(" | ") == cells or line.startswith("|---") for line in table)
    assert str(data_file) not in out and out.count("d.json") == 1
    row = next(line for line in table if "| fam-3b |" in line)
    assert re.fullmatch(r"\| \d \| fam-3b( \| \d\.\d{3}){6} \| 96/96 \| ✓ \|", row), row
    board = json.loads(run_cli(["report", "--cache", cache, "--format", "json"], capsys, monkeypatch)[1])
    saved = next(r for r in board if r["model"] == "fam-3b")
    assert row.split(" | ")[3] == f"{saved['overall_stderr']:.3f}" and saved["overall_stderr"] > 0
    assert re.search(r"\| gone-2b \|.*\| 0/96 \| ✗ failed \|", out)
    assert "- gone-2b (failed): 0/96 answered" in out


@pytest.mark.browser
def test_the_html_report_has_an_analysis_section(tmp_path, capsys, monkeypatch):
    """The report's analyses (after the page's scripts ran, in headless Chromium): the skill correlations,
    the scaling slope and the base → tuned delta of the same night as `analyze`, the failed model named."""
    from evaluator.reports.screenshot import chromium, rendered_dom

    if chromium() is None:
        pytest.skip("no Chromium: apt-get install chromium (the HTML checks need a browser)")
    cache, _ = night(tmp_path, capsys, monkeypatch)
    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--cache", cache, "--html", page], capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["analyze", "--cache", cache, "--output", tmp_path / "a", "--bootstrap", "1000"],
                           capsys, monkeypatch)
    assert code == 0, err
    pair = pl.read_csv(tmp_path / "a" / "base_vs_tuned.csv").filter(pl.col("level") == "overall").row(0, named=True)
    section = rendered_dom(page).split('id="analyses"', 1)[1].split("</section>", 1)[0]
    assert "5 of 6 runs complete" in section and "gone-2b (failed" in section
    assert "Spearman ρ" in section and "multilingual" in section
    assert "fam (base, 3 sizes)" in section
    assert f"+{pair['diff']:.3f}" in section and "fam-3b-chat" in section


def test_hostile_names_and_external_files_cannot_break_the_outputs(tmp_path, capsys, monkeypatch):
    """Model names holding table and markup characters stay inside their cells in analysis.md; an external
    score file that is binary, too large or ragged is one line and exit 2, or its bad rows are skipped."""
    data_file = write_jsonl(tmp_path / "d.json", [{"input_field": f"MC question {i}?", "output_field": i % 4,
                                                   "task_name": "t", "task_type": "multiple-choice",
                                                   "metric": "accuracy"} for i in range(8)])
    cache = tmp_path / "c"
    with Stub() as stub:  # a tuned model and its base: both names land in the base → tuned table
        suite = tmp_path / "hostile.toml"
        suite.write_text(f'[suite]\nname = "hostile"\ndata = "{data_file}"\n[models]\n'
                         f'"a|b *x*" = {{ provider = "openai-compatible", model = "a|b *x*", '
                         f'api_base = "{stub.base_url}", params_b = 1.0, family = "f" }}\n'
                         f'"c`d` [e](f)" = {{ provider = "openai-compatible", model = "c`d` [e](f)", '
                         f'api_base = "{stub.base_url}", params_b = 1.0, family = "f", base = "a|b *x*" }}\n',
                         encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", cache, "--output", tmp_path / "night"], capsys,
                                 monkeypatch)
        assert code == 0, out + err
    code, _, err = run_cli(["run", "--model", "<g>|h", "--base-url", "http://127.0.0.1:9/v1", "--data", data_file,
                            "--cache", cache], capsys, monkeypatch)
    assert code != 0
    out = tmp_path / "a"
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('model,score\n"a|b *x*",1,extra\nc`d` [e](f),nan\n,\n', encoding="utf-8")
    code, _, err = run_cli(["analyze", "--cache", cache, "--output", out, "--external", ragged], capsys, monkeypatch)
    assert code == 0, err
    text = (out / "analysis.md").read_text(encoding="utf-8")
    assert r"\<g\>\|h (failed" in text
    tables, block = [], []
    for line in [*text.splitlines(), ""]:  # every table row has its header's cells, however the names read
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    cells = [[len(re.findall(r"(?<!\\)\|", row)) for row in table] for table in tables]
    assert tables and all(len(set(widths)) == 1 for widths in cells), cells
    hostile = [row for table in tables for row in table if r"a\|b \*x\*" in row or r"c\`d\` \[e\](f)" in row]
    assert len(hostile) >= 2, tables
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\xff\xfe" * 1000)
    big = tmp_path / "big.csv"
    big.write_bytes(b"model,score\n" + b"m,1\n" * 3_000_000)
    for bad in (binary, big):
        code, _, err = run_cli(["analyze", "--cache", cache, "--output", tmp_path / "b", "--external", bad],
                               capsys, monkeypatch)
        assert code == 2 and "--external" in err, err


# (track, task) of a data set whose names clash with the tables' own columns and with each other
CLASHING = [("concept", "run"), ("concept", "x"), ("reasoning", "x"), ("concept", "concept/x"),
            ("concept_understanding", "y"), ("run", "z"), ("overall", "w")]


def clashing_answer(body: dict) -> str:
    """Model mK is right on task T (its index in CLASHING) when (T + K) % 3 != 0: a score of 1 or 0 per task."""
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    i = int(re.search(r"MC question (\d+)\?", prompt).group(1))
    right = (i % len(CLASHING) + int(body["model"][1:])) % 3 != 0
    return str(i % 4) if right else str((i + 1) % 4)


def test_task_and_skill_names_are_labels_never_column_names(tmp_path, capsys, monkeypatch):
    """A task named `run`, a track named `run` or `overall`, two tracks both short-named `concept`, a task `x`
    in two skills beside a task named `concept/x`: analyze, the HTML report and the leaderboards keep every
    score under its own unique label."""
    data_file = write_jsonl(tmp_path / "d.json", [
        {"input_field": f"MC question {i}?\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": i % 4,
         "task_name": CLASHING[i % len(CLASHING)][1], "task_type": "multiple-choice", "metric": "accuracy",
         "track": CLASHING[i % len(CLASHING)][0]} for i in range(4 * len(CLASHING))])
    cache = tmp_path / "cache"
    with Stub(answers=clashing_answer) as stub:
        for k in range(3):
            code, _, err = run_cli(["run", "--model", f"m{k}", "--base-url", stub.base_url, "--data", data_file,
                                    "--cache", cache], capsys, monkeypatch)
            assert code == 0, err
    code, out, err = run_cli(["analyze", "--cache", cache, "--output", tmp_path / "a", "--bootstrap", "100"],
                             capsys, monkeypatch)
    assert code == 0, out + err
    wide = pl.read_csv(tmp_path / "a" / "wide.csv")
    labels = {("concept", "run"): "run", ("concept", "x"): "concept/x (2)", ("reasoning", "x"): "reasoning/x",
              ("concept", "concept/x"): "concept/x", ("concept_understanding", "y"): "y", ("run", "z"): "z",
              ("overall", "w"): "w"}
    assert sorted(c for c in wide.columns if c.startswith("task:")) == sorted(f"task:{v}" for v in labels.values())
    assert {c for c in wide.columns if c.startswith("skill:")} == {
        "skill:concept", "skill:concept_understanding", "skill:reasoning", "skill:run", "skill:overall (2)"}
    for row in wide.iter_rows(named=True):
        k = int(row["model"][1:])
        for t, pair in enumerate(CLASHING):
            assert row[f"task:{labels[pair]}"] == (1.0 if (t + k) % 3 else 0.0), (row["model"], pair)
        assert row["skill:run"] == row["task:z"] and row["skill:overall (2)"] == row["task:w"]
    analysis_doc = json.loads((tmp_path / "a" / "analysis.json").read_text(encoding="utf-8"))
    assert sorted(analysis_doc["tasks"]) == sorted(labels.values())

    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--cache", cache, "--html", page], capsys, monkeypatch)
    assert code == 0 and page.is_file(), err
    payload = json.loads(re.search(r'id="data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1))
    assert len(set(payload["labels"].values())) == len(payload["labels"]) == 5
    assert payload["board"][0]["skill:run"] == next(r["task:z"] for r in wide.iter_rows(named=True)
                                                     if r["model"] == payload["board"][0]["model"])
    code, out, err = run_cli(["report", "--cache", cache, "--format", "md"], capsys, monkeypatch)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| #"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert len(cells) == len(set(cells)) and "overall (2)" in cells and "concept\\_understanding" in cells


# 27 models: name -> (params_b, family, base). Family b has two sizes, c two sizes over three models; selfie is
# its own base; loop-a and loop-b name each other.
NIGHT27 = {
    **{f"a-{p:g}b": (p, "a", None) for p in (1, 3, 7, 13, 70)},
    **{f"a-{p:g}b-chat": (p, "a", f"a-{p:g}b") for p in (7, 13, 70)},
    "b-2b": (2, "b", None), "b-9b": (9, "b", None), "b-9b-it": (9, "b", "b-9b"),
    "c-1b": (1, "c", None), "c-1b-v2": (1, "c", None), "c-8b": (8, "c", None),
    **{f"d-{p:g}b": (p, "d", None) for p in (0.5, 1.5, 3, 7, 14, 32, 72)},
    "selfie-7b": (7, "e", "selfie-7b"), "loop-a": (3, "f", "loop-b"), "loop-b": (3, "f", "loop-a"),
    **{f"g-{p:g}b": (p, "g", None) for p in (1, 4, 12)},
}


def answer27(body: dict) -> str:
    """Accuracy grows with log size (+0.06 when tuned); task concept_t0 (i % 12 == 0) is right for everyone,
    so its score is the same for every model."""
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    i = int(re.search(r"MC question (\d+)\?", prompt).group(1))
    params, family, base = NIGHT27[body["model"]]
    accuracy = 0.3 + 0.15 * math.log10(params * 2) + (0.06 if base else 0.0) + 0.02 * (ord(family) % 3)
    draw = int(hashlib.sha256(f"{body['model']}|{i}".encode()).hexdigest()[:8], 16) / 2 ** 32
    return str(i % 4) if i % 12 == 0 or draw < accuracy else str((i + 1) % 4)


def night27(tmp_path: Path, capsys, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    with Stub(answers=answer27) as stub:
        lines = [f'[suite]\nname = "n27"\ndata = "{data(tmp_path / "d.json")}"\n[models]']
        for name, (params, family, base) in NIGHT27.items():
            tags = f'params_b = {params}, family = "{family}"' + (f', base = "{base}"' if base else "")
            lines.append(f'"{name}" = {{ provider = "openai-compatible", model = "{name}", '
                         f'api_base = "{stub.base_url}", {tags} }}')
        suite = tmp_path / "n27.toml"
        suite.write_text("\n".join(lines) + "\n", encoding="utf-8")
        code, out, err = run_cli(["suite", suite, "--cache", cache, "--output", tmp_path / "night"], capsys,
                                 monkeypatch)
    assert code == 0, out + err
    return cache


@pytest.mark.timeout(900)
def test_a_27_model_night_says_nothing_false(tmp_path, capsys, monkeypatch):
    """A self or circular base is a note, never a Δ row; sizes count sizes; a slope carries its interval
    (the textbook's, checked against scipy) and two points claim none; a task blank in the heatmap says why;
    an external file with a model listed twice is refused naming it; a 9 MB name is clipped where shown;
    scaling.png names only the extremes and its legend stays off the points."""
    from scipy import stats

    from evaluator.reports import analysis

    cache = night27(tmp_path, capsys, monkeypatch)
    out = tmp_path / "analysis"
    external = tmp_path / "external.csv"
    huge = "x" * 9_000_000
    external.write_text(f"model,score\na-1b,10\na-70b,60\nd-72b,55\ng-4b,30\n{huge},1\n", encoding="utf-8")
    code, stdout, stderr = run_cli(["analyze", "--cache", cache, "--output", out, "--bootstrap", "200",
                                    "--external", external], capsys, monkeypatch)
    assert code == 0, stdout + stderr
    assert max(len(line) for line in stdout.splitlines()) <= 80 and len(stdout) < 20_000
    for name in ("analysis.md", "analysis.json"):
        assert (out / name).stat().st_size < 200_000 and "x" * 100 not in (out / name).read_text(encoding="utf-8")
    assert "xxxxxxxx…" in (out / "analysis.md").read_text(encoding="utf-8")

    pairs = pl.read_csv(out / "base_vs_tuned.csv")
    assert set(pairs["tuned"]) == {"a-7b-chat", "a-13b-chat", "a-70b-chat", "b-9b-it"}
    notes = json.loads((out / "analysis.json").read_text(encoding="utf-8"))["base_vs_tuned_notes"]
    assert [n for n in notes if "selfie-7b" in n] == ["selfie-7b: its own base, no base → tuned delta"]
    circle = [n for n in notes if "loop-" in n]
    assert len(circle) == 1 and re.match(r"loop-(a|b) → loop-(a|b) → loop-\1: a circle of base tags", circle[0])
    assert not re.search(r"^ *(selfie-7b|loop-a|loop-b) +\S+ +[+-]\d", stdout, re.M)  # no Δ row in the terminal

    fits = {(f["family"], f["series"]): f for f in pl.read_csv(out / "scaling.csv").iter_rows(named=True)}
    b, c = fits[("b", "base")], fits[("c", "base")]
    assert (b["n"], b["sizes"], b["per_decade"], b["low"]) == (2, 2, None, None)
    assert (c["n"], c["sizes"]) == (3, 2)
    points = pl.read_csv(out / "scaling.csv").filter((pl.col("family") == "d") & (pl.col("series") == "base"))
    line = stats.linregress([math.log10(v) for v in points["params_b"]], points["overall"].to_list())
    d = fits[("d", "base")]
    half = stats.t.ppf(0.975, points.height - 2) * line.stderr
    assert abs(d["per_decade"] - line.slope) < 1e-9 and abs(d["low"] - (line.slope - half)) < 1e-6
    assert abs(d["high"] - (line.slope + half)) < 1e-6
    assert re.search(r"^ *b +base +2 +2 +- +none from two points$", stdout, re.M)
    assert re.search(r"^ *c +base +2 +3 +[+-]\d\.\d{3} +\[[+-]", stdout, re.M)
    shown = re.escape(f"{d['per_decade']:+.3f}") + " +" + re.escape(f"[{d['low']:+.2f},{d['high']:+.2f}]")
    assert re.search(rf"^ *d +base +7 +7 +{shown}$", stdout, re.M)
    assert analysis.fit_text(b) == "b (base, 2 sizes): no slope claimed from two points (no interval)"
    assert analysis.fit_text(c).startswith("c (base, 2 sizes, 3 models): ")
    for df in (1, 2, 5, 30, 31, 60, 500):  # the quantile the intervals use
        assert abs(analysis.t975(df) - stats.t.ppf(0.975, df)) < 1e-5

    text = (out / "analysis.md").read_text(encoding="utf-8")
    assert "concept\\_t0 (the same score for all 27 complete models)" in text

    twice = tmp_path / "twice.csv"
    twice.write_text("model,score\na-1b,0.1\na-3b,0.5\na-1b,0.9\n", encoding="utf-8")
    code, _, err = run_cli(["analyze", "--cache", cache, "--output", tmp_path / "b", "--external", twice],
                           capsys, monkeypatch)
    assert code == 2 and "a-1b (0.1, 0.9)" in err and len(err.strip().splitlines()) == 1, err

    result = analysis.build(cache, samples=100)
    fig = analysis.scaling_figure(result)
    ax = fig.axes[0]
    named = [t.get_text() for t in ax.texts]
    assert 2 <= len(named) <= 4 and any("(best" in t for t in named) and any("largest" in t for t in named)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, never over a point
    assert len(ax.get_legend().get_texts()) == result.scaling.select("family", "series").n_unique()


def test_analyze_replaces_only_the_files_its_manifest_knows(tmp_path, capsys, monkeypatch):
    """A rerun replaces what an analysis wrote, as recorded with their SHA-256 in manifest.json: a user's
    external.csv, an edited wide.csv or a folder named wide.csv is refused by name and left as it was, a
    note beside our files is left alone, and no temporary file outlives a run, even one that fails."""
    from evaluator.reports import analysis

    cache, _ = night(tmp_path, capsys, monkeypatch)
    out = tmp_path / "a"
    argv = ["analyze", "--cache", cache, "--output", out, "--bootstrap", "100"]
    assert run_cli(argv, capsys, monkeypatch)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256((out / "wide.csv").read_bytes()).hexdigest()
    assert manifest["files"]["wide.csv"] == [digest] and "external.csv" not in manifest["files"]

    def temporaries() -> list[str]:
        return sorted(p.name for p in out.iterdir() if p.name.startswith("."))

    (out / "external.csv").write_text("model,score\nmine,1\n", encoding="utf-8")  # the user's own file
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and "external.csv, not written by this tool" in err and len(err.strip().splitlines()) == 1
    assert (out / "external.csv").read_text(encoding="utf-8") == "model,score\nmine,1\n"
    (out / "external.csv").unlink()

    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "wide.csv").write_text("edited by hand", encoding="utf-8")
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and "wide.csv, not written by this tool or changed since" in err
    assert (out / "wide.csv").read_text(encoding="utf-8") == "edited by hand"
    (out / "wide.csv").unlink()
    (out / "wide.csv").mkdir()
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and "wide.csv" in err and (out / "wide.csv").is_dir() and temporaries() == []
    (out / "wide.csv").rmdir()

    assert run_cli(argv, capsys, monkeypatch)[0] == 0
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine" and temporaries() == []
    forged = json.loads((out / "manifest.json").read_text(encoding="utf-8"))  # a manifest that claims the note
    forged["files"]["notes.txt"] = [hashlib.sha256(b"mine").hexdigest()]
    (out / "manifest.json").write_text(json.dumps(forged), encoding="utf-8")
    assert run_cli(argv, capsys, monkeypatch)[0] == 0
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"  # never a name analyze could write
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*_args, **_kwargs):
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(analysis, "scaling_plot", broken)  # a run that fails half-way through its files
    with pytest.raises(RuntimeError):
        run_cli(argv, capsys, monkeypatch)
    monkeypatch.undo()
    assert temporaries() == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "manifest.json").unlink()  # a folder an older version wrote: our names only, no manifest
    assert run_cli(argv, capsys, monkeypatch)[0] == 2  # ... and the note: not ours, as before manifests
    (out / "notes.txt").unlink()
    assert run_cli(argv, capsys, monkeypatch)[0] == 0 and (out / "manifest.json").is_file()


def test_a_column_without_correlation_says_why():
    """Blank in a heatmap: the same score for every model, or too few models with one; the HTML report's
    analysis notes carry the same words for skills."""
    from evaluator.reports.analysis import blanks, matrix

    wide = pl.DataFrame({"overall": [0.1, 0.2, 0.3, 0.4], "skill:flat": [0.5] * 4,
                         "skill:sparse": [0.1, None, None, 0.2], "skill:fine": [0.4, 0.1, 0.3, 0.2]})
    assert blanks(matrix(wide, wide.columns)) == [("skill:flat", "the same score for all 4 complete models"),
                                                  ("skill:sparse", "only 2 complete model(s) with a score")]
