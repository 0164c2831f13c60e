"""Alerts: a level of available credits crossed, told once, to a callback and a webhook.

``Policy(alerts=("50%", "20%", 5.0))`` names levels of ``available`` (the
balance less what calls in flight hold): credits in the balance's unit, or
percents of its total. :class:`AlertLevels` watches the guard's decisions and,
when a credential's ``available`` falls below a level, emits one
:class:`Alert` (``BudgetGuard(on_alert=fn)``); the level is re-armed once
``available`` is back at or above it (a top-up, a new period).

:class:`Webhook` (``BudgetGuard(alert_webhook=URL)``) posts each alert as JSON
with a Slack-compatible ``text`` from a background thread: a bounded queue,
retries with backoff, a timeout on every attempt. It never blocks or fails a
guarded call; an alert it cannot deliver (queue full, retries exhausted) is
logged and counted (the ``dropped`` event, the ``creditguard.alerts.dropped``
metric). The body carries the credential's 8-character fingerprint, never a
key, and the URL (a secret of its own for Slack) is never logged.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    from .events import Events
    from .guard import BudgetGuard
    from .policy import Decision

__all__ = ["Alert", "AlertLevels", "Webhook"]

log = logging.getLogger("creditguard")


@dataclass(frozen=True, slots=True)
class Alert:
    """A level of ``Policy.alerts`` crossed downward by one credential.

    ``level`` is the level as configured (``"20%"`` or ``5.0``), ``available``
    the credits left (less what calls in flight hold) when it was crossed, in
    ``unit``; ``fingerprint`` the credential's 8-character fingerprint (never
    the key); ``model`` the model of the call that crossed it.
    """

    level: float | int | str
    available: float
    unit: str
    fingerprint: str
    model: str | None

    @property
    def text(self) -> str:
        """One line for a chat channel."""
        who = f"credential {self.fingerprint}" if self.fingerprint else "the budget"
        model = f" (call to {self.model})" if self.model else ""
        return (
            f"creditguard: {who} is below its alert level {self.level}: "
            f"{self.available:.6g} {self.unit} available{model}"
        )


class AlertLevels:
    """The decision subscriber that fires :class:`Alert` events (see the module
    docstring). Bounded: at most ``maxsize`` credentials are remembered."""

    __slots__ = ("_events", "_fired", "_levels", "_lock", "_raw", "maxsize")

    def __init__(self, guard: BudgetGuard, maxsize: int = 10_000) -> None:
        policy = guard.policy
        self._events = guard.events
        self._raw = policy.alerts
        self._levels = policy._alert_limits
        self._fired: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self.maxsize = maxsize

    def __call__(self, decision: Decision, key: str) -> None:
        balance = decision.balance
        available = decision.available
        if balance is None or available is None or available == math.inf:
            return
        crossed: list[int] = []
        with self._lock:
            fired = self._fired.get(key)
            for i, limit in enumerate(self._levels):
                level = limit.resolve(balance.total)
                if level is None:
                    continue
                if available < level:
                    if fired is None:
                        if len(self._fired) >= self.maxsize:
                            del self._fired[next(iter(self._fired))]
                        fired = self._fired[key] = set()
                    if i not in fired:
                        fired.add(i)
                        crossed.append(i)
                elif fired is not None:
                    fired.discard(i)  # back above it: re-armed
        if not crossed:
            return
        emit = self._events.alert
        if emit is None:
            return
        # the highest level first: the order they were crossed in
        crossed.sort(key=lambda i: -(self._levels[i].resolve(balance.total) or 0.0))
        for i in crossed:
            emit(
                Alert(
                    level=self._raw[i],
                    available=available,
                    unit=balance.unit,
                    fingerprint=key[:8],
                    model=decision.requested_model,
                )
            )


_STOP = object()


def _where(url: str) -> str:
    """The part of a webhook URL that may be shown (its path is often a secret)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}"
    except ValueError:
        return "(unparsable URL)"


_HIDDEN = "<not shown: a webhook URL may hold a secret>"


