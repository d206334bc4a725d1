"""Outputs never destroy what we did not write: a results folder replaces only a folder of ours, never an
input or the cache, follows a link to its target, and is readable with the user's umask. No key we send
is ever stored or printed, whatever its variable is called."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import run_cli, write_jsonl


def data_file(path: Path, n: int = 6) -> Path:
    return write_jsonl(path, [{"input_field": f"Q{i}?", "output_field": i % 4, "task_name": "t",
                               "task_type": "multiple-choice", "metric": "accuracy"} for i in range(n)])


@pytest.fixture
def stub():
    with Stub() as server:
        yield server


def run(args: list, capsys, monkeypatch, stub, tmp_path: Path, data: Path | None = None):
    data = data or data_file(tmp_path / "in" / "d.json")
    return run_cli(["run", "--model", "m", "--base-url", stub.base_url, "--data", data, "--cache", tmp_path / "c",
                    *args], capsys, monkeypatch)


def test_a_folder_of_the_users_is_never_replaced(tmp_path, capsys, monkeypatch, stub):
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "thesis.tex").write_text("years of work")
    code, _, err = run(["--output", papers], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and "did not write" in err
    assert (papers / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(papers)) == ["thesis.tex"]


def test_dot_as_output_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch, stub):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    code, _, err = run(["--output", "."], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and "Traceback" not in err and (work / "notes.txt").read_text() == "mine"


def test_the_cache_and_the_data_are_inputs_both_ways(tmp_path, capsys, monkeypatch, stub):
    project = tmp_path / "proj"
    data = data_file(project / "questions.jsonl")
    code, _, err = run(["--output", project], capsys, monkeypatch, stub, tmp_path, data)  # holds the data
    assert code == 2 and "input" in err and data.exists()
    code, _, err = run(["--output", tmp_path / "c"], capsys, monkeypatch, stub, tmp_path)  # holds the answers
    assert code == 2 and "input" in err
    code, _, err = run(["--output", tmp_path / "c" / "responses" / "x"], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and "input" in err
    code, _, _ = run([], capsys, monkeypatch, stub, tmp_path)
    assert code == 0
    database = tmp_path / "c" / "responses" / "responses.sqlite"
    before = database.read_bytes()
    code, _, err = run(["--json", database], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and "input" in err and database.read_bytes() == before


def test_our_own_folder_is_replaced_and_a_link_writes_to_its_target(tmp_path, capsys, monkeypatch, stub):
    results = tmp_path / "results"
    code, _, err = run(["--output", results], capsys, monkeypatch, stub, tmp_path)
    assert code == 0, err
    code, _, err = run(["--output", results], capsys, monkeypatch, stub, tmp_path)  # ours: replaced
    assert code == 0, err
    assert (results / "results.json").is_file()
    (results / "mine.txt").write_text("added by hand")
    code, _, err = run(["--output", results], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and (results / "mine.txt").read_text() == "added by hand"
    target = tmp_path / "elsewhere"
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    code, _, err = run(["--output", link], capsys, monkeypatch, stub, tmp_path)
    assert code == 0, err
    assert link.is_symlink() and (target / "results.json").is_file()


def test_a_results_folder_is_replaced_only_while_its_manifest_knows_every_file(tmp_path, capsys, monkeypatch, stub):
    """A results folder records every file it holds with its SHA-256 (manifest.json): a rerun replaces it only
    while each file is one we wrote, unchanged; an edited samples.jsonl or a file put into official/ is named
    and the folder left as it was. A folder from before manifests is still ours by its names."""
    results = tmp_path / "results"
    assert run(["--output", results], capsys, monkeypatch, stub, tmp_path)[0] == 0
    manifest = json.loads((results / "manifest.json").read_text(encoding="utf-8"))
    on_disk = sorted(p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [n for n in on_disk if n != "manifest.json"]
    assert any(n.startswith("official/") for n in manifest["files"])
    original = (results / "samples.jsonl").read_bytes()
    with (results / "samples.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"my": "note"}\n')
    edited = (results / "samples.jsonl").read_bytes()
    code, _, err = run(["--output", results], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and "samples.jsonl, not written by this tool or changed since" in err
    assert (results / "samples.jsonl").read_bytes() == edited
    (results / "samples.jsonl").write_bytes(original)  # as we wrote it: ours again
    official = next(p for p in (results / "official").rglob("*") if p.is_file()).parent
    (official / "mine.txt").write_text("added by hand")
    code, _, err = run(["--output", results], capsys, monkeypatch, stub, tmp_path)
    assert code == 2 and "mine.txt" in err and (official / "mine.txt").read_text() == "added by hand"
    (official / "mine.txt").unlink()
    assert run(["--output", results], capsys, monkeypatch, stub, tmp_path)[0] == 0
    (results / "manifest.json").unlink()  # as an older version left it
    assert run(["--output", results], capsys, monkeypatch, stub, tmp_path)[0] == 0
    assert (results / "manifest.json").is_file()


def test_a_results_folder_takes_the_users_umask(tmp_path, capsys, monkeypatch, stub):
    old = os.umask(0o022)
    try:
        code, _, err = run(["--output", tmp_path / "results"], capsys, monkeypatch, stub, tmp_path)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "results").stat().st_mode) == 0o755


def test_two_data_files_with_one_stem_do_not_share_an_official_output(tmp_path, capsys, monkeypatch, stub):
    folder = tmp_path / "in"
    data_file(folder / "x.json", 3)
    write_jsonl(folder / "x.jsonl", [{"input_field": f"Other {i}?", "output_field": 1, "task_name": "u",
                                      "task_type": "multiple-choice", "metric": "accuracy"} for i in range(4)])
    code, _, err = run(["--output", tmp_path / "results"], capsys, monkeypatch, stub, tmp_path, folder)
    assert code == 0, err
    doc = json.loads((tmp_path / "results" / "results.json").read_text())
    official = doc["files"]["official_outputs"]
    assert official["written"] == [] and set(official["skipped"]) == {"x.json", "x.jsonl"}
    assert not (tmp_path / "results" / "official" / "x.json").exists()


def test_a_suite_folder_is_never_a_file_the_data_or_a_folder_of_the_users(tmp_path, capsys, monkeypatch, stub):
    data = data_file(tmp_path / "in" / "d.json")
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\ndata = "{data}"\n[models]\nm = {{ provider = "openai-compatible", model = "m", '
                     f'api_base = "{stub.base_url}" }}\n', encoding="utf-8")
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "thesis.tex").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for output in (tmp_path / "in", papers, tmp_path / "file"):
        code, _, err = run_cli(["suite", suite, "--cache", tmp_path / "c", "--output", output], capsys, monkeypatch)
        assert code == 2 and "Traceback" not in err, err
    assert (papers / "thesis.tex").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"
    night = tmp_path / "night"
    for _ in range(2):  # its own folder again: fine (a rerun resumes into it)
        code, out, err = run_cli(["suite", suite, "--cache", tmp_path / "c", "--output", night], capsys, monkeypatch)
        assert code == 0, out + err


def test_a_key_from_any_variable_is_never_stored_or_printed_even_from_a_pre_flight_401(tmp_path, capsys,
                                                                                       monkeypatch):
    """The profile names GEMINI_API_KEY2 (no secret-like suffix); the server echoes the key in a 401, on a
    rerun's pre-flight too."""
    marker = "marker-gemini-0123456789abcdef"
    monkeypatch.setenv("GEMINI_API_KEY2", marker)
    data = data_file(tmp_path / "in" / "d.json", 8)
    echo = {"on": False}
    with Stub(lambda _d, _a: "echo_key" if echo["on"] else "ok") as server:
        profiles = tmp_path / "profiles.toml"
        profiles.write_text(f'[models.gem]\nprovider = "openai"\nmodel = "gem"\napi_base = "{server.base_url}"\n'
                            'api_key_env = "GEMINI_API_KEY2"\n', encoding="utf-8")
        monkeypatch.setenv("SHOPPING_MMLU_PROFILES", str(profiles))
        args = ["run", "--model", "gem", "--data", data, "--cache", tmp_path / "c", "--json", tmp_path / "r.json",
                "--output", tmp_path / "results", "--limit", "4"]
        code, out1, err1 = run_cli(args, capsys, monkeypatch)
        assert code == 0, out1 + err1
        echo["on"] = True
        code, out2, err2 = run_cli([a for a in args if a != "4" and a != "--limit"], capsys, monkeypatch)
        assert code == 1 and "pre-flight" in out2
        assert server.authorizations[f"Bearer {marker}"] > 0  # the key was sent, and echoed back
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "profiles.toml")
    assert marker.encode() not in written
    assert marker not in out1 + err1 + out2 + err2


