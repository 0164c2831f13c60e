"""Shadow mode (``Policy(enforce=False)``) on every surface of the core, and the
fail-open label, through the real openai and anthropic SDKs against the loopback fake.

In shadow mode a call is decided, logged, held and charged exactly as when enforcing,
but nothing is refused or rewritten: the provider sees every call as the caller made it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from sdk_helpers import (
    EXPENSIVE,
    KEYS,
    MESSAGES,
    POLICY,
    TIMEOUT,
    async_http,
    chat_requests,
    debug_logs_never_show_a_key,
    make_guard,
    running_fake,
    sync_http,
)

from creditguard import BudgetGuard, ConfigError, CreditsExhausted, Decision, Policy, decide
from creditguard.balance import Balance
from creditguard.sources import FixedBudget, OpenRouterKey
from creditguard.testing import FakeProvider

SHADOW = dataclasses.replace(POLICY, enforce=False)
STACKS = ["httpx", "httpx2"]
TIERS = ["warn", "downgrade", "refuse"]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    yield from running_fake()


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from debug_logs_never_show_a_key(caplog)


@pytest.fixture
def decisions() -> list[Decision]:
    return []


def shadow_guard(fake: FakeProvider, decisions: list[Decision], **kw: Any) -> BudgetGuard:
    guard = make_guard(fake, decisions)
    return BudgetGuard(guard.source, SHADOW, estimate=0.0, on_decision=decisions.append, **kw)


@pytest.fixture
def guard(fake: FakeProvider, decisions: list[Decision]) -> Iterator[BudgetGuard]:
    g = shadow_guard(fake, decisions)
    yield g
    g.close()


def remaining(guard: BudgetGuard, tier: str) -> float:
    """The guard's own view of the key's balance (the cache, with local debits)."""
    balance = guard.check(credential=KEYS[tier]).balance
    assert balance is not None
    return balance.remaining


# -- the decision -------------------------------------------------------------------


def test_decide_in_shadow_mode_says_what_it_would_do() -> None:
    balance = Balance(remaining=0.3, total=1.0, unit="USD", source="test")
    enforced = decide(balance, POLICY, EXPENSIVE)
    shadow = decide(balance, SHADOW, EXPENSIVE)
    assert enforced.action == shadow.action == "refuse"
    assert enforced.enforced and not shadow.enforced
    assert enforced.applied is enforced
    view = shadow.applied
    assert (view.action, view.model, view.reason) == ("allow", EXPENSIVE, shadow.reason)
    assert not view.enforced and view.balance is balance
    down = decide(Balance(remaining=1.5, total=10.0, unit="USD", source="test"), SHADOW, EXPENSIVE)
    assert (down.action, down.model) == ("downgrade", "openai/gpt-4o-mini")
    assert (down.applied.action, down.applied.model) == ("allow", EXPENSIVE)
    assert shadow != enforced  # enforced is part of what a decision is
    assert "enforced=False" in repr(shadow)


def test_enforce_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="enforce"):
        Policy(enforce="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [(False, False), (True, True)])
def test_config_key_enforce(value: bool, expected: bool) -> None:
    guard = BudgetGuard.from_config({"source": "fixed", "limit": 5, "enforce": value}, env=False)
    assert guard.policy.enforce is expected


def test_config_enforce_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITGUARD_ENFORCE", "false")
    assert BudgetGuard.from_config({"source": "fixed", "limit": 5}).policy.enforce is False
    monkeypatch.setenv("CREDITGUARD_ENFORCE", "maybe")
    with pytest.raises(ConfigError, match="CREDITGUARD_ENFORCE"):
        BudgetGuard.from_config({"source": "fixed", "limit": 5})


def test_a_shadow_refusal_is_held_like_any_call_that_goes_out(guard: BudgetGuard) -> None:
    reservation = guard.reserve(EXPENSIVE, credential=KEYS["refuse"], estimate=0.05)
    assert reservation.decision.action == "refuse" and not reservation.decision.enforced
    assert guard.ledger.reserved(KEYS["refuse"]) == pytest.approx(0.05)
    before = remaining(guard, "refuse")
    reservation.settle(0.02)
    assert guard.ledger.reserved(KEYS["refuse"]) == 0
    assert remaining(guard, "refuse") == pytest.approx(before - 0.02)


# -- the transport, under the openai SDK ----------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("tier", TIERS)
def test_transport_forwards_everything_and_labels_it(
    fake: FakeProvider,
    guard: BudgetGuard,
    decisions: list[Decision],
    stack: str,
    tier: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = remaining(guard, tier)
    client = openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS[tier],
        http_client=sync_http(guard, stack),
        max_retries=0,
        timeout=TIMEOUT,
    )
    with client:
        raw = client.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)
    assert raw.parse().choices[0].message.content == fake.reply_text
    assert raw.headers["x-creditguard-decision"] == tier
    assert raw.headers["x-creditguard-enforced"] == "false"
    assert "x-creditguard-model-requested" not in raw.headers
    assert [r.model for r in chat_requests(fake)] == [EXPENSIVE]  # never rewritten
    assert [(d.action, d.enforced) for d in decisions[-1:]] == [(tier, False)]
    # charged what the provider reported, as any call that went out
    assert remaining(guard, tier) == pytest.approx(before - fake.default_price)
    assert guard.ledger.reserved(KEYS[tier]) == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "creditguard"]
    assert any(m.startswith(f"{tier} (shadow mode) model={EXPENSIVE}") for m in logged)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_async_transport_forwards_a_refused_call(
    fake: FakeProvider, guard: BudgetGuard, stack: str, stream: bool
) -> None:
    before = remaining(guard, "refuse")
    client = openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS["refuse"],
        http_client=async_http(guard, stack),
        max_retries=0,
        timeout=TIMEOUT,
    )
    async with client:
        if stream:
            chunks = await client.chat.completions.create(
                model=EXPENSIVE, messages=MESSAGES, stream=True
            )
            async with chunks:
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in chunks if c.choices]
                )
            headers = chunks.response.headers
        else:
            raw = await client.chat.completions.with_raw_response.create(
                model=EXPENSIVE, messages=MESSAGES
            )
            text, headers = raw.parse().choices[0].message.content or "", raw.headers
    assert text == fake.reply_text
    assert (headers["x-creditguard-decision"], headers["x-creditguard-enforced"]) == (
        "refuse",
        "false",
    )
    assert len(chat_requests(fake)) == 1
    assert remaining(guard, "refuse") == pytest.approx(before - fake.default_price)


@pytest.mark.parametrize("stack", STACKS)
def test_enforced_responses_carry_no_shadow_header(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    client = openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS["warn"],
        http_client=sync_http(guard, stack),
        max_retries=0,
        timeout=TIMEOUT,
    )
    with client:
        raw = client.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)
    guard.close()
    assert raw.headers["x-creditguard-decision"] == "warn"
    assert "x-creditguard-enforced" not in raw.headers


# -- the fail-open label --------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_a_fail_open_allow_is_labelled(
    fake: FakeProvider, decisions: list[Decision], stack: str
) -> None:
    guard = make_guard(fake, decisions)
    fake.fault("key", status=500)
    client = openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS["allow"],
        http_client=sync_http(guard, stack),
        max_retries=0,
        timeout=TIMEOUT,
    )
    with client:
        raw = client.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)
    guard.close()
    assert raw.headers["x-creditguard-decision"] == "allow; balance=unavailable"
    assert raw.parse().choices[0].message.content == fake.reply_text
    assert decisions[-1].fail_open and decisions[-1].balance is None


def test_a_percent_threshold_without_a_total_fails_open_visibly() -> None:
    balance = Balance(remaining=3.0, total=None, unit="USD", source="test")
    d = decide(balance, Policy(refuse_below="5%"), "m")
    assert d.action == "allow" and d.fail_open
    assert not decide(balance, Policy(refuse_below=1.0), "m").fail_open
    assert not decide(None, Policy(on_source_error="refuse"), "m").fail_open


# -- the decorator ----------------------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
def test_decorator_neither_raises_nor_rewrites(
    fake: FakeProvider, decisions: list[Decision], tier: str
) -> None:
    source = OpenRouterKey(api_key=KEYS[tier], base_url=fake.openrouter_base_url)
    guard = BudgetGuard(source, SHADOW, estimate=0.0, on_decision=decisions.append)
    client = openai.OpenAI(
        base_url=fake.openrouter_base_url, api_key=KEYS[tier], max_retries=0, timeout=TIMEOUT
    )
    seen: list[str] = []

    @guard
    def ask(prompt: str, model: str = EXPENSIVE) -> Any:
        seen.append(model)
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}]
        )

    before = guard.check(EXPENSIVE).balance
    assert before is not None
    with client:
        reply = ask("hi")
    assert reply.choices[0].message.content == fake.reply_text
    assert seen == [EXPENSIVE]
    assert decisions[-1].action == tier and not decisions[-1].enforced
    after = guard.check(EXPENSIVE).balance
    assert after is not None
    assert after.remaining == pytest.approx(before.remaining - fake.default_price)
    guard.close()


async def test_async_decorator_does_not_raise(
    fake: FakeProvider, decisions: list[Decision]
) -> None:
    source = OpenRouterKey(api_key=KEYS["refuse"], base_url=fake.openrouter_base_url)
    guard = BudgetGuard(source, SHADOW, estimate=0.0, on_decision=decisions.append)

    @guard
    async def ask(model: str = EXPENSIVE) -> str:
        return model

    assert await ask() == EXPENSIVE
    assert decisions[-1].action == "refuse"
    enforced = BudgetGuard(source, POLICY, estimate=0.0)
    with pytest.raises(CreditsExhausted):
        await enforced(ask.__wrapped__)()
    await guard.aclose()


# -- the Anthropic middleware ---------------------------------------------------------------


def test_anthropic_middleware_forwards_a_refused_call(fake: FakeProvider) -> None:
    key = KEYS["refuse"]
    decisions: list[Decision] = []
    guard = BudgetGuard(
        OpenRouterKey(api_key=key, base_url=fake.openrouter_base_url),
        SHADOW,
        estimate=0.0,
        on_decision=decisions.append,
    )
    client = anthropic.Anthropic(
        base_url=fake.anthropic_base_url,
        api_key=key,
        middleware=[guard.anthropic_middleware()],
        max_retries=0,
    )
    with client:
        message = client.messages.create(
            model=EXPENSIVE, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
    assert message.model == EXPENSIVE
    assert [r.model for r in fake.requests if r.endpoint == "messages"] == [EXPENSIVE]
    assert [(d.action, d.enforced) for d in decisions] == [("refuse", False)]
    guard.close()


# These tests are not about store timeouts: a reply slower than 0.2 s (a loaded machine)
# made the guard go on its local books, which is right, but not what they check.
STORE_TIMEOUT = 5.0

# -- one budget in Redis --------------------------------------------------------------------


def test_shared_store_holds_shadow_refusals_too(redis_server: RedisServer) -> None:
    """Two shadow guards over one Redis: calls past the floor are reported as refused
    (also when another worker took the headroom since the read), and every one is held."""
    source = FixedBudget(1.0)
    store = f"{redis_server.url}?secret=shadow-secret&timeout={STORE_TIMEOUT}"
    policy = Policy(refuse_below=0.5, enforce=False)
    a = BudgetGuard(source, policy, store=store, estimate=0.2)
    b = BudgetGuard(source, policy, store=store, estimate=0.2)
    held = [g.reserve("m") for g in (a, b, a, b)]
    assert [r.decision.action for r in held] == ["allow", "allow", "refuse", "refuse"]
    assert not any(r.decision.enforced for r in held)
    assert a.ledger.reserved(None) == pytest.approx(0.8)  # all four went out, all held
    for r in held:
        r.settle()
    assert b.ledger.reserved(None) == 0
    a.close()
    b.close()


def test_shared_store_race_lost_in_shadow_mode_is_reported_and_held(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FixedBudget(1.0)
    store = f"{redis_server.url}?secret=shadow-secret&timeout={STORE_TIMEOUT}"
    policy = Policy(refuse_below=0.5, enforce=False)
    a = BudgetGuard(source, policy, store=store, estimate=0.2)
    b = BudgetGuard(source, policy, store=store, estimate=0.2)
    a.check()
    real = a.ledger.store.admit  # type: ignore[attr-defined]

    def another_worker_first(*args: Any) -> Any:
        monkeypatch.setattr(a.ledger.store, "admit", real)
        b.reserve("m", estimate=0.4)  # takes the headroom between a's look and a's hold
        return real(*args)

    monkeypatch.setattr(a.ledger.store, "admit", another_worker_first)
    r = a.reserve("m")
    # (the hold script reads the state it holds on: a is judged on b's hold)
    assert r.decision.action == "refuse" and not r.decision.enforced
    assert a.ledger.reserved(None) == pytest.approx(0.6)  # b's 0.4 and a's 0.2: both went out
    r.settle(0.1)
    assert a.ledger.reserved(None) == pytest.approx(0.4)
    a.close()
    b.close()
