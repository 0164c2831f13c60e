"""The guard transport under langchain-openai's ``ChatOpenAI`` (the plain route of
DESIGN's LangChain section): ``ChatOpenAI(http_client=guard.client(),
http_async_client=guard.async_client())``, against the loopback fake.

ChatOpenAI wraps the openai SDK; it closes neither client, so the tests do. With
``include_response_headers=True`` the response headers (and so
``x-creditguard-decision``) land in ``response_metadata["headers"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from sdk_helpers import (
    CHEAP,
    EXPENSIVE,
    KEYS,
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


def _chat(fake: FakeProvider, tier: str, http: Any, ahttp: Any, *, max_retries: int) -> ChatOpenAI:
    return ChatOpenAI(
        model=EXPENSIVE,
        base_url=fake.openrouter_base_url,
        api_key=KEYS[tier],  # type: ignore[arg-type]
        http_client=http,
        http_async_client=ahttp,
        max_retries=max_retries,
        timeout=TIMEOUT,
        max_tokens=5,  # type: ignore[call-arg]
        temperature=0.25,
        include_response_headers=True,
    )


@contextlib.contextmanager
def chat_model(
    fake: FakeProvider,
    guard: BudgetGuard,
    tier: str,
    *,
    max_retries: int = 0,
    default: bool = False,
) -> Iterator[ChatOpenAI]:
    # the async client is never used by sync calls: it holds no connection to close
    unused = async_http(guard, default=default)
    with sync_http(guard, default=default) as http:
        yield _chat(fake, tier, http, unused, max_retries=max_retries)


@contextlib.asynccontextmanager
async def async_chat_model(
    fake: FakeProvider,
    guard: BudgetGuard,
    tier: str,
    *,
    max_retries: int = 0,
    default: bool = False,
) -> AsyncIterator[ChatOpenAI]:
    with sync_http(guard, default=default) as http:
        async with async_http(guard, default=default) as ahttp:
            yield _chat(fake, tier, http, ahttp, max_retries=max_retries)


PROMPT = "Say hi. Grüße, 世界 ✓"


def ask(llm: ChatOpenAI, *, stream: bool) -> BaseMessage:
    if stream:
        chunks = list(llm.stream(PROMPT))
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        return merged
    return llm.invoke(PROMPT)


async def aask(llm: ChatOpenAI, *, stream: bool) -> BaseMessage:
    if stream:
        chunks = [chunk async for chunk in llm.astream(PROMPT)]
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        return merged
    return await llm.ainvoke(PROMPT)


def decision_of(message: BaseMessage) -> str:
    return str(message.response_metadata["headers"]["x-creditguard-decision"])


stream_modes = pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])


# -- allow ------------------------------------------------------------------------------


@stream_modes
def test_allow_sync(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    # exactly as users write it: http_client=guard.client(), http_async_client=...
    with chat_model(fake, guard, "allow", default=True) as llm:
        message = ask(llm, stream=stream)
    assert isinstance(message, AIMessage)
    assert message.content == fake.reply_text
    assert decision_of(message) == "allow"
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]
    assert without_model(fake.requests[-1].json) == {
        "messages": [{"content": PROMPT, "role": "user"}],
        "max_completion_tokens": 5,  # ChatOpenAI's name for max_tokens
        "temperature": 0.25,
        "stream": stream,
    }


@stream_modes
async def test_allow_async(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    async with async_chat_model(fake, guard, "allow", default=True) as llm:
        message = await aask(llm, stream=stream)
    assert message.content == fake.reply_text
    assert decision_of(message) == "allow"
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]


# -- downgrade --------------------------------------------------------------------------


def _check_downgrade(fake: FakeProvider, message: BaseMessage, stream: bool) -> None:
    assert message.content == fake.reply_text
    assert decision_of(message) == "downgrade"
    assert message.response_metadata["headers"]["x-creditguard-model-requested"] == EXPENSIVE
    if not stream:  # LangChain reports the model the provider answered for
        assert message.response_metadata["model_name"] == CHEAP
    allowed, downgraded = chat_requests(fake)
    assert (allowed.model, downgraded.model) == (EXPENSIVE, CHEAP)
    assert fake.requests[-1].model == CHEAP
    assert without_model(downgraded.json) == without_model(allowed.json)


@stream_modes
def test_downgrade_sync(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    with chat_model(fake, guard, "allow") as rich, chat_model(fake, guard, "downgrade") as poor:
        ask(rich, stream=stream)
        message = ask(poor, stream=stream)
    _check_downgrade(fake, message, stream)


@stream_modes
async def test_downgrade_async(fake: FakeProvider, guard: BudgetGuard, stream: bool) -> None:
    async with (
        async_chat_model(fake, guard, "allow") as rich,
        async_chat_model(fake, guard, "downgrade") as poor,
    ):
        await aask(rich, stream=stream)
        message = await aask(poor, stream=stream)
    _check_downgrade(fake, message, stream)


# -- refuse -----------------------------------------------------------------------------


def _check_refusal(
    fake: FakeProvider, decisions: list[Decision], exc: openai.APIStatusError
) -> None:
    assert exc.status_code == 402
    assert exc.response.headers["x-creditguard-decision"] == "refuse"
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "insufficient_credits"
    assert fake.count("chat") == 0  # nothing reached the provider
    assert [d.action for d in decisions] == ["refuse"]  # max_retries=2, yet no retry
    assert_exception_hides_key(exc)


@stream_modes
def test_refuse_sync(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stream: bool
) -> None:
    with (
        chat_model(fake, guard, "refuse", max_retries=2) as llm,
        pytest.raises(openai.APIStatusError) as info,
    ):
        ask(llm, stream=stream)
    _check_refusal(fake, decisions, info.value)


@stream_modes
async def test_refuse_async(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], stream: bool
) -> None:
    async with async_chat_model(fake, guard, "refuse", max_retries=2) as llm:
        with pytest.raises(openai.APIStatusError) as info:
            await aask(llm, stream=stream)
    _check_refusal(fake, decisions, info.value)
