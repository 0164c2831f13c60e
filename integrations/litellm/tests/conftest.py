"""Fixtures of the creditguard-litellm tests.

litellm runs against creditguard's loopback :class:`FakeProvider` (OpenRouter's
chat completions, with ``usage.cost``), under a guard whose balance is a
:class:`~creditguard.sources.FixedBudget` (no I/O). Nothing leaves 127.0.0.1:
litellm is told to use its bundled model cost map, and any other connection
fails the test that makes it.
"""

from __future__ import annotations

import os

# Before litellm is imported: its bundled cost map, not one fetched from the network.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import litellm
import openai
import pytest
from litellm.llms.custom_httpx.http_handler import HTTPHandler

from creditguard import BudgetGuard, Decision, Policy
from creditguard.sources import FixedBudget
from creditguard.testing import FakeProvider

# -- no network but the loopback ------------------------------------------------

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def _check(address: object) -> None:
    if isinstance(address, tuple) and address and address[0] not in _LOOPBACK:
        raise OSError(f"the tests may not leave the loopback: connect to {address[0]!r}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check(address)
    _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check(address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in (*_LOOPBACK, None, b"127.0.0.1", b"localhost"):
        raise OSError(f"the tests may not leave the loopback: resolve {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo

litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner on every error
# litellm's loggers write to stderr themselves, also from its logging threads after a
# test's output is captured: the records still reach pytest (and _no_key_in_logs).
for _name in ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router"):
    logging.getLogger(_name).handlers.clear()

# -- the scenario -----------------------------------------------------------------

SECRET = "LLMTESTSECRET"
"""Part of the key: it must never show up in a log line or an exception."""
KEY = f"sk-or-v1-{SECRET}-0123456789abcdef"

EXPENSIVE = "openai/gpt-4o"
CHEAP = "openai/gpt-4o-mini"
POLICY = Policy(warn_below=5.0, downgrade_below=2.0, refuse_below=0.5, downgrade={EXPENSIVE: CHEAP})
BUDGETS = {"allow": 100.0, "warn": 4.0, "downgrade": 1.0, "refuse": 0.2}
"""A budget (USD) that lands each tier of POLICY (estimate 0)."""
PRICES = {
    EXPENSIVE: {"prompt": 0.001, "completion": 0.002},
    CHEAP: {"prompt": 0.0001, "completion": 0.0002},
}
COST = {EXPENSIVE: 0.0123, CHEAP: 0.0017}
"""What the fake provider charges (and reports as ``usage.cost``) per call."""
MESSAGES = [{"role": "user", "content": "Say hi. Grüße, 世界 ✓"}]
TIMEOUT = 5.0


def budget_guard(
    usd: float,
    decisions: list[Decision] | None = None,
    *,
    per_credential: bool = False,
    **kwargs: Any,
) -> tuple[BudgetGuard, FixedBudget]:
    """A guard over a budget of ``usd`` that recorded spend draws down."""
    source = FixedBudget(usd, period=None, per_credential=per_credential)
    options: dict[str, Any] = {"estimate": 0.0, "pricing": PRICES}
    options.update(kwargs)
    guard = BudgetGuard(
        source, POLICY, on_decision=None if decisions is None else decisions.append, **options
    )
    return guard, source


def spent(source: FixedBudget, credential: str | None = None) -> float:
    """What the guard recorded as spent (the source is told every settled cost)."""
    used = source.fetch(credential).used
    assert used is not None
    return used


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, f"an API key leaked into: {text[:300]!r}"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """litellm runs its sync success callbacks in a thread of its own."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def await_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """litellm runs its async success callbacks in a task of their own."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture
def decisions() -> list[Decision]:
    return []


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            assert_no_secret(formatter.format(record))


@pytest.fixture(autouse=True)
def _sync_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """A sync litellm call asks for the main thread's event loop (its service
    logger: ``asyncio.get_event_loop()``), which makes one and leaves it open. In a
    sync test it gets this one, closed afterwards."""
    if asyncio.iscoroutinefunction(request.function):
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture(autouse=True)
def _litellm_state() -> Iterator[None]:
    """Each test starts with litellm's globals as it found them, and no cached
    SDK clients from another test (they hold the sessions of that test)."""
    saved = (
        litellm.client_session,
        litellm.aclient_session,
        list(litellm.callbacks),
        list(litellm.success_callback),
        list(litellm.failure_callback),
        list(litellm._async_success_callback),
        list(litellm._async_failure_callback),
    )
    _drop_cached_clients()
    yield
    litellm.client_session, litellm.aclient_session = saved[0], saved[1]
    litellm.callbacks[:] = saved[2]
    litellm.success_callback[:] = saved[3]
    litellm.failure_callback[:] = saved[4]
    litellm._async_success_callback[:] = saved[5]
    litellm._async_failure_callback[:] = saved[6]
    _drop_cached_clients()


def _drop_cached_clients() -> None:
    """Close the sync clients litellm cached during a test (their connections to
    the fake would be left to the garbage collector) and forget all of them."""
    cache = litellm.in_memory_llm_clients_cache
    for value in list(cache.cache_dict.values()):
        if isinstance(value, (HTTPHandler, openai.OpenAI)):
            value.close()
    cache.flush_cache()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """The loopback fake provider, with one key (no spending limit: the guard's
    FixedBudget decides)."""
    with FakeProvider() as provider:
        provider.add_key(KEY, credits=1000.0)
        provider.prices.update(COST)
        yield provider


@pytest.fixture
async def plain_sessions() -> AsyncIterator[tuple[httpx.Client, httpx.AsyncClient]]:
    """Unguarded httpx sessions for litellm (its default async transport is
    aiohttp, whose sessions outlive a test's event loop)."""
    client, aclient = httpx.Client(), httpx.AsyncClient()
    litellm.client_session, litellm.aclient_session = client, aclient
    yield client, aclient
    client.close()
    await aclient.aclose()


def call_options(fake: FakeProvider, model: str = EXPENSIVE, **options: Any) -> dict[str, Any]:
    """``litellm.completion`` keyword arguments for the OpenAI-compatible route to
    the fake OpenRouter (``openai/<model>``: litellm sends ``<model>``)."""
    options.setdefault("messages", MESSAGES)
    options.setdefault("timeout", TIMEOUT)
    return {"model": f"openai/{model}", "api_base": fake.openrouter_base_url, "api_key": KEY} | (
        options
    )
