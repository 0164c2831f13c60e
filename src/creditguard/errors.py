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

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .balance import Balance
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
    fail the same way until the key or its permissions change. ``partial`` is
    what the sources that did answer leave, when only some did (``Tightest``):
    the guard judges on it as on a stale balance, so that a local budget binds
    while a provider's endpoint is down.
    """

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        source: str = "",
        misconfigured: bool = False,
        partial: Balance | None = None,
    ) -> None:
        self.reason = reason
        self.status_code = status_code
        self.source = source
        self.misconfigured = misconfigured
        self.partial = partial
        where = f"{source}: " if source else ""
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{where}{reason}{status}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_source_error,
            (self.reason, self.status_code, self.source, self.misconfigured, self.partial),
        )


def _rebuild_source_error(
    reason: str,
    status_code: int | None,
    source: str,
    misconfigured: bool = False,
    partial: Balance | None = None,
) -> CreditSourceError:
    return CreditSourceError(
        reason,
        status_code=status_code,
        source=source,
        misconfigured=misconfigured,
        partial=partial,
    )


class ConfigError(CreditGuardError, ValueError):
    """Bad configuration: names the key, the bad value and what is allowed.

    A value that looks like an API key (``sk-...``, a long token) is kept and
    shown as ``<redacted>``: a key passed by mistake where a setting belongs
    (``BudgetGuard(estimate="sk-or-v1-...")``) never reaches a message or log;
    secrets inside a value (a URL's password, its ``?key=`` query value) are
    masked by the same rules as every other text (:func:`redact`).
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        raw, value = value, mask(value)
        if isinstance(raw, str) and value is not raw and len(raw.strip()) >= 4:
            # the text of what is allowed may quote the value ("X is not set"): masked there too
            allowed = allowed.replace(raw.strip(), REDACTED)
        self.key = redact(key)
        self.value = value
        self.allowed = redact(allowed)
        shown = redact(repr(value))  # (the repr of any other object, masked by the same rules)
        super().__init__(f"{self.key} = {shown} is not valid: {self.allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value, self.allowed))


# -- masking secrets (the one place) -------------------------------------------
#
# Every text creditguard shows (an error, a repr, a log line, describe()) that
# may hold something a user or a lower layer wrote goes through redact() or
# mask(): one set of rules, so a new kind of secret is taught here once.

REDACTED = "<redacted>"
_KEY_PREFIX = re.compile(r"(?:sk|pk|rk)[-_][A-Za-z0-9]")  # sk-or-v1-..., sk-proj-..., sk-ant-...
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{24,}")
_KEY_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])(?:sk|pk|rk)[-_][A-Za-z0-9][A-Za-z0-9_\-]{6,}")
_END = r"""[/?#\s'"<>]"""  # what ends a URL's authority (or the URL)
# scheme://user:password@host: the password runs to the LAST "@" before the
# host, so an unencoded "@" (or "/", "?", "#") in it is masked whole. A
# "host:port/" is not a password (a port is digits up to the authority's end).
_USERINFO = re.compile(
    rf"""(?i)\b([a-z][a-z0-9+.\-]*://[^\s/?#:'"<>\[\]]*)"""  # scheme://user (an "@" allowed)
    rf":(?!\d*(?:{_END}|$))"  # ":" not followed by a port
    r"""[^\s'"<>]*?"""  # the password, as short as ...
    rf"@(?=[^@\s/?#'\"<>]*(?:{_END}|$))"  # ... leaves an "@" with the host after it
)
# scheme://token@host: a user name shaped like a key (a token used as the user)
_USER_ONLY = re.compile(r"""(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/?#:@'"<>]+)@""")
# name=value where the name ends in a secret's word: ?key=, api_key=, token=,
# access_token=, secret=, client_secret=, password=, pwd=, sig=, X-Amz-Signature=, auth=
_SECRET_NAME = (
    r"[\w.\-]*?(?:key|token|secret|password|passwd|pass|pwd|sig|signature|credential|auth)"
)
# (also quoted, as in an object's repr: Client(api_key='...'))
# Not a secret: a value that is punctuation of the sentence ("pass api_key=, or ...",
# "api_key=; the ...", "(... token=)") or None ("api_key=None (the call's credential)").
_ASSIGNED = re.compile(
    rf"(?i)(?<![\w.\-])({_SECRET_NAME})=(['\"]?)"
    rf"(?!(?:\.\.\.|{REDACTED}|None)(?:[&\s'\"#),;]|$))(?![,;)](?:\s|$))[^&\s'\"#<>]+"
)
# "api_key": "...", 'x-api-key': '...' (JSON, a dict's repr)
_QUOTED = re.compile(rf"""(?i)(["'])({_SECRET_NAME})\1(\s*:\s*)(["'])(?!{REDACTED}\4)[^"'\n]+\4""")
# Authorization: Bearer <token> (also Basic, Key, Token schemes after "Authorization")
_BEARER = re.compile(
    r"(?i)(\bbearer\s+|\bauthorization['\"]?\s*[:=]\s*['\"]?(?:[a-z]+\s+)?)"
    r"(?!" + REDACTED + r")[A-Za-z0-9._~+/\-]{8,}=*"
)


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


