"""The decorator: find and rewrite a call's model and credential arguments,
and charge the call when it ends.

Everything about a function is worked out once, at decoration time, from its
signature; per call it is a dict lookup or a tuple index. The sync, async and
generator drivers share :class:`Guarded` (the pure steps before and after the
guard's decision) and :class:`Call` (charging).
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextvars import ContextVar
from types import CoroutineType as _Coroutine
from typing import TYPE_CHECKING, Any

import wrapt

from ._fingerprint import describe
from ._refusal import refusal_of, refused
from .balance import _call_cost
from .costs import _KINDS, _MAPPING, MAX_COST, _kind_of, _usage_cost, merge_usage, usage_of
from .errors import ConfigError, CreditsExhausted
from .prices import sized_estimate

if TYPE_CHECKING:
    from .guard import BudgetGuard
    from .ledger import Hold
    from .policy import Decision

__all__ = [
    "CURRENT_CALL",
    "ArgSpec",
    "Call",
    "Guarded",
    "Reservation",
    "unbilled",
    "unwrap_callable",
    "wrap",
]

log = logging.getLogger("creditguard")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def unwrap_callable(fn: Any) -> Callable[..., Any]:
    """The plain function under a classmethod or staticmethod object."""
    if isinstance(fn, (classmethod, staticmethod)):
        return fn.__func__
    if inspect.isclass(fn) or not callable(fn):
        raise TypeError(f"creditguard can guard functions and methods, not {fn!r}")
    return fn  # type: ignore[no-any-return]


class ArgSpec:
    """Where one named argument of a function lives in a call.

    ``index`` is its position in the function's own signature (``self`` or
    ``cls`` included); when the call is bound (wrapt passes ``instance``), the
    positional arguments no longer hold ``self``, so the index shifts by one.
    """

    __slots__ = (
        "default",
        "found",
        "index",
        "keyword",
        "name",
        "positional_only",
        "skipped",
        "var_keyword",
    )

    def __init__(self, fn: Callable[..., Any], name: str, *, what: str, required: bool) -> None:
        params = list(inspect.signature(fn).parameters.values())
        self.name = name
        self.index: int | None = None
        self.default: object = None
        self.positional_only = False
        # the key a keyword-only call passes it under (None: it cannot be passed
        # by keyword; ``kwargs.get(None, default)`` is then its default)
        self.keyword: str | None = name
        self.var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        param = next((p for p in params if p.name == name), None)
        self.found = param is not None
        if param is None:
            if required and not self.var_keyword:
                names = ", ".join(p.name for p in params) or "no parameters"
                raise ConfigError(what, name, f"a parameter of {fn.__qualname__} (it has: {names})")
            return
        self.skipped: tuple[object, ...] = ()
        if param.kind in _POSITIONAL:
            self.index = params.index(param)
            self.positional_only = param.kind is inspect.Parameter.POSITIONAL_ONLY
            if self.positional_only:
                self.keyword = None
            # defaults of the parameters before it, to fill in when a call
            # leaves them out and a positional-only model must be passed
            self.skipped = tuple(p.default for p in params[: self.index])
        if param.default is not inspect.Parameter.empty:
            self.default = param.default

    @property
    def usable(self) -> bool:
        """The call can carry this argument (by name, position or **kwargs)."""
        return self.found or self.var_keyword

    def get(self, bound: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        if self.name in kwargs and not self.positional_only:
            return kwargs[self.name]
        if self.index is not None:
            i = self.index - bound
            if 0 <= i < len(args):
                return args[i]
        return self.default

    def set(
        self, bound: bool, args: tuple[Any, ...], kwargs: dict[str, Any], value: object
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.name in kwargs and not self.positional_only:
            return args, {**kwargs, self.name: value}
        if self.index is not None:
            i = self.index - bound
            if 0 <= i < len(args):
                return (*args[:i], value, *args[i + 1 :]), kwargs
            if self.positional_only:
                filler = self.skipped[len(args) + bound :]
                if inspect.Parameter.empty in filler:
                    raise TypeError(f"cannot rewrite positional-only argument {self.name!r}")
                return (*args, *filler, value), kwargs
        return args, {**kwargs, self.name: value}


# -- the guarded call -----------------------------------------------------------

# Exceptions (by class name, any HTTP stack or SDK) raised when nothing was sent.
_UNSENT = frozenset(
    (
        "ConnectError",
        "ConnectTimeout",
        "PoolTimeout",
        "UnsupportedProtocol",
        "ProxyError",
        "ConnectionRefusedError",
        "CreditsExhausted",
    )
)


# Exceptions (by class name) of a call cut off after it was sent. Whatever
# status an SDK gives one (litellm's Timeout carries 408, no response), no
# answer came: it may have been billed (what caused it may still show otherwise).
_CUT_OFF = frozenset(
    (
        "APITimeoutError",
        "Timeout",
        "ReadTimeout",
        "WriteTimeout",
        "TimeoutError",
        "CancelledError",
        "RemoteProtocolError",
        "ReadError",
    )
)


GATEWAY_TIMEOUTS = frozenset((504, 524))
"""Statuses of a gateway that gave up waiting for the provider (a load balancer's 504,
Cloudflare's 524): the provider may still run the call, and bill it."""


def _retried(exc: BaseException) -> bool:
    """Was the request behind ``exc`` (its own, as httpx's errors carry it, or
    its response's) an SDK's retry (Stainless SDKs number their attempts in
    ``x-stainless-retry-count``)?"""
    try:
        request = getattr(exc, "request", None)  # (httpx raises when it has none)
    except Exception:
        request = None
    if request is None:
        request = getattr(getattr(exc, "response", None), "request", None)
    headers = getattr(request, "headers", None)
    try:
        attempt = headers.get("x-stainless-retry-count") if headers is not None else None
    except Exception:  # (a response without its request, or odd headers: not known)
        return False
    return isinstance(attempt, str) and attempt.strip() not in ("", "0")


def unbilled(exc: BaseException) -> bool:
    """Does ``exc`` (or what explicitly caused it) show that the call it ended was not
    billed? Yes when nothing was sent (a connect error, a pool timeout, a
    refusal of creditguard's own) or the provider answered with an error
    status (an SDK's status error, ``httpx.HTTPStatusError``), each of a first
    attempt (a retry's error says nothing of the attempts before: one that
    timed out may have been billed). Anything else
    (a timeout, a cancellation, a dropped connection, an error in the caller's
    own code after the call) may have been billed."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        names = [cls.__name__ for cls in type(seen).__mro__]
        if any(name in _UNSENT for name in names):
            return not _retried(seen)
        status = None
        if not any(name in _CUT_OFF for name in names):  # (a cut-off call has no answer)
            status = getattr(seen, "status_code", None)
            if status is None:
                status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int) and not isinstance(status, bool) and status >= 400:
            if status in GATEWAY_TIMEOUTS:  # a gateway gave up: the provider may have run it
                return False
            # an SDK's last attempt answered with an error, but an earlier one
            # (a timeout the SDK retried) may have been billed
            return not _retried(seen)
        # Only explicit causes (``raise ... from``, as SDKs and httpx wrap
        # their errors) are followed: an implicit context is whatever was being
        # handled, e.g. a connect error a fallback call recovered from before
        # it was billed and then failed otherwise.
        seen = seen.__cause__
    return False


class Reservation:
    """A decided call and the credits held for it (see :meth:`BudgetGuard.reserve`).

    As a context manager: a normal exit settles it at its estimate (unless
    settled or released already); an exception releases it only when the
    exception shows the call was not billed (:func:`unbilled`: nothing was
    sent, or the provider answered an error status) and otherwise charges its
    estimate, since a call cut off by a timeout or a cancellation may still be
    billed by the provider (the next poll corrects the figure); an SDK
    retry's connect error counts as billed (an earlier attempt may have been).
    A provider's refusal for credits marks the key exhausted. Call
    :meth:`release` yourself inside the block when you know nothing was sent.
    """

    __slots__ = (
        "__weakref__",
        "_credential",
        "_done",
        "_guard",
        "_hold",
        "decision",
        "estimate",
        "reported",
    )

    def __init__(
        self,
        guard: BudgetGuard,
        decision: Decision,
        hold: Hold | None,
        credential: str | None,
        estimate: float,
    ) -> None:
        # (wrap()'s drivers make their Calls with _new_call(), without this
        # __init__, a third of the cost: a slot added here is set there too)
        self._guard = guard
        self.decision = decision
        self._hold = hold
        self._credential = credential
        self.estimate = estimate
        self._done = decision.action == "refuse" and decision.enforced  # never sent
        self.reported = False  # a decorated call's code recorded its own cost

    def settle(self, cost: float | None = None) -> None:
        """The call went through and cost ``cost`` (None: its estimate). Once.
        A cost that is not a finite number from 0 to :data:`~creditguard.balance.MAX_COST`
        is a ConfigError, and the reservation stays open."""
        if self._done:
            return
        if cost is not None and (type(cost) is not float or not 0.0 <= cost <= MAX_COST):
            _call_cost(cost)  # (raises for a bad one, before anything is charged)
        self._done = True
        if cost is None:
            self._book(self.estimate, "estimate")
        else:
            d = self.decision  # learned for the model that ran (shadow mode: as asked)
            self._guard._settled(d.model if d.enforced else d.requested_model, cost)
            self._book(cost, None)

    def _book(self, amount: float, how: str | None) -> None:
        """Charge ``amount`` in the ledger: the hold settled at it, or recorded."""
        if self._hold is not None:
            self._guard.ledger.settle(self._hold, amount, how)
        else:
            self._guard.ledger.record(self._credential, amount, how)

    def release(self) -> None:
        """The call failed or was not made: nothing is charged. Once."""
        if self._done:
            return
        self._done = True
        if self._hold is not None:
            self._guard.ledger.release(self._hold)

    def _fail(self, exc: BaseException) -> None:
        """The call raised ``exc``: released if it was not billed, else its
        estimate is charged (see the class docstring). A provider's refusal
        for lack of credits marks the credential exhausted, as the transport does."""
        if unbilled(exc):
            self.release()
        else:
            self.settle()
        refusal = refusal_of(exc)
        if refusal is not None:
            refused(self._guard.ledger, self._credential, *refusal)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, *_: object
    ) -> None:
        if exc is not None:
            self._fail(exc)
        else:
            self.settle()

    def __repr__(self) -> str:
        return f"<Reservation {self.decision.action} estimate={self.estimate:g}>"

    def _charged_if_dropped(self) -> Reservation:
        """Have this reservation charged its estimate if it is garbage-collected
        while still open (a caller that neither settled nor released it): the
        call may have been made. (For :meth:`BudgetGuard.reserve`; the
        decorator settles its own calls.)"""
        hold = self._hold
        if hold is not None:
            ledger = self._guard.ledger
            settle = functools.partial(ledger.settle, hold, self.estimate)
            weakref.finalize(self, ledger.defer, settle).atexit = False
        return self


class Call(Reservation):
    """One decorated call in progress: its reservation, and did its code
    report its own cost (``guard.record()``)?"""

    __slots__ = ()

    def charge(self, result: object) -> None:
        """Charge what the call cost: its result's ``usage.cost`` (or tokens x
        prices), else its estimate — unless its code called ``guard.record()``."""
        if self.reported:
            self.release()  # what it recorded stands instead
            return
        found = self.cost_of(result)
        if found is not None:
            self._charge_found(*found)
            return
        self.settle()  # at its estimate

    def cost_of(self, result: object) -> tuple[float, str] | None:
        """What ``result`` (the call's, or one item a guarded generator
        yielded) reports as spent: ``(cost, where it comes from)``, None when
        it reports nothing. Its usage goes to the subscribers, and the model's
        learned estimate learns the cost."""
        guard = self._guard
        d = self.decision
        model = d.model if d.enforced else d.requested_model  # (the one that ran)
        try:
            cls = type(result)
            if cls is dict:
                usage = result.get("usage")  # type: ignore[attr-defined]
            else:  # an SDK object (usage_of(), inline: once a call)
                kind = _KINDS.get(cls)
                if kind is None:
                    kind = _kind_of(cls)
                if kind is _MAPPING or "usage" in kind:
                    usage = usage_of(result)
                else:
                    usage = getattr(result, "usage", None)
            if usage is None:
                return None
            found: tuple[float, str] | None
            # (a model in ``pricing``: its price at hand)
            book = guard.prices
            price = book._pinned.get(model) if model is not None else None
            cost = usage.get("cost") if type(usage) is dict else None
            if type(cost) is float and 0.0 <= cost <= MAX_COST:
                found = cost, "provider"  # (a decoded JSON body's: _usage_cost() inline)
            else:
                found = _usage_cost(usage, book, model, price)
        except Exception as exc:  # (a result that breaks when read: the call still costs)
            log.warning(
                "the usage of a guarded call's %s result could not be read: its estimate "
                "is charged (%s)",
                type(result).__name__,
                describe(exc, self._credential),
            )
            return None
        emit = guard.events.usage
        if emit is not None:
            emit(guard.ledger.key(self._credential), d.requested_model, usage)
        if found is not None:
            guard._settled(model, found[0])  # (priced too: for its calls with no limit)
        return found

    def _charge_found(self, cost: float, how: str) -> None:
        if not self._done:
            self._done = True
            # (a plain float, and where it came from: the ledger's fast path)
            if self._hold is not None:
                self._guard.ledger.settle(self._hold, cost, how)
            else:
                self._guard.ledger.record(self._credential, cost, how)

    def finish(self, spent: tuple[float, str] | None, *, cut: bool = False) -> None:
        """A guarded generator ended: charge what its items reported they cost
        (``spent``: their sum), else its estimate; one ``cut`` short (closed
        early, thrown into) at least its estimate (it may have cost more)."""
        if self.reported:
            self.release()  # what it recorded stands instead
        elif spent is None:
            self.settle()  # at its estimate
        elif cut and spent[0] < self.estimate:
            self.settle()
        else:
            self._charge_found(*spent)

    def _fail(self, exc: BaseException) -> None:
        if self.reported:
            self.release()  # what it recorded stands instead
        else:
            super()._fail(exc)


CURRENT_CALL: ContextVar[Call | None] = ContextVar("creditguard_call", default=None)


_PROMPT_ARGS = ("messages", "prompt", "input")
_LIMIT_ARGS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_MAX_LIMIT = 2**53  # an absurd output limit is held as this (a float still)
_UNSET: Any = object()  # (an argument not passed by keyword)
_new: Any = object.__new__


def _chars(value: object) -> int | None:
    """About how many characters a call's prompt has: a string, or a list of
    chat messages (dicts or objects with ``content``) whose content is text or
    a list of parts with ``text``. None when it is neither."""
    if type(value) is not list and not isinstance(value, (list, tuple)):
        return len(value) if isinstance(value, str) else None
    total = 0
    for item in value:
        if type(item) is dict:  # the usual case: {"role": ..., "content": "..."}
            content = item.get("content")
            if type(content) is str:
                total += len(content) + 8  # the role and the message's framing
                continue
        else:
            content = (
                item.get("content") if isinstance(item, dict) else getattr(item, "content", item)
            )
        if isinstance(content, str):
            total += len(content) + 8
        elif isinstance(content, (list, tuple)):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
                total += len(text) if isinstance(text, str) else 16
        else:
            total += 16
    return total


class Guarded:
    """What the decorator worked out at decoration time about one function,
    and the two pure steps around the guard's decision."""

    __slots__ = (
        "book",
        "credential",
        "estimate",
        "estimator",
        "fixed",
        "guard",
        "learned",
        "limits",
        "messages",
        "model",
        "shift",
    )

    def __init__(
        self,
        guard: BudgetGuard,
        raw: Callable[..., Any],
        model_arg: str,
        credential_arg: str | None,
        estimate: float | None,
        *,
        explicit: bool,
    ) -> None:
        self.guard = guard
        self.fixed = estimate is not None  # else the model's learned estimate, per call
        self.estimate = guard.estimate if estimate is None else estimate
        self.estimator = guard._estimator(estimate)
        # wrapt passes the bound object as ``instance`` and args without it; a
        # bound method given to the decorator has no ``self`` in its signature.
        self.shift = not inspect.ismethod(raw)
        self.model = ArgSpec(raw, model_arg, what="model_arg", required=explicit)
        self.credential = (
            None
            if credential_arg is None
            else ArgSpec(raw, credential_arg, what="credential_arg", required=True)
        )
        self.book = guard.prices
        self.learned = guard.prices.default
        # A function that carries the request itself (``messages``/``prompt``/
        # ``input`` and an output limit, as ``client.chat.completions.create``
        # does) is priced per call like a transported request; else (no output
        # limit among its arguments, say) the learned or configured estimate stands.
        self.messages: tuple[ArgSpec, ...] = ()
        self.limits: tuple[ArgSpec, ...] = ()
        if estimate is None:
            specs = [ArgSpec(raw, n, what="", required=False) for n in _LIMIT_ARGS]
            self.limits = tuple(a for a in specs if a.usable)
            if self.limits:  # (else the prompt's size would never be used)
                specs = [ArgSpec(raw, n, what="", required=False) for n in _PROMPT_ARGS]
                self.messages = tuple(a for a in specs if a.usable)

    def prepare(
        self, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | None, str | None, float | None, Any]:
        """The call's model, credential, estimate and estimator. The estimate
        is fixed when the decorator was given one; priced from the call's own
        prompt and output limit when it carries them; else the model's learned
        estimate or the guard's. The estimate is None when the call wants a
        price list loaded first (then ``estimator.requested(model)`` gives it)."""
        # Each argument is read by keyword first (a dict read: SDK calls pass
        # keywords), else from its position or default (ArgSpec.get). A spec's
        # keyword is None when it cannot be passed by keyword: never found.
        bound = self.shift and instance is not None
        spec = self.model
        model = kwargs.get(spec.keyword, _UNSET)  # type: ignore[arg-type]
        if model is _UNSET:
            model = spec.get(bound, args, kwargs) if args else spec.default
        if type(model) is not str and not isinstance(model, str):
            model = None
        credential = None
        cred = self.credential
        if cred is not None:
            credential = kwargs.get(cred.keyword, _UNSET)  # type: ignore[arg-type]
            if credential is _UNSET:
                credential = cred.get(bound, args, kwargs) if args else cred.default
            if not isinstance(credential, str):
                credential = None
        if self.fixed:
            return model, credential, self.estimate, self.estimator
        book = self.book
        if self.messages:  # (only when an output limit may come too)
            chars = None
            for spec in self.messages:
                value = kwargs.get(spec.keyword, _UNSET)  # type: ignore[arg-type]
                if value is _UNSET:
                    value = spec.get(bound, args, kwargs) if args else spec.default
                if type(value) is list:  # chat messages: the usual ones sized inline
                    chars = 8 * len(value)  # the role and the message's framing
                    for item in value:
                        content = item.get("content") if type(item) is dict else None
                        if type(content) is not str:
                            chars = _chars(value)  # (any other shape)
                            break
                        chars += len(content)
                else:
                    chars = _chars(value)
                if chars is not None:
                    break
            if chars is not None:
                for spec in self.limits:
                    value = kwargs.get(spec.keyword, _UNSET)  # type: ignore[arg-type]
                    if value is _UNSET:
                        value = spec.get(bound, args, kwargs) if args else spec.default
                    if (
                        type(value) is int or (isinstance(value, int) and type(value) is not bool)
                    ) and value >= 0:
                        # (a prompt alone does not say what the call may cost)
                        estimator, est = sized_estimate(
                            book, self.estimate, chars / 4, min(value, _MAX_LIMIT), model
                        )
                        return model, credential, est, estimator
        return model, credential, self.learned(model, self.estimate), self.estimator

    def apply(
        self,
        decision: Decision,
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Act on a decision other than allow: raise on refuse, rewrite the
        model on downgrade (in shadow mode, neither)."""
        decision = decision.applied
        if decision.action == "refuse":
            raise CreditsExhausted(decision)
        if decision.action == "downgrade" and self.model.usable:
            bound = self.shift and instance is not None
            args, kwargs = self.model.set(bound, args, kwargs, decision.model)
        return args, kwargs


def wrap(guard: BudgetGuard, fn: Any, g: Guarded, raw: Callable[..., Any]) -> Any:
    """The wrapt decorator for ``fn``, chosen once: sync or async, function or
    generator. Each driver is the same three steps around its own I/O."""
    fast, hold, ahold, prepare = guard._fast, guard._hold, guard._ahold, g.prepare
    set_call, reset_call = CURRENT_CALL.set, CURRENT_CALL.reset
    prices = guard.prices

    async def begin(
        instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Call, tuple[Any, ...], dict[str, Any]]:
        """The async drivers' first step: decide and hold (without blocking
        the loop), act on the decision; the call, and the arguments to make it with."""
        model, credential, est, estimator = prepare(instance, args, kwargs)
        if est is None:  # (a price list to load first)
            await prices.aensure()
            est = estimator.requested(model)
        decision, held = fast(
            model, credential, est, None, None, True, estimator=estimator
        ) or await ahold(model, credential, est, fast=False, estimator=estimator)
        if decision.action != "allow":
            args, kwargs = g.apply(decision, instance, args, kwargs)
        if decision._estimate is not None:
            est = decision.held(est)
        return _new_call(guard, decision, held, credential, est), args, kwargs

    if inspect.isasyncgenfunction(raw):

        async def agen_wrapper(
            wrapped: Any, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            call, args, kwargs = await begin(instance, args, kwargs)
            agen = wrapped(*args, **kwargs)
            tally = _Tally(call)  # what its items reported they cost
            try:
                while True:
                    token = CURRENT_CALL.set(call)
                    try:
                        item = await agen.__anext__()
                    except StopAsyncIteration:
                        break
                    except BaseException as exc:
                        call._fail(exc)
                        raise
                    finally:
                        CURRENT_CALL.reset(token)
                    tally.add(item)
                    yield item
            except BaseException:  # closed early, or thrown into: a cut stream still costs
                call.finish(tally.spent(), cut=True)
                raise
            finally:
                await agen.aclose()
            call.finish(tally.spent())

        return wrapt.decorator(agen_wrapper)(fn)

    async def async_wrapper(
        wrapped: Any, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        call, args, kwargs = await begin(instance, args, kwargs)
        token = set_call(call)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:  # cancelled, timed out: maybe billed
            call._fail(exc)
            raise
        finally:
            reset_call(token)
        if type(result).__name__ in _STREAM_NAMES:  # (an SDK's stream: charged at its end)
            return _streamed(call, result)
        call.charge(result)
        return result

    if _async(raw):
        return wrapt.decorator(async_wrapper)(fn)

    generator = inspect.isgeneratorfunction(raw)

    def sync_wrapper(
        wrapped: Any, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        model, credential, est, estimator = prepare(instance, args, kwargs)
        if est is None:  # (a price list to load first)
            prices.ensure()
            est = estimator.requested(model)
        decision, held = fast(
            model, credential, est, None, None, True, estimator=estimator
        ) or hold(model, credential, est, estimator=estimator, fast=False)
        if decision.action != "allow":
            args, kwargs = g.apply(decision, instance, args, kwargs)
        if decision._estimate is not None:
            est = decision.held(est)
        call = _new_call(guard, decision, held, credential, est)
        token = set_call(call)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call._fail(exc)
            raise
        finally:
            reset_call(token)
        if generator:
            return _charged(call, result)
        if type(result) is _Coroutine:  # (held until it is done: charged then)
            return _awaited(call, result)
        if type(result).__name__ in _STREAM_NAMES:  # (an SDK's stream: charged at its end)
            return _streamed(call, result)
        call.charge(result)
        return result

    return wrapt.decorator(sync_wrapper)(fn)


def _async(raw: Callable[..., Any]) -> bool:
    """Is ``raw`` a coroutine function, or a function or method whose sync
    wrappers (``functools.wraps``) lead to one? openai's and anthropic's async
    methods are sync argument checks around ``async def``. (Only functions and
    methods are followed: a callable object may wrap an async function to run
    it to completion.)"""
    if inspect.iscoroutinefunction(raw):
        return True
    if not (inspect.isfunction(raw) or inspect.ismethod(raw)):
        return False
    try:
        return inspect.iscoroutinefunction(inspect.unwrap(raw))
    except ValueError:  # (a __wrapped__ cycle)
        return False


async def _awaited(call: Call, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The coroutine a guarded sync function returned (one :func:`_async`
    cannot tell), charged when it is done: its call runs when it is awaited,
    not before. (Never awaited, its hold lapses after ``hold_timeout``.)"""
    token = CURRENT_CALL.set(call)
    try:
        result = await coroutine
    except BaseException as exc:  # cancelled, timed out: maybe billed
        call._fail(exc)
        raise
    finally:
        CURRENT_CALL.reset(token)
    if type(result).__name__ in _STREAM_NAMES:  # (an SDK's stream: charged at its end)
        return _streamed(call, result)
    call.charge(result)
    return result


