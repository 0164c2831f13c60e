"""FixedBudget: calendar periods, rolling windows, and a bounded count per credential."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from creditguard import BudgetGuard, ConfigError, Policy
from creditguard.config import load_config
from creditguard.sources import FixedBudget


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize("period", ["15m", "1h", "24h", "90m", "7d"])
def test_rolling_windows_forget_spend_older_than_the_window(period: str) -> None:
    clock = Clock()
    budget = FixedBudget(10.0, period=period, clock=clock)
    assert budget.window is not None
    budget.record(None, 4.0)
    clock.now += timedelta(seconds=budget.window / 2)
    budget.record(None, 3.0)
    assert budget.fetch(None).remaining == 3.0
    # the first spend leaves the window (counted at most one thirtieth longer)
    clock.now += timedelta(seconds=budget.window / 2 + budget.window / 30 + 1)
    assert budget.fetch(None).remaining == 7.0
    clock.now += timedelta(seconds=budget.window)
    assert budget.fetch(None).remaining == 10.0


def test_a_rolling_window_never_counts_less_than_its_length() -> None:
    clock = Clock()
    budget = FixedBudget(1.0, period="1h", clock=clock)
    budget.record(None, 1.0)
    for minutes in range(0, 60, 5):
        clock.now += timedelta(minutes=5) if minutes else timedelta(0)
        assert budget.fetch(None).remaining == 0.0, minutes


def test_calendar_periods_still_reset_at_their_start() -> None:
    clock = Clock()
    budget = FixedBudget(5.0, period="day", clock=clock)
    budget.record(None, 2.0)
    clock.now = clock.now.replace(hour=23, minute=59)
    assert budget.fetch(None).remaining == 3.0
    clock.now += timedelta(minutes=1)
    assert budget.fetch(None).remaining == 5.0


@pytest.mark.parametrize(
    "period", ["hour", "1s", "0m", "-1h", "1.5h", "15 m", "400d", 15, "Day", "", "1w"]
)
def test_invalid_periods_name_what_is_allowed(period: object) -> None:
    with pytest.raises(ConfigError) as info:
        FixedBudget(1.0, period=period)  # type: ignore[arg-type]
    message = str(info.value)
    assert "'15m'" in message and "'day'" in message and "None" in message


def test_config_takes_rolling_periods() -> None:
    assert load_config({"source": "fixed", "limit": 5, "period": "1h"}, env=False).period == "1h"
    guard = BudgetGuard.from_config({"source": "fixed", "limit": 5, "period": "15m"}, env=False)
    assert isinstance(guard.source, FixedBudget) and guard.source.period == "15m"
    with pytest.raises(ConfigError, match="rolling window"):
        load_config({"source": "fixed", "limit": 5, "period": "fortnight"}, env=False)


def test_per_credential_budgets_are_bounded() -> None:
    clock = Clock()
    budget = FixedBudget(1.0, period="month", per_credential=True, clock=clock, maxsize=3)
    for i in range(10):
        budget.record(f"sk-{i}", 0.5)
    assert budget.counted == 3  # the least recently used are dropped
    assert FixedBudget(1.0)  # (an empty budget is truthy)
    assert budget.fetch("sk-9").remaining == 0.5
    budget.fetch("sk-7")  # used: kept
    budget.record("sk-new", 0.1)
    assert budget.fetch("sk-7").remaining == 0.5
    assert budget.fetch("sk-8").remaining == 1.0  # dropped
    with pytest.raises(ConfigError):
        FixedBudget(1.0, maxsize=0)


def test_a_rolling_budget_guards_calls() -> None:
    clock = Clock()
    guard = BudgetGuard(
        FixedBudget(1.0, period="1h", clock=clock), Policy(refuse_below=0.0), ttl=1e-6, estimate=0.4
    )
    assert guard.reserve("m").decision.action == "allow"
    guard.reserve("m").settle(0.4)
    assert guard.reserve("m").decision.action == "refuse"  # 0.4 held + 0.4 spent + 0.4
    clock.now += timedelta(hours=1, minutes=3)
    assert guard.check("m").action == "allow"


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def test_a_fixed_budgets_balance_says_when_it_resets() -> None:
    # FixedBudget balances carried resets_at=None although the period's end is known
    clock = Clock()
    clock.now = datetime(2026, 12, 5, 16, 20, 10, tzinfo=timezone.utc)  # a Saturday
    ends = {
        "day": datetime(2026, 12, 6, tzinfo=timezone.utc),
        "week": datetime(2026, 12, 7, tzinfo=timezone.utc),  # Monday
        "month": datetime(2027, 1, 1, tzinfo=timezone.utc),  # across the year
        "1h": datetime(2026, 12, 5, 16, 22, tzinfo=timezone.utc),  # the 2-minute slice ends
        "15m": datetime(2026, 12, 5, 16, 20, 30, tzinfo=timezone.utc),  # 30 s slices
    }
    for period, end in ends.items():
        budget = FixedBudget(10, period=period, clock=clock)
        assert _utc(budget.fetch(None).resets_at) == end, period
        guard = BudgetGuard(budget, Policy(refuse_below=1))
        with guard.reserve("m") as held:
            held.settle(2.0)
        balance = guard.check("m").balance
        assert balance is not None and _utc(balance.resets_at) == end, period
    assert FixedBudget(10, period=None, clock=clock).fetch(None).resets_at is None
    # a rolling window's moves on with its slices
    rolling = FixedBudget(10, period="1h", clock=clock)
    clock.now += timedelta(minutes=2)
    assert _utc(rolling.fetch(None).resets_at) == datetime(2026, 12, 5, 16, 24, tzinfo=timezone.utc)


def test_the_decision_docstring_says_each_thing_once() -> None:
    from creditguard import Decision

    doc = Decision.__doc__ or ""
    assert doc.count("one human sentence") == 1 and doc.count("none could be had") == 1
