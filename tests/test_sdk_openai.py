"""The guard transport under the real openai SDK (3.x), against the loopback fake.

openai 3.x accepts an ``httpx.Client`` (``guard.client()``) as well as an
``httpx2.Client`` (``creditguard.httpx2.client(guard)``, the stack it builds its own
clients on), so every test runs on both stacks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import openai._base_client
import pytest
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

import creditguard.httpx as cg1
import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, Decision
from creditguard.testing import FakeProvider

STACKS = ["httpx", "httpx2"]


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


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """openai sleeps 0.5 s before its first retry; these tests need not wait."""
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.001)


def sync_openai(
    fake: FakeProvider,
    guard: BudgetGuard,
    stack: str,
    tier: str,
    *,
    max_retries: int = 0,
    default: bool = False,
) -> openai.OpenAI:
    """An OpenAI client on the guard's transport; closing it closes the http client."""
    return openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS[tier],
        http_client=sync_http(guard, stack, default=default),
        max_retries=max_retries,
        timeout=TIMEOUT,
    )


def async_openai(
    fake: FakeProvider,
    guard: BudgetGuard,
    stack: str,
    tier: str,
    *,
    max_retries: int = 0,
    default: bool = False,
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS[tier],
        http_client=async_http(guard, stack, default=default),
        max_retries=max_retries,
        timeout=TIMEOUT,
    )


# the body's other members, which a downgrade must leave alone
EXTRA = {"max_tokens": 5, "temperature": 0.25, "user": "user-42", "metadata": {"k": "v"}}


def call(client: openai.OpenAI, *, stream: bool) -> tuple[str, Any]:
    """One chat call: the answer's text and the response headers."""
    if stream:
        with client.chat.completions.create(
            model=EXPENSIVE, messages=MESSAGES, stream=True, **EXTRA
        ) as chunks:
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return text, chunks.response.headers
    raw = client.chat.completions.with_raw_response.create(
        model=EXPENSIVE, messages=MESSAGES, **EXTRA
    )
    return raw.parse().choices[0].message.content or "", raw.headers


async def acall(client: openai.AsyncOpenAI, *, stream: bool) -> tuple[str, Any]:
    if stream:
        chunks = await client.chat.completions.create(
            model=EXPENSIVE, messages=MESSAGES, stream=True, **EXTRA
        )
        async with chunks:
            parts = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
        return "".join(parts), chunks.response.headers
    raw = await client.chat.completions.with_raw_response.create(
        model=EXPENSIVE, messages=MESSAGES, **EXTRA
    )
    return raw.parse().choices[0].message.content or "", raw.headers


stream_modes = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


# -- allow and warn ---------------------------------------------------------------------


@stream_modes
def test_allow_sync(fake: FakeProvider, guard: BudgetGuard, stack: str, stream: bool) -> None:
    # exactly as users write it: http_client=guard.client()
    with sync_openai(fake, guard, stack, "allow", default=True) as client:
        text, headers = call(client, stream=stream)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "allow"
    assert "x-creditguard-model-requested" not in headers
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]
    assert without_model(fake.requests[-1].json) == {
        "messages": MESSAGES,
        **EXTRA,
        **({"stream": True} if stream else {}),
    }


@stream_modes
async def test_allow_async(
    fake: FakeProvider, guard: BudgetGuard, stack: str, stream: bool
) -> None:
    async with async_openai(fake, guard, stack, "allow", default=True) as client:
        text, headers = await acall(client, stream=stream)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "allow"
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]


def test_warn_forwards_the_call_unchanged(
    fake: FakeProvider, guard: BudgetGuard, stack: str, caplog: pytest.LogCaptureFixture
) -> None:
    with sync_openai(fake, guard, stack, "warn") as client:
        text, headers = call(client, stream=False)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "warn"
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]
    assert any(r.levelname == "WARNING" and "warn" in r.getMessage() for r in caplog.records)


# -- downgrade --------------------------------------------------------------------------


@stream_modes
def test_downgrade_sync(fake: FakeProvider, guard: BudgetGuard, stack: str, stream: bool) -> None:
    with (
        sync_openai(fake, guard, stack, "allow") as rich,
        sync_openai(fake, guard, stack, "downgrade") as poor,
    ):
        call(rich, stream=stream)
        text, headers = call(poor, stream=stream)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "downgrade"
    assert headers["x-creditguard-model-requested"] == EXPENSIVE
    allowed, downgraded = chat_requests(fake)
    assert (allowed.model, downgraded.model) == (EXPENSIVE, CHEAP)
    assert fake.requests[-1].model == CHEAP
    # the same call made under the allow tier: everything but the model is the same
    assert without_model(downgraded.json) == without_model(allowed.json)


