"""The Redis store: shared state per credential, changed by atomic Lua scripts.

Keys of one credential fingerprint ``fp`` under the prefix ``cg`` (the braces
are a hash tag: in a cluster, one credential's keys share a slot)::

    cg:{fp}:snap    hash: the snapshot (remaining, unlimited, total, used, unit,
                    source, balance_at: the Balance's own fetched_at), when it
                    was stored (fetched_at), debits since it, exhausted
    cg:{fp}:holds   hash: hold id -> 'amount expiry' (epoch seconds); '=' the
                    amounts' sum, '<' no hold expires before it, '^' until when
                    the key lives, '~' the window whose done set has its expiry
                    (none of these four is a hold id)
    cg:{fp}:late    sorted set: holds that expired unsettled (a late settle
                    still charges them, once)
    cg:{fp}:done:<n>  set: the ids settled or released in window n (of
                    _DONE_FOR seconds; kept to the end of the next one: a
                    repeated settle charges nothing)
    cg:{fp}:spend:<period>  hash: a FixedBudget's spend per window bucket
    cg:{fp}:lock    string: the refresh lease's token
    cg:workers      sorted set: worker id -> last heartbeat (epoch seconds)

Amounts are integer micro-units (``round(x * 1_000_000)``), changed with
``HINCRBY``; an unlimited balance is a flag. Every key expires.

Each operation is built once as data (:class:`_Call`: a script, its keys and
arguments, and how to read the reply) and carried out by one of two shells:
redis-py's sync client (:meth:`RedisStore._run`) or ``redis.asyncio``
(:meth:`RedisStore._arun`, one client per event loop), each a plain
``Redis`` or a ``RedisCluster``. Every operation is one ``EVALSHA`` (``EVAL``
when Redis lost its script cache). The scripts are package data
(``lua/*.lua``), every key passed in ``KEYS``. The client never retries: a
timed-out write may have been applied, and retrying a debit would count it
twice (settles carry an id instead, and are applied once whatever happens).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import hashlib
import math
import os
import select
import socket
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..balance import Balance, check_cost
from ..errors import ConfigError, redact, url_password
from ._base import SharedState, Spend, StoreError

if TYPE_CHECKING:
    pass

__all__ = ["RedisStore"]

T = TypeVar("T")

_MICRO = 1_000_000

_LATE_FOR = 86_400.0
"""Seconds after its expiry during which a hold that expired unsettled can
still be settled (charged once) or released."""

_DONE_FOR = 1_800.0
"""Seconds a settled id is remembered: a settle repeated within this time
(written back after a timeout that had been applied after all) charges nothing."""

_ORPHAN_KEEP = 3_600.0
"""Seconds kept when a settle or exhaust creates the snapshot key (no
snapshot, so no ``keep_for`` of its own)."""

_SCRIPTS = (
    "read",
    "admit",
    "put",
    "budget",
    "set_remaining",
    "settle",
    "release",
    "exhaust",
    "lock",
    "renew",
    "unlock",
    "heartbeat",
    "count",
    "window",
)
_PRELUDES = {
    "read": "_holds",
    "admit": "_holds",
    "settle": "_done",
    "release": "_done",
    "window": "_window",
    "budget": "_window",
}
"""The shared Lua (``lua/_*.lua``: functions) each script's text starts with."""

_OWN_PARAMS = ("prefix", "timeout")
_LEDGER_PARAMS = ("secret",)  # the ledger's fingerprint secret: never reaches redis-py
# what redis-py takes from a URL's query that the store can live with (not its own
# socket timeouts or retries: ?timeout= sets both, and a retried write may apply twice)
_REDIS_PARAMS = (
    "db",
    "username",
    "password",
    "client_name",
    "protocol",
    "health_check_interval",
    "max_connections",
    "socket_keepalive",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "ssl_min_version",
    "ssl_ciphers",
)
_INSTALL = "RedisStore needs redis-py: pip install 'creditguard[redis]'"
_CLUSTER = "redis+cluster"


@functools.cache
def _script_text(name: str) -> str:
    """The Lua source of script ``name``, read from the package data, after
    the constants it shares with this module and the shared functions it
    uses (its prelude)."""
    lua = files("creditguard.stores") / "lua"
    text = (lua / f"{name}.lua").read_text(encoding="utf-8")
    prelude = _PRELUDES.get(name)
    if prelude is not None:
        text = (lua / f"{prelude}.lua").read_text(encoding="utf-8") + "\n" + text
    constants = (
        f"local LATE_FOR, DONE_FOR, ORPHAN_MS = {_LATE_FOR!r}, {_DONE_FOR!r}, "
        f"'{math.ceil(_ORPHAN_KEEP * 1000)}'\n"
    )
    return constants + text


@functools.cache
def _script_sha(name: str) -> str:
    return hashlib.sha1(_script_text(name).encode()).hexdigest()


class _Call(Generic[T]):
    """One store operation as data: a script, its keys and arguments, and how
    to read its reply. Both shells carry it out the same way."""

    __slots__ = ("args", "keys", "op", "parse", "script")

    def __init__(
        self,
        op: str,
        script: str,
        keys: tuple[str, ...],
        args: Sequence[str | int],
        parse: Callable[[Any], T],
    ) -> None:
        self.op = op
        self.script = script
        self.keys = keys
        self.args = args
        self.parse = parse


def _nothing(reply: object) -> None:
    return None


