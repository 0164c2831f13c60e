"""Fixtures of the creditguard-langchain tests.

Unit tests run LangChain's own fake chat models (``GenericFakeChatModel``) under
a guard whose balance is a :class:`~creditguard.sources.FixedBudget` (no I/O).
End-to-end tests run ``ChatOpenAI`` against the loopback :class:`FakeProvider`,
which serves OpenRouter's chat completions (with ``usage.cost``) and key endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import Field, SecretStr

from creditguard import BudgetGuard, Decision, Policy
from creditguard.sources import FixedBudget
from creditguard.testing import FakeProvider

SECRET = "LCTESTSECRET"
"""Part of every key: it must never show up in a log line or an exception."""

EXPENSIVE = "openai/gpt-4o"
CHEAP = "openai/gpt-4o-mini"
POLICY = Policy(warn_below=5.0, downgrade_below=2.0, refuse_below=0.5, downgrade={EXPENSIVE: CHEAP})
# a budget (USD) that lands each tier of POLICY (estimate 0)
BUDGETS = {"allow": 100.0, "warn": 4.0, "downgrade": 1.0, "refuse": 0.2}
KEYS = {tier: f"sk-or-v1-{SECRET}-{tier.upper()}-0123456789abcdef" for tier in BUDGETS}
PRICES = {
    EXPENSIVE: {"prompt": 0.001, "completion": 0.002},
    CHEAP: {"prompt": 0.0001, "completion": 0.0002},
}
COST = {EXPENSIVE: 0.0123, CHEAP: 0.0017}
"""What the fake provider charges (and reports as ``usage.cost``) per call."""
USAGE: UsageMetadata = {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
"""Token usage the fake chat models report."""
PROMPT = "Say hi. Grüße, 世界 ✓"
TIMEOUT = 5.0


class ProviderError(RuntimeError):
    """A provider's error answer, as SDKs raise it (with its HTTP status): the call
    was not billed, so the guard releases its hold."""

    status_code = 500


class Named(GenericFakeChatModel):
    """LangChain's generic fake chat model with a model name (LangChain reports
    it as the run's ``ls_model_name``), a record of the calls it answered (their
    keyword arguments), and token usage in its last streamed chunk."""

    model: str = EXPENSIVE
    calls: list[dict[str, Any]] = Field(default_factory=list)
    fail: bool = False
    usage: bool = True

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(kwargs)
        if self.fail:
            raise ProviderError("the model broke")
        return super()._generate(messages, stop, run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from super()._stream(messages, stop, run_manager, **kwargs)
        if self.usage:  # as OpenAI-style APIs do: the usage last, in a chunk of its own
            yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=USAGE))


def named(model: str, text: str | None = None, *, usage: bool = True, fail: bool = False) -> Named:
    """A fake chat model answering ``text`` (default: its model's name) every time."""
    reply = AIMessage(
        content=text or f"reply from {model}", usage_metadata=USAGE if usage else None
    )

    def replies() -> Iterator[AIMessage]:
        while True:
            yield reply.model_copy(deep=True)

    return Named(model=model, messages=replies(), fail=fail, usage=usage)


def budget_guard(
    usd: float,
    decisions: list[Decision] | None = None,
    *,
    per_credential: bool = False,
    **kwargs: Any,
) -> tuple[BudgetGuard, FixedBudget]:
    """A guard over a budget of ``usd`` that recorded spend draws down (one per
    credential with ``per_credential``)."""
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


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, f"an API key leaked into: {text[:300]!r}"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    """The loopback fake provider: one key per tier of POLICY (as the key's limit)."""
    with FakeProvider() as provider:
        for tier, usd in BUDGETS.items():
            provider.add_key(KEYS[tier], limit=usd)
        provider.prices.update(COST)
        yield provider


ChatFactory = Callable[..., ChatOpenAI]


@pytest.fixture
async def chat(fake: FakeProvider) -> AsyncIterator[ChatFactory]:
    """``chat(model, tier="allow", **options)``: a ChatOpenAI on the fake provider,
    with plain HTTP clients of its own (closed after the test).
    ``http_client=``/``http_async_client=`` override them."""
    opened: list[httpx.Client | httpx.AsyncClient] = []

    def make(model: str = EXPENSIVE, tier: str = "allow", **options: Any) -> ChatOpenAI:
        if "http_client" not in options:
            options["http_client"] = httpx.Client(transport=httpx.HTTPTransport(verify=False))
        if "http_async_client" not in options:
            options["http_async_client"] = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(verify=False)
            )
        opened.extend((options["http_client"], options["http_async_client"]))
        options.setdefault("max_retries", 0)
        return ChatOpenAI(
            model=model,
            base_url=fake.openrouter_base_url,
            api_key=SecretStr(KEYS[tier]),
            timeout=TIMEOUT,
            **options,
        )

    yield make
    for client in opened:
        if isinstance(client, httpx.AsyncClient):
            await client.aclose()
        else:
            client.close()
