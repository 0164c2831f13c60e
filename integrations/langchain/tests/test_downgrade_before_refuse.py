"""At the refuse tier the guard downgrades to a model that still fits, through
every LangChain hook that can change the model: GuardedChatModel runs the cheaper
model (holding its own, cheaper estimate) instead of refusing."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import CHEAP, EXPENSIVE, PROMPT, budget_guard, named

from creditguard import CreditsExhausted, Decision
from creditguard_langchain import GuardedChatModel

LIMIT = 100  # output tokens asked for: 0.2 at EXPENSIVE's price, 0.02 at CHEAP's


def test_guarded_chat_model_runs_the_cheaper_model_instead_of_refusing() -> None:
    decisions: list[Decision] = []
    guard, _ = budget_guard(0.6, decisions)  # refuse_below 0.5
    rich, poor = named(EXPENSIVE), named(CHEAP)
    held: list[float] = []
    original = poor._generate

    def watching(*args: Any, **kwargs: Any) -> Any:
        held.append(guard.ledger.reserved(None))
        return original(*args, **kwargs)

    object.__setattr__(poor, "_generate", watching)
    model = GuardedChatModel(guard, {EXPENSIVE: rich, CHEAP: poor}, model=EXPENSIVE)
    message = model.invoke(PROMPT, max_tokens=LIMIT)
    assert message.content == f"reply from {CHEAP}"
    assert (len(rich.calls), len(poor.calls)) == (0, 1)
    assert [(d.action, d.model) for d in decisions] == [("downgrade", CHEAP)]
    # CHEAP's own estimate: its prompt price x ~prompt tokens + 100 x 0.0002
    assert held == [pytest.approx(0.0001 * len(PROMPT) / 4 + 0.0002 * LIMIT)]


def test_guarded_chat_model_refuses_when_no_model_fits() -> None:
    guard, _ = budget_guard(0.51)
    model = GuardedChatModel(
        guard, {EXPENSIVE: named(EXPENSIVE), CHEAP: named(CHEAP)}, model=EXPENSIVE
    )
    with pytest.raises(CreditsExhausted) as info:
        model.invoke(PROMPT, max_tokens=LIMIT)
    assert "no downgrade target fits" in info.value.decision.reason


def test_a_fixed_estimate_is_the_same_for_every_model_so_nothing_fits() -> None:
    guard, _ = budget_guard(0.6)
    model = GuardedChatModel(
        guard, {EXPENSIVE: named(EXPENSIVE), CHEAP: named(CHEAP)}, model=EXPENSIVE, estimate=0.2
    )
    with pytest.raises(CreditsExhausted):
        model.invoke(PROMPT)
