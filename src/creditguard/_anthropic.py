"""creditguard as an Anthropic SDK middleware: ``anthropic.Anthropic(middleware=[...])``.

The SDK runs its middleware chain once per HTTP attempt; the guard judges a
call on its first attempt only (attempts share the SDK's idempotency key) and
rewrites every attempt the same way. A refusal raises
:class:`~creditguard.CreditsExhausted`, which the SDK neither wraps nor retries.
Get one with :meth:`BudgetGuard.anthropic_middleware`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anthropic
from cachetools import TTLCache

from ._body import usage_from_body
from .costs import cost_from_usage
from .errors import CreditsExhausted

if TYPE_CHECKING:
    from .guard import BudgetGuard, Reservation
    from .policy import Decision

__all__ = ["GuardMiddleware"]


class GuardMiddleware(anthropic.Middleware):
    """Guards ``messages.create`` / ``messages.stream`` calls of an Anthropic client."""

    def __init__(self, guard: BudgetGuard, *, credential: str | None = None) -> None:
        self.guard = guard
        self.credential = credential
        self._decided: TTLCache[str, Decision] = TTLCache(maxsize=1024, ttl=600)

    def __repr__(self) -> str:
        return f"GuardMiddleware({self.guard!r})"

    # -- the pure steps ------------------------------------------------------

    def _model(self, request: Any) -> str | None:
        """The model of a Messages call, None for any other request."""
        if request.method.upper() != "POST" or not str(request.url).endswith("/messages"):
            return None
        body = request.json
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None

    def _key(self, request: Any) -> str | None:
        key = getattr(request.options, "idempotency_key", None)
        return key if isinstance(key, str) else None

    def _apply(self, request: Any, decision: Decision) -> Any:
        decision = decision.applied  # shadow mode: neither refused nor rewritten
        if decision.action == "refuse":
            raise CreditsExhausted(decision)
        if decision.action == "downgrade" and decision.model is not None:
            return request.copy(body={**request.json, "model": decision.model})
        return request

    def _finish(self, request: Any, reservation: Reservation | None, response: Any) -> None:
        if reservation is None:
            return
        if not 200 <= response.status_code < 300:
            reservation.release()
            return
        cost = None
        if not request.stream:  # a whole JSON body: its usage is there
            usage = usage_from_body(response.http_response.read())
            cost = cost_from_usage(
                usage, self.guard.pricing.price(reservation.decision.applied.model)
            )
        reservation.settle(cost)  # a stream's cost is not seen here: its estimate

    # -- sync and async shells ------------------------------------------------

    def handle(self, request: Any, call_next: Callable[[Any], Any]) -> Any:
        model = self._model(request)
        if model is None:
            return call_next(request)
        key = self._key(request)
        decision = self._decided.get(key) if key and request.retries_taken else None
        reservation = None
        if decision is None:
            reservation = self.guard.reserve(model, credential=self.credential)
            decision = reservation.decision
            if key:
                self._decided[key] = decision
        request = self._apply(request, decision)
        try:
            response = call_next(request)
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise
        self._finish(request, reservation, response)
        return response

    async def handle_async(self, request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        model = self._model(request)
        if model is None:
            return await call_next(request)
        key = self._key(request)
        decision = self._decided.get(key) if key and request.retries_taken else None
        reservation = None
        if decision is None:
            reservation = await self.guard.areserve(model, credential=self.credential)
            decision = reservation.decision
            if key:
                self._decided[key] = decision
        request = self._apply(request, decision)
        try:
            response = await call_next(request)
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise
        self._finish(request, reservation, response)
        return response
