"""BudgetGuard: a credits source, a ledger and a policy, behind one object.

``check()`` / ``acheck()`` answer "may this call go ahead, and with which
model?" from the cached balance; the decorator, the transports and the
framework hooks all ask through them, so every surface shares one decision
core (:func:`creditguard.policy.decide`) and one ledger.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast, overload

from ._fingerprint import Fingerprinter
from ._protect import CURRENT_CALL, Guarded, Reservation, unwrap_callable, wrap
from .balance import MAX_COST, Balance, _call_cost
from .costs import Pricing
from .errors import (
    ConfigError,
    CreditSourceError,
    finite_number,
    looks_like_key,
    redact,
    redact_url,
)
from .events import DecisionLog, Events, SourceErrorLog, log_refresh
from .ledger import Hold, Ledger, Lookup
from .policy import Action, Decision, Estimator, Policy, decide, policy_of
from .prices import CallEstimator, PriceBook, price_lists
from .runway import BurnRates, attach
from .sources._base import prefer_units
from .sources._tightest import PARTIAL

if TYPE_CHECKING:
    import httpx

    from .alerts import Alert, Webhook
    from .instrument import Instrumentation
    from .sources import CreditSource

__all__ = ["BudgetGuard", "Reservation"]

log = logging.getLogger("creditguard")

F = TypeVar("F", bound=Callable[..., Any])

_debug = functools.partial(log.isEnabledFor, logging.DEBUG)


def _observe_options(cfg: Any) -> dict[str, Any]:
    """The guard's arguments for metrics and the alert webhook from a config."""
    options: dict[str, Any] = {"metrics": cfg.metrics}
    if cfg.name is not None:
        options["name"] = cfg.name
    if cfg.alert_webhook_env is not None:
        url = os.environ.get(cfg.alert_webhook_env)
        if not url:
            raise ConfigError(
                "alert_webhook_env",
                cfg.alert_webhook_env,
                "the name of a set environment variable holding the webhook URL",
            )
        options["alert_webhook"] = url
    return options


class _ValueOnly:
    """A user callback that takes the event's value only (not the credential key)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], object]) -> None:
        self.fn = fn

    def __call__(self, value: object, *_: object) -> None:
        self.fn(value)

    def __repr__(self) -> str:
        return repr(self.fn)


class _Callback:
    """A guard's ``on_<event>`` attribute: setting it (re)subscribes the
    callback to ``guard.events``; None unsubscribes it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, guard: Any, owner: type | None = None) -> Any:
        if guard is None:
            return self
        entry = guard._callbacks.get(self.kind)
        return None if entry is None else entry[0]

    def __set__(self, guard: Any, fn: Callable[[Any], object] | None) -> None:
        old = guard._callbacks.pop(self.kind, None)
        if old is not None:
            old[1]()
        if fn is not None:
            if not callable(fn):
                raise ConfigError(self.name, fn, "a callable taking one argument, or None")
            guard._callbacks[self.kind] = (fn, guard.events.subscribe(self.kind, _ValueOnly(fn)))


class _Unset:
    """The default of an argument that was not given (None means something)."""


_UNSET = _Unset()


_number = finite_number  # (the guard's arguments are checked as config values are)


def _flag(key: str, value: object) -> bool:
    """A True/False argument: ``"false"`` or ``0`` is not taken for one."""
    if not isinstance(value, bool):
        raise ConfigError(key, value, "True or False")
    return value


def _check_hold_options(**options: object) -> dict[str, Any]:
    """``reserve`` (True or False), ``hold_timeout`` and ``refresh_timeout``
    (seconds > 0) as the guard takes them, for those given; else ConfigError.
    (The config loader checks its keys of the same names with this.)"""
    checked: dict[str, Any] = {}
    for key, value in options.items():
        checked[key] = _flag(key, value) if key == "reserve" else _number(key, value, positive=True)
    return checked


