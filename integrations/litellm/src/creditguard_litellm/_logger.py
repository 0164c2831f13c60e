"""CreditGuardLogger: the guard as a LiteLLM proxy callback.

The proxy runs ``async_pre_call_hook`` before it routes a request: the hook asks
the guard, raises :class:`CreditGuardRefusal` (an HTTP 402 to the client) on
refuse and rewrites ``data["model"]`` on downgrade, holding the call's estimate.
litellm's success and failure events then settle or release that hold, by the
request's ``litellm_call_id``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias
from uuid import uuid4

from litellm.exceptions import Timeout as LitellmTimeout
from litellm.integrations.custom_logger import CustomLogger

from creditguard import BudgetGuard, ConfigError, Decision, Reservation
from creditguard.costs import Price, cost_from_usage

from ._errors import CreditGuardRefusal
from ._sessions import _check_guard

__all__ = ["JUDGED_CALL_TYPES", "CreditGuardLogger"]

log = logging.getLogger("creditguard.litellm")

JUDGED_CALL_TYPES: frozenset[str] = frozenset(
    (
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "responses",
        "aresponses",
        "anthropic_messages",
        "aanthropic_messages",
        "generate_content",
        "agenerate_content",
        "generate_content_stream",
        "agenerate_content_stream",
        "image_generation",
        "aimage_generation",
        "image_edit",
        "aimage_edit",
    )
)
"""The proxy call types the hook judges (generation calls); others pass untouched."""

ModelsArg: TypeAlias = "Mapping[str, str] | Callable[[str], str | None]"
CredentialArg: TypeAlias = "str | Callable[[Any, Mapping[str, Any]], str | None] | None"

_PROMPT_KEYS = ("messages", "prompt", "input", "contents")
_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_RELEASED_KEPT = 1024


def _whole(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _money(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _prompt_chars(data: Mapping[str, Any]) -> int:
    """Characters of a request's prompt (messages, prompt, input), as JSON: a
    rough measure, ~4 characters a token, as the transport reckons it."""
    for key in _PROMPT_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            return len(value)
        try:
            return len(json.dumps(value, ensure_ascii=False, default=str))
        except (TypeError, ValueError):
            return len(str(value))
    return 0


def _get(obj: object, name: str) -> object:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _call_id(kwargs: Mapping[str, Any]) -> str | None:
    """litellm's id of a call, as its events carry it."""
    call_id = kwargs.get("litellm_call_id")
    if not call_id:
        call_id = _get(kwargs.get("litellm_params"), "litellm_call_id")
    return call_id if isinstance(call_id, str) and call_id else None


class _Held(NamedTuple):
    reservation: Reservation
    credential: str | None
    price: Price | None
    since: float


