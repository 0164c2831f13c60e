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

_LIB = Lib(httpx2)


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
        self._inner = _LIB.inner(inner, sync=True, transport="GuardTransport")
        self._check_first_request()

    if TYPE_CHECKING:  # (SyncShell's, typed; no wrapper at run time)

        def handle_request(self, request: httpx2.Request) -> httpx2.Response: ...


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
        self._inner = _LIB.inner(inner, sync=False, transport="AsyncGuardTransport")
        self._check_first_request()

    if TYPE_CHECKING:

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response: ...


def client(
    guard: BudgetGuard,
    *,
    transport: httpx2.BaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx2.Client:
    """A ``httpx2.Client`` whose generation calls pass through ``guard``.
    ``transport`` is the inner transport (default: the network, built with any
    of ``verify``, ``cert``, ``http1``, ``http2``, ``limits``, ``proxy``,
    ``retries`` given here); other arguments go to ``httpx2.Client``."""
    inner = transport if transport is not None else _LIB.network(sync=True, options=kwargs)
    guarded = GuardTransport(guard, inner, paths=paths)
    return httpx2.Client(transport=guarded, **_LIB.client_options(kwargs))


def async_client(
    guard: BudgetGuard,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    paths: Iterable[str] = DEFAULT_PATHS,
    **kwargs: Any,
) -> httpx2.AsyncClient:
    """A ``httpx2.AsyncClient`` whose generation calls pass through ``guard``."""
    inner = transport if transport is not None else _LIB.network(sync=False, options=kwargs)
    guarded = AsyncGuardTransport(guard, inner, paths=paths)
    return httpx2.AsyncClient(transport=guarded, **_LIB.client_options(kwargs))
