"""A night's one scoring stage: every model's answered run is scored here, by one thread, with one embedder.

Runs (the producers) hand over their answers when their sending is over and wait for their scores; the
stage takes whatever has arrived and scores it in one pass (texts shared between models, the references
above all, are encoded once). Embedding models are loaded here, before any model's thread starts, so no
library import or model load ever happens in two threads at once.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from evaluator.data.records import Metric
from evaluator.queues import drain
from evaluator.runs import runner
from evaluator.runs.record import RunResult
from evaluator.runs.settings import Answered
from evaluator.scoring.embeddings import Embedder, EmbeddingConfig, EmbeddingUnavailable

EMBEDDING_METRICS = (Metric.SENT_TRANSFORMER, Metric.MULTILINGUAL_SENT_TRANSFORMER)


class ScoringStage:
    def __init__(self, embeddings: EmbeddingConfig, metrics: set[Metric] = frozenset()) -> None:
        self.embedder = Embedder(embeddings)
        for metric in EMBEDDING_METRICS:  # loaded now, in the caller's thread, before the night starts
            if metric in metrics:
                try:
                    self.embedder._model(metric)
                except EmbeddingUnavailable:
                    pass  # its rows are reported not scored, with the reason, when they are scored
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.passes = 0  # scoring passes made (fewer than runs when models arrive together)
        self.thread = threading.Thread(target=self._loop, name="scoring-stage", daemon=True)
        self.thread.start()

    def score(self, answered: Answered) -> RunResult:
        """Scores and saves one run; the caller (its model's thread) waits, the stage scores one pass at a time."""
        done: Future = Future()
        self.jobs.put((answered, done))
        return done.result()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(60)
        self.embedder.close()

    def _loop(self) -> None:
        drain(self.jobs, self._score)

    def _score(self, group: list) -> None:
        self.passes += 1
        try:
            results = runner.finish([answered for answered, _ in group], embedder=self.embedder)
        except Exception as exc:  # noqa: BLE001: find whose run it was: score each alone
            if len(group) > 1:
                for job in group:
                    self._score([job])
            else:
                group[0][1].set_exception(exc)
            return
        for (_, done), result in zip(group, results):
            done.set_result(result)