@stream_modes
async def test_downgrade_async(
    fake: FakeProvider, guard: BudgetGuard, stack: str, stream: bool
) -> None:
    async with (
        async_openai(fake, guard, stack, "allow") as rich,
        async_openai(fake, guard, stack, "downgrade") as poor,
    ):
        await acall(rich, stream=stream)
        text, headers = await acall(poor, stream=stream)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "downgrade"
    assert headers["x-creditguard-model-requested"] == EXPENSIVE
    allowed, downgraded = chat_requests(fake)
    assert (allowed.model, downgraded.model) == (EXPENSIVE, CHEAP)
    assert without_model(downgraded.json) == without_model(allowed.json)


class _Tap:
    """A transport that records the bodies passing through it (httpx or httpx2)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bodies: list[bytes] = []
        self.lengths: list[str | None] = []

    def handle_request(self, request: Any) -> Any:
        self.bodies.append(request.read())
        self.lengths.append(request.headers.get("content-length"))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _HttpxTap(_Tap, httpx.BaseTransport):
    pass


class _Httpx2Tap(_Tap, httpx2.BaseTransport):
    pass


def test_downgrade_rewrites_only_the_model_bytes(
    fake: FakeProvider, guard: BudgetGuard, stack: str
) -> None:
    """Byte for byte: what reaches the network is what the SDK sent, with only the
    model's value swapped and Content-Length fixed."""
    http: Any
    if stack == "httpx":
        inner = _HttpxTap(httpx.HTTPTransport(verify=False))
        outer = _HttpxTap(cg1.GuardTransport(guard, inner=inner))
        http = httpx.Client(transport=outer, timeout=TIMEOUT)
    else:
        inner = _Httpx2Tap(httpx2.HTTPTransport(verify=False))
        outer = _Httpx2Tap(cg2.GuardTransport(guard, inner=inner))
        http = httpx2.Client(transport=outer, timeout=TIMEOUT)
    with openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS["downgrade"],
        http_client=http,
        max_retries=0,
        timeout=TIMEOUT,
    ) as client:
        call(client, stream=False)
    [sent] = outer.bodies
    [forwarded] = inner.bodies
    assert sent.count(json.dumps(EXPENSIVE).encode()) == 1
    assert forwarded == sent.replace(json.dumps(EXPENSIVE).encode(), json.dumps(CHEAP).encode())
    assert inner.lengths == [str(len(forwarded))]
    assert fake.requests[-1].model == CHEAP


# -- refuse -----------------------------------------------------------------------------


def _check_refusal(
    fake: FakeProvider, decisions: list[Decision], exc: openai.APIStatusError
) -> None:
    assert exc.status_code == 402
    assert exc.response.headers["x-creditguard-decision"] == "refuse"
    assert exc.response.headers["x-should-retry"] == "false"
    # openai puts the `error` object of OpenRouter's shape in `.body`
    assert isinstance(exc.body, dict)
    assert exc.body["code"] == 402
    assert exc.body["type"] == "insufficient_credits"
    assert exc.body["metadata"]["creditguard"]["action"] == "refuse"
    assert exc.body["metadata"]["creditguard"]["model"] == EXPENSIVE
    assert "creditguard refused" in str(exc)
    # nothing reached the provider, and max_retries=2 did not retry the 402
    assert fake.count("chat") == 0
    assert chat_requests(fake) == []
    assert [d.action for d in decisions] == ["refuse"]
    assert_exception_hides_key(exc)


@stream_modes
def test_refuse_sync(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stack: str, stream: bool
) -> None:
    with (
        sync_openai(fake, guard, stack, "refuse", max_retries=2) as client,
        pytest.raises(openai.APIStatusError) as info,
    ):
        call(client, stream=stream)
    _check_refusal(fake, decisions, info.value)


@stream_modes
async def test_refuse_async(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stack: str, stream: bool
) -> None:
    async with async_openai(fake, guard, stack, "refuse", max_retries=2) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await acall(client, stream=stream)
    _check_refusal(fake, decisions, info.value)


def test_refusal_body_holds_no_balance_figures(fake: FakeProvider, guard: BudgetGuard) -> None:
    state = fake.key(KEYS["refuse"])
    assert state.limit is not None
    remaining = f"{state.limit - state.usage:g}"  # "0.2"
    with (
        sync_openai(fake, guard, "httpx", "refuse") as client,
        pytest.raises(openai.APIStatusError) as info,
    ):
        call(client, stream=False)
    body = json.dumps(info.value.body)
    assert "creditguard" in body
    # DESIGN: metadata.creditguard = {action, reason, model}, no balance figures
    assert remaining not in body
    assert "USD" not in body


