"""What to do at which balance: :class:`Policy`, :class:`Decision` and :func:`decide`.

This module is pure: no network, clock, lock or logging. Every rule of the guard
lives in :func:`decide`, which the sync and async paths, the decorator, the
transports and the framework hooks all share.

The decision is made on the headroom left after this call at worst::

    headroom = remaining - reserved_by_calls_in_flight - this_call's_estimate

A tier applies when ``headroom < threshold`` (strictly below) and the most
severe tier wins: refuse > downgrade > warn > allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

from ._globmap import GlobMap
from .balance import Balance, normal_unit
from .errors import ConfigError

__all__ = ["Action", "Decision", "Estimate", "Estimator", "Policy", "Threshold", "decide"]

Action: TypeAlias = Literal["allow", "warn", "downgrade", "refuse"]
Threshold: TypeAlias = "float | int | str | None"

_INF = math.inf
_HUGE = 2**1000  # (a module constant: the compiler does not fold a power this large)

SEVERITY: dict[str, int] = {"allow": 0, "warn": 1, "downgrade": 2, "refuse": 3}

_ON_SOURCE_ERROR = ("allow", "refuse")
_STORE_ERROR = ("local", "refuse", "allow")
_UNKNOWN_PRICE = ("estimate", "refuse", "allow")
_TIERS = ("refuse_below", "downgrade_below", "warn_below")
MAX_HOPS = 3  # downgrade targets followed from the requested model (a target's own target next)


class Estimate(NamedTuple):
    """What one call to a model may cost: ``total`` as asked; ``prompt`` the part
    its output limit does not change and ``per_token`` the price of one output
    token (0: unknown, a smaller limit changes nothing)."""

    total: float
    prompt: float = 0.0
    per_token: float = 0.0


class Estimator(Protocol):
    """Each model's own estimate for one call (the same prompt and output
    limit, that model's prices), for :func:`decide` to weigh downgrade targets.
    Returns None when the model may not be used (no price, ``unknown_price="refuse"``).
    ``max_tokens`` is the output limit the call asks for (None: none);
    ``clampable`` says whether the caller can rewrite it."""

    @property
    def max_tokens(self) -> int | None: ...

    @property
    def clampable(self) -> bool: ...

    def __call__(self, model: str) -> Estimate | None: ...


@dataclass(frozen=True, slots=True)
class _Limit:
    """A parsed threshold: an absolute number of credits, or a percent of the total."""

    value: float
    percent: bool

    def resolve(self, total: float | None) -> float | None:
        if not self.percent:
            return self.value
        if total is None:
            return None
        return total * self.value / 100.0

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


def _parse_threshold(key: str, value: object) -> _Limit | None:
    allowed = "a finite number >= 0, a percent string such as '2%' (0-100), or None"
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(key, value, allowed)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float (10**400)
            raise ConfigError(key, value, allowed) from None
        if not math.isfinite(number) or number < 0:
            raise ConfigError(key, value, allowed)
        return _Limit(number, percent=False)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                number = float(text[:-1])
            except ValueError:
                raise ConfigError(key, value, allowed) from None
            if not math.isfinite(number) or not 0 <= number <= 100:
                raise ConfigError(key, value, allowed)
            return _Limit(number, percent=True)
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(key, value, allowed) from None
        return _parse_threshold(key, number)
    raise ConfigError(key, value, allowed)


_PER = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


def _parse_rate(key: str, value: object) -> float | None:
    """A spend rate such as ``"1/min"`` or ``"5/hour"``, in credits per second."""
    allowed = "credits per time, such as '1/min', '5/hour' or '0.5/s' (or None)"
    if value is None:
        return None
    if not isinstance(value, str) or value.count("/") != 1:
        raise ConfigError(key, value, allowed)
    amount, _, per = value.partition("/")
    seconds = _PER.get(per.strip().lower())
    try:
        number = float(amount)
    except ValueError:
        raise ConfigError(key, value, allowed) from None
    if seconds is None or not math.isfinite(number) or number <= 0:
        raise ConfigError(key, value, allowed)
    return number / seconds


def _non_negative(key: str, value: object) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and value > _HUGE:
        raise ConfigError(key, value, "a finite number of seconds >= 0")  # (not OverflowError)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(key, value, "a finite number of seconds >= 0")
    return float(value)


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, value, "one of " + ", ".join(repr(c) for c in choices))
    return str(value)


def _downgrade_map(mapping: Mapping[str, str]) -> GlobMap[str]:
    for pattern, target in mapping.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(
                "downgrade", pattern, "model names or glob patterns (non-empty strings)"
            )
        if not isinstance(target, str) or not target.strip():
            raise ConfigError(f"downgrade.{pattern}", target, "a model name (non-empty string)")
    return GlobMap(mapping.items())


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds and every what-to-do knob of a guard.

    Each threshold is an absolute number of credits, a percent string of the
    balance's total (``"2%"``), or None (that tier is off). Set thresholds of
    the same kind must be ordered ``refuse_below <= downgrade_below <= warn_below``.

    ``downgrade`` maps a model name or glob (``"anthropic/*"``, ``"*"``) to a
    cheaper model. ``on_source_error`` says what happens when no usable balance
    can be had (after ``max_stale`` seconds of serving the last good one):
    ``"allow"`` (fail open, logged) or ``"refuse"``. A failed fetch is not
    retried for ``error_ttl`` seconds. ``store_error`` and ``unknown_price``
    are read by the shared store and cost accounting.

    ``enforce=False`` is shadow mode: every call is decided, logged, held,
    charged and reported exactly as when enforcing, but nothing is refused or
    rewritten — decisions carry ``enforced=False`` and the surfaces act on
    :attr:`Decision.applied`. For rolling a policy out safely.

    Absolute thresholds are in the balance's own unit. ``unit`` (``"USD"``,
    ``"CNY"``, ``"credits"``; None: any) asserts it: a balance in another unit
    is unusable (``on_source_error`` applies), never compared with thresholds
    meant for another currency. Percent thresholds work in any unit.
    At the downgrade or refuse tier the downgrade map is followed (a target's
    own target next, up to 3 hops, never a cycle) to the first model whose own
    estimate keeps the headroom at or above ``refuse_below``. With
    ``clamp_max_tokens``, when no model fits with the output limit asked for
    but one fits with a smaller one (at least ``min_tokens``), the limit is
    rewritten instead of refusing (transports only: they own the body).

    ``warn_runway`` (seconds) warns when, at the credential's recent burn rate,
    the credits left reach ``refuse_below`` sooner than that. ``alerts`` are
    levels of available credits (``("50%", "20%", 5.0)``) that fire the
    guard's ``on_alert`` once per downward crossing. ``max_rate`` (``"1/min"``,
    ``"5/hour"``: credits per time) downgrades, then refuses, calls while the
    recent burn rate is above it.

    Bad values raise :class:`~creditguard.ConfigError` (a ValueError).
    """

    warn_below: Threshold = None
    downgrade_below: Threshold = None
    refuse_below: Threshold = None
    downgrade: Mapping[str, str] = field(default_factory=dict)
    on_source_error: Literal["allow", "refuse"] = "allow"
    max_stale: float = 300.0
    error_ttl: float = 5.0
    store_error: Literal["local", "refuse", "allow"] = "local"
    unknown_price: Literal["estimate", "refuse", "allow"] = "estimate"
    enforce: bool = True
    unit: str | None = None
    clamp_max_tokens: bool = False
    min_tokens: int = 256
    warn_runway: float | None = None
    alerts: tuple[float | int | str, ...] = ()
    max_rate: str | None = None
    _alert_limits: tuple[_Limit, ...] = field(init=False, repr=False, compare=False)
    _rate: float | None = field(init=False, repr=False, compare=False)  # credits per second
    _steers: bool = field(init=False, repr=False, compare=False)  # max_rate or warn_runway set
    _limits: tuple[_Limit | None, _Limit | None, _Limit | None] = field(
        init=False, repr=False, compare=False
    )
    _map: GlobMap[str] = field(init=False, repr=False, compare=False)
    _needs_total: bool = field(init=False, repr=False, compare=False)
    _absolute: tuple[float | None, float | None, float | None] = field(
        init=False, repr=False, compare=False
    )
    # a call whose headroom is this far above 0 is a quick allow: the highest
    # absolute threshold (see decide(); infinite when no headroom decides at
    # once: shadow mode, a unit, percents)
    _quick_top: float = field(init=False, repr=False, compare=False)
    _enforcing: Policy = field(init=False, repr=False, compare=False)  # the same, enforced

    def __post_init__(self) -> None:
        limits = tuple(_parse_threshold(name, getattr(self, name)) for name in _TIERS)
        for i, low_name in enumerate(_TIERS):
            for j in range(i + 1, len(_TIERS)):
                low, high = limits[i], limits[j]
                if (
                    low is not None
                    and high is not None
                    and low.percent == high.percent
                    and low.value > high.value
                ):
                    raise ConfigError(
                        low_name,
                        getattr(self, low_name),
                        f"must be <= {_TIERS[j]} ({getattr(self, _TIERS[j])!r}): "
                        "thresholds are ordered refuse_below <= downgrade_below <= warn_below",
                    )
        if not isinstance(self.downgrade, Mapping):
            raise ConfigError("downgrade", self.downgrade, "a mapping of model -> cheaper model")
        _choice("on_source_error", self.on_source_error, _ON_SOURCE_ERROR)
        _choice("store_error", self.store_error, _STORE_ERROR)
        _choice("unknown_price", self.unknown_price, _UNKNOWN_PRICE)
        if not isinstance(self.enforce, bool):
            raise ConfigError("enforce", self.enforce, "true or false (false: shadow mode)")
        if self.unit is not None and (not isinstance(self.unit, str) or not self.unit.strip()):
            raise ConfigError("unit", self.unit, "a unit name such as 'USD', 'CNY' or 'credits'")
        if self.unit is not None:  # " usd" asserts what a "USD" balance is in
            object.__setattr__(self, "unit", normal_unit(self.unit))
        if not isinstance(self.clamp_max_tokens, bool):
            raise ConfigError("clamp_max_tokens", self.clamp_max_tokens, "true or false")
        if (
            isinstance(self.min_tokens, bool)
            or not isinstance(self.min_tokens, int)
            or not 1 <= self.min_tokens <= 10_000_000
        ):
            raise ConfigError("min_tokens", self.min_tokens, "a whole number of tokens, 1-10000000")
        object.__setattr__(self, "max_stale", _non_negative("max_stale", self.max_stale))
        object.__setattr__(self, "error_ttl", _non_negative("error_ttl", self.error_ttl))
        object.__setattr__(self, "downgrade", dict(self.downgrade))
        object.__setattr__(self, "_limits", limits)
        object.__setattr__(self, "_needs_total", any(lim and lim.percent for lim in limits))
        absolute = tuple(None if lim is None else lim.value for lim in limits)
        object.__setattr__(self, "_absolute", absolute)
        top = max((v for v in absolute if v is not None), default=-_INF)
        quick = self.enforce and self.unit is None and not self._needs_total
        object.__setattr__(self, "_quick_top", top if quick else _INF)
        object.__setattr__(self, "_map", _downgrade_map(self.downgrade))
        object.__setattr__(
            self, "_enforcing", self if self.enforce else replace(self, enforce=True)
        )
        self._operator_knobs()

    def _operator_knobs(self) -> None:
        """Validate ``warn_runway``, ``alerts`` and ``max_rate`` (see
        :mod:`creditguard.runway` and :mod:`creditguard.alerts`)."""
        if self.warn_runway is not None:
            value = _non_negative("warn_runway", self.warn_runway)
            if value <= 0:
                raise ConfigError("warn_runway", self.warn_runway, "a number of seconds > 0")
            object.__setattr__(self, "warn_runway", value)
        alerts = self.alerts
        if isinstance(alerts, (str, bytes)) or not isinstance(alerts, (tuple, list)):
            raise ConfigError(
                "alerts", alerts, "a list of levels: credits or percents, e.g. ['50%', '20%', 5.0]"
            )
        levels = []
        for level in alerts:
            limit = _parse_threshold("alerts", level)
            if limit is None:
                raise ConfigError("alerts", level, "a level in credits or a percent such as '20%'")
            levels.append(limit)
        object.__setattr__(self, "alerts", tuple(alerts))
        object.__setattr__(self, "_alert_limits", tuple(levels))
        object.__setattr__(self, "_rate", _parse_rate("max_rate", self.max_rate))
        object.__setattr__(self, "_steers", self._rate is not None or self.warn_runway is not None)

    def refuse_floor(self, balance: Balance) -> float | None:
        """``refuse_below`` in credits for ``balance`` (None: off, or a percent
        and the balance has no total)."""
        limit = self._limits[0]
        return None if limit is None else limit.resolve(balance.total)

    def downgrade_target(self, model: str) -> str | None:
        """The cheaper model configured for ``model``, or None."""
        return self._map.lookup(model)[0]

    def downgrade_chain(self, model: str) -> list[tuple[str, str]]:
        """The downgrade targets of ``model`` in order: its target, that
        target's own target, ... (up to 3 hops; a model seen before ends the
        chain). Each with the pattern that matched ("" for an exact name)."""
        chain: list[tuple[str, str]] = []
        seen = {model}
        current = model
        for _ in range(MAX_HOPS):
            target, matched = self._map.lookup(current)
            if target is None or target in seen:
                break
            chain.append((target, matched))
            seen.add(target)
            current = target
        return chain