class RedisStore:
    """A :class:`~creditguard.stores.Store` in Redis or a Redis Cluster.

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL as redis-py
    takes it, or ``redis+cluster://host:port,host2:port2/`` for a cluster
    (redis-py's ``RedisCluster``; one credential's keys share a slot);
    :meth:`from_url` also reads ``prefix`` and ``timeout`` from its query.
    Every key starts with ``prefix``. Every call waits at most ``timeout``
    seconds to connect and to read, and is never retried; any failure raises
    :class:`~creditguard.stores.StoreError`. Sync methods use redis-py's sync
    client; their ``a``-prefixed twins (``aread``, ``aadmit``, ...) use
    ``redis.asyncio`` and never block an event loop.

    ``client`` uses an existing sync client instead (its own timeouts and
    retry policy apply: build it with ``socket_timeout`` and
    ``retry=Retry(NoBackoff(), 0)``), and ``async_client`` an existing
    ``redis.asyncio`` one (without it, async calls run the sync client in a
    worker thread); :meth:`close` leaves them open.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "cg",
        timeout: float = 0.25,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ImportError(_INSTALL) from exc
        _check_params(url)
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
        self._url = url
        self._cluster = urlsplit(url).scheme == _CLUSTER
        self._nodes: list[tuple[str, int]] = []
        self._auth: dict[str, str] = {}
        self._owned = client is None
        self._aowned = async_client is None and client is None
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._aclient = async_client
        if client is None:
            if self._cluster:
                self._nodes, self._auth = _cluster_nodes(url, self._where)
            else:
                try:
                    client = redis.Redis.from_url(url, **self._options(sync=True))
                except (ValueError, TypeError) as exc:
                    raise ConfigError(
                        "store",
                        self._where,
                        f"a redis URL redis-py accepts ({self._redacted(exc)})",
                    ) from None
        else:
            self._where = _describe_client(client)
            _check_client(client)
        self._client: Any = client  # (a cluster client is built at its first use)
        # the store's own connections (see _Line), on the clients it built
        self._lines: _Lines[_Line] | None = None
        if self._owned and not self._cluster:
            pool = client.connection_pool
            self._lines = _Lines.of(lambda: _Line(pool.make_connection()))
        self._alined = self._aowned and not self._cluster
        self._alines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lines[_ALine]] = (
            weakref.WeakKeyDictionary()
        )
        # the snapshots parsed last, by key: an unchanged one is not sent again
        self._snapshots: dict[str, tuple[str, Balance]] = {}
        self._keysets: dict[str, tuple[str, ...]] = {}
        self._donesets: dict[str, tuple[tuple[str, ...], int]] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store from a URL: ``?prefix=`` and ``?timeout=`` configure the
        store, ``?secret=`` (the ledger's fingerprint secret) is dropped, any
        other query parameter goes to redis-py."""
        _check_params(url)
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

    # -- clients ----------------------------------------------------------------

    def _options(self, *, sync: bool) -> dict[str, Any]:
        from redis.backoff import NoBackoff

        if sync:
            from redis.retry import Retry
        else:
            from redis.asyncio.retry import Retry  # type: ignore[assignment]
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if self._cluster:
            options.update(self._auth)
        return options

    def _sync(self) -> Any:
        if self._closed:
            raise StoreError(f"{self._where}: the store is closed")
        client = self._client
        if client is None:  # a cluster: built at its first use (it connects to learn the slots)
            from redis.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(host, port) for host, port in self._nodes]  # type: ignore[no-untyped-call]
            client = self._client = RedisCluster(startup_nodes=nodes, **self._options(sync=True))
        return client

    def _async(self) -> Any:
        if self._closed:
            raise StoreError(f"{self._where}: the store is closed")
        if self._aclient is not None:
            return self._aclient
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            if self._cluster:
                from redis.asyncio.cluster import ClusterNode, RedisCluster

                nodes = [ClusterNode(host, port) for host, port in self._nodes]
                client = RedisCluster(startup_nodes=nodes, **self._options(sync=False))
            else:
                import redis.asyncio

                client = redis.asyncio.Redis.from_url(self._url, **self._options(sync=False))
                apool: Any = client.connection_pool
                lines = _Lines.of(lambda: _ALine(apool.make_connection()))
                if lines is not None:
                    self._alines[loop] = lines
            self._aclients[loop] = client
        return client

    # -- keys -----------------------------------------------------------------

    def _keys(self, key: str) -> tuple[str, ...]:
        """snap, holds, late: the keys of the hold scripts."""
        keys = self._keysets.get(key)
        if keys is None:
            base = self._base(key)
            keys = (f"{base}:snap", f"{base}:holds", f"{base}:late")
            if len(self._keysets) >= 10_000:
                self._keysets.clear()
            self._keysets[key] = keys
        return keys

    def _base(self, key: str) -> str:
        if not isinstance(key, str) or not key or "{" in key or "}" in key:
            raise ValueError(f"a store key is a non-empty fingerprint without braces, got {key!r}")
        return f"{self.prefix}:{{{key}}}"

    # -- the two shells -----------------------------------------------------------

    def _run(self, call: _Call[T]) -> T:
        """Carry out ``call`` with the sync client: on one of the store's own
        lines (see :class:`_Line`) unless all are busy, else through the client."""
        lines = self._lines
        line = None if lines is None else lines.take()
        if line is not None:
            try:
                reply = self._on_line(line, call)
            finally:
                lines.give(line)  # type: ignore[union-attr]
            return self._parse(call, reply)
        try:
            client = self._sync()
            n = len(call.keys)
            try:
                reply = client.evalsha(_script_sha(call.script), n, *call.keys, *call.args)
            except self._noscript:
                reply = client.eval(_script_text(call.script), n, *call.keys, *call.args)
        except self._errors as exc:
            raise self._error(call.op, exc) from exc
        except StoreError:
            raise
        except Exception as exc:  # a client library fault: still a store failure
            raise self._error(call.op, exc) from exc
        return self._parse(call, reply)

    def _on_line(self, line: _Line, call: _Call[Any]) -> Any:
        if self._closed:
            raise StoreError(f"{self._where}: the store is closed")
        conn = line.conn
        try:
            try:
                return line.call(_pack(call, False))
            except self._noscript:
                return line.call(_pack(call, True))
        except OSError as exc:  # (a timeout too) sent or read in part: never used again
            conn.disconnect()
            raise self._error(call.op, exc) from exc
        except self._errors as exc:  # (an error reply leaves the connection as it was)
            raise self._error(call.op, exc) from exc
        except Exception as exc:  # a client library fault, garbage: still a store failure
            conn.disconnect()
            raise self._error(call.op, exc) from exc
        except BaseException:  # interrupted mid-reply: the rest must never be read as ours
            conn.disconnect()
            raise

    async def _arun(self, call: _Call[T]) -> T:
        """Carry out ``call`` with ``redis.asyncio`` (never blocks the loop):
        on this loop's own line when it is free, else through the client."""
        if self._aclient is None and not self._aowned:  # only a sync client was given
            return await asyncio.to_thread(self._run, call)
        try:
            client = self._async()
            lines = self._alines.get(asyncio.get_running_loop()) if self._alined else None
            line = None if lines is None else lines.take()
            if line is not None:
                try:
                    reply = await self._on_aline(line, call)
                finally:
                    lines.give(line)  # type: ignore[union-attr]
                return self._parse(call, reply)
            n = len(call.keys)
            try:
                reply = await client.evalsha(_script_sha(call.script), n, *call.keys, *call.args)
            except self._noscript:
                reply = await client.eval(_script_text(call.script), n, *call.keys, *call.args)
        except self._errors as exc:
            raise self._error(call.op, exc) from exc
        except StoreError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._error(call.op, exc) from exc
        return self._parse(call, reply)

    async def _on_aline(self, line: _ALine, call: _Call[Any]) -> Any:
        conn = line.conn
        try:
            try:
                return await line.call(_pack(call, False), self.timeout)
            except self._noscript:
                return await line.call(_pack(call, True), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:  # (sent or read in part)
            await _drop(conn)
            raise self._error(call.op, exc) from exc
        except self._errors as exc:  # (an error reply leaves the connection as it was)
            raise self._error(call.op, exc) from exc
        except Exception as exc:  # a client library fault, garbage: still a store failure
            await _drop(conn)
            raise self._error(call.op, exc) from exc
        except BaseException:  # cancelled mid-reply: the rest must never be read as ours
            await _drop(conn)
            raise

    @functools.cached_property
    def _noscript(self) -> type[BaseException]:
        from redis.exceptions import NoScriptError

        return NoScriptError

    def _parse(self, call: _Call[T], reply: Any) -> T:
        try:
            return call.parse(reply)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise StoreError(
                f"{self._where}: {call.op}: unexpected data in the store ({type(exc).__name__})"
            ) from None

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

    # -- the operations, built once -------------------------------------------------

    def _c_read(self, key: str, now: float) -> _Call[SharedState]:
        def parse(reply: Any) -> SharedState:
            held, flat = reply
            return _state(flat, held)

        return _Call("read", "read", self._keys(key), [_time(now)], parse)

    def _c_admit(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
        fresh_after: float | None,
    ) -> _Call[tuple[int, SharedState]]:
        if type(amount) is not float or not 0.0 <= amount < math.inf:
            amount = check_cost(amount)
        if floor is not None and floor == -math.inf:
            floor = None
        known = self._snapshots.get(key)
        args: list[str | int] = [
            _hold_id(hold_id),
            _micro(amount),
            "" if floor is None else _micro(floor),
            _time(now),
            _time(expires_at),
            "" if fresh_after is None else _time(fresh_after),
            known[0] if known is not None else "",
        ]

        def parse(reply: Any) -> tuple[int, SharedState]:
            flat: Any = None
            if isinstance(reply, list):
                reply, flat = reply
            head = _text(reply).split(" ")
            status = int(head[0])
            if status not in (0, 1, 2, 3) or len(head) != 5:
                raise ValueError("status")
            held, debits, exhausted, stamp = head[1:]
            if flat:  # a snapshot this process has not parsed yet
                state = _state(flat, held)
                if state.balance is not None:
                    snapshots = self._snapshots
                    if len(snapshots) >= 10_000:
                        snapshots.clear()
                    snapshots[key] = (stamp, state.balance)
                return status, state
            if not stamp:
                return status, SharedState(None, 0.0, int(debits) / _MICRO, False, 0.0)
            if known is None or known[0] != stamp:
                raise ValueError("a snapshot left out that this process never parsed")
            return status, SharedState(
                known[1],
                float(stamp),
                int(debits) / _MICRO,
                exhausted == "1",
                int(held) / _MICRO,
            )

        return _Call("admit", "admit", self._keys(key), args, parse)

    def _c_put(
        self, key: str, balance: Balance, fetched_at: float, base_debits: float, keep_for: float
    ) -> _Call[None]:
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
            "" if balance.resets_at is None else _time(balance.resets_at),
        ]
        return _Call("put", "put", (f"{self._base(key)}:snap",), args, _nothing)

    def _c_budget(
        self,
        key: str,
        spend: Spend,
        limit: float,
        unit: str,
        source: str,
        now: float,
        keep_for: float,
        known: float | None,
    ) -> _Call[float]:
        args: list[str | int] = [
            _micro(check_cost(limit)),
            unit,
            source,
            _time(now),
            _ms(keep_for),
            spend.low,
            spend.bucket,
            spend.bucket,
            "" if spend.keep is None else _ms(spend.keep),
            "" if known is None else _micro(check_cost(known)),
        ]
        keys = (f"{self._base(key)}:snap", self._spend_key(key, spend))
        return _Call("budget", "budget", keys, args, lambda reply: int(reply) / _MICRO)

    def _spend_key(self, key: str, spend: Spend) -> str:
        if not spend.name or "{" in spend.name or "}" in spend.name:
            raise ValueError(f"a spend name is a non-empty string without braces: {spend.name!r}")
        return f"{self._base(key)}:spend:{spend.name}"

    def _c_count(self, key: str, spend: Spend, cost: float, op_id: str) -> _Call[bool]:
        keys = (self._spend_key(key, spend), f"{self._spend_key(key, spend)}:done")
        args: list[str | int] = [
            _hold_id(op_id),
            _micro(check_cost(cost)),
            spend.bucket,
            "" if spend.keep is None else _ms(spend.keep),
            _time(time.time()),
            repr(_DONE_FOR),
        ]
        return _Call("count", "count", keys, args, _flag)

    def _c_window(self, key: str, spend: Spend, known: float | None) -> _Call[float]:
        keys = (self._spend_key(key, spend),)
        args: list[str | int] = [spend.low, spend.bucket]
        if known is not None:
            keep = "" if spend.keep is None else _ms(spend.keep)
            args += [_micro(check_cost(known)), spend.bucket, keep]
        return _Call("window", "window", keys, args, lambda reply: int(reply) / _MICRO)

    def _c_set_remaining(
        self, key: str, remaining: float, fetched_at: float, keep_for: float
    ) -> _Call[None]:
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
        return _Call("set_remaining", "set_remaining", (f"{self._base(key)}:snap",), args, _nothing)

    def _c_settle(
        self,
        key: str,
        hold_id: str,
        cost: float,
        now: float | None,
        spend: Spend | None,
        counts: Sequence[tuple[str, Spend]] = (),
    ) -> _Call[int]:
        if type(cost) is not float or not 0.0 <= cost < math.inf:
            cost = check_cost(cost)
        when = _time(time.time() if now is None else now)
        keys, window = self._done_keys(key, float(when))
        args: list[str | int] = [_hold_id(hold_id), _micro(cost), when, window]
        if spend is not None or counts:
            spends = [] if spend is None else [(key, spend)]
            spends += counts
            for other, budget in spends:
                if not self.folds(key, other):
                    raise ValueError("a spend counted with a settle is in another slot")
                keys = (*keys, self._spend_key(other, budget))
                args += [budget.bucket, "" if budget.keep is None else _ms(budget.keep)]
        return _Call("settle", "settle", keys, args, _status)

    def folds(self, key: str, other: str) -> bool:
        """True when one script may count spend under ``other`` while it
        settles under ``key`` (``settle(counts=...)``): always on one Redis;
        on a cluster, only under the same key (one slot)."""
        return not self._cluster or other == key

    def _c_release(self, key: str, hold_id: str) -> _Call[bool]:
        when = _time(time.time())
        keys, window = self._done_keys(key, float(when))
        args: list[str | int] = [_hold_id(hold_id), when, window]
        return _Call("release", "release", keys, args, _flag)

    def _done_keys(self, key: str, now: float) -> tuple[tuple[str, ...], int]:
        """The keys of settle and release (the hold scripts' and the sets of
        settled ids of this window and the one before), and the window."""
        window = int(now // _DONE_FOR)
        cached = self._donesets.get(key)
        if cached is None or cached[1] != window:
            base = self._base(key)
            keys = (*self._keys(key), f"{base}:done:{window}", f"{base}:done:{window - 1}")
            if len(self._donesets) >= 10_000:
                self._donesets.clear()
            cached = self._donesets[key] = (keys, window)
        return cached

    def _c_exhaust(self, key: str) -> _Call[None]:
        keys = (f"{self._base(key)}:snap",)
        return _Call("exhaust", "exhaust", keys, [_time(time.time()), _ms(_ORPHAN_KEEP)], _nothing)

    def _c_lock(self, key: str, token: str, ttl: float, script: str = "lock") -> _Call[bool]:
        keys = (f"{self._base(key)}:lock",)
        return _Call(script, script, keys, [_hold_id(token), _ms(ttl)], _flag)

    def _c_unlock(self, key: str, token: str) -> _Call[None]:
        keys = (f"{self._base(key)}:lock",)
        return _Call("unlock", "unlock", keys, [_hold_id(token)], _nothing)

    def _c_heartbeat(self, worker: str, now: float, alive_for: float) -> _Call[int]:
        keys = (f"{self.prefix}:workers",)
        args: list[str | int] = [_hold_id(worker), _time(now), repr(float(alive_for))]
        return _Call("heartbeat", "heartbeat", keys, args, lambda reply: max(1, int(reply)))

    # -- the Store protocol: sync ---------------------------------------------------

    def read(self, key: str, now: float) -> SharedState:
        return self._run(self._c_read(key, now))

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
        return self._run(self._c_admit(key, hold_id, amount, floor, now, expires_at, fresh_after))

    def reserve(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
    ) -> bool:
        call = self._c_admit(key, hold_id, amount, floor, now, expires_at, None)
        return self._run(call)[0] in (1, 2)

    def put(
        self, key: str, balance: Balance, fetched_at: float, base_debits: float, keep_for: float
    ) -> None:
        self._run(self._c_put(key, balance, fetched_at, base_debits, keep_for))

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
        return self._run(self._c_budget(key, spend, limit, unit, source, now, keep_for, known))

    def set_remaining(self, key: str, remaining: float, fetched_at: float, keep_for: float) -> None:
        self._run(self._c_set_remaining(key, remaining, fetched_at, keep_for))

    def count(self, key: str, spend: Spend, cost: float, op_id: str) -> bool:
        """Count ``cost`` in the budget window ``spend`` of ``key``, once per ``op_id``."""
        return self._run(self._c_count(key, spend, cost, op_id))

    def window(self, key: str, spend: Spend, known: float | None = None) -> float:
        """What the budget window ``spend`` of ``key`` has spent (raised to
        ``known`` first when the store lost part of it)."""
        return self._run(self._c_window(key, spend, known))

    async def acount(self, key: str, spend: Spend, cost: float, op_id: str) -> bool:
        return await self._arun(self._c_count(key, spend, cost, op_id))

    async def awindow(self, key: str, spend: Spend, known: float | None = None) -> float:
        return await self._arun(self._c_window(key, spend, known))

    def settle(
        self,
        key: str,
        hold_id: str,
        cost: float,
        now: float | None = None,
        spend: Spend | None = None,
        counts: Sequence[tuple[str, Spend]] = (),
    ) -> int:
        """:meth:`Store.settle`; ``counts``: also count the cost in these
        budget windows (key, window), where :meth:`folds` allows it."""
        return self._run(self._c_settle(key, hold_id, cost, now, spend, counts))

    def release(self, key: str, hold_id: str) -> bool:
        return self._run(self._c_release(key, hold_id))

    def debit(self, key: str, cost: float, op_id: str | None = None) -> None:
        if check_cost(cost):
            self._run(self._c_settle(key, op_id or _new_id(), cost, None, None))

    def exhaust(self, key: str) -> None:
        self._run(self._c_exhaust(key))

    def try_lock(self, key: str, token: str, ttl: float) -> bool:
        return self._run(self._c_lock(key, token, ttl))

    def renew(self, key: str, token: str, ttl: float) -> bool:
        return self._run(self._c_lock(key, token, ttl, "renew"))

    def unlock(self, key: str, token: str) -> None:
        self._run(self._c_unlock(key, token))

    def heartbeat(self, worker: str, now: float, alive_for: float) -> int:
        return self._run(self._c_heartbeat(worker, now, alive_for))

    # -- the Store protocol: async ----------------------------------------------------

    async def aread(self, key: str, now: float) -> SharedState:
        return await self._arun(self._c_read(key, now))

    async def aadmit(
        self,
        key: str,
        hold_id: str,
        amount: float,
        floor: float | None,
        now: float,
        expires_at: float,
        fresh_after: float | None = None,
    ) -> tuple[int, SharedState]:
        call = self._c_admit(key, hold_id, amount, floor, now, expires_at, fresh_after)
        return await self._arun(call)

    async def aput(
        self, key: str, balance: Balance, fetched_at: float, base_debits: float, keep_for: float
    ) -> None:
        await self._arun(self._c_put(key, balance, fetched_at, base_debits, keep_for))

    async def abudget(
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
        call = self._c_budget(key, spend, limit, unit, source, now, keep_for, known)
        return await self._arun(call)

    async def aset_remaining(
        self, key: str, remaining: float, fetched_at: float, keep_for: float
    ) -> None:
        await self._arun(self._c_set_remaining(key, remaining, fetched_at, keep_for))

    async def asettle(
        self,
        key: str,
        hold_id: str,
        cost: float,
        now: float | None = None,
        spend: Spend | None = None,
        counts: Sequence[tuple[str, Spend]] = (),
    ) -> int:
        return await self._arun(self._c_settle(key, hold_id, cost, now, spend, counts))

    async def arelease(self, key: str, hold_id: str) -> bool:
        return await self._arun(self._c_release(key, hold_id))

    async def aexhaust(self, key: str) -> None:
        await self._arun(self._c_exhaust(key))

    async def atry_lock(self, key: str, token: str, ttl: float) -> bool:
        return await self._arun(self._c_lock(key, token, ttl))

    async def arenew(self, key: str, token: str, ttl: float) -> bool:
        return await self._arun(self._c_lock(key, token, ttl, "renew"))

    async def aunlock(self, key: str, token: str) -> None:
        await self._arun(self._c_unlock(key, token))

    async def aheartbeat(self, worker: str, now: float, alive_for: float) -> int:
        return await self._arun(self._c_heartbeat(worker, now, alive_for))

    # -- closing ------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections (clients passed in stay open). Async clients
        of a loop that is not running are closed on it; of the running loop,
        in a task (prefer :meth:`aclose` there)."""
        if self._closed:
            return
        self._closed = True
        if self._lines is not None:
            for line in self._lines.close():
                with contextlib.suppress(Exception):  # a broken connection: nothing to do
                    line.conn.disconnect()
        if self._owned and self._client is not None:
            with contextlib.suppress(*self._errors):
                self._client.close()
        clients, self._aclients = list(self._aclients.items()), weakref.WeakKeyDictionary()
        lines, self._alines = self._alines, weakref.WeakKeyDictionary()
        running = _running_loop()
        for loop, client in clients:
            with contextlib.suppress(Exception):
                closing = _aclose(client, lines.get(loop))
                if loop is running:
                    task = loop.create_task(closing)
                    _BACKGROUND.add(task)
                    task.add_done_callback(_BACKGROUND.discard)
                elif not loop.is_closed() and not loop.is_running():
                    loop.run_until_complete(closing)
                else:
                    closing.close()

    async def aclose(self) -> None:
        """Close the connections, awaiting this loop's async client."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        client = self._aclients.pop(loop, None)
        if client is not None:
            await _aclose(client, self._alines.pop(loop, None))
        self.close()


async def _aclose(client: Any, lines: _Lines[_ALine] | None) -> None:
    with contextlib.suppress(Exception):
        await client.aclose()
    for line in () if lines is None else lines.close():
        with contextlib.suppress(Exception):
            await line.conn.disconnect()


L = TypeVar("L", "_Line", "_ALine")

_LINES = 4
"""Lines per client at most: callers beyond (threads, tasks) go through the
client's pool."""


class _Lines(Generic[L]):
    """The lines of one client: a free list (``list.pop`` and ``append`` are
    atomic), filled as callers need them."""

    __slots__ = ("closed", "free", "lines", "make", "pid")

    def __init__(self, make: Callable[[], L], first: L) -> None:
        self.make: Callable[[], L] = make
        self.free: list[L] = [first]
        self.lines: list[L] = [first]
        self.pid = os.getpid()
        self.closed = False

    @classmethod
    def of(cls, make: Callable[[], L]) -> _Lines[L] | None:
        """Lines made by ``make``, or None when this redis-py's connections
        are not the ones the lines know."""
        first = make()
        return cls(make, first) if first.fits(first.conn) else None

    def take(self) -> L | None:
        """A free line (a new one if there are fewer than :data:`_LINES`), or None."""
        if self.closed:
            return None
        if self.pid != os.getpid():  # a forked child: never the parent's sockets
            self.free, self.lines, self.pid = [], [], os.getpid()
        try:
            return self.free.pop()
        except IndexError:  # (the last free one went to another thread meanwhile)
            pass
        if len(self.lines) >= _LINES:
            return None
        line = self.make()
        self.lines.append(line)
        return line

    def give(self, line: L) -> None:
        self.free.append(line)

    def close(self) -> list[L]:
        """Every line made (to disconnect); none is handed out after."""
        self.closed = True
        lines, self.lines, self.free = self.lines, [], []
        return lines


class _Line:
    """A connection of the store's own (sync), used by one caller at a time.

    A guarded call is two short scripts; through a client, each also pays
    for its per-command layers (taking a connection from the pool and giving
    it back, checking it, retry and observability hooks, reply callbacks):
    about as much time again as the round trip itself. On a line, the
    command is packed here, written and read on one connection, with the
    same timeouts and the same errors (see :class:`_Lines`: callers beyond
    the lines go through the client's pool).

    Before each use, the idle connection is polled: readable means the
    server closed it (a restart, an idle timeout): it is reopened, as the
    pool would."""

    __slots__ = ("conn", "poll", "sock")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sock: Any = None
        self.poll: Callable[[], bool] = _never

    @staticmethod
    def fits(conn: Any) -> bool:
        """True when this redis-py's connections are the ones this class knows."""
        return all(
            hasattr(conn, name) for name in ("_sock", "_parser", "connect", "disconnect")
        ) and hasattr(conn._parser, "parse_error")

    def call(self, packed: bytes) -> Any:
        """Send ``packed``, read its reply (an error reply raised as redis-py
        would). The socket is written and read here: the connection's parser
        is used for its handshake only."""
        conn = self.conn
        sock = conn._sock
        if sock is not None and sock is self.sock and self.poll():
            conn.disconnect()  # closed by the server while idle (or a stray reply)
            sock = None
        if sock is None:
            conn.connect()
            sock = conn._sock
        if sock is not self.sock:
            self.sock = sock
            self.poll = _poller(sock, conn)
        sock.sendall(packed)
        reply = _read(sock)
        if type(reply) is _ErrorReply:
            raise conn._parser.parse_error(reply.text)
        return reply


def _read(sock: socket.socket) -> Any:
    """One reply from ``sock`` (its timeout applies to each read)."""
    buf = sock.recv(65536)
    while True:
        if not buf:
            raise ConnectionResetError("connection closed by the server")
        try:
            reply, end = _resp(buf, 0)
        except _Incomplete:
            more = sock.recv(65536)
            if not more:
                raise ConnectionResetError("connection closed by the server") from None
            buf += more
            continue
        if end != len(buf):
            raise ValueError("more than one reply")
        return reply


class _Incomplete(Exception):
    """The reply goes on past what was read so far."""


class _ErrorReply:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _resp(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply (Redis's wire protocol, RESP2 or 3) at ``pos`` in ``buf``,
    and where it ends. Script replies are bulk strings, integers, arrays,
    nulls, errors; a push message before the reply (RESP3) is skipped."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : nl])
        if size < 0:
            return None, nl + 2
        end = nl + 2 + size
        if len(buf) < end + 2:
            raise _Incomplete
        return buf[nl + 2 : end], end + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1 : nl]), nl + 2
    if kind == 42 or kind == 62:  # * array, > push
        count = int(buf[pos + 1 : nl])
        end = nl + 2
        items = []
        for _ in range(max(0, count)):
            item, end = _resp(buf, end)
            items.append(item)
        if kind == 62:
            return _resp(buf, end)
        return (items if count >= 0 else None), end
    if kind == 95:  # _ null
        return None, nl + 2
    if kind == 45:  # - error
        return _ErrorReply(buf[pos + 1 : nl].decode(errors="replace")), nl + 2
    if kind == 43:  # + simple string
        return buf[pos + 1 : nl], nl + 2
    raise ValueError(f"unexpected reply type {chr(kind)!r}")


def _never() -> bool:
    return False


def _poller(sock: Any, conn: Any) -> Callable[[], bool]:
    """A check that ``sock`` has something to read (or was closed), without waiting."""
    if type(sock) is socket.socket and hasattr(select, "poll"):
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        return lambda: bool(poll.poll(0))
    return lambda: bool(conn.can_read(timeout=0))  # TLS: only the client knows


class _ALine:
    """:class:`_Line` for ``redis.asyncio`` (lines of each event loop's client)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def fits(conn: Any) -> bool:
        return all(
            hasattr(conn, name)
            for name in ("_reader", "_writer", "_parser", "is_connected", "connect", "disconnect")
        ) and hasattr(conn._parser, "parse_error")

    async def call(self, packed: bytes, timeout: float) -> Any:
        """:meth:`_Line.call`, awaited: the reply within ``timeout`` seconds."""
        conn = self.conn
        if conn.is_connected:
            writer, reader = conn._writer, conn._reader
            if writer.is_closing() or reader.at_eof() or len(reader._buffer):
                await conn.disconnect(nowait=True)  # closed by the server while idle
        if not conn.is_connected:
            await conn.connect()
        reader = conn._reader
        conn._writer.write(packed)  # (sent at once, or buffered by the transport)
        buf = b""
        try:
            async with _timeout()(timeout):
                while True:
                    more = await reader.read(65536)
                    if not more:
                        raise ConnectionResetError("connection closed by the server")
                    buf += more
                    try:
                        reply, end = _resp(buf, 0)
                    except _Incomplete:
                        continue
                    break
        except (TimeoutError, asyncio.TimeoutError) as timed_out:
            # The reply may have come in time, while the loop was busy elsewhere
            # (a long garbage collection): the timer and the data then wake this
            # task together, and the timer wins. Then the reply stands.
            buf += bytes(reader._buffer)
            try:
                reply, end = _resp(buf, 0)
            except (_Incomplete, ValueError):
                raise timed_out from None
            reader._buffer.clear()
        if end != len(buf):
            raise ValueError("more than one reply")
        if type(reply) is _ErrorReply:
            raise conn._parser.parse_error(reply.text)
        return reply


async def _drop(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)


@functools.cache
def _timeout() -> Callable[[float], Any]:
    """``asyncio.timeout`` (as redis-py takes it: ``async_timeout`` before 3.11.3)."""
    if sys.version_info >= (3, 11) and sys.version_info >= (3, 11, 3):
        return asyncio.timeout
    from async_timeout import timeout  # type: ignore[import-not-found,unused-ignore]

    return timeout  # type: ignore[no-any-return,unused-ignore]


def _pack(call: _Call[Any], text: bool) -> bytes:
    """``EVALSHA sha numkeys keys... args...`` (``EVAL`` with the script's
    text when ``text``) in Redis's wire protocol."""
    keys = call.keys
    head = _HEADS.get((call.script, keys)) if not text else None
    if head is None:
        if text:
            parts = [b"EVAL", _script_text(call.script).encode()]
        else:
            parts = [b"EVALSHA", _script_sha(call.script).encode()]
        parts += [b"%d" % len(keys), *[k.encode() for k in keys]]
        head = b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in parts])
        if not text:
            if len(_HEADS) >= 10_000:
                _HEADS.clear()
            _HEADS[(call.script, tuple(keys))] = head
    args = [a.encode() if isinstance(a, str) else b"%d" % a for a in call.args]
    return b"".join(
        [
            b"*%d\r\n" % (3 + len(keys) + len(args)),
            head,
            *[b"$%d\r\n%b\r\n" % (len(a), a) for a in args],
        ]
    )


