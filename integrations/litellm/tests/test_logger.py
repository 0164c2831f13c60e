"""CreditGuardLogger: the proxy's pre-call hook, called as the proxy calls it (with
the data dicts the proxy builds), and the success / failure events litellm sends
it, from real litellm.completion / acompletion calls against the fake provider.

``async_pre_call_hook`` is a proxy hook: litellm.completion never calls it, so the
end-to-end tests call it first, as the proxy does, then hand its ``data`` to
litellm (see test_proxy.py for the proxy's own code path)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import litellm
import pytest
from conftest import (
    BUDGETS,
    CHEAP,
    COST,
    EXPENSIVE,
    KEY,
    MESSAGES,
    PRICES,
    SECRET,
    TIMEOUT,
    assert_no_secret,
    await_for,
    budget_guard,
    spent,
    wait_for,
)
from litellm.caching.dual_cache import DualCache
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth

from creditguard import ConfigError, CreditsExhausted, Decision
from creditguard.testing import FakeProvider
from creditguard_litellm import JUDGED_CALL_TYPES, CreditGuardLogger, CreditGuardRefusal, refused

USER = UserAPIKeyAuth(api_key=f"sk-{SECRET}-virtual", user_id="u-1", team_id="team-a")


def proxy_data(model: str = EXPENSIVE, **extra: Any) -> dict[str, Any]:
    """A chat completion request as the proxy hands it to ``async_pre_call_hook``:
    the client's body, plus the call id and the metadata the proxy adds."""
    data: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in MESSAGES],
        "litellm_call_id": str(uuid.uuid4()),
        "metadata": {
            "user_api_key_hash": USER.api_key,
            "user_api_key_user_id": USER.user_id,
            "user_api_key_team_id": USER.team_id,
            "headers": {"content-type": "application/json"},
        },
        "proxy_server_request": {
            "url": "http://0.0.0.0:4000/v1/chat/completions",
            "method": "POST",
            "headers": {"content-type": "application/json"},
            "body": {"model": model, "messages": MESSAGES},
        },
    }
    data.update(extra)
    return data


async def pre_call(
    logger: CreditGuardLogger, data: dict[str, Any], call_type: str = "completion"
) -> Any:
    """The hook, called as the proxy calls it."""
    return await logger.async_pre_call_hook(USER, DualCache(), data, call_type)


# -- the pre-call hook --------------------------------------------------------------


def test_is_a_custom_logger() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard)
    assert isinstance(logger, CustomLogger)
    assert repr(logger) == "<CreditGuardLogger 0 call(s) in flight>"
    assert logger  # litellm skips callbacks that test false
    # the proxy runs a logger's pre-call hook only when its class overrides it
    assert CreditGuardLogger.async_pre_call_hook is not CustomLogger.async_pre_call_hook


@pytest.mark.parametrize("tier", ["allow", "warn"])
async def test_allow_and_warn_leave_the_request(tier: str, decisions: list[Decision]) -> None:
    guard, _ = budget_guard(BUDGETS[tier], decisions)
    logger = CreditGuardLogger(guard)
    data = proxy_data()
    sent = {**data, "messages": list(data["messages"])}
    assert await pre_call(logger, data) is data
    assert data == sent
    assert [d.action for d in decisions] == [tier]
    assert logger.in_flight == 1  # held until litellm says how the call ended


async def test_downgrade_rewrites_the_model(decisions: list[Decision]) -> None:
    guard, _ = budget_guard(BUDGETS["downgrade"], decisions)
    logger = CreditGuardLogger(guard)
    data = proxy_data()
    assert (await pre_call(logger, data))["model"] == CHEAP
    assert decisions[0].requested_model == EXPENSIVE


