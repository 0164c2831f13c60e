"""A local budget, for providers with no balance endpoint (OpenAI, Anthropic, ...)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Literal

from .._fingerprint import Fingerprinter
from ..balance import Balance, check_cost
from ..errors import ConfigError
from ._base import logger

__all__ = ["FixedBudget", "Period", "period_start"]

Period = Literal["day", "week", "month"]
_PERIODS = ("day", "week", "month", None)
_ALL = "*"


def period_start(now: datetime, period: Period | None) -> date:
    """The first day (UTC) of the calendar period holding ``now``.

    Days start at 00:00 UTC, weeks on Monday, months on the 1st. ``None``
    (never resets) is one period since ``date.min``. A naive ``now`` is read as UTC.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    day = now.astimezone(timezone.utc).date()
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return date.min


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class FixedBudget:
    """A budget of ``limit`` per calendar period that recorded spend draws down.

    ``record(credential, cost)`` adds spend; ``fetch`` reports
    ``limit - spent`` for the current period (UTC; ``period=None`` never
    resets). With ``per_credential=True`` every credential has a budget of its
    own, kept under a fingerprint of the credential, never the key itself.
    Only the current period's spend is kept. Thread-safe.
    """

    name = "fixed"

    def __init__(
        self,
        limit: float,
        period: Period | None = "month",
        *,
        per_credential: bool = False,
        unit: str = "USD",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 2**1000:
            raise ConfigError("limit", limit, "a finite number >= 0")  # (not OverflowError)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not math.isfinite(limit)
            or limit < 0
        ):
            raise ConfigError("limit", limit, "a finite number >= 0")
        if period not in _PERIODS:
            raise ConfigError("period", period, "'day', 'week', 'month' or None (never resets)")
        if not isinstance(unit, str) or not unit:
            raise ConfigError("unit", unit, "a non-empty string")
        if clock is not None and not callable(clock):
            raise ConfigError("clock", clock, "a function returning an aware datetime")
        self.limit = float(limit)
        self.period: Period | None = period
        self.per_credential = bool(per_credential)
        self.unit = unit
        self._clock = clock or _utcnow
        self._fingerprint = Fingerprinter()
        self._lock = threading.Lock()
        self._start: date | None = None
        self._spent: dict[str, float] = {}

    def _bucket(self, credential: str | None) -> str:
        return self._fingerprint(credential) if self.per_credential else _ALL

    def _roll(self) -> None:
        """Starts a new period when the clock has entered one (lock held)."""
        start = period_start(self._clock(), self.period)
        if self._start is None or start > self._start:
            self._start = start
            self._spent.clear()

    def record(self, credential: str | None, cost: float) -> None:
        """Adds ``cost`` (finite, >= 0) to the current period's spend."""
        cost = check_cost(cost)
        bucket = self._bucket(credential)
        with self._lock:
            self._roll()
            spent = self._spent.get(bucket, 0.0) + cost
            if not math.isfinite(spent):
                raise ValueError("recorded spend would overflow")
            self._spent[bucket] = spent

    def fetch(self, credential: str | None) -> Balance:
        """What is left of the current period's budget."""
        bucket = self._bucket(credential)
        with self._lock:
            self._roll()
            spent = self._spent.get(bucket, 0.0)
        logger.debug("%s: spent %s of %s %s", self.name, spent, self.limit, self.unit)
        return Balance(
            remaining=self.limit - spent,
            total=self.limit,
            used=spent,
            unit=self.unit,
            fetched_at=time.time(),
            source=self.name,
        )

    async def afetch(self, credential: str | None) -> Balance:
        """Same as :meth:`fetch` (no I/O)."""
        return self.fetch(credential)

    def __repr__(self) -> str:
        extra = ", per_credential=True" if self.per_credential else ""
        return (
            f"FixedBudget(limit={self.limit:g}, period={self.period!r}{extra}, unit={self.unit!r})"
        )
