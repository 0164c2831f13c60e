"""BudgetGuard: a credits source, a ledger and a policy, behind one object.

``check()`` / ``acheck()`` answer "may this call go ahead, and with which
model?" from the cached balance; the decorator, the transports and the
framework hooks all ask through them, so every surface shares one decision
core (:func:`creditguard.policy.decide`) and one ledger.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import wrapt

from ._protect import ArgSpec, unwrap_callable
from .balance import Balance
from .costs import cost_from_result
from .errors import ConfigError, CreditsExhausted, CreditSourceError
from .ledger import Ledger, Lookup
from .policy import Decision, Policy, decide

if TYPE_CHECKING:
    import httpx

    from .sources import CreditSource

__all__ = ["BudgetGuard"]

log = logging.getLogger("creditguard")

F = TypeVar("F", bound=Callable[..., Any])

_LEVELS = {
    "allow": logging.DEBUG,
    "warn": logging.WARNING,
    "downgrade": logging.WARNING,
    "refuse": logging.WARNING,
}


class _Call:
    """The guarded call in progress: did its code report its own cost?"""

    __slots__ = ("guard", "reported")

    def __init__(self, guard: BudgetGuard) -> None:
        self.guard = guard
        self.reported = False


_CURRENT_CALL: ContextVar[_Call | None] = ContextVar("creditguard_call", default=None)


def _number(key: str, value: object, *, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        allowed = "a finite number > 0" if positive else "a finite number >= 0"
        raise ConfigError(key, value, allowed)
    return float(value)


def _pricing(pricing: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model, prices in (pricing or {}).items():
        if not isinstance(prices, Mapping):
            raise ConfigError(f"pricing.{model}", prices, "a mapping with prompt and completion")
        out[model] = {
            kind: _number(f"pricing.{model}.{kind}", prices.get(kind))
            for kind in ("prompt", "completion")
        }
    return out


class BudgetGuard:
    """Checks remaining credits before each guarded call.

    ``source`` says where balances come from (``creditguard.sources``),
    ``policy`` what to do at which balance. A fetched balance is trusted for
    ``ttl`` seconds; ``estimate`` is what a call is assumed to cost when
    nothing better is known. ``store`` is None or ``"memory://"`` (in-process).
    ``maxsize`` bounds how many credentials' balances are cached; ``timer``
    (monotonic seconds) can be injected in tests.

    Events: ``on_decision(decision)``, ``on_refresh(balance)`` and
    ``on_source_error(error)``; an exception in a callback is logged, never
    raised into the guarded call.
    """

    def __init__(
        self,
        source: CreditSource,
        policy: Policy | None = None,
        *,
        ttl: float = 30.0,
        estimate: float = 0.01,
        pricing: Mapping[str, Mapping[str, float]] | None = None,
        store: object = None,
        maxsize: int = 10_000,
        timer: Callable[[], float] | None = None,
        refresh_timeout: float = 30.0,
        on_decision: Callable[[Decision], object] | None = None,
        on_refresh: Callable[[Balance], object] | None = None,
        on_source_error: Callable[[CreditSourceError], object] | None = None,
    ) -> None:
        for method in ("fetch", "afetch"):
            if not callable(getattr(source, method, None)):
                raise ConfigError(
                    "source",
                    source,
                    "a credits source with fetch() and afetch() (see creditguard.sources)",
                )
        if policy is None:
            policy = Policy()
        if not isinstance(policy, Policy):
            raise ConfigError("policy", policy, "a creditguard.Policy")
        if store not in (None, "memory://"):
            raise ConfigError("store", store, "None or 'memory://' (the in-process store)")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigError("maxsize", maxsize, "a whole number >= 1")
        self.source = source
        self.policy = policy
        self.ttl = _number("ttl", ttl, positive=True)
        self.estimate = _number("estimate", estimate)
        self.pricing = _pricing(pricing)
        self.on_decision = on_decision
        self.on_refresh = on_refresh
        self.on_source_error = on_source_error
        kwargs: dict[str, Any] = {} if timer is None else {"timer": timer}
        self.ledger = Ledger(
            source,
            ttl=self.ttl,
            max_stale=policy.max_stale,
            error_ttl=policy.error_ttl,
            maxsize=maxsize,
            refresh_timeout=_number("refresh_timeout", refresh_timeout, positive=True),
            on_refresh=self._refreshed,
            on_error=self._source_failed,
            **kwargs,
        )

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        env: bool = True,
        **kwargs: Any,
    ) -> BudgetGuard:
        """A guard from app config: a TOML path, a mapping, or None to discover
        (``$CREDITGUARD_CONFIG``, ``./creditguard.toml``, ``[tool.creditguard]``
        in ``./pyproject.toml``). ``CREDITGUARD_*`` env vars override unless
        ``env=False``. Extra keyword arguments go to the constructor."""
        from .config import load_config

        cfg = load_config(config, env=env)
        return cls(
            cfg.build_source(),
            cfg.policy,
            ttl=cfg.ttl,
            estimate=cfg.estimate,
            pricing=cfg.pricing,
            store=cfg.store,
            maxsize=cfg.maxsize,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"BudgetGuard(source={self.source!r}, policy={self.policy!r}, ttl={self.ttl:g})"

    # -- checking ------------------------------------------------------------

    def _estimate(self, estimate: float | None) -> float:
        return self.estimate if estimate is None else _number("estimate", estimate)

    def _decide(self, lookup: Lookup, model: str | None, estimate: float) -> Decision:
        unavailable = "no balance available"
        if lookup.error is not None:
            unavailable = f"no usable balance ({lookup.error})"
        decision = decide(
            lookup.balance,
            self.policy,
            model,
            estimate,
            unavailable=unavailable,
            stale=lookup.stale,
        )
        level = _LEVELS[decision.action]
        if decision.balance is None and decision.action == "allow":
            level = logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s model=%s credential=%s: %s",
                decision.action,
                decision.requested_model,
                lookup.fingerprint[:8] or "-",
                decision.reason,
            )
        if self.on_decision is not None:
            self._emit(self.on_decision, decision)
        return decision

    def check(
        self,
        model: str | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
    ) -> Decision:
        """Decide on one call to ``model`` made with ``credential``.

        The balance comes from the cache; it is fetched (once, however many
        callers wait) when missing or older than ``ttl``.
        """
        est = self._estimate(estimate)
        return self._decide(self.ledger.get(credential), model, est)

    async def acheck(
        self,
        model: str | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
    ) -> Decision:
        """:meth:`check` for async code: never blocks the event loop."""
        est = self._estimate(estimate)
        return self._decide(await self.ledger.aget(credential), model, est)

    def record(self, cost: float, *, credential: str | None = None) -> None:
        """Debit ``cost`` (credits spent by a call) from the cached balance of
        ``credential`` until the next poll replaces it with the provider's figure.

        Inside a guarded function this also tells the decorator that the call
        reported its own cost, so its estimate is not charged on top.
        """
        self.ledger.record(credential, cost)
        call = _CURRENT_CALL.get()
        if call is not None and call.guard is self:
            call.reported = True

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose generation calls pass through this guard
        (``transport=`` is the inner transport; the rest goes to httpx)."""
        from .httpx import client

        return client(self, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose generation calls pass through this guard."""
        from .httpx import async_client

        return async_client(self, **kwargs)

    def invalidate(self, credential: str | None = None) -> None:
        """Forget the cached balance of ``credential``: the next check fetches."""
        self.ledger.invalidate(credential)

    def close(self) -> None:
        """Close the source's HTTP client, if it has one."""
        close = getattr(self.source, "close", None)
        if callable(close):
            close()

    async def aclose(self) -> None:
        aclose = getattr(self.source, "aclose", None)
        if callable(aclose):
            await aclose()
        self.close()

    # -- events --------------------------------------------------------------

    def _emit(self, callback: Callable[[Any], object], value: object) -> None:
        try:
            callback(value)
        except Exception:
            log.exception("creditguard event callback %r raised", callback)

    def _refreshed(self, balance: Balance, key: str) -> None:
        log.debug(
            "refreshed balance credential=%s: %.6g %s remaining (%s)",
            key[:8],
            balance.remaining,
            balance.unit,
            balance.source,
        )
        if self.on_refresh is not None:
            self._emit(self.on_refresh, balance)

    def _source_failed(self, error: CreditSourceError, key: str) -> None:
        log.warning("balance refresh failed credential=%s: %s", key[:8], error)
        if self.on_source_error is not None:
            self._emit(self.on_source_error, error)

    # -- the decorator -------------------------------------------------------

    @overload
    def protect(
        self,
        fn: F,
        *,
        model_arg: str = ...,
        credential_arg: str | None = ...,
        estimate: float | None = ...,
    ) -> F: ...
    @overload
    def protect(
        self,
        fn: None = None,
        *,
        model_arg: str = ...,
        credential_arg: str | None = ...,
        estimate: float | None = ...,
    ) -> Callable[[F], F]: ...
    def protect(
        self,
        fn: F | None = None,
        *,
        model_arg: str = "model",
        credential_arg: str | None = None,
        estimate: float | None = None,
    ) -> F | Callable[[F], F]:
        """Guard a sync or async function, method, classmethod or staticmethod.

        Before each call the guard checks the balance for the call's model (the
        argument named ``model_arg``) and credential (``credential_arg``, else
        the source's own key): refuse raises :class:`CreditsExhausted`,
        downgrade rewrites the model argument. After a successful call, the
        cost in the result's ``usage.cost`` is recorded, else the estimate —
        unless the function called :meth:`record` itself.
        """
        est = None if estimate is None else _number("estimate", estimate)

        def decorate(fn: F) -> F:
            return self._wrap(fn, model_arg, credential_arg, est, explicit=model_arg != "model")

        return decorate if fn is None else decorate(fn)

    def __call__(self, fn: F) -> F:
        """``@guard``: :meth:`protect` with its defaults."""
        return self.protect(fn)

    def _wrap(
        self,
        fn: F,
        model_arg: str,
        credential_arg: str | None,
        estimate: float | None,
        *,
        explicit: bool,
    ) -> F:
        raw = unwrap_callable(fn)
        model = ArgSpec(raw, model_arg, what="model_arg", required=explicit)
        cred = (
            None
            if credential_arg is None
            else ArgSpec(raw, credential_arg, what="credential_arg", required=True)
        )
        guard = self

        def before(
            instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[str | None, str | None]:
            bound = instance is not None
            value = model.get(bound, args, kwargs)
            credential = None if cred is None else cred.get(bound, args, kwargs)
            return (
                value if isinstance(value, str) else None,
                credential if isinstance(credential, str) else None,
            )

        def act(
            decision: Decision, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if decision.action == "refuse":
                raise CreditsExhausted(decision)
            if decision.action == "downgrade" and model.usable:
                return model.set(instance is not None, args, kwargs, decision.model)
            return args, kwargs

        if inspect.isasyncgenfunction(raw):

            async def agen_wrapper(
                wrapped: Any, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                name, credential = before(instance, args, kwargs)
                decision = await guard.acheck(name, credential=credential, estimate=estimate)
                args, kwargs = act(decision, instance, args, kwargs)
                async for item in wrapped(*args, **kwargs):
                    yield item

            return cast(F, wrapt.decorator(agen_wrapper)(fn))

        if inspect.iscoroutinefunction(raw):

            async def async_wrapper(
                wrapped: Any, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                name, credential = before(instance, args, kwargs)
                decision = await guard.acheck(name, credential=credential, estimate=estimate)
                args, kwargs = act(decision, instance, args, kwargs)
                with guard._charging(credential, estimate) as charge:
                    charge.append(await wrapped(*args, **kwargs))
                return charge[0]

            return cast(F, wrapt.decorator(async_wrapper)(fn))

        generator = inspect.isgeneratorfunction(raw)

        def sync_wrapper(
            wrapped: Any, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            name, credential = before(instance, args, kwargs)
            decision = guard.check(name, credential=credential, estimate=estimate)
            args, kwargs = act(decision, instance, args, kwargs)
            if generator:
                return wrapped(*args, **kwargs)
            with guard._charging(credential, estimate) as charge:
                charge.append(wrapped(*args, **kwargs))
            return charge[0]

        return cast(F, wrapt.decorator(sync_wrapper)(fn))

    @contextlib.contextmanager
    def _charging(self, credential: str | None, estimate: float | None) -> Iterator[list[Any]]:
        """Around a guarded call: on success, record what it cost (its result's
        ``usage.cost``, else its estimate) unless its code recorded it itself."""
        call = _Call(self)
        token = _CURRENT_CALL.set(call)
        result: list[Any] = []
        try:
            yield result
        finally:
            _CURRENT_CALL.reset(token)
        if call.reported or not result:
            return
        cost = cost_from_result(result[0])
        self.ledger.record(credential, self._estimate(estimate) if cost is None else cost)
