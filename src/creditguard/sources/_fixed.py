"""A local budget, for providers with no balance endpoint (OpenAI, Anthropic, ...)."""

from __future__ import annotations

import math
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .._fingerprint import Fingerprinter
from ..balance import Balance, check_cost
from ..errors import ConfigError
from ._base import logger

if TYPE_CHECKING:
    from ..stores import Spend

__all__ = ["FixedBudget", "Period", "period_start"]

Period = str
"""``"day"``, ``"week"``, ``"month"`` (calendar periods, UTC) or a rolling
window: a whole number of minutes, hours or days (``"15m"``, ``"1h"``, ``"24h"``)."""

_CALENDAR = ("day", "week", "month")
_ROLLING = re.compile(r"([1-9][0-9]{0,5})([mhd])")
_UNIT_SECONDS = {"m": 60, "h": 3_600, "d": 86_400}
_MIN_WINDOW, _MAX_WINDOW = 60, 366 * 86_400
_SLICES = 30
"""A rolling window is counted in this many slices: spend leaves the window
one slice at a time, so a window counts at most one slice more than its length."""
_PERIOD_ALLOWED = (
    "'day', 'week' or 'month' (calendar periods, UTC), a rolling window of minutes, "
    "hours or days such as '15m', '1h' or '24h' (1 minute to 366 days), "
    "or None (never resets)"
)
_ALL = "*"


def period_start(now: datetime, period: str | None) -> date:
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


