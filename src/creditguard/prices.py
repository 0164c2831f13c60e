"""Price lists: what a model's tokens cost, behind one lookup the estimates use.

A call's estimate (what it holds while it runs) comes, in order, from:

1. the guard's ``pricing`` mapping (always wins);
2. the price lists named by ``pricing_from``: ``"openrouter"`` (GET /models on
   the OpenRouter host, public, fetched at the first call that needs a price and
   then once a day) and ``"genai-prices"`` (the ``genai-prices`` package, extra
   ``creditguard[prices]``); the default ``"auto"`` uses OpenRouter's list when
   the credits source is an OpenRouter one, and genai-prices when installed;
3. with no price: the 90th percentile of the model's last 100 settled costs
   (learned in this process), when higher than the guard's ``estimate``;
4. the guard's ``estimate``.

A name is tried as given, then without a dated suffix (``gpt-4o-2024-08-06``),
then without its provider prefix (``openai/gpt-4o``). Lookups are memoised per
model: nothing is fetched or parsed per call once a list is loaded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import httpx

from ._fingerprint import redact
from .costs import Price, Pricing
from .errors import ConfigError, finite_number
from .policy import Estimate
from .sources._http import _Borrowed, _BorrowedSync

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = [
    "DEFAULT_OPENROUTER_URL",
    "GenaiPrices",
    "Learned",
    "OpenRouterPrices",
    "PriceBook",
    "PriceList",
    "price_lists",
]

log = logging.getLogger("creditguard")

DEFAULT_OPENROUTER_URL = "https://openrouter.ai/api/v1"
DAY = 86_400.0
RETRY_AFTER = 60.0  # seconds a failed list is left alone before it is fetched again
MAX_LIST_BODY = 32 * 1024 * 1024
_MEMO_SIZE = 4096
_INF = math.inf
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
_DATED = re.compile(r"(-20[0-9]{2}-[01][0-9]-[0-3][0-9]|-20[0-9]{6}|@20[0-9]{6}|-[0-9]{4})\Z")


def name_variants(model: str) -> list[str]:
    """``model`` as given, without a dated suffix, without its provider prefix
    (and without both), in that order, each once."""
    names = [model]
    undated = _DATED.sub("", model)
    if undated and undated != model:
        names.append(undated)
    if "/" in model:
        bare = model.rsplit("/", 1)[1]
        for name in (bare, _DATED.sub("", bare)):
            if name and name not in names:
                names.append(name)
    return names


class PriceList(Protocol):
    """One price list the book consults after the ``pricing`` mapping."""

    name: str

    def lookup(self, model: str) -> Price | None:
        """The price of ``model`` from what is loaded (never I/O)."""

    def next_due(self) -> float:
        """Monotonic time at which the list wants loading (0: now, inf: never)."""

    def loaded(self) -> bool:
        """Is a list loaded (possibly old)?"""

    def load(self) -> None:
        """Load or refresh it, blocking at most its timeout; never raises."""

    async def aload(self) -> None:
        """:meth:`load` without blocking the event loop."""


# -- OpenRouter's list ----------------------------------------------------------


def _usd(value: object) -> float | None:
    """A per-token price as OpenRouter writes it: a decimal string, >= 0."""
    if not isinstance(value, str) or not _DECIMAL.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_openrouter_models(body: bytes) -> dict[str, Price]:
    """``{"data": [{"id", "pricing": {"prompt", "completion"}}]}`` -> prices by id.

    Strict: prices must be decimal strings of USD per token (OpenRouter's own
    form); an entry whose price is missing, negative (``"-1"``: variable) or
    not a string is left out (unknown, never free). A document that is not
    this shape raises ValueError."""
    if len(body) > MAX_LIST_BODY:
        raise ValueError(f"the models list is over {MAX_LIST_BODY} bytes")
    doc = json.loads(body)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("the models list has no data array")
    prices: dict[str, Price] = {}
    skipped = 0
    for entry in data:
        if not isinstance(entry, dict):
            skipped += 1
            continue
        ident, pricing = entry.get("id"), entry.get("pricing")
        if not isinstance(ident, str) or not ident or not isinstance(pricing, dict):
            skipped += 1
            continue
        prompt, completion = _usd(pricing.get("prompt")), _usd(pricing.get("completion"))
        if prompt is None or completion is None:
            skipped += 1
            continue
        prices[ident] = Price(prompt, completion)
        slug = entry.get("canonical_slug")
        if isinstance(slug, str) and slug and slug not in prices:
            prices[slug] = prices[ident]
    if data and not prices:
        raise ValueError("no entry of the models list has a usable price")
    if skipped:
        log.debug("openrouter models: %d entries without a usable price left out", skipped)
    return prices


class OpenRouterPrices:
    """OpenRouter's public model list, ``GET {base_url}/models``: fetched when
    first needed, then every ``max_age`` seconds (default a day), one fetch at
    a time. A failed fetch keeps the last list and is not retried for a
    minute; nobody waits longer than ``timeout`` for it."""

    name = "openrouter"

    def __init__(
        self,
        base_url: str = DEFAULT_OPENROUTER_URL,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        max_age: float = DAY,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", base_url, "an http:// or https:// URL")
        for key, value in (("timeout", timeout), ("max_age", max_age)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(key, value, "a finite number of seconds > 0")
        if async_transport is None and isinstance(transport, httpx.AsyncBaseTransport):
            async_transport = transport
        self.url = base_url.rstrip("/") + "/models"  # (requests only: may hold a password)
        self.shown = redact(self.url)  # what logs, reprs and describe() show
        self.timeout = float(timeout)
        self.max_age = float(max_age)
        self._transport = transport
        self._async_transport = async_transport
        self._timer = timer
        self._lock = threading.Lock()
        self._prices: dict[str, Price] | None = None
        self._bare: dict[str, Price] = {}
        self._loaded_at = -math.inf
        self._failed_at = -math.inf
        self._flight: threading.Event | None = None
        self._flight_deadline = 0.0
        self.fetches = 0  # fetches started (for tests and the curious)

    @classmethod
    def for_source(cls, source: object) -> OpenRouterPrices:
        """The list on the host of an OpenRouter credits source (its base URL,
        timeout and test transports), else on openrouter.ai."""
        found = _openrouter_source(source)
        if found is None:
            return cls()
        return cls(
            str(found.base_url),
            timeout=float(getattr(found, "timeout", 10.0)),
            transport=getattr(found, "_transport", None),
            async_transport=getattr(found, "_async_transport", None),
        )

    def __repr__(self) -> str:
        state = "not loaded" if self._prices is None else f"{len(self._prices)} models"
        return f"OpenRouterPrices({self.shown!r}, {state})"

    # -- reading (no I/O) ---------------------------------------------------------

    def lookup(self, model: str) -> Price | None:
        prices = self._prices
        if prices is None:
            return None
        hit = prices.get(model)
        if hit is None and "/" not in model:
            hit = self._bare.get(model)
        return hit

    def loaded(self) -> bool:
        return self._prices is not None

    def next_due(self) -> float:
        if self._failed_at > self._loaded_at:
            return self._failed_at + RETRY_AFTER
        return self._loaded_at + self.max_age

    def _apply(self, prices: dict[str, Price]) -> None:
        bare: dict[str, Price] = {}
        for ident, price in prices.items():
            if "/" in ident:
                name = ident.split("/", 1)[1]
                old = bare.get(name)
                # one name from several providers: the dearest (never under-hold)
                if old is None or price.of(1, 1) > old.of(1, 1):
                    bare[name] = price
        with self._lock:
            self._prices, self._bare = prices, bare
            self._loaded_at = self._timer()

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failed_at = self._timer()
            had = self._prices is not None
        log.warning(
            "openrouter price list %s not fetched (%s: %s); %s",
            self.shown,
            type(exc).__name__,
            redact(str(exc))[:200],
            "the last list stays in use" if had else "estimates go on without it",
        )

    # -- loading ----------------------------------------------------------------

    def _begin(self) -> tuple[bool, threading.Event | None]:
        """Lead a fetch (True), or the flight to wait on (nothing to do: None)."""
        with self._lock:
            now = self._timer()
            if now < self.next_due():
                return False, None
            flight = self._flight
            if flight is not None and now < self._flight_deadline:
                return False, flight
            self._flight = threading.Event()
            self._flight_deadline = now + self.timeout + 1.0
            self.fetches += 1
            return True, self._flight

    def _end(self, flight: threading.Event) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None
        flight.set()

    def _request(self) -> httpx.Request:
        return httpx.Request(
            "GET",
            self.url,
            headers={"Accept": "application/json", "User-Agent": "creditguard"},
            extensions={"timeout": httpx.Timeout(self.timeout).as_dict()},
        )

    def _read(self, response: httpx.Response) -> dict[str, Price]:
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        return parse_openrouter_models(response.content)

    def load(self) -> None:
        lead, flight = self._begin()
        if flight is None:
            return
        if not lead:
            if self._prices is None and not _loop_running():
                flight.wait(self.timeout)
            return
        try:
            self._sync_fetch_apply()
        except Exception as exc:
            self._failed(exc)
        finally:
            self._end(flight)

    async def aload(self) -> None:
        lead, flight = self._begin()
        if flight is None:
            return
        if not lead:
            deadline = time.monotonic() + self.timeout
            while self._prices is None and not flight.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            return
        try:
            transport = self._async_transport
            if transport is None and self._transport is not None:
                await asyncio.to_thread(self._sync_fetch_apply)
                return
            async with (
                httpx.AsyncClient(transport=_Borrowed(transport), timeout=self.timeout)
                if transport is not None
                else httpx.AsyncClient(timeout=self.timeout)
            ) as client:
                response = await asyncio.wait_for(client.send(self._request()), self.timeout)
                self._apply(self._read(response))
        except Exception as exc:
            self._failed(exc)
        finally:
            self._end(flight)

    def _sync_fetch_apply(self) -> None:
        transport = self._transport
        with (
            httpx.Client(transport=_BorrowedSync(transport), timeout=self.timeout)
            if transport is not None
            else httpx.Client(timeout=self.timeout)
        ) as client:
            self._apply(self._read(client.send(self._request())))


def _openrouter_source(source: object, depth: int = 0) -> Any:
    """The OpenRouter source in ``source`` (itself, or one it combines), or None."""
    if depth > 4:
        return None
    name = getattr(source, "name", "")
    if (
        isinstance(name, str)
        and name.startswith("openrouter")
        and isinstance(getattr(source, "base_url", None), str)
    ):
        return source
    inner = getattr(source, "sources", None)
    if isinstance(inner, Mapping):
        inner = tuple(inner.values())
    if isinstance(inner, (tuple, list)):
        for item in inner:
            found = _openrouter_source(item, depth + 1)
            if found is not None:
                return found
    return None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- genai-prices -----------------------------------------------------------------


def genai_prices_installed() -> bool:
    return importlib.util.find_spec("genai_prices") is not None


class GenaiPrices:
    """Prices from the ``genai-prices`` package (``pip install 'creditguard[prices]'``),
    with its own model matching and provider ids. ``openai/gpt-4o`` is tried
    as provider ``openai``'s ``gpt-4o``, then as an OpenRouter id, then by the
    model name alone. Its bundled data is read in-process (no network)."""

    name = "genai-prices"

    def __init__(self, provider_id: str | None = None) -> None:
        if not genai_prices_installed():
            raise ConfigError(
                "pricing_from",
                "genai-prices",
                "installed packages: pip install 'creditguard[prices]' (or genai-prices)",
            )
        self.provider_id = provider_id
        self._module: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "GenaiPrices()"

    def loaded(self) -> bool:
        return self._module is not None

    def next_due(self) -> float:
        return math.inf if self._module is not None else 0.0

    def load(self) -> None:
        with self._lock:
            if self._module is not None:
                return
            try:
                import genai_prices

                # the first lookup builds the package's caches: done here, not in a call
                genai_prices.calc_price(
                    genai_prices.Usage(input_tokens=1), "gpt-4o", provider_id="openai"
                )
            except Exception as exc:  # pragma: no cover - a broken install
                log.warning("genai-prices could not be loaded (%s): prices from it are off", exc)
                self._module = False
                return
            self._module = genai_prices

    async def aload(self) -> None:
        if self._module is None:
            await asyncio.to_thread(self.load)

    def lookup(self, model: str) -> Price | None:
        module = self._module
        if not module:
            return None
        attempts: list[tuple[str, str | None]] = []
        if self.provider_id:
            attempts.append((model, self.provider_id))
        if "/" in model:
            prefix, bare = model.split("/", 1)
            attempts += [(bare, prefix), (model, "openrouter"), (bare, None)]
        else:
            attempts.append((model, None))
        per = 1000
        for ref, provider in attempts:
            try:
                prompt = module.calc_price(
                    module.Usage(input_tokens=per), ref, provider_id=provider
                )
                output = module.calc_price(
                    module.Usage(output_tokens=per), ref, provider_id=provider
                )
            except (LookupError, ValueError, TypeError):
                continue
            try:
                p, c = float(prompt.total_price) / per, float(output.total_price) / per
            except (TypeError, ValueError, ArithmeticError):
                continue
            if math.isfinite(p) and math.isfinite(c) and p >= 0 and c >= 0:
                return Price(p, c)
        return None


# -- learned estimates ------------------------------------------------------------


class _Window(deque[float]):
    """One model's last settled costs, their cached 90th percentile (None: to
    be computed when next read), how many settles came since it was, and after
    how many it is recomputed anyway (``every``)."""

    __slots__ = ("every", "p90", "since")

    def __init__(self, size: int) -> None:
        super().__init__((), size)
        self.p90: float | None = None
        self.since = 0
        self.every = 10


class Learned:
    """The last ``size`` settled costs of each model (at most ``models`` models,
    the earliest learned dropped first) and their 90th percentile.
    ``_windows`` holds each model's window (read inline by the decorator)."""

    __slots__ = ("_lock", "_models", "_windows", "size")

    def __init__(self, size: int = 100, models: int = 1024) -> None:
        self.size = size
        self._models = models
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def _window(self, model: str) -> _Window:
        with self._lock:
            window = self._windows.get(model)
            if window is None:
                while len(self._windows) >= self._models:  # the earliest learned go first
                    del self._windows[next(iter(self._windows))]
                window = self._windows[model] = _Window(self.size)
            return window

    def add(self, model: str | None, cost: float) -> None:
        """``model``'s call settled at ``cost`` (None: no model, nothing learned)."""
        if model is None or not (cost >= 0.0 and cost < _INF):
            return
        window = self._windows.get(model)
        if window is None:
            window = self._window(model)
        window.append(cost)  # (atomic: settles on other threads need no lock)
        cached = window.p90
        if cached is None:
            return  # computed when next read
        # the percentile is recomputed (a sort) when it may have moved: when this
        # cost is above it, else every 10th settle (every 50th once the window
        # was full when it was computed: one cost moves it by a rank at most)
        since = window.since + 1
        if cost > cached or since >= window.every:
            window.p90 = None
            since = 0
        window.since = since

    def p90(self, model: str) -> float | None:
        """The 90th percentile (nearest rank) of ``model``'s recent costs."""
        window = self._windows.get(model)
        if window is None:  # nothing learned (no lock taken)
            return None
        cached = window.p90
        if cached is not None:
            return cached
        with self._lock:
            if not window:
                return None
            ordered = sorted(window)
            value = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
            window.p90 = value
            window.every = 50 if len(ordered) == self.size else 10
            return value

    def __len__(self) -> int:
        return len(self._windows)


