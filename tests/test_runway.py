"""Runway, warn_runway and max_rate, through the real openai SDK on a fake clock.

The guard's timer is injected: the calls are real (loopback fake provider), the
minutes between them are not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sdk_helpers import (
    CHEAP,
    EXPENSIVE,
    MESSAGES,
    TIMEOUT,
    debug_logs_never_show_a_key,
    running_fake,
    sync_http,
)

from creditguard import (
    Balance,
    BudgetGuard,
    ConfigError,
    CreditsExhausted,
    Decision,
    Policy,
    load_config,
)
from creditguard.runway import TAU, WARMUP, BurnRates
from creditguard.sources import CallableSource, OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-SDKTESTSECRET-RUNWAY-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    for provider in running_fake():
        provider.add_key(KEY, credits=10_000.0, limit=1000.0)
        yield provider


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from debug_logs_never_show_a_key(caplog)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    fake: FakeProvider, policy: Policy, clock: Clock, decisions: list[Decision]
) -> BudgetGuard:
    return BudgetGuard(
        OpenRouterKey(base_url=fake.openrouter_base_url, timeout=TIMEOUT),
        policy,
        estimate=0.0,
        timer=clock,
        on_decision=decisions.append,
        metrics=False,
    )


def client(fake: FakeProvider, guard: BudgetGuard) -> Any:
    return openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=sync_http(guard),
        max_retries=0,
        timeout=TIMEOUT,
    )


def test_runway_is_none_until_known_then_follows_the_burn_rate(
    fake: FakeProvider, clock: Clock
) -> None:
    fake.set_key(KEY, limit=10.0)
    fake.prices[EXPENSIVE] = 0.05
    decisions: list[Decision] = []
    guard = make(fake, Policy(refuse_below=1.0), clock, decisions)
    with client(fake, guard) as c:
        for _ in range(40):  # 0.05 every 10 s: 0.005 per second
            c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
            clock.advance(10.0)
    first, last = decisions[0], decisions[-1]
    assert first.runway is None  # nothing spent yet
    known = [d for d in decisions if d.runway is not None]
    assert known and len(known) < len(decisions)
    assert len(decisions) - len(known) <= WARMUP / 10 + 1
    assert last.available == pytest.approx(10.0 - 39 * 0.05)
    assert last.runway is not None
    expected = (last.available - 1.0) / 0.005
    assert last.runway == pytest.approx(expected, rel=0.15)
    # it shortens as the money goes
    assert known[-1].runway is not None and known[0].runway is not None
    assert known[-1].runway < known[0].runway
    guard.close()


def test_warn_runway_warns_through_the_sdk(fake: FakeProvider, clock: Clock) -> None:
    fake.set_key(KEY, limit=10.0)
    fake.prices[EXPENSIVE] = 0.05
    decisions: list[Decision] = []
    guard = make(fake, Policy(refuse_below=1.0, warn_runway=3600.0), clock, decisions)
    actions = []
    with client(fake, guard) as c:
        for _ in range(12):
            raw = c.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
            actions.append(raw.headers["x-creditguard-decision"])
            clock.advance(10.0)
    assert actions[0] == "allow"  # the runway is not known yet
    assert actions[-1] == "warn"
    assert "runway" in decisions[-1].reason and "warn_runway 3600" in decisions[-1].reason
    guard.close()


def test_max_rate_stops_a_tight_loop_within_the_window(fake: FakeProvider, clock: Clock) -> None:
    fake.prices.update({EXPENSIVE: 0.5, CHEAP: 0.05})
    decisions: list[Decision] = []
    policy = Policy(max_rate="1/min", downgrade={EXPENSIVE: CHEAP})
    guard = make(fake, policy, clock, decisions)
    start = clock.now
    actions: list[str] = []
    refused_at = None
    with client(fake, guard) as c:
        for _ in range(2000):  # a runaway agent: one call a second
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model=EXPENSIVE,
                    messages=MESSAGES,  # type: ignore[arg-type]
                )
                actions.append(raw.headers["x-creditguard-decision"])
            except openai.APIStatusError as exc:
                assert exc.status_code == 402
                assert exc.response.headers["x-creditguard-decision"] == "refuse"
                refused_at = clock.now
                break
            clock.advance(1.0)
    assert refused_at is not None, "the loop was never stopped"
    elapsed = refused_at - start
    assert elapsed <= TAU  # stopped within the ~15-minute window
    # allowed first, then downgraded (the fake saw the cheap model), then refused
    assert actions[0] == "allow" and "downgrade" in actions
    first_down = actions.index("downgrade")
    assert set(actions[:first_down]) == {"allow"}
    assert set(actions[first_down:]) == {"downgrade"}
    models = [r.json["model"] for r in fake.requests if r.endpoint == "chat"]
    assert models[first_down:] == [CHEAP] * (len(actions) - first_down)
    # what it spent: at most what 1/min allows over the window (the bucket) and
    # the time it ran, with the 1.25x margin at which refusal starts
    spent = fake.key(KEY).usage
    assert spent <= 1.25 * (TAU / 60 + elapsed / 60) + 0.5
    assert "max_rate 1/min" in decisions[-1].reason

    # it stays stopped while the rate is high ...
    with client(fake, guard) as c, pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
        # ... and runs again once the recent rate has come down
    clock.advance(2 * TAU)
    with client(fake, guard) as c:
        raw = c.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["x-creditguard-decision"] == "allow"
    guard.close()


def test_max_rate_without_a_cheaper_model_refuses_in_the_decorator(clock: Clock) -> None:
    guard = BudgetGuard(
        CallableSource(lambda: Balance(remaining=math.inf)),  # no cap: the rate still binds
        Policy(max_rate="6/hour"),
        estimate=0.1,
        timer=clock,
        metrics=False,
    )

    @guard
    def ask(model: str = "m") -> dict[str, Any]:
        return {"usage": {"cost": 0.1}}

    calls = 0
    with pytest.raises(CreditsExhausted) as info:
        for _ in range(1000):
            ask()
            calls += 1
            clock.advance(0.5)
    assert "no cheaper model" in info.value.decision.reason
    # 6/hour over 15 minutes is 1.5 credits: 15 calls of 0.1, give or take one
    assert 14 <= calls <= 16


def test_burn_rates_are_bounded_and_decay() -> None:
    clock = Clock()
    rates = BurnRates(clock, maxsize=3)
    for key in "abcd":
        rates.spent(key, 9.0)
    assert len(rates) == 3 and rates.rate("a") == 0.0  # the least recently spending went
    assert rates.rate("d") == pytest.approx(9.0 / TAU)
    clock.advance(TAU)
    assert rates.rate("d") == pytest.approx(9.0 / TAU / math.e)
    assert rates.runway("d", available=5.0, floor=5.0) == 0.0
    rates.spent("d", 0.0)  # nothing spent: nothing changes
    assert rates.burn("b") is not None


@pytest.mark.parametrize(
    ("knobs", "key"),
    [
        ({"max_rate": "1"}, "max_rate"),
        ({"max_rate": "1/fortnight"}, "max_rate"),
        ({"max_rate": "-1/min"}, "max_rate"),
        ({"max_rate": 5}, "max_rate"),
        ({"warn_runway": 0}, "warn_runway"),
        ({"warn_runway": float("nan")}, "warn_runway"),
        ({"alerts": "20%"}, "alerts"),
        ({"alerts": ["120%"]}, "alerts"),
        ({"alerts": [None]}, "alerts"),
    ],
)
def test_bad_operator_knobs_are_config_errors(knobs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Policy(**knobs)
    assert info.value.key == key


def test_config_keys_for_runway_alerts_and_max_rate() -> None:
    cfg = load_config(
        {"source": "fixed", "limit": 10, "warn_runway": 600, "max_rate": "5/hour"}, env=False
    )
    assert cfg.policy.warn_runway == 600.0 and cfg.policy.max_rate == "5/hour"
    env = {"CREDITGUARD_MAX_RATE": "1/min", "CREDITGUARD_ALERTS": '["50%", 5]'}
    with pytest.MonkeyPatch.context() as mp:
        for name, raw in env.items():
            mp.setenv(name, raw)
        cfg = load_config({"source": "fixed", "limit": 10})
    assert cfg.policy.max_rate == "1/min" and cfg.policy.alerts == ("50%", 5)
    with pytest.raises(ConfigError) as info:
        load_config({"source": "fixed", "limit": 10, "max_rate": "fast"}, env=False)
    assert info.value.key == "max_rate" and "1/min" in str(info.value)
