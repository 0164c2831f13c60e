"""Burn rates and runway: how fast each credential spends, how long until it runs dry.

:class:`BurnRates` subscribes to the guard's spend events and keeps, per
credential, an exponentially weighted spend rate with a 15-minute time
constant. Two readings of it serve two purposes:

* the *runway* (``Decision.runway``, ``Policy(warn_runway=...)``): seconds
  until ``available`` reaches the refuse floor at the recent rate. The rate is
  corrected for the short time it has been watched (an average over what was
  seen, not diluted by the quiet before it) and is only given after a minute
  of watching: None until then;
* the *spend-rate limit* (``Policy(max_rate="1/min")``): the plain weighted
  rate, which starts from zero. It behaves like a bucket that holds
  ``max_rate`` x 15 minutes: a burst may spend that much before the rate
  counts as above the limit, and a steady spend above it is stopped within
  minutes. Above the limit, calls are downgraded (the policy's downgrade map)
  or, with nothing cheaper to go to, refused; at 1.25 x the limit
  (downgrading did not slow it enough), refused.

:func:`steer` is the pure rule; :func:`assess` reads the rates (the clock is
the guard's injectable timer) and applies it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from .policy import Decision, Policy, _set_runway

__all__ = ["FOLD", "REFUSE_FACTOR", "TAU", "WARMUP", "BurnRates", "attach", "runway_of", "steer"]

TAU = 900.0
"""The time constant of the weighted spend rate: about the last 15 minutes."""
WARMUP = 60.0
"""Seconds a credential's spend is watched before a runway is given."""
REFUSE_FACTOR = 1.25
"""Above this multiple of ``max_rate`` calls are refused, not downgraded."""

FOLD = 5.0
"""Spend is gathered and folded into the weighted rate at most this often (seconds)."""

_exp = math.exp


class BurnRates:
    """Each credential's recent spend rate (credits per second); see the module
    docstring. ``timer`` is the guard's monotonic clock; bounded to ``maxsize``
    credentials (the least recently spending are forgotten first).

    The ledger adds every settled cost (:meth:`add`, under its own lock, on
    the hot path of a settle: a dict read and an addition); the spend is
    folded into the weighted rate when read, or every :data:`FOLD` seconds.
    """

    __slots__ = ("_lock", "maxsize", "rates", "tau", "timer")

    def __init__(
        self, timer: Callable[[], float], *, tau: float = TAU, maxsize: int = 10_000
    ) -> None:
        self.timer = timer
        self.tau = tau
        self.maxsize = maxsize
        # key -> [rate as of ``last`` (credits/s), spend not folded yet, last, first]
        self.rates: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, cost: float, now: float) -> None:
        """``cost`` credits charged to ``key`` at ``now``."""
        rate = self.rates.get(key)
        if rate is not None:
            rate[1] += cost
            if now - rate[2] >= FOLD:
                with self._lock:
                    self._fold(rate, now)
            return
        with self._lock:
            rates = self.rates
            if len(rates) >= self.maxsize:
                # the least recently folded goes (close to the least recently spending)
                del rates[min(rates, key=lambda k: rates[k][2])]
            rates[key] = [0.0, cost, now, now]

    def spent(self, key: str, cost: float, how: str = "") -> None:
        """:meth:`add` at the timer's now (a spend-event subscriber's signature)."""
        if cost:
            self.add(key, cost, self.timer())

    def _fold(self, rate: list[float], now: float) -> None:
        elapsed = now - rate[2]
        value = rate[0] * _exp(-elapsed / self.tau) if elapsed > 0 else rate[0]
        rate[0] = value + rate[1] / self.tau
        rate[1] = 0.0
        if elapsed > 0:
            rate[2] = now

    def rate(self, key: str, now: float | None = None) -> float:
        """The weighted spend rate of ``key`` (credits per second; 0 when
        nothing was spent): the reading ``max_rate`` is compared with."""
        rate = self.rates.get(key)
        if rate is None:
            return 0.0
        if now is None:
            now = self.timer()
        with self._lock:
            self._fold(rate, now)
            return rate[0]

    def burn(self, key: str, now: float | None = None) -> float | None:
        """The recent spend rate of ``key`` corrected for how long it has been
        watched (credits per second); None until watched for :data:`WARMUP`."""
        rate = self.rates.get(key)
        if rate is None:
            return None
        if now is None:
            now = self.timer()
        with self._lock:
            return _burn_at(rate, now, self.tau)

    def runway(
        self, key: str, available: float, floor: float, now: float | None = None
    ) -> float | None:
        """Seconds until ``available`` reaches ``floor`` at the recent rate
        (None: rate not known yet; inf: nothing is being spent)."""
        rate = self.rates.get(key)
        if rate is None:
            return 0.0 if available <= floor else None
        if now is None:
            now = self.timer()
        with self._lock:
            return _runway_at(rate, now, self.tau, available, floor)

    def __len__(self) -> int:
        return len(self.rates)


