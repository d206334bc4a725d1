"""Render the official prompts: skill-wise and task-wise protocols, as plain text or as a chat pair.

The text is byte-identical to the official scripts (`skill_wise_eval/hf_skill_inference.py`,
`task_wise_eval/utils.py` and the `hf_*.py` runners); the templates live in the `prompts` package.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterable, Sequence
from enum import Enum
from functools import cache
from importlib import resources
from itertools import islice

from pydantic import BaseModel, ConfigDict

from evaluator.data.records import Question, TaskType

REVIEW_RATING = "review_rating_prediction"
NUMBER_CHOICES = ("0", "1", "2", "3")
LETTER_CHOICES = ("A", "B", "C", "D")

# Max new tokens per task type in the task-wise runners (their --max_gen_len defaults; 4 for multiple choice).
TASK_WISE_MAX_TOKENS = {
    TaskType.MULTIPLE_CHOICE: 4,
    TaskType.RETRIEVAL: 15,
    TaskType.RANKING: 20,
    TaskType.NER: 20,
    TaskType.GENERATION: 128,
}
SKILL_WISE_MAX_TOKENS = 100  # every non-multiple-choice question in hf_skill_inference.py


class Protocol(str, Enum):
    SKILL = "skill"
    TASK = "task"


class Rendering(str, Enum):
    COMPLETION = "completion"  # plain text, no chat template: the paper's protocol
    CHAT = "chat"  # system + user messages, for chat models and closed APIs


class PromptOptions(BaseModel):
    """The official scripts' flags that change the text or the token budget."""

    model_config = ConfigDict(frozen=True)

    task_specific_prompt: bool = False  # task-wise --use_task_specific_prompt
    letter_choices: bool = False  # task-wise --use_letter_choices
    number_only: bool = False  # the phi-2 / eCeLLM-S suffix on multiple choice
    multi_choice_tokens: int = 1  # skill-wise --multi_choice_tokens


class RenderedPrompt(BaseModel):
    """What is sent for one question; `protocol` and `rendering` travel with it into the cache."""

    model_config = ConfigDict(frozen=True)

    qid: str
    protocol: Protocol
    rendering: Rendering
    max_tokens: int
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None


@cache
def template(name: str) -> str:
    return (resources.files("prompts") / f"{name}.txt").read_text(encoding="utf-8")


def format_subject(task: str) -> str:
    """The official `format_subject`: ' word word' with 'pt' spelled out (note the leading space)."""
    return "".join(" " + ("product type" if word == "pt" else word) for word in task.split("_"))


def system_prompt(question: Question, protocol: Protocol, options: PromptOptions) -> str:
    if protocol is Protocol.TASK and options.task_specific_prompt:
        if question.task_type is TaskType.MULTIPLE_CHOICE:
            if question.task == REVIEW_RATING:
                return template("task_specific_review_rating")
            return template("task_specific_multiple_choice").replace("{subject}", format_subject(question.task))
        return template("task_specific_system").replace("{subject}", format_subject(question.task))
    return template("system")


def user_text(question: Question, protocol: Protocol, options: PromptOptions) -> str:
    """Everything after the system prompt."""
    multiple_choice = question.task_type is TaskType.MULTIPLE_CHOICE
    if protocol is Protocol.SKILL:
        text = question.input
        if multiple_choice and options.number_only:
            text += template("number_only_suffix")
        return text
    if not multiple_choice:
        return question.input
    text = question.input
    if question.choices is not None:  # a CSV question (a skill-format input already carries its choices)
        if REVIEW_RATING not in question.task:
            labels = LETTER_CHOICES if options.letter_choices else NUMBER_CHOICES
            for label, choice in zip(labels, question.choices[:4]):
                text += f"\n({label}) {choice}" if options.letter_choices else f"\n{label}. {choice}"
        if options.letter_choices:
            text += template("letter_instruction")
        text += template("answer_cue")
    if options.number_only and not options.letter_choices:
        text += template("number_only_suffix")
    return text


def max_tokens(question: Question, protocol: Protocol, options: PromptOptions) -> int:
    if protocol is Protocol.TASK:
        return TASK_WISE_MAX_TOKENS[question.task_type]
    return options.multi_choice_tokens if question.task_type is TaskType.MULTIPLE_CHOICE else SKILL_WISE_MAX_TOKENS


