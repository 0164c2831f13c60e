"""The tightest of several sources: what a key can really spend."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from ..balance import Balance
from ..errors import ConfigError, CreditSourceError
from ._base import CreditSource, aclose_all, as_source_error, close_all, logger

__all__ = ["PARTIAL", "Tightest"]

PARTIAL = " (partial)"
"""Ends the ``source`` of a balance only some of a Tightest's sources gave."""


class Tightest:
    """The balance with the least remaining among ``sources``.

    What a key can spend is bounded by several limits at once (its own limit,
    the account's credits, a local budget). ``Tightest`` fetches them all and
    returns the binding one unchanged, so :attr:`Balance.source` names the
    source that binds (ties: the first given). If any source fails, its
    :class:`~creditguard.CreditSourceError` is raised, since a partial answer
    could overstate what is left. Its ``partial`` carries the tightest limited
    balance of the sources that answered (``source`` ending ``" (partial)"``):
    with ``on_source_error="allow"`` the guard judges on it as on a stale
    balance, so a local budget keeps binding while a provider is down (or on
    the last good balance, when that leaves less); with ``"refuse"`` the call
    is refused as before. A CreditSourceError is also raised when the limited
    balances are in different units (USD and CNY cannot be compared).
    ``record`` reaches every source that has one.
    """

    name = "tightest"

    def __init__(self, *sources: CreditSource) -> None:
        if not sources:
            raise ConfigError("sources", sources, "at least one credits source")
        for source in sources:
            if not isinstance(source, CreditSource):
                raise ConfigError(
                    "sources", source, "credits sources (name, per_credential, fetch, afetch)"
                )
        self.sources: tuple[CreditSource, ...] = sources
        self.per_credential = any(source.per_credential for source in sources)

    def fetch(self, credential: str | None) -> Balance:
        """Fetches every source in turn; the tightest balance."""
        balances: list[tuple[CreditSource, Balance]] = []
        error: CreditSourceError | None = None
        for source in self.sources:
            try:
                balances.append((source, source.fetch(credential)))
            except Exception as exc:
                if error is None:  # (the others still asked: they may bind)
                    error = as_source_error(exc, source, credential)
        if error is None:
            return self._pick(balances)
        raise self._partly(error, balances) from None

    async def afetch(self, credential: str | None) -> Balance:
        """Fetches every source concurrently; the tightest balance."""
        results = await asyncio.gather(
            *(source.afetch(credential) for source in self.sources), return_exceptions=True
        )
        balances: list[tuple[CreditSource, Balance]] = []
        error: CreditSourceError | None = None
        for source, result in zip(self.sources, results, strict=True):
            if isinstance(result, Exception):
                if error is None:
                    error = as_source_error(result, source, credential)
                continue
            if isinstance(result, BaseException):  # cancelled, interrupted
                raise result
            balances.append((source, result))
        if error is None:
            return self._pick(balances)
        raise self._partly(error, balances) from None

    def _partly(
        self, error: CreditSourceError, balances: list[tuple[CreditSource, Balance]]
    ) -> CreditSourceError:
        """``error``, carrying the tightest balance of the sources that answered
        (its ``source`` marked ``(partial)``); none when they answered
        "unlimited", which says nothing of the one that failed."""
        if balances:
            with contextlib.suppress(CreditSourceError):  # (different units: none)
                picked = self._pick(balances)
                if not picked.unlimited:
                    error.partial = replace(picked, source=picked.source + PARTIAL)
        return error

    def _pick(self, balances: list[tuple[CreditSource, Balance]]) -> Balance:
        units = {b.unit: b.source or s.name for s, b in balances if not b.unlimited}
        if len(units) > 1:  # 5 USD is not "less" than 100 CNY: never compared silently
            found = ", ".join(f"{unit} from {name}" for unit, name in units.items())
            raise CreditSourceError(
                f"the balances are in different units ({found}) and cannot be compared",
                source=self.name,
            )
        source, binding = min(balances, key=lambda pair: pair[1].remaining)
        if not binding.source:  # a source of your own that leaves it blank
            binding = replace(binding, source=source.name)
        logger.debug("%s: %s binds (remaining=%s)", self.name, binding.source, binding.remaining)
        return binding

    def record(self, credential: str | None, cost: float) -> None:
        """Records ``cost`` in every source that keeps local spend."""
        for source in self.sources:
            record: Any = getattr(source, "record", None)
            if callable(record):
                record(credential, cost)

    def close(self) -> None:
        """Closes every source that can be closed."""
        close_all(self.sources)

    async def aclose(self) -> None:
        """Closes every source that can be closed (``aclose`` where it has one)."""
        await aclose_all(self.sources)

    def __repr__(self) -> str:
        return f"Tightest({', '.join(repr(source) for source in self.sources)})"
