"""A transport that sends each host's requests to a loopback fake provider of its own.

For tests of clients that talk to several providers (``sources.ByHost``): the
client keeps the real URLs (``https://openrouter.ai/api/v1/...``), so the guard
sees the real hosts, while the bytes go to ``FakeProvider`` servers on 127.0.0.1::

    router = HostRouter({"openrouter.ai": fake_a.url, "api.deepseek.com": fake_b.url})
    http = guard.client(transport=router)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["HostRouter"]


class HostRouter(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Rewrites each request's scheme, host and port to those of ``routes[host]``
    (a URL such as ``fake.url``) and sends it on; a host not in ``routes`` is an
    ``httpx.ConnectError`` (nothing leaves the machine). Serves sync and async clients
    of httpx and of httpx2 (``creditguard.httpx2.client(guard, transport=router)``)."""

    def __init__(self, routes: Mapping[str, str]) -> None:
        self.routes = {host.lower(): httpx.URL(url) for host, url in routes.items()}
        self._inners: dict[tuple[str, bool], Any] = {}

    def _route(self, request: Any) -> Any:
        target = self.routes.get(request.url.host)
        if target is None:
            module = sys.modules[type(request).__module__.partition(".")[0]]
            raise module.ConnectError(f"no route for host {request.url.host!r}", request=request)
        request.url = request.url.copy_with(
            scheme=target.scheme, host=target.host, port=target.port
        )
        return request

    def _inner(self, request: Any, sync: bool) -> Any:
        """The network transport of the request's own library (httpx or httpx2)."""
        module = sys.modules[type(request).__module__.partition(".")[0]]
        key = (module.__name__, sync)
        inner = self._inners.get(key)
        if inner is None:
            cls = module.HTTPTransport if sync else module.AsyncHTTPTransport
            inner = self._inners[key] = cls()
        return inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._inner(request, True)
        return inner.handle_request(self._route(request))  # type: ignore[no-any-return]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._inner(request, False)
        return await inner.handle_async_request(self._route(request))  # type: ignore[no-any-return]

    def close(self) -> None:
        for (_, sync), inner in list(self._inners.items()):
            if sync:
                inner.close()

    async def aclose(self) -> None:
        for (_, sync), inner in list(self._inners.items()):
            if not sync:
                await inner.aclose()
