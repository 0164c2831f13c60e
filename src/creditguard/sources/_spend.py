"""Budgets over what a provider reports as spent: OpenAI's and Anthropic's admin cost reports.

OpenAI and Anthropic have no balance endpoint; their admin APIs report what the
organisation spent, per UTC day. :class:`OpenAISpend` and :class:`AnthropicSpend`
turn that into a balance: ``budget - spent in the period``, the period a calendar
day, week or month in UTC (like :class:`~creditguard.sources.FixedBudget`).

The reports lag (minutes to hours), so the source also learns the spend of the
calls the guard settles (``record``) and keeps it until the report shows it:

* every fetch remembers what the report said (the *baseline*);
* local spend recorded after a fetch is kept with that fetch's baseline;
* the spend a fetch reports is the largest of the lower bounds it knows: the
  report itself, and, for each baseline, that baseline plus all local spend
  recorded since. Each bound is money really spent, so nothing is counted twice;
  local spend counts until the report passes the bound it is part of, so nothing
  is dropped while the report lags.

Spend of others in the same organisation (another app, the console) shows only
through the report. The request and parsing code is sans-I/O (:meth:`HttpSource._plan`: one
request per page); the shared HTTP code sends them, within one total ``timeout``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar, Literal

import httpx

from ..balance import Balance, check_cost
from ..errors import ConfigError, CreditSourceError, env_name_shown
from ._base import logger
from ._fixed import period_start
from ._http import BadResponse, HttpSource, Plan, _json_type, get_decimal, get_number

__all__ = ["AnthropicSpend", "OpenAISpend", "Unshown"]

SpendPeriod = Literal["day", "week", "month"]
_PERIODS = ("day", "week", "month")
_MAX_PAGES = 32  # a month is 31 daily buckets: one page; more is a provider looping
_MAX_EPOCHS = 256
_MAX_SPENT = 1e15  # USD; a report past it is not a real one (and would overflow sums)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _next_period(start: date, period: SpendPeriod) -> float:
    """When the period beginning ``start`` ends (Unix seconds): the budget resets."""
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    else:
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return datetime(end.year, end.month, end.day, tzinfo=timezone.utc).timestamp()


# -- local spend the report may not show yet (pure state) ----------------------


class Unshown:
    """Local spend kept until a lagging report shows it (see the module docstring).

    Not thread-safe by itself: the source holds its lock around every call.
    """

    __slots__ = ("epochs", "reported", "start")

    def __init__(self) -> None:
        self.start: date | None = None
        self.reported = 0.0  # the last report of this period (0: none yet, a valid bound)
        # [baseline, local spend recorded since that baseline was reported]
        self.epochs: list[list[float]] = []

    def _roll(self, start: date) -> None:
        if self.start is None or start > self.start:
            self.start = start
            self.reported = 0.0
            self.epochs.clear()

    def record(self, start: date, cost: float) -> None:
        """``cost`` spent locally now, in the period beginning ``start``."""
        self._roll(start)
        if self.start != start:  # a cost of a period already over: the report has it
            return
        epochs = self.epochs
        if epochs and epochs[-1][0] == self.reported:
            epochs[-1][1] += cost
        else:
            epochs.append([self.reported, cost])
            if len(epochs) > _MAX_EPOCHS:
                # merge the two oldest under the lower baseline: a smaller bound,
                # never a larger one (nothing is counted twice)
                first, second = epochs[0], epochs.pop(1)
                first[0] = min(first[0], second[0])
                first[1] += second[1]

    def spent(self, start: date, reported: float) -> float:
        """The spend to judge on, given the provider's ``reported`` spend now."""
        self._roll(start)
        if self.start != start:  # the clock stepped back: the report alone
            return reported
        self.reported = reported
        epochs = self.epochs
        suffix = math.fsum(amount for _, amount in epochs)
        best = reported
        drop, pruning = 0, True
        for baseline, amount in epochs:
            bound = baseline + suffix
            if pruning and bound <= reported:
                drop += 1  # the report shows all of it (reports only grow): never needed again
            else:
                pruning = False
                best = max(best, bound)
            suffix -= amount
        del epochs[:drop]
        return best

    @property
    def pending(self) -> float:
        """Local spend still kept (for logs and tests)."""
        return math.fsum(amount for _, amount in self.epochs)