def window_seconds(period: object) -> float | None:
    """The length of a rolling window (``"15m"`` -> 900.0); None for a calendar
    period or None. Raises ConfigError for anything else."""
    if period is None or period in _CALENDAR:
        return None
    match = _ROLLING.fullmatch(period) if isinstance(period, str) else None
    if match is None:
        raise ConfigError("period", period, _PERIOD_ALLOWED)
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not _MIN_WINDOW <= seconds <= _MAX_WINDOW:
        raise ConfigError("period", period, _PERIOD_ALLOWED)
    return float(seconds)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class FixedBudget:
    """A budget of ``limit`` per period that recorded spend draws down.

    ``period`` is a calendar period in UTC (``"day"`` from 00:00, ``"week"``
    from Monday, ``"month"`` from the 1st), a rolling window (``"15m"``,
    ``"1h"``, ``"24h"``: the spend of the last 15 minutes, hour, day, counted in
    thirtieths of the window, so at most one thirtieth more), or None (never
    resets). ``record(credential, cost)`` adds spend; ``fetch`` reports
    ``limit - spent`` for the current period.

    With ``per_credential=True`` every credential has a budget of its own,
    kept under a fingerprint of the credential, never the key itself; at most
    ``maxsize`` credentials are counted (the least recently used is dropped).
    Only the current period's spend is kept. Thread-safe.

    Under a guard with a shared store (``store="redis://..."``) the spend is
    counted in the store instead, so every process and restart draws down
    one budget.
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
        maxsize: int = 10_000,
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
        self.window = window_seconds(period)
        if not isinstance(unit, str) or not unit:
            raise ConfigError("unit", unit, "a non-empty string")
        if clock is not None and not callable(clock):
            raise ConfigError("clock", clock, "a function returning an aware datetime")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigError("maxsize", maxsize, "a whole number >= 1")
        self.limit = float(limit)
        self.period: Period | None = period
        self.per_credential = bool(per_credential)
        self.unit = unit
        self.maxsize = maxsize
        self._clock = clock or _utcnow
        self._fingerprint = Fingerprinter()
        self._lock = threading.Lock()
        # bucket key -> {window bucket -> spent}, least recently used first
        self._spent: OrderedDict[str, dict[int, float]] = OrderedDict()
        self._low = -math.inf  # the oldest bucket of the window last counted
        self._counter: Any = None  # a shared store counting the spend instead (see bind)
        # the ledgers of the guards over this budget in this process (more than
        # one: each tells the others what it records, see Ledger._join_budgets)
        self._ledgers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._never: Spend | None = None  # the one window of period=None
        self._last: tuple[float, float, Spend] | None = None  # (start, end, window)

    # -- windows -----------------------------------------------------------------

    def spend_window(self, now: datetime | None = None) -> Spend:
        """Where spend counts at ``now`` (default: the clock): the current
        bucket, the oldest bucket still in the window, and how long the counts
        must be kept."""
        if self.period is None:  # (asked on every settle: no clock, one answer)
            never = self._never
            if never is None:
                from ..stores import Spend

                never = self._never = Spend("never", 0, 0, None)
            return never
        if now is None:
            now = self._clock()
        ts = now.timestamp()
        last = self._last  # (the window of the last call, until its bucket ends)
        if last is not None and last[0] <= ts < last[1]:
            return last[2]
        window, end = self._window_at(now)
        self._last = (window.start, end, window)
        return window

    def _window_at(self, now: datetime) -> tuple[Spend, float]:
        """:meth:`spend_window` at ``now``, worked out, and when its bucket ends."""
        from ..stores import Spend

        assert self.period is not None
        if self.window is not None:
            step = self.window / _SLICES
            bucket = math.floor(now.timestamp() / step)
            keep = self.window + 2 * step
            start = bucket * step
            return Spend(self.period, bucket, bucket - _SLICES, keep, start), start + step
        start_day = period_start(now, self.period)
        if self.period == "month":
            bucket = start_day.year * 12 + start_day.month - 1
            keep = 32 * 86_400.0
        else:
            bucket = start_day.toordinal()
            keep = (8 if self.period == "week" else 2) * 86_400.0
        began = datetime(
            start_day.year, start_day.month, start_day.day, tzinfo=timezone.utc
        ).timestamp()
        if self.period == "month":  # the 1st of the next month
            year, month = divmod(start_day.year * 12 + start_day.month, 12)
            ends = datetime(year, month + 1, 1, tzinfo=timezone.utc).timestamp()
        else:
            ends = began + (7 if self.period == "week" else 1) * 86_400.0
        return Spend(self.period, bucket, bucket, keep, began), ends

    def budget_key(self, credential: str | None) -> str:
        """The budget ``credential`` draws down: its fingerprint, or one for all."""
        return self._fingerprint(credential) if self.per_credential else _ALL

    # -- local counting ------------------------------------------------------------

    def _counts(self, bucket_key: str, window: Spend) -> dict[int, float]:
        """The counts of ``bucket_key`` in the current window (lock held)."""
        if window.low > self._low:  # a new period, or a slice left the window
            self._low = window.low
            for key, old in list(self._spent.items()):
                for bucket in [b for b in old if b < window.low]:
                    del old[bucket]
                if not old:
                    del self._spent[key]
        # (the sweep above left no bucket older than the window anywhere)
        counts = self._spent.get(bucket_key)
        if counts is None:
            counts = self._spent[bucket_key] = {}
            while len(self._spent) > self.maxsize:
                self._spent.popitem(last=False)
        elif self.per_credential:
            self._spent.move_to_end(bucket_key)
        return counts

    def bind(self, counter: Any) -> None:
        """Count spend in a shared store instead of this process (a guard with
        ``store=`` does this for a FixedBudget inside ``Tightest``): ``counter``
        has ``spent(credential)`` and ``async aspent(credential)``; it learns
        the spend from the guard's ledger, so :meth:`record` then does nothing."""
        self._counter = counter

    def record(self, credential: str | None, cost: float) -> None:
        """Adds ``cost`` (finite, >= 0) to the current period's spend."""
        if type(cost) is not float or not 0.0 <= cost < math.inf:
            cost = check_cost(cost)
        if self._counter is not None:
            return  # the shared store counts it (the ledger sends it there)
        bucket_key = self._fingerprint(credential) if self.per_credential else _ALL
        with self._lock:
            if self.period is None:  # one window for ever: its counts once made
                counts = self._spent.get(bucket_key)
                if counts is not None and self._low == 0:
                    spent = counts.get(0, 0.0) + cost
                    if not math.isfinite(spent):
                        raise ValueError("recorded spend would overflow")
                    counts[0] = spent
                    if self.per_credential:
                        self._spent.move_to_end(bucket_key)
                    return
            window = self.spend_window()
            counts = self._counts(bucket_key, window)
            spent = counts.get(window.bucket, 0.0) + cost
            if not math.isfinite(spent):
                raise ValueError("recorded spend would overflow")
            counts[window.bucket] = spent

    def spent(self, credential: str | None) -> float:
        """This process's count of the current period's spend."""
        bucket_key = self.budget_key(credential)
        with self._lock:
            window = self.spend_window()
            if bucket_key not in self._spent:
                return 0.0
            return math.fsum(self._counts(bucket_key, window).values())

    def fetch(self, credential: str | None) -> Balance:
        """What is left of the current period's budget."""
        if self._counter is not None:
            return self.balance(self._counter.spent(credential))
        spent = self.spent(credential)
        logger.debug("%s: spent %s of %s %s", self.name, spent, self.limit, self.unit)
        return self.balance(spent)

    def balance(self, spent: float) -> Balance:
        """The balance of this budget once ``spent`` is spent; its
        ``resets_at`` is :meth:`resets_at`."""
        return Balance(
            remaining=self.limit - spent,
            total=self.limit,
            used=spent,
            unit=self.unit,
            fetched_at=time.time(),
            source=self.name,
            resets_at=self.resets_at(),
        )

    def resets_at(self) -> float | None:
        """When the current calendar period ends (Unix seconds: the next 00:00
        UTC, Monday or 1st); for a rolling window, when its oldest counted slice
        leaves it (the spend in that slice stops counting: the next moment the
        balance can rise by itself); None when the budget never resets."""
        if self.period is None:
            return None
        return self._window_at(self._clock())[1]

    async def afetch(self, credential: str | None) -> Balance:
        """Same as :meth:`fetch` (no I/O, unless bound to a shared store)."""
        if self._counter is not None:
            return self.balance(await self._counter.aspent(credential))
        return self.fetch(credential)

    @property
    def counted(self) -> int:
        """How many budgets (credentials) this process counts (at most
        ``maxsize``). (Not ``__len__``: an empty budget must stay truthy.)"""
        with self._lock:
            return len(self._spent)

    def __repr__(self) -> str:
        extra = ", per_credential=True" if self.per_credential else ""
        return (
            f"FixedBudget(limit={self.limit:g}, period={self.period!r}{extra}, unit={self.unit!r})"
        )