HOSTILE_TEXTS = ['x"><img src=x onerror="document.title=\'pwned-attr\'">', "<!--<script>",
                 "</script><script>document.title='pwned-script'</script>", "<b onmouseover=alert(1)>bold</b>",
                 "a'b\"c&d<e>f"]


HOSTILE_MODELS = [HOSTILE_TEXTS[0], "a|b *c* _d_ `e` [f](g) \\h <i>"]


def hostile_report(tmp_path: Path, capsys, monkeypatch) -> Path:
    """A skill (track) name, task names, model names and answers carrying markup, run on a stub: the cache.
    Generation questions, whose 100-token budget lets the stub send each hostile answer whole."""
    rows = []
    for i, text in enumerate(HOSTILE_TEXTS):
        rows.append({"input_field": f"question {text} {i}", "output_field": "a towel", "task_name": f"task {text}",
                     "task_type": "generation", "metric": "rougel", "track": f"skill {text}"})
    data = write_jsonl(tmp_path / "d.json", rows)
    answers = iter(HOSTILE_TEXTS * 10)
    with Stub(answers=lambda _body: next(answers)) as server:
        for model in HOSTILE_MODELS:
            code, out, err = run_cli(["run", "--model", model, "--base-url", server.base_url, "--data", data,
                                      "--cache", tmp_path / "c"], capsys, monkeypatch)
            assert code in (0, 3), out + err
    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", "--cache", tmp_path / "c", "--html", page], capsys, monkeypatch)
    assert code == 0, err
    return page


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [value] if isinstance(value, str) else []