def test_a_provider_402_marks_the_key_exhausted(
    fake: FakeProvider, guard: BudgetGuard, stack: str
) -> None:
    """The guard allowed on a cached balance, the provider said 402: openai raises the
    provider's error (no retry), and the next call is refused without the network."""
    with sync_openai(fake, guard, stack, "allow", max_retries=2) as client:
        call(client, stream=False)  # caches a healthy balance
        fake.set_key(KEYS["allow"], usage=100.0)  # spent elsewhere, behind the cache
        with pytest.raises(openai.APIStatusError) as provider:
            call(client, stream=False)
        assert provider.value.status_code == 402
        assert provider.value.response.headers["x-creditguard-decision"] == "allow"
        assert "Insufficient credits" in str(provider.value)
        assert fake.count("chat") == 2  # not retried
        with pytest.raises(openai.APIStatusError) as local:
            call(client, stream=False)
    assert local.value.response.headers["x-creditguard-decision"] == "refuse"
    assert fake.count("chat") == 2
    assert fake.count("key") == 1
    assert_exception_hides_key(provider.value)
    assert_exception_hides_key(local.value)


# -- retries ----------------------------------------------------------------------------


def _check_retried_downgrade(fake: FakeProvider, decisions: list[Decision]) -> None:
    first, retry = chat_requests(fake)
    assert (first.model, retry.model) == (CHEAP, CHEAP)
    assert without_model(first.json) == without_model(retry.json)
    assert first.headers["x-stainless-retry-count"] == "0"
    assert retry.headers["x-stainless-retry-count"] == "1"
    assert fake.count("key") == 1  # the source was asked once
    assert [d.action for d in decisions] == ["downgrade"]  # judged once, not per attempt


@pytest.mark.usefixtures("fast_retries")
def test_a_retry_is_rewritten_like_its_first_attempt_and_not_judged_again_sync(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stack: str
) -> None:
    fake.fault("chat", status=500, times=1)
    with sync_openai(fake, guard, stack, "downgrade", max_retries=2) as client:
        text, headers = call(client, stream=False)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "downgrade"
    _check_retried_downgrade(fake, decisions)


@pytest.mark.usefixtures("fast_retries")
async def test_a_retry_is_rewritten_like_its_first_attempt_and_not_judged_again_async(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stack: str
) -> None:
    fake.fault("chat", status=500, times=1)
    async with async_openai(fake, guard, stack, "downgrade", max_retries=2) as client:
        text, headers = await acall(client, stream=True)
    assert text == fake.reply_text
    assert headers["x-creditguard-decision"] == "downgrade"
    _check_retried_downgrade(fake, decisions)


# -- streaming is not buffered ----------------------------------------------------------

# The fake holds the stream after its first content chunk until the gate is set (or
# 10 s pass). A transport that buffered the body would deliver nothing before then.
FIRST_CHUNK_WITHIN = 3.0


def test_stream_chunks_reach_the_sdk_unbuffered_sync(
    fake: FakeProvider, guard: BudgetGuard, stack: str
) -> None:
    gate = fake.stream_gate = threading.Event()
    with sync_openai(fake, guard, stack, "downgrade") as client:
        start = time.monotonic()
        with client.chat.completions.create(
            model=EXPENSIVE, messages=MESSAGES, stream=True
        ) as chunks:
            it = iter(chunks)
            first = next(it)
            waited = time.monotonic() - start
            assert not gate.is_set()
            gate.set()
            rest = [c.choices[0].delta.content or "" for c in it if c.choices]
    assert waited < FIRST_CHUNK_WITHIN
    assert first.model == CHEAP
    assert (first.choices[0].delta.content or "") + "".join(rest) == fake.reply_text
    assert chunks.response.headers["x-creditguard-decision"] == "downgrade"


async def test_stream_chunks_reach_the_sdk_unbuffered_async(
    fake: FakeProvider, guard: BudgetGuard, stack: str
) -> None:
    gate = fake.stream_gate = threading.Event()
    async with async_openai(fake, guard, stack, "downgrade") as client:
        chunks = await asyncio.wait_for(
            client.chat.completions.create(model=EXPENSIVE, messages=MESSAGES, stream=True),
            FIRST_CHUNK_WITHIN,
        )
        async with chunks:
            it = chunks.__aiter__()
            first = await asyncio.wait_for(it.__anext__(), FIRST_CHUNK_WITHIN)
            assert not gate.is_set()
            gate.set()
            rest = [c.choices[0].delta.content or "" async for c in it if c.choices]
    assert first.model == CHEAP
    assert (first.choices[0].delta.content or "") + "".join(rest) == fake.reply_text
    assert chunks.response.headers["x-creditguard-decision"] == "downgrade"