async def test_downgrade_to_a_proxy_model_name(caplog: pytest.LogCaptureFixture) -> None:
    guard, _ = budget_guard(BUDGETS["downgrade"])
    mapped = CreditGuardLogger(guard, {CHEAP: "cheap-group"})
    assert (await pre_call(mapped, proxy_data()))["model"] == "cheap-group"
    by_function = CreditGuardLogger(guard, lambda name: f"{name}-group")
    assert (await pre_call(by_function, proxy_data()))["model"] == f"{CHEAP}-group"
    # none configured for it: logged, and the requested model runs
    unmapped = CreditGuardLogger(guard, {"other": "x"})
    caplog.clear()
    assert (await pre_call(unmapped, proxy_data()))["model"] == EXPENSIVE
    assert "downgrade to openai/gpt-4o-mini not applied" in caplog.text


async def test_refuse_raises_what_the_proxy_answers_402(decisions: list[Decision]) -> None:
    guard, source = budget_guard(BUDGETS["refuse"], decisions)
    logger = CreditGuardLogger(guard)
    data = proxy_data()
    with pytest.raises(CreditGuardRefusal) as caught:
        await pre_call(logger, data)
    exc = caught.value
    assert isinstance(exc, CreditsExhausted)
    assert refused(exc)
    assert exc.decision is decisions[0]
    assert exc.decision.action == "refuse"
    # what the proxy reads off the exception for its error response
    assert exc.status_code == 402
    assert exc.type == "insufficient_credits"
    assert exc.code == "insufficient_credits"
    assert exc.param is None
    assert exc.message == (
        "creditguard refused the call: "
        "the credits left after this call would be below the refuse threshold"
    )
    assert "0.2" not in exc.message  # the rule, not the figures
    assert_no_secret(str(exc), repr(exc), exc.message)
    assert data["model"] == EXPENSIVE
    assert logger.in_flight == 0
    assert spent(source) == 0


def test_refusal_message_names_the_rule() -> None:
    no_balance = Decision("refuse", EXPENSIVE, None, "no balance available", EXPENSIVE)
    assert CreditGuardRefusal(no_balance).message == (
        "creditguard refused the call: "
        "no usable credit balance could be had, and the policy refuses then"
    )
    guard, _ = budget_guard(BUDGETS["allow"])
    balance = guard.check(EXPENSIVE).balance
    unpriced = Decision("refuse", "x", balance, "no known price and unknown_price=refuse", "x")
    assert CreditGuardRefusal(unpriced).message.endswith(
        "the model has no known price, and the policy refuses then"
    )
    assert str(CreditGuardRefusal(unpriced)) == unpriced.reason  # the full reason stays


@pytest.mark.parametrize("call_type", ["embedding", "aembedding", "moderation", "rerank"])
async def test_other_call_types_pass(call_type: str, decisions: list[Decision]) -> None:
    guard, _ = budget_guard(BUDGETS["refuse"], decisions)
    logger = CreditGuardLogger(guard)
    data = {"model": "text-embedding-3-small", "input": ["hi"]}
    assert await pre_call(logger, data, call_type) is None
    assert decisions == [] and logger.in_flight == 0


@pytest.mark.parametrize(
    "call_type", ["acompletion", "text_completion", "aresponses", "anthropic_messages"]
)
async def test_generation_call_types_are_judged(call_type: str) -> None:
    assert call_type in JUDGED_CALL_TYPES
    guard, _ = budget_guard(BUDGETS["refuse"])
    with pytest.raises(CreditGuardRefusal):
        await pre_call(CreditGuardLogger(guard), proxy_data(), call_type)


async def test_a_call_id_is_set_when_missing() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard)
    data = proxy_data()
    del data["litellm_call_id"]
    await pre_call(logger, data)
    assert uuid.UUID(data["litellm_call_id"])
    assert logger.in_flight == 1


async def test_credential_per_team() -> None:
    # one budget per team: the hook judges each request on its key's team
    guard, source = budget_guard(1.0, per_credential=True, pricing=None)
    logger = CreditGuardLogger(guard, credential=lambda key, data: key.team_id)
    data = proxy_data()
    await pre_call(logger, data)  # 1.0 left: downgrade tier
    assert data["model"] == CHEAP
    source.record("team-a", 0.9)
    guard.invalidate("team-a")
    with pytest.raises(CreditGuardRefusal):
        await pre_call(logger, proxy_data())
    other = UserAPIKeyAuth(api_key="sk-other", team_id="team-b")
    data = proxy_data()
    await logger.async_pre_call_hook(other, DualCache(), data, "completion")
    assert data["model"] == CHEAP  # team-b's own budget


