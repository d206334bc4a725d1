"""One self-contained HTML report that works offline (no CDN, no server). One table per ranking (data set,
protocol, variant): the leaderboard whose score cells are that ranking's models × skills heatmap, sortable; a
cell without a score says why. Beside it the chosen model's tasks, below its questions (answer, truth,
score; wrong ones and errors only, if asked). `report.html#model=NAME` (or a run key) opens that model, and
choosing a model puts it in the address. At 1280×800 a 27-model night shows every model and column at once.

The data travels inside the page as JSON; per-question rows are capped per model (errors first, then wrong
answers) so that a night of 27 models stays a page a browser opens at once; the cap is stated on the page.
"""

from __future__ import annotations

import datetime
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from evaluator.reports.leaderboard import METRIC_LABELS, records, skill_columns, skill_labels
from evaluator.scoring.aggregate import finite

if TYPE_CHECKING:
    import polars as pl

    from evaluator.runs.record import RunResult

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
    """One run's tasks, each with why some of its questions have no score, and (at most `limit`) questions,
    errors first, then wrong answers, then the rest. A not-scored question points into `reasons`."""
    reasons: dict[str, int] = {}
    first_unscored: dict[str, str] = {}
    first_error: dict[str, str] = {}
    questions = []
    for question, row in zip(result.questions, result.rows.iter_rows(named=True)):
        wrong = row["score"] is not None and row["score"] < 1 - EXACT
        if row["tp"] is not None:
            wrong = bool(row["fp"] or row["fn"])
        unscored = None
        if row["unscored"] is not None:
            unscored = reasons.setdefault(_clip(row["unscored"]), len(reasons))
            first_unscored.setdefault(question.task, _clip(row["unscored"]))
        if row["error"]:
            first_error.setdefault(question.task, _error_text(row["error"], result))
        rank = 0 if row["error"] else (1 if wrong else 2)
        questions.append((rank, {"row": row["row"], "task": question.task, "answer": _clip(row["output"]),
                                 "score": row["score"], "ner": (f"{row['tp']}/{row['fp']}/{row['fn']}"
                                                                if row["tp"] is not None else None),
                                 "error": _error_text(row["error"], result) if row["error"] else None,
                                 "unscored": unscored,
                                 "official": row["official"], "wrong": wrong}))
    tasks = []
    for t in result.tasks:
        task = {k: t.get(k) for k in ("skill", "task", "metric", "questions", "n", "errors", "unscored", "score",
                                      "stderr", "official")}
        task["why"] = []
        if t["unscored"]:
            task["why"].append(f"{t['unscored']:,} not scored: {first_unscored.get(t['task'], 'no reason kept')}")
        if t["errors"]:
            task["why"].append(f"{t['errors']:,} without an answer: {first_error.get(t['task'], 'no reply')}")
        tasks.append(task)
    questions.sort(key=lambda pair: pair[0])
    shown = [q for _, q in questions[:limit]]
    shown.sort(key=lambda q: q["row"])
    texts = {q["row"]: [_clip(result.questions[q["row"]].input), _clip(result.questions[q["row"]].truth)]
             for q in shown}  # the question's own texts: shared by every run of the same data (see write_from)
    return {"tasks": tasks, "questions": shown, "questions_total": len(questions), "status": result.status,
            "reason": result.reason, "limit": limit, "texts": texts, "reasons": list(reasons)}


def _error_text(error: str, result: "RunResult") -> str:
    """A question's error as its view says it: one a failed run never asked says that the run failed (its
    reason heads the view), not 'not asked yet'."""
    return "not asked: the run failed" if error == "not asked yet" and result.status == "failed" else _clip(error)


