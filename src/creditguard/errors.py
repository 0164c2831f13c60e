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

import re
from collections.abc import Mapping
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
    ``misconfigured`` is True when only the operator can fix it: the credits
    endpoint refused the source's *own* key (401/403), so every refresh will
    fail the same way until the key or its permissions change.
    """

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        source: str = "",
        misconfigured: bool = False,
    ) -> None:
        self.reason = reason
        self.status_code = status_code
        self.source = source
        self.misconfigured = misconfigured
        where = f"{source}: " if source else ""
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{where}{reason}{status}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_source_error,
            (self.reason, self.status_code, self.source, self.misconfigured),
        )


def _rebuild_source_error(
    reason: str, status_code: int | None, source: str, misconfigured: bool = False
) -> CreditSourceError:
    return CreditSourceError(
        reason, status_code=status_code, source=source, misconfigured=misconfigured
    )


class ConfigError(CreditGuardError, ValueError):
    """Bad configuration: names the key, the bad value and what is allowed.

    A value that looks like an API key (``sk-...``, a long token) is kept and
    shown as ``<redacted>``: a key passed by mistake where a setting belongs
    (``BudgetGuard(estimate="sk-or-v1-...")``) never reaches a message or log.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        raw, value = value, mask(value)
        if isinstance(raw, str) and value is not raw and len(raw.strip()) >= 4:
            # the text of what is allowed may quote the value ("X is not set"): masked there too
            allowed = allowed.replace(raw.strip(), REDACTED)
        self.key = key
        self.value = value
        self.allowed = allowed
        shown = redact_userinfo(_KEY_IN_TEXT.sub(REDACTED, repr(value)))
        super().__init__(f"{key} = {shown} is not valid: {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.allowed))


# -- masking key-like values (the one place) ------------------------------------

REDACTED = "<redacted>"
_KEY_PREFIX = re.compile(r"(?:sk|pk|rk)[-_][A-Za-z0-9]")  # sk-or-v1-..., sk-proj-..., sk-ant-...
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{24,}")
# the password of a scheme://user:password@host URL (a base_url or webhook URL)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@'\"]*):[^/\s@'\"]*@")
_KEY_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])(?:sk|pk|rk)[-_][A-Za-z0-9][A-Za-z0-9_\-]{6,}")


def looks_like_key(text: str) -> bool:
    """True for strings shaped like API keys: a key prefix, or a long token
    mixing digits and lower case letters."""
    text = text.strip()
    return bool(
        _KEY_PREFIX.match(text)
        or (
            _TOKEN.fullmatch(text)
            and any(c.isdigit() for c in text)
            and any(c.islower() for c in text)
        )
    )


def mask(value: object, _depth: int = 0) -> object:
    """``value`` with key-like strings replaced by ``<redacted>`` (in lists,
    tuples and mappings too, a few levels deep)."""
    if isinstance(value, str):
        return REDACTED if looks_like_key(value) else redact_userinfo(value)
    if _depth >= 4:
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        masked = [mask(item, _depth + 1) for item in value]
        if any(a is not b for a, b in zip(masked, value, strict=True)):
            return type(value)(masked)
        return value
    if isinstance(value, Mapping):
        try:
            pairs = [(k, v, mask(k, _depth + 1), mask(v, _depth + 1)) for k, v in value.items()]
        except Exception:  # a mapping that cannot be read: shown as its repr, masked
            return value
        if any(mk is not k or mv is not v for k, v, mk, mv in pairs):
            return {mk: mv for _, _, mk, mv in pairs}
        return value
    return value


def redact_userinfo(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL
    masked (a gateway's base_url, a webhook URL may carry one)."""
    if "@" not in text:
        return text
    return _USERINFO.sub(r"\1:" + REDACTED + "@", text)
