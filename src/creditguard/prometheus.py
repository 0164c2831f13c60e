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

Several guards may share one registry: every series carries the guard's
name (``creditguard_guard``, see :mod:`creditguard.metrics`), so each guard
keeps series of its own, even for one credential; guards given the same name
report as one (counters added up, the balance the lowest of theirs). No
scrape ever holds the same series twice.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .metrics import DURATION_BUCKETS, GUARD, INSTRUMENTS, Tally, series, tally_of

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
            for labels, value in series(item, tallies).items():
                family.add_metric(list(labels), value)
            yield family
        # the duration histogram, per guard name (guards of one name add up)
        histograms: dict[str, tuple[list[int], list[float]]] = {}
        for tally in tallies:
            buckets, total = histograms.setdefault(tally.name, ([0] * len(tally.buckets), [0.0]))
            with tally.lock:
                for i, n in enumerate(tally.buckets):
                    buckets[i] += n
                total[0] += tally.duration_sum
        histogram = HistogramMetricFamily(
            "creditguard_source_duration_seconds",
            "Duration of credits requests",
            labels=[_name(GUARD)],
        )
        for name, (buckets, total) in histograms.items():
            cumulative = []
            running = 0
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), buckets, strict=True):
                running += n
                cumulative.append((_le(bound), running))
            histogram.add_metric([name], cumulative, total[0])
        yield histogram


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