_STREAM_NAMES = frozenset(("Stream", "AsyncStream"))  # (openai's and anthropic's, checked below)


def _streamed(call: Call, result: Any) -> Any:
    """An SDK's stream (openai's or anthropic's ``Stream``, ``AsyncStream``) that
    a guarded call returned: the call is held until the stream ends, then
    charged what its chunks report (:class:`_ChargedStream`). Anything else of
    that name is charged as a result."""
    cls = type(result)
    if cls.__module__.partition(".")[0] in ("openai", "anthropic"):
        if cls.__name__ == "Stream":
            return _ChargedStream(result, call)
        return _AsyncChargedStream(result, call)
    call.charge(result)
    return result


class _ChargedStream(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """An SDK stream a guarded call returned, as it is (``isinstance`` holds),
    whose call is charged when it ends: what its chunks reported (a last chunk's
    usage), else its estimate; closed early, at least its estimate; never
    finished nor closed, its estimate when it is collected (as the transport's
    streams are)."""

    def __init__(self, stream: Any, call: Call) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_tally = _Tally(call)
        self._self_done = False
        settle = functools.partial(call.finish, None, cut=True)
        self._self_finalizer = weakref.finalize(self, call._guard.ledger.defer, settle)
        self._self_finalizer.atexit = False

    def _self_end(self, cut: bool) -> None:
        if not self._self_done:
            self._self_done = True
            self._self_finalizer.detach()
            self._self_call.finish(self._self_tally.spent(), cut=cut)

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.__wrapped__:
                self._self_tally.add(item)
                yield item
        except BaseException:  # cut off, or left early: at least its estimate
            self._self_end(True)
            raise
        self._self_end(False)

    def __next__(self) -> Any:
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            self._self_end(False)
            raise
        except BaseException:
            self._self_end(True)
            raise
        self._self_tally.add(item)
        return item

    def __enter__(self) -> Any:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc)
        finally:
            self._self_end(True)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end(True)


