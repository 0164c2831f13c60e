"""The steps every LangChain hook shares, with no I/O of their own.

Which model a run asks for, what to hold for it, which model runs after the
guard's verdict, what the run cost, and the reservations of the runs in flight.
The callback handlers, the chat-model wrapper and the agent middleware are thin
shells around these: they ask the guard (``reserve`` or ``areserve``) and call
the model, sync or async.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias
from uuid import UUID

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import LLMResult

from creditguard import BudgetGuard, ConfigError, CreditsExhausted
from creditguard.costs import Price, cost_from_usage

if TYPE_CHECKING:
    from creditguard import Decision, Reservation

__all__ = [
    "GUARDED_TYPE",
    "JUDGED",
    "Ask",
    "Models",
    "ModelsArg",
    "Runs",
    "Tally",
    "already_judged",
    "as_chunk",
    "check_estimate",
    "check_guard",
    "estimate",
    "judged",
    "ls_params",
    "max_tokens",
    "message_cost",
    "messages_cost",
    "model_of",
    "pick",
    "result_cost",
    "run_model",
    "sizes",
    "text_size",
]

log = logging.getLogger("creditguard.langchain")

GUARDED_TYPE = "creditguard-guarded"
"""``_llm_type`` of :class:`GuardedChatModel`: the callback handlers leave its runs
alone (it asks the guard itself)."""

JUDGED = "creditguard_judged"
"""Run metadata marking a model call that creditguard has judged already (the
wrapper's inner call): the callback handlers leave it alone."""

_judged: ContextVar[bool] = ContextVar("creditguard_langchain_judged", default=False)

ModelsArg: TypeAlias = "Mapping[str, BaseChatModel] | Callable[[str], BaseChatModel | None]"

_MODEL_KEYS = ("model", "model_name", "model_id", "deployment_name")
_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens")


# -- arguments ------------------------------------------------------------------


def check_guard(guard: object) -> BudgetGuard:
    if not isinstance(guard, BudgetGuard):
        raise ConfigError("guard", guard, "a creditguard.BudgetGuard")
    return guard


def check_estimate(value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError("estimate", value, "None or a finite number >= 0 (credits per call)")
    return float(value)


# -- runs creditguard has judged already ----------------------------------------


@contextlib.contextmanager
def judged() -> Iterator[None]:
    """Model calls made inside are judged already (by the agent middleware): the
    callback handlers leave them alone. Not for use around a ``yield``."""
    token = _judged.set(True)
    try:
        yield
    finally:
        _judged.reset(token)


def already_judged(params: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> bool:
    return bool(
        params.get("_type") == GUARDED_TYPE
        or (metadata is not None and metadata.get(JUDGED))
        or _judged.get()
    )


# -- what a run asks for --------------------------------------------------------


def _name(source: Mapping[str, Any] | None, keys: Iterable[str]) -> str | None:
    if not source:
        return None
    for key in keys:
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def run_model(
    params: Mapping[str, Any],
    metadata: Mapping[str, Any] | None,
    serialized: Mapping[str, Any] | None,
) -> str | None:
    """The model a LangChain run asks for, from what its start callback shows:
    ``invocation_params`` (``model``, ``model_name``, ...), then the run's
    ``ls_model_name`` metadata, then the serialized constructor arguments."""
    kwargs = serialized.get("kwargs") if serialized else None
    return (
        _name(params, _MODEL_KEYS)
        or _name(metadata, ("ls_model_name",))
        or _name(kwargs if isinstance(kwargs, Mapping) else None, _MODEL_KEYS)
    )


def ls_params(model: object) -> Mapping[str, Any]:
    """A chat model's LangSmith parameters (``ls_model_name``, ``ls_max_tokens``...)."""
    get = getattr(model, "_get_ls_params", None)
    if not callable(get):
        return {}
    try:
        params = get()
    except Exception:
        return {}
    return params if isinstance(params, Mapping) else {}


def model_of(model: object) -> str | None:
    """The model name a chat model object calls."""
    name = _name(ls_params(model), ("ls_model_name",))
    if name is not None:
        return name
    for attr in _MODEL_KEYS:
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _whole(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def max_tokens(*sources: Mapping[str, Any] | None) -> int | None:
    """The completion-token limit of a call, from its parameters or its
    ``ls_max_tokens`` metadata (the first source that has one)."""
    for source in sources:
        if not source:
            continue
        for key in (*_LIMIT_KEYS, "ls_max_tokens"):
            limit = _whole(source.get(key))
            if limit is not None:
                return limit
    return None


def text_size(items: Iterable[BaseMessage | str]) -> int:
    """Characters of prompt text (a rough measure: ~4 characters a token)."""
    size = 0
    for item in items:
        content: object = item if isinstance(item, str) else item.content
        size += len(content) if isinstance(content, str) else len(str(content))
    return size


def sizes(fixed: float | None, chars: int, limit: int | None) -> dict[str, Any]:
    """What to tell ``guard.reserve`` about a call: a fixed estimate when one was
    given, else the prompt's size and output limit, so the guard prices the call
    (and each downgrade target) from its price lists and learned costs."""
    if fixed is not None:
        return {"estimate": fixed}
    return {"prompt_chars": chars, "max_tokens": limit}


def estimate(guard: BudgetGuard, model: str | None, chars: int, limit: int | None) -> float | None:
    """What to hold for a call, as the transport reckons it: the prompt (~4
    characters a token) and ``limit`` completion tokens at the model's prices;
    with no limit, the prompt plus the guard's estimate. None (the guard's
    estimate) when no price is configured for the model."""
    pricing = guard.prices
    if not pricing:
        return None
    price = pricing.price(model)
    if price is None:
        return None
    prompt = chars / 4
    if limit is None:
        return price.prompt * prompt + guard.estimate
    return price.of(prompt, limit)


class Ask(NamedTuple):
    """What to ask the guard about one run."""

    model: str | None
    estimate: float | None
    chars: int | None = None  # the prompt's size, when the guard prices the run
    limit: int | None = None  # its output limit

    def sizes(self) -> dict[str, Any]:
        if self.chars is None:
            return {"estimate": self.estimate}
        return {"prompt_chars": self.chars, "max_tokens": self.limit}


# -- the verdict ----------------------------------------------------------------


class Models:
    """The chat models a hook may run, by model name: a mapping, or a function
    from a model name to a chat model (None: no model for that name), whose
    answers are kept."""

    __slots__ = ("_lock", "_made", "_models")

    def __init__(self, models: ModelsArg | None) -> None:
        if models is not None and not isinstance(models, Mapping) and not callable(models):
            raise ConfigError(
                "models",
                models,
                "a mapping of model name -> chat model, or a function (model name) -> chat model",
            )
        if isinstance(models, Mapping):
            for name, model in models.items():
                if not isinstance(name, str) or not name:
                    raise ConfigError("models", name, "model names (non-empty strings)")
                if not isinstance(model, BaseChatModel):
                    raise ConfigError(f"models.{name}", model, "a LangChain chat model")
        self._models = models
        self._made: dict[str, BaseChatModel | None] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> BaseChatModel | None:
        models = self._models
        if name is None or models is None:
            return None
        if isinstance(models, Mapping):
            return models.get(name)
        with self._lock:
            if name in self._made:
                return self._made[name]
        made = models(name)
        if made is not None and not isinstance(made, BaseChatModel):
            raise ConfigError(f"models({name!r})", made, "a LangChain chat model or None")
        with self._lock:
            return self._made.setdefault(name, made)


def pick(decision: Decision, models: Models) -> BaseChatModel | None:
    """The model to run after ``decision``: raises :class:`CreditsExhausted` on
    refuse; on downgrade the cheaper model from ``models``; None: run the
    requested model (also when no model is configured for the cheaper one). In
    shadow mode (``Policy(enforce=False)``) nothing is refused or downgraded."""
    decision = decision.applied
    if decision.action == "refuse":
        raise CreditsExhausted(decision)
    if decision.action != "downgrade":
        return None
    target = decision.model
    chosen = models.get(target)
    if chosen is None:
        log.warning(
            "downgrade to %s not applied: no chat model is configured for it; %s runs",
            target,
            decision.requested_model,
        )
        return None
    log.debug("downgrade: %s runs instead of %s", target, decision.requested_model)
    return chosen


# -- what a run cost ------------------------------------------------------------


def message_cost(message: object, price: Price | None) -> float | None:
    """A message's reported ``token_usage.cost`` (OpenRouter through ChatOpenAI),
    else its token usage x ``price``; None when neither is known."""
    meta = getattr(message, "response_metadata", None)
    if isinstance(meta, Mapping):
        cost = cost_from_usage(meta.get("token_usage"), price)
        if cost is not None:
            return cost
    return cost_from_usage(getattr(message, "usage_metadata", None), price)


def messages_cost(messages: Iterable[object], price: Price | None) -> float | None:
    """The cost the first message that shows one reports (every choice of one
    call carries the call's whole usage)."""
    for message in messages:
        cost = message_cost(message, price)
        if cost is not None:
            return cost
    return None


def result_cost(result: LLMResult, price: Price | None) -> float | None:
    """What one run cost, from its ``llm_output["token_usage"]`` (``cost``, or
    tokens x ``price``), else from its generations' messages."""
    output = result.llm_output
    if isinstance(output, Mapping):
        cost = cost_from_usage(output.get("token_usage"), price)
        if cost is not None:
            return cost
    return messages_cost(
        (getattr(gen, "message", None) for gens in result.generations for gen in gens), price
    )


def _produced(result: LLMResult | None) -> bool:
    """Did a failed run produce output first (a stream cut short)?"""
    if result is None:
        return False
    for gens in result.generations:
        for gen in gens:
            message = getattr(gen, "message", None)
            if gen.text or (
                message is not None
                and (
                    getattr(message, "usage_metadata", None)
                    or getattr(message, "tool_call_chunks", None)
                    or getattr(message, "tool_calls", None)
                )
            ):
                return True
    return False


class Tally:
    """What a stream has shown so far: whether output came, and its usage."""

    __slots__ = ("cost", "produced", "usage")

    def __init__(self) -> None:
        self.produced = False
        self.cost: float | None = None
        self.usage: UsageMetadata | None = None

    def add(self, message: BaseMessage) -> None:
        self.produced = True
        token_usage = message.response_metadata.get("token_usage")
        cost = cost_from_usage(token_usage, None) if token_usage else None
        if cost is not None:
            self.cost = cost
        usage = getattr(message, "usage_metadata", None)
        if usage:
            self.usage = add_usage(self.usage, usage)

    def finish(
        self, reservation: Reservation, price: Price | None, *, error: BaseException | None
    ) -> None:
        """Settle the stream's reservation: with its reported cost, else its
        usage x ``price``, else its estimate. A stream that failed (``error``)
        before any output is settled as the reservation settles a call that
        raised (:func:`failed_call`); one cut short after output is charged
        (never free)."""
        if error is not None and not self.produced:
            failed_call(reservation, error)
            return
        cost = self.cost if self.cost is not None else cost_from_usage(self.usage, price)
        reservation.settle(cost)


def failed_call(reservation: Reservation, error: BaseException) -> None:
    """A call that raised ``error`` before any output: released when the error
    shows nothing was billed (a connect error, a provider's error status, a
    refusal), else charged its estimate (a timeout, a cancellation, a dropped
    connection: the provider may have billed it). The reservation's own rule,
    the one ``with guard.reserve(...)`` applies."""
    reservation.__exit__(type(error), error, error.__traceback__)


def as_chunk(message: BaseMessage) -> BaseMessageChunk:
    """A streamed message as a chunk (a model that cannot stream yields its
    whole answer as one message)."""
    if isinstance(message, BaseMessageChunk):
        return message
    if isinstance(message, AIMessage):
        return AIMessageChunk(**message.model_dump(exclude={"type"}))
    return AIMessageChunk(content=message.content, id=message.id)


# -- the runs a callback handler holds for --------------------------------------


class Runs:
    """The reservations of the model runs in flight, by run id, and what to do
    when each ends. Shared by the sync and async callback handlers."""

    __slots__ = ("_lock", "_open", "_told", "guard")

    def __init__(self, guard: BudgetGuard) -> None:
        self.guard = guard
        self._lock = threading.Lock()
        self._open: dict[UUID, tuple[Reservation, Price | None]] = {}
        self._told: set[str | None] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def opened(self, run_id: UUID, ask: Ask, reservation: Reservation) -> None:
        """The guard's verdict on a run about to start: raise on refuse, log a
        downgrade (a callback cannot change the model), else remember it."""
        decision = reservation.decision.applied  # shadow mode: an allow
        if decision.action == "refuse":
            raise CreditsExhausted(decision)
        if decision.action == "downgrade":
            level = logging.DEBUG if ask.model in self._told else logging.WARNING
            self._told.add(ask.model)
            log.log(
                level,
                "downgrade to %s not applied: a callback handler cannot change the model, "
                "%s runs (GuardedChatModel or CreditGuardMiddleware can downgrade)",
                decision.model,
                ask.model,
            )
        price = self.guard.prices.price(ask.model)
        with self._lock:
            self._open[run_id] = (reservation, price)

    def _take(self, run_id: UUID) -> tuple[Reservation, Price | None] | None:
        with self._lock:
            return self._open.pop(run_id, None)

    def ended(self, run_id: UUID, result: LLMResult) -> None:
        """Settle with the run's cost (reported, or tokens x prices), else its estimate."""
        held = self._take(run_id)
        if held is not None:
            reservation, price = held
            reservation.settle(result_cost(result, price))

    def failed(self, run_id: UUID, result: LLMResult | None, error: BaseException) -> None:
        """A run that raised ``error``: a stream cut short after output is
        charged what it showed, like the transport does; else the run is
        released only when ``error`` shows nothing was billed (:func:`failed_call`:
        a timed-out or cancelled call may have been)."""
        held = self._take(run_id)
        if held is None:
            return
        reservation, price = held
        if _produced(result):
            assert result is not None
            reservation.settle(result_cost(result, price))
        else:
            failed_call(reservation, error)
