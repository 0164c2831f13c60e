"""One guard, several providers: each call judged on the balance of the host it goes to.

An HTTP client shared across providers (LiteLLM's ``client_session``, a gateway
client of your own) sends calls to several hosts. :class:`ByHost` maps each host
to the source of that provider's balance, and optionally to a policy of its own::

    ByHost(
        {"api.deepseek.com": DeepSeekBalance(), "openrouter.ai": OpenRouterKey()},
        policies={"api.deepseek.com": Policy(unit="CNY", refuse_below=5)},
    )

How it plugs in: a guard transport asks the source for :meth:`ByHost.host_credential`
of each call (the host, and the call's key when that host's source judges per key);
that is the credential the ledger fingerprints, so balances, holds and local spend
are kept per host (and key). ``fetch``, ``record`` and :meth:`ByHost.policy_for`
read the host back from it.

``check()`` and the decorator do not know where a call goes. They name it with
``credential=by_host.credential("api.deepseek.com", key)``; a call that names no
host is judged on the ``"*"`` source when there is one, else its balance is a
:class:`~creditguard.CreditSourceError` saying so (and ``on_source_error`` applies).
A host with no entry and no ``"*"`` fares the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..balance import Balance
from ..errors import ConfigError, CreditSourceError
from ..policy import Policy
from ._base import CreditSource, aclose_all, as_source_error, close_all, logger

__all__ = ["ByHost"]

_MARK = "\x00host\x00"  # no key can hold a NUL (no header can): never a real key
_SEP = "\x00"
_ANY = "*"
_HOST = re.compile(r"[a-z0-9._\-\[\]:]+")


def _canon(host: str) -> str:
    """One spelling per host, as configured and as a request's URL gives it:
    lower case, no trailing dot, IDNA as ASCII (``xn--...``; httpx gives the
    Unicode form), an IPv6 address without brackets."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name.isascii():
        # left as it is when it cannot be encoded: refused by the config check, never matched
        with contextlib.suppress(UnicodeError):
            name = name.encode("idna").decode("ascii")
    return name


def _with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def routed(entry: str, credential: str | None) -> str:
    """The ledger's credential of a call to the host ``entry`` carrying
    ``credential`` (None: the host's one balance)."""
    return f"{_MARK}{entry}{_SEP}{credential or ''}"


def route_of(credential: str | None) -> tuple[str, str | None]:
    """(the host entry a ledger credential names, ``"*"`` when it names none;
    the call's own key, or None)."""
    if credential is None or not credential.startswith(_MARK):
        return _ANY, credential
    entry, _, key = credential[len(_MARK) :].partition(_SEP)
    return entry, key or None


