"""The remaining credits of one credential, as a source reported them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["MAX_COST", "Balance", "check_cost", "normal_unit"]

MAX_COST = 1e9
"""A call's cost above this (in the balance's unit) is not believed: a provider
reporting ``usage.cost`` of 1e300, or token counts that multiply past it, is
logged and the call's estimate is charged instead; ``record()`` and
``settle()`` refuse it."""


@dataclass(frozen=True, slots=True)
class Balance:
    """What a credential can still spend.

    ``remaining`` may be negative (overdrawn: exhausted) or ``math.inf``
    (no cap: unlimited). ``total`` and ``used`` are optional and never negative.
    ``fetched_at`` is wall-clock time (``time.time()``) of the fetch;
    ``source`` names the source the figure came from. ``unit`` is the
    provider's (``"USD"``, ``"CNY"``, ``"credits"``). ``resets_at`` is when the
    limit behind ``remaining`` resets (Unix seconds), where the provider says so
    (a :class:`~creditguard.sources.FixedBudget`: when its period ends).
    """

    remaining: float
    total: float | None = None
    used: float | None = None
    unit: str = "USD"
    fetched_at: float = 0.0
    source: str = ""
    resets_at: float | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.remaining) or math.isnan(self.remaining):
            raise ValueError(f"Balance.remaining must be a number, got {self.remaining!r}")
        if self.remaining == -math.inf:
            raise ValueError("Balance.remaining cannot be -inf")
        for name in ("total", "used"):
            value = getattr(self, name)
            if value is not None and (
                not _is_number(value) or not math.isfinite(value) or value < 0
            ):
                raise ValueError(
                    f"Balance.{name} must be a finite number >= 0 or None, got {value!r}"
                )
        resets_at = self.resets_at
        if resets_at is not None and (not _is_number(resets_at) or not math.isfinite(resets_at)):
            raise ValueError(
                "Balance.resets_at must be a finite number (Unix seconds) or None, "
                f"got {resets_at!r}"
            )

    @property
    def unlimited(self) -> bool:
        """True when the source reports no cap at all."""
        return self.remaining == math.inf

    @property
    def exhausted(self) -> bool:
        """True when nothing is left (zero or overdrawn)."""
        return self.remaining <= 0

    def debited(self, amount: float) -> Balance:
        """This balance with ``amount`` more spent (an unlimited balance stays unlimited)."""
        if amount == 0 or self.unlimited:
            return self
        used = None if self.used is None else max(0.0, self.used + amount)
        return self._derived(self.remaining - amount, used)

    def _derived(self, remaining: float, used: float | None) -> Balance:
        """A copy with new figures, skipping validation: derived from a valid
        balance by arithmetic on finite numbers (the hot path settles with it)."""
        # filled as a plain twin (same slots, not frozen: plain attribute
        # stores), then made the frozen Balance: a quarter of the setters' cost
        new: Any = _new(_Twin)
        new.remaining = remaining
        new.total = self.total
        new.used = used
        new.unit = self.unit
        new.fetched_at = self.fetched_at
        new.source = self.source
        new.resets_at = self.resets_at
        new.__class__ = Balance
        return new  # type: ignore[no-any-return]


class _Twin:
    """Balance's slots on a class that takes plain stores (see ``_derived``)."""

    __slots__ = Balance.__slots__


_new = object.__new__


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_HUGE = 2**1000  # (a module constant: the compiler does not fold a power this large)
_INF = math.inf


def check_cost(cost: object) -> float:
    """``cost`` as a float, or ConfigError (a ValueError): a cost is a finite
    number >= 0."""
    if type(cost) is float and 0.0 <= cost < _INF:  # the usual case
        return cost
    if isinstance(cost, int) and not isinstance(cost, bool) and cost > _HUGE:
        cost = math.inf  # (too large for a float: refused below, not OverflowError)
    if (
        isinstance(cost, bool)
        or not isinstance(cost, (int, float))
        or not math.isfinite(cost)
        or cost < 0
    ):
        raise ConfigError("cost", cost, "a finite number >= 0")
    return float(cost)


def _call_cost(cost: object) -> float:
    """A call's cost as ``record()`` and ``settle()`` take it: :func:`check_cost`,
    and at most :data:`MAX_COST` (ConfigError, before anything is charged)."""
    if type(cost) is float and 0.0 <= cost <= MAX_COST:  # the usual case
        return cost
    cost = check_cost(cost)
    if cost > MAX_COST:
        raise ConfigError(
            "cost",
            cost,
            f"a finite number >= 0 and at most {MAX_COST:g} (a call's cost above it is "
            "not believed: a tokens or units mix-up?)",
        )
    return cost


def normal_unit(unit: str) -> str:
    """A unit as balances carry it: trimmed, a currency code in capitals
    (``" usd"`` -> ``"USD"``); other units (``"credits"``) as written."""
    unit = unit.strip()
    return unit.upper() if len(unit) == 3 and unit.isascii() and unit.isalpha() else unit
