"""The ledger over a shared store: one budget for many processes and machines.

:class:`SharedLedger` keeps each credential's snapshot, debits and holds in a
:class:`~creditguard.stores.Store` (Redis) instead of in process memory:

* a guarded call costs two round trips: one script reads the shared state and
  takes the hold (refusing it atomically when it would cross the refuse
  floor), one settles it; a check is one;
* when the snapshot is stale, one worker refreshes it under a short lease
  (renewed while its fetch runs, so a crashed refresher stalls nobody past
  one lease); the others serve the stale balance, or, with nothing to serve,
  wait at most :data:`_WAIT` seconds and then fetch themselves;
* a ``FixedBudget`` source is counted in the store itself: every settle adds
  to the current window's spend, and a refresh recomputes the budget from it,
  so processes and restarts draw down one budget;
* settles carry the hold's id and are applied once, even when the hold
  vanished (a flushed or restarted Redis): the cost is still charged.

When the store fails (down, slow, answering errors), ``Policy.store_error``
decides: ``"local"`` (default) goes on from the last shared state this
process saw, but with only its share of the headroom (the headroom above the
refuse floor divided by the workers last seen alive; workers heartbeat into
the store), and writes the spend it recorded meanwhile back, once, when the
store answers; ``"refuse"`` refuses; ``"allow"`` allows without accounting.
An outage is never read as "nothing spent".

Each operation is a small program (a generator) that yields store
operations (:class:`_Op`), source fetches (:class:`_Fetch`) and pauses; the
sync driver (:meth:`SharedLedger._drive`) carries them out with the store's
sync methods, the async driver (:meth:`SharedLedger._adrive`) with its async
twins, so that no Redis call runs on an event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import replace
from random import getrandbits
from typing import TYPE_CHECKING, Any, TypeVar

from .balance import Balance
from .errors import CreditSourceError
from .ledger import Hold, Ledger, Lookup, _charge, _Entry, _how, _record_failed
from .policy import Decision, Policy, decide, policy_of
from .runway import attach
from .sources._byhost import ByHost, route_of, routed
from .sources._fixed import FixedBudget
from .stores import StoreError

if TYPE_CHECKING:
    from .policy import Estimator
    from .stores import SharedState, Spend, Store

__all__ = ["SharedLedger"]

log = logging.getLogger("creditguard")

T = TypeVar("T")

_LEASE = 3.0
"""Seconds of the refresh lease; the refresher renews it every :data:`_RENEW`."""
_RENEW = 1.0
_WAIT = 2.0
"""Seconds a caller with nothing to serve waits for another worker's refresh
before fetching itself."""
_POLL = 0.05  # seconds between two looks at a refresh another worker is doing
_BACKOFF = 1.0  # seconds the store is left alone after a failure
_HEARTBEAT = 1.0  # seconds between two heartbeats of a worker
_ALIVE_FOR = 10.0  # a worker not heard from for this long no longer counts


class _Op:
    """A store operation: the method's name and its arguments."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name
        self.args = args


class _Fetch:
    """Fetch from the source (renewing ``token``'s lease meanwhile, if any)."""

    __slots__ = ("credential", "key", "token")

    def __init__(self, credential: str | None, key: str, token: str | None) -> None:
        self.credential = credential
        self.key = key
        self.token = token


Program = Generator[object, Any, T]
Floor = Callable[[Balance], float | None]
"""A policy's refuse floor for a balance (``Policy.refuse_floor``)."""


class _Owed:
    """Spend recorded while the store was down, to be written back once."""

    __slots__ = ("cost", "credential", "key", "merge", "op_id", "sent", "spend", "windows")

    def __init__(
        self,
        key: str,
        op_id: str,
        cost: float,
        spend: Spend | None,
        credential: str | None,
        windows: tuple[Spend, ...],
        merge: bool,
    ) -> None:
        self.key = key
        # more spend may be added while unsent: never to a settle's own id (that
        # settle may have been applied, and then its replay charges nothing)
        self.merge = merge
        self.op_id = op_id
        self.cost = cost
        self.spend = spend
        self.credential = credential  # (only in memory, for nested budgets' keys)
        self.windows = windows
        self.sent = False  # once sent, its id and amount are frozen (a replay applies once)


