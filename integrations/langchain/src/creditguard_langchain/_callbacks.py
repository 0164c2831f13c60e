"""Callback handlers: refuse a model run before it starts, account for it when it ends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from creditguard import BudgetGuard

from ._core import (
    Ask,
    Runs,
    already_judged,
    check_estimate,
    check_guard,
    max_tokens,
    run_model,
    text_size,
)

__all__ = ["AsyncCreditGuardCallbackHandler", "CreditGuardCallbackHandler"]


class _Guarding:
    """What both handlers share: everything but asking the guard."""

    raise_error = True

    def __init__(
        self,
        guard: BudgetGuard,
        *,
        credential: str | None = None,
        estimate: float | None = None,
    ) -> None:
        self.guard = check_guard(guard)
        self._credential = credential
        self._estimate = check_estimate(estimate)
        self._runs = Runs(self.guard)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.guard!r})"  # never the credential

    @property
    def in_flight(self) -> int:
        """Runs started and not yet ended (each holds its estimate)."""
        return len(self._runs)

    def _ask(
        self,
        serialized: Mapping[str, Any] | None,
        texts: Iterable[BaseMessage | str],
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> Ask | None:
        """What to ask the guard about a run; None for a run judged elsewhere."""
        params = kwargs.get("invocation_params")
        if not isinstance(params, Mapping):
            params = {}
        if already_judged(params, metadata):
            return None
        model = run_model(params, metadata, serialized)
        if self._estimate is not None:
            return Ask(model, self._estimate)
        limit = max_tokens(params, metadata)
        return Ask(model, None, text_size(texts), limit)

    def _ended(self, response: LLMResult, run_id: UUID) -> None:
        self._runs.ended(run_id, response)

    def _failed(self, run_id: UUID, error: BaseException, kwargs: Mapping[str, Any]) -> None:
        response = kwargs.get("response")
        result = response if isinstance(response, LLMResult) else None
        self._runs.failed(run_id, result, error)


class CreditGuardCallbackHandler(_Guarding, BaseCallbackHandler):
    """Asks a :class:`creditguard.BudgetGuard` before every LLM / chat-model run.

    ``on_chat_model_start`` / ``on_llm_start`` read the run's model (from
    ``invocation_params``, else its ``ls_model_name`` metadata) and reserve the
    call's estimate; on refuse they raise :class:`creditguard.CreditsExhausted`
    (``raise_error = True``), before any request is sent. ``on_llm_end`` settles
    the run with its real cost: ``llm_output["token_usage"]["cost"]`` (OpenRouter
    through ChatOpenAI), else token usage x the guard's prices, else the
    estimate. ``on_llm_error`` releases the hold when the error shows nothing
    was billed (a connect error, a provider's error status); a timeout, a
    cancellation or a dropped connection charges the estimate, and a stream
    cut short after output is charged what it showed.

    A callback can refuse but cannot change the model: at the downgrade tier the
    decision is logged and the call goes ahead with the requested model. Use
    :class:`GuardedChatModel` or :class:`CreditGuardMiddleware` to downgrade.

    ``credential`` is the key the calls are judged on (e.g. a per-user key);
    None uses the guard's source's own key. ``estimate`` fixes what each call
    holds; None reckons it from the prompt, ``max_tokens`` and the guard's
    prices, else the guard's estimate.

    Works in sync and async code (LangChain runs sync handlers in a thread there).
    Runs of a :class:`GuardedChatModel`, and model calls inside
    :class:`CreditGuardMiddleware`, are left alone: they are judged already.
    """

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        ask = self._ask(serialized, (m for batch in messages for m in batch), metadata, kwargs)
        if ask is not None:
            reservation = self.guard.reserve(ask.model, credential=self._credential, **ask.sizes())
            self._runs.opened(run_id, ask, reservation)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        ask = self._ask(serialized, prompts, metadata, kwargs)
        if ask is not None:
            reservation = self.guard.reserve(ask.model, credential=self._credential, **ask.sizes())
            self._runs.opened(run_id, ask, reservation)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._ended(response, run_id)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._failed(run_id, error, kwargs)


class AsyncCreditGuardCallbackHandler(_Guarding, AsyncCallbackHandler):
    """:class:`CreditGuardCallbackHandler` for async code (``ainvoke``,
    ``astream``, ``abatch``): asks the guard without blocking the event loop.

    Only for async calls: LangChain runs an async handler of a *sync* call in a
    loop of its own and swallows what it raises, so it could not refuse there.
    The sync handler serves both.
    """

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        ask = self._ask(serialized, (m for batch in messages for m in batch), metadata, kwargs)
        if ask is not None:
            reservation = await self.guard.areserve(
                ask.model, credential=self._credential, **ask.sizes()
            )
            self._runs.opened(run_id, ask, reservation)

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        ask = self._ask(serialized, prompts, metadata, kwargs)
        if ask is not None:
            reservation = await self.guard.areserve(
                ask.model, credential=self._credential, **ask.sizes()
            )
            self._runs.opened(run_id, ask, reservation)

    async def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._ended(response, run_id)

    async def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._failed(run_id, error, kwargs)