def _scheme(url: str) -> str:
    """What scheme a refused webhook URL has, for its error (never the rest of it)."""
    scheme = urlsplit(url).scheme
    if not scheme:
        return "it has no scheme (write it as https://host/path)"
    if scheme and len(scheme) <= 12 and scheme.isalpha():
        return f"its scheme is {scheme!r}"
    return "its scheme is not http or https"


class Webhook:
    """Posts alerts to ``url`` from a background thread (see the module docstring).

    ``timeout`` bounds each attempt, ``retries`` more attempts follow a failed
    one (a timeout, a connection error, a 429 or 5xx) after ``backoff`` x 2**n
    seconds; ``maxsize`` alerts wait at most.
    """

    def __init__(
        self,
        url: str,
        events: Events | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        maxsize: int = 100,
        transport: Any = None,
    ) -> None:
        if not isinstance(url, str):
            raise ConfigError(
                "alert_webhook", f"<{type(url).__name__}>", "an http:// or https:// URL (a str)"
            )
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:  # (a netloc it refuses, e.g. an unclosed "[")
            raise ConfigError(
                "alert_webhook", _HIDDEN, "an http:// or https:// URL; this one does not parse"
            ) from None
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                "alert_webhook", _HIDDEN, f"an http:// or https:// URL; {_scheme(url)}"
            )
        if not host:
            raise ConfigError(
                "alert_webhook", _HIDDEN, f"an {parts.scheme}:// URL with a host; this one has none"
            )
        self.url = url
        self.where = _where(url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sent = 0
        self.dropped = 0
        self.events = events  # where the dropped alerts are told
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._transport = transport
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"Webhook({self.where}, sent={self.sent}, dropped={self.dropped})"

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for posting; never blocks (a full queue drops it)."""
        if self._closed.is_set():
            self._drop(alert, "the guard is closed")
            return
        self._start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._drop(alert, "its queue is full")

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=self._run, name="creditguard-alert-webhook", daemon=True
                )
                thread.start()
                self._thread = thread

    def _drop(self, alert: Alert, why: str) -> None:
        self.dropped += 1
        log.warning("alert webhook %s: alert dropped (%s): %s", self.where, why, alert.text)
        emit = self.events.dropped if self.events is not None else None
        if emit is not None:
            emit(alert)

    def _run(self) -> None:
        import httpx

        # The transport is called directly, not through an httpx.Client: a
        # client logs every request's URL at INFO, and this URL is a secret.
        transport = self._transport or httpx.HTTPTransport()
        try:
            while True:
                item = self._queue.get()
                try:
                    if item is _STOP:
                        return
                    assert isinstance(item, Alert)
                    self._deliver(transport, item)
                finally:
                    self._queue.task_done()
        finally:
            transport.close()

    def _post(self, transport: Any, body: bytes) -> int:
        import httpx

        request = httpx.Request(
            "POST",
            self.url,
            content=body,
            headers={"content-type": "application/json", "user-agent": "creditguard"},
            extensions={"timeout": httpx.Timeout(self.timeout).as_dict()},
        )
        response = transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return int(response.status_code)

    def _deliver(self, transport: Any, alert: Alert) -> None:
        body = json.dumps(
            {
                "text": alert.text,
                "creditguard": {
                    "level": alert.level,
                    "available": alert.available,
                    "unit": alert.unit,
                    "fingerprint": alert.fingerprint,
                    "model": alert.model,
                },
            }
        ).encode()
        why = ""
        for attempt in range(self.retries + 1):
            if attempt and self._closed.wait(self.backoff * 2 ** (attempt - 1)):
                break  # closing: no more waiting
            try:
                status = self._post(transport, body)
            except Exception as exc:  # timeouts, refused connections, bad answers
                why = type(exc).__name__
                continue
            if 200 <= status < 300:
                self.sent += 1
                return
            why = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # the server will not take it: retrying will not help
        self._drop(alert, f"not delivered: {why or 'closing'}")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker: alerts still queued get ``timeout`` seconds."""
        thread = self._thread
        self._closed.set()
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                break
        thread.join(max(0.0, deadline - time.monotonic()))

    def wait(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (tests and examples); True when it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False
