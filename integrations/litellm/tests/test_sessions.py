"""guard_litellm(): litellm.completion / acompletion through the guarded sessions,
against the loopback fake provider; and the ``client=`` handlers for litellm's own
HTTP route (``openrouter/...``)."""

from __future__ import annotations

from typing import Any

import httpx
import litellm
import pytest
from conftest import (
    BUDGETS,
    CHEAP,
    COST,
    EXPENSIVE,
    KEY,
    MESSAGES,
    TIMEOUT,
    assert_no_secret,
    budget_guard,
    call_options,
    spent,
)

from creditguard import ConfigError, Decision
from creditguard.testing import FakeProvider
from creditguard_litellm import (
    GuardedSessions,
    async_http_handler,
    guard_litellm,
    http_handler,
    refused,
)


def _decision_header(response: Any) -> str | None:
    """The ``x-creditguard-decision`` header the transport added, as litellm keeps it."""
    headers = response._hidden_params.get("additional_headers") or {}
    value = headers.get("llm_provider-x-creditguard-decision")
    return value if isinstance(value, str) else None


# -- the OpenAI SDK route: allow, warn, downgrade, refuse -------------------------


@pytest.mark.parametrize(
    ("tier", "model"),
    [("allow", EXPENSIVE), ("warn", EXPENSIVE), ("downgrade", CHEAP)],
)
def test_completion(fake: FakeProvider, decisions: list[Decision], tier: str, model: str) -> None:
    guard, source = budget_guard(BUDGETS[tier], decisions)
    with guard_litellm(guard):
        response = litellm.completion(**call_options(fake))
    assert fake.count("chat") == 1
    assert fake.requests[-1].model == model
    assert response.choices[0].message.content == fake.reply_text
    assert _decision_header(response) == tier
    assert [d.action for d in decisions] == [tier]
    assert spent(source) == pytest.approx(COST[model])  # the provider's usage.cost


@pytest.mark.parametrize(
    ("tier", "model"),
    [("allow", EXPENSIVE), ("warn", EXPENSIVE), ("downgrade", CHEAP)],
)
async def test_acompletion(
    fake: FakeProvider, decisions: list[Decision], tier: str, model: str
) -> None:
    guard, source = budget_guard(BUDGETS[tier], decisions)
    async with guard_litellm(guard):
        response = await litellm.acompletion(**call_options(fake))
    assert fake.count("chat") == 1
    assert fake.requests[-1].model == model
    assert response.choices[0].message.content == fake.reply_text
    assert _decision_header(response) == tier
    assert [d.action for d in decisions] == [tier]
    assert spent(source) == pytest.approx(COST[model])


def test_completion_refused(fake: FakeProvider, decisions: list[Decision]) -> None:
    guard, source = budget_guard(BUDGETS["refuse"], decisions)
    with guard_litellm(guard), pytest.raises(litellm.APIError) as caught:
        litellm.completion(**call_options(fake))
    assert fake.count("chat") == 0  # never sent
    assert caught.value.status_code == 402
    assert refused(caught.value)
    assert "creditguard refused the call" in str(caught.value)
    assert_no_secret(str(caught.value), repr(caught.value))
    assert [d.action for d in decisions] == ["refuse"]
    assert spent(source) == 0


async def test_acompletion_refused(fake: FakeProvider, decisions: list[Decision]) -> None:
    guard, source = budget_guard(BUDGETS["refuse"], decisions)
    async with guard_litellm(guard):
        with pytest.raises(litellm.APIError) as caught:
            await litellm.acompletion(**call_options(fake))
    assert fake.count("chat") == 0
    assert caught.value.status_code == 402
    assert refused(caught.value)
    assert_no_secret(str(caught.value), repr(caught.value))
    assert [d.action for d in decisions] == ["refuse"]
    assert spent(source) == 0


def test_refused_tells_other_errors_apart(fake: FakeProvider) -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    with guard_litellm(guard), pytest.raises(litellm.AuthenticationError) as caught:
        litellm.completion(**call_options(fake, api_key="sk-or-v1-unknown"))
    assert not refused(caught.value)
    assert not refused(RuntimeError("creditguard refused the call"))


# -- streaming ------------------------------------------------------------------


def test_stream_downgraded_and_charged(fake: FakeProvider) -> None:
    guard, source = budget_guard(BUDGETS["downgrade"])
    with guard_litellm(guard):
        stream = litellm.completion(**call_options(fake, stream=True))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == fake.reply_text
    assert fake.requests[-1].model == CHEAP
    assert spent(source) == pytest.approx(COST[CHEAP])  # read from the last event


async def test_astream_downgraded_and_charged(fake: FakeProvider) -> None:
    guard, source = budget_guard(BUDGETS["downgrade"])
    async with guard_litellm(guard):
        stream = await litellm.acompletion(**call_options(fake, stream=True))
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == fake.reply_text
    assert fake.requests[-1].model == CHEAP
    assert spent(source) == pytest.approx(COST[CHEAP])