class _Counter:
    """Counts a FixedBudget nested in Tightest in the shared store (its spend
    goes there with each settle), and remembers the least spend of the
    current window this process knows of: a Redis that lost the count
    (flushed, restarted empty) gets it back at the next read of the window.

    A Tightest may be a ``sources.ByHost`` route (``route``: its entry): the
    budget then counts the calls routed there only, under the route's keys."""

    def __init__(
        self, ledger: SharedLedger, budget: FixedBudget, route: str | None = None, nth: int = 0
    ):
        self._ledger = ledger
        self._budget = budget
        self._route = route
        # the nth budget of one Tightest (or route) with this one's period and
        # per_credential counts under a name of its own, not in the first's
        self._nth = nth
        self._renamed: tuple[Spend, Spend] | None = None
        self._known: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def window(self) -> Spend:
        """The budget's current window, as counted in the store."""
        window = self._budget.spend_window()
        if not self._nth:
            return window
        renamed = self._renamed
        if renamed is None or renamed[0] is not window:
            name = f"{window.name}#{self._nth + 1}"
            renamed = self._renamed = (window, replace(window, name=name))
        return renamed[1]

    def key(self, credential: str | None) -> str:
        """The store key of the budget ``credential`` (as the budget's fetch
        gets it) draws down."""
        per_credential = self._budget.per_credential
        if self._route is not None:  # (the ledger's key of the route, and of the key if per key)
            route_key = routed(self._route, (per_credential and credential) or None)
            return self._ledger._fingerprint_of(route_key)
        return self._ledger._fingerprint_of(credential) if per_credential else "*"

    def key_of_call(self, credential: str | None) -> str | None:
        """:meth:`key` for a call made with ``credential`` (as the ledger has
        it); None when the call is routed elsewhere."""
        if self._route is None:
            return self.key(credential)
        entry, key = route_of(credential)
        if entry != self._route:
            return None
        return self.key(key)

    def _p_spent(self, credential: str | None) -> Program[float]:
        key = self.key(credential)
        window = self.window()
        with self._ledger._lock:
            known = self._known.get(key)
        least = known[1] if known is not None and known[0] == window.bucket else None
        spent: float = yield _Op("window", key, window, least)
        self.learn(key, window, spent, 0.0)
        return spent

    def learn(self, key: str, window: Spend, spent: float | None, cost: float) -> None:
        """The window spent ``spent`` at least (None: what was known), plus ``cost``."""
        with self._ledger._lock:
            known = self._known.get(key)
            least = known[1] if known is not None and known[0] == window.bucket else 0.0
            self._known[key] = (window.bucket, max(least, spent or 0.0) + cost)
            self._known.move_to_end(key)
            if len(self._known) > self._ledger._maxsize:
                self._known.popitem(last=False)

    def spent(self, credential: str | None) -> float:
        return self._ledger._drive(self._p_spent(credential))

    async def aspent(self, credential: str | None) -> float:
        return await self._ledger._adrive(self._p_spent(credential))


