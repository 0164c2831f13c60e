"""Metrics over the OpenTelemetry API (extra ``creditguard[otel]``).

``BudgetGuard(metrics=...)``: ``"auto"`` (the default) turns them on when the
app has already configured an OpenTelemetry MeterProvider; ``True`` reports
through the global MeterProvider (a no-op until the app sets one);
a MeterProvider object reports through it; ``False`` turns them off.

Instruments (meter ``creditguard``):

=================================  ===============  ==========================================
``creditguard.decisions``          counter          ``creditguard.action``,
                                                    ``gen_ai.request.model``,
                                                    ``creditguard.source``,
                                                    ``creditguard.credential``
``creditguard.fail_open``          counter          calls allowed with no usable balance
``creditguard.spend``              counter          in the balance's unit;
                                                    ``creditguard.cost.source`` =
                                                    provider | tokens | estimate
``creditguard.balance.available``  gauge            remaining less holds in flight
``creditguard.holds.active``       up-down counter  open holds
``creditguard.source.errors``      counter          failed balance refreshes
``creditguard.source.duration``    histogram (s)    credits requests
``creditguard.alerts``             counter          alert levels crossed
``creditguard.alerts.dropped``     counter          alerts the webhook could not deliver
``gen_ai.usage.input_tokens``,     counters         tokens the responses reported, by
``gen_ai.usage.output_tokens``                      ``gen_ai.request.model``
=================================  ===============  ==========================================

Every series carries the guard's name (``creditguard.guard``): several
guards reporting through one MeterProvider (or one Prometheus registry) keep
series of their own, even for one credential. The name is
``BudgetGuard(name=...)``; an unnamed guard takes its source's name
(``openrouter-key``), numbered (``openrouter-key-2``, ...) while another
guard of the process holds it. Guards given the same name report as one
guard: their counters, open holds and request durations add up and their
``creditguard.balance.available`` is the lowest of theirs (a warning says
so when the second one is built).

Per-credential series carry the credential's 8-character fingerprint
(``creditguard.credential``), for each guard's most recently used 100
credentials; the rest are added up under ``other``.

A guarded call pays one dict increment under a lock (:class:`Tally`); the
counters are read from it when the metrics are collected, so the hot path
never calls into a metrics SDK.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .costs import _COMPLETION_KEYS, _PROMPT_KEYS, _get, _number
from .errors import ConfigError

if TYPE_CHECKING:
    from .alerts import Alert
    from .balance import Balance
    from .errors import CreditSourceError
    from .guard import BudgetGuard
    from .policy import Decision

__all__ = ["MAX_CREDENTIALS", "Tally", "setup", "tally_of"]  # (INSTRUMENTS, series: the exporters')

log = logging.getLogger("creditguard")

MAX_CREDENTIALS = 100
"""Credentials with series of their own; the rest aggregate as ``other``."""
OTHER = "other"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Tally:
    """A guard's events, counted in process memory for the exporters
    (OpenTelemetry, Prometheus) to read when they collect."""

    def __init__(self, guard: BudgetGuard, maxsize: int = MAX_CREDENTIALS) -> None:
        self._guard = weakref.ref(guard)
        self.name = _claim(self, guard)
        """The ``creditguard.guard`` label of every series of this guard."""
        self.maxsize = maxsize
        self.lock = threading.Lock()
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.decisions: dict[tuple[str, str, str, str], int] = {}
        self.fail_open: dict[tuple[str, str], int] = {}
        self.spend: dict[tuple[str, str, str], float] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.alerts: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str, str], float] = {}  # (input|output, model, credential)
        self.dropped = 0
        self.units: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        # the histogram of credits request durations: counts per bucket, sum, count
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.duration_count = 0
        events = guard.events
        events.subscribe("decision", self.decision)
        events.subscribe("spend", self.spent)
        events.subscribe("usage", self.used)
        events.subscribe("refresh", self.refreshed)
        events.subscribe("source_error", self.failed)
        events.subscribe("fetch", self.fetched)
        events.subscribe("alert", self.alerted)
        events.subscribe("dropped", self.lost)

    @property
    def guard(self) -> BudgetGuard | None:
        return self._guard()

    def label(self, key: str) -> str:
        """The credential label of ``key`` (call with the lock held): its
        fingerprint while among the most recently used, else ``other``."""
        recent = self.recent
        if key in recent:
            recent.move_to_end(key)
        else:
            recent[key] = None
            if len(recent) > self.maxsize:
                old, _ = recent.popitem(last=False)
                self._fold(old[:8] or "-")
        return key[:8] or "-"

    def _fold(self, label: str) -> None:
        """A credential left the most recently used: its series join ``other``."""
        tables: tuple[dict[Any, Any], ...] = (
            self.decisions,
            self.fail_open,
            self.spend,
            self.errors,
            self.alerts,
            self.tokens,
        )
        for table in tables:
            for k in [k for k in table if k[-1] == label]:
                value = table.pop(k)
                other = (*k[:-1], OTHER)
                table[other] = table.get(other, 0) + value

    # -- subscribers --------------------------------------------------------

    def decision(self, decision: Decision, key: str) -> None:
        balance = decision.balance
        model = decision.requested_model or ""
        source = balance.source if balance is not None else "unavailable"
        with self.lock:
            cred = self.label(key)
            k = (decision.action, model, source, cred)
            table = self.decisions
            table[k] = table.get(k, 0) + 1
            if balance is None and decision.action == "allow":
                f = (model, cred)
                self.fail_open[f] = self.fail_open.get(f, 0) + 1

    def spent(self, key: str, cost: float, how: str) -> None:
        with self.lock:
            cred = self.label(key)
            k = (how, self.units.get(key, ""), cred)
            self.spend[k] = self.spend.get(k, 0.0) + cost

    def used(self, key: str, model: str | None, usage: object) -> None:
        counts = _token_counts(usage)
        if counts is None:
            return
        with self.lock:
            cred = self.label(key)
            for kind, n in zip(("input", "output"), counts, strict=True):
                if n:
                    k = (kind, model or "", cred)
                    self.tokens[k] = self.tokens.get(k, 0.0) + n

    def refreshed(self, balance: Balance, key: str) -> None:
        with self.lock:
            self.units[key] = balance.unit
            self.sources[key] = balance.source
            if len(self.units) > 4 * self.maxsize:
                self.units.clear()
                self.sources.clear()

    def failed(self, error: CreditSourceError, key: str) -> None:
        with self.lock:
            k = (error.source or "", self.label(key))
            self.errors[k] = self.errors.get(k, 0) + 1

    def fetched(self, key: str, seconds: float, ok: bool) -> None:
        with self.lock:
            i = 0
            for bound in DURATION_BUCKETS:
                if seconds <= bound:
                    break
                i += 1
            self.buckets[i] += 1
            self.duration_sum += seconds
            self.duration_count += 1

    def alerted(self, alert: Alert) -> None:
        with self.lock:
            k = (str(alert.level), alert.fingerprint or "-")
            self.alerts[k] = self.alerts.get(k, 0) + 1

    def lost(self, alert: Alert) -> None:
        with self.lock:
            self.dropped += 1

    # -- readings -------------------------------------------------------------

    def available(self) -> list[tuple[float, str, str, str]]:
        """``(available, unit, source, credential)`` of each recent credential
        with a cached balance."""
        guard = self.guard
        if guard is None:
            return []
        with self.lock:
            keys = list(self.recent)
        ledger = guard.ledger
        out = []
        with ledger._lock:
            now = ledger._timer()
            for key in keys:
                entry = ledger._cache.get(key)
                if entry is None:
                    continue
                view = entry.view
                out.append(
                    (
                        view.remaining - ledger._held(key, now),
                        view.unit,
                        view.source,
                        key[:8] or "-",
                    )
                )
        return out

    def holds(self) -> list[tuple[int, str]]:
        """``(open holds, credential)`` of each recent credential."""
        guard = self.guard
        if guard is None:
            return []
        with self.lock:
            keys = list(self.recent)
        ledger = guard.ledger
        out = []
        with ledger._lock:
            now = ledger._timer()
            for key in keys:
                holds = ledger._holds.get(key)
                if holds is not None:
                    holds.expire(now)
                out.append((len(holds.items) if holds is not None else 0, key[:8] or "-"))
        return out


_labels: weakref.WeakKeyDictionary[Tally, str] = weakref.WeakKeyDictionary()
_labels_lock = threading.Lock()


def _claim(tally: Tally, guard: BudgetGuard) -> str:
    """The guard label of ``tally``: the guard's name; for an unnamed guard its
    source's name, numbered when a live guard of the process holds it."""
    name: str | None = getattr(guard, "name", None)
    with _labels_lock:
        taken = set(_labels.values())
        if name is not None:
            label = name
            if label in taken:
                log.warning(
                    "two guards are named %r: where they share a MeterProvider or a registry, "
                    "their metrics add up (the balance shows the lower of the two); give each "
                    "guard a name of its own to tell them apart",
                    name,
                )
        else:
            source = guard.source
            base = label = str(getattr(source, "name", None) or type(source).__name__)
            n = 1
            while label in taken:
                n += 1
                label = f"{base}-{n}"
        _labels[tally] = label
        return label


