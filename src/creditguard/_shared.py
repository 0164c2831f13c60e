"""The ledger over a shared store: one budget for many processes and machines.

:class:`SharedLedger` keeps each credential's snapshot, debits and holds in a
:class:`~creditguard.stores.Store` (Redis) instead of in process memory:

* a check reads the shared state (one round trip); when the snapshot is stale,
  at most one worker refreshes it (a lock with a token), the others serve the
  stale balance or wait briefly for the new one;
* a hold is taken by one atomic script that also checks the refuse floor, so
  workers racing for the last credits cannot all win;
* settles, releases and debits go to the store; settling twice applies once.

When the store fails (down, slow, answering errors), ``Policy.store_error``
decides: ``"local"`` (default) falls back to this process's own ledger, which
mirrors the last shared state it saw, and goes back to the store when it
answers again; ``"refuse"`` refuses; ``"allow"`` allows without accounting.
An outage is never read as "nothing spent".

The refresh is a small state machine (:meth:`SharedLedger._refresh`) that
yields "fetch" and "sleep" steps; the sync and async drivers carry them out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, cast

from .balance import Balance, check_cost
from .errors import CreditSourceError
from .ledger import Hold, Ledger, Lookup, _Entry
from .policy import Decision
from .stores import StoreError

if TYPE_CHECKING:
    from .stores import SharedState, Store

__all__ = ["SharedLedger"]

log = logging.getLogger("creditguard")

_FETCH = object()  # a step of the refresh: fetch from the source, send the result back
_POLL = 0.02  # seconds between two looks at a refresh another worker is doing
_BACKOFF = 1.0  # seconds the store is left alone after a failure


class SharedLedger(Ledger):
    """A :class:`~creditguard.ledger.Ledger` whose state lives in a shared store."""

    def __init__(self, source: Any, store: Store, *, store_error: str = "local", **kw: Any):
        super().__init__(source, **kw)
        self.store = store
        self.store_error = store_error
        self._down_until = 0.0
        self._outage = False

    # -- store health ----------------------------------------------------------

    def _usable(self) -> Store | None:
        return None if time.monotonic() < self._down_until else self.store

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + _BACKOFF
        if not self._outage:
            self._outage = True
            log.warning(
                "shared store unavailable (%s): store_error=%s until it answers again",
                exc,
                self.store_error,
            )

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("shared store answers again: using the shared ledger")

    def _degraded(self, credential: str | None) -> Lookup:
        if self.store_error == "local":
            return Ledger.get(self, credential)
        return Lookup(None, fingerprint=self.key(credential), store_down=True)

    async def _adegraded(self, credential: str | None) -> Lookup:
        if self.store_error == "local":
            return await Ledger.aget(self, credential)
        return Lookup(None, fingerprint=self.key(credential), store_down=True)

    # -- reading and refreshing --------------------------------------------------

    def _fresh(self, state: SharedState, now: float) -> bool:
        return state.balance is not None and now - state.fetched_at < self.ttl

    def _lookup(self, key: str, state: SharedState, error: CreditSourceError | None) -> Lookup:
        """The view of a shared state, mirrored locally for a later fallback."""
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

    def _refresh(
        self, store: Store, key: str, state: SharedState
    ) -> Generator[object, Any, tuple[SharedState, CreditSourceError | None]]:
        """Bring the shared snapshot up to date: fetch it under the lock, or
        let the worker that holds the lock do it. Yields ``_FETCH`` (send back a
        Balance or a CreditSourceError) or a number of seconds to sleep."""
        deadline = time.monotonic() + self.refresh_timeout
        while True:
            with self._lock:
                error = self._errors.get(key)
            if error is not None:  # failed a moment ago here: don't hammer the source
                return state, error
            token = uuid.uuid4().hex
            if store.try_lock(key, token, self.refresh_timeout):
                try:
                    result = yield _FETCH
                    if isinstance(result, Balance):
                        store.put(
                            key,
                            result,
                            time.time(),
                            state.debits,
                            keep_for=max(self.ttl, self.max_stale) + self.ttl,
                        )
                        if self._on_refresh is not None:
                            self._on_refresh(result, key)
                        return store.read(key, time.time()), None
                    if self.error_ttl > 0:
                        with self._lock:
                            self._errors[key] = result
                    if self._on_error is not None:
                        self._on_error(result, key)
                    return state, result
                finally:
                    store.unlock(key, token)
            if state.balance is not None and time.time() - state.fetched_at < self.max_stale:
                return state, None  # another worker refreshes: the stale figure stands in
            if time.monotonic() > deadline:
                return state, CreditSourceError(
                    f"no balance refresh finished within {self.refresh_timeout:g} s",
                    source=str(getattr(self.source, "name", "")),
                )
            yield _POLL
            state = store.read(key, time.time())
            if self._fresh(state, time.time()):
                return state, None

    def get(self, credential: str | None, key: str | None = None) -> Lookup:
        if key is None:
            key = self.key(credential)
        store = self._usable()
        if store is None:
            return self._degraded(credential)
        try:
            state = store.read(key, time.time())
            error = None
            if not self._fresh(state, time.time()):
                steps = self._refresh(store, key, state)
                try:
                    step = next(steps)
                    while True:
                        if step is _FETCH:
                            step = steps.send(self._source_fetch(credential))
                        else:
                            time.sleep(cast(float, step))
                            step = next(steps)
                except StopIteration as done:
                    state, error = done.value
            self._recovered()
        except StoreError as exc:
            self._failed(exc)
            return self._degraded(credential)
        return self._lookup(key, state, error)

    async def aget(self, credential: str | None, key: str | None = None) -> Lookup:
        if key is None:
            key = self.key(credential)
        store = self._usable()
        if store is None:
            return await self._adegraded(credential)
        try:
            state = store.read(key, time.time())
            error = None
            if not self._fresh(state, time.time()):
                steps = self._refresh(store, key, state)
                try:
                    step = next(steps)
                    while True:
                        if step is _FETCH:
                            step = steps.send(await self._source_afetch(credential))
                        else:
                            await asyncio.sleep(cast(float, step))
                            step = next(steps)
                except StopIteration as done:
                    state, error = done.value
            self._recovered()
        except StoreError as exc:
            self._failed(exc)
            return await self._adegraded(credential)
        return self._lookup(key, state, error)

    def _source_fetch(self, credential: str | None) -> Balance | CreditSourceError:
        try:
            return self._checked(self.source.fetch(self._fetch_for(credential)))
        except Exception as exc:
            return self._as_error(exc, credential)

    async def _source_afetch(self, credential: str | None) -> Balance | CreditSourceError:
        try:
            return self._checked(await self.source.afetch(self._fetch_for(credential)))
        except Exception as exc:
            return self._as_error(exc, credential)

    # -- holds -----------------------------------------------------------------

    def admit_fresh(self, *args: Any, **kwargs: Any) -> None:
        """No local fast path: the shared state is read from the store on every
        call (:meth:`get`), and holds are taken there (:meth:`admit`)."""
        return None

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
            return super().admit(
                lookup, credential, judge, amount, reserve=reserve, floor_of=floor_of
            )
        decision = judge(lookup.balance, lookup.held)
        amount = decision.held(amount)
        if not reserve or amount <= 0 or (decision.action == "refuse" and decision.enforced):
            return decision, None
        balance = lookup.balance
        floor = None
        if (
            balance is not None
            and not balance.unlimited
            and floor_of is not None
            and decision.action != "refuse"  # (a refusal in shadow mode is held anyway)
        ):
            floor = floor_of(balance)
        key = lookup.fingerprint
        token = uuid.uuid4().hex
        now = time.time()
        try:
            held = self.store.reserve(key, token, amount, floor, now, now + self.hold_timeout)
            if not held and not decision.enforced:  # shadow mode: refused, but sent and held
                self.store.reserve(key, token, amount, None, now, now + self.hold_timeout)
        except StoreError as exc:
            self._failed(exc)
            return super().admit(
                lookup, credential, judge, amount, reserve=reserve, floor_of=floor_of
            )
        if not held:  # other workers took the headroom since we read it
            reason = (
                f"{decision.reason}; but calls in flight elsewhere now hold the headroom "
                "down to refuse_below"
            )
            refused = Decision(
                "refuse",
                decision.requested_model,
                decision.balance,
                reason,
                decision.requested_model,
                decision.stale,
                decision.enforced,
            )
            if not decision.enforced:
                return refused, Hold(
                    key, credential, amount, self._timer() + self.hold_timeout, token
                )
            return refused, None
        return decision, Hold(key, credential, amount, self._timer() + self.hold_timeout, token)

    def settle(self, hold: Hold, cost: float) -> bool:
        if hold.token is None:
            return super().settle(hold, cost)
        cost = check_cost(cost)
        if hold.state != Hold.OPEN:
            return False
        hold.state = Hold.SETTLED
        if self._source_record is not None:
            self._source_record(self._fetch_for(hold.credential), cost)
        try:
            settled = self.store.settle(hold.key, hold.token, cost)
        except StoreError as exc:
            self._failed(exc)
            settled = True
        with self._lock:  # the local mirror follows, for a fallback
            self._debit(hold.key, cost)
        return settled

    def release(self, hold: Hold) -> bool:
        if hold.token is None:
            return super().release(hold)
        if hold.state != Hold.OPEN:
            return False
        hold.state = Hold.RELEASED
        try:
            return self.store.release(hold.key, hold.token)
        except StoreError as exc:
            self._failed(exc)  # the hold expires in the store by itself
            return True

    def reserved(self, credential: str | None) -> float:
        store = self._usable()
        if store is not None:
            try:
                return store.read(self.key(credential), time.time()).held
            except StoreError as exc:
                self._failed(exc)
        return super().reserved(credential)

    # -- what the provider tells us ----------------------------------------------

    def _shared(self, op: Callable[[Store], None], local: Callable[[], None]) -> None:
        store = self._usable()
        if store is not None:
            try:
                op(store)
            except StoreError as exc:
                self._failed(exc)
            else:
                return
        local()

    def record(self, credential: str | None, cost: float) -> None:
        cost = check_cost(cost)
        if self._source_record is not None:
            self._source_record(self._fetch_for(credential), cost)
        key = self.key(credential)

        store = self._usable()
        if store is not None:
            try:
                store.debit(key, cost)
            except StoreError as exc:
                self._failed(exc)
        with self._lock:  # the local mirror follows, for a fallback
            self._debit(key, cost)

    def mark_exhausted(self, credential: str | None) -> None:
        key = self.key(credential)
        self._shared(
            lambda store: store.exhaust(key), lambda: Ledger.mark_exhausted(self, credential)
        )

    def set_remaining(self, credential: str | None, remaining: float) -> None:
        key = self.key(credential)
        keep = max(self.ttl, self.max_stale) + self.ttl
        self._shared(
            lambda store: store.set_remaining(key, remaining, time.time(), keep),
            lambda: Ledger.set_remaining(self, credential, remaining),
        )

    def close(self) -> None:
        self.store.close()
