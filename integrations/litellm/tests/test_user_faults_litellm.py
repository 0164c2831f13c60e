"""LiteLLM calls that time out, as a user meets them: litellm raises its own
``litellm.Timeout`` (an ``openai.APITimeoutError`` carrying status 408 and no
response). The provider may still answer, and bill, the call: it is charged its
estimate, never released for free (main released it both in the decorator, which
took the 408 for the provider's answer, and in CreditGuardLogger's failure event)."""

from __future__ import annotations

import uuid
from typing import Any

import litellm
import pytest
from conftest import BUDGETS, EXPENSIVE, MESSAGES, await_for, budget_guard, call_options, spent
from litellm.caching.dual_cache import DualCache
from litellm.proxy._types import UserAPIKeyAuth

from creditguard.testing import FakeProvider
from creditguard_litellm import CreditGuardLogger

QUICK, SLOW = 0.15, 0.3  # litellm gives up after QUICK s; the provider answers after SLOW s
USER = UserAPIKeyAuth(api_key="sk-virtual-user", user_id="u-1")


def test_a_decorated_litellm_call_that_times_out_is_charged(
    fake: FakeProvider, plain_sessions: Any
) -> None:
    guard, source = budget_guard(BUDGETS["allow"], estimate=0.05, pricing=None)
    fake.fault("chat", delay=SLOW)

    @guard
    def ask(model: str) -> Any:
        return litellm.completion(**call_options(fake, model, timeout=QUICK, num_retries=0))

    with pytest.raises(litellm.Timeout):
        ask(EXPENSIVE)
    assert guard.ledger.reserved(None) == 0
    assert spent(source) == pytest.approx(0.05)  # its estimate: the provider billed it


async def test_a_logged_litellm_call_that_times_out_is_charged(
    fake: FakeProvider, plain_sessions: Any
) -> None:
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard, estimate=0.05)
    litellm.callbacks = [logger]
    fake.fault("chat", delay=SLOW)
    data: dict[str, Any] = {
        "model": EXPENSIVE,
        "messages": [dict(m) for m in MESSAGES],
        "litellm_call_id": str(uuid.uuid4()),
    }
    data = await logger.async_pre_call_hook(USER, DualCache(), data, "acompletion")
    assert logger.in_flight == 1
    with pytest.raises(litellm.Timeout):
        await litellm.acompletion(
            **call_options(fake, EXPENSIVE, timeout=QUICK, num_retries=0),
            litellm_call_id=data["litellm_call_id"],
        )
    await await_for(lambda: logger.in_flight == 0, "the failure event")  # (a task of its own)
    assert spent(source) == pytest.approx(0.05)  # its estimate: the provider billed it


async def test_the_proxy_failure_hook_charges_a_call_that_timed_out() -> None:
    # the proxy may call it before litellm's failure event: a timeout is charged there too
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard, estimate=0.05)
    data: dict[str, Any] = {"model": EXPENSIVE, "messages": [dict(m) for m in MESSAGES]}
    data = await logger.async_pre_call_hook(USER, DualCache(), data, "acompletion")
    timeout = litellm.Timeout(message="Request timed out.", model=EXPENSIVE, llm_provider="openai")
    await logger.async_post_call_failure_hook(data, timeout, USER)
    assert logger.in_flight == 0
    assert spent(source) == pytest.approx(0.05)