_HEADS: dict[tuple[str, Sequence[str]], bytes] = {}
"""The packed start of a command (script, keys), by script and keys."""


_BACKGROUND: set[asyncio.Task[Any]] = set()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex


def _state(flat: Any, held: Any) -> SharedState:
    """A credential's state from ``HGETALL snap`` and the sum of its holds."""
    fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
    debits = int(fields.get("debits", 0)) / _MICRO
    exhausted = fields.get("exhausted") == "1"
    balance = None
    fetched_at = 0.0
    if "unlimited" in fields:
        fetched_at = float(fields["fetched_at"])
        balance = Balance(
            remaining=(
                math.inf if fields["unlimited"] == "1" else int(fields["remaining"]) / _MICRO
            ),
            total=_amount(fields.get("total")),
            used=_amount(fields.get("used")),
            unit=fields.get("unit", ""),
            fetched_at=float(fields.get("balance_at", fetched_at)),
            source=fields.get("source", ""),
            resets_at=float(fields["resets_at"]) if "resets_at" in fields else None,
        )
    return SharedState(balance, fetched_at, debits, exhausted, int(held) / _MICRO)


def _status(reply: Any) -> int:
    status = int(reply)
    if status not in (0, 1, 2):
        raise ValueError("status")
    return status


def _flag(reply: Any) -> bool:
    status = int(reply)
    if status not in (0, 1):
        raise ValueError("status")
    return bool(status)