# -- reading the reports (pure) ------------------------------------------------


def _list(container: dict[str, Any], key: str, path: str) -> list[Any]:
    if key not in container:
        raise BadResponse(f"{path} is missing")
    value = container[key]
    if not isinstance(value, list):
        raise BadResponse(f"{path} is {_json_type(value)}, expected an array")
    return value


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{path} is {_json_type(value)}, expected an object")
    return value


def _string(container: dict[str, Any], key: str, path: str) -> str:
    if key not in container:
        raise BadResponse(f"{path} is missing")
    value = container[key]
    if not isinstance(value, str):
        raise BadResponse(f"{path} is {_json_type(value)}, expected a string")
    return value


def _paging(doc: dict[str, Any]) -> str | None:
    """``has_more`` and ``next_page``: the next page's token, or None."""
    if "has_more" not in doc:
        raise BadResponse("has_more is missing")
    more = doc["has_more"]
    if not isinstance(more, bool):
        raise BadResponse(f"has_more is {_json_type(more)}, expected a boolean")
    if not more:
        return None
    token = doc.get("next_page")
    if not isinstance(token, str) or not token:
        raise BadResponse("has_more is true but next_page is not a token")
    return token


def _decimal(text: str, path: str) -> Decimal:
    """A decimal string as documented (``"123.45"``): the shared reader's rules
    (no exponent, no ``NaN``, no ``1_000``, at most 64 characters), kept exact."""
    get_decimal({"v": text}, "v", path, non_negative=True)  # raises BadResponse
    return Decimal(text.strip())


def _finite(spent: float) -> float:
    if not math.isfinite(spent) or spent > _MAX_SPENT:
        raise BadResponse("the reported amounts add up to more than any budget")
    return spent


