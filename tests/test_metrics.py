"""Metrics (OpenTelemetry and Prometheus) of guarded calls made through the real openai SDK.

The OpenTelemetry SDK reads them with an ``InMemoryMetricReader``; Prometheus
through a ``CollectorRegistry`` of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from sdk_helpers import (
    CHEAP,
    EXPENSIVE,
    KEYS,
    MESSAGES,
    POLICY,
    SECRET,
    TIMEOUT,
    async_http,
    debug_logs_never_show_a_key,
    running_fake,
    sync_http,
)

import creditguard.prometheus as cgp
from creditguard import Balance, BudgetGuard, Policy
from creditguard.metrics import MAX_CREDENTIALS, tally_of
from creditguard.sources import CallableSource, OpenRouterKey
from creditguard.testing import FakeProvider

# what the fake charges per call
PRICES = {EXPENSIVE: 0.25, CHEAP: 0.02}


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    for provider in running_fake():
        provider.prices.update(PRICES)
        for key in KEYS.values():
            provider.set_key(key, credits=1000.0)
        yield provider


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from debug_logs_never_show_a_key(caplog)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def guard(fake: FakeProvider, reader: InMemoryMetricReader) -> Iterator[BudgetGuard]:
    g = BudgetGuard(
        OpenRouterKey(base_url=fake.openrouter_base_url, timeout=TIMEOUT),
        POLICY,
        estimate=0.05,
        metrics=MeterProvider(metric_readers=[reader]),
    )
    yield g
    g.close()


def client(fake: FakeProvider, guard: BudgetGuard, tier: str, stack: str = "httpx2") -> Any:
    return openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS[tier],
        http_client=sync_http(guard, stack),
        max_retries=0,
        timeout=TIMEOUT,
    )


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Every metric's data points: name -> [(attributes, value or histogram point)]."""
    data = reader.get_metrics_data()
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [
                    (dict(p.attributes or {}), getattr(p, "value", p))
                    for p in metric.data.data_points
                ]
    return out


def value(rows: list[tuple[dict[str, Any], Any]], **match: str) -> float:
    """The sum of the points whose attributes include ``match`` (dots as __)."""
    want = {k.replace("__", "."): v for k, v in match.items()}
    return sum(v for attrs, v in rows if all(attrs.get(k) == x for k, x in want.items()))


def test_instruments_and_attributes_after_sdk_calls(
    fake: FakeProvider, guard: BudgetGuard, reader: InMemoryMetricReader
) -> None:
    prompt = completion = 0
    for stack in ("httpx", "httpx2"):
        with client(fake, guard, "allow", stack) as c:
            for _ in range(3):
                reply = c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
                assert reply.usage is not None
                prompt += reply.usage.prompt_tokens
                completion += reply.usage.completion_tokens
    with client(fake, guard, "downgrade") as c:
        c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
    with client(fake, guard, "refuse") as c, pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]

    got = points(reader)
    assert set(got) >= {
        "creditguard.decisions",
        "creditguard.spend",
        "creditguard.balance.available",
        "creditguard.holds.active",
        "creditguard.source.duration",
    }
    decisions = got["creditguard.decisions"]
    for attrs, _ in decisions:
        assert set(attrs) == {
            "creditguard.guard",
            "creditguard.action",
            "gen_ai.request.model",
            "creditguard.source",
            "creditguard.credential",
        }
        assert len(attrs["creditguard.credential"]) == 8
        assert attrs["creditguard.guard"] == tally_of(guard).name
        assert SECRET not in repr(attrs)
    assert value(decisions, creditguard__action="allow", gen_ai__request__model=EXPENSIVE) == 6
    assert value(decisions, creditguard__action="downgrade") == 1
    assert value(decisions, creditguard__action="refuse") == 1
    assert value(decisions, creditguard__source="openrouter-key") == 8

    # spend: what the provider reported for the calls that went out (6 x 0.25 + 1 x 0.02)
    spend = got["creditguard.spend"]
    assert value(spend, creditguard__cost__source="provider") == pytest.approx(6 * 0.25 + 0.02)
    assert value(spend, creditguard__cost__source="estimate") == 0
    assert {attrs["creditguard.unit"] for attrs, _ in spend} == {"USD"}

    # what is available for the allow key now: its limit less what the fake charged
    available = got["creditguard.balance.available"]
    state = fake.key(KEYS["allow"])
    assert state.limit is not None
    allow_fp = guard.ledger.key(KEYS["allow"])[:8]
    assert value(available, creditguard__credential=allow_fp) == pytest.approx(
        state.limit - state.usage
    )
    assert value(got["creditguard.holds.active"]) == 0  # every call settled

    # one credits request per key, each timed
    (attrs, histogram), *rest = got["creditguard.source.duration"]
    assert not rest and attrs == {
        "creditguard.guard": tally_of(guard).name,
        "creditguard.source": "openrouter-key",
    }
    assert histogram.count == 3 and histogram.sum > 0
    assert "creditguard.source.errors" not in got or value(got["creditguard.source.errors"]) == 0

    # tokens, under the GenAI names, by the model the calls asked for
    inputs = got["gen_ai.usage.input_tokens"]
    assert (
        prompt > 0
        and value(inputs, gen_ai__request__model=EXPENSIVE, creditguard__credential=allow_fp)
        == prompt
    )
    outputs = got["gen_ai.usage.output_tokens"]
    assert (
        value(outputs, gen_ai__request__model=EXPENSIVE, creditguard__credential=allow_fp)
        == completion
    )


