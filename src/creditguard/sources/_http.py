"""The HTTP credits sources: one sans-I/O core, two thin shells.

The core says which requests one fetch makes and what their JSON means
(:meth:`HttpSource._plan`, a generator: it yields each request, is sent the
JSON object of the answer, and returns the Balance; the default plan is one
``GET`` of ``_path`` read by :meth:`HttpSource._parse`), reads each answer
(:func:`read_answer`: status, JSON) and turns every failure into a
:class:`~creditguard.CreditSourceError` (:meth:`HttpSource._translate`, the one
place errors are mapped). ``fetch`` and ``afetch`` only drive the plan, each
on its own kind of client.

Every fetch has a total deadline of ``timeout`` seconds, whatever the server
does (a body dripped one byte at a time, a DNS lookup that hangs included):
``afetch`` runs under an asyncio timeout; ``fetch`` runs in a worker thread
that the caller waits for until the deadline, then shuts the fetch's sockets
down (``_Watchdog``); the deadline is checked between body chunks too. Bodies
are read as a stream and refused past :data:`MAX_BODY` bytes.

A sync ``httpx.Client`` is created lazily, once, and reused (``close()``); it
keeps no idle connection (a reused connection could stall before the timer
knows its socket). An ``httpx.AsyncClient`` belongs to the event loop it first
ran on, so ``afetch`` opens one per call; the SSL context, the costly part, is
built once per source and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, ClassVar, NoReturn, TypeVar, cast

import httpx

from ..balance import Balance
from ..errors import ConfigError, CreditSourceError, env_name_shown, redact
from ._base import describe, logger

__all__ = [
    "MAX_BODY",
    "BadResponse",
    "HttpSource",
    "Plan",
    "get_decimal",
    "get_number",
    "get_object",
    "get_string",
    "loads",
    "read_answer",
]

#: The largest credits response body read (bytes); a larger one is a CreditSourceError.
MAX_BODY = 1 << 20

_USER_AGENT = "creditguard"
_MISSING: Any = object()
_S = TypeVar("_S", bound="HttpSource")
_T = TypeVar("_T")

#: What :meth:`HttpSource._plan` is: yields requests, is sent their JSON objects,
#: returns the balance.
Plan = Generator[httpx.Request, dict[str, Any], Balance]


class BadResponse(Exception):
    """The endpoint answered, but not with a usable balance (internal)."""

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


# -- reading JSON (pure) ------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise BadResponse(f"response JSON holds {name}, which is not a number")


def loads(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; anything else raises :class:`BadResponse`."""
    if not body.strip():
        raise BadResponse("empty response body")
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()):
            raise BadResponse("response JSON is truncated") from None
        raise BadResponse(f"response body is not JSON ({exc.msg})") from None
    except ValueError:  # bad UTF-8, an integer too long to read
        raise BadResponse("response body is not JSON") from None
    if not isinstance(doc, dict):
        raise BadResponse(f"response JSON is {_json_type(doc)}, expected an object")
    return doc


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"


def get_object(
    container: Mapping[str, Any], key: str, path: str, *, required: bool = False
) -> dict[str, Any] | None:
    """``container[key]`` as a JSON object; absent or null gives None unless required."""
    value = container.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise BadResponse(f"{path} is {'missing' if value is _MISSING else 'null'}")
        return None
    if not isinstance(value, dict):
        raise BadResponse(f"{path} is {_json_type(value)}, expected an object")
    return value