# -- conversions -----------------------------------------------------------------


def _micro(value: float) -> int:
    """``value`` in integer micro-units."""
    if type(value) is float and value - value == 0.0:  # (finite: the usual case)
        return round(value * _MICRO)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"an amount must be a finite number, got {value!r}")
    return round(value * _MICRO)


def _amount(text: str | None) -> float | None:
    return None if text is None else int(text) / _MICRO


def _time(value: float) -> str:
    """Epoch seconds as Lua and ZADD read them."""
    if type(value) is float and value - value == 0.0:  # (finite: the usual case)
        return repr(value)
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
    if type(value) is not str or not value or value in _FIELDS:
        raise ValueError(
            f"a hold id or token is a non-empty string other than {' '.join(_FIELDS)}, "
            f"got {value!r}"
        )
    return value


_FIELDS = ("=", "<", "^", "~")
"""The fields of a credential's holds hash that are not holds (see ``_holds.lua``)."""


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
    clean = urlunsplit(parts._replace(query=urlencode(theirs)))
    if parts.scheme == "unix" and not parts.netloc and url.startswith("unix://"):
        clean = "unix://" + clean[len("unix:") :]  # (urlunsplit drops the // redis-py needs)
    return clean, ours


def _check_params(url: str) -> None:
    """Refuse a query parameter neither the store nor redis-py takes (a typo
    like ``?prefx=`` failed later as redis-py's TypeError). Its name is shown
    only when it is a plain name that is no part of the password (an unencoded
    ``?`` in a password makes the rest of it read as a query)."""
    if not isinstance(url, str) or url.startswith(_CLUSTER):  # (checked with its nodes)
        return
    allowed = (*_OWN_PARAMS, *_LEDGER_PARAMS, *_REDIS_PARAMS)
    for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in allowed:
            where, secrets = _describe_url(url)
            shown = (
                "a parameter (its name not shown: it may be part of a password; "
                "write a '?' in a password as %3F)"
            )
            if name.isidentifier() and len(name) <= 40 and not any(name in s for s in secrets):
                close = difflib.get_close_matches(name, allowed, n=1)
                shown = repr(name) + (f" (did you mean {close[0]!r}?)" if close else "")
            raise ConfigError(
                "store",
                where,
                f"a URL whose query parameters are ones the store or redis-py takes; "
                f"{shown} is not one; allowed: {', '.join(allowed)}",
            )


