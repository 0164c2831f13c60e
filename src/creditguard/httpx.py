"""creditguard for httpx: a guard transport under any httpx-based SDK.

::

    import httpx, openai
    from creditguard.httpx import GuardTransport, client

    openai.OpenAI(http_client=guard.client())             # or client(guard)
    httpx.Client(transport=GuardTransport(guard, inner=httpx.HTTPTransport()))

The logic lives in :mod:`creditguard._transport`; this module and
:mod:`creditguard.httpx2` only give it each library's classes and types.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpx

from ._transport import DEFAULT_PATHS, AsyncShell, Core, Lib, SyncShell

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["DEFAULT_PATHS", "AsyncGuardTransport", "GuardTransport", "async_client", "client"]

_LIB = Lib(httpx)


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
        self._inner = _LIB.inner(inner, sync=True, transport="GuardTransport")
        self._check_first_request()

    if TYPE_CHECKING:  # (SyncShell's, typed; no wrapper at run time)

        def handle_request(self, request: httpx.Request) -> httpx.Response: ...


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
        self._inner = _LIB.inner(inner, sync=False, transport="AsyncGuardTransport")
        self._check_first_request()

    if TYPE_CHECKING:

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...


def client(
    guard: BudgetGuard,
    *,
    transport: httpx.BaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx.Client:
    """A ``httpx.Client`` whose generation calls pass through ``guard``.
    ``transport`` is the inner transport (default: the network, built with any
    of ``verify``, ``cert``, ``http1``, ``http2``, ``limits``, ``proxy``,
    ``retries`` given here); other arguments go to ``httpx.Client``."""
    inner = transport if transport is not None else _LIB.network(sync=True, options=kwargs)
    guarded = GuardTransport(guard, inner, paths=paths)
    return httpx.Client(transport=guarded, **_LIB.client_options(kwargs))


def async_client(
    guard: BudgetGuard,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """A ``httpx.AsyncClient`` whose generation calls pass through ``guard``."""
    inner = transport if transport is not None else _LIB.network(sync=False, options=kwargs)
    guarded = AsyncGuardTransport(guard, inner, paths=paths)
    return httpx.AsyncClient(transport=guarded, **_LIB.client_options(kwargs))