def get_number(
    container: Mapping[str, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
    non_negative: bool = False,
) -> float | None:
    """``container[key]`` as a finite JSON number; absent or null gives None unless required.

    Strings and booleans are not numbers. ``non_negative`` is for totals and
    usage; a remaining amount may be negative (overdrawn).
    """
    value = container.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise BadResponse(f"{path} is {'missing' if value is _MISSING else 'null'}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadResponse(f"{path} is {_json_type(value)}, expected a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadResponse(f"{path} is not a finite number")
    if non_negative and number < 0:
        raise BadResponse(f"{path} is negative")
    return number


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_MAX_DECIMAL = 64


def get_decimal(
    container: Mapping[str, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
    non_negative: bool = False,
    scale: float = 1.0,
) -> float | None:
    """``container[key]`` as a decimal string (``"12.50"``), times ``scale``;
    absent or null gives None unless required.

    For providers that document amounts as strings: a JSON number, a boolean,
    an exponent, ``"NaN"`` or ``"Infinity"`` is not the documented field.
    """
    value = container.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise BadResponse(f"{path} is {'missing' if value is _MISSING else 'null'}")
        return None
    if not isinstance(value, str):
        raise BadResponse(f"{path} is {_json_type(value)}, expected a decimal string")
    text = value.strip()
    if len(text) > _MAX_DECIMAL or not _DECIMAL.fullmatch(text):
        raise BadResponse(f"{path} is not a decimal string")
    number = float(text) * scale
    if not math.isfinite(number):
        raise BadResponse(f"{path} is not a finite number")
    if non_negative and number < 0:
        raise BadResponse(f"{path} is negative")
    return number + 0.0  # never -0.0


def get_string(
    container: Mapping[str, Any], key: str, path: str, *, required: bool = False
) -> str | None:
    """``container[key]`` as a JSON string; absent or null gives None unless required."""
    value = container.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise BadResponse(f"{path} is {'missing' if value is _MISSING else 'null'}")
        return None
    if not isinstance(value, str):
        raise BadResponse(f"{path} is {_json_type(value)}, expected a string")
    return value


# -- statuses (pure) ----------------------------------------------------------


_MAX_REASON = 200
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _status_reason(status: int, body: bytes, forbidden_hint: str) -> str:
    if status == 401:
        reason = "key rejected (unauthorized)"
    elif status == 403:
        reason = f"forbidden{forbidden_hint}"
    elif status == 429:
        reason = "rate limited"
    elif status >= 500:
        reason = "server error"
    else:
        reason = "unexpected HTTP status"
    message = _provider_message(body)
    return f"{reason}: {message}" if message else reason


def _provider_message(body: bytes) -> str:
    """The provider's own error text, when the body has one (``error.message`` etc.)."""
    try:
        doc = json.loads(body, parse_constant=lambda name: None)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    error = doc.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str):
        error = doc.get("message")
    if not isinstance(error, str):
        error = doc.get("detail")  # fal, FastAPI-style errors
    if not isinstance(error, str):
        return ""
    # Not cut short here: the key is only known (and redacted) in _translate,
    # which shortens the reason afterwards, so no fragment of a key survives.
    return " ".join(error[:8192].split())


# -- answers (pure) -----------------------------------------------------------


def read_answer(status: int, body: bytes, forbidden_hint: str = "") -> dict[str, Any]:
    """The JSON object of a 2xx answer; any other status or body raises :class:`BadResponse`."""
    if not 200 <= status < 300:
        raise BadResponse(_status_reason(status, body, forbidden_hint), status)
    try:
        return loads(body)
    except BadResponse as exc:
        exc.status_code = status
        raise


def _too_large(status: int) -> BadResponse:
    return BadResponse(f"response body is over {MAX_BODY >> 20} MiB", status)


def _declared_too_large(response: httpx.Response) -> bool:
    length = response.headers.get("content-length", "")
    return length.isdigit() and len(length) < 20 and int(length) > MAX_BODY


class _Deadline(Exception):
    """The fetch's total deadline passed (internal)."""


# -- the total deadline of a sync fetch ------------------------------------------


class _Watchdog:
    """Shuts down the sockets of one sync fetch when its deadline passes.

    httpx's timeouts bound each socket operation, not the request: a server
    sending a byte just before each read timeout holds a caller for ever, and
    no timeout bounds the DNS lookup before a connection. So a sync fetch runs
    in a worker thread (:meth:`run`) that the caller waits for until the
    deadline; then the caller shuts the fetch's sockets down (a blocked read
    wakes at once) and returns the timeout, leaving a lookup that still hangs
    to its thread. The sockets come from httpcore's ``trace`` extension (a
    connection opened for this fetch) and the response's ``network_stream``
    (any connection); each is kept as a duplicate descriptor, so shutting it
    down after the connection was closed touches nothing else; one opened
    after the deadline (a late lookup's) is shut down as it opens.
    """

    __slots__ = ("_lock", "_open", "_sockets", "fired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._open = True
        self.fired = False

    def run(self, work: Callable[[], _T], deadline: float) -> _T:
        """``work()`` in a worker thread, waited for until ``deadline``
        (then :class:`_Deadline`); what it returned or raised."""
        done = threading.Event()
        outcome: list[tuple[bool, Any]] = []

        def worker() -> None:
            try:
                outcome.append((True, work()))
            except BaseException as exc:  # handed to the caller
                outcome.append((False, exc))
            finally:
                done.set()

        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(worker,), name="creditguard-fetch", daemon=True
        )
        thread.start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            self.fire()
            # the shut-down sockets end the worker at once (a hung lookup does not)
            if not done.wait(_GRACE):
                raise _Deadline
        thread.join()
        ok, value = outcome[0]
        if ok:
            return cast(_T, value)
        raise value

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        if event.endswith(("connect_tcp.complete", "connect_unix_socket.complete")):
            self.watch(info.get("return_value"))

    def watch(self, stream: object) -> None:
        """Watch the socket of an httpcore network stream (anything else is ignored)."""
        get_extra_info = getattr(stream, "get_extra_info", None)
        if not callable(get_extra_info):
            return
        try:
            sock = get_extra_info("socket")
            if not isinstance(sock, socket.socket):
                return
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except (OSError, ValueError):
            return
        with self._lock:
            if self.fired:
                _shutdown(dup)
            if not self._open:  # finished meanwhile
                dup.close()
                return
            self._sockets.append(dup)

    def fire(self) -> None:
        with self._lock:
            if not self._open:
                return
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)

    def finish(self) -> None:
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


_GRACE = 0.25  # seconds a fetch's worker gets to end once its sockets are shut down


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _read_body(response: httpx.Response, deadline: float) -> bytes:
    """The body of a streamed response, refused past MAX_BODY or the deadline."""
    if _declared_too_large(response):
        raise _too_large(response.status_code)
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large(response.status_code)
        parts.append(chunk)
        if time.monotonic() >= deadline:
            raise _Deadline
    return b"".join(parts)


async def _aread_body(response: httpx.Response) -> bytes:
    """Like :func:`_read_body`; the deadline is the caller's asyncio timeout."""
    if _declared_too_large(response):
        raise _too_large(response.status_code)
    parts: list[bytes] = []
    size = 0
    chunks: AsyncIterator[bytes] = response.aiter_bytes()
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large(response.status_code)
        parts.append(chunk)
    return b"".join(parts)


_timeout_cm: Any = getattr(asyncio, "timeout", None)  # Python 3.11+


# -- the sources --------------------------------------------------------------


class _BorrowedSync(httpx.BaseTransport):
    """A transport lent to a short-lived Client, which must not close it."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)

    def close(self) -> None:
        pass


class _Borrowed(httpx.AsyncBaseTransport):
    """A transport lent to a short-lived AsyncClient, which must not close it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass


def _same(a: object, b: object) -> bool:
    return a is b


class HttpSource:
    """Shared behaviour of the sources that read a balance over HTTP.

    Subclasses set ``name``, ``_path``, ``_default_base_url`` and implement
    :meth:`_parse` (JSON object -> Balance, pure); a source that needs several
    requests per fetch (pages, a second endpoint) overrides :meth:`_plan`.
    :meth:`_headers` says how the key is sent (``Authorization: Bearer``).

    The key used is the source's own ``api_key``; else the environment
    variable named by ``api_key_env`` (which must be set when the source is
    built, and is read again at every fetch); else the credential of the call
    being guarded. ``timeout`` bounds each fetch as a whole.
    ``transport`` / ``async_transport`` replace the network (tests, proxies);
    a transport that serves both (``httpx.MockTransport``) is used for both.
    The source owns the transports it is given and closes them in
    ``close()`` / ``aclose()``.
    """

    name: str
    per_credential: bool
    _path: ClassVar[str]
    _default_base_url: ClassVar[str]
    _forbidden_hint: ClassVar[str] = ""
    #: endings of the SDK's base_url that the balance endpoint's root does not have
    #: (``https://api.deepseek.com/v1`` -> ``https://api.deepseek.com``)
    _sdk_suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        api_key: str | None = None,
        *,
        api_key_env: str | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigError("api_key", f"<{type(api_key).__name__}>", "a string or None")
        if api_key is not None and not api_key.strip():
            # api_key=os.environ.get("MGMT", "") with MGMT unset: loud now, not a silent
            # switch to each call's key (which /credits refuses: a fail-open guard)
            raise ConfigError(
                "api_key", "<not shown>", "a non-empty key, or None to use each call's key"
            )
        if api_key_env is not None and (
            not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env)
        ):
            # never echoed: a key pasted here by mistake must not reach an error
            raise ConfigError(
                "api_key_env",
                "<not shown>",
                "the name of an environment variable (letters, digits, _), not the key itself",
            )
        if api_key is None and api_key_env is not None and not _env_key(api_key_env):
            shown = env_name_shown(api_key_env)  # (a key pasted here by mistake: never shown)
            raise ConfigError(
                "api_key_env",
                shown,
                f"the name of a set environment variable holding {type(self).__name__}'s "
                f"key; {shown} is not set (set it, pass api_key=, or leave "
                "api_key_env out to use the key each guarded call carries)",
            )
        if base_url is None:
            base_url = self._default_base_url
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", base_url, "an http:// or https:// URL")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or (isinstance(timeout, int) and timeout > 2**1000)  # (not OverflowError below)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError("timeout", timeout, "a finite number of seconds > 0")
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport
        self._api_key = api_key.strip() if api_key is not None else None
        self._api_key_env = api_key_env
        self.base_url = base_url
        self.timeout = float(timeout)
        self.per_credential = self._api_key is None and api_key_env is None
        self._root = _api_root(base_url, self._sdk_suffixes)
        self._url = self._root + self._path
        self._timeouts = httpx.Timeout(self.timeout).as_dict()
        self._transport = transport
        self._async_transport = async_transport
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- sans-I/O core -------------------------------------------------------

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        raise NotImplementedError

    def _plan(self, key: str) -> Plan:
        """The requests of one fetch: yields each, is sent its JSON object, returns the
        Balance. Raise :class:`BadResponse` for an answer that is not the documented one."""
        doc = yield self._request(key)
        return self._parse(doc, time.time())

    @property
    def _own_key(self) -> bool:
        """True when the key sent is the source's own (not the call's)."""
        return not self.per_credential

    def _key(self, credential: str | None) -> str:
        key = self._api_key
        if key is None and self._api_key_env is not None:
            key = _env_key(self._api_key_env)
            if key is None:
                raise CreditSourceError(
                    f"no API key: the environment variable {env_name_shown(self._api_key_env)!r} "
                    "(api_key_env=) is not set any more; set it or pass api_key=",
                    source=self.name,
                )
        if key is None and credential is not None:
            key = credential.strip() or None
        if key is None:
            raise CreditSourceError(
                "no API key: the source has none of its own and the call carries none; "
                "pass api_key= or api_key_env= (an environment variable holding it), "
                "or guard calls that carry a key (the call's credential)",
                source=self.name,
            )
        if not key.isascii() or not key.isprintable() or " " in key:
            raise CreditSourceError(
                "the API key holds characters an HTTP header cannot carry", source=self.name
            )
        return key

    def _headers(self, key: str) -> dict[str, str]:
        """The request headers, the key's included (``Authorization: Bearer`` by default)."""
        return {
            "Authorization": f"Bearer {key}",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }

    def _get(
        self, key: str, path: str | None = None, params: Mapping[str, str | int] | None = None
    ) -> httpx.Request:
        """A ``GET`` of ``base_url + path`` (default ``_path``) with the key."""
        url = self._url if path is None else self._root + path
        return httpx.Request(
            "GET",
            url,
            params=params,
            headers=self._headers(key),
            extensions={"timeout": self._timeouts},
        )

    def _request(self, key: str) -> httpx.Request:
        return self._get(key)

    def _read(self, status: int, body: bytes) -> dict[str, Any]:
        return read_answer(status, body, self._forbidden_hint)

    def _advance(self, plan: Plan, status: int, body: bytes) -> httpx.Request | Balance:
        """The plan's next request, given the answer to its last one, or its Balance."""
        try:
            return plan.send(self._read(status, body))
        except StopIteration as stop:
            balance: Balance = stop.value
            return balance
        except BadResponse as exc:
            if exc.status_code is None:
                exc.status_code = status
            raise

    def _done(self, balance: Balance) -> Balance:
        logger.debug(
            "%s: remaining=%s %s (total=%s)",
            self.name,
            balance.remaining,
            balance.unit,
            balance.total,
        )
        return balance

    def _translate(self, exc: Exception, key: str) -> CreditSourceError:
        """The one place lower-layer failures become a CreditSourceError."""
        status: int | None = None
        if isinstance(exc, BadResponse):
            reason, status = exc.reason, exc.status_code
        elif isinstance(exc, (_Deadline, TimeoutError)):
            reason = f"timeout after {self.timeout:g} s (the whole request)"
        elif isinstance(exc, httpx.TimeoutException):
            kind = type(exc).__name__.removesuffix("Timeout").lower() or "request"
            reason = f"timeout after {self.timeout:g} s ({kind})"
        elif isinstance(exc, httpx.ConnectError):
            reason = f"could not connect ({describe(exc, key)})"
        elif isinstance(exc, httpx.TransportError):
            reason = f"connection failed ({describe(exc, key)})"
        else:
            reason = f"request failed ({describe(exc, key)})"
        reason = redact(reason, key)
        if len(reason) > _MAX_REASON:
            reason = reason[: _MAX_REASON - 3] + "..."
        logger.debug("%s: fetch failed: %s (status %s)", self.name, reason, status)
        return CreditSourceError(
            reason,
            status_code=status,
            source=self.name,
            misconfigured=status in (401, 403) and self._own_key,
        )

    # -- I/O shells ----------------------------------------------------------

    def fetch(self, credential: str | None) -> Balance:
        """The balance, fetched now (blocking, at most ``timeout`` seconds)."""
        key = self._key(credential)
        deadline = time.monotonic() + self.timeout
        watchdog = _Watchdog()
        try:
            return self._done(watchdog.run(lambda: self._run(key, watchdog, deadline), deadline))
        except Exception as exc:
            # a fired deadline: whatever the shut-down sockets made of the answer
            error = self._translate(_Deadline() if watchdog.fired else exc, key)
        finally:
            watchdog.finish()
        raise error from None

    def _run(self, key: str, watchdog: _Watchdog, deadline: float) -> Balance:
        plan = self._plan(key)
        client = self._sync_client()
        request = next(plan)
        while True:
            if time.monotonic() >= deadline:
                raise _Deadline
            request.extensions = {**request.extensions, "trace": watchdog.trace}
            response = client.send(request, stream=True)
            try:
                watchdog.watch(response.extensions.get("network_stream"))
                status, body = response.status_code, _read_body(response, deadline)
            finally:
                response.close()
            step = self._advance(plan, status, body)
            if isinstance(step, Balance):
                return step
            request = step

    async def afetch(self, credential: str | None) -> Balance:
        """The balance, fetched now (at most ``timeout`` seconds)."""
        key = self._key(credential)
        try:
            if _timeout_cm is not None:
                async with _timeout_cm(self.timeout):
                    balance = await self._arun(key)
            else:  # pragma: no cover - Python 3.10
                balance = await asyncio.wait_for(self._arun(key), self.timeout)
            return self._done(balance)
        except Exception as exc:
            error = self._translate(exc, key)
        raise error from None

    async def _arun(self, key: str) -> Balance:
        plan = self._plan(key)
        async with self._new_async_client() as client:
            request = next(plan)
            while True:
                response = await client.send(request, stream=True)
                try:
                    status, body = response.status_code, await _aread_body(response)
                finally:
                    await response.aclose()
                step = self._advance(plan, status, body)
                if isinstance(step, Balance):
                    return step
                request = step

    def _sync_client(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    if self._transport is not None:
                        client = httpx.Client(transport=self._transport)
                    else:
                        client = httpx.Client(
                            verify=self._ssl_context_locked(),
                            limits=httpx.Limits(max_keepalive_connections=0),
                        )
                    self._client = client
        return client

    def _new_async_client(self) -> httpx.AsyncClient:
        if self._async_transport is not None:
            return httpx.AsyncClient(transport=_Borrowed(self._async_transport))
        with self._lock:
            ctx = self._ssl_context_locked()
        return httpx.AsyncClient(verify=ctx)

    def _ssl_context_locked(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Closes the sync client (a later fetch opens a new one) and owned transports."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        elif self._transport is not None:
            self._transport.close()

    async def aclose(self) -> None:
        """Closes everything :meth:`close` does, and the async transport given."""
        self.close()
        transport = self._async_transport
        if transport is not None and not _same(transport, self._transport):
            await transport.aclose()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        parts = [f"base_url={redact(self.base_url)!r}"]
        if self._api_key is not None:
            parts.append("api_key=<set>")
        if self._api_key_env is not None:
            parts.append(f"api_key_env={env_name_shown(self._api_key_env)!r}")
        if self.per_credential:
            parts.append("api_key=None (the call's credential)")
        if self.timeout != 10.0:
            parts.append(f"timeout={self.timeout:g}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _api_root(base_url: str, suffixes: tuple[str, ...]) -> str:
    root = base_url.rstrip("/")
    for suffix in suffixes:
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


def _env_key(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None