def _describe_url(url: str) -> tuple[str, tuple[str, ...]]:
    """Where ``url`` points, without credentials; and the secrets it holds."""
    parts = urlsplit(url)
    # (a password holding an unencoded / or ? ends the netloc early: the
    # password meant is the one errors.redact reads, up to the host's @)
    password = url_password(url)
    secrets = {parts.password or "", password or ""}
    secrets.update(value for name, value in parse_qsl(parts.query) if name == "password")
    secrets.update([unquote(s) for s in secrets])
    secrets.discard("")
    if parts.scheme == "unix":
        where = f"unix://{parts.path}"
    elif parts.scheme == _CLUSTER:
        hosts = parts.netloc.rpartition("@")[2]
        where = f"{_CLUSTER}://{hosts}{parts.path}"
    else:
        try:
            port = f":{parts.port}" if parts.port is not None else ""
        except ValueError:
            port = ":?"
        where = f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    if password is not None and "@" not in parts.netloc:  # such a password, read as a path
        where = redact(url, *secrets)
    # longest first, so that a password containing another is masked whole
    return where, tuple(sorted(secrets, key=len, reverse=True))


def _cluster_nodes(url: str, where: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The startup nodes of a ``redis+cluster://`` URL, and its credentials."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                "store", where, "redis+cluster://host:port,host2:port2/ (one or more host:port)"
            )
        nodes.append((host, int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ConfigError("store", where, "a cluster has database 0 only: no /<db> in the URL")
    auth: dict[str, str] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            auth["username"] = unquote(user)
        if password:
            auth["password"] = unquote(password)
    for name, value in parse_qsl(parts.query):
        if name in ("username", "password"):
            auth[name] = value
        else:
            raise ConfigError(
                "store", where, f"redis+cluster:// takes prefix, timeout and secret (not {name!r})"
            )
    return nodes, auth


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