async def test_astream_refused(fake: FakeProvider) -> None:
    guard, _ = budget_guard(BUDGETS["refuse"])
    async with guard_litellm(guard):
        with pytest.raises(litellm.APIError) as caught:
            stream = await litellm.acompletion(**call_options(fake, stream=True))
            async for _ in stream:
                pass
    assert refused(caught.value)
    assert fake.count("chat") == 0


def test_spend_moves_the_tier(fake: FakeProvider, decisions: list[Decision]) -> None:
    # Just over 2 left: the first call is allowed (warned), its cost brings the
    # budget under downgrade_below, and the next call is downgraded.
    guard, _ = budget_guard(2.0 + COST[EXPENSIVE] / 2, decisions, pricing=None)
    with guard_litellm(guard):
        litellm.completion(**call_options(fake))
        litellm.completion(**call_options(fake))
    assert [r.model for r in fake.requests] == [EXPENSIVE, CHEAP]
    assert [d.action for d in decisions] == ["warn", "downgrade"]


# -- what guard_litellm sets, and puts back ----------------------------------------


async def test_sets_and_restores_the_sessions() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    before = httpx.Client(), httpx.AsyncClient()
    litellm.client_session, litellm.aclient_session = before
    sessions = guard_litellm(guard)
    assert isinstance(sessions, GuardedSessions)
    assert litellm.client_session is sessions.client
    assert litellm.aclient_session is sessions.async_client
    assert repr(sessions) == "<GuardedSessions active>"
    await sessions.aclose()
    assert (litellm.client_session, litellm.aclient_session) == before
    assert sessions.client.is_closed and sessions.async_client.is_closed
    assert repr(sessions) == "<GuardedSessions closed>"
    await sessions.aclose()  # twice: nothing
    assert (litellm.client_session, litellm.aclient_session) == before
    before[0].close()
    await before[1].aclose()


async def test_nested_and_replaced_sessions() -> None:
    outer_guard, _ = budget_guard(BUDGETS["allow"])
    inner_guard, _ = budget_guard(BUDGETS["refuse"])
    async with guard_litellm(outer_guard) as outer:
        async with guard_litellm(inner_guard) as inner:
            assert litellm.client_session is inner.client
        assert litellm.client_session is outer.client
        assert litellm.aclient_session is outer.async_client
        # someone else's sessions since: left alone
        mine = httpx.Client()
        litellm.client_session = mine
        assert repr(outer) == "<GuardedSessions active>"  # the async one is still ours
    assert litellm.client_session is mine
    assert litellm.aclient_session is None
    mine.close()


async def test_clients_given_are_not_closed() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    client, aclient = guard.client(), guard.async_client()
    async with guard_litellm(guard, client=client, async_client=aclient) as sessions:
        assert sessions.client is client
        assert sessions.async_client is aclient
    assert litellm.client_session is None
    assert not client.is_closed and not aclient.is_closed
    client.close()
    await aclient.aclose()


def test_sync_close_restores() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    with guard_litellm(guard) as sessions:
        assert litellm.client_session is sessions.client
    assert litellm.client_session is None and litellm.aclient_session is None
    assert sessions.client.is_closed


def test_bad_arguments() -> None:
    guard, _ = budget_guard(BUDGETS["allow"])
    with pytest.raises(ConfigError, match="guard"):
        guard_litellm(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="client"):
        guard_litellm(guard, client=httpx.AsyncClient())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="async_client"):
        guard_litellm(guard, async_client=httpx.Client())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="guard"):
        http_handler("guard")  # type: ignore[arg-type]
    assert litellm.client_session is None


def test_a_cached_sdk_client_cannot_bypass_the_guard(
    fake: FakeProvider, plain_sessions: tuple[httpx.Client, httpx.AsyncClient]
) -> None:
    # litellm caches its OpenAI SDK clients by key, base URL and timeout, not by
    # HTTP client: one built before guard_litellm would keep the old session.
    litellm.completion(**call_options(fake))
    assert fake.count("chat") == 1
    guard, _ = budget_guard(BUDGETS["refuse"])
    with guard_litellm(guard), pytest.raises(litellm.APIError) as caught:
        litellm.completion(**call_options(fake))
    assert refused(caught.value)
    assert fake.count("chat") == 1
    # and the guarded one is not used once the sessions are back
    assert litellm.client_session is plain_sessions[0]
    litellm.completion(**call_options(fake))
    assert fake.count("chat") == 2


async def test_a_cached_async_sdk_client_cannot_bypass_the_guard(
    fake: FakeProvider, plain_sessions: tuple[httpx.Client, httpx.AsyncClient]
) -> None:
    await litellm.acompletion(**call_options(fake))
    guard, _ = budget_guard(BUDGETS["refuse"])
    async with guard_litellm(guard):
        with pytest.raises(litellm.APIError):
            await litellm.acompletion(**call_options(fake))
    assert fake.count("chat") == 1
    await litellm.acompletion(**call_options(fake))
    assert fake.count("chat") == 2