def _per_minute(rate: float) -> str:
    return f"{rate * 60:.4g}"


def steer(
    decision: Decision,
    policy: Policy,
    rate: float,
    runway: float | None,
    can_rewrite: bool | Callable[[], bool] = True,
) -> Decision:
    """``decision`` under ``max_rate`` and ``warn_runway`` (pure). ``rate``:
    the weighted spend rate with this call's estimate, credits per second."""
    action = decision.action
    if action == "refuse":
        return decision
    limit = policy._rate
    balance = decision.balance
    unit = balance.unit if balance is not None else "credits"
    model = decision.requested_model
    if limit is not None and rate > limit:
        why = (
            f"spending {_per_minute(rate)} {unit}/min, above max_rate {policy.max_rate} "
            f"({_per_minute(limit)}/min)"
        )
        if rate > limit * REFUSE_FACTOR:
            return _remake(decision, "refuse", model, f"{why}; downgrading has not slowed it")
        if action == "downgrade":
            return _remake(decision, "downgrade", decision.model, f"{why}; {decision.reason}")
        target = None
        if model is not None and (can_rewrite() if callable(can_rewrite) else can_rewrite):
            target = policy.downgrade_target(model)
        if target is None or target == model:
            return _remake(decision, "refuse", model, f"{why}; no cheaper model to downgrade to")
        return _remake(decision, "downgrade", target, f"{why}; {model!r} -> {target!r}")
    warn_runway = policy.warn_runway
    if (
        warn_runway is not None
        and runway is not None
        and runway < warn_runway
        and action == "allow"
    ):
        return _remake(
            decision,
            "warn",
            decision.model,
            f"runway {runway:.0f} s at the recent burn rate is below warn_runway "
            f"{warn_runway:g} s; {decision.reason}",
        )
    return decision


def _remake(decision: Decision, action: str, model: str | None, reason: str) -> Decision:
    same = model == decision.model  # a new model: the old one's hold and limits go
    return Decision(
        action,  # type: ignore[arg-type]
        model,
        decision.balance,
        reason,
        decision.requested_model,
        decision.stale,
        decision.enforced,
        decision.available,
        max_tokens=decision.max_tokens if same else None,
        runway=decision.runway,
        estimate=decision._estimate if same else None,
    )


def _burn_at(rate: list[float] | tuple[float, ...], now: float, tau: float) -> float | None:
    """The burn rate a rate record says at ``now``, corrected for how long it
    has been watched; None before :data:`WARMUP`. Pure."""
    value, pending, last, first = rate[0], rate[1], rate[2], rate[3]
    watched = now - first
    if watched < WARMUP:
        return None
    elapsed = now - last
    if elapsed > 0:
        value *= _exp(-elapsed / tau)
    return (value + pending / tau) / -math.expm1(-watched / tau)


def _runway_at(
    rate: list[float] | tuple[float, ...], now: float, tau: float, available: float, floor: float
) -> float | None:
    if available <= floor:
        return 0.0
    burn = _burn_at(rate, now, tau)
    if burn is None:
        return None
    if burn <= 0.0:
        return math.inf
    return (available - floor) / burn


def runway_of(
    decision: Decision, rate: tuple[float, ...], now: float, tau: float, policy: Policy
) -> float | None:
    """``decision.runway``, worked out when first read from the rate as it
    was when the decision was made."""
    balance = decision.balance
    available = decision.available
    if balance is None or available is None or available == math.inf:
        return None
    return _runway_at(rate, now, tau, available, policy.refuse_floor(balance) or 0.0)


def attach(
    decision: Decision,
    policy: Policy,
    burn: BurnRates,
    key: str,
    estimate: float,
    now: float,
    can_rewrite: bool | Callable[[], bool] = True,
) -> Decision:
    """Give ``decision`` its runway (worked out when read) and, when the policy
    has ``max_rate`` or ``warn_runway``, apply :func:`steer`. The ledger calls
    this under its lock, before a hold is taken, so a refusal holds nothing."""
    rate = burn.rates.get(key)
    if rate is None:
        runway = None
    else:
        snapshot = (rate[0], rate[1], rate[2], rate[3])
        if not policy._steers:
            _set_runway(decision, (runway_of, snapshot, now, burn.tau, policy))
            return decision
        runway = runway_of(decision, snapshot, now, burn.tau, policy)
        _set_runway(decision, runway)
    spending = burn.rate(key, now) + estimate / burn.tau
    return steer(decision, policy, spending, runway, can_rewrite)