def _bad_call(model: object, credential: object) -> NoReturn:
    """The error of :meth:`BudgetGuard.check` / :meth:`~BudgetGuard.reserve`
    given a ``model`` or ``credential`` of the wrong kind (the credential is
    never shown: a key given as bytes is still a key)."""
    if not (credential is None or isinstance(credential, str)):
        raise ConfigError(
            "credential", f"<{type(credential).__name__}>", "the call's API key (a str), or None"
        )
    raise ConfigError("model", model, "a model name (a non-empty str), or None")


def _make_ledger(
    source: Any,
    store: object,
    policy: Policy,
    secret: str | None,
    options: dict[str, Any],
) -> Ledger:
    """The in-process ledger, or one over a shared store."""
    if store is None or store == "memory://":
        return Ledger(source, **options)
    from urllib.parse import parse_qs, urlsplit

    from ._shared import SharedLedger
    from .stores import RedisStore, Store

    shown: object = store
    if isinstance(store, str):
        shown = redact_url(store)  # (the password whatever it holds, and ?secret=)
        try:
            parts = urlsplit(store)
        except ValueError:  # (a netloc it refuses, e.g. a password holding [...])
            raise ConfigError("store", shown, "a redis:// URL (a password %-encoded)") from None
        if parts.scheme not in ("redis", "rediss", "unix", "redis+cluster"):
            raise ConfigError(
                "store",
                shown,
                "None, 'memory://', a redis://, rediss://, unix:// or redis+cluster:// URL "
                "or a creditguard.stores.Store",
            )
        values = parse_qs(parts.query).get("secret")
        secret = secret or (values[0] if values else None)
        store = RedisStore.from_url(store)
    elif not isinstance(store, Store):
        raise ConfigError(
            "store", store, "None, 'memory://', a redis:// URL or a creditguard.stores.Store"
        )
    secret = secret or os.environ.get("CREDITGUARD_FINGERPRINT_SECRET") or None
    if not secret:
        raise ConfigError(
            "store",
            shown,
            "a shared store needs a fingerprint secret that every process shares: "
            "?secret=... in the URL, fingerprint_secret=, or $CREDITGUARD_FINGERPRINT_SECRET",
        )
    return SharedLedger(
        source,
        store,
        policy=policy,
        fingerprint=Fingerprinter(secret),
        **options,
    )


