"""langchain-openai's ChatOpenAI against the loopback fake provider (OpenRouter's
API): the handler refuses before any HTTP request and settles OpenRouter's
reported cost; GuardedChatModel sends a downgraded call with the cheaper model;
under ``guard.client()`` a stream's cost is recorded although LangChain drops it.

Each call is judged on the key it carries: the guard's source is
``OpenRouterKey()`` with no key of its own, and the hooks get the user's key as
``credential``. The fake holds one key per policy tier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from conftest import (
    BUDGETS,
    CHEAP,
    COST,
    EXPENSIVE,
    KEYS,
    PRICES,
    PROMPT,
    TIMEOUT,
    ChatFactory,
    assert_no_secret,
)
from langchain_calls import ASYNC, MODES, STREAMS, call, every_mode
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, SecretStr

from creditguard import BudgetGuard, CreditsExhausted, Decision
from creditguard.costs import Price
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider
from creditguard_langchain import (
    AsyncCreditGuardCallbackHandler,
    CreditGuardCallbackHandler,
    GuardedChatModel,
)

Handler = CreditGuardCallbackHandler | AsyncCreditGuardCallbackHandler

handlers_and_modes = pytest.mark.parametrize(
    ("handler_cls", "mode"),
    [(CreditGuardCallbackHandler, m) for m in MODES]
    + [(AsyncCreditGuardCallbackHandler, m) for m in ASYNC],
)


@pytest.fixture
async def guard(fake: FakeProvider, decisions: list[Decision]) -> AsyncIterator[BudgetGuard]:
    from conftest import POLICY

    g = BudgetGuard(
        OpenRouterKey(
            base_url=fake.openrouter_base_url,
            timeout=TIMEOUT,
            transport=httpx.HTTPTransport(verify=False),
        ),
        POLICY,
        estimate=0.0,
        pricing=PRICES,
        on_decision=decisions.append,
    )
    yield g
    await g.aclose()


def left(guard: BudgetGuard, tier: str) -> float:
    """What the guard believes the tier's key has left (its cached view)."""
    balance = guard.check(credential=KEYS[tier]).balance
    assert balance is not None
    return balance.remaining


# -- the callback handler -----------------------------------------------------------


@handlers_and_modes
async def test_handler_refuses_with_no_http_request(
    fake: FakeProvider,
    guard: BudgetGuard,
    chat: ChatFactory,
    decisions: list[Decision],
    handler_cls: type[Handler],
    mode: str,
) -> None:
    handler = handler_cls(guard, credential=KEYS["refuse"])
    llm = chat(EXPENSIVE, "refuse", max_retries=2)
    with pytest.raises(CreditsExhausted) as info:
        await call(llm, mode, PROMPT, {"callbacks": [handler]})
    assert fake.count("chat") == 0  # nothing reached the provider
    assert [d.action for d in decisions] == ["refuse"]
    assert handler.in_flight == 0
    assert_no_secret(str(info.value), repr(info.value))


@handlers_and_modes
async def test_handler_settles_openrouters_cost(
    fake: FakeProvider,
    guard: BudgetGuard,
    chat: ChatFactory,
    decisions: list[Decision],
    handler_cls: type[Handler],
    mode: str,
) -> None:
    handler = handler_cls(guard, credential=KEYS["allow"])
    # stream_usage: the usage event is asked for and its tokens reach LangChain
    # (its cost does not: when streaming, tokens x prices stand in for it)
    llm = chat(EXPENSIVE, "allow", stream_usage=True)
    message = await call(llm, mode, PROMPT, {"callbacks": [handler]})
    assert message.content == fake.reply_text
    assert [r.model for r in fake.requests if r.endpoint == "chat"] == [EXPENSIVE]
    if mode in STREAMS:
        usage = message.usage_metadata
        assert usage is not None
        cost = Price(**PRICES[EXPENSIVE]).of(usage["input_tokens"], usage["output_tokens"])
    else:  # llm_output["token_usage"]["cost"], as OpenRouter reports it
        cost = COST[EXPENSIVE]
    assert left(guard, "allow") == pytest.approx(BUDGETS["allow"] - cost)
    assert guard.ledger.reserved(KEYS["allow"]) == 0
    assert handler.in_flight == 0


@handlers_and_modes
async def test_handler_lets_a_downgraded_call_go_as_asked(
    fake: FakeProvider,
    guard: BudgetGuard,
    chat: ChatFactory,
    decisions: list[Decision],
    caplog: pytest.LogCaptureFixture,
    handler_cls: type[Handler],
    mode: str,
) -> None:
    handler = handler_cls(guard, credential=KEYS["downgrade"])
    await call(chat(EXPENSIVE, "downgrade"), mode, PROMPT, {"callbacks": [handler]})
    assert [d.action for d in decisions] == ["downgrade"]
    assert fake.requests[-1].model == EXPENSIVE  # a callback cannot change the model
    assert "not applied: a callback handler cannot change the model" in caplog.text


