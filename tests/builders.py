"""Small builders shared by the tests: questions in memory, files on disk."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

import polars as pl

from evaluator.data.records import Metric, Question, TaskType, question_id

TYPE_OF = {
    "accuracy": TaskType.MULTIPLE_CHOICE, "hit rate@3": TaskType.RETRIEVAL, "ndcg": TaskType.RANKING,
    "micro f1": TaskType.NER, "rougel": TaskType.GENERATION, "bleu": TaskType.GENERATION,
    "jp-bleu": TaskType.GENERATION, "sent-transformer": TaskType.GENERATION,
    "multilingual-sent-transformer": TaskType.GENERATION,
}


def question(metric: str, truth, task: str | None = None, skill: str = "s", text: str = "q",
             row: int = 0, choices: list[str] | None = None) -> Question:
    task = task or metric.replace(" ", "_")
    return Question(qid=question_id(task, f"{text}{row}", truth), source="mem", row=row, skill=skill, task=task,
                    task_type=TYPE_OF[metric], metric=Metric(metric), input=text, truth=truth, choices=choices)


def responses(outputs: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"row": pl.Series(range(len(outputs)), dtype=pl.UInt32), "output": outputs})


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_official_layout(root: Path) -> Path:
    """A tiny data.zip-style folder: skills/ plus one task file of every type."""
    write_jsonl(root / "skills" / "skill1_concept.json", [
        {"input_field": "Pick one\n0. a\n1. b\n2. c\n3. d\nAnswer: ", "output_field": 1,
         "task_name": "attribute_selection", "task_type": "multiple-choice", "metric": "accuracy"},
        {"input_field": "Which 3?", "output_field": [1, 2, 3], "task_name": "keyphrase_retrieval",
         "task_type": "retrieval", "metric": "hit rate@3"},
    ])
    write_jsonl(root / "skills" / "skill3_behavior.json", [
        {"input_field": "Rank them", "output_field": [2, 1, 0], "task_name": "query_product_ranking",
         "task_type": "ranking", "metric": "ndcg"},
    ])
    mc = root / "multiple_choice" / "attribute_selection_dataset.csv"
    mc.parent.mkdir(parents=True, exist_ok=True)
    mc.write_text('question,choices,answer\n"Pick, one","[\'a\', \'b\', \'c\', \'d\']",1\n'
                  'Another,"[""x"", ""y"", ""z"", ""w""]",3\n', encoding="utf-8")
    review = root / "multiple_choice" / "review_rating_prediction_dataset.csv"
    review.write_text("question,choices,answer\nGreat product,[],5\n", encoding="utf-8")
    write_jsonl(root / "retrieval" / "keyphrase_retrieval_dataset.json",
                [{"input_field": "Which 3?", "target_field": [1, 2, 3]}])
    write_jsonl(root / "ranking" / "query_product_ranking_dataset.json",
                [{"input_field": "Rank them", "target_field": [2, 1, 0]}])
    write_jsonl(root / "named_entity_recognition" / "query_ner_dataset.json",
                [{"input_field": "Entities?", "target_field": ["acme", "mug"]}])
    write_jsonl(root / "generation" / "attribute_extraction_dataset.json",
                [{"input_field": "Extract", "target_field": "cotton"}])
    write_jsonl(root / "generation" / "title_translation_JP_dataset.json",
                [{"input_field": "Translate", "target_field": "綿のタオル"}])
    return root


def run_cli(args: list, capsys, monkeypatch) -> tuple[int, str, str]:
    """`shopping-mmlu ARGS` in this process: (exit code, stdout, stderr)."""
    import sys

    import pytest

    from evaluator.cli import main

    monkeypatch.setattr(sys, "argv", ["shopping-mmlu", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


def old_cache(folder: Path) -> None:
    """A version 1 cache: answers without their source, scores in one table keyed on the data path."""
    folder.mkdir(parents=True)
    db = sqlite3.connect(folder / "responses.sqlite")
    db.executescript(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, qid TEXT NOT NULL, text TEXT NOT NULL, "
        "finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL, attempts INTEGER, "
        "created_at REAL NOT NULL, request TEXT NOT NULL);"
        "CREATE TABLE errors (key TEXT PRIMARY KEY, model TEXT NOT NULL, qid TEXT NOT NULL, kind TEXT NOT NULL, "
        "status INTEGER, message TEXT, attempts INTEGER, latency_s REAL, created_at REAL NOT NULL, "
        "request TEXT NOT NULL);"
        "CREATE TABLE scores (model TEXT, data TEXT, protocol TEXT, rendering TEXT, skill TEXT, task TEXT, "
        "metric TEXT, n INTEGER, errors INTEGER, score REAL, prompt_tokens INTEGER, completion_tokens INTEGER, "
        "created_at REAL);"
        "INSERT INTO scores VALUES ('old', '/d.json', 'skill', 'completion', 's', 't', 'accuracy', 5, 0, 0.4, "
        "10, 5, 1.0);"
        "PRAGMA user_version = 1;")
    db.commit()
    db.close()


SESSION_VAR = "SHOPPING_MMLU_TEST_SESSION"  # set once per pytest session by conftest; every child inherits it
_SESSIONS: set[int] = set()  # Unix sessions our tagged processes lead or belong to (not the pytest's own)


def our_processes(match) -> set[int]:
    """Processes of this test session whose command line and /proc status `match(cmdline, status)` accepts.
    Ours by the session tag in their environment, however reparented; or by the Unix session of a process
    seen tagged (vLLM's engine core and workers set their titles with setproctitle, which overwrites what
    /proc shows of their environment, never their session). Another engineer's or another test run's servers
    on a shared machine never count."""
    tag = f"{SESSION_VAR}={os.environ[SESSION_VAR]}".encode()
    own = os.getsid(0)
    seen = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            session = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
            tagged = tag in (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if tagged and session != own:
            _SESSIONS.add(session)
        seen.append((int(entry.name), tagged, session, cmdline, status))
    return {pid for pid, tagged, session, cmdline, status in seen
            if (tagged or session in _SESSIONS) and match(cmdline, status)}

class Lines:
    """A child's text stream, read line by line by a thread: `until` waits with a deadline (readline alone has
    none, so one wedged child would hang the whole suite); `text` is everything read so far. The thread keeps
    draining the pipe afterwards, so the child never blocks on a full one."""

    def __init__(self, stream) -> None:
        self.text, self.ended, self._lines = "", False, queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put(line)
        self._lines.put(None)

    def until(self, done, timeout_s: float) -> bool:
        """Read until done(text so far); False at the end of the stream or past the deadline."""
        deadline = time.monotonic() + timeout_s
        while not done(self.text):
            if self.ended:
                return False
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                self.ended = True
            else:
                self.text += line
        return True
