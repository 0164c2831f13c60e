"""The event fan-out: subscribers, unsubscribing, and a subscriber that raises."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import creditguard as cg
from creditguard.events import KINDS, Events
from creditguard.sources import CallableSource


def guard_of(remaining: float = 10.0, **kwargs: Any) -> cg.BudgetGuard:
    return cg.BudgetGuard(
        CallableSource(lambda: cg.Balance(remaining=remaining, total=20.0)),
        cg.Policy(warn_below=5.0),
        estimate=1.0,
        metrics=False,
        **kwargs,
    )


def test_every_kind_reaches_its_subscribers() -> None:
    guard = guard_of()
    seen: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in KINDS}
    for kind in ("decision", "refresh", "fetch", "spend"):
        guard.events.subscribe(kind, lambda *args, kind=kind: seen[kind].append(args))
    with guard.reserve("m") as reservation:
        assert reservation.decision.action == "allow"
    guard.record(0.5)
    assert [args[0].action for args in seen["decision"]] == ["allow"]
    assert seen["refresh"][0][0].remaining == 10.0
    key, seconds, ok = seen["fetch"][0]
    assert ok and seconds >= 0 and key == guard.ledger.key(None)
    assert [(cost, how) for _, cost, how in seen["spend"]] == [(1.0, "estimate"), (0.5, "provider")]


def test_source_errors_are_events() -> None:
    def broken() -> float:
        raise RuntimeError("down")

    errors: list[cg.CreditSourceError] = []
    guard = cg.BudgetGuard(CallableSource(broken), on_source_error=errors.append, metrics=False)
    fetches: list[bool] = []
    guard.events.subscribe("fetch", lambda key, seconds, ok: fetches.append(ok))
    assert guard.check("m").balance is None
    assert len(errors) == 1 and fetches == [False]


def test_quiet_allows_reach_only_subscribers_that_want_them() -> None:
    guard = guard_of()
    assert not guard.events.loud  # logging alone: a quiet allow costs nothing more
    picky: list[Any] = []
    guard.events.subscribe("decision", lambda d, key: picky.append(d.action), every=False)
    assert not guard.events.loud
    guard.check("m")  # fetches: decided the long way, reported
    guard.check("m")  # fresh and quiet: not reported
    guard.check("m", estimate=6.0)  # a warning always is
    assert picky == ["allow", "warn"]
    everything: list[Any] = []
    unsubscribe = guard.events.subscribe("decision", lambda d, key: everything.append(d))
    assert guard.events.loud
    guard.check("m")
    assert len(everything) == 1
    unsubscribe()
    unsubscribe()  # twice: nothing more happens
    assert not guard.events.loud
    guard.check("m")
    assert len(everything) == 1


def test_a_raising_subscriber_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[cg.Decision] = []

    def broken(decision: cg.Decision) -> None:
        raise RuntimeError("subscriber bug")

    guard = guard_of(on_decision=broken)
    guard.events.subscribe("decision", lambda d, key: got.append(d))
    with caplog.at_level(logging.ERROR, logger="creditguard"):
        assert guard.check("m").action == "allow"
    assert len(got) == 1
    assert any("raised" in r.getMessage() and r.exc_info for r in caplog.records)


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="an event kind: one of decision, "):
        Events().subscribe("decisions", print)
    assert "decision=1" in repr(guard_of().events)


def test_callbacks_can_be_set_replaced_and_removed() -> None:
    guard = guard_of()
    first: list[str] = []
    second: list[str] = []
    guard.on_decision = lambda d: first.append(d.action)
    guard.check("m")
    guard.on_decision = lambda d: second.append(d.action)  # replaces, not adds
    guard.check("m")
    assert first == ["allow"] and second == ["allow"]
    guard.on_decision = None
    assert guard.on_decision is None and not guard.events.loud
    guard.check("m")
    assert second == ["allow"]
    with pytest.raises(cg.ConfigError, match="on_alert"):
        guard.on_alert = "page me"  # type: ignore[assignment]


def test_a_bad_subscription_is_a_config_error_naming_the_kinds() -> None:
    # events.subscribe("settle") raised a bare ValueError; a handler that is not
    # callable was taken and failed at the first event
    events = Events()
    for kind in ("settle", 5, None):
        with pytest.raises(cg.ConfigError) as info:
            events.subscribe(kind, print)  # type: ignore[arg-type]
        assert info.value.key == "kind" and all(k in info.value.allowed for k in KINDS)
    with pytest.raises(cg.ConfigError) as handler:
        events.subscribe("decision", "print")  # type: ignore[arg-type]
    assert handler.value.key == "handler" and "callable" in handler.value.allowed
    assert events.decision is None  # nothing half-subscribed