def _split_port(name: str) -> tuple[str, int | None]:
    """``"host:port"`` / ``"[v6]:port"`` -> (host, port); a bare host -> (host, None)."""
    if name.startswith("["):
        inside, _, rest = name[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return inside, int(port) if port.isdigit() else None
    if name.count(":") == 1:
        host, _, port = name.partition(":")
        if port.isdigit():
            return host, int(port)
    return name, None


def _normal(host: object) -> str:
    if not isinstance(host, str):
        raise ConfigError("sources", host, "host names (strings) as keys, e.g. 'api.deepseek.com'")
    if host.strip() == _ANY:
        return _ANY
    bare, port = _split_port(host.strip().lower().rstrip("."))
    name = _canon(bare)
    if port is not None:
        name = _with_port(name, port)
    if not name or not _HOST.fullmatch(name) or "/" in name:
        raise ConfigError(
            "sources",
            host,
            "a host name ('api.deepseek.com'), a host and port ('127.0.0.1:8080') or '*', "
            "not a URL",
        )
    return name


class ByHost:
    """The balance of the host each call goes to; see the module docstring.

    ``sources`` maps a host name (``"openrouter.ai"``), a host and port
    (``"127.0.0.1:8080"``, tried first) or ``"*"`` (any other host, and calls
    that name none) to a credits source. ``policies`` maps some of those hosts
    to a :class:`~creditguard.Policy` of their own (thresholds, downgrade map,
    ``on_source_error``, ``store_error``, ``unit``); the others use the guard's. The guard's
    ``ttl``, ``max_stale`` and ``error_ttl`` apply to every host.
    """

    name = "by-host"
    per_credential = True  # the ledger's credential always carries the host

    def __init__(
        self,
        sources: Mapping[str, CreditSource],
        *,
        policies: Mapping[str, Policy] | None = None,
    ) -> None:
        if not isinstance(sources, Mapping) or not sources:
            raise ConfigError("sources", sources, "a mapping of host name to credits source")
        table: dict[str, CreditSource] = {}
        for host, source in sources.items():
            if not isinstance(source, CreditSource) or isinstance(source, ByHost):
                raise ConfigError(
                    "sources", source, "credits sources (name, per_credential, fetch, afetch)"
                )
            name = _normal(host)
            if name in table:
                raise ConfigError("sources", host, "each host once")
            table[name] = source
        if policies is not None and not isinstance(policies, Mapping):
            raise ConfigError("policies", policies, "a mapping of host name to creditguard.Policy")
        rules: dict[str, Policy] = {}
        for host, policy in (policies or {}).items():
            name = _normal(host)
            if name not in table:
                raise ConfigError(
                    "policies", host, f"hosts that have a source: {', '.join(sorted(table))}"
                )
            if not isinstance(policy, Policy):
                raise ConfigError("policies", policy, "a creditguard.Policy per host")
            rules[name] = policy
        self.sources: Mapping[str, CreditSource] = table
        self.policies: Mapping[str, Policy] = rules
        # each host's balance is its source's: hosts sharing one source object
        # (one FixedBudget for two providers) share the first one's ledger entry
        first: dict[int, str] = {}
        self._same = {name: first.setdefault(id(source), name) for name, source in table.items()}
        if any(callable(getattr(s, "record", None)) for s in table.values()):
            # only then: the ledger takes a slower settle path for sources that record
            self.record: Callable[[str | None, float], None] = self._record

    # -- the host in a credential ------------------------------------------------

    def _entry(self, host: str, port: int | None) -> str | None:
        host = _canon(host)
        if port is not None:
            with_port = _with_port(host, port)
            if with_port in self.sources:
                return with_port
        if host in self.sources:
            return host
        return None

    def host_credential(self, host: str, port: int | None, credential: str | None) -> str:
        """What the ledger keys a call to ``host`` (``port``) carrying ``credential``
        by: the host's entry, and the key when that host's source judges per key."""
        entry = self._entry(host, port)
        if entry is None:
            entry = _ANY if _ANY in self.sources else _canon(host)
        source = self.sources.get(entry)
        if source is not None and not source.per_credential:
            credential = None  # one balance for the host, whatever key a call carries
        return routed(entry, credential)

    def ledger_credential(self, credential: str | None) -> str | None:
        """What the ledger keys ``credential``'s balance by: every call judged on
        one balance gets one key (its host's, or the '*' route for a call that
        names none; the first host of a shared source object; the call's key
        only where that source judges per key). One no source judges is kept as it is."""
        entry, key = route_of(credential)
        source = self.sources.get(entry)
        if source is None:
            return credential
        return routed(self._same[entry], key if source.per_credential else None)

    def credential(self, host: str, key: str | None = None) -> str:
        """The credential naming ``host`` for ``guard.check(credential=...)``,
        ``guard.reserve`` and the decorator's ``credential_arg``."""
        if host.strip() == _ANY:
            return self.host_credential(_ANY, None, key)
        name, port = _split_port(host.strip().lower().rstrip("."))
        return self.host_credential(name, port, key)

    def _source(self, entry: str) -> tuple[CreditSource, str]:
        source = self.sources.get(entry)
        if source is None and entry == _ANY:
            raise CreditSourceError(
                "this call names no host, and ByHost judges each call on the host it goes "
                "to: name it with credential=by_host.credential(host, key), or add a '*' "
                "source",
                source=self.name,
            )
        if source is None:
            raise CreditSourceError(
                f"no source for host {entry[:100]!r} (hosts: {', '.join(sorted(self.sources))}; "
                "a '*' entry covers the others)",
                source=self.name,
            )
        return source, entry

    def policy_for(self, credential: str | None) -> Policy | None:
        """The policy of the host ``credential`` names, or None (the guard's)."""
        return self.policies.get(route_of(credential)[0])

    # -- the source protocol -----------------------------------------------------

    def fetch(self, credential: str | None) -> Balance:
        """The balance of the host ``credential`` names."""
        entry, key = route_of(credential)
        source, entry = self._source(entry)
        try:
            balance = source.fetch(key if source.per_credential else None)
        except Exception as exc:
            error = as_source_error(exc, source, key)
        else:
            logger.debug("%s: %s -> %s", self.name, entry, balance.source)
            return balance
        raise error from None

    async def afetch(self, credential: str | None) -> Balance:
        """The balance of the host ``credential`` names."""
        entry, key = route_of(credential)
        source, entry = self._source(entry)
        try:
            balance = await source.afetch(key if source.per_credential else None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = as_source_error(exc, source, key)
        else:
            logger.debug("%s: %s -> %s", self.name, entry, balance.source)
            return balance
        raise error from None

    def _record(self, credential: str | None, cost: float) -> None:
        """Local spend reaches the source of the call's host, if it keeps any."""
        entry, key = route_of(credential)
        try:
            source, _ = self._source(entry)
        except CreditSourceError:
            return  # a host with no source keeps no spend
        record: Any = getattr(source, "record", None)
        if callable(record):
            record(key if source.per_credential else None, cost)

    def close(self) -> None:
        """Closes every source that can be closed."""
        close_all(self.sources.values())

    async def aclose(self) -> None:
        """Closes every source that can be closed (``aclose`` where it has one)."""
        await aclose_all(self.sources.values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{host!r}: {source!r}" for host, source in self.sources.items())
        extra = f", policies={sorted(self.policies)}" if self.policies else ""
        return f"ByHost({{{inner}}}{extra})"