def _timestamp(text: str, path: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadResponse(f"{path} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_openai_costs(doc: dict[str, Any], since: float) -> tuple[float, str | None]:
    """One page of ``GET /organization/costs``: USD spent in buckets starting at
    or after ``since`` (Unix seconds), and the next page's token."""
    total = Decimal(0)
    for i, raw in enumerate(_list(doc, "data", "data")):
        bucket = _object(raw, f"data[{i}]")
        start = get_number(bucket, "start_time", f"data[{i}].start_time", required=True)
        get_number(bucket, "end_time", f"data[{i}].end_time", required=True)
        results = _list(bucket, "results", f"data[{i}].results")
        for j, item in enumerate(results):
            where = f"data[{i}].results[{j}]"
            result = _object(item, where)
            amount = _object(result.get("amount"), f"{where}.amount")
            value = get_number(
                amount, "value", f"{where}.amount.value", required=True, non_negative=True
            )
            currency = _string(amount, "currency", f"{where}.amount.currency")
            if currency.lower() != "usd":
                raise BadResponse(f"{where}.amount.currency is {currency[:16]!r}, expected 'usd'")
            assert start is not None and value is not None
            if start >= since:
                total += Decimal(repr(value))
    return _finite(float(total)), _paging(doc)


def parse_anthropic_costs(doc: dict[str, Any], since: float) -> tuple[float, str | None]:
    """One page of ``GET /organizations/cost_report``: USD spent in buckets
    starting at or after ``since``, and the next page's token. Amounts are cents,
    as decimal strings."""
    cents = Decimal(0)
    for i, raw in enumerate(_list(doc, "data", "data")):
        bucket = _object(raw, f"data[{i}]")
        start = _timestamp(_string(bucket, "starting_at", f"data[{i}].starting_at"), "starting_at")
        _timestamp(_string(bucket, "ending_at", f"data[{i}].ending_at"), "ending_at")
        results = _list(bucket, "results", f"data[{i}].results")
        for j, item in enumerate(results):
            where = f"data[{i}].results[{j}]"
            result = _object(item, where)
            amount = _decimal(_string(result, "amount", f"{where}.amount"), f"{where}.amount")
            currency = _string(result, "currency", f"{where}.currency")
            if currency.upper() != "USD":
                raise BadResponse(f"{where}.currency is {currency[:16]!r}, expected 'USD'")
            if start >= since:
                cents += amount
    return _finite(float(cents / 100)), _paging(doc)


# -- the sources ---------------------------------------------------------------


class _SpendSource(HttpSource):
    """A budget drawn down by the provider's cost report and local spend."""

    _default_env: ClassVar[str]
    _limit: ClassVar[int]

    def __init__(
        self,
        budget: float,
        period: SpendPeriod = "month",
        api_key: str | None = None,
        *,
        api_key_env: str | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if (
            isinstance(budget, bool)
            or not isinstance(budget, (int, float))
            or (isinstance(budget, int) and budget > 2**1000)  # (not OverflowError below)
            or not math.isfinite(budget)
            or budget < 0
        ):
            raise ConfigError("budget", budget, "a finite number >= 0 (USD per period)")
        if period not in _PERIODS:
            raise ConfigError("period", period, "'day', 'week' or 'month' (calendar, UTC)")
        if clock is not None and not callable(clock):
            raise ConfigError("clock", clock, "a function returning an aware datetime")
        if isinstance(api_key, str) and not api_key.strip():
            api_key = None  # api_key=os.environ.get("X", ""): as if not given, checked below
        if api_key is None and api_key_env is None:
            api_key_env = self._default_env
        if (
            api_key is None
            and isinstance(api_key_env, str)
            and not os.environ.get(api_key_env, "").strip()
        ):
            # loud at once: a guard that can never read its balance is misconfigured
            shown = env_name_shown(api_key_env)  # (a key pasted here by mistake: never shown)
            raise ConfigError(
                "api_key_env",
                shown,
                f"the name of a set environment variable holding the admin key "
                f"{type(self).__name__} reads the cost report with; {shown} is not set "
                "(set it or pass api_key=; the key a call carries is never used)",
            )
        super().__init__(
            api_key,
            api_key_env=api_key_env,
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            async_transport=async_transport,
        )
        self.per_credential = False  # an admin key of its own, never the call's
        self.budget = float(budget)
        self.period: SpendPeriod = period
        self._clock = clock or _utcnow
        self._local_lock = threading.Lock()
        self._unshown = Unshown()

    # -- sans-I/O core -------------------------------------------------------

    def _key(self, credential: str | None) -> str:
        """The source's own admin key; the call's credential is never used."""
        try:
            return super()._key(None)
        except CreditSourceError as exc:
            if not exc.reason.startswith("no API key"):
                raise
            where = f"${env_name_shown(self._api_key_env)}" if self._api_key_env else "api_key="
            raise CreditSourceError(
                f"no admin API key: {where} is not set; {self.name} reads the cost report "
                "with an admin key of its own, never the key a call carries",
                source=self.name,
            ) from None

    def _window(self) -> tuple[date, float]:
        start = period_start(self._clock(), self.period)
        moment = datetime(start.year, start.month, start.day, tzinfo=timezone.utc)
        return start, moment.timestamp()

    def _params(self, since: float, page: str | None) -> dict[str, str | int]:
        raise NotImplementedError

    def _spend_of(self, doc: dict[str, Any], since: float) -> tuple[float, str | None]:
        raise NotImplementedError

    def _plan(self, key: str) -> Plan:
        """Every page of the report from the period's start; the balance."""
        start, since = self._window()
        reported, page = 0.0, None
        for _ in range(_MAX_PAGES):
            doc = yield self._get(key, params=self._params(since, page))
            spent, page = self._spend_of(doc, since)
            reported = _finite(reported + spent)
            if page is None:
                return self._balance(start, reported)
        raise BadResponse(f"the report has more than {_MAX_PAGES} pages")

    def _balance(self, start: date, reported: float) -> Balance:
        with self._local_lock:
            spent = self._unshown.spent(start, reported)
            pending = self._unshown.pending
        logger.debug(
            "%s: reported %s USD, judged on %s (local spend not yet reported: %s)",
            self.name,
            reported,
            spent,
            pending,
        )
        return Balance(
            remaining=self.budget - spent,
            total=self.budget,
            used=spent,
            unit="USD",
            fetched_at=time.time(),
            source=self.name,
            resets_at=_next_period(start, self.period),
        )

    def record(self, credential: str | None, cost: float) -> None:
        """Local spend of a finished call, kept until the report shows it."""
        cost = check_cost(cost)
        if not cost:
            return
        start, _ = self._window()
        with self._local_lock:
            self._unshown.record(start, cost)

    def __repr__(self) -> str:
        base = super().__repr__()
        head, _, rest = base.partition("(")
        rest = rest.replace(", api_key=None (the call's credential)", "")
        return f"{head}(budget={self.budget:g}, period={self.period!r}, {rest}"


class OpenAISpend(_SpendSource):
    """``budget`` (USD) per period less what OpenAI's costs report shows as spent.

    Reads ``GET {base_url}/organization/costs`` (1-day buckets from the
    period's start, every page) with an *admin* key of its own:
    ``api_key=`` or ``api_key_env=`` (default ``$OPENAI_ADMIN_KEY``). Local
    spend the report does not show yet counts too (see the module docstring).
    """

    name = "openai-spend"
    _path = "/organization/costs"
    _default_base_url = "https://api.openai.com/v1"
    _default_env = "OPENAI_ADMIN_KEY"
    _forbidden_hint = " (the costs report needs an admin key)"
    _limit = 31

    def _params(self, since: float, page: str | None) -> dict[str, str | int]:
        params: dict[str, str | int] = {
            "start_time": int(since),
            "bucket_width": "1d",
            "limit": self._limit,
        }
        if page is not None:
            params["page"] = page
        return params

    def _spend_of(self, doc: dict[str, Any], since: float) -> tuple[float, str | None]:
        return parse_openai_costs(doc, since)


class AnthropicSpend(_SpendSource):
    """``budget`` (USD) per period less what Anthropic's cost report shows as spent.

    Reads ``GET {base_url}/v1/organizations/cost_report`` (1-day buckets from
    the period's start, every page; amounts in cents as decimal strings) with an
    *admin* key of its own (``sk-ant-admin...``): ``api_key=`` or
    ``api_key_env=`` (default ``$ANTHROPIC_ADMIN_KEY``). Local spend the report
    does not show yet counts too (see the module docstring).
    """

    name = "anthropic-spend"
    _path = "/v1/organizations/cost_report"
    _default_base_url = "https://api.anthropic.com"
    _default_env = "ANTHROPIC_ADMIN_KEY"
    _forbidden_hint = " (the cost report needs an admin key)"
    _sdk_suffixes = ("/v1",)  # the SDK's base_url may end in /v1; the path has it
    _limit = 31

    def _params(self, since: float, page: str | None) -> dict[str, str | int]:
        starting_at = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        params: dict[str, str | int] = {
            "starting_at": starting_at,
            "bucket_width": "1d",
            "limit": self._limit,
        }
        if page is not None:
            params["page"] = page
        return params

    def _headers(self, key: str) -> dict[str, str]:
        return {
            "x-api-key": key,
            "anthropic-version": "2023-06-01",
            "Accept": "application/json",
            "User-Agent": "creditguard",
        }

    def _spend_of(self, doc: dict[str, Any], since: float) -> tuple[float, str | None]:
        return parse_anthropic_costs(doc, since)