def test_holds_active_counts_calls_in_flight(
    fake: FakeProvider, guard: BudgetGuard, reader: InMemoryMetricReader
) -> None:
    with guard.reserve(EXPENSIVE, credential=KEYS["allow"]):
        with guard.reserve(EXPENSIVE, credential=KEYS["allow"]):
            assert value(points(reader)["creditguard.holds.active"]) == 2
        assert value(points(reader)["creditguard.holds.active"]) == 1
    assert value(points(reader)["creditguard.holds.active"]) == 0
    spend = points(reader)["creditguard.spend"]
    assert value(spend, creditguard__cost__source="estimate") == pytest.approx(0.1)


def test_fail_open_and_source_errors_are_counted(
    fake: FakeProvider, guard: BudgetGuard, reader: InMemoryMetricReader
) -> None:
    fake.fault("key", status=500)
    with client(fake, guard, "allow") as c:
        raw = c.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
    assert raw.headers["x-creditguard-decision"].startswith("allow")
    got = points(reader)
    assert value(got["creditguard.fail_open"], gen_ai__request__model=EXPENSIVE) == 1
    assert value(got["creditguard.decisions"], creditguard__source="unavailable") == 1
    errors = got["creditguard.source.errors"]
    assert value(errors, creditguard__source="openrouter-key") == 1
    duration_attrs = [a for a, _ in got["creditguard.source.duration"]]
    assert {
        "creditguard.guard": tally_of(guard).name,
        "creditguard.source": "openrouter-key",
        "error.type": "CreditSourceError",
    } in duration_attrs
    # the call went out all the same, and its spend was counted
    assert value(got["creditguard.spend"]) == pytest.approx(0.25)


def test_spend_from_tokens_and_estimates_through_the_decorator(
    reader: InMemoryMetricReader,
) -> None:
    guard = BudgetGuard(
        CallableSource(lambda: Balance(remaining=10.0, total=10.0, unit="credits")),
        estimate=0.5,
        pricing={"m": {"prompt": 0.001, "completion": 0.002}},
        metrics=MeterProvider(metric_readers=[reader]),
    )

    @guard
    def ask(model: str = "m", usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"usage": usage}

    ask(usage={"prompt_tokens": 100, "completion_tokens": 50})  # 0.1 + 0.1
    ask(usage={"input_tokens": 7, "output_tokens": 0, "cost": 0.0})  # Anthropic's names
    ask(usage={"cost": 0.03})
    ask()  # no usage: the estimate
    spend = points(reader)["creditguard.spend"]
    assert value(spend, creditguard__cost__source="tokens") == pytest.approx(0.2)
    assert value(spend, creditguard__cost__source="provider") == pytest.approx(0.03)
    assert value(spend, creditguard__cost__source="estimate") == pytest.approx(0.5)
    assert {a["creditguard.unit"] for a, _ in spend} == {"credits"}
    assert value(points(reader)["gen_ai.usage.input_tokens"], gen_ai__request__model="m") == 107
    assert value(points(reader)["gen_ai.usage.output_tokens"]) == 50


def test_per_credential_series_are_capped(reader: InMemoryMetricReader) -> None:
    guard = BudgetGuard(
        CallableSource(lambda key: Balance(remaining=100.0)),
        metrics=MeterProvider(metric_readers=[reader]),
    )
    keys = [f"sk-test-{i:04d}" for i in range(MAX_CREDENTIALS + 20)]
    for key in keys:
        guard.check("m", credential=key)
    guard.check("m", credential=keys[-1])  # the most recent keeps its own series
    decisions = points(reader)["creditguard.decisions"]
    labels = [a["creditguard.credential"] for a, _ in decisions]
    assert len(labels) == MAX_CREDENTIALS + 1
    assert value(decisions, creditguard__credential="other") == 20
    assert value(decisions) == len(keys) + 1
    assert value(decisions, creditguard__credential=guard.ledger.key(keys[-1])[:8]) == 2
    available = points(reader)["creditguard.balance.available"]
    assert len(available) <= MAX_CREDENTIALS


