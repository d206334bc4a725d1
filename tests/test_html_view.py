"""The HTML report as a user sees it in a real browser at 1280×800: a 27-model night shows every model and
column without scrolling, one heatmap per ranking, prompts keep their newlines, a cell without a score says
why, and the address opens a model's view. Measured by headless Chromium with its scrollbars drawn."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from benchmarks.stubs.openai_stub import Stub
from builders import write_jsonl
from evaluator.reports.screenshot import chromium, measure, overflow, screenshot

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium() is None, reason="no Chromium here (Debian: apt-get install chromium); "
                                                            "the HTML report is looked at in a real browser where it is")]

ROOT = Path(__file__).resolve().parents[1]
ODD = "org/Model #1 & co"  # a name the address must carry: '/', '#', '&' and spaces
NAMES = [ODD, "Meta-Llama-3-70B-Instruct", "mixtral-8x7b-instruct-v0.1",
         *(f"organization/very-long-model-name-{i}-instruct" for i in range(24))]
TRACKS = ["amazon-kdd-cup-24-understanding-shopping-concepts", "amazon-kdd-cup-24-shopping-knowledge-reasoning",
          "amazon-kdd-cup-24-user-behavior-alignment", "amazon-kdd-cup-24-multi-lingual-abilities"]


def questions(n: int, word: str) -> list[dict]:
    """Four skills; the multilingual one only by a metric whose model is not here offline (never scored)."""
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            rows.append({"input_field": f"{word} question {i}: which fits?\n0. a towel\n1. a kettle\n2. a mug\n"
                                        "3. a lamp\nAnswer:", "output_field": i % 4, "task_name": "pick",
                         "task_type": "multiple-choice", "metric": "accuracy", "track": TRACKS[0]})
        elif kind == 1:
            rows.append({"input_field": f"{word} extract the brand from item {i}\nOutput:",
                         "output_field": "acme steel bottle", "task_name": "extract", "task_type": "generation",
                         "metric": "rougel", "track": TRACKS[1]})
        elif kind == 2:
            rows.append({"input_field": f"{word} which items {i}?", "output_field": [1, 2, 3], "task_name": "find",
                         "task_type": "retrieval", "metric": "hit rate@3", "track": TRACKS[2]})
        else:
            rows.append({"input_field": f"{word} explain item {i} in German", "output_field": "Ein Wasserkocher.",
                         "task_name": "explain_de", "task_type": "generation",
                         "metric": "multilingual-sent-transformer", "track": TRACKS[3]})
    return rows


def answer(body: dict) -> str:
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    h = sum(map(ord, f"{body.get('model')}|{prompt}"))
    if body.get("max_tokens", 0) <= 1:
        return str(h % 4)
    return ",".join(str(1 + (h >> k) % 5) for k in range(3)) if "which items" in prompt else "acme bottle"


def cli(args: list, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOPPING_MMLU_CACHE": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "evaluator", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict:
    """A priced 27-model night on a loopback stub, then two models on a second data set whose file has the same
    name (another ranking), and the report of the whole cache."""
    folder = tmp_path_factory.mktemp("night")
    data = write_jsonl(folder / "d.json", questions(40, "FIRST"))
    (folder / "other").mkdir()
    other = write_jsonl(folder / "other" / "d.json", questions(8, "SECOND"))
    cache, home = folder / "cache", folder / "home"
    with Stub(answers=answer) as stub:
        suite = folder / "night.toml"
        suite.write_text(f'[suite]\nname = "night"\ndata = "{data}"\nconcurrency = 16\n[models]\n' + "".join(
            f'{json.dumps(n)} = {{ provider = "openai-compatible", model = "served-{i}", api_base = '
            f'"{stub.base_url}", price_input = 2.5, price_output = 10.0 }}\n' for i, n in enumerate(NAMES)),
            encoding="utf-8")
        done = cli(["suite", suite, "--cache", cache, "--output", folder / "out", "--allow-incomplete"], home)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        for name in (NAMES[1], NAMES[3]):
            done = cli(["run", "--model", name, "--base-url", stub.base_url, "--data", other, "--cache", cache,
                        "--allow-incomplete"], home)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    both = folder / "both.html"
    done = cli(["report", "--cache", cache, "--html", both], home)
    assert done.returncode == 0, done.stderr
    return {"night": folder / "out" / "latest" / "report.html", "both": both}


def payload(page: Path) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(),
                                re.S).group(1))


def test_a_27_model_night_shows_every_model_and_column_at_1280x800(night):
    """Nothing scrolls sideways or spills out of its section, and every row and cell of the table is inside
    the first screen: the cost column included, the last skill column not behind a scrollbar."""
    page = night["night"]
    found = overflow(page)
    assert found["page_width"] <= found["client_width"] and not found["sideways"] and not found["spills"], found
    seen = measure(page, """
      const view = {w: doc.documentElement.clientWidth, h: win.innerHeight};
      const rows = [...doc.querySelectorAll('table.board tr[data-m]')];
      const cells = rows.flatMap(tr => [...tr.cells]).map(td => td.getBoundingClientRect());
      const heads = [...doc.querySelectorAll('table.board th')].map(th => th.textContent.replace(/[ ▲▼]+$/, ''));
      const cut = [...doc.querySelectorAll('td.name')].filter(td => td.scrollWidth > td.clientWidth).length;
      return {view, rows: rows.length, heads, cut, tables: doc.querySelectorAll('table.board').length,
              right: Math.max(...cells.map(r => r.right)), bottom: Math.max(...cells.map(r => r.bottom)),
              heat_scroll: [...doc.querySelectorAll('section.ranking')].map(s => [s.scrollWidth, s.clientWidth])};
    """)
    assert seen["tables"] == 1 and seen["rows"] == 27 and seen["cut"] == 0  # names shortened in the middle only
    assert seen["heads"] == ["#", "model", "overall", "concept", "reasoning", "behavior", "multilingual", "answered",
                             "status", "cost $"]
    assert seen["right"] <= seen["view"]["w"] and seen["bottom"] <= seen["view"]["h"], seen
    assert all(scroll <= client for scroll, client in seen["heat_scroll"]), seen
    shot = screenshot(page, page.with_name("night-1280x800.png"))  # scrollbars drawn: a person can look
    assert shot.read_bytes()[16:24] == (1280).to_bytes(4, "big") + (800).to_bytes(4, "big")


def test_the_measure_finds_a_table_clipped_behind_a_scrollbar(tmp_path):
    """The check above can fail: a box too narrow for its table scrolls sideways and a wide table spills."""
    page = tmp_path / "clipped.html"
    page.write_text('<section style="width:300px"><div style="overflow:auto"><table><tr>' + "<td>0.123</td>" * 60 +
                    '</tr></table></div></section><section style="width:300px"><table><tr>' +
                    "<td>0.456</td>" * 60 + "</tr></table></section>", encoding="utf-8")
    found = overflow(page)
    assert [s["element"] for s in found["sideways"]] == ["div"]
    assert [s["element"] for s in found["spills"]] == ["table", "table"]
    assert found["page_width"] > found["client_width"]


def test_one_heatmap_per_ranking_even_when_two_data_files_share_a_name(night):
    """Two data sets both called d.json are two rankings: two tables, each with only its own runs."""
    page = night["both"]
    board = payload(page)["board"]
    expected = {}
    for row in board:
        expected.setdefault((row["data_sha256"], row["protocol"], row["variant"]), set()).add(row["run"])
    assert sorted(map(len, expected.values())) == [2, 27]
    drawn = measure(page, """
      return [...doc.querySelectorAll('section.ranking')].map(s => ({label: s.querySelector('h2').textContent,
        runs: [...s.querySelectorAll('tr[data-m]')].map(tr => tr.dataset.m),
        painted: s.querySelectorAll('td.cell[style*="background:rgb("]').length}));
    """)
    assert sorted(frozenset(t["runs"]) for t in drawn) == sorted(frozenset(v) for v in expected.values())
    assert all(len(t["runs"]) == len(set(t["runs"])) and t["painted"] >= 3 * len(t["runs"]) for t in drawn)
    labels = [t["label"] for t in drawn]
    assert len(set(labels)) == 2 and all(label.startswith("d.json") for label in labels), labels


def test_a_cell_without_a_score_says_why_there_and_in_the_drill_down(night):
    """The multilingual model is not here offline: its cell is '—' and its title says so; the model's tasks
    and its questions say so in words."""
    seen = measure(night["night"], """
      const row = doc.querySelector('table.board tr[data-m]');
      const none = [...row.querySelectorAll('td.cell.none')].map(td => [td.textContent, td.title]);
      const task = [...doc.querySelectorAll('#tasks tr')].find(tr => tr.textContent.includes('explain_de'));
      doc.getElementById('task-pick').value = 'explain_de'; doc.getElementById('task-pick').onchange();
      const q = doc.querySelector('#questions tr:nth-child(2)');
      return {none, task: task.innerText, score: q.cells[5].textContent, score_title: q.cells[5].title,
              answer: q.cells[4].innerText};
    """)
    [(text, title)] = seen["none"]
    assert text == "—" and "multilingual: not scored" in title and "explain_de: 10 not scored" in title
    assert "multilingual-sent-transformer" in title and "could not be loaded" in title
    assert "not scored: the multilingual-sent-transformer model" in seen["task"]
    assert seen["score"] == "not scored" and "could not be loaded" in seen["score_title"]
    assert "not scored: the multilingual-sent-transformer model" in seen["answer"]


def test_prompts_keep_their_newlines(night):
    """A multiple-choice prompt shows one choice a line, as the model got it."""
    seen = measure(night["night"], """
      doc.getElementById('task-pick').value = 'pick'; doc.getElementById('task-pick').onchange();
      const td = doc.querySelector('#questions tr:nth-child(2)').cells[2];
      return {style: win.getComputedStyle(td).whiteSpace, text: td.innerText,
              lines: Math.round(td.getBoundingClientRect().height / parseFloat(win.getComputedStyle(td).lineHeight))};
    """)
    assert seen["style"] == "pre-wrap" and "\n0. a towel\n1. a kettle\n" in seen["text"]
    assert seen["lines"] >= 6, seen


def test_the_address_opens_a_model_and_a_click_puts_it_there(night):
    """`#model=NAME` opens that model's view; a click writes the model into the address, and that address
    opens it again; a model on two rankings is linked by its run's key; an unknown name says so."""
    page = night["both"]
    board = payload(page)["board"]
    state = """
      const sel = [...doc.querySelectorAll('tr.sel')].map(tr => tr.dataset.m);
      return {hash: win.location.hash, title: doc.getElementById('model-title').textContent, sel,
              notes: doc.getElementById('notes').textContent};
    """
    opened = measure(page, state, fragment="model=mixtral-8x7b-instruct-v0.1")
    run = next(r["run"] for r in board if r["model"] == "mixtral-8x7b-instruct-v0.1")
    assert opened["sel"] == [run] and opened["title"].startswith("Tasks: mixtral-8x7b-instruct-v0.1 (d.json")
    clicked = measure(page, """
      const pick = name => [...doc.querySelectorAll('tr[data-m]')].find(tr => tr.querySelector('td.name').title
                                                                          .startsWith(name + ' · '));
      pick(%s).click(); const first = win.location.hash;
      pick(%s).click(); const second = win.location.hash;
      win.location.hash = '#model=mixtral-8x7b-instruct-v0.1';  // typed by hand: the view follows
      win.dispatchEvent(new win.HashChangeEvent('hashchange'));
      return [first, second, doc.querySelector('tr.sel td.name').textContent];
    """ % (json.dumps(ODD), json.dumps("Meta-Llama-3-70B-Instruct")))
    assert clicked[0] == "#model=" + quote(ODD, safe="")
    key = clicked[1].removeprefix("#model=")
    assert key in {r["run"] for r in board if r["model"] == "Meta-Llama-3-70B-Instruct"}  # two rankings: its run
    assert clicked[2] == "mixtral-8x7b-instruct-v0.1 *"
    again = measure(page, state, fragment=f"model={ODD}")
    assert again["sel"] == [next(r["run"] for r in board if r["model"] == ODD)] and ODD in again["title"]
    by_key = measure(page, state, fragment=f"model={key}")
    assert by_key["sel"] == [key]
    unknown = measure(page, state, fragment="model=<b>nobody</b>")
    assert "does not have: <b>nobody</b>" in unknown["notes"] and unknown["sel"]