def _token_counts(usage: object) -> tuple[float, float] | None:
    """(input, output) tokens of a usage report (OpenAI's or Anthropic's names)."""
    if type(usage) is dict:  # the usual case: a decoded JSON body, read at C speed
        prompt = usage.get("prompt_tokens")
        if prompt is None:
            prompt = usage.get("input_tokens")
        completion = usage.get("completion_tokens")
        if completion is None:
            completion = usage.get("output_tokens")
        if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0:
            return (float(prompt), float(completion)) if prompt or completion else None
    found = []
    for keys in (_PROMPT_KEYS, _COMPLETION_KEYS):
        n = next((v for k in keys if (v := _number(_get(usage, k))) is not None), None)
        found.append(n or 0.0)
    if not any(found):
        return None
    return found[0], found[1]


def tally_of(guard: BudgetGuard) -> Tally:
    """The guard's :class:`Tally`, subscribed on first use (shared by exporters)."""
    tally = getattr(guard, "_tally", None)
    if tally is None:
        tally = Tally(guard)
        guard._tally = tally  # type: ignore[attr-defined]
    return tally


# -- OpenTelemetry ----------------------------------------------------------------


def _configured() -> bool:
    """Has the app set a MeterProvider? (Never imports OpenTelemetry itself.)"""
    module = sys.modules.get("opentelemetry.metrics")
    if module is None:
        return False
    provider = module.get_meter_provider()
    return type(provider).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider")