# -- litellm's own HTTP route: client= handlers -----------------------------------


def _openrouter(fake: FakeProvider, **options: Any) -> dict[str, Any]:
    options.setdefault("messages", MESSAGES)
    options.setdefault("timeout", TIMEOUT)
    return {
        "model": f"openrouter/{EXPENSIVE}",
        "api_base": fake.openrouter_base_url,
        "api_key": KEY,
    } | options


def test_openrouter_route_ignores_the_sessions(fake: FakeProvider) -> None:
    # What the README says: `openrouter/...` does not use litellm.client_session
    # (litellm 1.106), it takes client= instead. If this fails, litellm began
    # honouring the sessions there.
    guard, _ = budget_guard(BUDGETS["downgrade"])
    with guard_litellm(guard):
        litellm.completion(**_openrouter(fake))
    assert fake.requests[-1].model == EXPENSIVE  # not downgraded: not guarded


@pytest.mark.parametrize(("tier", "model"), [("allow", EXPENSIVE), ("downgrade", CHEAP)])
def test_openrouter_route_with_http_handler(
    fake: FakeProvider, decisions: list[Decision], tier: str, model: str
) -> None:
    guard, source = budget_guard(BUDGETS[tier], decisions)
    handler = http_handler(guard)
    try:
        response = litellm.completion(**_openrouter(fake, client=handler))
    finally:
        handler.close()
    assert fake.requests[-1].model == model
    assert response.choices[0].message.content == fake.reply_text
    assert [d.action for d in decisions] == [tier]
    assert spent(source) == pytest.approx(COST[model])


def test_openrouter_route_refused(fake: FakeProvider) -> None:
    guard, _ = budget_guard(BUDGETS["refuse"])
    handler = http_handler(guard)
    try:
        with pytest.raises(Exception) as caught:
            litellm.completion(**_openrouter(fake, client=handler))
    finally:
        handler.close()
    assert fake.count("chat") == 0
    assert refused(caught.value), repr(caught.value)
    assert_no_secret(str(caught.value), repr(caught.value))


@pytest.mark.parametrize(("tier", "model"), [("allow", EXPENSIVE), ("downgrade", CHEAP)])
async def test_openrouter_route_with_async_http_handler(
    fake: FakeProvider, tier: str, model: str
) -> None:
    guard, source = budget_guard(BUDGETS[tier])
    handler = async_http_handler(guard)
    try:
        response = await litellm.acompletion(**_openrouter(fake, client=handler))
    finally:
        await handler.close()
    assert fake.requests[-1].model == model
    assert response.choices[0].message.content == fake.reply_text
    assert spent(source) == pytest.approx(COST[model])


async def test_openrouter_route_async_refused(fake: FakeProvider) -> None:
    guard, _ = budget_guard(BUDGETS["refuse"])
    handler = async_http_handler(guard)
    try:
        with pytest.raises(Exception) as caught:
            await litellm.acompletion(**_openrouter(fake, client=handler))
    finally:
        await handler.close()
    assert fake.count("chat") == 0
    assert refused(caught.value), repr(caught.value)
    assert_no_secret(str(caught.value), repr(caught.value))


@pytest.mark.parametrize(
    ("budget", "model"),
    [(100.0, "claude-sonnet-4-5"), (1.0, "claude-haiku-4-5"), (0.2, None)],
)
def test_anthropic_route_with_http_handler(
    fake: FakeProvider, budget: float, model: str | None
) -> None:
    # litellm's own route for Anthropic's Messages API; the policy speaks its names
    from creditguard import BudgetGuard, Policy
    from creditguard.sources import FixedBudget

    policy = Policy(
        warn_below=5.0,
        downgrade_below=2.0,
        refuse_below=0.5,
        downgrade={"claude-sonnet-4-5": "claude-haiku-4-5"},
    )
    guard = BudgetGuard(FixedBudget(budget, period=None), policy, estimate=0.0)
    handler = http_handler(guard)
    call = {
        "model": "anthropic/claude-sonnet-4-5",
        "api_base": fake.anthropic_base_url,
        "api_key": KEY,
        "messages": MESSAGES,
        "max_tokens": 10,
        "timeout": TIMEOUT,
        "client": handler,
    }
    try:
        if model is None:
            with pytest.raises(Exception) as caught:
                litellm.completion(**call)
            assert refused(caught.value), repr(caught.value)
            assert_no_secret(str(caught.value), repr(caught.value))
            assert fake.count("messages") == 0
        else:
            response = litellm.completion(**call)
            assert response.choices[0].message.content == fake.reply_text
            assert fake.requests[-1].model == model
    finally:
        handler.close()
