"""litellm's HTTP clients through a guard: the shared sessions, and ``client=`` handlers.

Which route a ``litellm.completion`` call takes decides which hook reaches it
(litellm 1.10x):

- the OpenAI SDK route (``openai/...`` with any OpenAI-compatible ``api_base``)
  builds its SDK client around ``litellm.client_session`` /
  ``litellm.aclient_session`` when they are set: :func:`guard_litellm`;
- litellm's own HTTP route (``openrouter/...``, ``anthropic/...`` and most other
  providers) ignores those sessions, but takes ``client=`` per call: an
  ``HTTPHandler`` / ``AsyncHTTPHandler`` around a guarded client
  (:func:`http_handler`, :func:`async_http_handler`).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import litellm
import openai
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler

from creditguard import BudgetGuard, ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "GuardedAsyncHTTPHandler",
    "GuardedHTTPHandler",
    "GuardedSessions",
    "async_http_handler",
    "guard_litellm",
    "http_handler",
]

log = logging.getLogger("creditguard.litellm")


def _check_guard(guard: object) -> BudgetGuard:
    if not isinstance(guard, BudgetGuard):
        raise ConfigError("guard", guard, "a creditguard.BudgetGuard")
    return guard


def forget_sdk_clients() -> int:
    """Drop the OpenAI SDK clients litellm keeps between calls (for up to ten
    minutes, keyed by key, base URL and timeout, *not* by HTTP client): one built
    before the sessions changed would go on using the old ones. Returns how many
    were dropped. litellm closes those it built itself, after a grace period for
    calls still using them; a client around a session given to litellm is never
    closed by it."""
    cache = getattr(litellm, "in_memory_llm_clients_cache", None)
    entries = getattr(cache, "cache_dict", None)
    if cache is None or not isinstance(entries, dict):
        return 0
    remove = getattr(cache, "_remove_key", None)
    dropped = 0
    for key, value in list(entries.items()):
        if isinstance(value, (openai.OpenAI, openai.AsyncOpenAI)):  # and their Azure subclasses
            if callable(remove):
                remove(key)
            else:  # pragma: no cover - older caches
                entries.pop(key, None)
            dropped += 1
    if dropped:
        log.debug("dropped %d cached OpenAI SDK client(s) of litellm", dropped)
    return dropped


class GuardedSessions:
    """The guarded sessions :func:`guard_litellm` gave litellm, and the ones they
    replaced. Closing (or leaving the ``with`` / ``async with`` block) puts the
    previous sessions back and closes the clients :func:`guard_litellm` made.
    Closing twice does nothing."""

    __slots__ = ("_closed", "_owned", "_previous", "async_client", "client")

    def __init__(
        self,
        client: httpx.Client,
        async_client: httpx.AsyncClient,
        # whatever litellm held (its own annotation of these names changes
        # between releases: 1.108 admits openai's clients too)
        previous: tuple[Any, Any],
        owned: tuple[bool, bool],
    ) -> None:
        self.client = client
        self.async_client = async_client
        self._previous = previous
        self._owned = owned
        self._closed = False

    @property
    def active(self) -> bool:
        """Are litellm's sessions still these?"""
        return litellm.client_session is self.client or litellm.aclient_session is self.async_client

    def restore(self) -> None:
        """Give litellm back the sessions it had before (each one only if it is
        still ours: a later change by someone else is left alone)."""
        if self._closed:
            return
        self._closed = True
        before, abefore = self._previous
        changed = False
        if litellm.client_session is self.client:
            litellm.client_session = before
            changed = True
        if litellm.aclient_session is self.async_client:
            litellm.aclient_session = abefore
            changed = True
        if changed:
            forget_sdk_clients()
        else:
            log.debug("litellm's sessions were replaced since guard_litellm(): left as they are")

    def close(self) -> None:
        """Restore the previous sessions and close the sync client made here.
        In async code use ``await aclose()`` (or ``async with``): an async client
        can only be closed there; ``close()`` leaves it to the garbage collector."""
        self.restore()
        if self._owned[0]:
            self.client.close()

    async def aclose(self) -> None:
        """Restore the previous sessions and close both clients made here."""
        self.restore()
        if self._owned[0]:
            self.client.close()
        if self._owned[1]:
            await self.async_client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "active" if self.active else "replaced"
        return f"<GuardedSessions {state}>"


