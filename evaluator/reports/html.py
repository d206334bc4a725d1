"""One self-contained HTML report that works offline (no CDN, no server): a sortable leaderboard per ranking,
a models × skills heatmap, per-task scores with n and errors, and a drill-down to one model's questions
(answer, truth, score; wrong ones and errors only, if asked).

The data travels inside the page as JSON; per-question rows are capped per model (errors first, then wrong
answers) so that a night of 27 models stays a page a browser opens at once; the cap is stated on the page.
"""

from __future__ import annotations

import datetime
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from evaluator.reports.leaderboard import records, short_skill, skill_columns
from evaluator.scoring.aggregate import finite

if TYPE_CHECKING:
    import polars as pl

    from evaluator.runs.runner import RunResult

ROWS_PER_MODEL = 3000
PAGE_ROWS = 12_000  # per-question rows on one page, all runs together: a night of 27 models stays a few MB
EXACT = 1e-6  # a cosine of 0.9999999999 is an exact match, not a wrong answer
CLIP = 400


def _clip(value) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def model_payload(result: "RunResult", limit: int = ROWS_PER_MODEL) -> dict:
    """One run's tasks and (at most `limit`) questions, errors first, then wrong answers, then the rest."""
    tasks = [{k: t[k] for k in ("skill", "task", "metric", "questions", "n", "errors", "unscored", "score",
                                "official")} for t in result.tasks]
    questions = []
    for question, row in zip(result.questions, result.rows.iter_rows(named=True)):
        wrong = row["score"] is not None and row["score"] < 1 - EXACT
        if row["tp"] is not None:
            wrong = bool(row["fp"] or row["fn"])
        rank = 0 if row["error"] else (1 if wrong else 2)
        questions.append((rank, {"row": row["row"], "task": question.task, "answer": _clip(row["output"]),
                                 "score": row["score"], "ner": (f"{row['tp']}/{row['fp']}/{row['fn']}"
                                                                if row["tp"] is not None else None),
                                 "error": row["error"], "unscored": row["unscored"] is not None,
                                 "official": row["official"], "wrong": wrong}))
    questions.sort(key=lambda pair: pair[0])
    shown = [q for _, q in questions[:limit]]
    shown.sort(key=lambda q: q["row"])
    texts = {q["row"]: [_clip(result.questions[q["row"]].input), _clip(result.questions[q["row"]].truth)]
             for q in shown}  # the question's own texts: shared by every run of the same data (see write_from)
    return {"tasks": tasks, "questions": shown, "questions_total": len(questions), "status": result.status,
            "reason": result.reason, "limit": limit, "texts": texts}


