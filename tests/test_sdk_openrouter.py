"""The guard transport under the real ``openrouter`` SDK (Speakeasy), against the fake.

The SDK takes httpx clients as ``client=`` and ``async_client=`` (it builds its own
default for whichever is not given, so tests give both and close both: the SDK never
closes a client it was given) and the API root as ``server_url=``. Chat is
``sdk.chat.send(...)`` / ``await sdk.chat.send_async(...)``; ``stream=True`` returns an
``EventStream`` / ``EventStreamAsync`` of ``ChatStreamChunk``. A 402 with a JSON body
raises ``openrouter.errors.PaymentRequiredResponseError``; the SDK retries only 5XX
(and sends no attempt number, so each retry is judged anew).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from openrouter import OpenRouter, errors
from openrouter.utils import BackoffStrategy, RetryConfig
from sdk_helpers import (
    CHEAP,
    EXPENSIVE,
    KEYS,
    MESSAGES,
    TIMEOUT,
    assert_exception_hides_key,
    async_http,
    chat_requests,
    debug_logs_never_show_a_key,
    make_guard,
    running_fake,
    sync_http,
    without_model,
)

from creditguard import BudgetGuard, Decision
from creditguard.testing import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    yield from running_fake()


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from debug_logs_never_show_a_key(caplog)


@pytest.fixture
def decisions() -> list[Decision]:
    return []


@pytest.fixture
def guard(fake: FakeProvider, decisions: list[Decision]) -> Iterator[BudgetGuard]:
    g = make_guard(fake, decisions)
    yield g
    g.close()


# retry 5XX fast: 1 ms backoff, 1 s overall
FAST_RETRIES = RetryConfig("backoff", BackoffStrategy(1, 5, 1.5, 1000), False)


def _sdk(
    fake: FakeProvider, guard: BudgetGuard, tier: str, default: bool
) -> tuple[OpenRouter, Any, Any]:
    http = sync_http(guard, default=default)
    ahttp = async_http(guard, default=default)
    sdk = OpenRouter(
        api_key=KEYS[tier],
        server_url=fake.openrouter_base_url,
        client=http,
        async_client=ahttp,
        retry_config=FAST_RETRIES,
        timeout_ms=int(TIMEOUT * 1000),
    )
    return sdk, http, ahttp


@contextlib.contextmanager
def openrouter_sdk(
    fake: FakeProvider, guard: BudgetGuard, tier: str, *, default: bool = False
) -> Iterator[OpenRouter]:
    # the async client is never used by sync calls: it holds no connection to close
    sdk, http, _unused = _sdk(fake, guard, tier, default)
    with http:
        yield sdk


@contextlib.asynccontextmanager
async def async_openrouter_sdk(
    fake: FakeProvider, guard: BudgetGuard, tier: str, *, default: bool = False
) -> AsyncIterator[OpenRouter]:
    sdk, http, ahttp = _sdk(fake, guard, tier, default)
    with http:
        async with ahttp:
            yield sdk


EXTRA: dict[str, Any] = {"max_tokens": 5, "temperature": 0.25, "user": "user-42"}


def send(sdk: OpenRouter, *, stream: bool) -> str:
    """One chat call; the answer's text."""
    if stream:
        with sdk.chat.send(model=EXPENSIVE, messages=MESSAGES, stream=True, **EXTRA) as events:
            return "".join(c.choices[0].delta.content or "" for c in events if c.choices)
    result = sdk.chat.send(model=EXPENSIVE, messages=MESSAGES, **EXTRA)
    return str(result.choices[0].message.content)


async def asend(sdk: OpenRouter, *, stream: bool) -> str:
    if stream:
        events = await sdk.chat.send_async(model=EXPENSIVE, messages=MESSAGES, stream=True, **EXTRA)
        async with events:
            parts = [c.choices[0].delta.content or "" async for c in events if c.choices]
        return "".join(parts)
    result = await sdk.chat.send_async(model=EXPENSIVE, messages=MESSAGES, **EXTRA)
    return str(result.choices[0].message.content)


def expected_text(fake: FakeProvider, stream: bool) -> str:
    return fake.reply_text


stream_modes = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


# -- allow ------------------------------------------------------------------------------


@stream_modes
def test_allow_sync(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    # exactly as users write it: client=guard.client(), async_client=guard.async_client()
    with openrouter_sdk(fake, guard, "allow", default=True) as sdk:
        assert send(sdk, stream=stream) == expected_text(fake, stream)
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]


@stream_modes
async def test_allow_async(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    async with async_openrouter_sdk(fake, guard, "allow", default=True) as sdk:
        assert await asend(sdk, stream=stream) == expected_text(fake, stream)
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]


