"""creditguard for httpx: a guard transport under any httpx-based SDK.

::

    import httpx, openai
    from creditguard.httpx import GuardTransport, client

    openai.OpenAI(http_client=guard.client())             # or client(guard)
    httpx.Client(transport=GuardTransport(guard, inner=httpx.HTTPTransport()))
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpx

from ._transport import DEFAULT_PATHS, AsyncShell, Core, Lib, SyncShell

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["DEFAULT_PATHS", "AsyncGuardTransport", "GuardTransport", "async_client", "client"]

_LIB = Lib(
    "httpx",
    httpx.Request,
    httpx.Response,
    httpx.RequestNotRead,
    httpx.SyncByteStream,
    httpx.AsyncByteStream,
)
# Options that belong to the network transport: given to client(), they build
# the inner transport (a client given a transport would silently ignore them).
_TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "proxy", "retries", "trust_env")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every default transport: loading the CA bundle
    costs tens of milliseconds, once is enough."""
    return httpx.create_ssl_context()


def _transport_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {k: kwargs.pop(k) for k in _TRANSPORT_OPTIONS if k in kwargs and k != "trust_env"}
    if "trust_env" in kwargs:
        options["trust_env"] = kwargs["trust_env"]  # the client reads it too
    options.setdefault("verify", _ssl_context())
    return options


# LLM calls are slow: openai's own default, unless the caller says otherwise.
_TIMEOUT = httpx.Timeout(timeout=600.0, connect=5.0)


class GuardTransport(SyncShell, httpx.BaseTransport):
    """Judges generation calls before ``inner`` (default: the network) sees them."""

    def __init__(
        self,
        guard: BudgetGuard,
        inner: httpx.BaseTransport | None = None,
        *,
        paths: Iterable[str] = DEFAULT_PATHS,
    ) -> None:
        self._core = Core(guard, _LIB, paths)
        self._inner = inner if inner is not None else httpx.HTTPTransport(verify=_ssl_context())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = SyncShell.handle_request(self, request)
        return response


class AsyncGuardTransport(AsyncShell, httpx.AsyncBaseTransport):
    """The async twin of :class:`GuardTransport`."""

    def __init__(
        self,
        guard: BudgetGuard,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        paths: Iterable[str] = DEFAULT_PATHS,
    ) -> None:
        self._core = Core(guard, _LIB, paths)
        self._inner = (
            inner if inner is not None else httpx.AsyncHTTPTransport(verify=_ssl_context())
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = await AsyncShell.handle_async_request(self, request)
        return response


def client(
    guard: BudgetGuard,
    *,
    transport: httpx.BaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` whose requests pass through ``guard``; ``transport``
    is the inner transport, other arguments go to ``httpx.Client``."""
    kwargs.setdefault("timeout", _TIMEOUT)
    if transport is None:
        transport = httpx.HTTPTransport(**_transport_options(kwargs))
    return httpx.Client(transport=GuardTransport(guard, transport, paths=paths), **kwargs)


def async_client(
    guard: BudgetGuard,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests pass through ``guard``."""
    kwargs.setdefault("timeout", _TIMEOUT)
    return httpx.AsyncClient(transport=AsyncGuardTransport(guard, transport, paths=paths), **kwargs)