class BudgetGuard:
    """Checks remaining credits before each guarded call.

    ``source`` says where balances come from (``creditguard.sources``),
    ``policy`` what to do at which balance. A fetched balance is trusted for
    ``ttl`` seconds; ``estimate`` is what a call is assumed to cost when
    nothing better is known. ``store`` is None or ``"memory://"`` (in-process),
    a ``"redis://host:6379/0?prefix=cg&secret=..."`` URL or a
    :class:`~creditguard.stores.Store`: one budget for many processes; its
    credential fingerprints need a secret every process shares (``secret=``,
    ``fingerprint_secret=`` or ``$CREDITGUARD_FINGERPRINT_SECRET``).
    ``maxsize`` bounds how many credentials' balances are cached; ``timer``
    (monotonic seconds) can be injected in tests.

    What a call holds comes from the ``pricing`` mapping (model or glob ->
    per-token prices; always wins), then the price lists ``pricing_from``
    names (``"openrouter"``, ``"genai-prices"``, a list of both, None for
    none; default ``"auto"``: OpenRouter's list for an OpenRouter source,
    genai-prices when installed), then the 90th percentile of the model's
    recent settled costs, then ``estimate`` (see :mod:`creditguard.prices`).

    While a guarded call runs, its estimate is held (``reserve=True``): the
    next calls are judged on what is left after every call in flight, so a burst
    cannot spend past the refuse floor. A hold is replaced by the call's real
    cost when it ends; dropped when the call was not billed (nothing sent, or
    the provider answered an error); charged as the estimate when it may have
    been (a timeout, a cancellation, a stream cut short or dropped unread); and
    stops counting by itself after ``hold_timeout`` seconds (900).
    ``stream_usage=True`` asks streaming chat calls for their usage
    (``stream_options.include_usage``) so that they settle at their real cost.

    Events: ``on_decision(decision)``, ``on_refresh(balance)``,
    ``on_source_error(error)`` and ``on_alert(alert)`` (a level of
    ``Policy.alerts`` crossed; ``alert_webhook=URL``, or a configured
    :class:`creditguard.alerts.Webhook`, also posts it from a background
    worker); an exception in a callback is logged, never raised into the
    guarded call. Every event goes through ``guard.events``
    (:mod:`creditguard.events`), which logging, alerts, burn rates and
    metrics subscribe to. ``metrics``: ``"auto"`` (default: on when the app
    has configured an OpenTelemetry MeterProvider), True (through the global
    MeterProvider, whenever one is set), False, or a MeterProvider; see
    :mod:`creditguard.metrics`. ``name`` labels the guard's metrics
    (``creditguard.guard``; default: its source's name, numbered when
    several unnamed guards share one).
    """

    on_decision = _Callback("decision")
    on_refresh = _Callback("refresh")
    on_source_error = _Callback("source_error")
    on_alert = _Callback("alert")

    def __init__(
        self,
        source: CreditSource,
        policy: Policy | None = None,
        *,
        ttl: float = 30.0,
        estimate: float = 0.01,
        pricing: Mapping[str, Mapping[str, float]] | Pricing | None = None,
        store: object = None,
        maxsize: int = 10_000,
        timer: Callable[[], float] | None = None,
        refresh_timeout: float = 30.0,
        on_decision: Callable[[Decision], object] | None = None,
        on_refresh: Callable[[Balance], object] | None = None,
        on_source_error: Callable[[CreditSourceError], object] | None = None,
        reserve: bool = True,
        hold_timeout: float = 900.0,
        fingerprint_secret: str | None = None,
        stream_usage: bool = False,
        pricing_from: object = "auto",
        on_alert: Callable[[Alert], object] | None = None,
        alert_webhook: str | Webhook | None = None,
        metrics: object = "auto",
        name: str | None = None,
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
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigError("maxsize", maxsize, "a whole number >= 1")
        if name is not None and (
            not isinstance(name, str)
            or not name.strip()
            or not name.isprintable()
            or len(name) > 100
            or looks_like_key(name)
            or redact(name) != name  # (one holding a key, a password, a token)
        ):
            allowed = "None or a printable name of 1 to 100 characters, not a key (a metrics label)"
            raise ConfigError("name", name, allowed)
        self.name = name
        prefer_units(source, policy.unit)  # (a DeepSeekBalance reads the policy's currency)
        self.source = source
        self.policy = policy
        self.ttl = _number("ttl", ttl, positive=True)
        self.estimate = _number("estimate", estimate)
        self.pricing = pricing if isinstance(pricing, Pricing) else Pricing(pricing)
        self.prices = PriceBook(self.pricing, price_lists(pricing_from, source))
        self._plain = CallEstimator(self, None)
        # A call to a model settled at a cost the provider (or its usage) told:
        # the one hook every surface calls, ``_settled(model, cost)``, so that
        # estimates learn from it (the learned costs' own method: no call in between).
        self._settled: Callable[[str | None, float], None] = self.prices.learned.add
        log.info(
            "creditguard price lists in use: %s; else learned costs, else estimate=%g",
            self.prices.describe(),
            self.estimate,
        )
        # ask streaming chat calls for their usage (stream_options.include_usage)
        self.stream_usage = _flag("stream_usage", stream_usage)
        holds = _check_hold_options(
            reserve=reserve, hold_timeout=hold_timeout, refresh_timeout=refresh_timeout
        )
        self._reserve: bool = holds["reserve"]
        self.events = events = Events()
        events.subscribe("decision", DecisionLog(self.ttl), every=False)
        events.subscribe("refresh", log_refresh)
        events.subscribe("source_error", SourceErrorLog(self.ttl, timer or time.monotonic))
        self._callbacks: dict[str, tuple[Callable[[Any], object], Callable[[], None]]] = {}
        self.on_decision = on_decision
        self.on_refresh = on_refresh
        self.on_source_error = on_source_error
        self.on_alert = on_alert
        kwargs: dict[str, Any] = {} if timer is None else {"timer": timer}
        options: dict[str, Any] = dict(
            ttl=self.ttl,
            max_stale=policy.max_stale,
            error_ttl=policy.error_ttl,
            maxsize=maxsize,
            refresh_timeout=holds["refresh_timeout"],
            hold_timeout=holds["hold_timeout"],
            on_refresh=self._refreshed,
            on_error=self._source_failed,
            events=events,
            **kwargs,
        )
        self.ledger: Ledger = _make_ledger(source, store, policy, fingerprint_secret, options)
        # sources.ByHost: a policy per host, else this one
        self._policy_for: Callable[[str | None], Policy | None] | None = getattr(
            source, "policy_for", None
        )
        # the ledger feeds the burn rates itself: on the hot path of a settle,
        # an event fan-out would cost more than the rest of the settle
        self.burn = BurnRates(self.ledger._timer, maxsize=maxsize)
        self.ledger.burn = self.burn
        self._closers: list[Callable[[], object]] = []
        self._observe(alert_webhook, metrics)

    def _observe(self, alert_webhook: str | Webhook | None, metrics: object) -> None:
        """Subscribe the optional watchers: alerts, their webhook, metrics."""
        if self.policy.alerts:
            from .alerts import AlertLevels

            self.events.subscribe("decision", AlertLevels(self))
        if alert_webhook is not None:
            from .alerts import Webhook

            hook = alert_webhook if isinstance(alert_webhook, Webhook) else Webhook(alert_webhook)
            hook.events = self.events
            self.events.subscribe("alert", hook.send)
            self._closers.append(hook.close)
        if metrics is not False:
            from . import metrics as _metrics

            _metrics.setup(self, metrics)

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
        options: dict[str, Any] = {
            "ttl": cfg.ttl,
            "estimate": cfg.estimate,
            "pricing": cfg.pricing,
            "pricing_from": cfg.pricing_from,
            "store": cfg.store,
            "maxsize": cfg.maxsize,
            **_observe_options(cfg),
        }
        for key in ("reserve", "hold_timeout", "refresh_timeout"):
            if getattr(cfg, key) is not None:  # (None: the constructor's default)
                options[key] = getattr(cfg, key)
        options.update(kwargs)  # what the code says wins over the file
        source = options.pop("source", None) or cfg.build_source()
        policy = options.pop("policy", None) or cfg.policy
        return cls(source, policy, **options)

    def __repr__(self) -> str:
        return f"BudgetGuard(source={self.source!r}, policy={self.policy!r}, ttl={self.ttl:g})"

    # -- checking ------------------------------------------------------------

    def _estimate(self, estimate: float | None, model: str | None = None) -> float:
        """The estimate given, else what ``model`` holds with no price known."""
        if estimate is not None:
            return _number("estimate", estimate)
        return self.prices.default(model, self.estimate)

    def _estimator(
        self,
        estimate: float | None,
        prompt_chars: int | None = None,
        max_tokens: int | None = None,
    ) -> CallEstimator:
        if estimate is None and prompt_chars is None and max_tokens is None:
            return self._plain
        return CallEstimator(self, estimate, prompt_chars, max_tokens)

    def _admit(
        self,
        lookup: Lookup,
        credential: str | None,
        model: str | None,
        estimate: float,
        *,
        hold: bool,
        refuse_reason: str | None = None,
        can_rewrite: bool | Callable[[], bool] = True,
        report: bool = True,
        asynchronous: bool = False,
        estimator: Estimator | None = None,
    ) -> tuple[Decision, Hold | None]:
        """The decision on one call (and its hold, when ``hold``), logged and
        reported (unless ``report`` is false). Shared by every surface, sync and
        async (``asynchronous``: only the judge is wanted, for :meth:`_aadmit`)."""
        unavailable = "no balance available"
        if lookup.error is not None:
            unavailable = f"no usable balance ({lookup.error})"
        stale = lookup.stale
        policy = self._policy(credential)

        store_down = None
        if lookup.store_down:
            store_down = f"the shared store is unavailable; store_error={policy.store_error}"

        def judge(balance: Balance | None, reserved: float) -> Decision:
            if refuse_reason is not None:
                return Decision(
                    "refuse", model, balance, refuse_reason, model, stale, policy.enforce
                )
            if store_down is not None:
                action: Action = "refuse" if policy.store_error == "refuse" else "allow"
                return Decision(action, model, balance, store_down, model, stale, policy.enforce)
            if (
                stale
                and policy.on_source_error == "refuse"
                and balance is not None
                and balance.source.endswith(PARTIAL)
            ):  # (only some of a Tightest's sources answered: not enough to allow on)
                balance = None
            decision = decide(
                balance,
                policy,
                model,
                estimate,
                reserved=reserved,
                can_rewrite=can_rewrite,
                unavailable=unavailable,
                stale=stale,
                estimator=estimator,
            )
            burn = self.ledger.burn
            key = lookup.fingerprint
            if burn is None or not (policy._steers or key in burn.rates):
                return decision
            now = self.ledger._timer()
            return attach(decision, policy, burn, key, estimate, now, can_rewrite)

        if asynchronous:
            return judge  # type: ignore[return-value]  # (_aadmit awaits the ledger)
        decision, held = self.ledger.admit(
            lookup,
            credential,
            judge,
            estimate,
            reserve=hold and self._reserve,
            floor_of=policy.refuse_floor,
        )
        if report:
            self._report(decision, lookup.fingerprint)
        return decision, held

    async def _aadmit(
        self,
        lookup: Lookup,
        credential: str | None,
        model: str | None,
        estimate: float,
        *,
        hold: bool,
        refuse_reason: str | None = None,
        can_rewrite: bool | Callable[[], bool] = True,
        report: bool = True,
        estimator: Estimator | None = None,
    ) -> tuple[Decision, Hold | None]:
        """:meth:`_admit` for async code: a ledger over a shared store awaits
        the store (``aadmit``) instead of blocking the event loop."""
        aadmit = getattr(self.ledger, "aadmit", None)
        if aadmit is None:
            return self._admit(
                lookup,
                credential,
                model,
                estimate,
                hold=hold,
                refuse_reason=refuse_reason,
                can_rewrite=can_rewrite,
                report=report,
                estimator=estimator,
            )
        judge: Any = self._admit(
            lookup,
            credential,
            model,
            estimate,
            hold=hold,
            refuse_reason=refuse_reason,
            can_rewrite=can_rewrite,
            asynchronous=True,
            estimator=estimator,
        )
        decision, held = await aadmit(
            lookup,
            credential,
            judge,
            estimate,
            reserve=hold and self._reserve,
            floor_of=self._policy(credential).refuse_floor,
        )
        if report:
            self._report(decision, lookup.fingerprint)
        return decision, held

    def _policy(self, credential: str | None) -> Policy:
        """The policy that judges ``credential``'s calls: its own (``ByHost``
        routes give each host one), else the guard's."""
        return policy_of(self._policy_for, self.policy, credential)

    def _report(self, decision: Decision, key: str) -> None:
        """Send a decision to its subscribers: logging, callbacks, alerts, metrics."""
        emit = self.events.decision
        if emit is not None:
            emit(decision, key)

    def check(
        self,
        model: str | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
    ) -> Decision:
        """Decide on one call to ``model`` made with ``credential``, on the
        headroom left after the calls in flight and this call's ``estimate``
        (None: the learned estimate for the model, else the guard's).

        The balance comes from the cache; it is fetched (once, however many
        callers wait) when missing or older than ``ttl``. Nothing is held: the
        decorator and the transports hold the estimate while their call runs.
        """
        if not (model is None or (isinstance(model, str) and model)) or not (
            credential is None or isinstance(credential, str)
        ):
            _bad_call(model, credential)  # (inline: what a good call costs is two tests)
        est = self._estimate(estimate, model)
        key = self.ledger.key(credential)
        estimator = self._estimator(estimate)
        fast = self._fast(
            model, credential, est, key, None, True, reserve=False, estimator=estimator
        )
        if fast is not None:
            return fast[0]
        lookup = self.ledger.get(credential, key)
        return self._admit(lookup, credential, model, est, hold=False, estimator=estimator)[0]

    async def acheck(
        self,
        model: str | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
    ) -> Decision:
        """:meth:`check` for async code: never blocks the event loop."""
        if not (model is None or (isinstance(model, str) and model)) or not (
            credential is None or isinstance(credential, str)
        ):
            _bad_call(model, credential)  # (inline: what a good call costs is two tests)
        est = self._estimate(estimate, model)
        key = self.ledger.key(credential)
        estimator = self._estimator(estimate)
        fast = self._fast(
            model, credential, est, key, None, True, reserve=False, estimator=estimator
        )
        if fast is not None:
            return fast[0]
        lookup = await self.ledger.aget(credential, key)
        return (
            await self._aadmit(lookup, credential, model, est, hold=False, estimator=estimator)
        )[0]

    def reserve(
        self,
        model: str | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
        prompt_chars: int | None = None,
        max_tokens: int | None = None,
    ) -> Reservation:
        """Decide on a call and hold its estimate until it is settled: the
        building block for hooks of your own (the decorator and transports use
        the same). Check ``reservation.decision`` before making the call; then
        ``settle(cost)`` with what it cost (None: its estimate) or ``release()``
        if it was never sent. As a context manager, a normal exit settles it at
        its estimate unless settled already; an exception releases it only when
        it shows the call was not billed (a connect error, a provider's error
        status), and otherwise charges the estimate: a timed-out or cancelled
        call may still be billed (see :class:`Reservation`).

        Without ``estimate``, giving the prompt's size (``prompt_chars``) and the
        call's output limit (``max_tokens``) lets the guard price the call (and
        each downgrade target) from its price lists."""
        if not (model is None or (isinstance(model, str) and model)) or not (
            credential is None or isinstance(credential, str)
        ):
            _bad_call(model, credential)  # (inline: what a good call costs is two tests)
        estimator = self._estimator(estimate, prompt_chars, max_tokens)
        if estimator.wants_prices(model):
            self.prices.ensure()
        est = estimator.requested(model)
        decision, hold = self._hold(model, credential, est, estimator=estimator)
        return Reservation(
            self, decision, hold, credential, decision.held(est)
        )._charged_if_dropped()

    async def areserve(
        self,
        model: str | None = None,
        *,
        credential: str | None = None,
        estimate: float | None = None,
        prompt_chars: int | None = None,
        max_tokens: int | None = None,
    ) -> Reservation:
        """:meth:`reserve` for async code."""
        if not (model is None or (isinstance(model, str) and model)) or not (
            credential is None or isinstance(credential, str)
        ):
            _bad_call(model, credential)  # (inline: what a good call costs is two tests)
        estimator = self._estimator(estimate, prompt_chars, max_tokens)
        if estimator.wants_prices(model):
            await self.prices.aensure()
        est = estimator.requested(model)
        decision, hold = await self._ahold(model, credential, est, estimator=estimator)
        return Reservation(
            self, decision, hold, credential, decision.held(est)
        )._charged_if_dropped()

    def _fast(
        self,
        model: str | None,
        credential: str | None,
        estimate: float,
        key: str | None,
        refuse_reason: str | None,
        can_rewrite: bool | Callable[[], bool],
        *,
        reserve: bool = True,
        estimator: Estimator | None = None,
    ) -> tuple[Decision, Hold | None] | None:
        """The decision and hold from a fresh cached balance, with no lookup
        (sync and async alike: nothing to wait for); None: look it up first
        (:meth:`_hold`, or :meth:`_ahold` with ``fast=False``)."""
        if refuse_reason is not None:
            return None
        ledger = self.ledger
        if ledger._pending:  # settles a finalizer asked for: they count first
            ledger.drain()
        if key is None:
            key = ledger._key_of_none if credential is None else ledger.key(credential)
        policy = self.policy if self._policy_for is None else self._policy(credential)
        fast = ledger.admit_fresh(
            key,
            credential,
            model,
            estimate,
            policy,
            reserve=reserve and self._reserve,
            can_rewrite=can_rewrite,
            estimator=estimator,
        )
        if fast is not None:
            decision = fast[0]
            # (a quiet allow, the usual case, has nothing to report)
            if (
                decision.action != "allow"
                or decision.balance is None
                or self.events.loud
                or _debug()
            ):
                self._report(decision, key)
        return fast

    def _hold(
        self,
        model: str | None,
        credential: str | None,
        estimate: float,
        *,
        key: str | None = None,
        refuse_reason: str | None = None,
        can_rewrite: bool | Callable[[], bool] = True,
        estimator: Estimator | None = None,
        fast: bool = True,
    ) -> tuple[Decision, Hold | None]:
        """Decide and hold ``estimate`` for a call about to go out (``key``: the
        credential's fingerprint, when the caller has it already). ``estimator``
        gives downgrade targets their own estimates (a downgrade holds its
        target's: ``decision.held(estimate)``). Hot callers try :meth:`_fast`
        first and pass ``fast=False`` when it had no fresh balance."""
        if fast:
            decided = self._fast(
                model, credential, estimate, key, refuse_reason, can_rewrite, estimator=estimator
            )
            if decided is not None:
                return decided
        lookup = self.ledger.get(credential, key)
        return self._admit(
            lookup,
            credential,
            model,
            estimate,
            hold=True,
            refuse_reason=refuse_reason,
            can_rewrite=can_rewrite,
            estimator=estimator,
        )

    async def _ahold(
        self,
        model: str | None,
        credential: str | None,
        estimate: float,
        *,
        key: str | None = None,
        refuse_reason: str | None = None,
        can_rewrite: bool | Callable[[], bool] = True,
        fast: bool = True,
        estimator: Estimator | None = None,
    ) -> tuple[Decision, Hold | None]:
        """:meth:`_hold` for async code. Awaiting it costs a coroutine even on a
        cache hit, so hot async callers try :meth:`_fast` first and pass
        ``fast=False`` here only when it had no fresh balance."""
        if fast:
            decided = self._fast(
                model, credential, estimate, key, refuse_reason, can_rewrite, estimator=estimator
            )
            if decided is not None:
                return decided
        lookup = await self.ledger.aget(credential, key)
        return await self._aadmit(
            lookup,
            credential,
            model,
            estimate,
            hold=True,
            refuse_reason=refuse_reason,
            can_rewrite=can_rewrite,
            estimator=estimator,
        )

    def _rehold(
        self, first: Decision, credential: str | None, estimate: float, *, key: str | None = None
    ) -> tuple[Decision, Hold | None]:
        """Hold ``estimate`` again for an SDK retry of a call decided already
        (``first``): the first decision stands (same rewrite, not reported
        again), unless this hold would take the headroom below the refuse
        floor; then the retry is refused (and that is reported)."""
        fast = self.ledger.admit_fresh(
            key or self.ledger.key(credential),
            credential,
            first.model,
            estimate,
            self._policy(credential),
            reserve=self._reserve,
            can_rewrite=False,
        )
        if fast is None:
            lookup = self.ledger.get(credential, key)
            fast = self._admit(lookup, credential, first.model, estimate, hold=True, report=False)
        return self._retried(first, *fast, key)

    async def _arehold(
        self, first: Decision, credential: str | None, estimate: float, *, key: str | None = None
    ) -> tuple[Decision, Hold | None]:
        """:meth:`_rehold` for async code."""
        fast = self.ledger.admit_fresh(
            key or self.ledger.key(credential),
            credential,
            first.model,
            estimate,
            self._policy(credential),
            reserve=self._reserve,
            can_rewrite=False,
        )
        if fast is None:
            lookup = await self.ledger.aget(credential, key)
            fast = await self._aadmit(
                lookup, credential, first.model, estimate, hold=True, report=False
            )
        return self._retried(first, *fast, key)

    def _retried(
        self, first: Decision, now: Decision, hold: Hold | None, key: str | None
    ) -> tuple[Decision, Hold | None]:
        if now.action != "refuse" or first.action == "refuse":
            return first, hold
        refused = Decision(
            "refuse",
            first.requested_model,
            now.balance,
            f"an SDK retry would cross the refuse floor: {now.reason}",
            first.requested_model,
            now.stale,
            now.enforced,  # (the credential's own policy decided ``now``)
        )
        self._report(refused, key or "")
        return refused, hold  # (None, unless shadow mode holds a refused call that goes out)

    def record(self, cost: float, *, credential: str | _Unset | None = _UNSET) -> None:
        """Debit ``cost`` (credits spent by a call) from the cached balance of
        ``credential`` until the next poll replaces it with the provider's figure.

        Inside a guarded function, ``credential`` defaults to the call's own,
        and the decorator then knows the call reported its cost: its estimate
        is not charged on top.
        """
        if type(cost) is not float or not 0.0 <= cost <= MAX_COST:
            _call_cost(cost)  # (ConfigError for a bad one, before anything is charged)
        call = CURRENT_CALL.get()
        if call is not None and call._guard is not self:
            call = None
        if isinstance(credential, _Unset):
            credential = call._credential if call is not None else None
        self.ledger.record(credential, cost)
        if call is not None:
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

    def instrument(self, *, paths: Iterable[str] | None = None) -> Instrumentation:
        """Guard every httpx and httpx2 client (sync and async) built from now
        on in this process, including those SDKs and frameworks build inside;
        ``close()`` the handle (or leave its ``with`` block) to stop. A client
        given ``guard.client()`` is not guarded twice. See
        :mod:`creditguard.instrument`."""
        from .instrument import instrument

        if paths is None:
            return instrument(self)
        return instrument(self, paths=paths)

    def anthropic_middleware(self, *, credential: str | None = None) -> Any:
        """Middleware for ``anthropic.Anthropic(middleware=[...])`` (anthropic
        2.x): judged once per call, downgraded by rewriting the body, refused
        with :class:`CreditsExhausted`. ``credential``: the key the guard judges
        (default: the source's own)."""
        try:
            from ._anthropic import GuardMiddleware
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("anthropic_middleware() needs the anthropic SDK >= 2") from exc
        return GuardMiddleware(self, credential=credential)

    def invalidate(self, credential: str | None = None) -> None:
        """Forget the cached balance of ``credential``: the next check fetches."""
        self.ledger.invalidate(credential)

    def close(self) -> None:
        """Close the source's HTTP client and the shared store, if any."""
        for closer in self._closers:
            closer()
        close = getattr(self.source, "close", None)
        if callable(close):
            close()
        self.ledger.close()

    async def aclose(self) -> None:
        """:meth:`close` for async code: the alert webhook's worker (off the
        event loop: it may take its timeout to deliver what is queued), the
        source's HTTP clients and the shared store."""
        for closer in self._closers:
            await asyncio.to_thread(closer)
        aclose = getattr(self.source, "aclose", None)
        if callable(aclose):
            await aclose()
        else:
            close = getattr(self.source, "close", None)
            if callable(close):
                close()
        ledger_aclose = getattr(self.ledger, "aclose", None)  # a shared store's async clients
        if ledger_aclose is not None:
            await ledger_aclose()
        else:
            self.ledger.close()

    # -- events --------------------------------------------------------------

    def _refreshed(self, balance: Balance, key: str) -> None:
        emit = self.events.refresh
        if emit is not None:
            emit(balance, key)

    def _source_failed(self, error: CreditSourceError, key: str) -> None:
        emit = self.events.source_error
        if emit is not None:
            emit(error, key)

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
        unless the function called :meth:`record` itself. A call that raises
        is charged its estimate (a timeout or a cancellation may still be
        billed) unless the exception shows it was not billed: nothing sent
        (a connect error, a refusal) or a provider's error status.
        Without ``estimate`` a call holds the model's learned estimate (the
        90th percentile of its recent settled costs) when higher than the guard's.
        """
        est = None if estimate is None else _number("estimate", estimate)

        def decorate(fn: F) -> F:
            raw = unwrap_callable(fn)
            guarded = Guarded(
                self, raw, model_arg, credential_arg, est, explicit=model_arg != "model"
            )
            return cast(F, wrap(self, fn, guarded, raw))

        return decorate if fn is None else decorate(fn)

    def __call__(self, fn: F) -> F:
        """``@guard``: :meth:`protect` with its defaults."""
        return self.protect(fn)
