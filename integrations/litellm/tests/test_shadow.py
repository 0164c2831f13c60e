"""Shadow mode (``Policy(enforce=False)``) in the LiteLLM surfaces: the guarded
sessions and the proxy's pre-call hook decide, hold and charge as when enforcing,
but neither refuse nor rewrite the model."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import litellm
import pytest
from conftest import BUDGETS, COST, EXPENSIVE, MESSAGES, POLICY, PRICES, call_options, spent
from litellm.caching.dual_cache import DualCache
from litellm.proxy._types import UserAPIKeyAuth

from creditguard import BudgetGuard, Decision
from creditguard.sources import FixedBudget
from creditguard.testing import FakeProvider
from creditguard_litellm import CreditGuardLogger, guard_litellm

SHADOW = dataclasses.replace(POLICY, enforce=False)
TIERS = ["downgrade", "refuse"]


def shadow_guard(tier: str, decisions: list[Decision]) -> tuple[BudgetGuard, FixedBudget]:
    source = FixedBudget(BUDGETS[tier], period=None)
    guard = BudgetGuard(source, SHADOW, estimate=0.0, pricing=PRICES, on_decision=decisions.append)
    return guard, source


def _headers(response: Any) -> dict[str, Any]:
    return response._hidden_params.get("additional_headers") or {}


@pytest.mark.parametrize("tier", TIERS)
def test_completion_goes_out_as_asked(fake: FakeProvider, tier: str) -> None:
    decisions: list[Decision] = []
    guard, source = shadow_guard(tier, decisions)
    with guard_litellm(guard):
        response = litellm.completion(**call_options(fake))
    assert fake.count("chat") == 1 and fake.requests[-1].model == EXPENSIVE
    assert response.choices[0].message.content == fake.reply_text
    headers = _headers(response)
    assert headers.get("llm_provider-x-creditguard-decision") == tier
    assert headers.get("llm_provider-x-creditguard-enforced") == "false"
    assert [(d.action, d.enforced) for d in decisions] == [(tier, False)]
    assert spent(source) == pytest.approx(COST[EXPENSIVE])


@pytest.mark.parametrize("tier", TIERS)
async def test_acompletion_goes_out_as_asked(fake: FakeProvider, tier: str) -> None:
    decisions: list[Decision] = []
    guard, source = shadow_guard(tier, decisions)
    async with guard_litellm(guard):
        response = await litellm.acompletion(**call_options(fake))
    assert fake.count("chat") == 1 and fake.requests[-1].model == EXPENSIVE
    assert _headers(response).get("llm_provider-x-creditguard-decision") == tier
    assert spent(source) == pytest.approx(COST[EXPENSIVE])


@pytest.mark.parametrize("tier", TIERS)
async def test_pre_call_hook_neither_raises_nor_rewrites(tier: str) -> None:
    decisions: list[Decision] = []
    guard, _ = shadow_guard(tier, decisions)
    logger = CreditGuardLogger(guard)
    data: dict[str, Any] = {
        "model": EXPENSIVE,
        "messages": [dict(m) for m in MESSAGES],
        "litellm_call_id": str(uuid.uuid4()),
    }
    user = UserAPIKeyAuth(api_key="sk-virtual", user_id="u-1")
    result = await logger.async_pre_call_hook(user, DualCache(), data, "completion")
    assert result is data and data["model"] == EXPENSIVE
    assert [(d.action, d.enforced) for d in decisions] == [(tier, False)]
    assert logger.in_flight == 1  # held, like any call that goes out