def test_metrics_off_subscribe_nothing(fake: FakeProvider) -> None:
    quiet = BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), metrics=False)
    auto = BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url))  # no provider set
    for g in (quiet, auto):
        assert getattr(g, "_tally", None) is None
        assert not g.events.loud  # a quiet allow reaches no subscriber
        assert g.events.spend is None  # (the ledger feeds the burn rates itself)
        g.close()
    with pytest.raises(ValueError, match="metrics"):
        BudgetGuard(OpenRouterKey(), metrics="yes")


def test_prometheus_registry_reads_the_same(fake: FakeProvider, guard: BudgetGuard) -> None:
    registry = CollectorRegistry()
    cgp.register(guard, registry)
    cgp.register(guard, registry)  # twice: no duplicate series
    with client(fake, guard, "allow") as c:
        c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
        with c.chat.completions.create(
            model=EXPENSIVE,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        ) as chunks:
            streamed = [chunk.usage for chunk in chunks if chunk.usage is not None]
    fp = guard.ledger.key(KEYS["allow"])[:8]
    name = {"creditguard_guard": tally_of(guard).name}
    assert streamed and streamed[-1].completion_tokens > 0
    assert registry.get_sample_value(
        "gen_ai_usage_output_tokens_total",
        {**name, "gen_ai_request_model": EXPENSIVE, "creditguard_credential": fp},
    ) == pytest.approx(2 * streamed[-1].completion_tokens)
    labels = {
        **name,
        "creditguard_action": "allow",
        "gen_ai_request_model": EXPENSIVE,
        "creditguard_source": "openrouter-key",
        "creditguard_credential": fp,
    }
    assert registry.get_sample_value("creditguard_decisions_total", labels) == 2
    spend = {**name, "creditguard_cost_source": "provider", "creditguard_unit": "USD"}
    assert registry.get_sample_value(
        "creditguard_spend_total", {**spend, "creditguard_credential": fp}
    ) == pytest.approx(0.5)
    state = fake.key(KEYS["allow"])
    assert state.limit is not None
    assert registry.get_sample_value(
        "creditguard_balance_available",
        {
            **name,
            "creditguard_unit": "USD",
            "creditguard_source": "openrouter-key",
            "creditguard_credential": fp,
        },
    ) == pytest.approx(state.limit - state.usage)
    assert (
        registry.get_sample_value(
            "creditguard_holds_active", {**name, "creditguard_credential": fp}
        )
        == 0
    )
    assert registry.get_sample_value("creditguard_source_duration_seconds_count", name) == 1
    assert registry.get_sample_value("creditguard_alerts_dropped_total", name) == 0


def test_prometheus_without_otel_metrics(fake: FakeProvider) -> None:
    guard = BudgetGuard(
        OpenRouterKey(base_url=fake.openrouter_base_url, timeout=TIMEOUT),
        Policy(),
        estimate=0.0,
        metrics=False,
    )
    registry = CollectorRegistry()
    cgp.register(guard, registry)
    assert tally_of(guard) is tally_of(guard)
    with client(fake, guard, "allow") as c:
        c.chat.completions.create(model=CHEAP, messages=MESSAGES)  # type: ignore[arg-type]
    total = registry.get_sample_value(
        "creditguard_spend_total",
        {
            "creditguard_guard": tally_of(guard).name,
            "creditguard_cost_source": "provider",
            "creditguard_unit": "USD",
            "creditguard_credential": guard.ledger.key(KEYS["allow"])[:8],
        },
    )
    assert total == pytest.approx(0.02)
    guard.close()


@pytest.mark.parametrize("stack", ["httpx", "httpx2"])
async def test_async_clients_are_counted_too(
    fake: FakeProvider, guard: BudgetGuard, reader: InMemoryMetricReader, stack: str
) -> None:
    async with openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS["allow"],
        http_client=async_http(guard, stack),
        max_retries=0,
        timeout=TIMEOUT,
    ) as c:
        for _ in range(2):
            await c.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)  # type: ignore[arg-type]
        stream = await c.chat.completions.create(
            model=EXPENSIVE,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        async with stream:
            async for _ in stream:
                pass
    got = points(reader)
    assert value(got["creditguard.decisions"], creditguard__action="allow") == 3
    assert value(got["creditguard.spend"], creditguard__cost__source="provider") == pytest.approx(
        3 * 0.25
    )
    assert value(got["creditguard.holds.active"]) == 0


AUTO = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import creditguard as cg
from creditguard.sources import CallableSource

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
guard = cg.BudgetGuard(CallableSource(lambda: 5.0))  # metrics="auto"
guard.check("m")
names = {
    m.name
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics
    for m in sm.metrics
}
print("creditguard.decisions" in names)
"""


def test_auto_reports_through_the_apps_meter_provider() -> None:
    """A process-wide setting, so in a process of its own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run(
        [sys.executable, "-c", AUTO], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
