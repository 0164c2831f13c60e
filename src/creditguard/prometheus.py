"""The guard's metrics for Prometheus (extra ``creditguard[prometheus]``).

``register(guard, registry=None)`` adds a collector to ``registry`` (the
default registry when None) that reports what :mod:`creditguard.metrics`
reports over OpenTelemetry, under Prometheus names (dots become underscores,
counters end in ``_total``):

``creditguard_decisions_total``, ``creditguard_fail_open_total``,
``creditguard_spend_total``, ``creditguard_balance_available``,
``creditguard_holds_active``, ``creditguard_source_errors_total``,
``creditguard_source_duration_seconds`` (histogram),
``creditguard_alerts_total``, ``creditguard_alerts_dropped_total``,
``gen_ai_usage_input_tokens_total``, ``gen_ai_usage_output_tokens_total``.

Several guards may share one registry: their series add up under the same
names (tell them apart by ``creditguard_source`` and ``creditguard_credential``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .metrics import DURATION_BUCKETS, Tally, tally_of

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["register"]

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "creditguard.prometheus needs prometheus_client: pip install 'creditguard[prometheus]'"
    ) from exc


class _Collector:
    """Reads every registered guard's tally when the registry is scraped."""

    def __init__(self) -> None:
        self.tallies: weakref.WeakSet[Tally] = weakref.WeakSet()

    def describe(self) -> list[Any]:
        return []  # collected on demand: nothing is asked at registration

    def collect(self) -> Iterator[Any]:
        tallies = list(self.tallies)
        decisions = CounterMetricFamily(
            "creditguard_decisions",
            "Calls judged by the guard, by action",
            labels=[
                "creditguard_action",
                "gen_ai_request_model",
                "creditguard_source",
                "creditguard_credential",
            ],
        )
        fail_open = CounterMetricFamily(
            "creditguard_fail_open",
            "Calls allowed with no usable balance (on_source_error=allow)",
            labels=["gen_ai_request_model", "creditguard_credential"],
        )
        spend = CounterMetricFamily(
            "creditguard_spend",
            "Credits charged for calls, in the balance's unit",
            labels=["creditguard_cost_source", "creditguard_unit", "creditguard_credential"],
        )
        available = GaugeMetricFamily(
            "creditguard_balance_available",
            "Remaining credits less what calls in flight hold",
            labels=["creditguard_unit", "creditguard_source", "creditguard_credential"],
        )
        holds = GaugeMetricFamily(
            "creditguard_holds_active",
            "Holds of calls in flight",
            labels=["creditguard_credential"],
        )
        errors = CounterMetricFamily(
            "creditguard_source_errors",
            "Failed balance refreshes",
            labels=["creditguard_source", "creditguard_credential"],
        )
        alerts = CounterMetricFamily(
            "creditguard_alerts",
            "Alert levels crossed",
            labels=["creditguard_alert_level", "creditguard_credential"],
        )
        tokens = {
            kind: CounterMetricFamily(
                f"gen_ai_usage_{kind}_tokens",
                f"{kind.capitalize()} tokens the responses reported",
                labels=["gen_ai_request_model", "creditguard_credential"],
            )
            for kind in ("input", "output")
        }
        dropped = 0
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        duration_sum = 0.0
        for tally in tallies:
            with tally.lock:
                rows: tuple[list[tuple[tuple[str, ...], float]], ...] = (
                    list(tally.decisions.items()),
                    list(tally.fail_open.items()),
                    list(tally.spend.items()),
                    list(tally.errors.items()),
                    list(tally.alerts.items()),
                )
                used = list(tally.tokens.items())
                dropped += tally.dropped
                for i, n in enumerate(tally.buckets):
                    buckets[i] += n
                duration_sum += tally.duration_sum
            for family, items in zip(
                (decisions, fail_open, spend, errors, alerts), rows, strict=True
            ):
                for labels, value in items:
                    family.add_metric(list(labels), value)
            for (kind, model, cred), count in used:
                tokens[kind].add_metric([model, cred], count)
            for value, unit, source, cred in tally.available():
                available.add_metric([unit, source, cred], value)
            for count, cred in tally.holds():
                holds.add_metric([cred], count)
        dropped_family = CounterMetricFamily(
            "creditguard_alerts_dropped", "Alerts the webhook could not deliver", value=dropped
        )
        cumulative = []
        running = 0
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), buckets, strict=True):
            running += n
            cumulative.append((_le(bound), running))
        duration = HistogramMetricFamily(
            "creditguard_source_duration_seconds",
            "Duration of credits requests",
            buckets=cumulative,
            sum_value=duration_sum,
        )
        yield from (decisions, fail_open, spend, available, holds, errors)
        yield from (duration, alerts, dropped_family, *tokens.values())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


_collectors: weakref.WeakKeyDictionary[Any, _Collector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(guard: BudgetGuard, registry: Any = None) -> None:
    """Report ``guard``'s metrics through ``registry`` (a
    ``prometheus_client.CollectorRegistry``; the default registry when None).
    Registering the same guard twice changes nothing."""
    if registry is None:
        registry = REGISTRY
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = _Collector()
            registry.register(collector)
        collector.tallies.add(tally_of(guard))