def env_name_shown(name: object) -> str:
    """An ``api_key_env`` value for an error, a repr or a log line: as it is
    when it reads as a variable's name (``OPENROUTER_API_KEY``, ``MY-KEY``),
    else ``<not shown>``: a key pasted there by mistake (fal's ``id:secret``,
    any long or digit-laden token) never shows."""
    if (
        isinstance(name, str)
        and len(name) <= 32
        and sum(c.isdigit() for c in name) <= 3
        and not any(c in name for c in ":/@.= ")
        and not looks_like_key(name)
    ):
        return name
    return "<not shown>"


def url_password(url: str) -> str | None:
    """The password of a ``scheme://user:password@host`` URL as :func:`redact`
    reads it (an unencoded ``@``, ``/`` or ``?`` in it included); None when
    the URL has none."""
    found = _USERINFO.search(url)
    return None if found is None else url[found.end(1) + 1 : found.end() - 1]


def redact_url(url: str) -> str:
    """``url`` (the whole text one URL) shown safely: :func:`redact`, and its
    password masked whatever it holds (a space, a quote or ``<`` end a URL in
    free text, not here)."""
    try:
        password = urlsplit(url).password
    except ValueError:  # (a netloc urlsplit refuses: what redact() reads then)
        password = None
    # up to the last @ too, unless a query holds it (a # or / in a password)
    userinfo = url.partition("://")[2].rpartition("@")[0]
    whole = userinfo.partition(":")[2] if "?" not in userinfo else None
    return redact(url, password, url_password(url), whole)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret masked as ``<redacted>``: each of ``secrets``
    (the keys in play), anything shaped like an API key (``sk-...``), the
    password of every ``scheme://user:password@host`` URL (an unencoded ``@``
    in it too) and a key-shaped user name, the value of every secret-named
    parameter (``key=``, ``api_key=``, ``token=``, ``secret=``, ``password=``,
    ``sig=``, ... in a query string or in JSON) and bearer tokens."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if "://" in text and "@" in text:
        text = _USERINFO.sub(r"\1:" + REDACTED + "@", text)
        text = _USER_ONLY.sub(_user_only, text)
    if "=" in text:
        text = _ASSIGNED.sub(r"\1=\2" + REDACTED, text)
    if ":" in text:
        text = _QUOTED.sub(r"\1\2\1\3\4" + REDACTED + r"\4", text)
    lowered = text.lower()
    if "bearer" in lowered or "authorization" in lowered:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    return _KEY_IN_TEXT.sub(REDACTED, text)


def _user_only(match: re.Match[str]) -> str:
    user = match.group(2)
    return match.group(1) + REDACTED + "@" if looks_like_key(user) else match.group(0)


def mask(value: object, _depth: int = 0) -> object:
    """``value`` with key-like strings replaced by ``<redacted>`` and secrets
    in other strings masked (:func:`redact`), in lists, tuples and mappings
    too, a few levels deep."""
    if isinstance(value, str):
        if looks_like_key(value):
            return REDACTED
        masked = redact(value)
        return value if masked == value else masked
    if _depth >= 4:
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        masked_items = [mask(item, _depth + 1) for item in value]
        if any(a is not b for a, b in zip(masked_items, value, strict=True)):
            return type(value)(masked_items)
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


_HUGE = 2**1000  # (a module constant: the compiler does not fold a power this large)


def finite_number(key: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float when it is a finite number >= 0 (> 0 with
    ``positive``), else a :class:`ConfigError` naming ``key``."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _HUGE:
        value = math.inf  # (an int too large for a float: refused below, not OverflowError)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        allowed = "a finite number > 0" if positive else "a finite number >= 0"
        raise ConfigError(key, value, allowed)
    return float(value)
