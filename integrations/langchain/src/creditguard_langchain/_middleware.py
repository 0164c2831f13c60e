"""CreditGuardMiddleware: the guard in a ``langchain`` 1.x agent's model calls.

Needs ``langchain`` (the ``agents`` extra): this module imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel

from creditguard import BudgetGuard, Reservation
from creditguard.costs import Price

from ._core import (
    Models,
    check_estimate,
    check_guard,
    judged,
    ls_params,
    max_tokens,
    messages_cost,
    model_of,
    pick,
    sizes,
    text_size,
)

__all__ = ["CreditGuardMiddleware"]

_Request = ModelRequest[Any]
_Response = ModelResponse[Any]


class CreditGuardMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Asks a :class:`creditguard.BudgetGuard` before each model call of a
    ``langchain.agents.create_agent`` agent.

    The guard decides on the request's model (its name, as the chat model
    reports it) and ``credential`` (None: the guard's source's own key):

    - refuse: :class:`creditguard.CreditsExhausted` is raised, the model is not called;
    - downgrade: the call runs on ``models[cheaper model]`` via
      ``request.override(model=...)`` (with no model for it, the requested
      model runs and a warning is logged);
    - allow / warn: the call runs unchanged.

    ``models`` maps model names to chat models, or is a function from a model
    name to a chat model (called once per name). The call's estimate is held
    while it runs, then settled with its reported cost, else token usage x the
    guard's prices, else the estimate; a failed call is released when its
    error shows nothing was billed, else charged its estimate.
    ``estimate`` fixes what each call holds.

    Model calls made inside are marked as judged: a
    :class:`CreditGuardCallbackHandler` on the same agent leaves them alone.
    """

    def __init__(
        self,
        guard: BudgetGuard,
        models: Mapping[str, BaseChatModel] | Callable[[str], BaseChatModel | None] | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
    ) -> None:
        super().__init__()
        self.guard = check_guard(guard)
        self._models = Models(models)
        self._credential = credential
        self._estimate = check_estimate(estimate)

    def __repr__(self) -> str:
        return f"CreditGuardMiddleware({self.guard!r})"  # never the credential

    def _ask(self, request: _Request) -> tuple[str | None, dict[str, Any]]:
        """The model the request asks for, and what to tell the guard of its size."""
        model = model_of(request.model)
        if self._estimate is not None:
            return model, {"estimate": self._estimate}
        messages = request.messages
        if request.system_message is not None:
            messages = [request.system_message, *messages]
        limit = max_tokens(request.model_settings, ls_params(request.model))
        return model, sizes(None, text_size(messages), limit)

    def _apply(
        self, held: Reservation, request: _Request, model: str | None
    ) -> tuple[_Request, Price | None]:
        """The request to run after the verdict (raises on refuse), and the
        price of the model it runs."""
        chosen = pick(held.decision, self._models)
        if chosen is None:
            return request, self.guard.prices.price(model)
        return request.override(model=chosen), self.guard.prices.price(held.decision.model)

    def wrap_model_call(
        self,
        request: _Request,
        handler: Callable[[_Request], _Response],
    ) -> _Response:
        model, sized = self._ask(request)
        with self.guard.reserve(model, credential=self._credential, **sized) as held:
            request, price = self._apply(held, request, model)
            with judged():
                response = handler(request)
            held.settle(messages_cost(response.result, price))
        return response

    async def awrap_model_call(
        self,
        request: _Request,
        handler: Callable[[_Request], Awaitable[_Response]],
    ) -> _Response:
        model, sized = self._ask(request)
        held = await self.guard.areserve(model, credential=self._credential, **sized)
        with held:
            request, price = self._apply(held, request, model)
            with judged():
                response = await handler(request)
            held.settle(messages_cost(response.result, price))
        return response
