"""Shared pieces of the real-SDK tests (openai, openrouter, langchain-openai).

Every SDK talks to the loopback :class:`FakeProvider` only. The guard judges each call
on the balance of the key the call carries (``OpenRouterKey()`` with no key of its
own), so one fake holds one key per policy tier and a test picks its tier by key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest

import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, Decision, Policy
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider, RecordedRequest

SECRET = "SDKTESTSECRET"
"""Part of every fake key: it must never show up in an exception or a log line."""

EXPENSIVE = "openai/gpt-4o"
CHEAP = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hi. Grüße, 世界 ✓"}]  # non-ASCII on purpose

POLICY = Policy(
    warn_below=5.0,
    downgrade_below=2.0,
    refuse_below=0.5,
    downgrade={EXPENSIVE: CHEAP},
)
# the key's own limit (USD) that lands each tier of POLICY (estimate=0.0)
LIMITS = {"allow": 100.0, "warn": 4.0, "downgrade": 1.0, "refuse": 0.2}
KEYS = {tier: f"sk-or-v1-{SECRET}-{tier.upper()}-0123456789abcdef" for tier in LIMITS}

# short timeouts everywhere: the fake answers in milliseconds
TIMEOUT = 5.0


def running_fake() -> Iterator[FakeProvider]:
    """Body of each test module's ``fake`` fixture: a running fake provider with one
    key per tier of POLICY."""
    with FakeProvider() as provider:
        for tier, limit in LIMITS.items():
            provider.add_key(KEYS[tier], limit=limit)
        yield provider
        gate = provider.stream_gate
        if gate is not None:
            gate.set()


def debug_logs_never_show_a_key(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Body of each test module's autouse fixture: DEBUG logs are captured during the
    test, and none (message or traceback) may contain a key."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    # caplog.text only holds the current phase (teardown, here): read the call's records
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            assert_no_secret(formatter.format(record))


def make_guard(fake: FakeProvider, decisions: list[Decision] | None = None) -> BudgetGuard:
    """The guard under test; ``decisions`` collects what ``on_decision`` reports."""
    return BudgetGuard(
        OpenRouterKey(
            base_url=fake.openrouter_base_url,
            timeout=TIMEOUT,
            transport=httpx.HTTPTransport(verify=False),  # see sync_http()
        ),
        POLICY,
        estimate=0.0,
        on_decision=None if decisions is None else decisions.append,
    )


# A default inner transport builds a TLS context (~30 ms of CA loading) per client; the
# fake is plain http on 127.0.0.1, so most tests give the guard's client an inner
# transport without one. ``default=True`` keeps the one-liner exactly as users write it.


def sync_http(guard: BudgetGuard, stack: str = "httpx", *, default: bool = False) -> Any:
    """``guard.client()`` (httpx) or ``creditguard.httpx2.client(guard)``."""
    if stack == "httpx":
        if default:
            return guard.client()
        return guard.client(transport=httpx.HTTPTransport(verify=False))
    if default:
        return cg2.client(guard)
    return cg2.client(guard, transport=httpx2.HTTPTransport(verify=False))


def async_http(guard: BudgetGuard, stack: str = "httpx", *, default: bool = False) -> Any:
    """``guard.async_client()`` (httpx) or ``creditguard.httpx2.async_client(guard)``."""
    if stack == "httpx":
        if default:
            return guard.async_client()
        return guard.async_client(transport=httpx.AsyncHTTPTransport(verify=False))
    if default:
        return cg2.async_client(guard)
    return cg2.async_client(guard, transport=httpx2.AsyncHTTPTransport(verify=False))


def chat_requests(fake: FakeProvider) -> list[RecordedRequest]:
    """The generation requests the fake server received."""
    return [r for r in fake.requests if r.endpoint == "chat"]


def without_model(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict)
    return {k: v for k, v in body.items() if k != "model"}


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, f"an API key leaked into: {text[:300]!r}"


def assert_exception_hides_key(exc: BaseException) -> None:
    """Neither the exception nor anything chained to it shows a key."""
    seen: BaseException | None = exc
    while seen is not None:
        assert_no_secret(str(seen), repr(seen))
        seen = seen.__cause__ or seen.__context__
