"""creditguard as an Anthropic SDK middleware: ``anthropic.Anthropic(middleware=[...])``.

The SDK runs its middleware chain once per HTTP attempt. The guard judges a
call on its first attempt (attempts share the SDK's idempotency key) and
rewrites every attempt the same way; each retry holds the call's estimate
again, and is refused when that hold would cross the refuse floor. A refusal
raises :class:`~creditguard.CreditsExhausted`, which the SDK neither wraps nor
retries. The call is estimated, observed and settled by the transport's own
core (:class:`creditguard._transport.Core`): prices x ``max_tokens`` and the
prompt's size, a JSON body's usage, a stream's ``message_start`` /
``message_delta`` usage; an attempt cut off after it was sent is charged.
Get one with :meth:`BudgetGuard.anthropic_middleware`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anthropic
from cachetools import TTLCache

from ._transport import Core, Plan
from .costs import Price
from .errors import CreditsExhausted
from .httpx2 import _LIB

if TYPE_CHECKING:
    from .guard import BudgetGuard
    from .ledger import Hold
    from .policy import Decision

__all__ = ["GuardMiddleware"]


class GuardMiddleware(anthropic.Middleware):
    """Guards ``messages.create`` / ``messages.stream`` calls of an Anthropic client."""

    def __init__(self, guard: BudgetGuard, *, credential: str | None = None) -> None:
        self.guard = guard
        self.credential = credential
        self._core = Core(guard, _LIB)
        # first attempts' decisions and estimates, by idempotency key, for retries
        self._decided: TTLCache[str, tuple[Decision, float, Price | None]] = TTLCache(
            maxsize=1024, ttl=900
        )

    def __repr__(self) -> str:
        return f"GuardMiddleware({self.guard!r})"

    # -- the pure steps ------------------------------------------------------

    def _plan(self, request: Any) -> Plan | None:
        """The plan of a Messages call (its model and estimate), None for any other request."""
        if request.method.upper() != "POST" or not str(request.url).endswith("/messages"):
            return None
        body = request.json
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return None
        guard = self.guard
        text = None
        if guard.prices.any:  # the prompt's size counts only at a known price
            try:
                text = json.dumps(body, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError):
                text = None
        plan = Plan(
            self.credential, "", model, None, text, None, None, "/v1/messages", guard.estimate
        )
        self._core._estimate(plan, False)  # priced, learned, or the guard's estimate
        return plan

    def _priced(self, plan: Plan) -> None:
        """Wait for the price lists the plan's estimate needs (loaded lazily)."""
        if plan.pending:
            self._core.load_prices(plan)

    async def _apriced(self, plan: Plan) -> None:
        if plan.pending:
            await self._core.aload_prices(plan)

    def _runs(self, plan: Plan, decision: Decision) -> None:
        """A downgrade runs (and is settled as) its target, holding its estimate."""
        if decision.action == "downgrade" and decision.enforced and decision.model:
            if decision.model != plan.model:
                plan.model = decision.model
                plan.price = self.guard.prices.price(decision.model)
            plan.estimate = decision.held(plan.estimate)

    def _key(self, request: Any) -> str | None:
        key = getattr(request.options, "idempotency_key", None)
        return key if isinstance(key, str) else None

    def _first(self, request: Any, plan: Plan) -> tuple[Decision, float, Price | None] | None:
        key = self._key(request)
        return self._decided.get(key) if key and request.retries_taken else None

    def _decided_now(self, request: Any, plan: Plan, decision: Decision) -> None:
        key = self._key(request)
        if key and decision.action != "refuse" and not request.retries_taken:
            self._decided[key] = (decision, plan.estimate, plan.price)

    def _apply(self, request: Any, decision: Decision) -> Any:
        decision = decision.applied  # shadow mode: neither refused nor rewritten
        if decision.action == "refuse":
            raise CreditsExhausted(decision)
        if decision.action == "downgrade" and decision.model is not None:
            body = {**request.json, "model": decision.model}
            if decision.max_tokens is not None:  # clamped to what fits
                body["max_tokens"] = decision.max_tokens
            return request.copy(body=body)
        return request

    def _finish(self, plan: Plan, decision: Decision, hold: Hold | None, response: Any) -> None:
        """Watch the response pass: a JSON body's or a stream's usage settles
        the hold, an error status releases it, an out-of-credit 400 marks the
        credential exhausted (:meth:`Core.observe`)."""
        self._core.observe(plan, decision, hold, response.http_response)

    # -- sync and async shells ------------------------------------------------

    def handle(self, request: Any, call_next: Callable[[Any], Any]) -> Any:
        plan = self._plan(request)
        if plan is None:
            return call_next(request)
        guard = self.guard
        first = self._first(request, plan)
        if first is None:
            self._priced(plan)
            decision, hold = guard._hold(
                plan.model,
                plan.credential,
                plan.estimate,
                refuse_reason=plan.refuse,
                estimator=plan.estimator,
            )
            self._runs(plan, decision)
            self._decided_now(request, plan, decision)
        else:
            plan.estimate, plan.price = first[1], first[2]
            decision, hold = guard._rehold(first[0], plan.credential, plan.estimate)
        request = self._apply(request, decision)
        try:
            response = call_next(request)
        except BaseException as exc:  # sent or not? see Core.failed
            self._core.failed(plan, hold, exc)
            raise
        self._finish(plan, decision, hold, response)
        return response

    async def handle_async(self, request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        plan = self._plan(request)
        if plan is None:
            return await call_next(request)
        guard = self.guard
        first = self._first(request, plan)
        if first is None:
            await self._apriced(plan)
            decision, hold = await guard._ahold(
                plan.model,
                plan.credential,
                plan.estimate,
                refuse_reason=plan.refuse,
                estimator=plan.estimator,
            )
            self._runs(plan, decision)
            self._decided_now(request, plan, decision)
        else:
            plan.estimate, plan.price = first[1], first[2]
            decision, hold = await guard._arehold(first[0], plan.credential, plan.estimate)
        request = self._apply(request, decision)
        try:
            response = await call_next(request)
        except BaseException as exc:  # sent or not? see Core.failed
            self._core.failed(plan, hold, exc)
            raise
        self._finish(plan, decision, hold, response)
        return response