class SharedLedger(Ledger):
    """A :class:`~creditguard.ledger.Ledger` whose state lives in a shared store."""

    def __init__(self, source: Any, store: Store, *, policy: Policy | None = None, **kw: Any):
        super().__init__(source, **kw)
        self.store = store
        self._policy = policy if policy is not None else Policy()  # the guard's
        # A FixedBudget is counted in the store (settles add to its window);
        # its own in-process count is then not used.
        self._budget: FixedBudget | None = source if isinstance(source, FixedBudget) else None
        if self._budget is not None:
            self._source_record = None
        # sources.ByHost: a FixedBudget route is counted in the store too, under
        # the keys of the calls routed to it (see _budget_for), and so is one
        # inside a route's Tightest (see _Counter)
        self._routes: ByHost | None = source if isinstance(source, ByHost) else None
        self._routed = self._routes is not None and any(
            isinstance(route, FixedBudget) for route in self._routes.sources.values()
        )
        self._budgets = self._budget is not None or self._routed  # (any: see _budget_for)
        # FixedBudgets inside Tightest: counted in the store too (a settle counts
        # its cost in each of their windows; their fetch reads the window there)
        nested: list[tuple[FixedBudget, str | None]] = [
            (s, None) for s in getattr(source, "sources", ()) if isinstance(s, FixedBudget)
        ]
        if isinstance(source, ByHost):  # (and inside a route's Tightest: the calls routed there)
            nested = [
                (s, entry)
                for entry, route in source.sources.items()
                for s in getattr(route, "sources", ())
                if isinstance(s, FixedBudget)
            ]
        self._nested = [budget for budget, _ in nested]
        # (two budgets of one period in one Tightest count apart: see _Counter)
        alike: dict[tuple[str | None, bool, str | None], list[FixedBudget]] = {}
        self._counters = []
        for budget, route in nested:
            seen = alike.setdefault((route, budget.per_credential, budget.period), [])
            if budget not in seen:
                seen.append(budget)
            self._counters.append(_Counter(self, budget, route, seen.index(budget)))
        for budget, counter in zip(self._nested, self._counters, strict=True):
            budget.bind(counter)
        self._down_until = 0.0
        self._outage = False
        self._seen: OrderedDict[str, SharedState] = OrderedDict()  # last shared state per key
        self._drift: dict[str, list[float]] = {}  # this process's debits and holds since
        self._known: dict[str, tuple[int, float]] = {}  # budget key -> (bucket, least spend)
        # keys judged on this process's share (store down) -> what it was cut from:
        # the shared state and the refuse floor (the key's own policy's)
        self._local: dict[str, tuple[SharedState, Floor | None]] = {}
        self._owed: list[_Owed] = []
        self._orphans: list[tuple[str, str]] = []
        # sources.ByHost: a policy per route (its store_error); None: the guard's
        self._policy_for: Callable[[str | None], Policy | None] | None = getattr(
            source, "policy_for", None
        )
        self.workers = 1  # workers seen alive at the last heartbeat
        self._worker = uuid.uuid4().hex
        self._beat_due = 0.0
        self._background: set[asyncio.Task[Any]] = set()

    def _join_budgets(self) -> None:
        """(A budget kept in the shared store is counted there, by every guard.)"""

    # -- the drivers -------------------------------------------------------------

    def _drive(self, program: Program[T]) -> T:
        """Run ``program`` with the store's sync methods (blocking)."""
        try:
            step = next(program)
            while True:
                if isinstance(step, _Op):
                    try:
                        result = getattr(self.store, step.name)(*step.args)
                    except StoreError:
                        self._lost(step)
                        raise
                elif isinstance(step, _Fetch):
                    result = self._fetch_leased(step)
                else:
                    time.sleep(step)  # type: ignore[arg-type]
                    result = None
                step = program.send(result)
        except StopIteration as done:
            value: T = done.value
            return value

    async def _adrive(self, program: Program[T]) -> T:
        """Run ``program`` with the store's async twins (never blocks the loop)."""
        try:
            step = next(program)
            while True:
                if isinstance(step, _Op):
                    twin = getattr(self.store, "a" + step.name, None)
                    try:
                        if twin is not None:
                            result = await twin(*step.args)
                        else:  # a store without async twins
                            result = getattr(self.store, step.name)(*step.args)
                    except StoreError:
                        self._lost(step)
                        raise
                elif isinstance(step, _Fetch):
                    result = await self._afetch_leased(step)
                else:
                    await asyncio.sleep(step)  # type: ignore[call-overload]
                    result = None
                step = program.send(result)
        except StopIteration as done:
            value: T = done.value
            return value

    def _lost(self, op: _Op) -> None:
        """``op`` failed, but may have been applied (a timeout): a hold it may
        have taken, or failed to release, is released once the store answers
        again (not left to count against everyone until it expires)."""
        if (op.name == "admit" and op.args[2]) or op.name == "release":
            self._orphan(op.args[0], op.args[1])

    def _fetch_leased(self, step: _Fetch) -> Balance | CreditSourceError:
        """Fetch in this thread; another renews the lease while it runs."""
        if step.token is None:
            return self._source_fetch(step.credential)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(_RENEW):
                with contextlib.suppress(StoreError):
                    self.store.renew(step.key, step.token, _LEASE)  # type: ignore[arg-type]

        renewer = threading.Thread(target=renew, name="creditguard-lease", daemon=True)
        renewer.start()
        try:
            return self._source_fetch(step.credential)
        finally:
            stop.set()

    async def _afetch_leased(self, step: _Fetch) -> Balance | CreditSourceError:
        if step.token is None:
            return await self._source_afetch(step.credential)
        token = step.token

        async def renew() -> None:
            twin = getattr(self.store, "arenew", None)
            while True:
                await asyncio.sleep(_RENEW)
                with contextlib.suppress(StoreError):
                    if twin is not None:
                        await twin(step.key, token, _LEASE)
                    else:
                        self.store.renew(step.key, token, _LEASE)

        renewer = asyncio.get_running_loop().create_task(renew())
        try:
            return await self._source_afetch(step.credential)
        finally:
            renewer.cancel()

    def _source_fetch(self, credential: str | None) -> Balance | CreditSourceError:
        started = time.perf_counter()
        result: Balance | CreditSourceError
        try:
            result = self._checked(self.source.fetch(self._fetch_for(credential)))
        except Exception as exc:
            result = self._as_error(exc, credential)
        self._fetched(self.key(credential), started, result)
        return result

    async def _source_afetch(self, credential: str | None) -> Balance | CreditSourceError:
        started = time.perf_counter()
        result: Balance | CreditSourceError
        try:
            result = self._checked(await self.source.afetch(self._fetch_for(credential)))
        except Exception as exc:
            result = self._as_error(exc, credential)
        self._fetched(self.key(credential), started, result)
        return result

    def _later(self, program: Program[Any], on_error: Callable[[], None] | None = None) -> None:
        """Run ``program`` in a task of the running loop: a sync call made on
        an event loop's thread (a settle from an async stream) never waits
        for Redis there. ``on_error`` keeps what it was to write (owed) when
        the store fails, or when the loop shuts down before it is done; then
        a last synchronous attempt is made (the loop is closing anyway)."""
        loop = asyncio.get_running_loop()

        async def run() -> None:
            try:
                await self._adrive(program)
            except StoreError as exc:
                self._failed(exc)
                if on_error is not None:
                    on_error()
            except asyncio.CancelledError:
                if on_error is not None:
                    on_error()
                    self._flush_now()
                raise

        task = loop.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- store health ----------------------------------------------------------

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + _BACKOFF
        if not self._outage:
            self._outage = True
            log.warning(
                "shared store unavailable (%s): store_error=%s%s until it answers again",
                exc,
                self._policy.store_error,
                "" if self._policy_for is None else " (a route's own policy: its own)",
            )

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            with self._lock:
                for key in self._local:
                    self._cache.pop(key, None)
                self._local.clear()
            log.warning("shared store answers again: using the shared ledger")

    # -- programs shared by every operation ------------------------------------------

    def _p_upkeep(self) -> Program[None]:
        """Write back what is owed, and say this worker is alive (once a second)."""
        yield from self._p_tidy()
        now = time.monotonic()
        if now >= self._beat_due:
            self._beat_due = now + _HEARTBEAT
            self.workers = yield _Op("heartbeat", self._worker, time.time(), _ALIVE_FOR)

    def _p_tidy(self) -> Program[None]:
        """Write back what is owed, and release the holds that timed out being
        taken (and may have been taken: the call was judged locally instead)."""
        if self._owed:
            yield from self._p_flush()
        while self._orphans:  # one at a time: a failure puts its own back (_lost)
            with self._lock:
                if not self._orphans:
                    break
                key, token = self._orphans.pop(0)
            yield _Op("release", key, token)

    def _p_flush(self) -> Program[None]:
        with self._lock:
            owed = list(self._owed)
            for item in owed:
                item.sent = True
        for item in owed:
            yield from self._p_settle(
                item.key, item.op_id, item.cost, item.spend, False, item.credential, item.windows
            )
            with self._lock, contextlib.suppress(ValueError):  # (another flush sent it too)
                self._owed.remove(item)
            log.info("wrote back %g spent while the shared store was down", item.cost)

    def _owe(self, key: str, cost: float, credential: str | None, op_id: str | None = None) -> None:
        """Keep ``cost`` to write back when the store answers (a settle that
        failed keeps its hold's id: written back, it applies once)."""
        if not cost and op_id is None:
            return
        spend = self._spend(credential)
        windows = self._windows()
        with self._lock:
            if op_id is None:
                for item in self._owed:
                    if (
                        item.merge
                        and not item.sent
                        and item.key == key
                        and item.spend == spend
                        and item.windows == windows
                        and item.credential == credential
                    ):
                        item.cost += cost
                        return
                self._owed.append(
                    _Owed(key, uuid.uuid4().hex, cost, spend, credential, windows, True)
                )
                return
            self._owed.append(_Owed(key, op_id, cost, spend, credential, windows, False))

    def _windows(self) -> tuple[Spend, ...]:
        return tuple(counter.window() for counter in self._counters)

    def _counts(
        self, key: str, credential: str | None, cost: float, windows: tuple[Spend, ...]
    ) -> tuple[list[tuple[str, Spend]], list[tuple[str, Spend]]]:
        """Where the nested budgets count ``cost``: (store key, window) pairs
        the settle under ``key`` counts too (one script: never a round trip
        of their own), and the others (another slot of a cluster: a ``count``
        each)."""
        if not cost or not windows:
            return [], []
        folds = getattr(self.store, "folds", None)
        with_settle: list[tuple[str, Spend]] = []
        apart: list[tuple[str, Spend]] = []
        for counter, window in zip(self._counters, windows, strict=True):
            other = counter.key_of_call(credential)
            if other is None:  # (a ByHost route's budget, and the call went elsewhere)
                continue
            if folds is not None and folds(key, other):
                with_settle.append((other, window))
            else:
                apart.append((other, window))
        return with_settle, apart

    def _orphan(self, key: str, token: str) -> None:
        with self._lock:
            self._orphans.append((key, token))
            if len(self._orphans) > self._maxsize:
                del self._orphans[0]  # (its hold expires by itself)

    def _budget_for(self, credential: str | None) -> FixedBudget | None:
        """The budget the guard keeps itself for ``credential``'s calls,
        counted in the store under their key: the source when it is a
        FixedBudget, or under ``sources.ByHost`` the FixedBudget of the route
        the credential names (its key is per host, and per key only where
        the budget is). None: the balance comes from elsewhere."""
        routes = self._routes
        if routes is None or not self._routed:
            return self._budget
        route = routes.sources.get(route_of(credential)[0])
        return route if isinstance(route, FixedBudget) else None

    def _spend(self, credential: str | None) -> Spend | None:
        if not self._budgets:  # (the usual case, on every settle)
            return None
        budget = self._budget_for(credential)
        return None if budget is None else budget.spend_window()

    # -- reading and refreshing --------------------------------------------------

    def _fresh(self, state: SharedState, now: float, credential: str | None) -> bool:
        if state.balance is None or now - state.fetched_at >= self.ttl:
            return False
        if not self._budgets:
            return True
        budget = self._budget_for(credential)
        return budget is None or state.fetched_at >= budget.spend_window().start

    def _fresh_after(self, now: float, credential: str | None) -> float:
        if not self._budgets:
            return now - self.ttl
        after = now - self.ttl
        budget = self._budget_for(credential)
        if budget is not None:
            after = max(after, budget.spend_window().start)
        return after

    def _mirror(self, key: str, state: SharedState) -> None:
        """Remember the last shared state (the base of a later fallback)."""
        with self._lock:
            seen = self._seen
            seen[key] = state
            seen.move_to_end(key)
            if len(seen) > self._maxsize:
                self._drift.pop(seen.popitem(last=False)[0], None)
            self._drift[key] = [0.0, 0.0]

    def _adjust(self, key: str, debits: float = 0.0, held: float = 0.0) -> None:
        """What this process changed since it last read ``key``'s shared state
        (so that a fallback starts from it). Lock held."""
        drift = self._drift.get(key)
        if drift is None:
            self._drift[key] = [debits, held]
        else:
            drift[0] += debits
            drift[1] += held

    def _last_seen(self, key: str) -> SharedState | None:
        """The last shared state seen, with this process's changes since. Lock held."""
        state = self._seen.get(key)
        drift = self._drift.get(key)
        if state is None or drift is None:
            return state
        return replace(state, debits=state.debits + drift[0], held=max(0.0, state.held + drift[1]))

    def _view(self, state: SharedState) -> Balance | None:
        balance = state.balance
        if balance is None:
            return None
        view = balance.debited(state.debits)
        if state.exhausted and view.remaining > 0:
            view = view._derived(0.0, view.used)
        return view

    def _lookup(
        self, key: str, state: SharedState, error: CreditSourceError | None, *, read: bool = True
    ) -> Lookup:
        """The view of a shared state (``read`` from the store just now:
        remembered as the last shared state seen)."""
        if read:
            self._mirror(key, state)
        now = time.time()
        balance = state.balance
        if balance is None:
            return Lookup(None, True, error, key, state.held)
        age = now - state.fetched_at
        if age >= self.max_stale and age >= self.ttl:
            return Lookup(None, True, error, key, state.held)
        entry = _Entry(balance, self._timer() - max(0.0, age))
        entry.debits = state.debits
        entry.exhausted = state.exhausted
        entry.update()
        with self._lock:
            self._cache.put(key, entry)
        return Lookup(entry.view, age >= self.ttl, error, key, state.held)

    def _p_get(self, credential: str | None, key: str) -> Program[Lookup]:
        yield from self._p_upkeep()
        with self._lock:
            seen = self._seen.get(key)
        if seen is not None and self._fresh(seen, time.time(), credential):
            # fresh enough to judge on: the hold script reads the state anew
            return self._lookup(key, seen, None, read=False)
        state = yield _Op("read", key, time.time())
        error = None
        if not self._fresh(state, time.time(), credential):
            state, error = yield from self._p_refresh(credential, key, state)
        return self._lookup(key, state, error)

    def _p_refresh(
        self, credential: str | None, key: str, state: SharedState
    ) -> Program[tuple[SharedState, CreditSourceError | None]]:
        """Bring the shared snapshot up to date: recount a budget kept in the
        store, or fetch under the lease, or let the worker holding it do it."""
        with self._lock:
            error = self._errors.get(key)
        if error is not None:  # failed a moment ago here: don't hammer the source
            return state, error
        keep = max(self.ttl, self.max_stale) + self.ttl
        budget = self._budget_for(credential)
        if budget is not None:
            yield from self._p_recount(key, budget)
            state = yield _Op("read", key, time.time())
            if self._on_refresh is not None and state.balance is not None:
                self._on_refresh(state.balance, key)
            return state, None
        deadline = time.monotonic() + _WAIT
        while True:
            token = uuid.uuid4().hex
            leased = yield _Op("try_lock", key, token, _LEASE)
            if leased:
                # another worker may have refreshed and let go of the lease
                # between this one's read and its lease: then don't fetch again
                state = yield _Op("read", key, time.time())
                if self._fresh(state, time.time(), credential):
                    yield _Op("unlock", key, token)
                    return state, None
            if leased or time.monotonic() >= deadline:
                # (past the wait, a caller with nothing to serve fetches itself)
                result = yield _Fetch(credential, key, token if leased else None)
                if isinstance(result, Balance):
                    yield _Op("put", key, result, time.time(), state.debits, keep)
                    if leased:
                        yield _Op("unlock", key, token)
                    if self._on_refresh is not None:
                        self._on_refresh(result, key)
                    state = yield _Op("read", key, time.time())
                    return state, None
                if leased:
                    yield _Op("unlock", key, token)
                if result.partial is not None:  # (Tightest: the sources that answered)
                    state = yield from self._p_partial(key, state, result.partial, keep)
                if self.error_ttl > 0:
                    with self._lock:
                        self._errors[key] = result
                if self._on_error is not None:
                    self._on_error(result, key)
                return state, result
            if state.balance is not None and time.time() - state.fetched_at < self.max_stale:
                return state, None  # another worker refreshes: the stale figure stands in
            yield _POLL
            state = yield _Op("read", key, time.time())
            if self._fresh(state, time.time(), credential):
                return state, None

    def _p_partial(
        self, key: str, state: SharedState, partial: Balance, keep: float
    ) -> Program[SharedState]:
        """What the sources that answered leave stands in as a stale snapshot,
        or the last one when it leaves less, stamped anew (as
        :meth:`Ledger._partial`)."""
        view = self._view(state)  # (its debits and exhaustion in it)
        chosen = view if view is not None and view.remaining <= partial.remaining else partial
        yield _Op("put", key, chosen, time.time() - self.ttl, state.debits, keep)
        state = yield _Op("read", key, time.time())
        return state

    def get(self, credential: str | None, key: str | None = None) -> Lookup:
        if key is None:
            key = self.key(credential)
        if not self._usable():
            return self._degraded(credential, key)
        try:
            lookup = self._drive(self._p_get(credential, key))
        except StoreError as exc:
            self._failed(exc)
            return self._degraded(credential, key)
        self._recovered()
        return lookup

    async def aget(self, credential: str | None, key: str | None = None) -> Lookup:
        if key is None:
            key = self.key(credential)
        if not self._usable():
            return await self._adegraded(credential, key)
        try:
            lookup = await self._adrive(self._p_get(credential, key))
        except StoreError as exc:
            self._failed(exc)
            return await self._adegraded(credential, key)
        self._recovered()
        return lookup

    # -- the store is down: this process's share -------------------------------------

    def _share(self, key: str, floor_of: Floor | None = None) -> bool:
        """Judge ``key`` on this process's share of the last shared headroom:
        the headroom above the refuse floor divided by the workers last seen
        alive. False when no shared state was seen.

        The floor is ``key``'s own policy's (``floor_of``), which only an
        admit knows: a lookup cuts the share with none, and the admit that
        follows cuts it again, from the same shared state, with its floor
        (the spend recorded on the share meanwhile stays)."""
        with self._lock:
            cut = self._local.get(key)
            if cut is not None:
                state, floor = cut
                if floor_of is None or floor_of == floor:
                    return True
                entry = self._cache.get(key)
                if entry is not None:
                    entry.snapshot = self._portion(state, floor_of)
                    entry.update()
                    self._local[key] = (state, floor_of)
                    return True
            else:
                seen = self._last_seen(key)
                if seen is None or seen.balance is None:
                    return False
                state = seen
            self._cache.put(key, _Entry(self._portion(state, floor_of), self._timer()))
            self._local[key] = (state, floor_of)
            return True

    def _portion(self, state: SharedState, floor_of: Floor | None) -> Balance:
        """This process's share of ``state``'s headroom above the floor."""
        balance = state.balance
        assert balance is not None
        if balance.unlimited:
            return balance
        headroom = (0.0 if state.exhausted else balance.remaining) - state.debits
        headroom -= state.held
        floor = None
        if floor_of is not None:
            with contextlib.suppress(Exception):
                floor = floor_of(balance)
        floor = floor or 0.0
        if headroom > floor:
            headroom = floor + (headroom - floor) / max(1, self.workers)
        used = None if balance.total is None else max(0.0, balance.total - headroom)
        return balance._derived(headroom, used)

    def _store_error(self, credential: str | None) -> str:
        """``Policy.store_error`` for ``credential``: its route's own policy
        (``sources.ByHost``), else the guard's."""
        return policy_of(self._policy_for, self._policy, credential).store_error

    def _degraded(self, credential: str | None, key: str) -> Lookup:
        if self._store_error(credential) != "local":
            return Lookup(None, fingerprint=key, store_down=True)
        if self._share(key):
            with self._lock:
                entry = self._cache.get(key)
            if entry is not None:
                return Lookup(entry.view, fingerprint=key)
        return self._local_fetch(Ledger.get(self, credential, key), key)

    async def _adegraded(self, credential: str | None, key: str) -> Lookup:
        if self._store_error(credential) != "local":
            return Lookup(None, fingerprint=key, store_down=True)
        if self._share(key):
            with self._lock:
                entry = self._cache.get(key)
            if entry is not None:
                return Lookup(entry.view, fingerprint=key)
        return self._local_fetch(await Ledger.aget(self, credential, key), key)

    def _local_fetch(self, lookup: Lookup, key: str) -> Lookup:
        """A balance fetched while the store is down (nothing shared seen):
        taken as the shared state, this process's share of it is used."""
        from .stores import SharedState

        if lookup.balance is None:
            return lookup
        self._mirror(key, SharedState(lookup.balance, time.time(), 0.0, False, 0.0))
        self._share(key)
        with self._lock:
            entry = self._cache.get(key)
        return Lookup(entry.view if entry else lookup.balance, fingerprint=key)

    # -- holds -----------------------------------------------------------------

    def _p_admit(
        self,
        key: str,
        credential: str | None,
        judge: Callable[[Balance | None, float], Decision],
        amount: float,
        reserve: bool,
        floor: float | None,
        fresh_after: float,
        refresh: bool,
        floor_of: Floor | None,
    ) -> Program[tuple[Decision, Hold | None] | None]:
        """Read the shared state and hold ``amount`` in one script, then judge
        on what it read. When the snapshot was not fresh enough (gone with a
        flushed Redis, or stale): None, or with ``refresh`` refresh it and
        hold on what there is then (above ``floor_of``'s floor for it, when
        there was no balance to take ``floor`` from)."""
        if self._owed or self._orphans or time.monotonic() >= self._beat_due:
            yield from self._p_upkeep()
        token = _new_id()
        now = time.time()
        wanted = amount if reserve and amount > 0 else 0.0
        expires = now + self.hold_timeout
        status, state = yield _Op("admit", key, token, wanted, floor, now, expires, fresh_after)
        if status == 3:
            if not refresh:
                return None
            state, _ = yield from self._p_refresh(credential, key, state)
            if floor is None and state.balance is not None:
                floor = _floor(state.balance, floor_of)
            now = time.time()
            status, state = yield _Op(
                "admit", key, token, wanted, floor, now, now + self.hold_timeout, None
            )
        self._mirror(key, state)
        decision = judge(self._view(state), state.held)
        hold = Hold(key, credential, amount, self._timer() + self.hold_timeout, token)
        if status == 1:
            if decision.action == "refuse" and decision.enforced:
                yield _Op("release", key, token)  # (the policy's own floor refused it)
                return decision, None
            with self._lock:
                self._adjust(key, held=amount)
            return decision, hold
        if status == 0 and decision.action != "refuse" and decision.enforced:
            # The call's own estimate crossed the floor, but the judge chose a
            # cheaper model (or a clamp) that fits: hold that model's estimate
            # (a third round trip, only in this case).
            smaller = decision.held(amount)
            if reserve and 0 < smaller < wanted:
                now = time.time()
                status, state = yield _Op(
                    "admit", key, token, smaller, floor, now, now + self.hold_timeout, None
                )
                if status == 1:
                    self._mirror(key, state)
                    with self._lock:
                        self._adjust(key, held=smaller)
                    hold = Hold(key, credential, smaller, self._timer() + self.hold_timeout, token)
                    return decision, hold
        if status == 0:
            if decision.action != "refuse":
                reason = (
                    f"{decision.reason}; but calls in flight elsewhere now hold the headroom "
                    "down to refuse_below"
                )
                decision = Decision(
                    "refuse",
                    decision.requested_model,
                    decision.balance,
                    reason,
                    decision.requested_model,
                    decision.stale,
                    decision.enforced,
                )
            if not decision.enforced:  # shadow mode: refused, but sent and held all the same
                now = time.time()
                yield _Op("admit", key, token, wanted, None, now, now + self.hold_timeout, None)
                with self._lock:
                    self._adjust(key, held=amount)
                return decision, hold
        return decision, None

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
        """The hot path (sync callers): when the shared snapshot was fresh at
        the last look, read the state and hold in one script and judge on it.
        None when there is no fresh snapshot, when the store is down, or on an
        event loop's thread (async callers take :meth:`aadmit`)."""
        if not self._usable() or self._owed or _on_loop():
            return None
        with self._lock:
            seen = self._seen.get(key)
        now = time.time()
        if seen is None or not self._fresh(seen, now, credential):
            return None

        def judge(balance: Balance | None, reserved: float) -> Decision:
            decision = decide(
                balance,
                policy,
                model,
                amount,
                reserved=reserved,
                can_rewrite=can_rewrite,
                estimator=estimator,
            )
            burn = self.burn  # the burn rate's say (max_rate, warn_runway) and the runway
            if burn is None or not (policy._steers or key in burn.rates):
                return decision
            return attach(decision, policy, burn, key, amount, self._timer(), can_rewrite)

        floor = _floor(seen.balance, policy.refuse_floor)
        if not policy.enforce:
            floor = None  # shadow mode: whatever the verdict, the call goes out and is held
        fresh_after = self._fresh_after(now, credential)
        program = self._p_admit(
            key, credential, judge, amount, reserve, floor, fresh_after, False, None
        )
        try:
            return self._drive(program)
        except StoreError as exc:
            self._failed(exc)
            return None  # the long way round finds the store down and degrades

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
        if lookup.held is None:  # read locally (the store is down): the local books
            return self._admit_local(lookup, credential, judge, amount, reserve, floor_of)
        floor = _floor(lookup.balance, floor_of)
        key = lookup.fingerprint
        fresh_after = self._fresh_after(time.time(), credential)
        program = self._p_admit(
            key, credential, judge, amount, reserve, floor, fresh_after, True, floor_of
        )
        try:
            decided = self._drive(program)
        except StoreError as exc:
            self._failed(exc)
            lookup = self._degraded(credential, key)
            return self._admit_local(lookup, credential, judge, amount, reserve, floor_of)
        assert decided is not None  # (no freshness condition: never "not fresh")
        return decided

    async def aadmit(
        self,
        lookup: Lookup,
        credential: str | None,
        judge: Callable[[Balance | None, float], Decision],
        amount: float,
        *,
        reserve: bool,
        floor_of: Callable[[Balance], float | None] | None = None,
    ) -> tuple[Decision, Hold | None]:
        """:meth:`admit` for async code: the store is awaited."""
        if lookup.held is None:
            return self._admit_local(lookup, credential, judge, amount, reserve, floor_of)
        floor = _floor(lookup.balance, floor_of)
        key = lookup.fingerprint
        fresh_after = self._fresh_after(time.time(), credential)
        program = self._p_admit(
            key, credential, judge, amount, reserve, floor, fresh_after, True, floor_of
        )
        try:
            decided = await self._adrive(program)
        except StoreError as exc:
            self._failed(exc)
            lookup = await self._adegraded(credential, key)
            return self._admit_local(lookup, credential, judge, amount, reserve, floor_of)
        assert decided is not None
        return decided

    def _admit_local(
        self,
        lookup: Lookup,
        credential: str | None,
        judge: Callable[[Balance | None, float], Decision],
        amount: float,
        reserve: bool,
        floor_of: Floor | None,
    ) -> tuple[Decision, Hold | None]:
        """Judge and hold on the local books (the store is down); on this
        process's share of the key's headroom, cut above the key's own floor."""
        if floor_of is not None and lookup.fingerprint in self._local:
            self._share(lookup.fingerprint, floor_of)
        return Ledger.admit(
            self, lookup, credential, judge, amount, reserve=reserve, floor_of=floor_of
        )

    def _p_settle(
        self,
        key: str,
        op_id: str,
        cost: float,
        spend: Spend | None,
        hold: bool,
        credential: str | None,
        windows: tuple[Spend, ...],
    ) -> Program[int]:
        with_settle, apart = self._counts(key, credential, cost, windows)
        if with_settle:
            status: int = yield _Op("settle", key, op_id, cost, None, spend, with_settle)
        else:
            status = yield _Op("settle", key, op_id, cost, None, spend)
        budget = self._budget_for(credential) if status == 2 and hold else None
        if budget is not None:
            # the hold had vanished: Redis lost data (flushed, restarted empty);
            # put back the budget's spend this process knows of, right away
            yield from self._p_recount(key, budget)
        for other, window in apart:  # (once per id, as the settle)
            yield _Op("count", other, window, cost, op_id)
        if with_settle or apart:
            for counter, window in zip(self._counters, windows, strict=True):
                counted = counter.key_of_call(credential)
                if counted is not None:
                    counter.learn(counted, window, None, cost)
        return status

    def _p_recount(self, key: str, budget: FixedBudget) -> Program[None]:
        """Recount a budget kept in the store, never below what this process
        knows its window spent (Redis may have lost it)."""
        window = budget.spend_window()
        keep = max(self.ttl, self.max_stale) + self.ttl
        with self._lock:
            known = self._known.get(key)
        least = known[1] if known is not None and known[0] == window.bucket else None
        spent = yield _Op(
            "budget", key, window, budget.limit, budget.unit, budget.name, time.time(), keep, least
        )
        with self._lock:
            self._known[key] = (window.bucket, spent)
            if len(self._known) > self._maxsize:
                self._known.pop(next(iter(self._known)))

    def settle(self, hold: Hold, cost: float, how: str | None = None) -> bool:
        how = _how(cost, how)
        if hold.token is None:  # held on the local books (the store was down)
            cost = _charge(cost)
            settled = super().settle(hold, cost, how)
            if settled:
                self._owe(hold.key, cost, self._fetch_for(hold.credential))
            return settled
        cost = _charge(cost)
        with self._lock:
            if hold.state != Hold.OPEN:
                return False
            hold.state = Hold.SETTLED
            self._debit(hold.key, cost)  # the local mirror follows, for a fallback
            self._adjust(hold.key, cost, -hold.amount)
        if self._source_record is not None:
            try:
                self._source_record(self._fetch_for(hold.credential), cost)
            except Exception as exc:  # (billed: counted all the same)
                _record_failed(exc, hold.credential)
        self._send(hold.key, hold.token, cost, self._fetch_for(hold.credential), hold=True)
        self._spent(hold.key, cost, how)
        return True

    def _send(
        self, key: str, op_id: str, cost: float, credential: str | None, *, hold: bool = False
    ) -> None:
        """Charge ``cost`` in the store under ``op_id``; owed (and written back
        under the same id, so applied once) if the store does not answer."""
        spend = self._spend(credential)
        if spend is not None:  # what this process knows the window has spent, at least
            with self._lock:
                known = self._known.get(key)
                if known is not None and known[0] == spend.bucket:
                    self._known[key] = (known[0], known[1] + cost)
        if spend is None and not self._nested and not _on_loop():
            # (the usual case: one script, and nothing to do after it)
            try:
                self.store.settle(key, op_id, cost, None, None)
            except StoreError as exc:
                self._failed(exc)
                self._owe(key, cost, credential, op_id)
            return
        program = self._p_settle(key, op_id, cost, spend, hold, credential, self._windows())
        if _on_loop():
            self._later(program, lambda: self._owe(key, cost, credential, op_id))
            return
        try:
            self._drive(program)
        except StoreError as exc:
            self._failed(exc)
            self._owe(key, cost, credential, op_id)

    def release(self, hold: Hold) -> bool:
        if hold.token is None:
            return super().release(hold)
        with self._lock:
            if hold.state != Hold.OPEN:
                return False
            hold.state = Hold.RELEASED
            self._adjust(hold.key, held=-hold.amount)
        program = self._p_op(_Op("release", hold.key, hold.token))
        if _on_loop():
            self._later(program)  # (one that fails is released when the store answers)
            return True
        try:
            self._drive(program)
        except StoreError as exc:
            self._failed(exc)
        return True

    def _p_op(self, op: _Op) -> Program[Any]:
        result = yield op
        return result

    def reserved(self, credential: str | None) -> float:
        key = self.key(credential)
        if self._usable():  # (a sync read, as asked: guarded calls never come here)
            try:
                if self._owed or self._orphans:  # (what this process owes the store counts)
                    self._drive(self._p_tidy())
                return self.store.read(key, time.time()).held
            except StoreError as exc:
                self._failed(exc)
        with self._lock:
            seen = self._last_seen(key)
        local = super().reserved(credential)
        return local + (seen.held if seen is not None and key not in self._local else 0.0)

    # -- what the provider tells us ----------------------------------------------

    def _shared(self, op: _Op, local: Callable[[], None]) -> None:
        if self._usable():
            if _on_loop():
                self._later(self._p_op(op), local)
                return
            try:
                self._drive(self._p_op(op))
            except StoreError as exc:
                self._failed(exc)
            else:
                return
        local()

    def record(self, credential: str | None, cost: float, how: str | None = None) -> None:
        how = _how(cost, how)
        cost = _charge(cost)
        if self._source_record is not None:
            try:
                self._source_record(self._fetch_for(credential), cost)
            except Exception as exc:  # (billed: counted all the same)
                _record_failed(exc, credential)
        key = self.key(credential)
        with self._lock:  # the local mirror follows, for a fallback
            self._debit(key, cost)
            if key not in self._local:
                self._adjust(key, cost)
        if not cost:
            return
        self._spent(key, cost, how)
        if not self._usable():
            self._owe(key, cost, self._fetch_for(credential))
            return
        self._send(key, _new_id(), cost, self._fetch_for(credential))

    def mark_exhausted(self, credential: str | None) -> None:
        key = self.key(credential)
        self._shared(_Op("exhaust", key), lambda: Ledger.mark_exhausted(self, credential))

    def set_remaining(self, credential: str | None, remaining: float) -> None:
        key = self.key(credential)
        keep = max(self.ttl, self.max_stale) + self.ttl
        self._shared(
            _Op("set_remaining", key, remaining, time.time(), keep),
            lambda: Ledger.set_remaining(self, credential, remaining),
        )

    def invalidate(self, credential: str | None = None, *, all: bool = False) -> None:
        with self._lock:
            if all:
                self._seen.clear()
                self._drift.clear()
            else:
                self._seen.pop(self.key(credential), None)
                self._drift.pop(self.key(credential), None)
        super().invalidate(credential, all=all)

    def _flush_now(self) -> None:
        """Write back what is owed now, if the store answers (blocking)."""
        if (self._owed or self._orphans) and self._usable():
            try:
                self._drive(self._p_tidy())
            except StoreError as exc:
                self._failed(exc)
        if self._owed:
            log.error(
                "closing with %g spent while the shared store was down, not written back",
                sum(item.cost for item in self._owed),
            )

    def close(self) -> None:
        self.drain()  # settles a finalizer queued: the process may make no other call
        self._flush_now()
        self.store.close()

    def _at_exit(self) -> None:
        """The interpreter exits: run the settles still queued and write back
        what is owed (a store closed already has nothing of its own to do)."""
        with contextlib.suppress(StoreError):
            self.drain()
            self._flush_now()

    async def aclose(self) -> None:
        """Let the store writes started from async code finish, write back
        what is owed, then close."""
        self.drain()  # settles a finalizer queued (their store writes are awaited below)
        pending = [task for task in self._background if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        if (self._owed or self._orphans) and self._usable():
            try:
                await self._adrive(self._p_tidy())
            except StoreError as exc:
                self._failed(exc)
        aclose = getattr(self.store, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            self.store.close()


def _floor(balance: Balance | None, floor_of: Floor | None) -> float | None:
    """The refuse floor of ``balance`` (None: no floor to hold against)."""
    if balance is None or balance.unlimited or floor_of is None:
        return None
    return floor_of(balance)


def _on_loop() -> bool:
    """True on a thread that runs an event loop (a blocking call would stall it)."""
    return asyncio._get_running_loop() is not None


def _new_id() -> str:
    """A hold's or a debit's id: 128 random bits (never reused; ``random`` is
    reseeded in a forked child)."""
    return f"{getrandbits(128):032x}"
