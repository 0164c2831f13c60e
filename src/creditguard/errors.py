"""Exceptions raised by creditguard.

One root, a small tree::

    CreditGuardError
    ├── CreditsExhausted     a guarded call was refused; ``.decision`` says why
    ├── CreditSourceError    a credits endpoint or balance function failed
    └── ConfigError          bad configuration (also a ValueError)

No message, ``repr`` or attribute of these exceptions ever holds an API key:
reasons are built by creditguard from status codes and short descriptions,
and anything taken from a lower layer is redacted first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .policy import Decision

__all__ = ["ConfigError", "CreditGuardError", "CreditSourceError", "CreditsExhausted"]


class CreditGuardError(Exception):
    """Root of every exception creditguard raises on purpose."""


class CreditsExhausted(CreditGuardError):
    """A guarded call was refused because the remaining credits are too low.

    ``decision`` holds the :class:`~creditguard.Decision` that refused it.
    """

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.decision,))


class CreditSourceError(CreditGuardError):
    """A credits source could not give a usable balance.

    ``status_code`` is the HTTP status when there was one (else None),
    ``reason`` a short description, ``source`` the source's name.
    """

    def __init__(self, reason: str, *, status_code: int | None = None, source: str = "") -> None:
        self.reason = reason
        self.status_code = status_code
        self.source = source
        where = f"{source}: " if source else ""
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{where}{reason}{status}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_source_error, (self.reason, self.status_code, self.source))


def _rebuild_source_error(reason: str, status_code: int | None, source: str) -> CreditSourceError:
    return CreditSourceError(reason, status_code=status_code, source=source)


class ConfigError(CreditGuardError, ValueError):
    """Bad configuration: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key} = {value!r} is not valid: {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.allowed))
