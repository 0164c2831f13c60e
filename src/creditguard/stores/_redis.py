"""The Redis store: shared state per credential, changed by atomic Lua scripts.

Keys of one credential fingerprint ``fp`` under the prefix ``cg`` (the braces
are a hash tag: in a cluster, one credential's keys share a slot)::

    cg:{fp}:snap    hash: the snapshot (remaining, unlimited, total, used, unit,
                    source, balance_at: the Balance's own fetched_at), when it
                    was stored (fetched_at), debits since it, exhausted
    cg:{fp}:holds   hash: hold id -> amount held
    cg:{fp}:exp     sorted set: hold id -> expiry (epoch seconds)
    cg:{fp}:late    sorted set: holds that expired unsettled (a late settle
                    still charges them, once)
    cg:{fp}:lock    string: the refresh lock's token

Amounts are integer micro-units (``round(x * 1_000_000)``), changed with
``HINCRBY``; an unlimited balance is a flag. Every key expires: the snapshot
after ``keep_for``, the hold keys a while after their last hold's expiry.

The scripts are package data (``lua/*.lua``), every key passed in ``KEYS``;
they run by ``EVALSHA`` with a fallback to loading them (redis-py's
``register_script``). The client never retries: a timed-out write may have
been applied, and retrying a debit would count it twice.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..balance import Balance, check_cost
from ..errors import ConfigError
from ._base import SharedState, StoreError

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

__all__ = ["RedisStore"]

_MICRO = 1_000_000

_LATE_FOR = 86_400.0
"""Seconds after its expiry during which a hold that expired unsettled can
still be settled (charged once) or released."""

_ORPHAN_KEEP = 3_600.0
"""Seconds kept when debit, settle or exhaust create the snapshot key (no
snapshot, so no ``keep_for`` of its own)."""

_SCRIPTS = (
    "read",
    "put",
    "set_remaining",
    "reserve",
    "settle",
    "release",
    "debit",
    "exhaust",
    "unlock",
)
_USES_HOLDS_LIB = frozenset({"read", "reserve"})

_OWN_PARAMS = ("prefix", "timeout")
_LEDGER_PARAMS = ("secret",)  # the ledger's fingerprint secret: never reaches redis-py
_INSTALL = "RedisStore needs redis-py: pip install 'creditguard[redis]'"


@functools.cache
def _script_text(name: str) -> str:
    """The Lua source of script ``name``, read from the package data."""
    lua = files("creditguard.stores") / "lua"
    text = (lua / f"{name}.lua").read_text(encoding="utf-8")
    if name in _USES_HOLDS_LIB:
        text = (lua / "_holds.lua").read_text(encoding="utf-8") + "\n" + text
    return text


class RedisStore:
    """A :class:`~creditguard.stores.Store` in Redis (redis-py's sync client).

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL as redis-py
    takes it; :meth:`from_url` also reads ``prefix`` and ``timeout`` from its
    query. Every key starts with ``prefix``. Every call waits at most
    ``timeout`` seconds to connect and to read, and is never retried; any
    failure raises :class:`~creditguard.stores.StoreError`.

    ``client`` uses an existing client instead (its own timeouts and retry
    policy apply: build it with ``socket_timeout`` and
    ``retry=Retry(NoBackoff(), 0)``); :meth:`close` leaves it open.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "cg",
        timeout: float = 0.25,
        client: redis.Redis | None = None,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ImportError(_INSTALL) from exc
        url, params = _split_url(url)
        self._where, self._secrets = _describe_url(url)
        for name in _OWN_PARAMS:
            if name in params:
                raise ConfigError(
                    name,
                    params[name],
                    f"pass {name}= as an argument, or use RedisStore.from_url()",
                )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError("prefix", prefix, "a non-empty string without braces")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError("timeout", timeout, "a finite number of seconds > 0")
        self.prefix = prefix
        self.timeout = float(timeout)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._owned = client is None
        if client is None:
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    "store", self._where, f"a redis URL redis-py accepts ({self._redacted(exc)})"
                ) from None
        else:
            self._where = _describe_client(client)
            _check_client(client)
        self._client: redis.Redis = client
        self._scripts: dict[str, Script] = {
            name: client.register_script(_script_text(name)) for name in _SCRIPTS
        }
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store from a URL: ``?prefix=`` and ``?timeout=`` configure the
        store, ``?secret=`` (the ledger's fingerprint secret) is dropped, any
        other query parameter goes to redis-py."""
        clean, params = _split_url(url)
        options: dict[str, Any] = {}
        if "prefix" in params:
            options["prefix"] = params["prefix"]
        if "timeout" in params:
            try:
                options["timeout"] = float(params["timeout"])
            except ValueError:
                raise ConfigError(
                    "timeout", params["timeout"], "a finite number of seconds > 0"
                ) from None
        return cls(clean, **options)

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r}, timeout={self.timeout:g})"

    # -- keys -----------------------------------------------------------------

    def _keys(self, key: str) -> list[str]:
        """snap, holds, exp, late: the keys of the hold scripts."""
        base = self._base(key)
        return [f"{base}:snap", f"{base}:holds", f"{base}:exp", f"{base}:late"]

    def _base(self, key: str) -> str:
        if not isinstance(key, str) or not key or "{" in key or "}" in key:
            raise ValueError(f"a store key is a non-empty fingerprint without braces, got {key!r}")
        return f"{self.prefix}:{{{key}}}"

    # -- calling Redis ----------------------------------------------------------

    def _eval(self, op: str, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        if self._closed:
            raise StoreError(f"{self._where}: {op}: the store is closed")
        try:
            return self._scripts[name](keys=keys, args=args)
        except self._errors as exc:
            raise self._error(op, exc) from exc

    def _error(self, op: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self._where}: {op}: {self._redacted(exc)}")

    def _redacted(self, exc: BaseException) -> str:
        detail = str(exc)
        for secret in self._secrets:
            detail = detail.replace(secret, "<redacted>")
        detail = " ".join(detail.split())
        if len(detail) > 160:
            detail = detail[:157] + "..."
        name = type(exc).__name__
        return f"{name}: {detail}" if detail else name

    # -- the Store protocol -------------------------------------------------------

    def read(self, key: str, now: float) -> SharedState:
        reply = self._eval("read", "read", self._keys(key), [_time(now), repr(_LATE_FOR)])
        try:
            held, flat = reply
            fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
            debits = int(fields.get("debits", 0)) / _MICRO
            exhausted = fields.get("exhausted") == "1"
            balance = None
            fetched_at = 0.0
            if "unlimited" in fields:
                fetched_at = float(fields["fetched_at"])
                balance = Balance(
                    remaining=(
                        math.inf
                        if fields["unlimited"] == "1"
                        else int(fields["remaining"]) / _MICRO
                    ),
                    total=_amount(fields.get("total")),
                    used=_amount(fields.get("used")),
                    unit=fields.get("unit", ""),
                    fetched_at=float(fields.get("balance_at", fetched_at)),
                    source=fields.get("source", ""),
                )
            return SharedState(balance, fetched_at, debits, exhausted, int(held) / _MICRO)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise StoreError(
                f"{self._where}: read: unexpected data under {self._base(key)} "
                f"({type(exc).__name__})"
            ) from None

    def put(
        self, key: str, balance: Balance, fetched_at: float, base_debits: float, keep_for: float
    ) -> None:
        unlimited = balance.unlimited
        args: list[str | int] = [
            0 if unlimited else _micro(balance.remaining),
            "1" if unlimited else "0",
            "" if balance.total is None else _micro(balance.total),
            "" if balance.used is None else _micro(balance.used),
            balance.unit,
            balance.source,
            _time(fetched_at),
            _micro(base_debits),
            _ms(keep_for),
            _time(balance.fetched_at if math.isfinite(balance.fetched_at) else fetched_at),
        ]
        self._eval("put", "put", [f"{self._base(key)}:snap"], args)

    def set_remaining(self, key: str, remaining: float, fetched_at: float, keep_for: float) -> None:
        if not isinstance(remaining, (int, float)) or math.isnan(remaining):
            raise ValueError(f"remaining must be a number, got {remaining!r}")
        if remaining == -math.inf:
            raise ValueError("remaining cannot be -inf")
        unlimited = remaining == math.inf
        args: list[str | int] = [
            0 if unlimited else _micro(remaining),
            "1" if unlimited else "0",
            _time(fetched_at),
            _ms(keep_for),
        ]
        self._eval("set_remaining", "set_remaining", [f"{self._base(key)}:snap"], args)

    def reserve(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
    ) -> bool:
        amount = check_cost(amount)
        if floor is not None and floor == -math.inf:
            floor = None
        args: list[str | int] = [
            _hold_id(hold_id),
            _micro(amount),
            "" if floor is None else _micro(floor),
            _time(now),
            _time(expires_at),
            repr(_LATE_FOR),
        ]
        return bool(self._eval("reserve", "reserve", self._keys(key), args))

    def settle(self, key: str, hold_id: str, cost: float) -> bool:
        args: list[str | int] = [_hold_id(hold_id), _micro(check_cost(cost)), _ms(_ORPHAN_KEEP)]
        return bool(self._eval("settle", "settle", self._keys(key), args))

    def release(self, key: str, hold_id: str) -> bool:
        return bool(self._eval("release", "release", self._keys(key), [_hold_id(hold_id)]))

    def debit(self, key: str, cost: float) -> None:
        micro = _micro(check_cost(cost))
        keys = [f"{self._base(key)}:snap"]
        if micro:
            self._eval("debit", "debit", keys, [micro, _ms(_ORPHAN_KEEP)])

    def exhaust(self, key: str) -> None:
        keys = [f"{self._base(key)}:snap"]
        self._eval("exhaust", "exhaust", keys, [_time(time.time()), _ms(_ORPHAN_KEEP)])

    def try_lock(self, key: str, token: str, ttl: float) -> bool:
        lock = f"{self._base(key)}:lock"
        if self._closed:
            raise StoreError(f"{self._where}: lock: the store is closed")
        try:
            return bool(self._client.set(lock, _hold_id(token), nx=True, px=_ms(ttl)))
        except self._errors as exc:
            raise self._error("lock", exc) from exc

    def unlock(self, key: str, token: str) -> None:
        self._eval("unlock", "unlock", [f"{self._base(key)}:lock"], [_hold_id(token)])

    def close(self) -> None:
        """Close the connections (a client passed in stays open)."""
        if self._closed:
            return
        self._closed = True
        if self._owned:
            with contextlib.suppress(*self._errors):  # a broken connection: nothing to do
                self._client.close()


# -- conversions -----------------------------------------------------------------


def _micro(value: float) -> int:
    """``value`` in integer micro-units."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"an amount must be a finite number, got {value!r}")
    return round(value * _MICRO)


def _amount(text: str | None) -> float | None:
    return None if text is None else int(text) / _MICRO


def _time(value: float) -> str:
    """Epoch seconds as Lua and ZADD read them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"a time must be a finite number of seconds, got {value!r}")
    return repr(float(value))


def _ms(seconds: float) -> int:
    """A duration for PEXPIRE / PX: whole milliseconds, at least 1."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ValueError(f"a duration must be a finite number of seconds > 0, got {seconds!r}")
    return max(1, math.ceil(seconds * 1000))


def _hold_id(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a hold id or token is a non-empty string, got {value!r}")
    return value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- URLs ------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without creditguard's query parameters, and those parameters."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OWN_PARAMS:
            ours[name] = value
        elif name not in _LEDGER_PARAMS:
            theirs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _describe_url(url: str) -> tuple[str, tuple[str, ...]]:
    """Where ``url`` points, without credentials; and the secrets it holds."""
    parts = urlsplit(url)
    secrets = {parts.password or ""}
    secrets.update(value for name, value in parse_qsl(parts.query) if name == "password")
    secrets.update([unquote(s) for s in secrets])
    secrets.discard("")
    if parts.scheme == "unix":
        where = f"unix://{parts.path}"
    else:
        try:
            port = f":{parts.port}" if parts.port is not None else ""
        except ValueError:
            port = ":?"
        where = f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    # longest first, so that a password containing another is masked whole
    return where, tuple(sorted(secrets, key=len, reverse=True))


def _describe_client(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return type(client).__name__


def _check_client(client: Any) -> None:
    """Warn when a client passed in could hang or retry a write."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        return
    problems = []
    if kwargs.get("socket_timeout") is None:
        problems.append("no socket_timeout (a hung Redis blocks every call)")
    retry = kwargs.get("retry")
    get_retries = getattr(retry, "get_retries", None)
    if callable(get_retries) and get_retries() != 0:
        problems.append("retries (a timed-out debit may be applied twice)")
    if problems:
        warnings.warn(
            f"RedisStore(client=...): the client has {' and '.join(problems)}; "
            "build it with socket_timeout=... and retry=Retry(NoBackoff(), 0)",
            stacklevel=3,
        )