def setup(guard: BudgetGuard, metrics: object) -> None:
    """Turn the guard's metrics on as ``metrics`` says (see the module docstring)."""
    if metrics is False or metrics is None:
        return
    if metrics == "auto":
        if not _configured():
            return
        provider = None
    elif metrics is True:
        provider = None
    elif callable(getattr(metrics, "get_meter", None)):
        provider = metrics
    else:
        raise ConfigError(
            "metrics", metrics, "'auto', True, False or an OpenTelemetry MeterProvider"
        )
    try:
        from opentelemetry import metrics as otel
    except ImportError as exc:
        raise ImportError(
            "creditguard metrics need OpenTelemetry: pip install 'creditguard[otel]'"
        ) from exc
    meter_provider = provider if provider is not None else otel.get_meter_provider()
    exporter = _exporters.get(meter_provider)
    if exporter is None:
        exporter = _exporters[meter_provider] = _OTel(meter_provider)
    tally = tally_of(guard)
    exporter.tallies.add(tally)
    guard.events.subscribe("fetch", exporter.fetched(guard, tally.name))


# -- what is reported: one table, read by every exporter --------------------------

Rows = Callable[[Iterable[Tally]], Iterator[tuple[tuple[Any, ...], float]]]
"""Reads the tallies: ``(label values, value)`` per series, the guard's name
first; two guards of one name may give the same label values
(:func:`series` merges them)."""


def _counted(table: str, kind: str | None = None) -> Rows:
    """The series of one of the tallies' dicts (``Tally.decisions``, ...),
    read under each tally's lock; with ``kind``, the series whose first label
    is ``kind``, without it (the two token counters share ``Tally.tokens``)."""

    def rows(tallies: Iterable[Tally]) -> Iterator[tuple[tuple[Any, ...], float]]:
        for tally in tallies:
            with tally.lock:
                items = list(getattr(tally, table).items())
            name = tally.name
            for labels, value in items:
                if kind is None:
                    yield (name, *labels), value
                elif labels[0] == kind:
                    yield (name, *labels[1:]), value

    return rows


def _read(reading: str) -> Rows:
    """The series of a reading of each tally (``Tally.available()``,
    ``Tally.holds()``): rows of the value, then the label values."""

    def rows(tallies: Iterable[Tally]) -> Iterator[tuple[tuple[Any, ...], float]]:
        for tally in tallies:
            name = tally.name
            for value, *labels in getattr(tally, reading)():
                yield (name, *labels), value

    return rows


def _dropped(tallies: Iterable[Tally]) -> Iterator[tuple[tuple[Any, ...], float]]:
    for tally in tallies:
        yield (tally.name,), tally.dropped


@dataclass(frozen=True, slots=True)
class Instrument:
    """One reported metric: its OpenTelemetry name (Prometheus's: dots become
    underscores), ``kind`` (``"counter"``, ``"gauge"`` or ``"updown"``), unit,
    description, the names of its labels (``creditguard.guard`` first) and how
    its series are read."""

    name: str
    kind: str
    unit: str
    description: str
    labels: tuple[str, ...]
    rows: Rows


