"""What a shared store keeps per credential, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..balance import Balance
from ..errors import CreditGuardError

__all__ = ["SharedState", "Store", "StoreError"]


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


@runtime_checkable
class Store(Protocol):
    """Shared state per credential fingerprint ``key`` (never a raw API key).

    Every method is one short round trip; any failure of the store raises
    :class:`StoreError`. Amounts are in the balance's unit.
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

    def reserve(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
    ) -> bool:
        """Hold ``amount`` until ``expires_at``, atomically, unless it would
        take the headroom below ``floor``.

        With a floor and a limited snapshot, the headroom after the hold is
        ``(0 if exhausted else remaining) - debits - held - amount``; below
        ``floor`` nothing is held and the answer is False.
        """
        ...

    def settle(self, key: str, hold_id: str, cost: float) -> bool:
        """Replace the hold with its real ``cost``, once: False (and no
        charge) when the hold was already settled or released."""
        ...

    def release(self, key: str, hold_id: str) -> bool:
        """Drop the hold without a charge; False if it was not there."""
        ...

    def debit(self, key: str, cost: float) -> None:
        """Record ``cost`` spent (kept even before there is a snapshot)."""
        ...

    def exhaust(self, key: str) -> None:
        """A provider refused for lack of credits: treat the balance as empty
        until the next snapshot (creates a ``remaining=0`` one if none)."""
        ...

    def try_lock(self, key: str, token: str, ttl: float) -> bool:
        """Take the refresh lock of ``key`` for ``ttl`` seconds, if it is free."""
        ...

    def unlock(self, key: str, token: str) -> None:
        """Free the refresh lock, if ``token`` still holds it."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...
