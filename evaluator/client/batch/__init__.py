"""The providers' batch APIs: about half the price, within 24 hours, outside the live rate limits.

One small module per provider behind one interface: `submit` a list of requests (each with the question's
cache key as its custom id), `poll` the batch's state, read its `results` as (key, Reply) pairs.
They use the providers' own SDKs (optional extras: `pip install shopping-mmlu[batch]`); the live hot path
stays on our aiohttp client. Every result, whatever it holds, becomes a Reply: an answer or an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from evaluator.client.http import Reply
from evaluator.errors import InputError


@dataclass(frozen=True)
class BatchRequest:
    key: str  # the question's cache key: the custom id
    body: dict  # the live request body (model, messages or prompt, max_tokens, temperature)


@dataclass(frozen=True)
class BatchState:
    status: str  # the provider's own word (validating, in_progress, ended, ...)
    total: int
    done: int
    failed: int
    ended: bool  # no more results will come
    failed_batch: str | None = None  # the whole batch failed at the provider: why
    code: str | None = None  # the provider's code for that failure (OpenAI: token_limit_exceeded, ...)


class BatchProvider(Protocol):
    name: str
    max_requests: int
    max_bytes: int

    def submit(self, requests: list[BatchRequest], chat: bool, tag: str, known: frozenset[str] = frozenset()) -> str: ...

    def poll(self, batch_id: str) -> BatchState: ...

    def results(self, batch_id: str, chat: bool) -> Iterator[tuple[str, Reply]]: ...


def provider_for(provider: str, api_key: str | None, base_url: str | None) -> BatchProvider:
    """The batch client for a profile's provider; a clear error where there is none or its SDK is missing."""
    if provider == "openai":
        from evaluator.client.batch.openai_batch import OpenAIBatches

        return OpenAIBatches(api_key, base_url)
    if provider == "anthropic":
        from evaluator.client.batch.anthropic_batch import AnthropicBatches

        return AnthropicBatches(api_key, base_url)
    raise InputError(f"batch mode needs an OpenAI or Anthropic profile, not provider '{provider}'")


def sdk(name: str):
    """Import a provider SDK, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise InputError(f"batch mode needs the '{name}' package: pip install 'shopping-mmlu[batch]'") from None