def guard_litellm(
    guard: BudgetGuard,
    *,
    client: httpx.Client | None = None,
    async_client: httpx.AsyncClient | None = None,
    **options: Any,
) -> GuardedSessions:
    """Route litellm's OpenAI-compatible calls through ``guard``, now.

    Sets ``litellm.client_session`` and ``litellm.aclient_session`` (process-wide)
    to ``guard.client()`` and ``guard.async_client()`` (``options`` go to both:
    ``verify``, ``timeout``, ``proxy``...), or to the guarded ``client`` /
    ``async_client`` given, and drops the SDK clients litellm had cached around
    the previous sessions. Returns a :class:`GuardedSessions`: leave its ``with``
    / ``async with`` block, or close it, to put the previous sessions back.

    Covers the OpenAI SDK route: ``litellm.completion(model="openai/<model>",
    api_base=...)`` and ``acompletion``, streaming or not.
    A refused call raises litellm's ``APIError`` with status 402
    (:func:`~creditguard_litellm.refused` tells it apart); a downgraded one
    reaches the provider with the cheaper model. Providers on litellm's own HTTP
    route (``openrouter/...``, ``anthropic/...``) ignore these sessions: pass
    ``client=`` :func:`http_handler` / :func:`async_http_handler` to those calls.
    """
    guard = _check_guard(guard)
    if client is not None and not isinstance(client, httpx.Client):
        raise ConfigError("client", client, "None or an httpx.Client (guard.client())")
    if async_client is not None and not isinstance(async_client, httpx.AsyncClient):
        raise ConfigError(
            "async_client", async_client, "None or an httpx.AsyncClient (guard.async_client())"
        )
    owned = (client is None, async_client is None)
    sync = client if client is not None else guard.client(**dict(options))
    asynchronous = async_client if async_client is not None else guard.async_client(**options)
    previous = (litellm.client_session, litellm.aclient_session)
    litellm.client_session = sync
    litellm.aclient_session = asynchronous
    forget_sdk_clients()
    return GuardedSessions(sync, asynchronous, previous, owned)


class GuardedHTTPHandler(HTTPHandler):
    """litellm's ``HTTPHandler`` over ``guard.client(**options)``: pass it as
    ``client=`` to ``litellm.completion`` on litellm's own HTTP route
    (``openrouter/...``, ``anthropic/...``). Reusable across calls;
    ``close()`` closes its client (a closed one is made anew on next use)."""

    def __init__(self, guard: BudgetGuard, **options: Any) -> None:
        self.guard = _check_guard(guard)
        self._options = options
        super().__init__()

    def create_client(self) -> httpx.Client:
        return self.guard.client(**dict(self._options))


class GuardedAsyncHTTPHandler(AsyncHTTPHandler):
    """litellm's ``AsyncHTTPHandler`` over ``guard.async_client(**options)``, for
    ``litellm.acompletion(..., client=...)`` on litellm's own HTTP route.
    ``await close()`` closes its client."""

    def __init__(self, guard: BudgetGuard, **options: Any) -> None:
        self.guard = _check_guard(guard)
        self._options = options
        super().__init__()

    def create_client(
        self,
        timeout: Any,
        event_hooks: Any,
        ssl_verify: Any = None,
        shared_session: Any = None,
    ) -> httpx.AsyncClient:
        options = dict(self._options)
        if event_hooks:
            options.setdefault("event_hooks", event_hooks)
        return self.guard.async_client(**options)


def http_handler(guard: BudgetGuard, **options: Any) -> GuardedHTTPHandler:
    """A :class:`GuardedHTTPHandler`: ``litellm.completion(..., client=http_handler(guard))``
    on litellm's own HTTP route (``openrouter/...``, ``anthropic/...``).
    ``options`` go to ``guard.client()``."""
    return GuardedHTTPHandler(guard, **options)


def async_http_handler(guard: BudgetGuard, **options: Any) -> GuardedAsyncHTTPHandler:
    """A :class:`GuardedAsyncHTTPHandler`, for ``litellm.acompletion(..., client=...)``
    on litellm's own HTTP route. ``options`` go to ``guard.async_client()``."""
    return GuardedAsyncHTTPHandler(guard, **options)
