"""Metrics of several guards in one process, reported through one OpenTelemetry
MeterProvider or one Prometheus registry.

Every series carries the guard's name (``creditguard.guard``): two guards that
see the same credential report series of their own, never one arbitrary value
(OpenTelemetry) nor duplicate samples (Prometheus). Guards given the same name
add up their counters; their balance gauge shows the lowest balance.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import points

import creditguard.prometheus as cgp
from creditguard import Balance, BudgetGuard, ConfigError
from creditguard.metrics import tally_of
from creditguard.sources import CallableSource, FixedBudget

KEY = "sk-test-shared-credential-0001"
GUARD = "creditguard.guard"
CRED = "creditguard.credential"


def by_guard(rows: list[tuple[dict[str, Any], Any]], **match: str) -> dict[str, float]:
    """guard name -> the value of the one point matching ``match`` (dots as __);
    fails when a guard has two such points."""
    want = {k.replace("__", "."): v for k, v in match.items()}
    out: dict[str, float] = {}
    for attrs, v in rows:
        if all(attrs.get(k) == x for k, x in want.items()):
            assert attrs[GUARD] not in out, f"two points for {attrs}"
            out[attrs[GUARD]] = v
    return out


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The registry's text exposition, read back by prometheus_client's own
    parser: (sample name, labels) -> value; fails on a duplicate sample."""
    text = generate_latest(registry).decode()
    samples = [
        (s.name, frozenset(s.labels.items()), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    seen = Counter((name, labels) for name, labels, _ in samples)
    duplicates = [k for k, n in seen.items() if n > 1]
    assert not duplicates, f"duplicate samples: {duplicates}"
    return {(name, labels): value for name, labels, value in samples}


def sample(
    got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return got[(name, frozenset(labels.items()))]


def balance_of(remaining: float) -> CallableSource:
    return CallableSource(
        lambda credential: Balance(remaining=remaining, unit="credits"), name="budget"
    )


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def pair(reader: InMemoryMetricReader) -> Iterator[tuple[BudgetGuard, BudgetGuard]]:
    """Two guards (tenants) on one credential, with budgets of their own,
    reporting through one MeterProvider."""
    provider = MeterProvider(metric_readers=[reader])
    a = BudgetGuard(balance_of(10.0), estimate=1.0, name="tenant-a", metrics=provider)
    b = BudgetGuard(balance_of(3.0), estimate=0.5, name="tenant-b", metrics=provider)
    yield a, b
    a.close()
    b.close()


def spend_some(a: BudgetGuard, b: BudgetGuard) -> None:
    """a: 2 decisions, one call held and charged its estimate (1.0); b: 1
    decision, one call charged 0.5."""
    with a.reserve("m", credential=KEY):
        pass
    a.check("m", credential=KEY)
    with b.reserve("m", credential=KEY):
        pass


def test_two_guards_one_meter_provider_report_distinct_series(
    pair: tuple[BudgetGuard, BudgetGuard], reader: InMemoryMetricReader
) -> None:
    a, b = pair
    spend_some(a, b)
    held = a.reserve("m", credential=KEY)
    held.__enter__()
    got = points(reader)
    fp = a.ledger.key(KEY)[:8]
    assert fp == b.ledger.key(KEY)[:8]  # the same credential, the same label
    assert by_guard(got["creditguard.decisions"], creditguard__credential=fp) == {
        "tenant-a": 3,  # the call still held was judged too
        "tenant-b": 1,
    }
    assert by_guard(got["creditguard.spend"], creditguard__credential=fp) == {
        "tenant-a": pytest.approx(1.0),
        "tenant-b": pytest.approx(0.5),
    }
    # each guard's own balance, never one of the two picked at random
    assert by_guard(got["creditguard.balance.available"], creditguard__credential=fp) == {
        "tenant-a": pytest.approx(10.0 - 1.0 - 1.0),  # less the charge and the call in flight
        "tenant-b": pytest.approx(3.0 - 0.5),
    }
    assert by_guard(got["creditguard.holds.active"], creditguard__credential=fp) == {
        "tenant-a": 1,
        "tenant-b": 0,
    }
    duration = by_guard(got["creditguard.source.duration"])
    assert {k: h.count for k, h in duration.items()} == {"tenant-a": 1, "tenant-b": 1}  # type: ignore[attr-defined]
    assert set(by_guard(got["creditguard.alerts.dropped"])) == {"tenant-a", "tenant-b"}
    for name, rows in got.items():  # every series names its guard, once
        attrs = [tuple(sorted(a.items())) for a, _ in rows]
        assert len(attrs) == len(set(attrs)), name
        assert all(a[GUARD] in ("tenant-a", "tenant-b") for a, _ in rows), name
    held.__exit__(None, None, None)


def test_two_guards_one_registry_give_valid_distinct_series(
    pair: tuple[BudgetGuard, BudgetGuard],
) -> None:
    a, b = pair
    registry = CollectorRegistry()
    cgp.register(a, registry)
    cgp.register(b, registry)
    cgp.register(b, registry)  # twice: nothing changes
    spend_some(a, b)
    got = scrape(registry)
    fp = a.ledger.key(KEY)[:8]
    for guard, decisions, spend, available in (
        ("tenant-a", 2, 1.0, 9.0),
        ("tenant-b", 1, 0.5, 2.5),
    ):
        assert (
            sample(
                got,
                "creditguard_decisions_total",
                creditguard_guard=guard,
                creditguard_action="allow",
                gen_ai_request_model="m",
                creditguard_source="budget",
                creditguard_credential=fp,
            )
            == decisions
        )
        assert sample(
            got,
            "creditguard_spend_total",
            creditguard_guard=guard,
            creditguard_cost_source="estimate",
            creditguard_unit="credits",
            creditguard_credential=fp,
        ) == pytest.approx(spend)
        assert sample(
            got,
            "creditguard_balance_available",
            creditguard_guard=guard,
            creditguard_unit="credits",
            creditguard_source="budget",
            creditguard_credential=fp,
        ) == pytest.approx(available)
        assert (
            sample(
                got,
                "creditguard_holds_active",
                creditguard_guard=guard,
                creditguard_credential=fp,
            )
            == 0
        )
        assert (
            sample(got, "creditguard_source_duration_seconds_count", creditguard_guard=guard) == 1
        )
        assert sample(got, "creditguard_alerts_dropped_total", creditguard_guard=guard) == 0


def test_a_fixed_budget_and_a_provider_balance_unnamed(reader: InMemoryMetricReader) -> None:
    """Two guards stacked on one credential, nobody named them: each is
    labelled by its source's name, and their spends stay apart."""
    provider = MeterProvider(metric_readers=[reader])
    budget = BudgetGuard(
        FixedBudget(5.0, unit="credits", per_credential=True), estimate=0.25, metrics=provider
    )
    balance = BudgetGuard(balance_of(100.0), estimate=0.25, metrics=provider)
    registry = CollectorRegistry()
    for g in (budget, balance):
        cgp.register(g, registry)
        with g.reserve("m", credential=KEY):
            pass
    fp = budget.ledger.key(KEY)[:8]
    got = scrape(registry)  # no duplicate sample (both spent 0.25 on this credential)
    assert tally_of(budget).name == "fixed" and tally_of(balance).name == "budget"
    spend = by_guard(points(reader)["creditguard.spend"], creditguard__credential=fp)
    assert spend == {"fixed": pytest.approx(0.25), "budget": pytest.approx(0.25)}
    for guard, source, available in (("fixed", "fixed", 4.75), ("budget", "budget", 99.75)):
        assert sample(
            got,
            "creditguard_balance_available",
            creditguard_guard=guard,
            creditguard_unit="credits",
            creditguard_source=source,
            creditguard_credential=fp,
        ) == pytest.approx(available)
    budget.close()
    balance.close()


def test_unnamed_guards_on_the_same_kind_of_source_are_numbered(
    reader: InMemoryMetricReader,
) -> None:
    gc.collect()  # no guard of an earlier test holds the name any more
    provider = MeterProvider(metric_readers=[reader])
    guards = [BudgetGuard(balance_of(r), metrics=provider) for r in (7.0, 8.0, 9.0)]
    names = [tally_of(g).name for g in guards]
    assert names[0] == "budget" and len(set(names)) == 3
    assert all(n.startswith("budget-") for n in names[1:])
    for g in guards:
        g.check("m", credential=KEY)
    fp = guards[0].ledger.key(KEY)[:8]
    available = by_guard(
        points(reader)["creditguard.balance.available"], creditguard__credential=fp
    )
    assert available == dict(zip(names, (7.0, 8.0, 9.0), strict=True))
    registry = CollectorRegistry()
    for g in guards:
        cgp.register(g, registry)
    scrape(registry)  # valid: no duplicate sample
    for g in guards:
        g.close()


def test_guards_sharing_a_name_add_up_counters_and_show_the_lowest_balance(
    reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers' guards given one name are one guard to the metrics: their
    counters add up, open holds add up, the balance is the lower of the two
    (never their sum)."""
    provider = MeterProvider(metric_readers=[reader])
    one = BudgetGuard(balance_of(10.0), estimate=1.0, name="workers", metrics=provider)
    with caplog.at_level(logging.WARNING, logger="creditguard"):
        two = BudgetGuard(balance_of(4.0), estimate=1.0, name="workers", metrics=provider)
    assert any("workers" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    registry = CollectorRegistry()
    for g in (one, two):
        cgp.register(g, registry)
        with g.reserve("m", credential=KEY):
            pass
    held = one.reserve("m", credential=KEY)
    held.__enter__()
    fp = one.ledger.key(KEY)[:8]
    got = points(reader)
    assert by_guard(got["creditguard.decisions"], creditguard__credential=fp) == {"workers": 3}
    assert by_guard(got["creditguard.spend"], creditguard__credential=fp) == {
        "workers": pytest.approx(2.0)
    }
    assert by_guard(got["creditguard.holds.active"], creditguard__credential=fp) == {"workers": 1}
    assert by_guard(got["creditguard.balance.available"], creditguard__credential=fp) == {
        "workers": pytest.approx(3.0)  # min(10 - 1 charged - 1 held, 4 - 1 charged)
    }
    scraped = scrape(registry)
    assert (
        sample(scraped, "creditguard_source_duration_seconds_count", creditguard_guard="workers")
        == 2
    )
    assert sample(
        scraped,
        "creditguard_balance_available",
        creditguard_guard="workers",
        creditguard_unit="credits",
        creditguard_source="budget",
        creditguard_credential=fp,
    ) == pytest.approx(3.0)
    held.__exit__(None, None, None)
    one.close()
    two.close()


def test_a_collected_guards_series_go_away(reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    keep = BudgetGuard(balance_of(1.0), name="keep", metrics=provider)
    gone = BudgetGuard(balance_of(2.0), name="gone", metrics=provider)
    registry = CollectorRegistry()
    for g in (keep, gone):
        cgp.register(g, registry)
        g.check("m", credential=KEY)
    assert set(by_guard(points(reader)["creditguard.decisions"])) == {"keep", "gone"}
    gone.close()
    del gone, g
    gc.collect()
    assert set(by_guard(points(reader)["creditguard.decisions"])) == {"keep"}
    assert {dict(k[1]).get("creditguard_guard") for k in scrape(registry)} <= {"keep", None}
    keep.close()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "a\nb",
        "x" * 101,
        5,
        b"tenant",
        KEY,
        f"team {KEY}",  # a key inside a name
        "billing https://admin:hunter22@gw.example",  # a password inside a name
    ],
)
def test_a_bad_guard_name_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="name") as info:
        BudgetGuard(balance_of(1.0), name=bad, metrics=False)  # type: ignore[arg-type]
    assert "100 characters, not a key" in str(info.value)
    assert KEY not in str(info.value)  # a key given as a name is never shown
    assert "hunter22" not in str(info.value)


def test_the_name_is_kept_on_the_guard() -> None:
    guard = BudgetGuard(balance_of(1.0), name="tenant-a", metrics=False)
    assert guard.name == "tenant-a"
    assert BudgetGuard(balance_of(1.0), metrics=False).name is None


def test_the_name_from_config_and_its_env_var(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "creditguard.toml"
    path.write_text(
        '[creditguard]\nsource = "fixed"\nlimit = 5\nname = "tenant-a"\nmetrics = false\n'
    )
    assert BudgetGuard.from_config(path, env=False).name == "tenant-a"
    assert BudgetGuard.from_config(path, env=False, name="code-wins").name == "code-wins"
    monkeypatch.setenv("CREDITGUARD_NAME", "tenant-b")
    assert BudgetGuard.from_config(path).name == "tenant-b"
    with pytest.raises(ConfigError, match="name"):
        BudgetGuard.from_config({"source": "fixed", "limit": 5, "name": 7}, env=False)
    with pytest.raises(ConfigError, match="not a key") as info:
        BudgetGuard.from_config({"source": "fixed", "limit": 5, "name": KEY}, env=False)
    assert KEY not in str(info.value)