# -- the book ---------------------------------------------------------------------


class PriceBook:
    """The one lookup: the ``pricing`` mapping, then each price list in order,
    memoised per model. :meth:`estimate` adds learned costs and the default."""

    def __init__(
        self,
        pricing: Pricing,
        lists: Iterable[PriceList] = (),
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pricing = pricing
        self.lists: tuple[PriceList, ...] = tuple(lists)
        self.learned = Learned()
        self._timer = timer
        self._memo: dict[str, tuple[Price | None, str]] = {}
        # the models priced by the ``pricing`` mapping: their price never changes
        # (the mapping always wins, whatever a list loads), so hot callers read
        # it here with one dict lookup, and skip the lists and learning for them
        self._pinned: dict[str, Price] = {}
        self._next = 0.0 if self.lists else math.inf
        self.any = bool(pricing) or bool(self.lists)  # read on every call: an attribute
        self._versions: tuple[bool, ...] = tuple(False for _ in self.lists)
        self._refreshing: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        """Is any price known or obtainable (a mapping or a list)?"""
        return self.any

    def describe(self) -> str:
        parts = []
        if self.pricing:
            parts.append(f"pricing ({len(self.pricing.table)} entries)")
        for item in self.lists:
            url = getattr(item, "url", None)
            parts.append(f"{item.name} ({redact(url)})" if url else item.name)
        return ", ".join(parts) or "none"

    # -- loading ------------------------------------------------------------------

    def pending(self) -> bool:
        """Does a list want loading (never loaded, or due a refresh)? Cheap."""
        return self._next != math.inf and self._timer() >= self._next

    def _after_load(self) -> None:
        self._memo.clear()
        self._next = min((item.next_due() for item in self.lists), default=math.inf)

    def ensure(self) -> None:
        """Load the lists never loaded (blocking, each at most its timeout);
        refresh old ones in the background."""
        now = self._timer()
        for i, item in enumerate(self.lists):
            if now < item.next_due():
                continue
            if item.loaded():
                self._refresh_later(i, item)
            else:
                item.load()
        self._after_load()

    async def aensure(self) -> None:
        """:meth:`ensure` without blocking the event loop."""
        now = self._timer()
        waits = []
        for i, item in enumerate(self.lists):
            if now < item.next_due():
                continue
            if item.loaded():
                self._refresh_later(i, item)
            else:
                waits.append(item.aload())
        if waits:
            await asyncio.gather(*waits)
        self._after_load()

    def _refresh_later(self, i: int, item: PriceList) -> None:
        if i in self._refreshing:
            return
        self._refreshing.add(i)

        def run() -> None:
            try:
                item.load()
            finally:
                self._refreshing.discard(i)
                self._after_load()

        threading.Thread(target=run, name="creditguard-prices", daemon=True).start()

    # -- reading ------------------------------------------------------------------

    def lookup(self, model: str | None) -> tuple[Price | None, str]:
        """(price, the list it came from) for ``model``; (None, "") when unknown."""
        if model is None:
            return None, ""
        hit = self._memo.get(model)
        if hit is not None:
            return hit
        found: tuple[Price | None, str] = (None, "")
        names = name_variants(model)
        if self.pricing:
            for name in names:
                price = self.pricing.price(name)
                if price is not None:
                    found = (price, "pricing")
                    break
        if found[0] is None:
            for item in self.lists:
                price = item.lookup(model)
                if price is None and item.name != "genai-prices":
                    price = next(
                        (p for name in names[1:] if (p := item.lookup(name)) is not None), None
                    )
                if price is not None:
                    found = (price, item.name)
                    break
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[model] = found
        if found[1] == "pricing":
            if len(self._pinned) >= _MEMO_SIZE:
                self._pinned.clear()
            self._pinned[model] = cast(Price, found[0])
        if found[0] is not None:
            log.debug("price of %s from %s: %s", model, found[1], found[0])
        return found

    def price(self, model: str | None) -> Price | None:
        """The per-token price of ``model``, or None."""
        hit = self._memo.get(model) if model is not None else None  # (lookup()'s memo, inline)
        return (hit if hit is not None else self.lookup(model))[0]

    def in_pricing(self, model: str | None) -> bool:
        if model is None:
            return False
        hit = self._memo.get(model)
        return (hit if hit is not None else self.lookup(model))[1] == "pricing"

    def default(self, model: str | None, estimate: float) -> float:
        """What a call to ``model`` holds when its price does not bound it (no
        price known, or no output limit): the 90th percentile of its recent
        settled costs when higher than ``estimate``."""
        if model is None:
            return estimate
        window = self.learned._windows.get(model)
        if window is None:  # nothing learned
            return estimate
        learned = window.p90  # the usual read: a cached percentile
        if learned is None:
            learned = self.learned.p90(model)
        return estimate if learned is None or learned <= estimate else learned

    def estimate(
        self, model: str, prompt_tokens: float | None, limit: int | None, default: float
    ) -> Estimate:
        """One call's estimate for ``model``: the prompt and ``limit`` output
        tokens at its price; no limit: the prompt and ``default``, or the
        learned estimate when higher; no price (or no prompt known): the
        learned estimate or ``default``."""
        if prompt_tokens is None:
            return Estimate(self.default(model, default))
        hit = self._memo.get(model)  # (price(), inline)
        price = (hit if hit is not None else self.lookup(model))[0]
        if price is None:
            return Estimate(self.default(model, default))
        prompt = price.prompt * prompt_tokens if prompt_tokens else 0.0
        if limit is None:  # the output is not bounded: at least what its calls cost
            return Estimate(self.default(model, prompt + default), prompt, price.completion)
        return Estimate(prompt + price.completion * limit, prompt, price.completion)

    def learn(self, model: str | None, cost: float) -> None:
        """A call to ``model`` settled at ``cost`` (as the provider or its usage
        told): the learned estimate follows it. A priced model learns too: a
        call of it with no output limit holds at least what its calls cost
        (its price says nothing of an unbounded output)."""
        self.learned.add(model, cost)


def price_lists(pricing_from: object, source: object) -> tuple[PriceList, ...]:
    """The lists ``pricing_from`` names, for a guard over ``source``."""
    allowed = (
        '"auto", "openrouter", "genai-prices", a list of these, None (no list), '
        "or price list objects (creditguard.prices)"
    )
    if pricing_from is None:
        return ()
    if pricing_from == "auto":
        lists: list[PriceList] = []
        if _openrouter_source(source) is not None:
            lists.append(OpenRouterPrices.for_source(source))
        if genai_prices_installed():
            lists.append(GenaiPrices())
        return tuple(lists)
    items = [pricing_from] if isinstance(pricing_from, str) else pricing_from
    if not isinstance(items, (list, tuple)):
        items = [items]
    result: list[PriceList] = []
    for item in items:
        if item == "openrouter":
            result.append(OpenRouterPrices.for_source(source))
        elif item == "genai-prices":
            result.append(GenaiPrices())
        elif isinstance(item, str) or not all(
            callable(getattr(item, m, None)) for m in ("lookup", "load", "aload", "next_due")
        ):
            raise ConfigError("pricing_from", item, allowed)
        else:
            result.append(cast(PriceList, item))
    names = [getattr(item, "name", "") for item in result]
    if len(set(names)) != len(names):
        raise ConfigError("pricing_from", pricing_from, "each price list once")
    return tuple(result)


# -- one call's estimates -----------------------------------------------------------


class CallEstimator:
    """Each model's own estimate for one call that is not read from an HTTP
    body (the decorator, :meth:`BudgetGuard.reserve`, framework hooks): a fixed
    ``estimate`` when one is given; else the prompt (``prompt_chars``, ~4 a
    token) and ``max_tokens`` at the model's price when both the size and a
    price are known; else the learned or default estimate.

    (The decorator makes one per sized call without ``__init__``, its
    arguments checked already: see :meth:`Guarded.prepare`.)"""

    __slots__ = ("_book", "_default", "_fixed", "_prompt_tokens", "max_tokens")

    clampable: ClassVar[bool] = False  # only a transport can rewrite a body's output limit

    def __init__(
        self,
        guard: BudgetGuard,
        estimate: float | None,
        prompt_chars: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self._fixed = None if estimate is None else finite_number("estimate", estimate)
        self._book: PriceBook = guard.prices
        self._default = guard.estimate
        if prompt_chars is not None and (
            isinstance(prompt_chars, bool) or not isinstance(prompt_chars, int) or prompt_chars < 0
        ):
            raise ConfigError("prompt_chars", prompt_chars, "None or a whole number >= 0")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
        ):
            raise ConfigError("max_tokens", max_tokens, "None or a whole number >= 0")
        self._prompt_tokens = None if prompt_chars is None else prompt_chars / 4
        self.max_tokens = max_tokens

    def wants_prices(self, model: str | None) -> bool:
        """Would this call use a price list that is not loaded yet?"""
        return (
            self._fixed is None
            and self._prompt_tokens is not None
            and model is not None
            and self._book.pending()
            and not self._book.in_pricing(model)
        )

    def __call__(self, model: str) -> Estimate | None:
        if self._fixed is not None:
            return Estimate(self._fixed)
        return self._book.estimate(model, self._prompt_tokens, self.max_tokens, self._default)

    def requested(self, model: str | None) -> float:
        """The estimate of the model the call asks for."""
        if self._fixed is not None:
            return self._fixed
        if model is None:
            return self._default
        return self._book.estimate(model, self._prompt_tokens, self.max_tokens, self._default).total


def sized_estimate(
    book: PriceBook, default: float, prompt_tokens: float, limit: int, model: str | None
) -> tuple[CallEstimator, float | None]:
    """The estimator of a call sized from its arguments (the decorator checked
    them: made without ``__init__``), and ``estimator.requested(model)`` read
    the short way: a model priced by ``pricing`` from its pinned price, one
    dict read; else None when a price list must be loaded first
    (``wants_prices``), else from the memo. (Once a decorated call, so inline:
    :meth:`PriceBook.estimate`'s sum, kept the same.)"""
    estimator: CallEstimator = _new(CallEstimator)
    estimator._book = book
    estimator._default = default
    estimator._fixed = None
    estimator._prompt_tokens = prompt_tokens
    estimator.max_tokens = limit
    price = None
    if model is not None:
        price = book._pinned.get(model)
        if price is None:
            if book._next != math.inf and book.pending() and not book.in_pricing(model):
                return estimator, None
            hit = book._memo.get(model)
            price = (hit if hit is not None else book.lookup(model))[0]
    if price is None:
        return estimator, book.default(model, default)
    prompt = price.prompt * prompt_tokens if prompt_tokens else 0.0
    return estimator, prompt + price.completion * limit


_new = object.__new__