def write_from(board: "pl.DataFrame", results: dict[str, "RunResult"], path: Path, title: str,
               notes: list[str] | None = None, analyses: list[dict] | None = None) -> Path:
    """`results` are keyed by run (`record.run_key_of`): a model has one run per data set and protocol, and
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
    payload = finite({
        "title": title, "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "skills": skills, "labels": skill_labels(skills), "board": rows,
        "runs": runs, "texts": texts, "analyses": analyses or [], "metrics": METRIC_LABELS,
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


def write(cache_folder: Path, path: Path, models: set[str] | None = None) -> Path:
    """The report of every run saved in a cache (of `models` only, where given); each run is scored again from
    the cache for its questions."""
    from evaluator.cache.responses import ResponseCache
    from evaluator.reports.leaderboard import leaderboard
    from evaluator.runs.runner import rescore_saved

    folder = Path(cache_folder)
    store = ResponseCache(folder / "responses", read_only=True)
    try:
        runs, tasks, forgotten = store.runs(), store.task_scores(), store.forgotten()
    finally:
        store.close()
    if models is not None:
        runs = runs.filter(runs["model"].is_in(sorted(models)))
        tasks = tasks.filter(tasks["run"].is_in(runs["key"].implode()))
    board = leaderboard(runs, tasks)
    results, notes = {}, [f"{name}: not shown, forgotten ({'every run' if variant is None else f'variant {variant!r}'}"
                          "; shopping-mmlu forget --undo puts it back)" for name, variant in forgotten]
    for record in runs.iter_rows(named=True):
        result = rescore_saved(folder, record)
        if isinstance(result, str):
            notes.append(f"{record['model']}: no per-question view ({result})")
        else:
            if result.status == "failed" and record["reason"]:  # why it failed when it ran, not a recount
                result.reason = record["reason"]
            results[record["key"]] = result
    from evaluator.reports.analysis import report_sections

    return write_from(board, results, path, "Shopping MMLU report", notes,
                      report_sections(board, tasks, results, folder))



TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:8px 16px}header h1{font-size:17px;margin:0}header p{margin:1px 0 0;color:#b8c0cc;font-size:12px}
main{padding:10px 16px;display:flex;flex-direction:column;gap:12px}
#top{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
#boards{flex:0 1 auto;min-width:0;max-width:100%;display:flex;flex-direction:column;gap:12px}
#boards>p.note,section.ranking>h2{width:0;min-width:100%}  /* long text wraps to the tables' width, never widens them */
#model{flex:1 1 280px;min-width:0}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 10px;min-width:0;box-sizing:border-box}
h2{font-size:14px;margin:0 0 6px;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;font-size:12px;line-height:1.3}
th,td{padding:2px 5px;border-bottom:1px solid #eef0f3;text-align:left;vertical-align:top}
th{cursor:pointer;user-select:none;background:#fafbfc;position:sticky;top:0;white-space:nowrap}
th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
th.skill{white-space:normal;max-width:90px;overflow-wrap:anywhere}
table.board{width:auto}
td.name{white-space:nowrap;max-width:230px;overflow:hidden;text-overflow:ellipsis}  /* short() keeps names to ROOM characters */
@media (min-width:1600px){td.name{max-width:460px}}  /* a wide window gives its width to the names (ROOM 64) */
td.cell{text-align:right;color:#fff;font-variant-numeric:tabular-nums;min-width:38px;border-bottom:1px solid #fff;white-space:nowrap}
td.cell.light{color:#1d2330}.se{font-size:10px;opacity:.85}table.board td.cell{padding:2px 3px}
td.cell.none{color:#4a5568;background:#eceef1;text-align:center;cursor:help}
tr.sel td{background-color:#dce8ff}tr.sel td.name{font-weight:600}tr.click{cursor:pointer}tr.click:hover td.name{text-decoration:underline}
.st-complete{color:#1a7f37}.st-incomplete{color:#9a6700}.st-failed{color:#cf222e;font-weight:600}
#tasks td.task{overflow-wrap:anywhere}#tasks tr.skillrow td{background:#f3f5f8;font-weight:600;color:#4a5568}
.why{font-size:11px;color:#9a6700;overflow-wrap:anywhere;white-space:pre-wrap}
.controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin-bottom:6px;font-size:12px}
select,button{font:inherit;font-size:12px;max-width:100%}button.on{background:#1d2330;color:#fff}
.q{table-layout:fixed;margin-bottom:6px}.q td{font-size:11.5px;overflow-wrap:anywhere}.q td.pre{white-space:pre-wrap}
.q th:nth-child(1){width:44px}.q th:nth-child(2){width:120px}.q th:nth-child(3){width:38%}.q th:nth-child(6){width:80px}
.err{color:#cf222e}.ok{color:#1a7f37}.note{font-size:11.5px;color:#6b7280;margin:4px 0 0;overflow-wrap:anywhere}
</style></head><body>
<header><h1 id="title"></h1><p id="sub"></p></header>
<main>
<div id="top"><div id="boards"></div>
<section id="model"><h2 id="model-title">Tasks</h2><p id="model-note" class="note"></p>
<table id="tasks"></table></section></div>
<section id="analyses" hidden><h2>Analyses (complete runs only; shopping-mmlu analyze writes them all as files)</h2><div id="analyses-body"></div></section>
<section id="notes-box" hidden><h2>Notes</h2><ul id="notes"></ul></section>
<section><h2>Questions</h2><div class="controls"><label>task <select id="task-pick"></select></label>
<button data-f="all" class="on">all</button><button data-f="wrong">wrong</button><button data-f="errors">errors</button>
<span id="q-count" class="note"></span></div><table class="q" id="questions"></table>
<div class="controls"><button id="q-more" hidden></button></div></section>
</main>
<script type="application/json" id="data">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
const esc = s => String(s ?? '-').replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));
const fmt = v => v === null || v === undefined ? '-' : (typeof v === 'number' ? (Number.isInteger(v) ? v.toLocaleString() : v.toFixed(3)) : esc(v));
const wide = window.matchMedia('(min-width:1600px)');  // a wide window gives its width to the names
const short = s => { const room = wide.matches ? 64 : 30, head = Math.round(room * 0.43);
  return s.length <= room ? s : s.slice(0, head) + '…' + s.slice(-(room - head - 1)); };  // the end tells long names apart
const score = v => v === null || v === undefined ? '-' : v.toFixed(3);
const se = v => v === null || v === undefined ? '' : '±' + v.toFixed(3).replace(/^0/, '');
// Colour-blind-safe scales: viridis (sequential) for scores in [0, 1], purple-orange (PuOr, diverging) for
// correlations in [-1, 1]; each a list of stops, interpolated; dark text where the colour is light.
const VIRIDIS = ['#440154', '#482878', '#3e4989', '#31688e', '#26828e', '#1f9e89', '#35b779', '#6ece58', '#b5de2b', '#fde725'];
const PUOR = ['#2d004b', '#542788', '#8073ac', '#b2abd2', '#d8daeb', '#f7f7f7', '#fee0b6', '#fdb863', '#e08214', '#b35806', '#7f3b08'];
function ramp(stops, v) {
  const x = Math.min(1, Math.max(0, v)) * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const rgb = h => [1, 3, 5].map(k => parseInt(h.slice(k, k + 2), 16));
  const [a, b] = [rgb(stops[i]), rgb(stops[i + 1])], c = a.map((u, k) => Math.round(u + (b[k] - u) * f));
  return {background: `rgb(${c.join(',')})`, light: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 150};
}
const paint = (stops, v) => { const c = ramp(stops, v); return {style: `background:${c.background}`, cls: c.light ? ' light' : ''}; };
let current = null, filter = 'all';
// A ranking is one data set (by content), protocol and variant; its label names the file, so two files of
// the same name get their digests' start to tell them apart.
const rankings = [];
D.board.forEach(r => {
  const key = [r.data_sha256, r.protocol, r.variant].join('\u0000');
  let g = rankings.find(x => x.key === key);
  if (!g) rankings.push(g = {key, label: r.group, rows: []});
  g.rows.push(r);
});
rankings.forEach(g => { if (rankings.some(o => o !== g && o.label === g.label)) g.label += ` · data ${String(g.rows[0].data_sha256).slice(0, 8)}`; });
const rankingOf = run => rankings.find(g => g.rows.some(r => r.run === run));
$('title').textContent = D.title;
$('sub').textContent = `generated ${D.generated} · ${D.board.length} run(s) in ${rankings.length} ranking(s)` + (Object.keys(D.runs).length ? '' : ' · no per-question data');
function why(r, skill) {  // why a run has no (or only a partial) score for a skill, or overall (skill null)
  const m = D.runs[r.run], lines = [];
  if (m) m.tasks.filter(t => skill === null || t.skill === skill).forEach(t => t.why.forEach(w => lines.push(`${t.task}: ${w}`)));
  if (!m && r.reason) lines.push(r.reason);
  return lines;
}
function cell(r, skill, value, label) {
  const lines = why(r, skill), error = skill === null ? r.overall_stderr : r['stderr:' + skill];
  const head = `${r.model} · ${label}: ` + (value === null ? (r.status === 'failed' ? 'no score, the run failed' : 'not scored')
    : score(value) + (error === null || error === undefined ? ' (standard error unknown)' : ` ± ${error.toFixed(3)} (standard error)`));
  const title = [head, ...lines.slice(0, 8), ...(lines.length > 8 ? [`… and ${lines.length - 8} more`] : [])].join('\n');
  if (value === null) return `<td class="cell none" title="${esc(title || 'no score')}">—</td>`;
  const short = r.partial_skills || r.skills_scored < r.skills_total;
  const mark = skill === null ? (short ? '~' : '') + (r.complete ? '' : '*') : (lines.length ? '~' : '');
  const c = paint(VIRIDIS, value);
  return `<td class="cell${c.cls}" style="${c.style}" title="${esc(title)}">${score(value)}<span class="se">${se(error)}</span>${mark}</td>`;
}
function drawBoards() {
  const box = $('boards'); box.innerHTML = '';
  rankings.forEach(g => {
    const section = document.createElement('section'); section.className = 'ranking'; box.appendChild(section);
    const h = document.createElement('h2'); h.textContent = g.label; section.appendChild(h);
    const t = document.createElement('table'); t.className = 'board'; section.appendChild(t);
    const skills = D.skills.filter(s => g.rows.some(r => r['skill:' + s] !== null || (D.runs[r.run] && D.runs[r.run].tasks.some(x => x.skill === s))));
    const costs = g.rows.some(r => r.cost !== null);
    const cols = [['rank', '#', 'num'], ['model', 'model', ''], ['overall', 'overall', 'num'], ...skills.map(s => ['skill:' + s, D.labels[s], 'num skill']),
                  ['answered', 'answered', 'num'], ['status', 'status', ''], ...(costs ? [['cost', 'cost $', 'num']] : [])];
    let key = 'rank', asc = true;
    const draw = () => {
      const sorted = [...g.rows].sort((a, b) => { const x = a[key], y = b[key]; if (x === y) return 0; if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : 1) * (asc ? 1 : -1); });
      t.innerHTML = '<tr>' + cols.map(([k, l, c]) => `<th class="${c}" data-k="${esc(k)}">${esc(l)}${k === key ? (asc ? ' ▲' : ' ▼') : ''}</th>`).join('') + '</tr>' +
        sorted.map(r => `<tr class="click${r.run === current ? ' sel' : ''}" data-m="${esc(r.run)}">` + cols.map(([k, l]) => {
          if (k === 'model') return `<td class="name" title="${esc(r.model)} · ${esc(g.label)}">${esc(short(r.model))}${r.complete ? '' : ' *'}</td>`;
          if (k === 'overall') return cell(r, null, r.overall, 'overall');
          if (k.startsWith('skill:')) return cell(r, k.slice(6), r[k], l);
          if (k === 'answered') return `<td class="num">${r.answered.toLocaleString()}/${r.questions.toLocaleString()}</td>`;
          if (k === 'status') return `<td class="st-${esc(r.status)}">${esc(r.status)}</td>`;
          if (k === 'rank') return `<td class="num" title="${r.rank === null ? 'no rank: ' + esc(r.status === 'failed' ? 'the run failed' : 'no overall score') : 'equal scores at three decimals share a rank'}">${r.rank === null ? '' : r.rank}</td>`;
          if (k === 'cost') return `<td class="num">${r.cost === null ? '-' : r.cost.toFixed(2)}</td>`;
          return `<td class="num">${fmt(r[k])}</td>`; }).join('') + '</tr>').join('');
      t.querySelectorAll('th').forEach(th => th.onclick = () => { const k = th.dataset.k; asc = key === k ? !asc : (k === 'model' || k === 'rank' || k === 'status'); key = k; draw(); });
      t.querySelectorAll('tr.click').forEach(tr => tr.onclick = () => pick(tr.dataset.m, true));
    };
    draw();
  });
  const note = document.createElement('p'); note.className = 'note'; box.appendChild(note);
  const marked = D.board.some(r => r.overall !== null && (r.partial_skills || r.skills_scored < r.skills_total)) ||
    Object.values(D.runs).some(m => m.tasks.some(t => t.why.length));
  note.textContent = 'Score cells coloured from dark purple (0) through teal to yellow (1) (viridis, readable with any colour vision); ±: standard error; ' +
    '— has no score: point at it for why. A failed run, or one without an overall score, has no rank; equal scores at three decimals share one. ' +
    'Click a column to sort, a row to see that model (the address then links to it: #model=NAME). * incomplete: not every question answered and scored' +
    (marked ? '; ~ averaged over fewer tasks or skills than the data has.' : '.');
}
function linkName(run) {  // the model's name where it is one run on the page, else the run's key
  const row = D.board.find(r => r.run === run);
  return row && D.board.filter(r => r.model === row.model).length === 1 ? row.model : run;
}
function pick(run, chosen) {
  current = run;
  document.querySelectorAll('tr[data-m]').forEach(tr => tr.classList.toggle('sel', tr.dataset.m === run));
  const m = D.runs[run], row = D.board.find(r => r.run === run), g = rankingOf(run);
  if (chosen) history.replaceState(null, '', '#model=' + encodeURIComponent(linkName(run)));
  $('model-title').textContent = `Tasks: ${row ? row.model : run}` + (g && rankings.length > 1 ? ` (${g.label})` : '');
  if (!m) { $('tasks').innerHTML = ''; $('questions').innerHTML = ''; $('task-pick').innerHTML = ''; $('q-count').textContent = '';
            $('model-note').textContent = `${row ? row.status : ''}${row && row.reason ? ': ' + row.reason : ''}. No per-question data for this run.`; return; }
  $('model-note').textContent = (m.reason ? `${m.status}: ${m.reason}. ` : `${m.status}. `) + `Questions shown: ${m.questions.length.toLocaleString()} of ${m.questions_total.toLocaleString()}` + (m.questions.length < m.questions_total ? ` (capped at ${m.limit.toLocaleString()} per model: errors first, then wrong answers; all of them are in the results folder's samples.jsonl)` : '') + '.';
  let skill = null;
  $('tasks').innerHTML = '<tr><th>task</th><th>metric</th><th class="num">n</th><th class="num">score</th></tr>' + m.tasks.map(t => {
    const head = t.skill === skill ? '' : `<tr class="skillrow"><td colspan="4">${esc(D.labels[t.skill] || t.skill)}</td></tr>`; skill = t.skill;
    const counts = `${t.n} scored of ${t.questions}; ${t.errors} without an answer; ${t.unscored} not scored`;
    return head + `<tr class="click" data-t="${esc(t.task)}"><td class="task">${esc(t.task)}${t.official ? ' †' : ''}${t.why.map(w => `<div class="why">${esc(w)}</div>`).join('')}</td><td title="${esc(t.metric)}">${esc(D.metrics[t.metric] || t.metric)}</td>` +
      `<td class="num ${t.errors ? 'err' : ''}" title="${esc(counts)}">${fmt(t.n)}/${fmt(t.questions)}</td>` +
      `<td class="num" title="${esc(t.score === null ? t.why.join('\n') || 'not scored' : [score(t.score) + (t.stderr === null ? ' (standard error unknown)' : ` ± ${t.stderr.toFixed(3)} (standard error)`), t.official].filter(Boolean).join('\n'))}">${t.score === null ? 'not scored' : score(t.score) + `<span class="se">${se(t.stderr)}</span>`}</td></tr>`; }).join('');
  $('tasks').querySelectorAll('tr.click').forEach(tr => tr.onclick = () => { $('task-pick').value = tr.dataset.t; drawQuestions(); });
  $('task-pick').innerHTML = '<option value="">(every task)</option>' + m.tasks.map(t => `<option>${esc(t.task)}</option>`).join('');
  drawQuestions();
}
let shown = 0;  // questions drawn: a page at a time, so the page (the one thing that scrolls) stays short
const PAGE = 100;
function drawQuestions(more) {
  const m = D.runs[current]; if (!m) return;
  const task = $('task-pick').value;
  const rows = m.questions.filter(q => (!task || q.task === task) && (filter === 'all' || (filter === 'errors' ? q.error : (q.wrong || q.error))));
  shown = Math.min(rows.length, more === true ? shown + PAGE : PAGE);
  $('q-count').textContent = `${rows.length.toLocaleString()} question(s)` + (shown < rows.length ? `, the first ${shown.toLocaleString()} shown` : '');
  $('q-more').hidden = shown >= rows.length;
  $('q-more').textContent = `show ${Math.min(PAGE, rows.length - shown)} more (${(rows.length - shown).toLocaleString()} left)`;
  $('questions').innerHTML = '<tr><th class="num">row</th><th>task</th><th>input</th><th>truth</th><th>answer</th><th class="num">score</th></tr>' +
    rows.slice(0, shown).map(q => { const t = (D.texts[m.data] || {})[q.row] || [null, null];
      const unscored = q.unscored === null ? null : m.reasons[q.unscored];
      return `<tr><td class="num">${q.row}</td><td>${esc(q.task)}</td><td class="pre">${esc(t[0])}</td><td class="pre">${esc(t[1])}</td>` +
        `<td class="pre">${q.answer === null ? '<span class="err">—</span>' : esc(q.answer)}${unscored === null ? '' : `<div class="why">not scored: ${esc(unscored)}</div>`}</td>` +
        `<td class="num ${q.error ? 'err' : (q.wrong || unscored !== null ? '' : 'ok')}"${unscored === null ? '' : ` title="${esc(unscored)}"`}>${q.error ? esc(q.error) : (unscored !== null ? 'not scored' : (q.ner ? 'tp/fp/fn ' + esc(q.ner) : score(q.score)))}${q.official ? ' †' : ''}</td></tr>`; }).join('');
}
document.querySelectorAll('button[data-f]').forEach(b => b.onclick = () => { filter = b.dataset.f; document.querySelectorAll('button[data-f]').forEach(x => x.classList.toggle('on', x === b)); drawQuestions(); });
$('task-pick').onchange = () => drawQuestions();
$('q-more').onclick = () => drawQuestions(true);
const ranked = [...D.board].sort((a, b) => (b.overall ?? -1) - (a.overall ?? -1));
const wanted = () => new URLSearchParams(location.hash.slice(1)).get('model');
function linked(want) {  // the run the address names (#model=NAME or a run's key); a name's complete run first
  const row = D.board.find(r => r.run === want) || D.board.find(r => r.model === want && r.complete) || D.board.find(r => r.model === want);
  return row ? row.run : null;
}
function show(run) { pick(run); const tr = [...document.querySelectorAll('tr[data-m]')].find(x => x.dataset.m === run); if (tr) tr.scrollIntoView({block: 'nearest'}); }
function drawAnalyses() {  // per ranking: skill correlations, scaling slopes, base → tuned deltas
  if (!D.analyses.length) return;
  $('analyses').hidden = false;
  const rho = v => { if (v === null) return '<td class="cell none">—</td>'; const c = paint(PUOR, (v + 1) / 2);
    return `<td class="cell${c.cls}" style="${c.style}" title="ρ = ${v.toFixed(3)} (purple negative, white 0, orange positive)">${v.toFixed(2)}</td>`; };
  const signed = v => v === null ? '-' : (v >= 0 ? '+' : '') + v.toFixed(3);
  $('analyses-body').innerHTML = D.analyses.map(a => {
    const g = rankings.find(x => x.rows[0].data_sha256 === a.data_sha256 && x.label.startsWith(a.group)) || {label: a.group};
    const left = a.excluded.length ? `<p class="note">Left out: ${a.excluded.map(e => esc(e.label) + ' (' + esc(e.why) + ')').join('; ')}</p>` : '';
    const corr = a.skills.length > 1 ? `<table class="board"><tr><th>Spearman ρ, n ≤ ${a.n}</th>${a.skills.map(s => `<th class="num">${esc(s)}</th>`).join('')}</tr>` +
      a.skills.map((s, i) => `<tr><td>${esc(s)}</td>${a.rho[i].map(rho).join('')}</tr>`).join('') + '</table>' : '';
    const scaling = a.scaling.map(f => `<p class="note">Scaling: ${esc(f.text)}</p>`).join('');  // one fit a line
    const pairs = a.pairs.length ? '<table class="board"><tr><th>tuned</th><th>base</th><th>skill</th><th class="num">n</th><th class="num">Δ</th><th class="num">95% CI</th></tr>' +
      a.pairs.map(p => `<tr><td>${esc(p.tuned)}</td><td>${esc(p.base)}</td><td>${esc(p.skill)}</td><td class="num">${fmt(p.n)}</td><td class="num">${signed(p.diff)}</td><td class="num">[${signed(p.low)}, ${signed(p.high)}]</td></tr>`).join('') + '</table>' : '';
    const notes = a.notes.map(n => `<p class="note">${esc(n)}</p>`).join('');
    return `<h2>${esc(g.label)}: ${a.complete} of ${a.runs} runs complete</h2>${left}${corr}${scaling}${pairs}${notes}`;
  }).join('');
}
drawBoards();
wide.addEventListener('change', drawBoards);  // names take the room a resized window has
drawAnalyses();
const asked = wanted() === null ? null : linked(wanted());
if (wanted() !== null && !asked) D.notes.unshift(`The address names a model this report does not have: ${wanted()}`);
if (D.notes.length) { $('notes-box').hidden = false; $('notes').innerHTML = D.notes.map(n => `<li>${esc(n)}</li>`).join(''); }
const best = (ranked.find(r => D.runs[r.run]) || ranked[0] || {}).run;  // the best run we can drill into
if (asked) show(asked); else if (best) pick(best);
window.addEventListener('hashchange', () => { const run = linked(wanted()); if (run && run !== current) show(run); });
</script></body></html>
"""