async def test_estimate_held_while_the_call_runs() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard)
    data = proxy_data(max_tokens=100)
    await pre_call(logger, data)
    held = next(iter(logger._open.values())).reservation
    prompt = len('[{"role": "user", "content": "Say hi. Grüße, 世界 ✓"}]') / 4
    price = PRICES[EXPENSIVE]
    assert held.estimate == pytest.approx(prompt * price["prompt"] + 100 * price["completion"])
    fixed = CreditGuardLogger(guard, estimate=0.25)
    await pre_call(fixed, proxy_data())
    assert next(iter(fixed._open.values())).reservation.estimate == 0.25


def test_bad_arguments() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    with pytest.raises(ConfigError, match="guard"):
        CreditGuardLogger("guard")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="models"):
        CreditGuardLogger(guard, 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="models"):
        CreditGuardLogger(guard, {CHEAP: 1})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="estimate"):
        CreditGuardLogger(guard, estimate=-1)
    with pytest.raises(ConfigError, match="credential") as caught:
        CreditGuardLogger(guard, credential=[KEY])  # type: ignore[arg-type]
    assert_no_secret(str(caught.value))
    with pytest.raises(ConfigError, match="call_types"):
        CreditGuardLogger(guard, call_types="completion")  # type: ignore[arg-type]


# -- the success and failure events ------------------------------------------------


async def _held(logger: CreditGuardLogger) -> dict[str, Any]:
    data = proxy_data()
    await pre_call(logger, data)
    return data


def _event(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"litellm_call_id": data["litellm_call_id"], "model": data["model"]} | extra


class _Response:
    def __init__(self, usage: dict[str, Any] | None) -> None:
        self.usage = usage


@pytest.mark.parametrize(
    ("usage", "kwargs", "cost"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 20, "cost": 0.5}, {"response_cost": 0.1}, 0.5),
        ({"prompt_tokens": 10, "completion_tokens": 20}, {"response_cost": 0.1}, 0.1),
        (
            {"prompt_tokens": 10, "completion_tokens": 20},
            {"standard_logging_object": {"response_cost": 0.2}},
            0.2,
        ),
        ({"prompt_tokens": 10, "completion_tokens": 20}, {}, 10 * 0.001 + 20 * 0.002),
        (None, {"response_cost": None}, None),
    ],
)
async def test_success_settles_with_the_reported_cost(
    usage: dict[str, Any] | None, kwargs: dict[str, Any], cost: float | None
) -> None:
    guard, source = budget_guard(BUDGETS["allow"], estimate=0.03, pricing=PRICES)
    logger = CreditGuardLogger(guard, estimate=0.03)
    data = await _held(logger)
    await logger.async_log_success_event(_event(data, **kwargs), _Response(usage), None, None)
    assert logger.in_flight == 0
    assert spent(source) == pytest.approx(0.03 if cost is None else cost)


async def test_failure_releases() -> None:
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard, estimate=0.5)
    data = await _held(logger)
    logger.log_failure_event(_event(data), None, None, None)
    assert logger.in_flight == 0
    assert spent(source) == 0
    # nothing held any more: 0.6 left after 99.4 (with the hold, 0.1: refused)
    assert guard.check(EXPENSIVE, estimate=99.4).action == "downgrade"


async def test_a_retry_that_succeeds_after_a_failure_is_charged() -> None:
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard)
    data = await _held(logger)
    await logger.async_log_failure_event(_event(data), None, None, None)
    await logger.async_log_success_event(_event(data), _Response({"cost": 0.25}), None, None)
    assert spent(source) == pytest.approx(0.25)
    # once
    await logger.async_log_success_event(_event(data), _Response({"cost": 0.25}), None, None)
    assert spent(source) == pytest.approx(0.25)


async def test_post_call_failure_hook_releases() -> None:
    # a later hook (a guardrail) rejected the request: litellm never ran it
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard, estimate=0.5)
    data = await _held(logger)
    await logger.async_post_call_failure_hook(data, RuntimeError("blocked"), USER)
    assert logger.in_flight == 0
    assert spent(source) == 0