def test_a_failed_run_without_questions_says_why_in_its_cells_and_its_view(tmp_path):
    """A saved run that failed before answering (its data gone, so no per-question view): every score cell
    is '—' with the run's reason, and its view says the reason too."""
    from evaluator.cache.responses import ResponseCache, run_key
    from evaluator.reports import html

    store = ResponseCache(tmp_path / "c" / "responses")
    for name, status in (("good-model", "complete"), ("broken-model", "failed")):
        scored = 5 if status == "complete" else 0
        tasks = [{"skill": TRACKS[t], "task": f"task{t}", "metric": "accuracy", "questions": 5, "scored": scored,
                  "errors": 5 - scored, "unscored": 0, "score": 0.4 if scored else None, "prompt_tokens": 10,
                  "completion_tokens": 1, "official": None} for t in range(4)]
        store.save_run({"key": run_key(name, "sha", "skill", "completion", ""), "model": name,
                        "data": str(tmp_path / "gone.json"), "data_sha256": "sha", "protocol": "skill",
                        "rendering": "completion", "variant": "", "questions": 20, "answered": 4 * scored,
                        "scored": 4 * scored, "errors": 20 - 4 * scored, "unscored": 0, "status": status,
                        "reason": "pre-flight: the environment variable KEY is not set" if not scored else None,
                        "prompt_tokens": 40, "completion_tokens": 4, "cost": None, "details": "{}",
                        "created_at": 0.0}, tasks)
    store.close()
    page = html.write(tmp_path / "c", tmp_path / "report.html")
    seen = measure(page, """
      const row = [...doc.querySelectorAll('tr[data-m]')].find(tr => tr.textContent.includes('broken-model'));
      return {cells: [...row.querySelectorAll('td.cell')].map(td => [td.textContent, td.title]),
              note: doc.getElementById('model-note').textContent};
    """, fragment="model=broken-model")
    assert len(seen["cells"]) == 5 and all(text == "—" and "the environment variable KEY is not set" in title
                                           for text, title in seen["cells"]), seen["cells"]
    assert "no score, the run failed" in seen["cells"][0][1]
    assert seen["note"].startswith("failed: pre-flight: the environment variable KEY is not set.")


