"""The ledger: cached balances per credential, refreshed single-flight.

One :class:`Ledger` per guard. Balances are cached per credential fingerprint
in a bounded dict (the raw key is never a key here).
When an entry is missing or older than ``ttl``, exactly one fetch per
credential runs, whatever mix of threads and asyncio tasks is asking:

* the first caller leads a *flight*; a thread fetches in place, an asyncio
  caller starts the fetch as a task of its own, so cancelling the caller
  never cancels the fetch that others wait on;
* later callers join the flight: threads wait on an Event, tasks each await a
  future of their own (cancelling one waiter touches no other), and when a
  usable stale balance exists they are served it at once instead of waiting;
* the outcome, a fresh balance or an error, reaches every waiter at once.

A failed fetch is remembered for ``error_ttl`` seconds (no fetch for that
credential until then) and the last good balance stands in while it is younger
than ``max_stale``. Between polls, recorded spend is debited locally; a fresh
fetch replaces the snapshot together with the debits it already reflects.

The state machine (:meth:`Ledger._step`, :meth:`Ledger._finish`) is shared;
:meth:`Ledger.get` and :meth:`Ledger.aget` are the thin sync and async shells.
A call whose balance is cached and fresh (nearly every call) takes neither:
:meth:`Ledger.admit_fresh` judges and holds it in one step under the lock.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from ._fingerprint import Fingerprinter, describe
from .balance import MAX_COST, Balance, check_cost
from .costs import TokenCost
from .errors import CreditSourceError, redact
from .policy import Decision, Policy, _decision, _set_runway, decide
from .runway import FOLD, attach, runway_of
from .sources._base import members
from .sources._fixed import FixedBudget

if TYPE_CHECKING:
    from .events import Events
    from .policy import Estimator
    from .runway import BurnRates
    from .sources import CreditSource

__all__ = ["Hold", "Ledger", "Lookup"]

_INF = math.inf
_new = object.__new__
log = logging.getLogger("creditguard")


class Lookup:
    """What the ledger knows of one credential right now.

    ``balance`` is None when no usable balance could be had; ``error`` is the
    latest refresh failure, if the balance is stale or missing because of one.
    (A plain slotted class: one is built on every guarded call.)
    """

    __slots__ = ("balance", "error", "fingerprint", "held", "stale", "store_down")

    def __init__(
        self,
        balance: Balance | None,
        stale: bool = False,
        error: CreditSourceError | None = None,
        fingerprint: str = "",
        held: float | None = None,  # what calls in flight hold, read from a shared store
        store_down: bool = False,  # the shared store could not be reached
    ) -> None:
        self.balance = balance
        self.stale = stale
        self.error = error
        self.fingerprint = fingerprint
        self.held = held
        self.store_down = store_down

    def __repr__(self) -> str:
        return (
            f"Lookup(balance={self.balance!r}, stale={self.stale}, error={self.error!r}, "
            f"fingerprint={self.fingerprint[:8]!r})"
        )


class _Entry:
    """A fetched balance and the local spend recorded since."""

    __slots__ = ("debits", "exhausted", "fetched", "resets_at", "snapshot", "view")

    def __init__(self, snapshot: Balance, fetched: float) -> None:
        self.snapshot = snapshot
        self.fetched = fetched
        self.debits = 0.0
        self.exhausted = False
        self.resets_at: float | None = None  # when a provider's refusal said it ends
        self.view = snapshot

    def update(self) -> None:
        view = self.snapshot.debited(self.debits)
        if self.exhausted and view.remaining > 0:
            view = view._derived(0.0, view.used)
        if self.exhausted and self.resets_at is not None:
            view = replace(view, resets_at=self.resets_at)
        self.view = view


class _Entries(dict[str, _Entry]):
    """The cached entries by fingerprint: a plain dict, so that the hot path
    reads one at C speed (``TTLCache`` reads cost a Python call and a clock
    read each). Bounded: :meth:`put` past ``maxsize`` drops the least recently
    stored (every fetch stores its entry anew, so that is the least recently
    fetched), in O(1). Readers judge an entry's age by its ``fetched`` time;
    :meth:`live` treats one older than ``keep`` seconds (no longer servable
    even as stale) as gone, as an expiring cache would."""

    __slots__ = ("keep", "maxsize")

    def __init__(self, maxsize: int, keep: float) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.keep = keep

    def live(self, key: str, now: float) -> _Entry | None:
        entry = self.get(key)
        if entry is not None and now - entry.fetched >= self.keep:
            del self[key]
            return None
        return entry

    def put(self, key: str, entry: _Entry) -> None:
        self.pop(key, None)  # stored again: the most recent
        while len(self) >= self.maxsize:
            del self[next(iter(self))]
        self[key] = entry


class _Flight:
    """One refresh in progress and everyone waiting for it.

    It remembers the entry it is replacing and that entry's local state when it
    started, so that spend recorded while it runs is carried over to the fresh
    balance instead of being lost.
    """

    __slots__ = (
        "base",
        "base_debits",
        "base_exhausted",
        "deadline",
        "done",
        "loop",
        "outcome",
        "started",
        "timers",
        "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        started: float = 0.0,
        base: _Entry | None = None,
        timeout: float = math.inf,
    ) -> None:
        self.loop = loop
        self.started = started
        self.deadline = started + timeout
        self.base = base
        self.base_debits = base.debits if base is not None else 0.0
        self.base_exhausted = base.exhausted if base is not None else False
        self.done = threading.Event()
        self.outcome: Lookup | None = None
        # asyncio waiters by event loop, and each loop's one timeout timer
        self.waiters: dict[asyncio.AbstractEventLoop, list[asyncio.Future[Lookup]]] = {}
        self.timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}


_OPEN, _SETTLED, _RELEASED = 0, 1, 2  # a hold's states (Hold.OPEN ...; module names: hot reads)


class Hold:
    """Credits held for one call in flight (a reservation).

    Settling replaces the hold with the call's real cost, releasing drops it;
    either happens once (later attempts do nothing). A hold not settled within
    ``hold_timeout`` stops counting by itself; a settle after that still charges
    the real cost, once.
    """

    __slots__ = ("amount", "credential", "expires", "key", "state", "token")

    OPEN, SETTLED, RELEASED = _OPEN, _SETTLED, _RELEASED

    def __init__(
        self,
        key: str,
        credential: str | None,
        amount: float,
        expires: float,
        token: str | None = None,
    ) -> None:
        self.key = key
        self.credential = credential
        self.amount = amount
        self.expires = expires
        self.state = Hold.OPEN
        self.token = token  # set when the hold lives in a shared store

    def __repr__(self) -> str:
        state = ("open", "settled", "released")[self.state]
        return f"<Hold {self.amount:g} {state} credential={self.key[:8]}>"


class _Holds:
    """The open holds of one credential and their sum."""

    __slots__ = ("items", "next_expiry", "total")

    def __init__(self) -> None:
        self.items: dict[Hold, None] = {}
        self.total = 0.0
        self.next_expiry = math.inf

    def drop(self, hold: Hold) -> None:
        if self.items.pop(hold, 0) is None:
            if self.items:
                total = self.total - hold.amount
                self.total = total if total > 0.0 else 0.0
            else:
                self.total, self.next_expiry = 0.0, math.inf

    def expire(self, now: float) -> None:
        if now < self.next_expiry:
            return
        for hold in [h for h in self.items if h.expires <= now]:
            del self.items[hold]
        self.total = sum(h.amount for h in self.items)
        self.next_expiry = min((h.expires for h in self.items), default=math.inf)


def _record_failed(exc: BaseException, credential: str | None) -> None:
    """A source's ``record()`` raised while a billed call's spend was settled:
    logged, never raised (the spend is debited and counted all the same; the
    source's own count misses it until its next fetch). Its text only, redacted:
    ``record()`` was given the raw credential, and may have put it in there."""
    log.error(
        "the source's record() failed (%s): the spend is debited all the same",
        describe(exc, credential),
    )


class Ledger:
    """Cached balances per credential; see the module docstring."""

    def __init__(
        self,
        source: CreditSource,
        *,
        ttl: float = 30.0,
        max_stale: float = 300.0,
        error_ttl: float = 5.0,
        maxsize: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
        fingerprint: Fingerprinter | None = None,
        refresh_timeout: float = 30.0,
        hold_timeout: float = 900.0,
        on_refresh: Callable[[Balance, str], None] | None = None,
        on_error: Callable[[CreditSourceError, str], None] | None = None,
        events: Events | None = None,
    ) -> None:
        self.source = source
        self.events = events  # spend and fetch events go out through it
        self.burn: BurnRates | None = None  # set by the guard: gives decisions a runway
        self.ttl = ttl
        self.max_stale = max_stale
        self.error_ttl = error_ttl
        self.refresh_timeout = refresh_timeout
        self.hold_timeout = hold_timeout
        self._holds: dict[str, _Holds] = {}
        # settles that finalizers asked for (run by the next caller, outside any lock)
        self._pending: deque[Callable[[], object]] = deque()
        self._maxsize = maxsize
        self._timer = timer
        self._fingerprint = fingerprint or Fingerprinter()
        self._fingerprint_of = self._fingerprint.__call__  # (a bound method: a cheaper call)
        # sources.ByHost: every call judged on one balance gets one key, however
        # it names its host (a plain key or none: the '*' route's)
        canonical = getattr(source, "ledger_credential", None)
        if callable(canonical):
            fingerprint_of = self._fingerprint_of
            self._fingerprint_of = lambda credential: fingerprint_of(canonical(credential))
        self._per_credential = bool(getattr(source, "per_credential", True))
        self._key_of_none = self.key(None)  # (the key of calls that carry none: hot)
        self._cache = _Entries(maxsize, max(ttl, max_stale))
        self._errors: TTLCache[str, CreditSourceError] = TTLCache(
            maxsize, ttl=max(error_ttl, 1e-9), timer=timer
        )
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_refresh = on_refresh
        self._on_error = on_error
        record = getattr(source, "record", None)  # local budgets learn spend too
        self._source_record: Callable[[str | None, float], None] | None = (
            record if callable(record) else None
        )
        self._joined: list[FixedBudget] = []  # the FixedBudgets under the source
        self._telling = False  # another guard joined one: what is recorded is told
        self._join_budgets()

    def _join_budgets(self) -> None:
        """Guards in one process over one ``FixedBudget`` (each alone, or in
        their ``Tightest``) tell each other what they record: each debits its
        cached balance by the others' spend as by its own, instead of serving
        its own snapshot, blind to theirs, until its next fetch."""
        budgets = [s for s in members(self.source) if isinstance(s, FixedBudget)]
        if not budgets or self._source_record is None:
            return
        self._joined = budgets
        with _JOINS:
            for budget in budgets:
                budget._ledgers.add(self)
            _JOINS.count += 1
            # (a guard alone over its budgets records as it did: nothing to tell)
            for budget in budgets:
                if len(budget._ledgers) > 1:
                    for ledger in list(budget._ledgers):
                        ledger._tell_others()

    def _tell_others(self) -> None:
        """Another guard joined a budget of this one: from now on what this
        one records is told to the others (once; lock of the joins held)."""
        record = self._source_record
        if self._telling or record is None:
            return
        self._telling = True
        budgets = self._joined
        # the other guards' ledgers (weakly: each may go) and whether a budget
        # for all keys is shared with them, worked out again after a join
        told: list[Any] = [-1, ()]

        def record_and_tell(credential: str | None, cost: float) -> None:
            record(credential, cost)
            if told[0] != _JOINS.count:
                told[:] = [_JOINS.count, self._peers(budgets)]
            for peer, every in told[1]:
                other = peer()
                if other is not None:
                    other._foreign(credential, cost, every)

        self._source_record = record_and_tell

    def _peers(self, budgets: list[FixedBudget]) -> tuple[tuple[Any, bool], ...]:
        """(weak reference, for every key) of each other ledger over ``budgets``:
        every cached balance of it takes a spend of a budget not kept per key."""
        every: dict[Ledger, bool] = {}
        with _JOINS:
            for budget in budgets:
                for other in list(budget._ledgers):
                    if other is not self:
                        every[other] = every.get(other, False) or not budget.per_credential
        return tuple((weakref.ref(other), all_keys) for other, all_keys in every.items())

    def _foreign(self, credential: str | None, cost: float, every: bool = False) -> None:
        """Another guard over a budget of this one's recorded ``cost`` for
        ``credential`` (``every``: a budget for all keys, so each cached
        balance of this ledger draws on it, whatever its key)."""
        with self._lock:
            if every and self._per_credential:
                for key in list(self._cache):
                    self._debit(key, cost)
            else:
                self._debit(self.key(credential), cost)

    # -- keys ---------------------------------------------------------------

    def key(self, credential: str | None) -> str:
        """The cache key of ``credential``: its fingerprint, or one key for all
        when the source's balance does not depend on the call's credential."""
        return self._fingerprint_of(credential) if self._per_credential else "*"

    # -- the shared state machine (call with the lock held) -----------------

    def _stale(self, key: str, now: float, entry: _Entry | None = None) -> _Entry | None:
        """The cached entry of ``key`` (or ``entry``, read already) while it is
        younger than ``max_stale``."""
        if entry is None:
            entry = self._cache.live(key, now)
        if entry is not None and now - entry.fetched < self.max_stale:
            return entry
        return None

    def _step(
        self, key: str, loop: asyncio.AbstractEventLoop | None
    ) -> Lookup | tuple[_Flight, asyncio.Future[Lookup] | None, bool, bool]:
        """Serve from cache, or say which flight to join or lead (and whether
        this is the first waiter from ``loop``, which then times the flight out)."""
        now = self._timer()
        entry = self._cache.live(key, now)
        if entry is not None and now - entry.fetched < self.ttl:
            return Lookup(entry.view, fingerprint=key)
        stale = self._stale(key, now, entry)
        try:
            error: CreditSourceError | None = self._errors[key]
        except KeyError:
            error = None
        if error is not None:  # failed a moment ago: don't hammer the source
            return Lookup(stale.view if stale else None, True, error, key)
        flight = self._flights.get(key)
        if flight is not None and now > flight.deadline:
            flight = None  # hung past refresh_timeout: abandoned, a new one starts
        if flight is not None and stale is not None:  # refresh under way: serve stale now
            return Lookup(stale.view, True, None, key)
        lead = flight is None
        if flight is None:
            flight = self._flights[key] = _Flight(loop, now, entry, self.refresh_timeout)
        future: asyncio.Future[Lookup] | None = None
        first = False
        if loop is not None:
            future = loop.create_future()
            futures = flight.waiters.get(loop)
            if futures is None:
                futures = flight.waiters[loop] = []
                first = True
            futures.append(future)
        return flight, future, lead, first

    def _finish(
        self,
        key: str,
        flight: _Flight,
        result: Balance | CreditSourceError,
        *,
        remember: bool = True,
    ) -> Lookup:
        with self._lock:
            now = self._timer()
            if isinstance(result, Balance):
                current = self._cache.live(key, now)
                if current is not None and current is not flight.base:
                    # set_balance / mark_exhausted landed while we fetched: it is newer
                    outcome = Lookup(current.view, fingerprint=key)
                else:
                    entry = _Entry(result, now)
                    if current is not None:  # carry what was recorded meanwhile
                        entry.debits = max(0.0, current.debits - flight.base_debits)
                        entry.exhausted = current.exhausted and not flight.base_exhausted
                        entry.update()
                    self._cache.put(key, entry)
                    outcome = Lookup(entry.view, fingerprint=key)
                self._errors.pop(key, None)
            else:
                if remember and self.error_ttl > 0:
                    self._errors[key] = result
                if result.partial is not None:
                    self._partial(key, flight, result.partial, now)
                stale = self._stale(key, now)
                outcome = Lookup(stale.view if stale else None, True, result, key)
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.outcome = outcome
            waiters, flight.waiters = flight.waiters, {}
            timers, flight.timers = flight.timers, {}
            flight.done.set()
        if waiters:
            # one wake-up per event loop, not one per waiter: a thousand tasks
            # waiting on the loop that fetched are resolved right here
            here = _running_loop()
            for loop, futures in waiters.items():
                timer = timers.get(loop)
                if loop is here:
                    _resolve(futures, outcome, timer)
                else:
                    with contextlib.suppress(RuntimeError):  # that loop is closed
                        loop.call_soon_threadsafe(_resolve, futures, outcome, timer)
        if isinstance(result, Balance):
            if self._on_refresh is not None:
                self._on_refresh(result, key)
        elif remember and self._on_error is not None:
            self._on_error(result, key)
        return outcome

    def _partial(self, key: str, flight: _Flight, partial: Balance, now: float) -> None:
        """Some of the sources answered (``Tightest``, one failing): what they
        leave stands in as a stale balance (judged on within ``max_stale``, the
        failing one retried after ``error_ttl``), or the last good balance when
        it leaves less; either is stamped anew, so that it stays servable for
        as long as the outage lasts (lock held)."""
        current = self._cache.live(key, now)
        if current is not None and current.view.remaining <= partial.remaining:
            entry = _Entry(current.view, now - self.ttl)  # (its debits in its view)
        else:
            entry = _Entry(partial, now - self.ttl)  # (stale from the start)
            if current is not None:  # carry what was recorded meanwhile
                entry.debits = max(0.0, current.debits - flight.base_debits)
                entry.exhausted = current.exhausted and not flight.base_exhausted
                entry.update()
        self._cache.put(key, entry)

    def _fetch_for(self, credential: str | None) -> str | None:
        return credential if self._per_credential else None

    def _as_error(self, exc: BaseException, credential: str | None) -> CreditSourceError:
        """A fresh, redacted error: no traceback, cause or context that could
        hold the key in a frame's locals (errors are cached and handed to
        callbacks long after the fetch)."""
        name = str(getattr(self.source, "name", type(self.source).__name__))
        if isinstance(exc, CreditSourceError):
            partial = getattr(exc, "partial", None)
            return CreditSourceError(
                redact(exc.reason, credential),
                status_code=exc.status_code,
                source=redact(exc.source, credential) or name,
                misconfigured=exc.misconfigured,
                partial=partial if isinstance(partial, Balance) else None,
            )
        if isinstance(exc, asyncio.CancelledError):
            return CreditSourceError("the balance refresh was cancelled", source=name)
        return CreditSourceError(describe(exc, credential), source=name)

    def _checked(self, balance: object) -> Balance | CreditSourceError:
        if isinstance(balance, Balance):
            return balance
        name = str(getattr(self.source, "name", type(self.source).__name__))
        return CreditSourceError(
            f"the source returned {type(balance).__name__}, not a Balance", source=name
        )

    def _timed_out(self, key: str, flight: _Flight) -> Lookup:
        """A waiter gave up on a hung refresh: drop the flight and remember the
        failure, so that the next callers neither join it nor pile up again."""
        error = CreditSourceError(
            f"no balance refresh finished within {self.refresh_timeout:g} s",
            source=str(getattr(self.source, "name", "")),
        )
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
                if self.error_ttl > 0:
                    self._errors[key] = error
            stale = self._stale(key, self._timer())
        return Lookup(stale.view if stale else None, True, error, key)

    # -- sync shell ----------------------------------------------------------

    def get(self, credential: str | None, key: str | None = None) -> Lookup:
        """The balance of ``credential``, fetching it when needed (blocking).
        ``key``: its :meth:`key`, when the caller has it already."""
        if key is None:
            key = self.key(credential)
        with self._lock:
            step = self._step(key, None)
        if isinstance(step, Lookup):
            return step
        flight, _, lead, _ = step
        if not lead:
            if flight.loop is not None and _running_loop() is flight.loop:
                # The flight runs on the loop this thread would block: wait on it
                # and it never finishes. Fetch here instead.
                return self._fetch_sync(key, _Flight(None), credential)
            if not flight.done.wait(self.refresh_timeout):
                return self._timed_out(key, flight)
            assert flight.outcome is not None
            return flight.outcome
        return self._fetch_sync(key, flight, credential)

    def _fetch_sync(self, key: str, flight: _Flight, credential: str | None) -> Lookup:
        started = time.perf_counter()
        try:
            result = self._checked(self.source.fetch(self._fetch_for(credential)))
        except Exception as exc:
            result = self._as_error(exc, credential)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: nobody waits forever
            self._finish(key, flight, self._as_error(exc, credential), remember=False)
            raise
        self._fetched(key, started, result)
        return self._finish(key, flight, result)

    def _fetched(self, key: str, started: float, result: object) -> None:
        """Tell the fetch subscribers (metrics) how long a credits request took."""
        if self.events is not None:
            fetch = self.events.fetch
            if fetch is not None:
                fetch(key, time.perf_counter() - started, isinstance(result, Balance))

    # -- async shell ---------------------------------------------------------

    async def aget(self, credential: str | None, key: str | None = None) -> Lookup:
        """The balance of ``credential``, fetching it when needed."""
        if key is None:
            key = self.key(credential)
        loop = asyncio.get_running_loop()
        with self._lock:
            step = self._step(key, loop)
        if isinstance(step, Lookup):
            return step
        flight, future, lead, first = step
        assert future is not None
        if first:  # one timer per loop gives up on a hung refresh for all its waiters
            timer = loop.call_later(self.refresh_timeout, self._give_up, key, flight, loop)
            with self._lock:
                if flight.done.is_set():
                    timer.cancel()
                else:
                    flight.timers[loop] = timer
        if lead:
            task = loop.create_task(self._fetch_async(key, flight, credential))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # cancelling this caller cancels its own future only, never the fetch
        return await future

    def _give_up(self, key: str, flight: _Flight, loop: asyncio.AbstractEventLoop) -> None:
        """``refresh_timeout`` passed and the refresh has not finished: this
        loop's waiters are served what :meth:`_timed_out` says."""
        if flight.done.is_set():
            return
        outcome = self._timed_out(key, flight)
        with self._lock:
            futures = flight.waiters.pop(loop, [])
            flight.timers.pop(loop, None)
        _resolve(futures, outcome, None)

    async def _fetch_async(self, key: str, flight: _Flight, credential: str | None) -> None:
        started = time.perf_counter()
        try:
            result = self._checked(await self.source.afetch(self._fetch_for(credential)))
        except Exception as exc:
            result = self._as_error(exc, credential)
        except BaseException as exc:  # cancelled (e.g. loop shutdown): not the source's fault
            self._finish(key, flight, self._as_error(exc, credential), remember=False)
            raise
        self._fetched(key, started, result)
        self._finish(key, flight, result)

    # -- holds ---------------------------------------------------------------

    def _held(self, key: str, now: float) -> float:
        """What the open holds of ``key`` add up to (an emptied record stays
        for the next call; :meth:`_sweep` drops them when there are many)."""
        holds = self._holds.get(key)
        if holds is None:
            return 0.0
        if now >= holds.next_expiry:
            holds.expire(now)
        return holds.total

    def reserved(self, credential: str | None) -> float:
        """What the calls in flight for ``credential`` hold right now."""
        if self._pending:
            self.drain()
        key = self.key(credential)
        with self._lock:
            return self._held(key, self._timer())

    def _take(self, key: str, credential: str | None, amount: float, now: float) -> Hold:
        """Hold ``amount`` for one call of ``key`` (with the lock held)."""
        hold = _new(Hold)  # (Hold(...) without the cost of a call to __init__: hot)
        hold.key = key
        hold.credential = credential
        hold.amount = amount
        hold.expires = now + self.hold_timeout
        hold.state = _OPEN
        hold.token = None
        holds = self._holds.get(key)
        if holds is None:
            if len(self._holds) >= self._maxsize:
                self._sweep(now)
            holds = self._holds[key] = _Holds()
        holds.items[hold] = None
        holds.total += amount
        if hold.expires < holds.next_expiry:
            holds.next_expiry = hold.expires
        return hold

    def admit_fresh(
        self,
        key: str,
        credential: str | None,
        model: str | None,
        amount: float,
        policy: Policy,
        *,
        reserve: bool,
        can_rewrite: bool | Callable[[], bool] = True,
        estimator: Estimator | None = None,
    ) -> tuple[Decision, Hold | None] | None:
        """The hot path: when ``key`` has a fresh cached balance, judge the call
        on it (:func:`~creditguard.policy.decide`) less what calls in flight
        hold, and hold ``amount`` unless refused — one step under the lock.
        None when there is no fresh balance: then :meth:`get` (or :meth:`aget`)
        and :meth:`admit` do the same the long way round."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            now = self._timer()
            if now - entry.fetched >= self.ttl:
                return None
            holds = self._holds.get(key)
            if holds is None:
                held = 0.0
            elif now < holds.next_expiry:
                held = holds.total
            else:
                held = self._held(key, now)
            view = entry.view
            remaining = view.remaining
            available = remaining - held
            raw = available - amount
            if raw - policy._quick_top >= 1e-9 and remaining < _INF:  # (decide()'s first step)
                decision = _decision(
                    "allow", model, view, (raw, view.unit), model, False, True, available
                )
            else:
                decision = decide(
                    view,
                    policy,
                    model,
                    amount,
                    reserved=held,
                    can_rewrite=can_rewrite,
                    estimator=estimator,
                )
                if decision._estimate is not None:  # a downgrade holds its own model's estimate
                    amount = decision.held(amount)
            burn = self.burn
            if burn is not None:
                if policy._steers:
                    decision = attach(decision, policy, burn, key, amount, now, can_rewrite)
                else:
                    rate = burn.rates.get(key)
                    if rate is not None:  # (attach(), inlined: the usual case)
                        snapshot = tuple(rate)
                        _set_runway(decision, (runway_of, snapshot, now, burn.tau, policy))
            if not reserve or amount <= 0 or (decision.action == "refuse" and decision.enforced):
                return decision, None
            return decision, self._take(key, credential, amount, now)

    def admit(
        self,
        lookup: Lookup,
        credential: str | None,
        judge: Callable[[Balance | None, float], Decision],
        amount: float,
        *,
        reserve: bool,
        floor_of: Callable[[Balance], float | None] | None = None,
    ) -> tuple[Decision, Hold | None]:
        """Judge a call on the latest view of its balance less what calls in
        flight hold, and (unless refused) hold ``amount`` for it — one step
        under the lock, so concurrent calls never judge the same headroom."""
        key = lookup.fingerprint
        with self._lock:
            now = self._timer()
            balance = lookup.balance
            if balance is not None:
                entry = self._cache.live(key, now)
                if entry is not None:
                    balance = entry.view  # spend settled since the lookup counts too
            decision = judge(balance, self._held(key, now))
            amount = decision.held(amount)
            if not reserve or amount <= 0 or (decision.action == "refuse" and decision.enforced):
                return decision, None
            return decision, self._take(key, credential, amount, now)

    def _sweep(self, now: float) -> None:
        for key, holds in list(self._holds.items()):
            holds.expire(now)
            if not holds.items:
                del self._holds[key]

    def settle(self, hold: Hold, cost: float, how: str | None = None) -> bool:
        """Replace ``hold`` with the call's real ``cost``. False if it was
        settled or released before (nothing is charged twice). ``how``: where
        the cost comes from, for the spend event (None: the provider's figure,
        or tokens x prices for a :class:`~creditguard.costs.TokenCost`)."""
        if type(cost) is not float or not 0.0 <= cost <= MAX_COST:
            if type(cost) is TokenCost and 0.0 <= cost <= MAX_COST:  # (tokens x prices: usual)
                how = how or "tokens"
                cost = float(cost)
            else:
                how = _how(cost, how)
                cost = _charge(cost)
        key = hold.key
        record = self._source_record
        if record is None:
            with self._lock:
                if hold.state != _OPEN:
                    return False
                hold.state = _SETTLED
                holds = self._holds.get(key)
                if holds is not None:
                    holds.drop(hold)
                self._debit(key, cost)
        else:
            with self._lock:
                if hold.state != _OPEN:
                    return False
                hold.state = _SETTLED  # still held (and counted) until debited below
            # A local budget learns the spend first: a refresh racing with us then
            # counts it at worst twice (safe, and the next poll corrects it), never zero.
            try:
                record(hold.credential if self._per_credential else None, cost)
            except Exception as exc:  # (the call was billed: it is debited all the same)
                _record_failed(exc, hold.credential)
            with self._lock:
                holds = self._holds.get(key)
                if holds is not None:
                    holds.drop(hold)
                self._debit(key, cost)
        events = self.events
        if events is not None and events.spend is not None:
            events.spend(key, cost, how or "provider")
        return True

    def defer(self, settle: Callable[[], object]) -> None:
        """Run ``settle`` at the next call that consults the ledger, or when
        the interpreter exits, whichever comes first. For finalizers: the
        garbage collector may run one on any thread at any allocation, even
        while that thread holds this ledger's lock (or waits on a shared
        store), so a finalizer never settles in place."""
        self._pending.append(settle)
        if self not in _DEFERRING:  # (a process that exits next must not lose it)
            _DEFERRING.add(self)

    def _at_exit(self) -> None:
        """The interpreter exits: run the settles still queued."""
        self.drain()

    def drain(self) -> None:
        """Run the settles :meth:`defer` queued (each once, whoever gets it)."""
        pending = self._pending
        while pending:
            try:
                settle = pending.popleft()
            except IndexError:  # another thread took the last one
                return
            try:
                settle()
            except Exception:
                log.exception("a deferred settle failed")

    def _drop(self, hold: Hold) -> None:
        holds = self._holds.get(hold.key)
        if holds is not None:
            holds.drop(hold)

    def streaming(self, hold: Hold) -> None:
        """``hold``'s call streams its answer: the hold counts until the stream
        ends, is closed or is dropped (each settles it), not ``hold_timeout``
        (a reasoning model may stream for longer). A hold kept in a shared
        store keeps its expiry there: a process that crashed leaves it behind."""
        with self._lock:
            if hold.state == _OPEN and hold.token is None:
                hold.expires = math.inf

    def release(self, hold: Hold) -> bool:
        """Drop ``hold`` without a charge (the call failed or never went out)."""
        with self._lock:
            if hold.state != Hold.OPEN:
                return False
            hold.state = Hold.RELEASED
            self._drop(hold)
        return True

    # -- local accounting ----------------------------------------------------

    def _debit(self, key: str, cost: float) -> None:
        if not cost:
            return
        entry = self._cache.get(key)  # (an entry too old to serve: debited all the same)
        if entry is not None:  # cost more spent locally (the hot path: one new view)
            entry.debits += cost
            snapshot = entry.snapshot
            if entry.exhausted or snapshot.remaining == _INF:
                entry.update()
            else:
                used = snapshot.used
                debits = entry.debits
                # (used and debits are never negative: no max() needed)
                entry.view = snapshot._derived(
                    snapshot.remaining - debits, None if used is None else used + debits
                )
        burn = self.burn
        if burn is not None:  # the recent burn rate learns it too
            now = self._timer()
            rate = burn.rates.get(key)
            if rate is not None and now - rate[2] < FOLD:  # (BurnRates.add(), inlined)
                rate[1] += cost
            else:
                burn.add(key, cost, now)

    def record(self, credential: str | None, cost: float, how: str | None = None) -> None:
        """Debit ``cost`` from the cached balance of ``credential`` (a local
        budget source learns it first, for the reason given in :meth:`settle`)."""
        how = _how(cost, how)
        cost = _charge(cost)
        if self._source_record is not None:
            try:
                self._source_record(self._fetch_for(credential), cost)
            except Exception as exc:
                _record_failed(exc, credential)
        key = self.key(credential)
        with self._lock:
            self._debit(key, cost)
        self._spent(key, cost, how)

    def _spent(self, key: str, cost: float, how: str) -> None:
        """Tell the spend subscribers (burn rates, metrics)."""
        if self.events is not None:
            spend = self.events.spend
            if spend is not None:
                spend(key, cost, how)

    def mark_exhausted(self, credential: str | None) -> None:
        """The provider refused for lack of credits: treat the balance as empty
        until the next successful fetch."""
        key = self.key(credential)
        with self._lock:
            now = self._timer()
            entry = self._cache.live(key, now)
            if entry is None:
                entry = _Entry(
                    Balance(remaining=0.0, fetched_at=time.time(), source="provider refusal"),
                    now,
                )
                self._cache.put(key, entry)
            entry.exhausted = True
            entry.update()

    def note_resets_at(self, credential: str | None, resets_at: float) -> None:
        """A provider's refusal said when the limit that binds resets (Unix
        seconds): kept on the cached balance while it stays exhausted."""
        key = self.key(credential)
        with self._lock:
            entry = self._cache.live(key, self._timer())
            if entry is not None and entry.exhausted:
                entry.resets_at = resets_at
                entry.update()

    def set_balance(self, credential: str | None, balance: Balance) -> None:
        """Replace the cached balance with a fresh one (e.g. from a response)."""
        key = self.key(credential)
        with self._lock:
            self._cache.put(key, _Entry(balance, self._timer()))
            self._errors.pop(key, None)

    def set_remaining(self, credential: str | None, remaining: float) -> None:
        """A provider told us the fresh remaining figure (e.g. Stablecog's
        ``remaining_credits``): it replaces the snapshot, keeping its total."""
        key = self.key(credential)
        with self._lock:
            old = self._cache.live(key, self._timer())
            if old is None:
                balance = Balance(
                    remaining=remaining,
                    unit="credits",
                    fetched_at=time.time(),
                    source=str(getattr(self.source, "name", "")),
                )
            else:
                used = old.snapshot.used
                if used is not None and old.snapshot.total is not None:
                    used = max(0.0, old.snapshot.total - remaining)
                balance = replace(
                    old.snapshot, remaining=remaining, used=used, fetched_at=time.time()
                )
            self._cache.put(key, _Entry(balance, self._timer()))
            self._errors.pop(key, None)

    def invalidate(self, credential: str | None = None, *, all: bool = False) -> None:
        """Forget the cached balance of ``credential`` (or of everyone)."""
        with self._lock:
            if all:
                self._cache.clear()
                self._errors.clear()
            else:
                key = self.key(credential)
                self._cache.pop(key, None)
                self._errors.pop(key, None)

    def close(self) -> None:
        """Run the settles a finalizer queued; nothing else to close in process
        memory (a shared ledger closes its store)."""
        self.drain()

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)


def _charge(cost: object) -> float:
    """A cost the ledger charges: :func:`check_cost`, held at :data:`MAX_COST`
    (a figure past it would break the store's counters and lose the spend;
    ``record()``/``settle()`` refuse it before it gets here)."""
    cost = check_cost(cost)
    if cost > MAX_COST:
        log.warning("a cost of %.6g is not believable: %g is charged", cost, MAX_COST)
        return MAX_COST
    return cost


class _Joins:
    """Guards in one process joining a FixedBudget: a lock around the budgets'
    sets of ledgers, and how many joins there were (peers are worked out anew
    after one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


_JOINS = _Joins()

_DEFERRING: weakref.WeakSet[Ledger] = weakref.WeakSet()
"""Ledgers a finalizer deferred a settle to: drained at exit."""


@atexit.register
def _drain_at_exit() -> None:
    for ledger in list(_DEFERRING):
        try:
            ledger._at_exit()
        except Exception:  # (at exit: logged, never raised)
            log.exception("settling what a dropped call owed at exit failed")


def _how(cost: object, how: str | None) -> str:
    """Where a cost comes from: as said, else tokens x prices or the provider."""
    if how is not None:
        return how
    return "tokens" if type(cost) is TokenCost else "provider"


def _resolve(
    futures: list[asyncio.Future[Lookup]],
    outcome: Lookup,
    timer: asyncio.TimerHandle | None,
) -> None:
    """Runs on the futures' loop: every waiter still waiting gets ``outcome``."""
    if timer is not None:
        timer.cancel()
    for future in futures:
        if not future.done():  # a cancelled caller's future is done already
            future.set_result(outcome)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