@handlers_and_modes
async def test_handler_releases_on_a_provider_error(
    fake: FakeProvider,
    guard: BudgetGuard,
    chat: ChatFactory,
    handler_cls: type[Handler],
    mode: str,
) -> None:
    handler = handler_cls(guard, credential=KEYS["allow"], estimate=0.5)
    fake.fault("chat", status=500)
    with pytest.raises(openai.InternalServerError):
        await call(chat(EXPENSIVE, "allow"), mode, PROMPT, {"callbacks": [handler]})
    assert fake.count("chat") == 1
    assert guard.ledger.reserved(KEYS["allow"]) == 0
    assert left(guard, "allow") == BUDGETS["allow"]  # nothing charged
    assert handler.in_flight == 0


# -- GuardedChatModel ---------------------------------------------------------------


def guarded(guard: BudgetGuard, chat: ChatFactory, tier: str) -> GuardedChatModel:
    return GuardedChatModel(
        guard,
        {EXPENSIVE: chat(EXPENSIVE, tier), CHEAP: chat(CHEAP, tier)},
        credential=KEYS[tier],
    )


@every_mode
async def test_guarded_downgrade_reaches_the_provider_with_the_cheaper_model(
    fake: FakeProvider,
    guard: BudgetGuard,
    chat: ChatFactory,
    decisions: list[Decision],
    mode: str,
) -> None:
    message = await call(guarded(guard, chat, "downgrade"), mode, PROMPT)
    assert message.content == fake.reply_text
    assert fake.count("chat") == 1
    assert fake.requests[-1].model == CHEAP
    assert [(d.action, d.model) for d in decisions] == [("downgrade", CHEAP)]
    if mode not in STREAMS:  # OpenRouter's reported cost of the cheaper call
        assert message.response_metadata["model_name"] == CHEAP
        assert left(guard, "downgrade") == pytest.approx(BUDGETS["downgrade"] - COST[CHEAP])


@every_mode
async def test_guarded_allow_runs_the_requested_model(
    fake: FakeProvider, guard: BudgetGuard, chat: ChatFactory, mode: str
) -> None:
    await call(guarded(guard, chat, "allow"), mode, PROMPT)
    assert [r.model for r in fake.requests if r.endpoint == "chat"] == [EXPENSIVE]


@every_mode
async def test_guarded_refuse_makes_no_http_request(
    fake: FakeProvider, guard: BudgetGuard, chat: ChatFactory, mode: str
) -> None:
    with pytest.raises(CreditsExhausted):
        await call(guarded(guard, chat, "refuse"), mode, PROMPT)
    assert fake.count("chat") == 0
    assert guard.ledger.reserved(KEYS["refuse"]) == 0


async def test_guarded_tools_reach_the_cheaper_model(
    fake: FakeProvider, guard: BudgetGuard, chat: ChatFactory
) -> None:
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    model = guarded(guard, chat, "downgrade").bind_tools([weather])
    await model.ainvoke(PROMPT)
    sent = fake.requests[-1]
    assert sent.model == CHEAP
    assert [t["function"]["name"] for t in sent.json["tools"]] == ["weather"]


# -- the plain route: ChatOpenAI over guard.client() --------------------------------


@pytest.mark.parametrize("mode", STREAMS)
async def test_the_transport_records_a_streams_cost_langchain_drops(
    fake: FakeProvider, guard: BudgetGuard, mode: str
) -> None:
    http = guard.client(transport=httpx.HTTPTransport(verify=False))
    ahttp = guard.async_client(transport=httpx.AsyncHTTPTransport(verify=False))
    try:
        llm = ChatOpenAI(
            model=EXPENSIVE,
            base_url=fake.openrouter_base_url,
            api_key=SecretStr(KEYS["allow"]),
            http_client=http,
            http_async_client=ahttp,
            max_retries=0,
            timeout=TIMEOUT,
            stream_usage=True,
        )
        message = await call(llm, mode, PROMPT)
    finally:
        http.close()
        await ahttp.aclose()
    assert message.content == fake.reply_text
    # LangChain keeps the tokens of OpenRouter's last event, not its cost ...
    assert message.usage_metadata is not None
    assert "cost" not in str(message.response_metadata)
    assert "cost" not in str(message.usage_metadata)
    # ... which the transport saw pass: exactly what the provider charged
    assert fake.key(KEYS["allow"]).usage == COST[EXPENSIVE]
    assert left(guard, "allow") == pytest.approx(BUDGETS["allow"] - COST[EXPENSIVE])
    assert guard.ledger.reserved(KEYS["allow"]) == 0


async def test_guarded_structured_output_asks_the_cheaper_model(
    fake: FakeProvider, guard: BudgetGuard, chat: ChatFactory
) -> None:
    class Greeting(BaseModel):
        """A greeting."""

        text: str

    model = guarded(guard, chat, "downgrade").with_structured_output(Greeting)
    model.invoke(PROMPT)  # the fake answers text, not a tool call: no object comes back
    sent = fake.requests[-1]
    assert sent.model == CHEAP
    assert [t["function"]["name"] for t in sent.json["tools"]] == ["Greeting"]
    assert sent.json["tool_choice"] == "required"
