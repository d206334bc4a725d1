"""The circuit breaker: stop sending to a model that cannot answer, instead of buying a night of errors.

It trips on a run of consecutive failures of one kind that no retry will fix (401, 403, 404, a 400 that
names the model), or on an error share past a threshold once enough replies are in. A prompt refused as
longer than the model's context is that question's error row and counts toward neither. Answers already
kept stay kept; the run is marked failed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluator.client.http import Reply
from evaluator.errors import clip_words


@dataclass(frozen=True)
class BreakerPolicy:
    consecutive: int = 5  # this many fatal failures of one kind in a row
    error_share: float = 0.5  # or this share of errors ...
    min_replies: int = 50  # ... once this many replies are in

    def __post_init__(self) -> None:
        if self.consecutive < 1 or self.min_replies < 1 or not 0 < self.error_share <= 1:
            raise ValueError("breaker: consecutive and min replies must be at least 1, the share in (0, 1]")


# What vLLM's 400 says of a prompt longer than its context (the request's own fault, not the model's):
# renderers/params.py TokenizeParams ("You passed N input tokens ... the model's context length is only M
# tokens, resulting in a maximum input length of K tokens"; parameter input_tokens or input_text),
# entrypoints/openai/engine/serving.py _validate_input ("This model's maximum context length is M tokens.
# However, your request has N input tokens"; "'max_tokens' or 'max_completion_tokens' is too large"), and
# the engine's "... is longer than the maximum model length of M"; OpenAI's own says "maximum context length".
CONTEXT_LENGTH = ("maximum context length", "context length is only", "maximum input length",
                  "longer than the maximum model length")


def too_long(reply: Reply) -> bool:
    """A 400 refusing one prompt as longer than the model's context: that question's error row only."""
    return reply.status == 400 and any(phrase in reply.message.lower() for phrase in CONTEXT_LENGTH)


def fatal_kind(reply: Reply) -> str | None:
    """A failure that every other request to this model will meet too, or None."""
    if reply.ok or reply.status is None:
        return None
    if reply.status in (401, 403):
        return f"HTTP {reply.status} (the key is missing, wrong or not allowed)"
    if reply.status == 404:
        return "HTTP 404 (no such model or endpoint)"
    if reply.status == 400 and "model" in reply.message.lower():
        return "HTTP 400 naming the model"
    return None


class Breaker:
    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.replies = 0
        self.errors = 0
        self.streak_kind: str | None = None
        self.streak = 0
        self.last_message = ""

    def see(self, reply: Reply) -> str | None:
        """Count one reply; the reason to stop, if this one tripped the breaker."""
        if too_long(reply):  # it names the model's context, yet the next, shorter prompt is answered
            return None
        self.replies += 1
        if reply.ok:
            self.streak_kind, self.streak = None, 0
            return None
        self.errors += 1
        self.last_message = reply.message
        kind = fatal_kind(reply)
        if kind is not None:
            self.streak = self.streak + 1 if kind == self.streak_kind else 1
            self.streak_kind = kind
            if self.streak >= self.policy.consecutive:
                return f"stopped after {self.streak} consecutive {kind}: {clip_words(reply.message, 300)}"
        else:
            self.streak_kind, self.streak = None, 0
        if self.replies >= self.policy.min_replies and self.errors / self.replies > self.policy.error_share:
            return (f"stopped: {self.errors} of {self.replies} requests failed (more than "
                    f"{self.policy.error_share:.0%}); last: {clip_words(reply.message, 300)}")
        return None
