"""The :class:`CreditSource` protocol and small helpers shared by the sources."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from .._fingerprint import describe
from ..balance import Balance
from ..errors import CreditSourceError, redact

__all__ = ["CreditSource", "aclose_all", "as_source_error", "close_all", "describe", "logger"]

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


# -- for sources made of other sources (ByHost, Tightest) ------------------------------


def as_source_error(exc: Exception, source: object, credential: str | None) -> CreditSourceError:
    """``exc`` raised by an inner ``source`` as a CreditSourceError, the key redacted."""
    name = getattr(source, "name", "") or type(source).__name__
    if isinstance(exc, CreditSourceError):  # (its text may still carry the key: masked)
        reason = redact(exc.reason, credential)
        if reason == exc.reason:
            return exc
        return CreditSourceError(
            reason,
            status_code=exc.status_code,
            source=exc.source or str(name),
            misconfigured=exc.misconfigured,
            partial=exc.partial,
        )
    return CreditSourceError(redact(describe(exc, credential), credential), source=str(name))


def close_all(sources: Iterable[object]) -> None:
    """Closes every source that can be closed."""
    for source in sources:
        close: Any = getattr(source, "close", None)
        if callable(close):
            close()


async def aclose_all(sources: Iterable[object]) -> None:
    """Closes every source that can be closed (``aclose`` where it has one)."""
    for source in sources:
        aclose: Any = getattr(source, "aclose", None)
        if callable(aclose):
            result = aclose()
            if inspect.isawaitable(result):
                await result
        else:
            close: Any = getattr(source, "close", None)
            if callable(close):
                close()


def prefer_units(source: object, unit: str | None) -> None:
    """Tell every source under ``source`` that reports several currencies
    (``_prefer_unit``) which one its guard judges in: ``unit`` (the policy's),
    or under ``ByHost`` the unit of the route's own policy, where it has one."""
    prefer = getattr(source, "_prefer_unit", None)
    if prefer is not None and unit is not None:
        prefer(unit)
    inner = getattr(source, "sources", ())
    if isinstance(inner, Mapping):
        policies = getattr(source, "policies", {})
        for entry, route in inner.items():
            policy = policies.get(entry)
            prefer_units(route, unit if policy is None else policy.unit)
    else:
        for each in inner:
            prefer_units(each, unit)


def members(source: object) -> Iterator[object]:
    """``source`` and every source under it (``Tightest``'s, ``ByHost``'s routes)."""
    yield source
    inner = getattr(source, "sources", ())
    for each in inner.values() if isinstance(inner, Mapping) else inner:
        yield from members(each)