class _DecisionSlots:
    __slots__ = (
        "_estimate",
        "_reason",
        "_runway",
        "action",
        "available",
        "balance",
        "enforced",
        "max_tokens",
        "model",
        "requested_model",
        "stale",
    )
    _reason: str | tuple[Any, ...]
    _estimate: float | None


_SET = {name: getattr(_DecisionSlots, name).__set__ for name in _DecisionSlots.__slots__}
_set_action, _set_model, _set_balance = _SET["action"], _SET["model"], _SET["balance"]
_set_reason, _set_requested, _set_stale = _SET["_reason"], _SET["requested_model"], _SET["stale"]
_set_enforced = _SET["enforced"]
_FAIL_OPEN = "; on_source_error=allow"
_set_available, _set_max_tokens = _SET["available"], _SET["max_tokens"]
_set_runway, _set_estimate = _SET["_runway"], _SET["_estimate"]


class Decision(_DecisionSlots):
    """The verdict on one call (immutable).

    ``action`` is ``"allow"``, ``"warn"``, ``"downgrade"`` or ``"refuse"``;
    ``model`` is the model to use (rewritten on downgrade), ``requested_model``
    the one the call asked for; ``balance`` the balance the decision was made on
    (None when none could be had); ``reason`` one human sentence. ``enforced``
    is False in shadow mode (``Policy(enforce=False)``): the call goes ahead as
    asked whatever was decided, and :attr:`applied` says what is carried out.
    ``available`` is what was left before this call: the remaining balance
    less what calls in flight hold (None without a balance); ``max_tokens``
    the output limit the call was clamped to (None: not clamped); ``runway``
    seconds until ``available`` reaches the refuse floor at the recent burn
    rate (None until known).

    One is made on every guarded call, so it is a slotted class rather than a
    dataclass, and its reason is put into words when first read (most are never
    read).
    """

    __slots__ = ()
    action: Action
    model: str | None
    balance: Balance | None
    requested_model: str | None
    stale: bool
    enforced: bool
    available: float | None
    max_tokens: int | None
    _runway: float | tuple[Any, ...] | None

    def __new__(
        cls,
        action: Action,
        model: str | None,
        balance: Balance | None,
        reason: str | tuple[Any, ...],
        requested_model: str | None = None,
        stale: bool = False,
        enforced: bool = True,
        available: float | None = None,
        max_tokens: int | None = None,
        runway: float | None = None,
        estimate: float | None = None,
    ) -> Decision:
        decision = _decision(
            action, model, balance, reason, requested_model, stale, enforced, available
        )
        if max_tokens is not None:
            _set_max_tokens(decision, max_tokens)
        if runway is not None:
            _set_runway(decision, runway)
        if estimate is not None:
            _set_estimate(decision, estimate)  # what to hold, when not the call's own estimate
        if cls is not Decision:  # (a subclass: Decision's own __setattr__ refuses)
            object.__setattr__(decision, "__class__", cls)
        return decision

    @property
    def reason(self) -> str:
        """One human sentence: why this action."""
        reason = self._reason
        if not isinstance(reason, str):
            reason = _explain(*reason)
            _set_reason(self, reason)
        return reason

    @property
    def runway(self) -> float | None:
        """Seconds until ``available`` reaches the refuse floor at the
        credential's recent burn rate (None until that rate is known). Worked
        out when first read (most decisions' runway is never read)."""
        runway = self._runway
        if type(runway) is tuple:
            runway = runway[0](self, *runway[1:])
            _set_runway(self, runway)
        return runway  # type: ignore[return-value]

    @property
    def allowed(self) -> bool:
        """True unless the call is refused."""
        return self.action != "refuse"

    @property
    def downgraded(self) -> bool:
        return self.action == "downgrade"

    @property
    def applied(self) -> Decision:
        """What the guarded call is made to do: this decision when enforced; in
        shadow mode an allow of the requested model (``action``, ``model`` and
        ``reason`` here still say what was decided). Every surface acts on this."""
        if self.enforced or self.action == "allow":
            return self
        view = object.__new__(Decision)
        for name, setter in _SET.items():
            setter(view, getattr(self, name))
        _set_action(view, "allow")
        _set_model(view, self.requested_model)
        return view

    @property
    def fail_open(self) -> bool:
        """Allowed only because no usable balance could be had
        (``on_source_error="allow"``)."""
        if self.action != "allow":
            return False
        reason = self._reason
        return self.balance is None or (isinstance(reason, str) and reason.endswith(_FAIL_OPEN))

    def held(self, estimate: float) -> float:
        """What the call holds: the chosen model's own estimate on a downgrade
        (or a clamp), else the call's ``estimate`` (also in shadow mode, where
        the call runs as asked)."""
        own = self._estimate
        return estimate if own is None or not self.enforced else own

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Decision is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Decision is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[object, ...]:
        return (
            self.action,
            self.model,
            self.balance,
            self.reason,
            self.requested_model,
            self.stale,
            self.enforced,
            self.available,
            self.max_tokens,
            self.runway,
            self._estimate,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        more = "" if self.max_tokens is None else f", max_tokens={self.max_tokens!r}"
        if self.runway is not None:
            more += f", runway={self.runway!r}"
        return (
            f"Decision(action={self.action!r}, model={self.model!r}, balance={self.balance!r}, "
            f"reason={self.reason!r}, requested_model={self.requested_model!r}, "
            f"stale={self.stale!r}, enforced={self.enforced!r}, "
            f"available={self.available!r}{more})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (Decision, self._fields())


def policy_of(
    policy_for: Callable[[str | None], Policy | None] | None,
    default: Policy,
    credential: str | None,
) -> Policy:
    """The policy that judges ``credential``'s calls: its route's own
    (``sources.ByHost``'s ``policy_for``), else ``default`` (the guard's)."""
    if policy_for is not None:
        return policy_for(credential) or default
    return default


_new = object.__new__


def _decision(
    action: Action,
    model: str | None,
    balance: Balance | None,
    reason: str | tuple[Any, ...],
    requested_model: str | None,
    stale: bool,
    enforced: bool,
    available: float | None,
) -> Decision:
    """A new :class:`Decision` (one is made on every guarded call): its slots
    are filled on a plain instance of the slotted base, which takes them at the
    speed of ordinary attributes, then it becomes the immutable Decision (the
    same layout). A third of the cost of the setters Decision must use."""
    new: Any = _new(_DecisionSlots)
    new.action = action
    new.model = model
    new.balance = balance
    new._reason = reason
    new.requested_model = requested_model
    new.stale = stale
    new.enforced = enforced
    new.available = available
    new.max_tokens = None
    new._runway = None
    new._estimate = None
    new.__class__ = Decision
    return new  # type: ignore[no-any-return]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def decide(
    balance: Balance | None,
    policy: Policy,
    model: str | None,
    estimate: float = 0.0,
    *,
    reserved: float = 0.0,
    can_rewrite: bool | Callable[[], bool] = True,
    unavailable: str = "no balance available",
    stale: bool = False,
    estimator: Estimator | None = None,
) -> Decision:
    """Decide what to do with one call. Pure: no I/O, no clock.

    ``balance`` None means no usable balance could be had (``unavailable`` says
    why); ``on_source_error`` decides then. ``reserved`` is what calls in flight
    hold; ``estimate`` what this call may cost. ``can_rewrite`` False means the
    call has no model to rewrite (a downgrade becomes a warning); a callable is
    asked only when it comes to a downgrade (it must be pure, like this function).
    In shadow mode (``policy.enforce`` False) the decision is the same, marked
    ``enforced=False``.
    ``estimator`` gives each downgrade target's own estimate (None: the same
    ``estimate`` for every model) and says whether the output limit may be clamped.
    """
    if not isinstance(policy, Policy):
        raise ConfigError("policy", policy, "a creditguard.Policy (Policy(...) builds one)")
    if balance is not None:
        remaining = balance.remaining
        available = remaining - reserved
        raw = available - estimate
        if raw - policy._quick_top >= 1e-9 and remaining < _INF:
            # Enforced, no unit to match, no percent, and far enough above
            # every tier that rounding (below) cannot change the answer: the
            # usual case, decided at once (the reason rounds). (Ledger.admit_fresh
            # inlines these four lines: keep them the same.)
            return _decision(
                "allow", model, balance, (raw, balance.unit), model, stale, True, available
            )
    if not policy.enforce:
        decision = decide(
            balance,
            policy._enforcing,
            model,
            estimate,
            reserved=reserved,
            can_rewrite=can_rewrite,
            unavailable=unavailable,
            stale=stale,
            estimator=estimator,
        )
        _set_enforced(decision, False)
        return decision
    if balance is None:
        return _on_unusable(policy, model, unavailable, stale)
    if policy.unit is not None and balance.unit != policy.unit:
        return _on_unusable(
            policy,
            model,
            f"the {balance.source or 'source'} balance is in {balance.unit} and the policy's "
            f"thresholds are in {policy.unit} (Policy.unit)",
            stale,
            balance,
        )
    remaining = balance.remaining
    if remaining == _INF:
        return _decision("allow", model, balance, "unlimited balance", model, stale, True, _INF)

    available = remaining - reserved
    raw = available - estimate
    if not policy._needs_total:
        refuse, down, warn = policy._absolute
    elif balance.total is None:
        return _on_unusable(
            policy,
            model,
            f"a percent threshold needs total credits and the {balance.source or 'source'} "
            "balance has none",
            stale,
            balance,
        )
    else:
        refuse, down, warn = (
            None if limit is None else limit.resolve(balance.total) for limit in policy._limits
        )
    # Compared at 1e-9 credits: 0.22 - 0.12 is 0.1, not 0.09999999999999998.
    headroom = round(raw, 9)
    unit = balance.unit
    refusing = refuse is not None and headroom < refuse
    if refusing or (down is not None and headroom < down):
        tier, threshold = ("refuse_below", refuse) if refusing else ("downgrade_below", down)
        why: tuple[object, ...] = (headroom, unit, tier, threshold)
        if model is None or not (can_rewrite() if callable(can_rewrite) else can_rewrite):
            if refusing:
                return Decision("refuse", model, balance, why, model, stale, True, available)
            why = (*why, "; the call has no model to rewrite")
            return Decision("warn", model, balance, why, model, stale, True, available)
        return _downgrade(
            policy, balance, model, estimate, available, refuse, refusing, why, stale, estimator
        )
    if warn is not None and headroom < warn:
        why = (headroom, unit, "warn_below", warn)
        return Decision("warn", model, balance, why, model, stale, True, available)
    return _decision("allow", model, balance, (headroom, unit), model, stale, True, available)


def _downgrade(
    policy: Policy,
    balance: Balance,
    model: str,
    estimate: float,
    available: float,
    refuse: float | None,
    refusing: bool,
    why: tuple[object, ...],
    stale: bool,
    estimator: Estimator | None,
) -> Decision:
    """At the downgrade or refuse tier: the first model down the downgrade
    chain whose own estimate keeps the headroom at or above the refuse floor;
    else, with ``clamp_max_tokens``, the first that fits with a smaller output
    limit; else refuse (at the refuse tier) or warn."""
    if refusing and estimator is None:  # every model the same estimate: none fits
        return Decision("refuse", model, balance, why, model, stale, True, available)
    floor = -_INF if refuse is None else refuse
    chain = policy.downgrade_chain(model)

    def own(name: str) -> Estimate | None:
        return Estimate(estimate) if estimator is None else estimator(name)

    seen: list[str] = []
    for hops, (target, matched) in enumerate(chain, 1):
        est = own(target)
        if est is None:
            seen.append(f"{target!r} (no known price)")
            continue
        after = round(available - est.total, 9)
        if after >= floor:
            path = f"; {model!r} -> {target!r}" + (f" (matched {matched!r})" if matched else "")
            if hops > 1:
                path += f" ({hops} hops: the nearer targets do not fit)"
            elif refusing:
                path += f", which leaves {_fmt(after)} {balance.unit}, not below refuse_below"
            reason = (*why, path)  # (the headroom as asked, then what the target leaves)
            return Decision(
                "downgrade",
                target,
                balance,
                reason,
                model,
                stale,
                True,
                available,
                estimate=est.total,
            )
        seen.append(f"{target!r} ({_fmt(after)} left)")
    if policy.clamp_max_tokens and estimator is not None and estimator.clampable and refusing:
        asked = estimator.max_tokens
        for name in (model, *(t for t, _ in chain)):
            est = own(name)
            if est is None or est.per_token <= 0:
                continue
            room = available - floor - est.prompt
            if not room > 0 or not math.isfinite(room):
                continue
            tokens = int(room / est.per_token)
            if asked is not None:
                tokens = min(tokens, asked - 1)
            if tokens < policy.min_tokens:
                continue
            held = est.prompt + est.per_token * tokens
            after = round(available - held, 9)
            if after < floor:  # (rounding) one token less
                tokens -= 1
                held = est.prompt + est.per_token * tokens
                after = round(available - held, 9)
                if tokens < policy.min_tokens or after < floor:
                    continue
            text = (
                f"; max_tokens clamped to {tokens}"
                + (f" (asked {asked})" if asked is not None else "")
                + (f" and {model!r} -> {name!r}" if name != model else f" for {model!r}")
                + f", which leaves {_fmt(after)} {balance.unit}, not below refuse_below"
                + f" (min_tokens {policy.min_tokens})"
            )
            reason = (*why, text)  # (the headroom the asked limit leaves, then the clamp's)
            return Decision(
                "downgrade",
                name,
                balance,
                reason,
                model,
                stale,
                True,
                available,
                tokens,
                estimate=held,
            )
    if not chain:
        first = policy._map.lookup(model)[0]
        more = (
            f"; no downgrade configured for {model!r}"
            if first is None
            else f"; {model!r} is already its downgrade target"
        )
    else:
        more = "; no downgrade target fits: " + ", ".join(seen)
    action: Action = "refuse" if refusing else "warn"
    if refusing and not chain and not policy.clamp_max_tokens:
        return Decision("refuse", model, balance, why, model, stale, True, available)
    return Decision(action, model, balance, (*why, more), model, stale, True, available)


def _explain(
    headroom: float, unit: str, tier: str = "", threshold: float = 0.0, more: str = ""
) -> str:
    """A decision's reason, put into words (when first read)."""
    left = f"{_fmt(round(headroom, 9))} {unit} left after this call"
    if not tier:
        return left
    return f"{left} is below {tier} {_fmt(threshold)}{more}"


def _on_unusable(
    policy: Policy,
    model: str | None,
    why: str,
    stale: bool,
    balance: Balance | None = None,
) -> Decision:
    if policy.on_source_error == "refuse":
        return Decision("refuse", model, balance, f"{why}; on_source_error=refuse", model, stale)
    return Decision("allow", model, balance, f"{why}{_FAIL_OPEN}", model, stale)
