"""guard.instrument(): put a guard under every httpx and httpx2 client built afterwards.

Frameworks build their HTTP clients internally (an openai client made without
``http_client=``, LangChain's ``ChatOpenAI``, CrewAI, LlamaIndex, tools of an
agent), out of reach of ``http_client=guard.client()``. Like OpenTelemetry's
httpx instrumentation, this patches the libraries' classes, process-wide:
while instrumented, each ``httpx.Client``, ``httpx.AsyncClient``,
``httpx2.Client`` and ``httpx2.AsyncClient`` (subclasses included, such as the
SDKs' own) gets its transport, and every mounted one, wrapped in the guard's
transport as it is built. A transport that is a guard's already (``guard.client()``,
``GuardTransport(...)``) is left as it is: never guarded twice.

::

    handle = guard.instrument()     # at start-up, before clients are built
    ...
    handle.close()                  # clients built afterwards are plain again

    with guard.instrument():        # or for a block
        ...

Clients built before ``instrument()`` are not touched (build them with
``guard.client()``), and clients built while instrumented stay guarded after
``close()``. One guard instruments at a time.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._transport import DEFAULT_PATHS, AsyncShell, SyncShell
from .errors import ConfigError

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["Instrumentation", "instrument"]

log = logging.getLogger("creditguard")

_LOCK = threading.Lock()
_ACTIVE: Instrumentation | None = None

# (HTTP library, creditguard adapter module): httpx2 only when it is installed
_STACKS = (("httpx", "creditguard.httpx"), ("httpx2", "creditguard.httpx2"))


def _guarded(transport: object) -> bool:
    return isinstance(transport, (SyncShell, AsyncShell))


def _check_layout(module: Any) -> None:
    """The clients keep their transport in ``_transport`` and mounted ones in
    ``_mounts`` (httpx 0.27-0.29, httpx2 2.x; the async client too: they share
    a base class). Checked once, loudly: an instrumentation that silently
    guarded nothing would be worse than none."""
    inner = module.MockTransport(lambda request: module.Response(200))
    with module.Client(transport=inner, trust_env=False) as probe:
        ok = getattr(probe, "_transport", None) is inner and isinstance(
            getattr(probe, "_mounts", None), dict
        )
    if not ok:
        raise ConfigError(
            "instrument",
            f"{module.__name__} {getattr(module, '__version__', '?')}",
            "an httpx/httpx2 version whose clients creditguard knows how to wrap; "
            "pass http_client=guard.client() (or creditguard.httpx2.client(guard)) instead",
        )


def _paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Checked here, once: a bad ``paths`` found only when a framework builds its
    client would fail far from the mistake (and a bare string is not a list)."""
    allowed = "a list of non-empty path suffixes such as ['/chat/completions']"
    if isinstance(paths, (str, bytes)):
        raise ConfigError("paths", paths, allowed)
    try:
        found = tuple(paths)
    except TypeError:
        raise ConfigError("paths", f"<{type(paths).__name__}>", allowed) from None
    if not found or not all(isinstance(p, str) and p for p in found):
        raise ConfigError("paths", found, allowed)
    return found


class Instrumentation:
    """The handle :meth:`BudgetGuard.instrument` returns: ``close()`` (or the
    end of a ``with`` block) undoes the patching."""

    def __init__(self, guard: BudgetGuard, paths: Iterable[str] = DEFAULT_PATHS) -> None:
        self.guard = guard
        self.paths = _paths(paths)
        self.active = False
        self.wrapped = 0  # transports wrapped so far
        self._patched: list[tuple[type, Callable[..., None], Callable[..., None]]] = []

    def __repr__(self) -> str:
        state = "active" if self.active else "closed"
        return f"<creditguard Instrumentation {state}, {self.wrapped} transport(s) guarded>"

    def _start(self) -> None:
        global _ACTIVE
        with _LOCK:
            if _ACTIVE is not None:
                raise ConfigError(
                    "instrument",
                    repr(_ACTIVE.guard),
                    "one guard instrumenting at a time: close() the other handle first",
                )
            stacks = []
            for name, adapter in _STACKS:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                _check_layout(module)
                stacks.append((module, importlib.import_module(adapter)))
            for module, cg in stacks:
                self._patch(module.Client, cg.GuardTransport)
                self._patch(module.AsyncClient, cg.AsyncGuardTransport)
            self.active = True
            _ACTIVE = self
        log.info(
            "instrumented: new %s clients are guarded",
            ", ".join(f"{m.__name__}.Client/AsyncClient" for m, _ in stacks),
        )

    def _patch(self, cls: type, transport_cls: type) -> None:
        original: Callable[..., None] = cls.__init__  # type: ignore[misc]
        adopt = self._adopt

        @functools.wraps(original)
        def __init__(client: Any, *args: Any, **kwargs: Any) -> None:
            original(client, *args, **kwargs)
            adopt(client, transport_cls)

        cls.__init__ = __init__  # type: ignore[misc]
        self._patched.append((cls, original, __init__))

    def _adopt(self, client: Any, transport_cls: type) -> None:
        """Wrap a new client's transports in the guard's (unless they are a guard's)."""
        if not self.active:
            return
        guard, paths = self.guard, self.paths
        transport = client._transport
        if not _guarded(transport):
            client._transport = transport_cls(guard, transport, paths=paths)
            self.wrapped += 1
            log.debug("instrument: guarding a new %s", type(client).__qualname__)
        mounts = client._mounts
        for pattern, mounted in list(mounts.items()):
            if mounted is not None and not _guarded(mounted):
                mounts[pattern] = transport_cls(guard, mounted, paths=paths)
                self.wrapped += 1

    def close(self) -> None:
        """Stop guarding clients built from now on. Idempotent."""
        global _ACTIVE
        with _LOCK:
            if not self.active:
                return
            self.active = False
            for cls, original, ours in reversed(self._patched):
                if cls.__dict__.get("__init__") is ours:
                    cls.__init__ = original
                # else someone patched over us: ours stays in their chain, inactive
            self._patched.clear()
            if _ACTIVE is self:
                _ACTIVE = None
        log.info("instrumentation closed: new clients are no longer guarded")

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def instrument(guard: BudgetGuard, *, paths: Iterable[str] = DEFAULT_PATHS) -> Instrumentation:
    """Guard every httpx and httpx2 client built from now on with ``guard``
    (see the module's docstring); ``paths``: the generation paths judged."""
    handle = Instrumentation(guard, paths)
    handle._start()
    return handle