class CreditGuardLogger(CustomLogger):
    """A LiteLLM ``CustomLogger`` that asks ``guard`` before each proxy call.

    In the proxy's ``async_pre_call_hook``: refuse raises
    :class:`CreditGuardRefusal` (the proxy answers HTTP 402, naming the rule but
    no figures), downgrade rewrites ``data["model"]`` to the policy's cheaper
    model, allow and warn let the request go as it came. The model judged is
    ``data["model"]``, the proxy's model name: write the policy's ``downgrade``
    map (and ``pricing``) in those names.

    ``models`` maps the model the guard downgrades to onto the proxy model name
    to run (a mapping, or a function returning None for "none"); without it the
    guard's name is written as it is. A downgrade with no model to run is logged
    and the requested model runs.

    ``credential`` says whose credits a call is judged on: None (the guard's
    source's own key), a string, or a function ``(user_api_key_dict, data)`` →
    credential (say, the team id, with a ``FixedBudget(per_credential=True)``).
    ``estimate`` fixes what a call holds; otherwise the prompt (~4 characters a
    token) and ``max_tokens`` at the guard's ``pricing``, else the guard's
    ``estimate``.

    While the call runs its estimate is held; litellm's success event settles
    it with the cost the provider reported (``usage.cost``), else litellm's
    ``response_cost``, else the usage tokens x the guard's prices, else the
    estimate. A failure event, or the proxy's ``async_post_call_failure_hook``,
    releases it, unless the call timed out (``litellm.Timeout``: the provider
    may have billed it), which charges its estimate. Calls are matched by
    ``litellm_call_id`` (the hook sets one in ``data`` when it is missing).

    ``async_pre_call_hook`` is a proxy hook: ``litellm.completion`` in your own
    code never calls it (guard those calls with
    :func:`~creditguard_litellm.guard_litellm`).
    """

    def __init__(
        self,
        guard: BudgetGuard,
        models: ModelsArg | None = None,
        *,
        credential: CredentialArg = None,
        estimate: float | None = None,
        call_types: frozenset[str] | set[str] | tuple[str, ...] = JUDGED_CALL_TYPES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.guard = _check_guard(guard)
        if models is not None and not isinstance(models, Mapping) and not callable(models):
            raise ConfigError(
                "models",
                models,
                "None, a mapping of model name -> proxy model name, or a function of a "
                "model name returning one (or None)",
            )
        if isinstance(models, Mapping):
            for name, target in models.items():
                if not isinstance(name, str) or not isinstance(target, str) or not target:
                    raise ConfigError(f"models.{name}", target, "a proxy model name (a string)")
        self.models = models
        if credential is not None and not isinstance(credential, str) and not callable(credential):
            raise ConfigError(
                "credential",
                "<redacted>",
                "None, a credential string, or a function (user_api_key_dict, data) -> str | None",
            )
        self._credential = credential
        if estimate is not None and (_money(estimate) is None):
            raise ConfigError("estimate", estimate, "None or a finite number >= 0")
        self.estimate = None if estimate is None else float(estimate)
        if isinstance(call_types, str) or not all(isinstance(c, str) for c in call_types):
            raise ConfigError("call_types", call_types, "a set of litellm call type names")
        self.call_types = frozenset(call_types)
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Held] = OrderedDict()
        self._released: OrderedDict[str, _Held] = OrderedDict()

    def __repr__(self) -> str:
        return f"<CreditGuardLogger {self.in_flight} call(s) in flight>"

    @property
    def in_flight(self) -> int:
        """How many judged calls have not ended yet. (Not ``__len__``: litellm
        tests callbacks for truth, and an idle logger must not read as none.)"""
        with self._lock:
            return len(self._open)

    # -- before the call ------------------------------------------------------

    def credential_of(self, user_api_key_dict: object, data: Mapping[str, Any]) -> str | None:
        """Whose credits a call is judged on (see ``credential``)."""
        chosen = self._credential
        if chosen is None or isinstance(chosen, str):
            return chosen
        value = chosen(user_api_key_dict, data)
        if value is not None and not isinstance(value, str):
            raise ConfigError("credential(...)", type(value).__name__, "a string or None")
        return value or None

    def estimate_of(self, model: str | None, data: Mapping[str, Any]) -> float | None:
        """What to hold for a call (None: the guard's estimate)."""
        if self.estimate is not None:
            return self.estimate
        pricing = self.guard.prices
        if not pricing:
            return None
        price = pricing.price(model)
        if price is None:
            return None
        prompt = _prompt_chars(data) / 4
        limit = next((n for k in _LIMIT_KEYS if (n := _whole(data.get(k))) is not None), None)
        if limit is None:
            return price.prompt * prompt + self.guard.estimate
        return price.of(prompt, limit)

    def sizes_of(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """What to tell the guard of a call: the fixed ``estimate``, else the
        prompt's size and output limit (the guard prices the call, and each
        downgrade target, from its price lists and learned costs)."""
        if self.estimate is not None:
            return {"estimate": self.estimate}
        limit = next((n for k in _LIMIT_KEYS if (n := _whole(data.get(k))) is not None), None)
        return {"prompt_chars": _prompt_chars(data), "max_tokens": limit}

    def target_of(self, decision: Decision) -> str | None:
        """The proxy model to run on a downgrade; None: no model for it."""
        target = decision.model
        models = self.models
        if target is None or models is None:
            return target
        chosen = models.get(target) if isinstance(models, Mapping) else models(target)
        if chosen is not None and not isinstance(chosen, str):
            raise ConfigError(f"models({target!r})", chosen, "a proxy model name or None")
        return chosen or None

    async def async_pre_call_hook(
        self,
        user_api_key_dict: Any,
        cache: Any,
        data: dict[str, Any],
        call_type: str,
    ) -> dict[str, Any] | None:
        """Judge one proxy request: raise on refuse, rewrite ``data["model"]`` on
        downgrade, and hold its estimate until it ends."""
        if call_type not in self.call_types:
            return None
        raw = data.get("model")
        model = raw if isinstance(raw, str) and raw else None
        credential = self.credential_of(user_api_key_dict, data)
        reservation = await self.guard.areserve(model, credential=credential, **self.sizes_of(data))
        decision = reservation.decision.applied  # shadow mode: an allow
        if decision.action == "refuse":
            raise CreditGuardRefusal(decision)
        runs = model
        if decision.action == "downgrade":
            target = self.target_of(decision)
            if target is None:
                log.warning(
                    "downgrade to %s not applied: no proxy model is configured for it; %s runs",
                    decision.model,
                    model,
                )
            else:
                log.debug("downgrade: %s runs instead of %s", target, model)
                data["model"] = runs = target
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            call_id = data["litellm_call_id"] = str(uuid4())
        price = self.guard.prices.price(runs)
        self._hold(call_id, _Held(reservation, credential, price, time.monotonic()))
        return data

    def _hold(self, call_id: str, held: _Held) -> None:
        expired: list[_Held] = []
        horizon = time.monotonic() - float(getattr(self.guard.ledger, "hold_timeout", 600.0))
        with self._lock:
            # calls whose end never came (a request dropped before litellm ran it):
            # their holds expired in the ledger already; forget them
            while self._open:
                oldest = next(iter(self._open.values()))
                if oldest.since >= horizon:
                    break
                expired.append(self._open.popitem(last=False)[1])
            previous = self._open.pop(call_id, None)
            self._open[call_id] = held
        if previous is not None:  # the same call judged again (a retried request)
            previous.reservation.release()
        for stale in expired:
            stale.reservation.release()

    # -- after the call -------------------------------------------------------

    def cost_of(
        self, kwargs: Mapping[str, Any], response: object, price: Price | None
    ) -> float | None:
        """What a call cost: the provider's ``usage.cost``, else litellm's
        ``response_cost``, else usage tokens x ``price``; None: unknown."""
        usage = _get(response, "usage")
        cost = cost_from_usage(usage, None)
        if cost is None:
            cost = _money(kwargs.get("response_cost"))
        if cost is None:
            cost = _money(_get(kwargs.get("standard_logging_object"), "response_cost"))
        if cost is None:
            cost = cost_from_usage(usage, price)
        return cost

    def _ended(self, kwargs: Mapping[str, Any], response: object) -> None:
        call_id = _call_id(kwargs)
        if call_id is None:
            return
        with self._lock:
            held = self._open.pop(call_id, None)
            again = self._released.pop(call_id, None) if held is None else None
        if held is not None:
            cost = self.cost_of(kwargs, response, held.price)
            held.reservation.settle(cost)
            log.debug("call settled: %s", "estimate" if cost is None else f"{cost:.6g}")
        elif again is not None:
            # released on a failed attempt, then retried and through: charged all the same
            cost = self.cost_of(kwargs, response, again.price)
            amount = again.reservation.estimate if cost is None else cost
            self.guard.record(amount, credential=again.credential)

    def _failed(self, call_id: str | None, error: object = None) -> None:
        """The call failed: released, unless ``error`` (litellm's exception)
        shows it was cut off after it was sent (a timeout: the provider may
        have billed it), which charges its estimate."""
        if call_id is None:
            return
        with self._lock:
            held = self._open.pop(call_id, None)
            if held is not None:
                self._released[call_id] = held
                while len(self._released) > _RELEASED_KEPT:
                    self._released.popitem(last=False)
        if held is None:
            return
        if isinstance(error, BaseException):  # (the reservation's own rule for a call that raised)
            held.reservation.__exit__(type(error), error, error.__traceback__)
            log.debug("call failed (%s): hold settled by its error", type(error).__name__)
        else:
            held.reservation.release()
            log.debug("call failed: hold released")

    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._ended(kwargs, response_obj)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._ended(kwargs, response_obj)

    def log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._failed(_call_id(kwargs), kwargs.get("exception"))

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._failed(_call_id(kwargs), kwargs.get("exception"))

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        """The proxy request failed (another hook rejected it after this one, or
        the call failed): release its hold, unless the call timed out (it may
        have been billed: its estimate is charged)."""
        timed_out = isinstance(original_exception, LitellmTimeout)
        self._failed(_call_id(request_data), original_exception if timed_out else None)
