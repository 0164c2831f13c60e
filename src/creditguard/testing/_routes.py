"""A transport that sends each host's requests to a loopback fake provider of its own.

For tests of clients that talk to several providers (``sources.ByHost``): the
client keeps the real URLs (``https://openrouter.ai/api/v1/...``), so the guard
sees the real hosts, while the bytes go to ``FakeProvider`` servers on 127.0.0.1::

    router = HostRouter({"openrouter.ai": fake_a.url, "api.deepseek.com": fake_b.url})
    http = guard.client(transport=router)
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

__all__ = ["HostRouter"]


class HostRouter(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Rewrites each request's scheme, host and port to those of ``routes[host]``
    (a URL such as ``fake.url``) and sends it on; a host not in ``routes`` is an
    ``httpx.ConnectError`` (nothing leaves the machine). Serves sync and async clients."""

    def __init__(self, routes: Mapping[str, str]) -> None:
        self.routes = {host.lower(): httpx.URL(url) for host, url in routes.items()}
        self._sync: httpx.HTTPTransport | None = None
        self._async: httpx.AsyncHTTPTransport | None = None

    def _route(self, request: httpx.Request) -> httpx.Request:
        target = self.routes.get(request.url.host)
        if target is None:
            raise httpx.ConnectError(f"no route for host {request.url.host!r}", request=request)
        request.url = request.url.copy_with(
            scheme=target.scheme, host=target.host, port=target.port
        )
        return request

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._sync is None:
            self._sync = httpx.HTTPTransport()
        return self._sync.handle_request(self._route(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._async is None:
            self._async = httpx.AsyncHTTPTransport()
        return await self._async.handle_async_request(self._route(request))

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