def write_from(board: "pl.DataFrame", results: dict[str, "RunResult"], path: Path, title: str,
               notes: list[str] | None = None) -> Path:
    """`results` are keyed by run (`runner.run_key_of`): a model has one run per data set and protocol, and
    each leaderboard row drills into its own."""
    skills = skill_columns(board)
    rows = records(board)
    limit = min(ROWS_PER_MODEL, max(200, PAGE_ROWS // max(len(results), 1)))
    runs, texts = {}, {}
    for key, result in results.items():  # inputs and truths once per data set, not once per model
        payload = model_payload(result, limit)
        payload["data"] = result.dataset.sha256
        texts.setdefault(result.dataset.sha256, {}).update(payload.pop("texts"))
        runs[key] = payload
    columns = list(dict.fromkeys(short_skill(s) for s in skills))  # one heatmap column per skill label
    for row in rows:
        row["by_label"] = {label: next((row[f"skill:{s}"] for s in skills
                                        if short_skill(s) == label and row[f"skill:{s}"] is not None), None)
                           for label in columns}
    payload = finite({
        "title": title, "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "skills": skills, "labels": {s: short_skill(s) for s in skills}, "columns": columns, "board": rows,
        "runs": runs, "texts": texts,
        "notes": notes or []})
    # JSON inside a <script>: no '<' at all, so neither '</script>' nor '<!--' can end or blank the page.
    data = (json.dumps(payload, ensure_ascii=False, allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    page = TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    path = Path(path)
    if path.is_dir():
        from evaluator.errors import InputError

        raise InputError("is a folder: name the HTML file to write", path=path, field="--html")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write(cache_folder: Path, path: Path) -> Path:
    """The report of every run saved in a cache; each run is scored again from the cache for its questions."""
    from evaluator.cache.responses import ResponseCache
    from evaluator.reports.leaderboard import leaderboard
    from evaluator.runs.runner import rescore_saved

    folder = Path(cache_folder)
    store = ResponseCache(folder / "responses", read_only=True)
    try:
        runs, tasks = store.runs(), store.task_scores()
    finally:
        store.close()
    board = leaderboard(runs, tasks)
    results, notes = {}, []
    for record in runs.iter_rows(named=True):
        result = rescore_saved(folder, record)
        if isinstance(result, str):
            notes.append(f"{record['model']}: no per-question view ({result})")
        else:
            results[record["key"]] = result
    return write_from(board, results, path, "Shopping MMLU report", notes)


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 20px}header h1{font-size:18px;margin:0}header p{margin:2px 0 0;color:#b8c0cc;font-size:12px}
main{padding:12px 20px;display:grid;grid-template-columns:minmax(0,1.5fr) minmax(0,1fr);gap:16px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 12px;min-width:0}
h2{font-size:15px;margin:0 0 8px}h3{font-size:13px;margin:10px 0 4px;color:#4a5568}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{padding:2px 5px;border-bottom:1px solid #eef0f3;text-align:left;vertical-align:top}
td.model{white-space:nowrap}
th{cursor:pointer;user-select:none;background:#fafbfc;position:sticky;top:0;white-space:nowrap}th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.sel{background:#eef4ff}tr.click{cursor:pointer}tr.click:hover{background:#f3f6fb}
.heat td{padding:0 4px;font-size:11px;line-height:16px;border-bottom:1px solid #fff}
.heat td.cell{text-align:center;color:#fff;font-variant-numeric:tabular-nums;min-width:46px}
.heat td.name{white-space:nowrap;max-width:230px;overflow:hidden;text-overflow:ellipsis}
.heat sup{color:#6b7280}.scroll.heatbox{max-height:calc(100vh - 150px);min-height:300px}
.st-complete{color:#1a7f37}.st-incomplete{color:#9a6700}.st-failed{color:#cf222e;font-weight:600}
.scroll{max-height:320px;overflow:auto}.scroll.tall{max-height:440px}
.controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:6px;font-size:12px}
select,button{font:inherit;font-size:12px}button.on{background:#1d2330;color:#fff}
.q td{font-size:11.5px}.err{color:#cf222e}.ok{color:#1a7f37}.note{font-size:11.5px;color:#6b7280}
.wide{grid-column:1 / -1}td.pre{white-space:pre-wrap}
</style></head><body>
<header><h1 id="title"></h1><p id="sub"></p></header>
<main>
<section><h2>Leaderboard</h2><div id="boards"></div><p class="note">Click a column to sort, a row to see that model.
* incomplete: not every question answered and scored; ~ averaged over fewer tasks or skills than the data has.</p></section>
<section><h2>Models × skills</h2><div class="scroll heatbox"><table class="heat" id="heat"></table></div><div id="heat-legend" class="note"></div></section>
<section><h2 id="tasks-title">Tasks</h2><div class="scroll tall"><table id="tasks"></table></div><div id="model-note" class="note"></div></section>
<section class="wide"><h2>Questions</h2><div class="controls"><label>task <select id="task-pick"></select></label>
<button data-f="all" class="on">all</button><button data-f="wrong">wrong</button><button data-f="errors">errors</button>
<span id="q-count" class="note"></span></div><div class="scroll tall"><table class="q" id="questions"></table></div></section>
<section class="wide" id="notes-box" hidden><h2>Notes</h2><ul id="notes"></ul></section>
</main>
<script type="application/json" id="data">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
const esc = s => String(s ?? '-').replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const fmt = v => v === null || v === undefined ? '-' : (typeof v === 'number' ? (Number.isInteger(v) ? v.toLocaleString() : v.toFixed(3)) : esc(v));
const short = s => s.length <= 30 ? s : s.slice(0, 13) + '…' + s.slice(-16);  // the end tells long names apart
const score = v => v === null || v === undefined ? '-' : v.toFixed(3);
const color = v => v === null || v === undefined ? '#c8ccd2' : `hsl(${Math.round(v * 120)},55%,${38 + Math.round(v * 8)}%)`;
let current = null, filter = 'all';
$('title').textContent = D.title;
$('sub').textContent = `generated ${D.generated} · ${D.board.length} run(s)` + (D.runs && Object.keys(D.runs).length ? '' : ' · no per-question data');
function groups() { const g = {}; D.board.forEach(r => (g[r.group] = g[r.group] || []).push(r)); return g; }
function drawBoards() {
  const box = $('boards'); box.innerHTML = '';
  Object.entries(groups()).forEach(([name, rows]) => {
    const h = document.createElement('h3'); h.textContent = name; box.appendChild(h);
    const t = document.createElement('table'); box.appendChild(t);
    const skills = D.skills.filter(s => rows.some(r => r['skill:' + s] !== null));
    const cols = [['rank', '#', 1], ['model', 'model', 0], ['overall', 'overall', 1], ...skills.map(s => ['skill:' + s, D.labels[s], 1]),
                  ['answered', 'answered', 1], ['status', 'status', 0], ['cost', 'cost $', 1]];
    let key = 'rank', asc = true;
    const draw = () => {
      const sorted = [...rows].sort((a, b) => { const x = a[key], y = b[key]; if (x === y) return 0; if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : 1) * (asc ? 1 : -1); });
      t.innerHTML = '<tr>' + cols.map(([k, l, n]) => `<th class="${n ? 'num' : ''}" data-k="${esc(k)}">${esc(l)}${k === key ? (asc ? ' ▲' : ' ▼') : ''}</th>`).join('') + '</tr>' +
        sorted.map(r => `<tr class="click${r.run === current ? ' sel' : ''}" data-m="${esc(r.run)}">` + cols.map(([k, l, n]) => {
          let v = r[k];
          if (k === 'answered') v = `${r.answered.toLocaleString()}/${r.questions.toLocaleString()}`;
          else if (k === 'overall' && v !== null) v = v.toFixed(3) + (r.partial_skills ? '~' : '') + (r.complete ? '' : '*');
          else if (k === 'cost') v = v === null ? '-' : v.toFixed(2);
          else if (k.startsWith('skill:')) v = score(v);
          else v = fmt(v);
          return `<td class="${n ? 'num' : (k === 'model' ? 'model' : '')}${k === 'status' ? ' st-' + esc(r.status) : ''}">${k === 'model' ? esc(r.model) : v}</td>`; }).join('') + '</tr>').join('');
      t.querySelectorAll('th').forEach(th => th.onclick = () => { const k = th.dataset.k; asc = key === k ? !asc : (k === 'model' || k === 'rank' || k === 'status'); key = k; draw(); });
      t.querySelectorAll('tr.click').forEach(tr => tr.onclick = () => pick(tr.dataset.m));
    };
    draw();
  });
}
function drawHeat() {
  const rows = [...D.board].sort((a, b) => (b.overall ?? -1) - (a.overall ?? -1));
  const names = Object.keys(groups());
  const several = names.length > 1;
  $('heat-legend').textContent = several ? 'Rankings: ' + names.map((n, i) => `${i + 1} = ${n}`).join('; ') : '';
  $('heat').innerHTML = '<tr><th>model</th><th class="num">overall</th>' + D.columns.map(c => `<th class="num">${esc(c)}</th>`).join('') + '</tr>' +
    rows.map(r => `<tr class="click" data-m="${esc(r.run)}"><td class="name" title="${esc(r.model)} · ${esc(r.group)}">${esc(short(r.model))}${r.complete ? '' : ' *'}${several ? `<sup>${names.indexOf(r.group) + 1}</sup>` : ''}</td>` +
      [r.overall, ...D.columns.map(c => r.by_label[c])].map(v => `<td class="cell" style="background:${color(v)}">${score(v)}</td>`).join('') + '</tr>').join('');
  $('heat').querySelectorAll('tr.click').forEach(tr => tr.onclick = () => pick(tr.dataset.m));
}
function pick(run) {
  current = run; drawBoards();
  const m = D.runs[run], row = D.board.find(r => r.run === run);
  $('tasks-title').textContent = `Tasks: ${row ? row.model : ''}` + (row && Object.keys(groups()).length > 1 ? ` (${row.group})` : '');
  if (!m) { $('tasks').innerHTML = ''; $('questions').innerHTML = ''; $('model-note').textContent = 'No per-question data for this run.'; return; }
  $('model-note').textContent = (m.reason ? `${m.status}: ${m.reason}. ` : `${m.status}. `) + `Questions shown: ${m.questions.length.toLocaleString()} of ${m.questions_total.toLocaleString()}` + (m.questions.length < m.questions_total ? ` (capped at ${m.limit.toLocaleString()} per model: errors first, then wrong answers; all of them are in the results folder's samples.jsonl)` : '') + '.';
  $('tasks').innerHTML = '<tr><th>skill</th><th>task</th><th>metric</th><th class="num">n</th><th class="num">errors</th><th class="num">unscored</th><th class="num">score</th></tr>' +
    m.tasks.map(t => `<tr class="click" data-t="${esc(t.task)}"><td>${esc(D.labels[t.skill] || t.skill)}</td><td>${esc(t.task)}${t.official ? ' †' : ''}</td><td>${esc(t.metric)}</td><td class="num">${fmt(t.n)}/${fmt(t.questions)}</td><td class="num ${t.errors ? 'err' : ''}">${fmt(t.errors)}</td><td class="num">${fmt(t.unscored)}</td><td class="num" title="${esc(t.official || '')}">${score(t.score)}</td></tr>`).join('');
  $('tasks').querySelectorAll('tr.click').forEach(tr => tr.onclick = () => { $('task-pick').value = tr.dataset.t; drawQuestions(); });
  $('task-pick').innerHTML = '<option value="">(every task)</option>' + m.tasks.map(t => `<option>${esc(t.task)}</option>`).join('');
  drawQuestions();
}
function drawQuestions() {
  const m = D.runs[current]; if (!m) return;
  const task = $('task-pick').value;
  const rows = m.questions.filter(q => (!task || q.task === task) && (filter === 'all' || (filter === 'errors' ? q.error : (q.wrong || q.error))));
  $('q-count').textContent = `${rows.length.toLocaleString()} question(s)`;
  $('questions').innerHTML = '<tr><th class="num">row</th><th>task</th><th>input</th><th>truth</th><th>answer</th><th class="num">score</th></tr>' +
    rows.slice(0, 2000).map(q => { const t = (D.texts[m.data] || {})[q.row] || [null, null]; return `<tr><td class="num">${q.row}</td><td>${esc(q.task)}</td><td class="pre">${esc(t[0])}</td><td>${esc(t[1])}</td><td>${q.answer === null ? '<span class="err">—</span>' : esc(q.answer)}</td>` +
      `<td class="num ${q.error ? 'err' : (q.wrong ? '' : 'ok')}">${q.error ? esc(q.error) : (q.unscored ? 'not scored' : (q.ner ? 'tp/fp/fn ' + esc(q.ner) : score(q.score)))}${q.official ? ' †' : ''}</td></tr>`; }).join('');
}
document.querySelectorAll('button[data-f]').forEach(b => b.onclick = () => { filter = b.dataset.f; document.querySelectorAll('button[data-f]').forEach(x => x.classList.toggle('on', x === b)); drawQuestions(); });
$('task-pick').onchange = drawQuestions;
if (D.notes.length) { $('notes-box').hidden = false; $('notes').innerHTML = D.notes.map(n => `<li>${esc(n)}</li>`).join(''); }
drawBoards(); drawHeat();
const ranked = [...D.board].sort((a, b) => (b.overall ?? -1) - (a.overall ?? -1));
const first = ranked.find(r => D.runs[r.run]) || ranked[0];  // the best run we can drill into
if (first) pick(first.run);
</script></body></html>
"""
