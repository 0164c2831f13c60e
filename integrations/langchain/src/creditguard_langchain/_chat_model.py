"""GuardedChatModel: a chat model that asks the guard and runs the model the verdict names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from creditguard import BudgetGuard, ConfigError, Reservation
from creditguard.costs import Price

from ._core import (
    GUARDED_TYPE,
    JUDGED,
    Models,
    Tally,
    as_chunk,
    check_estimate,
    check_guard,
    ls_params,
    max_tokens,
    message_cost,
    pick,
    sizes,
    text_size,
)

__all__ = ["GuardedChatModel"]

_Runner = Runnable[LanguageModelInput, BaseMessage]


def _config(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
) -> RunnableConfig:
    """The inner call's config: marked as judged already, and a child run of
    ours when LangChain gave us our run (as ``get_child()`` of a chain run does)."""
    config: RunnableConfig = {"metadata": {JUDGED: True}}
    if run_manager is not None:
        child = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
        child.set_handlers(run_manager.inheritable_handlers)
        child.add_tags(run_manager.inheritable_tags)
        child.add_metadata(run_manager.inheritable_metadata)
        config["callbacks"] = child
    return config


class GuardedChatModel(BaseChatModel):
    """A chat model that asks a :class:`creditguard.BudgetGuard` before every
    call and runs the model the verdict names.

    ``models`` maps model names to LangChain chat models (or is a function from
    a model name to a chat model, called once per name); ``model`` is the name
    calls ask for (default: the mapping's first). Before each call the guard
    decides on ``model`` and ``credential`` (None: the guard's source's own
    key):

    - refuse: :class:`creditguard.CreditsExhausted` is raised, no model is called;
    - downgrade: the policy's cheaper model runs, taken from ``models`` (when
      ``models`` has none for it, the requested model runs and a warning is logged);
    - allow / warn: the requested model runs.

    The call's estimate is held while it runs, then settled with its reported
    cost (``token_usage.cost``, as OpenRouter reports it through ChatOpenAI),
    else its token usage x the guard's prices, else the estimate; a failed call
    is released when its error shows nothing was billed, else charged its
    estimate (a timeout, a cancellation: maybe billed). ``estimate`` fixes what
    a call holds (None: reckoned from the prompt, ``max_tokens`` and prices,
    else the guard's estimate).

    It is a LangChain chat model: ``invoke``, ``ainvoke``, ``stream``,
    ``astream``, ``batch``, ``abatch``, callbacks, ``bind_tools`` (binds the
    tools to whichever model runs) and ``with_structured_output`` all work, and
    each call is judged on its own.

    Give the inner models plain HTTP clients: under ``guard.client()`` a call
    would be judged (and charged) twice.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: BudgetGuard = Field(exclude=True, repr=False)
    models: Mapping[str, BaseChatModel] | Callable[[str], BaseChatModel | None] = Field(
        exclude=True, repr=False
    )
    model: str
    credential: SecretStr | None = Field(default=None, repr=False)
    estimate: float | None = None

    _table: Models = PrivateAttr()
    _tools: tuple[list[Any], dict[str, Any]] | None = PrivateAttr(default=None)
    _bound: dict[str, _Runner] = PrivateAttr(default_factory=dict)

    def __init__(
        self,
        guard: BudgetGuard,
        models: Mapping[str, BaseChatModel] | Callable[[str], BaseChatModel | None],
        *,
        model: str | None = None,
        credential: str | None = None,
        estimate: float | None = None,
        **kwargs: Any,
    ) -> None:
        check_guard(guard)
        check_estimate(estimate)
        table = Models(models)
        if model is None and isinstance(models, Mapping) and models:
            model = next(iter(models))
        if not isinstance(model, str) or not model:
            raise ConfigError(
                "model", model, "the model name calls ask for (required with a models function)"
            )
        if isinstance(models, Mapping) and model not in models:
            raise ConfigError("model", model, f"one of the models given ({', '.join(models)})")
        fields: dict[str, Any] = {
            "guard": guard,
            "models": models,
            "model": model,
            "credential": credential,
            "estimate": estimate,
        }
        super().__init__(**fields, **kwargs)
        self._table = table

    # -- what LangChain asks of a chat model ----------------------------------

    @property
    def _llm_type(self) -> str:
        return GUARDED_TYPE

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The same guarded model with ``tools`` bound to whichever model runs."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.model_copy()
        bound._tools = (list(tools), kwargs)
        bound._bound = {}
        return bound

    # -- the steps around a call ----------------------------------------------

    def _requested(self) -> BaseChatModel:
        found = self._table.get(self.model)
        if found is None:
            raise ConfigError(
                f"models({self.model!r})", None, "a chat model for the requested model"
            )
        return found

    def _ask(
        self, requested: BaseChatModel, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """The credential the call is judged on, and what to tell the guard of
        its size (a fixed estimate, or the prompt and output limit)."""
        credential = None if self.credential is None else self.credential.get_secret_value()
        limit = max_tokens(kwargs, ls_params(requested))
        return credential, sizes(self.estimate, text_size(messages), limit)

    def _choose(
        self, reservation: Reservation, requested: BaseChatModel
    ) -> tuple[_Runner, Price | None]:
        """The runnable to call (tools bound) and the price of its model."""
        try:
            chosen = pick(reservation.decision, self._table)
            if chosen is None:
                name, chat_model = self.model, requested
            else:
                name, chat_model = reservation.decision.model or self.model, chosen
            runner: _Runner = chat_model
            if self._tools is not None:
                runner = self._bound.get(name) or self._bound.setdefault(
                    name, chat_model.bind_tools(self._tools[0], **self._tools[1])
                )
        except BaseException:
            reservation.release()
            raise
        return runner, self.guard.prices.price(name)

    # -- sync -----------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        requested = self._requested()
        credential, sized = self._ask(requested, messages, kwargs)
        with self.guard.reserve(self.model, credential=credential, **sized) as held:
            runner, price = self._choose(held, requested)
            message = runner.invoke(messages, _config(run_manager), stop=stop, **kwargs)
            held.settle(message_cost(message, price))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        requested = self._requested()
        credential, sized = self._ask(requested, messages, kwargs)
        held = self.guard.reserve(self.model, credential=credential, **sized)
        runner, price = self._choose(held, requested)
        tally, error = Tally(), None
        try:
            for message in runner.stream(messages, _config(run_manager), stop=stop, **kwargs):
                tally.add(message)
                yield ChatGenerationChunk(message=as_chunk(message))
        except BaseException as exc:  # timed out, cut off, closed early: maybe billed
            error = exc
            raise
        finally:
            tally.finish(held, price, error=error)

    # -- async ----------------------------------------------------------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        requested = self._requested()
        credential, sized = self._ask(requested, messages, kwargs)
        with await self.guard.areserve(self.model, credential=credential, **sized) as held:
            runner, price = self._choose(held, requested)
            message = await runner.ainvoke(messages, _config(run_manager), stop=stop, **kwargs)
            held.settle(message_cost(message, price))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        requested = self._requested()
        credential, sized = self._ask(requested, messages, kwargs)
        held = await self.guard.areserve(self.model, credential=credential, **sized)
        runner, price = self._choose(held, requested)
        tally, error = Tally(), None
        try:
            async for message in runner.astream(
                messages, _config(run_manager), stop=stop, **kwargs
            ):
                tally.add(message)
                yield ChatGenerationChunk(message=as_chunk(message))
        except BaseException as exc:  # timed out, cancelled, closed early: maybe billed
            error = exc
            raise
        finally:
            tally.finish(held, price, error=error)