def test_at_1920_the_names_take_the_room_and_no_box_scrolls_inside_the_page(night):
    """Issue 28.4: a wide window gives its width to the names (whole at 1920, shortened in the middle at 1280),
    and the page is the only thing that scrolls, at both sizes."""
    page = night["night"]
    names = """return [...doc.querySelectorAll('td.name')].map(td => [td.textContent.replace(/ \\*$/, ''),
                                                                   td.scrollWidth > td.clientWidth]);"""
    for size in ("1280x800", "1920x1080"):
        found = overflow(page, size)
        assert not found["inner"] and not found["sideways"] and not found["spills"], (size, found)
    wide = measure(page, names, "1920x1080")
    assert sorted(name for name, _ in wide) == sorted(NAMES) and not any(cut for _, cut in wide)
    narrow = measure(page, names, "1280x800")
    assert sum("…" in name for name, _ in narrow) == 24 and not any(cut for _, cut in narrow)
    shot = screenshot(page, page.with_name("night-1920x1080.png"), "1920x1080")
    assert shot.read_bytes()[16:24] == (1920).to_bytes(4, "big") + (1080).to_bytes(4, "big")


def test_every_score_carries_its_standard_error_on_a_scale_any_eye_reads(night):
    """Issue 28.1 and 28.4: each score cell shows its ± s.e. and says it in its title; the colours are
    sequential in lightness (viridis: darker is lower, whatever the colour vision), never a red-green hue."""
    page = night["night"]
    board = {r["run"]: r for r in payload(page)["board"]}
    cells = measure(page, """
      return [...doc.querySelectorAll('table.board tr[data-m]')].flatMap(tr => [...tr.querySelectorAll('td.cell')]
        .filter(td => !td.classList.contains('none'))
        .map(td => ({run: tr.dataset.m, text: td.textContent, title: td.title, bg: win.getComputedStyle(td).backgroundColor})));
    """)
    assert len(cells) >= 27 * 3
    for c in cells:
        value, error = re.fullmatch(r"(\d\.\d{3})±(\.\d{3})[~*]*", c["text"]).groups()
        assert f"{value} ± 0{error} (standard error)" in c["title"], c
    overall = [c for c in cells if " · overall: " in c["title"]]
    assert {c["run"]: c["text"][:10] for c in overall} == {
        run: f"{r['overall']:.3f}±{r['overall_stderr']:.3f}".replace("±0.", "±.") for run, r in board.items()
        if r["overall"] is not None}

    def luminance(bg: str) -> float:
        r, g, b = map(int, re.findall(r"\d+", bg)[:3])
        return 0.299 * r + 0.587 * g + 0.114 * b

    by_value = sorted({(float(c["text"][:5]), luminance(c["bg"])) for c in cells})
    assert all(a[1] < b[1] for a, b in zip(by_value, by_value[1:]) if a[0] < b[0]), by_value
    assert "hsl(" not in page.read_text(encoding="utf-8")


