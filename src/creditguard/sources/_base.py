"""The :class:`CreditSource` protocol and small helpers shared by the sources."""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from .._fingerprint import describe
from ..balance import Balance

__all__ = ["CreditSource", "describe", "logger"]

# describe lives beside redact; re-exported for the sources

logger = logging.getLogger("creditguard.sources")


@runtime_checkable
class CreditSource(Protocol):
    """Where balances come from.

    ``name`` names the source (it becomes :attr:`Balance.source` and
    :attr:`CreditSourceError.source`); ``per_credential`` is True when the
    balance depends on the credential of the call being guarded, so the caller
    keeps one balance per credential. ``fetch`` and ``afetch`` raise
    :class:`~creditguard.CreditSourceError` on every failure, never anything
    holding a key.

    Local budgets also have ``record(credential, cost)``, called with the cost
    of every finished call (duck-typed, not part of the protocol).
    """

    @property
    def name(self) -> str: ...

    @property
    def per_credential(self) -> bool: ...

    def fetch(self, credential: str | None) -> Balance: ...

    async def afetch(self, credential: str | None) -> Balance: ...
