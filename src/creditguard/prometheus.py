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

from .metrics import DURATION_BUCKETS, INSTRUMENTS, Tally, tally_of

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
        for item in INSTRUMENTS:  # the table the OpenTelemetry exporter reads too
            family = (CounterMetricFamily if item.kind == "counter" else GaugeMetricFamily)(
                _name(item.name), item.description, labels=[_name(n) for n in item.labels]
            )
            for labels, value in item.rows(tallies):
                family.add_metric(list(labels), value)
            yield family
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        duration_sum = 0.0
        for tally in tallies:
            with tally.lock:
                for i, n in enumerate(tally.buckets):
                    buckets[i] += n
                duration_sum += tally.duration_sum
        cumulative = []
        running = 0
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), buckets, strict=True):
            running += n
            cumulative.append((_le(bound), running))
        yield HistogramMetricFamily(
            "creditguard_source_duration_seconds",
            "Duration of credits requests",
            buckets=cumulative,
            sum_value=duration_sum,
        )


def _name(otel: str) -> str:
    """The Prometheus name of an OpenTelemetry metric or attribute name."""
    return otel.replace(".", "_")


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
