"""A balance function of your own as a credits source."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ..balance import Balance
from ..errors import ConfigError, CreditSourceError, redact
from ._base import describe, logger

__all__ = ["CallableSource"]


class _Refused(Exception):
    """The function ran but its answer is unusable (internal)."""


class CallableSource:
    """Balances from a function: ``fn(credential)`` or ``fn()``, sync or async.

    The function returns a number (the remaining amount; ``math.inf`` means
    unlimited) or a :class:`~creditguard.Balance`. Whether it is async and
    whether it takes the credential are read once, here. A function that takes
    the credential makes the source ``per_credential``.

    ``fetch`` runs an async function with ``asyncio.run`` when no event loop
    runs in this thread (else use ``afetch``); ``afetch`` runs a sync function
    in a worker thread, since it may block.
    """

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, unit: str = "USD"
    ) -> None:
        if not callable(fn):
            raise ConfigError("fn", fn, "a function returning a number or a Balance")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError("name", name, "a non-empty string")
        if not isinstance(unit, str) or not unit:
            raise ConfigError("unit", unit, "a non-empty string")
        self._fn = fn
        self._is_async = _is_async(fn)
        self._takes_credential = _takes_credential(fn)
        self.per_credential = self._takes_credential
        self.name = name or "callable:" + _qualname(fn)
        self.unit = unit

    # -- I/O shells ----------------------------------------------------------

    def fetch(self, credential: str | None) -> Balance:
        """Calls the function now (blocking)."""
        try:
            if self._is_async:
                result = self._run(credential)
            else:
                result = self._call(credential)
                if inspect.isawaitable(result):
                    result = self._run_awaitable(result)
            return self._balance(result)
        except Exception as exc:
            error = self._translate(exc, credential)
        raise error from None

    async def afetch(self, credential: str | None) -> Balance:
        """Calls the function now; a sync one runs in a worker thread."""
        try:
            if self._is_async:
                result = await self._call(credential)
            else:
                result = await asyncio.to_thread(self._call, credential)
                if inspect.isawaitable(result):
                    result = await result
            return self._balance(result)
        except Exception as exc:
            error = self._translate(exc, credential)
        raise error from None

    def _call(self, credential: str | None) -> Any:
        return self._fn(credential) if self._takes_credential else self._fn()

    def _run(self, credential: str | None) -> Any:
        _no_running_loop()
        return asyncio.run(self._call(credential))

    def _run_awaitable(self, awaitable: Awaitable[Any]) -> Any:
        try:
            _no_running_loop()
        except _Refused:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise

        async def wait() -> Any:
            return await awaitable

        return asyncio.run(wait())

    # -- sans-I/O core -------------------------------------------------------

    def _balance(self, result: object) -> Balance:
        now = time.time()
        if isinstance(result, Balance):
            balance = replace(
                result,
                source=result.source or self.name,
                fetched_at=result.fetched_at or now,
            )
        else:
            balance = Balance(
                remaining=_remaining(result), unit=self.unit, fetched_at=now, source=self.name
            )
        logger.debug("%s: remaining=%s %s", self.name, balance.remaining, balance.unit)
        return balance

    def _translate(self, exc: Exception, credential: str | None) -> CreditSourceError:
        status: int | None = None
        source = self.name
        misconfigured = False
        if isinstance(exc, _Refused):
            reason = str(exc)
        elif isinstance(exc, CreditSourceError):
            reason, status, source = exc.reason, exc.status_code, exc.source or self.name
            misconfigured = exc.misconfigured
        else:
            reason = describe(exc, credential)
        reason = redact(reason, credential)
        logger.debug("%s: fetch failed: %s", self.name, reason)
        return CreditSourceError(
            reason, status_code=status, source=source, misconfigured=misconfigured
        )

    def __repr__(self) -> str:
        kind = "async " if self._is_async else ""
        arg = "credential" if self._takes_credential else ""
        return f"CallableSource({kind}{_qualname(self._fn)}({arg}), name={self.name!r})"


def _remaining(result: object) -> float:
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise _Refused(
            f"the function returned {type(result).__name__}, expected a number or a Balance"
        )
    try:
        value = float(result)
    except OverflowError:
        raise _Refused("the function returned a number too large for a float") from None
    if math.isnan(value) or value == -math.inf:
        raise _Refused(f"the function returned {value}, expected a number (inf = unlimited)")
    return value


def _no_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise _Refused(
        "the balance function is async and an event loop is running in this thread: "
        "use `await source.afetch(...)`"
    )


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


def _takes_credential(fn: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ConfigError("fn", fn, "a function whose signature can be read") from None
    for args in ((None,), ()):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return bool(args)
    raise ConfigError("fn", fn, "a function taking one argument (the credential) or none")


def _qualname(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__qualname__
