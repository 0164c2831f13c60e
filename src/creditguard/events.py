"""One fan-out for what happens in a guard: decisions, refreshes, errors, spend, alerts.

Logging, the user's callbacks (``on_decision``, ``on_refresh``,
``on_source_error``, ``on_alert``), alerts, burn-rate tracking and metrics
are each a subscriber of :class:`Events`, never an if-chain in the guard.
The guard and its ledger call one attribute per kind of event (``events.spend``,
``events.refresh``, ...), which is None when nobody listens: an event nobody
subscribed to costs one attribute read.

Kinds and what their subscribers get:

================  =================================================================
``decision``      ``(decision, key)``: every judged call (``key``: the credential's
                  fingerprint). Quiet allows reach it only while ``loud`` (a
                  subscriber other than logging wants every decision).
``refresh``       ``(balance, key)``: a fetched balance.
``source_error``  ``(error, key)``: a failed refresh.
``fetch``         ``(key, seconds, ok)``: how long a credits request took.
``spend``         ``(key, cost, how)``: credits charged for a call; ``how`` is
                  ``"provider"`` (the provider's figure, or one the code recorded),
                  ``"tokens"`` (tokens x prices) or ``"estimate"``.
``usage``         ``(key, model, usage)``: the token usage a call's response reported
                  (``model``: the one the call asked for).
``alert``         ``(alert,)``: a :class:`~creditguard.alerts.Alert` level crossed.
``dropped``       ``(alert,)``: an alert the webhook could not deliver.
================  =================================================================

A subscriber that raises is logged (with its traceback) and never disturbs
the guarded call or the other subscribers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .policy import Decision

__all__ = ["KINDS", "DecisionLog", "Events", "SourceErrorLog", "log_refresh"]

log = logging.getLogger("creditguard")

KINDS = ("decision", "refresh", "source_error", "fetch", "spend", "usage", "alert", "dropped")

Handler = Callable[..., object]


def _fan(handlers: tuple[Handler, ...]) -> Handler:
    """One callable that calls every handler, each shielded from the others."""

    def emit(*args: Any) -> None:
        for handler in handlers:
            try:
                handler(*args)
            except Exception:
                log.exception("creditguard event subscriber %r raised", handler)

    return emit


class Events:
    """The subscribers of one guard, by kind of event (see the module docstring)."""

    __slots__ = (
        "_every",
        "_subs",
        "alert",
        "decision",
        "dropped",
        "fetch",
        "loud",
        "refresh",
        "source_error",
        "spend",
        "usage",
    )

    decision: Handler | None
    refresh: Handler | None
    source_error: Handler | None
    fetch: Handler | None
    spend: Handler | None
    usage: Handler | None
    alert: Handler | None
    dropped: Handler | None

    def __init__(self) -> None:
        self._subs: dict[str, list[Handler]] = {kind: [] for kind in KINDS}
        self._every: set[Handler] = set()
        self.loud = False  # a decision subscriber wants the quiet allows too
        for kind in KINDS:
            setattr(self, kind, None)

    def subscribe(self, kind: str, handler: Handler, *, every: bool = True) -> Callable[[], None]:
        """Call ``handler`` on each event of ``kind``; returns the unsubscriber.
        A ``decision`` subscriber with ``every=False`` is spared the quiet allows
        (the usual case, kept cheap) unless another subscriber wants them."""
        if not isinstance(kind, str) or kind not in self._subs:
            raise ConfigError("kind", kind, f"an event kind: one of {', '.join(KINDS)}")
        if not callable(handler):
            raise ConfigError("handler", handler, f"a callable taking a {kind} event")
        self._subs[kind].append(handler)
        if kind == "decision" and every:
            self._every.add(handler)
        self._rebuild(kind)

        def unsubscribe() -> None:
            subs = self._subs[kind]
            if handler in subs:
                subs.remove(handler)
                self._every.discard(handler)
                self._rebuild(kind)

        return unsubscribe

    def _rebuild(self, kind: str) -> None:
        handlers = tuple(self._subs[kind])
        setattr(self, kind, _fan(handlers) if handlers else None)
        if kind == "decision":
            self.loud = bool(self._every)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self._subs.items() if v)
        return f"Events({counts})"


_LEVELS = {
    "allow": logging.DEBUG,
    "warn": logging.WARNING,
    "downgrade": logging.WARNING,
    "refuse": logging.WARNING,
}


class DecisionLog:
    """The logging subscriber of decisions: a WARNING when a credential enters
    a tier (warn, downgrade, refuse, or a fail-open allow), then at most once
    per ``every`` seconds while it stays there; every decision at DEBUG."""

    __slots__ = ("_timer", "_warned", "every")

    def __init__(self, every: float, timer: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._timer = timer
        self._warned: dict[str, tuple[str, float]] = {}

    def __call__(self, decision: Decision, key: str) -> None:
        action = decision.action
        if action == "allow" and decision.balance is not None:  # the usual case
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "allow model=%s credential=%s: %s",
                    decision.requested_model,
                    key[:8] or "-",
                    decision.reason,
                )
            return
        level = _LEVELS[action]
        if decision.balance is None and action == "allow":
            level = logging.WARNING
        if level == logging.WARNING:
            now = self._timer()
            last = self._warned.get(key)
            if last is not None and last[0] == action and now - last[1] < self.every:
                level = logging.DEBUG
            else:
                if len(self._warned) >= 4096:
                    self._warned.clear()
                self._warned[key] = (action, now)
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s model=%s credential=%s: %s",
                action if decision.enforced else f"{action} (shadow mode)",
                decision.requested_model,
                key[:8] or "-",
                decision.reason,
            )


def log_refresh(balance: Any, key: str) -> None:
    """The logging subscriber of refreshes (DEBUG)."""
    log.debug(
        "refreshed balance credential=%s: %.6g %s remaining (%s)",
        key[:8],
        balance.remaining,
        balance.unit,
        balance.source,
    )


class SourceErrorLog:
    """The logging subscriber of failed refreshes: WARNING; ERROR when only
    the operator can fix it (the source's own key refused), at most once per
    ``every`` seconds per source."""

    __slots__ = ("_logged", "_timer", "every")

    def __init__(self, every: float, timer: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._timer = timer
        self._logged: dict[str, float] = {}

    def __call__(self, error: Any, key: str) -> None:
        level = logging.WARNING
        if getattr(error, "misconfigured", False):
            now = self._timer()
            last = self._logged.get(error.source)
            if last is None or now - last >= self.every:
                self._logged[error.source] = now
                level = logging.ERROR
        log.log(level, "balance refresh failed credential=%s: %s", key[:8], error)
