"""guard.anthropic_middleware() under the real anthropic 2.x SDK, against the loopback fake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from creditguard import BudgetGuard, CreditsExhausted, Decision, Policy
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-ant-api03-MIDDLEWARESECRET0000000000000"
BIG, CHEAP = "claude-big", "claude-cheap"
POLICY = Policy(warn_below=5, downgrade_below=2, refuse_below=0.5, downgrade={BIG: CHEAP})
ARGS: dict[str, Any] = {
    "model": BIG,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
}


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.prices.update({BIG: 0.3, CHEAP: 0.05})
        yield provider


def guard_for(
    fake: FakeProvider, limit: float, decisions: list[Decision], **kw: Any
) -> BudgetGuard:
    fake.add_key(KEY, limit=limit)
    kw.setdefault("estimate", 0.0)
    return BudgetGuard(
        OpenRouterKey(api_key=KEY, base_url=fake.openrouter_base_url),
        POLICY,
        on_decision=decisions.append,
        **kw,
    )


def client(fake: FakeProvider, guard: BudgetGuard, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=fake.anthropic_base_url,
        api_key=KEY,
        middleware=[guard.anthropic_middleware()],
        **kw,
    )


def messages(fake: FakeProvider) -> list[Any]:
    return [r for r in fake.requests if r.endpoint == "messages"]


@pytest.mark.parametrize(("limit", "model"), [(10.0, BIG), (1.5, CHEAP)])
def test_allow_and_downgrade(fake: FakeProvider, limit: float, model: str) -> None:
    decisions: list[Decision] = []
    guard = guard_for(fake, limit, decisions)
    with client(fake, guard) as c:
        message = c.messages.create(**ARGS)
    assert message.model == model
    assert [r.model for r in messages(fake)] == [model]
    assert messages(fake)[0].json["max_tokens"] == 16  # the rest of the body as it was
    assert len(decisions) == 1
    guard.close()


def test_refuse_raises_before_any_request_and_is_not_retried(fake: FakeProvider) -> None:
    decisions: list[Decision] = []
    guard = guard_for(fake, 0.3, decisions)
    with client(fake, guard, max_retries=3) as c, pytest.raises(CreditsExhausted) as info:
        c.messages.create(**ARGS)
    assert info.value.decision.action == "refuse"
    assert messages(fake) == [] and len(decisions) == 1
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    guard.close()


def test_a_retry_is_judged_once_and_downgraded_again(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anthropic.Anthropic, "_calculate_retry_timeout", lambda *a, **k: 0.01)
    decisions: list[Decision] = []
    guard = guard_for(fake, 1.5, decisions)
    fake.fault("messages", status=500, times=1)
    with client(fake, guard, max_retries=2) as c:
        assert c.messages.create(**ARGS).model == CHEAP
    assert [r.model for r in messages(fake)] == [CHEAP, CHEAP]
    assert len(decisions) == 1 and fake.count("key") == 1
    assert guard.ledger.reserved(None) == 0
    guard.close()


def test_settles_tokens_times_prices(fake: FakeProvider) -> None:
    decisions: list[Decision] = []
    p, c_ = 1e-3, 2e-3
    guard = guard_for(fake, 10.0, decisions, pricing={"claude-*": {"prompt": p, "completion": c_}})
    with client(fake, guard) as c:
        message = c.messages.create(**ARGS)
    expected = message.usage.input_tokens * p + message.usage.output_tokens * c_
    belief = guard.check(estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(10.0 - expected)
    assert guard.ledger.reserved(None) == 0
    guard.close()


def test_a_failed_call_releases_its_hold(fake: FakeProvider) -> None:
    decisions: list[Decision] = []
    guard = guard_for(fake, 10.0, decisions, estimate=0.5)
    fake.fault("messages", status=400, times=1)
    with client(fake, guard, max_retries=0) as c, pytest.raises(anthropic.BadRequestError):
        c.messages.create(**ARGS)
    assert guard.ledger.reserved(None) == 0
    assert guard.check(estimate=0).balance.remaining == 10.0  # type: ignore[union-attr]
    guard.close()


async def test_async_client(fake: FakeProvider) -> None:
    decisions: list[Decision] = []
    guard = guard_for(fake, 1.5, decisions)
    async with anthropic.AsyncAnthropic(
        base_url=fake.anthropic_base_url, api_key=KEY, middleware=[guard.anthropic_middleware()]
    ) as c:
        assert (await c.messages.create(**ARGS)).model == CHEAP
        fake.set_key(KEY, limit=0.3)
        guard.invalidate()
        with pytest.raises(CreditsExhausted):
            await c.messages.create(**ARGS)
    assert [r.model for r in messages(fake)] == [CHEAP]
    await guard.aclose()


def test_non_messages_requests_pass(fake: FakeProvider) -> None:
    decisions: list[Decision] = []
    guard = guard_for(fake, 0.3, decisions)  # would refuse a Messages call
    with client(fake, guard, max_retries=0) as c, pytest.raises(anthropic.NotFoundError):
        c.models.list()  # the fake has no /v1/models: a 404, but not judged
    assert decisions == []
    guard.close()
