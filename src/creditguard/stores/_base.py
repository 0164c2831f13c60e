"""What a shared store keeps per credential, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..balance import Balance
from ..errors import CreditGuardError

__all__ = ["SharedState", "Spend", "Store", "StoreError"]


class StoreError(CreditGuardError):
    """The shared store failed: down, too slow, or it answered an error.

    ``reason`` is a short description. It never holds a password or a URL's
    credentials, nor a raw API key (the store only ever sees fingerprints).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class SharedState:
    """One credential's shared state, as read in one atomic step."""

    balance: Balance | None
    """The snapshot as fetched (``remaining`` may be ``math.inf`` or negative);
    None when there is no snapshot yet."""
    fetched_at: float
    """Epoch seconds of the snapshot (0.0 when there is none)."""
    debits: float
    """Spend recorded since the snapshot."""
    exhausted: bool
    """A provider refused for lack of credits since the snapshot."""
    held: float
    """The sum of the open, unexpired holds."""


@dataclass(frozen=True, slots=True)
class Spend:
    """Where a budget the guard keeps itself (``FixedBudget``) counts spend.

    Spend is counted per window bucket (whole numbers: a calendar period's
    number, or a slice of a rolling window); a window's spend is the sum of its
    buckets from ``low`` to ``bucket`` (the current one)."""

    name: str
    """The budget's period (``"day"``, ``"1h"``...): budgets of different
    periods are counted apart."""
    bucket: int
    """The bucket spend goes to now."""
    low: int
    """The oldest bucket still in the window."""
    keep: float | None
    """Seconds the counts are kept after the last spend (None: for ever)."""
    start: float = 0.0
    """When the current bucket began (epoch seconds): a budget computed before
    it is out of date."""


@runtime_checkable
class Store(Protocol):
    """Shared state per credential fingerprint ``key`` (never a raw API key).

    Every method is one short round trip; any failure of the store raises
    :class:`StoreError`. Amounts are in the balance's unit. A store may also
    offer ``a``-prefixed async twins (``aread``, ``aadmit``, ...); the shared
    ledger uses them from async code, and the sync methods otherwise.
    """

    def read(self, key: str, now: float) -> SharedState:
        """The state of ``key``; holds whose expiry is ``<= now`` are purged first."""
        ...

    def put(
        self, key: str, balance: Balance, fetched_at: float, base_debits: float, keep_for: float
    ) -> None:
        """Replace the snapshot with a freshly fetched ``balance``.

        Spend recorded while the fetch ran is carried over: debits become
        ``max(0, debits_now - base_debits)``, where ``base_debits`` is what was
        read before the fetch. ``exhausted`` is cleared, holds are untouched,
        and the snapshot expires after ``keep_for`` seconds.
        """
        ...

    def set_remaining(self, key: str, remaining: float, fetched_at: float, keep_for: float) -> None:
        """A provider told us the fresh remaining figure: keep the old
        snapshot's total, unit and source (unit ``"credits"`` if there was
        none), reset debits and ``exhausted``."""
        ...

    def admit(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
        fresh_after: float | None = None,
    ) -> tuple[int, SharedState]:
        """Read ``key``'s state and hold ``amount`` until ``expires_at``, in
        one atomic step, unless it would take the headroom below ``floor``.

        Returns a status and the state before the hold: 1 held, 0 refused
        (with a floor and a limited snapshot, the headroom after the hold,
        ``(0 if exhausted else remaining) - debits - held - amount``, would be
        below ``floor``), 2 nothing asked (``amount`` 0), 3 not held because
        the snapshot is missing or was stored before ``fresh_after``.
        """
        ...

    def reserve(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
    ) -> bool:
        """:meth:`admit` without a freshness condition: True when held."""
        ...

    def budget(
        self,
        key: str,
        spend: Spend,
        limit: float,
        unit: str,
        source: str,
        now: float,
        keep_for: float,
        known: float | None = None,
    ) -> float:
        """A budget kept in the store: replace the snapshot with ``limit`` less
        the window's spend counted under ``spend`` (raised to ``known`` first
        when the store lost part of it); debits reset. Returns the spend."""
        ...

    def settle(
        self,
        key: str,
        hold_id: str,
        cost: float,
        now: float | None = None,
        spend: Spend | None = None,
    ) -> int:
        """Charge ``cost`` for ``hold_id`` and drop its hold, once per id: 1
        when the hold was there, 2 when it was not (charged all the same: a
        flushed Redis lost it), 0 when this id was settled before (nothing
        charged). ``spend``: also count it in that budget window."""
        ...

    def release(self, key: str, hold_id: str) -> bool:
        """Drop the hold without a charge; False if it was not there."""
        ...

    def debit(self, key: str, cost: float, op_id: str | None = None) -> None:
        """Record ``cost`` spent (kept even before there is a snapshot); with
        ``op_id``, once per id."""
        ...

    def exhaust(self, key: str) -> None:
        """A provider refused for lack of credits: treat the balance as empty
        until the next snapshot (creates a ``remaining=0`` one if none)."""
        ...

    def try_lock(self, key: str, token: str, ttl: float) -> bool:
        """Take the refresh lock of ``key`` for ``ttl`` seconds, if it is free."""
        ...

    def renew(self, key: str, token: str, ttl: float) -> bool:
        """Extend the refresh lock by ``ttl`` seconds while ``token`` holds it."""
        ...

    def unlock(self, key: str, token: str) -> None:
        """Free the refresh lock, if ``token`` still holds it."""
        ...

    def heartbeat(self, worker: str, now: float, alive_for: float) -> int:
        """``worker`` is alive at ``now``; how many workers were seen alive
        within the last ``alive_for`` seconds (at least 1)."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...
