"""CreditGuardMiddleware in langchain 1.x ``create_agent``: each model call is
judged; refuse raises before the model runs, downgrade swaps the request's model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import (
    CHEAP,
    EXPENSIVE,
    KEYS,
    POLICY,
    PRICES,
    PROMPT,
    SECRET,
    TIMEOUT,
    USAGE,
    ChatFactory,
    Named,
    budget_guard,
    named,
    spent,
)
from langchain.agents import create_agent
from langchain_core.messages import AIMessage

from creditguard import BudgetGuard, CreditsExhausted, Decision
from creditguard.costs import Price
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider
from creditguard_langchain import CreditGuardCallbackHandler, CreditGuardMiddleware

modes = pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream"])


async def run(agent: Any, mode: str, config: Any = None) -> AIMessage:
    """Run ``agent`` once on PROMPT; its last message."""
    state = {"messages": [{"role": "user", "content": PROMPT}]}
    if mode == "invoke":
        result = agent.invoke(state, config)
    elif mode == "ainvoke":
        result = await agent.ainvoke(state, config)
    elif mode == "stream":
        result = None
        for result in agent.stream(state, config, stream_mode="values"):  # noqa: B007
            pass
    else:
        result = None
        async for result in agent.astream(state, config, stream_mode="values"):  # noqa: B007
            pass
    assert result is not None
    message = result["messages"][-1]
    assert isinstance(message, AIMessage)
    return message


def usage_cost(model: str) -> float:
    return Price(**PRICES[model]).of(USAGE["input_tokens"], USAGE["output_tokens"])


@modes
async def test_allow(mode: str, decisions: list[Decision]) -> None:
    guard, source = budget_guard(100.0, decisions)
    rich, poor = named(EXPENSIVE), named(CHEAP)
    agent = create_agent(rich, middleware=[CreditGuardMiddleware(guard, {CHEAP: poor})])
    message = await run(agent, mode)
    assert message.content == f"reply from {EXPENSIVE}"
    assert (len(rich.calls), len(poor.calls)) == (1, 0)
    assert [(d.action, d.requested_model) for d in decisions] == [("allow", EXPENSIVE)]
    assert spent(source) == pytest.approx(usage_cost(EXPENSIVE))
    assert guard.ledger.reserved(None) == 0


@modes
async def test_downgrade_overrides_the_requests_model(mode: str, decisions: list[Decision]) -> None:
    guard, source = budget_guard(1.0, decisions)
    rich, poor = named(EXPENSIVE), named(CHEAP)
    agent = create_agent(rich, middleware=[CreditGuardMiddleware(guard, {CHEAP: poor})])
    message = await run(agent, mode)
    assert message.content == f"reply from {CHEAP}"
    assert (len(rich.calls), len(poor.calls)) == (0, 1)
    assert [(d.action, d.model) for d in decisions] == [("downgrade", CHEAP)]
    assert spent(source) == pytest.approx(usage_cost(CHEAP))


@modes
async def test_refuse_raises_before_the_model_runs(mode: str) -> None:
    guard, _ = budget_guard(0.2)
    rich = named(EXPENSIVE)
    agent = create_agent(rich, middleware=[CreditGuardMiddleware(guard)])
    with pytest.raises(CreditsExhausted) as info:
        await run(agent, mode)
    assert info.value.decision.action == "refuse"
    assert rich.calls == []
    assert guard.ledger.reserved(None) == 0


@modes
async def test_an_error_releases_the_hold(mode: str) -> None:
    guard, source = budget_guard(100.0)
    broken = named(EXPENSIVE, fail=True)
    agent = create_agent(broken, middleware=[CreditGuardMiddleware(guard, estimate=0.5)])
    with pytest.raises(RuntimeError, match="the model broke"):
        await run(agent, mode)
    assert guard.ledger.reserved(None) == 0
    assert spent(source) == 0


async def test_models_from_a_function_and_no_model_for_a_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, _ = budget_guard(1.0)
    made: list[str] = []

    def make(name: str) -> Named | None:
        made.append(name)
        return None  # no cheaper model after all

    rich = named(EXPENSIVE)
    agent = create_agent(rich, middleware=[CreditGuardMiddleware(guard, make)])
    assert (await run(agent, "invoke")).content == f"reply from {EXPENSIVE}"
    assert (await run(agent, "ainvoke")).content == f"reply from {EXPENSIVE}"
    assert made == [CHEAP]
    assert f"downgrade to {CHEAP} not applied" in caplog.text


async def test_a_handler_on_the_same_agent_leaves_its_calls_alone(
    decisions: list[Decision],
) -> None:
    guard, source = budget_guard(100.0, decisions)
    handler = CreditGuardCallbackHandler(guard)
    agent = create_agent(named(EXPENSIVE), middleware=[CreditGuardMiddleware(guard)])
    for mode in ("invoke", "ainvoke"):
        await run(agent, mode, {"callbacks": [handler]})
    assert [d.action for d in decisions] == ["allow", "allow"]  # judged once each
    assert handler.in_flight == 0
    assert spent(source) == pytest.approx(2 * usage_cost(EXPENSIVE))


def test_the_credential_stays_hidden() -> None:
    guard, _ = budget_guard(100.0)
    assert SECRET not in repr(CreditGuardMiddleware(guard, credential=KEYS["allow"]))


# -- ChatOpenAI against the loopback fake provider ----------------------------------


@pytest.fixture
async def guard(fake: FakeProvider) -> AsyncIterator[BudgetGuard]:
    g = BudgetGuard(
        OpenRouterKey(
            base_url=fake.openrouter_base_url,
            timeout=TIMEOUT,
            transport=httpx.HTTPTransport(verify=False),
        ),
        POLICY,
        estimate=0.0,
    )
    yield g
    await g.aclose()


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_chatopenai_downgrade_reaches_the_provider_with_the_cheaper_model(
    fake: FakeProvider, guard: BudgetGuard, chat: ChatFactory, mode: str
) -> None:
    middleware = CreditGuardMiddleware(
        guard, {CHEAP: chat(CHEAP, "downgrade")}, credential=KEYS["downgrade"]
    )
    agent = create_agent(chat(EXPENSIVE, "downgrade"), middleware=[middleware])
    message = await run(agent, mode)
    assert message.content == fake.reply_text
    assert [r.model for r in fake.requests if r.endpoint == "chat"] == [CHEAP]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_chatopenai_refused_makes_no_http_request(
    fake: FakeProvider, guard: BudgetGuard, chat: ChatFactory, mode: str
) -> None:
    middleware = CreditGuardMiddleware(guard, credential=KEYS["refuse"])
    agent = create_agent(chat(EXPENSIVE, "refuse"), middleware=[middleware])
    with pytest.raises(CreditsExhausted):
        await run(agent, mode)
    assert fake.count("chat") == 0