def test_hostile_names_and_answers_in_the_raw_html_page_and_leaderboard_md_stay_data(tmp_path, capsys, monkeypatch):
    """Without a browser: the page's embedded JSON holds no '<', '>' or '&' (nothing can end its <script> or
    open a comment), parses back to every hostile text exactly, the page has only the template's own tags,
    its `esc` escapes all five HTML specials; and leaderboard.md keeps each hostile model name in its cell."""
    from evaluator.reports.html import TEMPLATE

    text = hostile_report(tmp_path, capsys, monkeypatch).read_text(encoding="utf-8")
    opener = '<script type="application/json" id="data">'
    block = text[text.index(opener) + len(opener):text.index("</script>", text.index(opener))]
    assert not {"<", ">", "&"} & set(block)
    payload = json.loads(block)
    strings = strings_in(payload)
    assert {r["model"] for r in payload["board"]} == set(HOSTILE_MODELS)
    for hostile in HOSTILE_TEXTS:
        assert hostile in strings  # an answer, verbatim
        assert f"task {hostile}" in strings and f"skill {hostile}" in strings
    outside = text.replace(block, "")
    for tag in ("<script", "</script", "<img", "<b ", "<!--", "<i>"):
        assert outside.count(tag) == TEMPLATE.replace("__DATA__", "").count(tag), tag
    esc = next(line for line in TEMPLATE.splitlines() if line.startswith("const esc = "))
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#39;")):
        assert f"'{char}':'{entity}'" in esc or f'"{char}":\'{entity}\'' in esc, (char, esc)

    code, md, err = run_cli(["report", "--cache", tmp_path / "c", "--format", "md"], capsys, monkeypatch)
    assert code == 0, err
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| #"))
    width = len(header.split(" | "))
    rows = [line for line in lines if line.startswith("| ") and line != header]
    assert len(rows) == len(HOSTILE_MODELS)
    unescape = re.compile(r"\\(.)")
    for row in rows:
        cells = re.split(r"(?<!\\) \| ", row.strip("| "))  # a cell boundary is an unescaped pipe
        assert len(cells) == width, row
        assert unescape.sub(r"\1", cells[1]) in {" ".join(m.split()) for m in HOSTILE_MODELS}, cells[1]
        raw = unescape.sub("", row)  # what is left once every escaped character is gone
        assert not set("<>*_`[]") & set(raw), row


@pytest.mark.browser
@pytest.mark.skipif(__import__("evaluator.reports.screenshot", fromlist=["chromium"]).chromium() is None,
                    reason="no Chromium here (Debian: apt-get install chromium); the HTML report's escaping is "
                           "checked in a real browser where it is")
def test_hostile_names_and_answers_in_the_html_report_stay_text_in_a_real_browser(tmp_path, capsys, monkeypatch):
    """The same page in Chromium: every context escaped, no script runs, the page is not blanked."""
    from evaluator.reports.screenshot import rendered_dom

    page = hostile_report(tmp_path, capsys, monkeypatch)
    dom = rendered_dom(page)
    title = dom[dom.index("<title>"):dom.index("</title>")]
    assert "pwned" not in title  # no script of theirs ran
    assert "<img" not in dom and "<b onmouseover" not in dom  # their markup stayed text
    assert dom.count('class="click') >= 2 and "Questions shown" in dom  # the page was drawn, not blanked
    assert "&lt;!--&lt;script&gt;" in dom or "&lt;!--&lt;script&gt;" in dom.replace("&amp;", "&")
