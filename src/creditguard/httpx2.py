"""creditguard for httpx2, the HTTP stack of anthropic 2.x and openai 3.x.

::

    import anthropic, httpx2
    from creditguard import httpx2 as cg2

    anthropic.Anthropic(http_client=cg2.client(guard))
    httpx2.Client(transport=cg2.GuardTransport(guard, inner=httpx2.HTTPTransport()))

The same classes and functions as :mod:`creditguard.httpx`, over httpx2's
classes: one transport cannot serve both libraries. Install with the
``httpx2`` extra.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "creditguard.httpx2 needs the httpx2 package: pip install 'creditguard[httpx2]'"
    ) from exc

from ._transport import DEFAULT_PATHS, AsyncShell, Core, Lib, SyncShell

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["DEFAULT_PATHS", "AsyncGuardTransport", "GuardTransport", "async_client", "client"]

_LIB = Lib(
    "httpx2",
    httpx2.Request,
    httpx2.Response,
    httpx2.RequestNotRead,
    httpx2.SyncByteStream,
    httpx2.AsyncByteStream,
)
# Options that belong to the network transport: given to client(), they build
# the inner transport (a client given a transport would silently ignore them).
_TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "proxy", "retries", "trust_env")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every default transport: loading the CA bundle
    costs tens of milliseconds, once is enough."""
    return httpx2.create_ssl_context()


def _transport_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {k: kwargs.pop(k) for k in _TRANSPORT_OPTIONS if k in kwargs and k != "trust_env"}
    if "trust_env" in kwargs:
        options["trust_env"] = kwargs["trust_env"]  # the client reads it too
    options.setdefault("verify", _ssl_context())
    return options


# LLM calls are slow: openai's own default, unless the caller says otherwise.
_TIMEOUT = httpx2.Timeout(timeout=600.0, connect=5.0)


class GuardTransport(SyncShell, httpx2.BaseTransport):
    """Judges generation calls before ``inner`` (default: the network) sees them."""

    def __init__(
        self,
        guard: BudgetGuard,
        inner: httpx2.BaseTransport | None = None,
        *,
        paths: Iterable[str] = DEFAULT_PATHS,
    ) -> None:
        self._core = Core(guard, _LIB, paths)
        self._inner = inner if inner is not None else httpx2.HTTPTransport(verify=_ssl_context())

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = SyncShell.handle_request(self, request)
        return response


class AsyncGuardTransport(AsyncShell, httpx2.AsyncBaseTransport):
    """The async twin of :class:`GuardTransport`."""

    def __init__(
        self,
        guard: BudgetGuard,
        inner: httpx2.AsyncBaseTransport | None = None,
        *,
        paths: Iterable[str] = DEFAULT_PATHS,
    ) -> None:
        self._core = Core(guard, _LIB, paths)
        self._inner = (
            inner if inner is not None else httpx2.AsyncHTTPTransport(verify=_ssl_context())
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = await AsyncShell.handle_async_request(self, request)
        return response


def client(
    guard: BudgetGuard,
    *,
    transport: httpx2.BaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx2.Client:
    """An ``httpx2.Client`` whose requests pass through ``guard``; ``transport``
    is the inner transport, other arguments go to ``httpx2.Client``."""
    kwargs.setdefault("timeout", _TIMEOUT)
    if transport is None:
        transport = httpx2.HTTPTransport(**_transport_options(kwargs))
    return httpx2.Client(transport=GuardTransport(guard, transport, paths=paths), **kwargs)


def async_client(
    guard: BudgetGuard,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` whose requests pass through ``guard``."""
    kwargs.setdefault("timeout", _TIMEOUT)
    if transport is None:
        transport = httpx2.AsyncHTTPTransport(**_transport_options(kwargs))
    return httpx2.AsyncClient(
        transport=AsyncGuardTransport(guard, transport, paths=paths), **kwargs
    )