GUARD = "creditguard.guard"
_CRED = "creditguard.credential"
_MODEL = "gen_ai.request.model"

INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(
        "creditguard.decisions",
        "counter",
        "{decision}",
        "Calls judged by the guard, by action",
        (GUARD, "creditguard.action", _MODEL, "creditguard.source", _CRED),
        _counted("decisions"),
    ),
    Instrument(
        "creditguard.fail_open",
        "counter",
        "{decision}",
        "Calls allowed with no usable balance (on_source_error=allow)",
        (GUARD, _MODEL, _CRED),
        _counted("fail_open"),
    ),
    Instrument(
        "creditguard.spend",
        "counter",
        "",
        "Credits charged for calls, in the balance's unit",
        (GUARD, "creditguard.cost.source", "creditguard.unit", _CRED),
        _counted("spend"),
    ),
    Instrument(
        "creditguard.balance.available",
        "gauge",
        "",
        "Remaining credits less what calls in flight hold",
        (GUARD, "creditguard.unit", "creditguard.source", _CRED),
        _read("available"),
    ),
    Instrument(
        "creditguard.holds.active",
        "updown",
        "{hold}",
        "Holds of calls in flight",
        (GUARD, _CRED),
        _read("holds"),
    ),
    Instrument(
        "creditguard.source.errors",
        "counter",
        "{error}",
        "Failed balance refreshes",
        (GUARD, "creditguard.source", _CRED),
        _counted("errors"),
    ),
    Instrument(
        "creditguard.alerts",
        "counter",
        "{alert}",
        "Alert levels crossed",
        (GUARD, "creditguard.alert.level", _CRED),
        _counted("alerts"),
    ),
    Instrument(
        "creditguard.alerts.dropped",
        "counter",
        "{alert}",
        "Alerts the webhook could not deliver",
        (GUARD,),
        _dropped,
    ),
    *(
        Instrument(
            f"gen_ai.usage.{kind}_tokens",
            "counter",
            "{token}",
            f"{kind.capitalize()} tokens the responses reported",
            (GUARD, _MODEL, _CRED),
            _counted("tokens", kind),
        )
        for kind in ("input", "output")
    ),
)
"""Everything reported but the duration histogram, in the order it is
registered; the OpenTelemetry and Prometheus exporters both read this table
(through :func:`series`)."""


def series(item: Instrument, tallies: Iterable[Tally]) -> dict[tuple[Any, ...], float]:
    """``item``'s series across ``tallies``, one value per set of label values:
    guards of one name add up their counters and open holds; a gauge (the
    balance) is the lowest of theirs, never their sum."""
    out: dict[tuple[Any, ...], float] = {}
    lowest = item.kind == "gauge"
    for labels, value in item.rows(tallies):
        old = out.get(labels)
        if old is None:
            out[labels] = value
        elif lowest:
            out[labels] = min(old, value)
        else:
            out[labels] = old + value
    return out


class _OTel:
    """The instruments of one MeterProvider, reading every guard's tally."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.metrics import Observation

        self.tallies: weakref.WeakSet[Tally] = weakref.WeakSet()
        self._observation = Observation
        meter = provider.get_meter("creditguard", _version())
        create = {
            "counter": meter.create_observable_counter,
            "gauge": meter.create_observable_gauge,
            "updown": meter.create_observable_up_down_counter,
        }
        for item in INSTRUMENTS:
            create[item.kind](
                item.name,
                [self._callback(item)],
                unit=item.unit,
                description=item.description,
            )
        self.duration = meter.create_histogram(
            "creditguard.source.duration",
            unit="s",
            description="Duration of credits requests",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

    def fetched(self, guard: BudgetGuard, name: str) -> Any:
        source = str(getattr(guard.source, "name", type(guard.source).__name__))
        record = self.duration.record

        def fetched(key: str, seconds: float, ok: bool) -> None:
            attributes = {GUARD: name, "creditguard.source": source}
            if not ok:
                attributes["error.type"] = "CreditSourceError"
            record(seconds, attributes)

        return fetched

    def _callback(self, item: Instrument) -> Callable[[Any], Iterable[Any]]:
        """The observable callback of ``item``: its series across the tallies."""
        names, obs = item.labels, self._observation

        def observe(options: Any) -> Iterable[Any]:
            for labels, value in series(item, list(self.tallies)).items():
                yield obs(value, dict(zip(names, labels, strict=True)))

        return observe


_exporters: weakref.WeakKeyDictionary[Any, _OTel] = weakref.WeakKeyDictionary()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("creditguard")
    except Exception:
        return "0"