def test_allow_labels_the_streamed_response(fake: FakeProvider, guard: BudgetGuard) -> None:
    with (
        openrouter_sdk(fake, guard, "allow") as sdk,
        sdk.chat.send(model=EXPENSIVE, messages=MESSAGES, stream=True) as events,
    ):
        chunks = list(events)
    assert events.response.headers["x-creditguard-decision"] == "allow"
    assert {c.model for c in chunks} == {EXPENSIVE}


# -- downgrade --------------------------------------------------------------------------


def _check_downgrade(fake: FakeProvider) -> None:
    allowed, downgraded = chat_requests(fake)
    assert (allowed.model, downgraded.model) == (EXPENSIVE, CHEAP)
    assert fake.requests[-1].model == CHEAP
    assert without_model(downgraded.json) == without_model(allowed.json)


@stream_modes
def test_downgrade_sync(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    with (
        openrouter_sdk(fake, guard, "allow") as rich,
        openrouter_sdk(fake, guard, "downgrade") as poor,
    ):
        send(rich, stream=stream)
        assert send(poor, stream=stream) == expected_text(fake, stream)
    _check_downgrade(fake)


@stream_modes
async def test_downgrade_async(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    async with (
        async_openrouter_sdk(fake, guard, "allow") as rich,
        async_openrouter_sdk(fake, guard, "downgrade") as poor,
    ):
        await asend(rich, stream=stream)
        assert await asend(poor, stream=stream) == expected_text(fake, stream)
    _check_downgrade(fake)


async def test_downgrade_labels_the_streamed_response(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    async with async_openrouter_sdk(fake, guard, "downgrade") as sdk:
        events = await sdk.chat.send_async(model=EXPENSIVE, messages=MESSAGES, stream=True)
        async with events:
            chunks = [c async for c in events]
    headers = events.response.headers
    assert headers["x-creditguard-decision"] == "downgrade"
    assert headers["x-creditguard-model-requested"] == EXPENSIVE
    assert {c.model for c in chunks} == {CHEAP}  # the fake answered for the cheaper model


# -- refuse -----------------------------------------------------------------------------


def _check_refusal(
    fake: FakeProvider, decisions: list[Decision], exc: errors.PaymentRequiredResponseError
) -> None:
    assert isinstance(exc, errors.OpenRouterError)
    assert exc.status_code == 402
    assert exc.data.error.code == 402
    assert "creditguard refused" in exc.message
    assert exc.headers["x-creditguard-decision"] == "refuse"
    assert exc.headers["x-should-retry"] == "false"
    body = json.loads(exc.body)
    assert body["error"]["type"] == "insufficient_credits"
    assert body["error"]["metadata"]["creditguard"]["model"] == EXPENSIVE
    assert fake.count("chat") == 0  # nothing reached the provider
    assert [d.action for d in decisions] == ["refuse"]  # and it was not retried
    assert_exception_hides_key(exc)


@stream_modes
def test_refuse_sync(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stream: bool
) -> None:
    with (
        openrouter_sdk(fake, guard, "refuse") as sdk,
        pytest.raises(errors.PaymentRequiredResponseError) as info,
    ):
        send(sdk, stream=stream)
    _check_refusal(fake, decisions, info.value)


@stream_modes
async def test_refuse_async(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stream: bool
) -> None:
    async with async_openrouter_sdk(fake, guard, "refuse") as sdk:
        with pytest.raises(errors.PaymentRequiredResponseError) as info:
            await asend(sdk, stream=stream)
    _check_refusal(fake, decisions, info.value)


# -- retries ----------------------------------------------------------------------------


def test_a_5xx_retry_is_downgraded_too_and_the_balance_is_fetched_once(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    fake.fault("chat", status=500, times=1)
    with openrouter_sdk(fake, guard, "downgrade") as sdk:
        assert send(sdk, stream=False) == fake.reply_text
    first, retry = chat_requests(fake)
    assert (first.model, retry.model) == (CHEAP, CHEAP)
    assert without_model(first.json) == without_model(retry.json)
    assert "x-stainless-retry-count" not in retry.headers
    assert fake.count("key") == 1
    # no attempt number to recognise a retry by: each attempt is judged (from the cache)
    assert {d.action for d in decisions} == {"downgrade"}


async def test_a_5xx_retry_of_a_stream_is_downgraded_too(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    fake.fault("chat", status=500, times=1)
    async with async_openrouter_sdk(fake, guard, "downgrade") as sdk:
        assert await asend(sdk, stream=True) == fake.reply_text
    assert [r.model for r in chat_requests(fake)] == [CHEAP, CHEAP]
    assert fake.count("key") == 1


# -- the fake provider and this SDK ------------------------------------------------------


def test_the_fake_answers_a_non_streamed_chat_the_sdk_can_parse(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    with openrouter_sdk(fake, guard, "allow") as sdk:
        result = sdk.chat.send(model=EXPENSIVE, messages=MESSAGES)
    assert result.choices[0].message.content == fake.reply_text
