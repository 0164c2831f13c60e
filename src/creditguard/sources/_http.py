"""The HTTP credits sources: one sans-I/O core, two thin shells.

The core builds the request (:meth:`HttpSource._request`), reads the response
(:meth:`HttpSource._interpret`: status, JSON, the provider's fields) and turns
every failure into a :class:`~creditguard.CreditSourceError`
(:meth:`HttpSource._translate`, the one place errors are mapped). ``fetch``
and ``afetch`` only send the request, each on its own kind of client.

A sync ``httpx.Client`` is created lazily, once, and reused (``close()``).
An ``httpx.AsyncClient`` belongs to the event loop it first ran on, so
``afetch`` opens one per call; the SSL context, the costly part, is built once
per source and shared.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, NoReturn, TypeVar

import httpx

from .._fingerprint import redact
from ..balance import Balance
from ..errors import ConfigError, CreditSourceError
from ._base import describe, logger

__all__ = ["BadResponse", "HttpSource", "get_number", "get_object", "loads"]

_USER_AGENT = "creditguard"
_MISSING: Any = object()
_S = TypeVar("_S", bound="HttpSource")


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
        return ""
    # Not cut short here: the key is only known (and redacted) in _translate,
    # which shortens the reason afterwards, so no fragment of a key survives.
    return " ".join(error[:8192].split())


# -- the sources --------------------------------------------------------------


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
    :meth:`_parse` (JSON object -> Balance, pure).

    The key used is the source's own ``api_key``; else the environment
    variable named by ``api_key_env`` (read at every fetch); else the
    credential of the call being guarded. ``transport`` / ``async_transport``
    replace the network (tests, proxies); a transport that serves both
    (``httpx.MockTransport``) is used for both. The source owns the transports
    it is given and closes them in ``close()`` / ``aclose()``.
    """

    name: str
    per_credential: bool
    _path: ClassVar[str]
    _default_base_url: ClassVar[str]
    _forbidden_hint: ClassVar[str] = ""

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
        if api_key_env is not None and (
            not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env)
        ):
            # never echoed: a key pasted here by mistake must not reach an error
            raise ConfigError(
                "api_key_env",
                "<not shown>",
                "the name of an environment variable (letters, digits, _), not the key itself",
            )
        if base_url is None:
            base_url = self._default_base_url
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", base_url, "an http:// or https:// URL")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError("timeout", timeout, "a finite number of seconds > 0")
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport
        self._api_key = (api_key.strip() or None) if api_key is not None else None
        self._api_key_env = api_key_env
        self.base_url = base_url
        self.timeout = float(timeout)
        self.per_credential = self._api_key is None and api_key_env is None
        self._url = base_url.rstrip("/") + self._path
        self._timeouts = httpx.Timeout(self.timeout).as_dict()
        self._transport = transport
        self._async_transport = async_transport
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- sans-I/O core -------------------------------------------------------

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        raise NotImplementedError

    def _key(self, credential: str | None) -> str:
        key = self._api_key
        if key is None and self._api_key_env is not None:
            key = os.environ.get(self._api_key_env, "").strip() or None
        if key is None and credential is not None:
            key = credential.strip() or None
        if key is None:
            if self._api_key_env:
                missing = (
                    f"the environment variable {self._api_key_env!r} (api_key_env=) is not set"
                )
                how = "set it, pass api_key=,"
            else:
                missing = "the source has none of its own and the call carries none"
                how = "pass api_key= or api_key_env= (an environment variable holding it),"
            raise CreditSourceError(
                f"no API key: {missing}; {how} or guard calls that carry a key "
                "(the call's credential)",
                source=self.name,
            )
        if not key.isascii() or not key.isprintable() or " " in key:
            raise CreditSourceError(
                "the API key holds characters an HTTP header cannot carry", source=self.name
            )
        return key

    def _request(self, key: str) -> httpx.Request:
        return httpx.Request(
            "GET",
            self._url,
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
            extensions={"timeout": self._timeouts},
        )

    def _interpret(self, response: httpx.Response) -> Balance:
        status = response.status_code
        if not 200 <= status < 300:
            raise BadResponse(
                _status_reason(status, response.content, self._forbidden_hint), status
            )
        try:
            balance = self._parse(loads(response.content), time.time())
        except BadResponse as exc:
            exc.status_code = status
            raise
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
        return CreditSourceError(reason, status_code=status, source=self.name)

    # -- I/O shells ----------------------------------------------------------

    def fetch(self, credential: str | None) -> Balance:
        """The balance, fetched now (blocking)."""
        key = self._key(credential)
        try:
            return self._interpret(self._sync_client().send(self._request(key)))
        except Exception as exc:
            error = self._translate(exc, key)
        raise error from None

    async def afetch(self, credential: str | None) -> Balance:
        """The balance, fetched now."""
        key = self._key(credential)
        try:
            async with self._new_async_client() as client:
                response = await client.send(self._request(key))
            return self._interpret(response)
        except Exception as exc:
            error = self._translate(exc, key)
        raise error from None

    def _sync_client(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    if self._transport is not None:
                        client = httpx.Client(transport=self._transport)
                    else:
                        client = httpx.Client(verify=self._ssl_context_locked())
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
            parts.append(f"api_key_env={self._api_key_env!r}")
        if self.per_credential:
            parts.append("api_key=None (the call's credential)")
        if self.timeout != 10.0:
            parts.append(f"timeout={self.timeout:g}")
        return f"{type(self).__name__}({', '.join(parts)})"