def render(question: Question, protocol: Protocol = Protocol.SKILL, rendering: Rendering = Rendering.COMPLETION,
           options: PromptOptions = PromptOptions(), shots: Sequence[Question] = ()) -> RenderedPrompt:
    """The request's text; `shots` (solved examples) go between the system prompt and the question."""
    system = system_prompt(question, protocol, options)
    user = "".join(shot_text(s, protocol, options) for s in shots) + user_text(question, protocol, options)
    common = dict(qid=question.qid, protocol=protocol, rendering=rendering,
                  max_tokens=max_tokens(question, protocol, options))
    if rendering is Rendering.COMPLETION:
        return RenderedPrompt(prompt=system + user, **common)
    return RenderedPrompt(messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                          **common)


def answer_label(question: Question, options: PromptOptions) -> str:
    """The label the task-wise multiple-choice scorer compares with (hf_multi_choice.py's `label`)."""
    truth = str(question.truth)
    if options.letter_choices and REVIEW_RATING not in question.task and truth in NUMBER_CHOICES:
        return LETTER_CHOICES[int(truth)]
    return truth


# Between a solved example and what follows it (the next example or the question): a blank line, as in the
# MMLU scripts the official `format_example` / `few_shot_prompt` names come from. The official code itself is
# zero-shot only: this separator and `gold_answer` are ours, documented in docs/beyond-the-protocol.md.
SHOT_SEPARATOR = "\n\n"


def gold_answer(question: Question, options: PromptOptions) -> str:
    """A solved example's answer, in the form its official scorer gives full marks: the choice label; the
    indices (1-based) joined by ', '; a ranking as candidate numbers by relevance, highest first (ties in list
    order); NER entities joined by ', '; the reference text (the first, where there are several)."""
    truth = question.truth
    if question.task_type is TaskType.MULTIPLE_CHOICE:
        return answer_label(question, options)
    if question.task_type is TaskType.RANKING and isinstance(truth, list):
        order = sorted(range(len(truth)), key=lambda i: -truth[i])
        return ", ".join(str(i + 1) for i in order)
    if isinstance(truth, list):
        return truth[0] if question.task_type is TaskType.GENERATION else ", ".join(str(v) for v in truth)
    return str(truth)


def shot_text(example: Question, protocol: Protocol, options: PromptOptions) -> str:
    """One solved example: its own official rendering (ending 'Answer: ' / 'Output: ' as the data has it),
    its gold answer, then the separator."""
    return user_text(example, protocol, options) + gold_answer(example, options) + SHOT_SEPARATOR


def _base_id(qid: str) -> str:
    """The content id without the '#2' a repeated question gets: a repeat is the same question."""
    return qid.split("#", 1)[0]


def seen_text(question: Question, protocol: Protocol, options: PromptOptions) -> str:
    """What the model is asked, as a reader compares it: NFKC (composed accents, full-width digits as ASCII),
    zero-width and other format characters removed, case-folded, whitespace runs as one space and trimmed: two
    rows asking this are the same question, whatever their content ids say (a truth written "2" or 2, a
    trailing space, "cafe\u0301" for "café"). Only compared, never sent."""
    text = unicodedata.normalize("NFKC", user_text(question, protocol, options))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()
    return " ".join(unicodedata.normalize("NFKC", text).split())


def draw_shots(questions: Iterable[Question], pool: Iterable[Question], k: int, seed: int = 0,
               protocol: Protocol = Protocol.SKILL,
               options: PromptOptions = PromptOptions()) -> dict[str, tuple[Question, ...]]:
    """Up to `k` solved examples for each question (by qid), from the pool's questions of its task.

    Each task's pool is put in one seeded order (sorted by content id first, so the pool's file order does not
    matter) and every question takes the first `k` of it that do not ask what it asks (`seen_text`: a pool
    row with its input would show the question its own answer): the questions of a task share their
    examples, and so a prefix (vLLM's prefix cache hits), except where a question is one of them."""
    by_task: dict[str, dict[str, Question]] = {}
    for example in pool:
        by_task.setdefault(example.task, {}).setdefault(_base_id(example.qid), example)
    orders = {}
    for task, examples in by_task.items():
        order = [examples[key] for key in sorted(examples)]
        random.Random(f"{seed}\0{task}").shuffle(order)
        orders[task] = [(seen_text(e, protocol, options), e) for e in order]
    drawn = {}
    for question in questions:
        own = seen_text(question, protocol, options)
        drawn[question.qid] = tuple(islice((e for text, e in orders.get(question.task, ()) if text != own), k))
    return drawn


def shot_shortfall(planned: list, questions: list[Question], shots: int) -> dict[str, int]:
    """task -> the fewest examples a question of it got, for the tasks with fewer than `shots` to draw from
    (`planned`: each question's request, with the examples it got as `.shots`)."""
    fewest: dict[str, int] = {}
    for item, question in zip(planned, questions):
        if item.shots < shots:
            fewest[question.task] = min(fewest.get(question.task, shots), item.shots)
    return fewest