async def test_events_of_calls_not_judged_are_ignored() -> None:
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard)
    await logger.async_log_success_event(
        {"litellm_call_id": "other"}, _Response({"cost": 1}), None, None
    )
    await logger.async_log_success_event({}, None, None, None)
    await logger.async_log_failure_event({"litellm_call_id": None}, None, None, None)
    assert spent(source) == 0


async def test_calls_that_never_end_are_forgotten() -> None:
    guard, _ = budget_guard(BUDGETS["allow"], hold_timeout=0.01)
    logger = CreditGuardLogger(guard)
    await _held(logger)
    await asyncio.sleep(0.02)
    await _held(logger)
    assert logger.in_flight == 1


# -- with litellm: the hook's data through litellm.acompletion / completion ---------


async def test_acompletion_end_to_end_downgraded_and_settled(
    fake: FakeProvider, plain_sessions: Any
) -> None:
    guard, source = budget_guard(BUDGETS["downgrade"])
    logger = CreditGuardLogger(guard, lambda name: f"openai/{name}")  # proxy -> litellm name
    litellm.callbacks = [logger]
    data = await pre_call(logger, proxy_data(), "acompletion")
    assert data["model"] == f"openai/{CHEAP}"
    del data["metadata"], data["proxy_server_request"]
    response = await litellm.acompletion(
        **data, api_base=fake.openrouter_base_url, api_key=KEY, timeout=TIMEOUT
    )
    assert fake.requests[-1].model == CHEAP
    assert response.choices[0].message.content == fake.reply_text
    await await_for(lambda: logger.in_flight == 0, "the success event")
    assert spent(source) == pytest.approx(COST[CHEAP])  # the provider's usage.cost


async def test_astream_end_to_end_settled(fake: FakeProvider, plain_sessions: Any) -> None:
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard, lambda name: f"openai/{name}")
    litellm.callbacks = [logger]
    data = proxy_data(stream=True)
    await pre_call(logger, data, "acompletion")
    del data["metadata"], data["proxy_server_request"]
    data["model"] = f"openai/{data['model']}"
    stream = await litellm.acompletion(
        **data, api_base=fake.openrouter_base_url, api_key=KEY, timeout=TIMEOUT
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == fake.reply_text
    await await_for(lambda: logger.in_flight == 0, "the success event")
    assert spent(source) == pytest.approx(COST[EXPENSIVE])


async def test_acompletion_failure_releases(fake: FakeProvider, plain_sessions: Any) -> None:
    guard, source = budget_guard(BUDGETS["allow"])
    logger = CreditGuardLogger(guard, estimate=0.5)
    litellm.callbacks = [logger]
    data = proxy_data()
    await pre_call(logger, data, "acompletion")
    del data["metadata"], data["proxy_server_request"]
    data["model"] = f"openai/{data['model']}"
    with pytest.raises(litellm.AuthenticationError) as caught:
        await litellm.acompletion(
            **data, api_base=fake.openrouter_base_url, api_key="sk-or-v1-unknown", timeout=TIMEOUT
        )
    assert not refused(caught.value)
    await await_for(lambda: logger.in_flight == 0, "the failure event")
    assert spent(source) == 0


def test_completion_end_to_end_settled(fake: FakeProvider, plain_sessions: Any) -> None:
    # sync litellm: its success callbacks run in a thread of its own
    guard, source = budget_guard(BUDGETS["downgrade"])
    logger = CreditGuardLogger(guard, lambda name: f"openai/{name}")
    litellm.callbacks = [logger]
    data = asyncio.run(pre_call(logger, proxy_data()))
    del data["metadata"], data["proxy_server_request"]
    litellm.completion(**data, api_base=fake.openrouter_base_url, api_key=KEY, timeout=TIMEOUT)
    assert fake.requests[-1].model == CHEAP
    wait_for(lambda: logger.in_flight == 0, "the success event")
    assert spent(source) == pytest.approx(COST[CHEAP])