def test_a_failed_models_view_says_why_it_failed(tmp_path, capsys, monkeypatch):
    """Issue 28.4: a model whose pre-flight failed has a view that gives the reason it failed, its questions
    'not asked: the run failed' (never 'not asked yet'), and no rank. Its 240 questions come 100 at a time, so
    the page stays short without a box that scrolls inside it."""
    from builders import run_cli
    from evaluator.reports import html

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.json", questions(240, "ONLY"))
    with Stub(answers=answer) as stub:
        code, _, err = run_cli(["run", "--model", "works", "--base-url", stub.base_url, "--data", "d.json",
                                "--cache", "c", "--allow-incomplete"], capsys, monkeypatch)
        assert code == 0, err
    code, out, err = run_cli(["run", "--model", "gone", "--base-url", "http://127.0.0.1:9/v1", "--data", "d.json",
                              "--cache", "c"], capsys, monkeypatch)
    assert code == 1 and "pre-flight" in out + err
    page = html.write(tmp_path / "c", tmp_path / "report.html")
    seen = measure(page, """
      const row = [...doc.querySelectorAll('tr[data-m]')].find(tr => tr.textContent.includes('gone'));
      const more = doc.getElementById('q-more'), state = () => [doc.querySelectorAll('#questions tr').length - 1,
        doc.getElementById('q-count').textContent, more.hidden ? null : more.textContent];
      const pages = [state()]; more.click(); pages.push(state()); more.click(); pages.push(state());
      return {rank: row.cells[0].textContent, note: doc.getElementById('model-note').textContent, pages,
              tasks: doc.getElementById('tasks').innerText, questions: doc.getElementById('questions').innerText};
    """, fragment="model=gone")
    assert seen["pages"] == [[100, "240 question(s), the first 100 shown", "show 100 more (140 left)"],
                             [200, "240 question(s), the first 200 shown", "show 40 more (40 left)"],
                             [240, "240 question(s)", None]]
    assert seen["rank"] == "" and seen["note"].startswith("failed: pre-flight: ") and "127.0.0.1:9" in seen["note"]
    assert "not asked yet" not in seen["tasks"] + seen["questions"]
    assert "without an answer: not asked: the run failed" in seen["tasks"]
    assert "not asked: the run failed" in seen["questions"]