class _AsyncChargedStream(_ChargedStream):
    """:class:`_ChargedStream` for an SDK's ``AsyncStream``."""

    def __aiter__(self) -> Any:
        return self._self_items()

    async def _self_items(self) -> Any:
        try:
            async for item in self.__wrapped__:
                self._self_tally.add(item)
                yield item
        except BaseException:  # cut off, cancelled, or left early: at least its estimate
            self._self_end(True)
            raise
        self._self_end(False)

    async def __anext__(self) -> Any:
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_end(False)
            raise
        except BaseException:
            self._self_end(True)
            raise
        self._self_tally.add(item)
        return item

    async def __aenter__(self) -> Any:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc)
        finally:
            self._self_end(True)

    async def close(self) -> None:  # type: ignore[override]
        try:
            await self.__wrapped__.close()
        finally:
            self._self_end(True)


def _new_call(
    guard: BudgetGuard, decision: Decision, held: Hold | None, credential: str | None, est: float
) -> Call:
    """``Call(guard, decision, held, credential, est)`` for wrap()'s drivers,
    without the type call and the ``__init__`` frame (~900 instructions a
    call). Not done: an enforced refusal was raised in ``apply()`` already."""
    call: Call = _new(Call)
    call._guard = guard
    call.decision = decision
    call._hold = held
    call._credential = credential
    call.estimate = est
    call._done = call.reported = False
    return call


