"""Shadow mode and metrics: roll a policy out by watching what it would do.

``Policy(enforce=False)`` decides, logs, holds and counts every call exactly as when
enforcing, but refuses and rewrites nothing: every call goes out as asked, and the
response says what the guard decided (``x-creditguard-decision``,
``x-creditguard-enforced: false``). The metrics show the same, per action, over
OpenTelemetry (here read by the SDK's in-memory reader; in production your exporter)
and Prometheus (``creditguard.prometheus.register(guard)``).

Offline: the script starts a fake OpenRouter-style provider on 127.0.0.1.
Run: ``python examples/shadow_metrics.py``
"""

from __future__ import annotations

import logging
from typing import Any

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

import creditguard as cg
import creditguard.prometheus
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
MESSAGES: Any = [{"role": "user", "content": "Say hello."}]


def counters(reader: InMemoryMetricReader) -> dict[str, dict[str, float]]:
    """metric name -> {one attribute's value: total} for the metrics shown below."""
    shown = {
        "creditguard.decisions": "creditguard.action",
        "creditguard.spend": "creditguard.cost.source",
    }
    out: dict[str, dict[str, float]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name in shown:
                    table = out.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        label = str((point.attributes or {}).get(shown[metric.name]))
                        table[label] = table.get(label, 0.0) + getattr(point, "value", 0.0)
    return out


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    reader = InMemoryMetricReader()
    with FakeProvider() as fake:
        fake.add_key(KEY, credits=100.0, limit=2.00)
        fake.prices.update({"openai/gpt-4o": 0.40, "openai/gpt-4o-mini": 0.05})
        guard = cg.BudgetGuard(
            OpenRouterKey(base_url=fake.openrouter_base_url),
            cg.Policy(
                warn_below=1.50,
                downgrade_below=1.00,
                refuse_below=0.50,
                downgrade={"openai/gpt-4o": "openai/gpt-4o-mini"},
                enforce=False,  # shadow mode
            ),
            estimate=0.0,
            metrics=MeterProvider(metric_readers=[reader]),
        )
        registry = CollectorRegistry()
        creditguard.prometheus.register(guard, registry)

        with openai.OpenAI(
            base_url=fake.openrouter_base_url, api_key=KEY, http_client=guard.client()
        ) as client:
            for n in range(1, 6):
                raw = client.chat.completions.with_raw_response.create(
                    model="openai/gpt-4o", messages=MESSAGES
                )
                decided = raw.headers["x-creditguard-decision"]
                enforced = raw.headers.get("x-creditguard-enforced", "true")
                print(
                    f"call {n}: decided {decided:<9} enforced={enforced:<5} "
                    f"-> sent as {raw.parse().model}"
                )

        seen = [r.model for r in fake.requests if r.endpoint == "chat"]
        print(f"the provider saw {len(seen)} chat requests, all {set(seen).pop()}")
        for name, table in counters(reader).items():
            totals = ", ".join(f"{k}={v:g}" for k, v in sorted(table.items()))
            print(f"otel {name}: {totals}")
        text = generate_latest(registry).decode()
        lines = [line for line in text.splitlines() if line.startswith("creditguard_decisions")]
        print(f"prometheus: {len(lines)} creditguard_decisions_total series, e.g.")
        print(f"  {lines[0]}")
        guard.close()


if __name__ == "__main__":
    main()
