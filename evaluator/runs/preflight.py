"""Pre-flight: before a model's fan-out, prove in seconds that it can succeed.

In order: the key variable its profile names is set; the endpoint answers; the model is served there
(`/v1/models`, where the endpoint has it); one real request (the run's first) succeeds. A model that fails
is marked failed with the reason and sends nothing more; the check's one answer is kept like any other.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

import aiohttp

from evaluator.client.http import Endpoint, Reply, RetryPolicy, make_session, request
from evaluator.errors import clip_words
from servers.profiles import ModelProfile

PROBE_TIMEOUT_S = 15.0


@dataclass
class ServerFacts:
    """What the endpoint says about itself, for the results file."""

    models: list[str] = field(default_factory=list)
    version: str | None = None


class PreflightFailed(Exception):
    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply  # the failed first request, to keep as an error row

    @property
    def question_only(self) -> bool:
        """The endpoint works and refused this one question (a content filter, a prompt too long): another
        question may well be answered."""
        from evaluator.runs.breaker import fatal_kind

        reply = self.reply
        return reply is not None and reply.status in (400, 413, 422) and fatal_kind(reply) is None


def key_problem(profile: ModelProfile) -> str | None:
    """The missing key, named by its variable (closed APIs need one; other endpoints may not)."""
    if profile.api_key_env and profile.provider in ("openai", "anthropic") and not profile.api_key():
        return (f"the environment variable {profile.api_key_env} is not set (the profile '{profile.name}' takes "
                f"its {profile.provider} key from it)")
    return None


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as response:
        raw = await response.content.read(1 << 20)
        try:
            return response.status, json.loads(raw)
        except (ValueError, RecursionError):
            return response.status, None


async def _facts(session: aiohttp.ClientSession, endpoint: Endpoint, served: str, listed: bool = True) -> ServerFacts:
    """What the endpoint says of itself. With `listed` False (Anthropic: its /models is its own Models API,
    with another auth header, dated ids and 20 per page), the list neither refuses the key nor the model: the
    real request that follows decides."""
    facts = ServerFacts()
    base = endpoint.base_url.rstrip("/")
    try:
        status, body = await _get_json(session, f"{base}/models")
    except asyncio.TimeoutError:
        raise PreflightFailed(f"the endpoint {base} did not answer within {PROBE_TIMEOUT_S:g} s") from None
    except aiohttp.ClientError as exc:
        raise PreflightFailed(f"the endpoint {base} does not answer ({type(exc).__name__}: "
                              f"{clip_words(str(exc), 200)})") \
            from None
    if not listed:
        return facts
    if status in (401, 403):
        raise PreflightFailed(f"the endpoint {base} refused the key (HTTP {status} on /models)")
    if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
        facts.models = [str(m.get("id"))[:200] for m in body["data"][:1000] if isinstance(m, dict)]
        if facts.models and served not in facts.models:
            listed = ", ".join(facts.models[:10]) + (" ..." if len(facts.models) > 10 else "")
            raise PreflightFailed(f"the endpoint {base} does not serve '{served}' (it serves: {listed})")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    try:  # vLLM's own /version; other servers may not have it
        status, body = await _get_json(session, f"{root}/version")
        if status == 200 and isinstance(body, dict) and isinstance(body.get("version"), str):
            facts.version = body["version"][:100]
    except (asyncio.TimeoutError, aiohttp.ClientError):
        pass
    return facts


async def _check(endpoint: Endpoint, served: str, body: dict, policy: RetryPolicy,
                 listed: bool = True) -> tuple[ServerFacts, Reply]:
    async with make_session(endpoint) as session:
        facts = await _facts(session, endpoint, served, listed)
        reply = await request(session, endpoint, body, policy, random.Random(0))
    return facts, reply


def preflight(profile: ModelProfile, endpoint: Endpoint, served: str, body: dict,
              policy: RetryPolicy) -> tuple[ServerFacts, Reply]:
    """Facts about the server and the reply to `body`; PreflightFailed says why the model cannot run."""
    problem = key_problem(profile)
    if problem:
        raise PreflightFailed(problem)
    quick = RetryPolicy(max_attempts=min(policy.max_attempts, 3), max_total_s=min(policy.max_total_s, 120.0),
                        base_delay_s=policy.base_delay_s, max_delay_s=min(policy.max_delay_s, 10.0))
    facts, reply = asyncio.run(_check(endpoint, served, body, quick, listed=profile.provider != "anthropic"))
    if not reply.ok:
        hint = ""
        if reply.status in (401, 403) and profile.api_key_env:
            hint = f" (check {profile.api_key_env})"
        raise PreflightFailed(f"the first request failed after {reply.attempts} attempt(s): {reply.message[:400]}"
                              f"{hint}", reply)
    return facts, reply