def _field(obj: object, name: str) -> object:
    """``obj``'s field ``name`` (None: none), without the exception a pydantic
    model raises inside ``getattr`` for a field it does not have."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    fields = getattr(type(obj), "model_fields", None)
    if isinstance(fields, dict) and name not in fields:
        return None
    return getattr(obj, name, None)


def _as_dict(usage: object) -> dict[str, Any] | None:
    if isinstance(usage, Mapping):
        return dict(usage)
    dump = getattr(usage, "model_dump", None)  # (an SDK's pydantic model, extras included)
    if callable(dump):
        found = dump()
        return found if isinstance(found, dict) else None
    return dict(vars(usage)) if hasattr(usage, "__dict__") else None


class _Tally:
    """What a guarded generator's items report they cost. The chunks and
    events of one call share an ``id`` (theirs, or their message's or
    response's; an Anthropic stream's later events have none: they belong to
    the last); its reports are merged field by field, a later one overriding
    (message_start's input tokens, then message_delta's output tokens), and
    the calls' costs added up (a generator may yield several completions)."""

    __slots__ = ("call", "how", "id", "total", "usage")

    def __init__(self, call: Call) -> None:
        self.call = call
        hold = call._hold
        if hold is not None:  # (the call streams: held until it ends, as the transport's)
            call._guard.ledger.streaming(hold)
        self.id: object = None
        self.usage: dict[str, Any] | None = None
        self.total = 0.0
        self.how: str | None = None

    def add(self, item: object) -> None:
        try:
            ident = _field(item, "id")
            usage = usage_of(item)
            if usage is None:  # (Anthropic's message_start, the Responses API's
                # response.completed: the usage of the message or response they carry)
                inner = _field(item, "message")
                if inner is None:
                    inner = _field(item, "response")
                if inner is not None:
                    usage = usage_of(inner)
                    ident = ident if ident is not None else _field(inner, "id")
            if ident is not None and ident != self.id:
                self._close()
                self.id = ident
            if usage is not None:
                report = _as_dict(usage)
                if report is not None:
                    if self.usage is None:
                        self.usage = {}
                    merge_usage(self.usage, report)
        except Exception as exc:  # (an item that breaks when read: it reports nothing)
            # (its text only, redacted: a traceback may show what the call was made with)
            log.debug(
                "a guarded generator's item could not be read (%s)",
                describe(exc, self.call._credential),
            )

    def _close(self) -> None:
        if self.usage:
            found = self.call.cost_of({"usage": self.usage})
            if found is not None:
                self.total += found[0]
                self.how = self.how or found[1]
        self.usage = None

    def spent(self) -> tuple[float, str] | None:
        self._close()
        return None if self.how is None else (self.total, self.how)


def _charged(call: Call, gen: Iterator[Any]) -> Iterator[Any]:
    """A guarded generator: its code runs with the call current, and the call is
    charged when it ends (or is closed early: a cut stream still costs) what
    its items reported (a stream's last chunk, each completion of a batch),
    else its estimate."""
    tally = _Tally(call)  # what its items reported they cost
    try:
        while True:
            token = CURRENT_CALL.set(call)
            try:
                item = next(gen)
            except StopIteration:
                break
            except BaseException as exc:
                call._fail(exc)
                raise
            finally:
                CURRENT_CALL.reset(token)
            tally.add(item)
            yield item
    except BaseException:  # closed early, or thrown into: a cut stream still costs
        # (a failure of the call itself was settled above: no-op)
        call.finish(tally.spent(), cut=True)
        raise
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    call.finish(tally.spent())
