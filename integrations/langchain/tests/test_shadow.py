"""Shadow mode (``Policy(enforce=False)``) in every LangChain surface: the callback
handlers, GuardedChatModel and CreditGuardMiddleware decide, hold and charge as when
enforcing, but neither refuse nor swap the model."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import CHEAP, EXPENSIVE, POLICY, PRICES, USAGE, named, spent
from langchain.agents import create_agent
from langchain_calls import ASYNC, MODES, call

from creditguard import BudgetGuard, Decision
from creditguard.costs import Price
from creditguard.sources import FixedBudget
from creditguard_langchain import (
    AsyncCreditGuardCallbackHandler,
    CreditGuardCallbackHandler,
    CreditGuardMiddleware,
    GuardedChatModel,
)

SHADOW = dataclasses.replace(POLICY, enforce=False)
TIERS = {"downgrade": 1.0, "refuse": 0.2}  # budgets (USD) that land each tier


def usage_cost(model: str) -> float:
    return Price(**PRICES[model]).of(USAGE["input_tokens"], USAGE["output_tokens"])


def shadow_guard(usd: float, decisions: list[Decision]) -> tuple[BudgetGuard, FixedBudget]:
    source = FixedBudget(usd, period=None)
    guard = BudgetGuard(source, SHADOW, estimate=0.0, pricing=PRICES, on_decision=decisions.append)
    return guard, source


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize(
    ("handler_cls", "mode"),
    [(CreditGuardCallbackHandler, m) for m in MODES]
    + [(AsyncCreditGuardCallbackHandler, m) for m in ASYNC],
)
async def test_callback_handlers_do_not_raise(
    handler_cls: type[CreditGuardCallbackHandler | AsyncCreditGuardCallbackHandler],
    mode: str,
    tier: str,
) -> None:
    decisions: list[Decision] = []
    guard, source = shadow_guard(TIERS[tier], decisions)
    handler = handler_cls(guard)
    model = named(EXPENSIVE)
    await call(model, mode, config={"callbacks": [handler]})
    assert len(model.calls) == 1
    assert [(d.action, d.enforced) for d in decisions] == [(tier, False)]
    assert spent(source) == pytest.approx(usage_cost(EXPENSIVE))
    assert handler.in_flight == 0 and guard.ledger.reserved(None) == 0


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream"])
async def test_guarded_chat_model_runs_the_requested_model(mode: str, tier: str) -> None:
    decisions: list[Decision] = []
    guard, source = shadow_guard(TIERS[tier], decisions)
    rich, poor = named(EXPENSIVE), named(CHEAP)
    model = GuardedChatModel(guard, {EXPENSIVE: rich, CHEAP: poor})
    message = await call(model, mode)
    assert message.content == f"reply from {EXPENSIVE}"
    assert (len(rich.calls), len(poor.calls)) == (1, 0)
    assert [(d.action, d.enforced) for d in decisions] == [(tier, False)]
    assert spent(source) == pytest.approx(usage_cost(EXPENSIVE))  # at the model that ran
    assert guard.ledger.reserved(None) == 0


@pytest.mark.parametrize("tier", TIERS)
async def test_middleware_overrides_nothing(tier: str) -> None:
    decisions: list[Decision] = []
    guard, source = shadow_guard(TIERS[tier], decisions)
    rich, poor = named(EXPENSIVE), named(CHEAP)
    agent = create_agent(rich, middleware=[CreditGuardMiddleware(guard, {CHEAP: poor})])
    result = await agent.ainvoke({"messages": [{"role": "user", "content": "hi"}]})
    assert result["messages"][-1].content == f"reply from {EXPENSIVE}"
    assert (len(rich.calls), len(poor.calls)) == (1, 0)
    assert [(d.action, d.enforced) for d in decisions] == [(tier, False)]
    assert spent(source) == pytest.approx(usage_cost(EXPENSIVE))
