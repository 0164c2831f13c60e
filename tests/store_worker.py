"""Worker processes of the shared-store tests (tests/test_shared_ledger.py).

python store_worker.py fixed <store-url> <calls> <cost>
python store_worker.py slow-refresh <store-url> <key>
python store_worker.py local <store-url> <key> <go-file>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from creditguard import Balance, BudgetGuard, Policy
from creditguard.sources import FixedBudget


class Constant:
    """A provider whose balance never moves (the test counts the spend)."""

    name = "constant"
    per_credential = True

    def __init__(self, remaining: float, delay: float = 0.0) -> None:
        self.remaining = remaining
        self.delay = delay

    def fetch(self, credential: str | None) -> Balance:
        if self.delay:
            print("fetching", flush=True)
            time.sleep(self.delay)
        return Balance(self.remaining, total=100.0, source=self.name)

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


def fixed(store: str, calls: int, cost: float) -> None:
    """Calls against one FixedBudget(1.0/day) counted in the store."""
    guard = BudgetGuard(
        FixedBudget(1.0, period="day"),
        Policy(refuse_below=0.0),
        ttl=0.2,  # refreshed (recounted) many times during the run
        estimate=cost,
        store=store,
    )
    allowed = 0
    for _ in range(calls):
        reservation = guard.reserve("m")
        if reservation.decision.action != "refuse":
            reservation.settle(cost)
            allowed += 1
        time.sleep(0.01)
    guard.close()
    print(f"allowed={allowed}", flush=True)


def slow_refresh(store: str, key: str) -> None:
    """Takes the refresh lease and hangs in its fetch (the test SIGKILLs it)."""
    guard = BudgetGuard(Constant(10.0, delay=60.0), Policy(refuse_below=1.0), store=store)
    guard.check("m", credential=key)


def local(store: str, key: str, go: str) -> None:
    """Shares a budget, then goes on alone (store_error="local") once Redis is killed."""
    guard = BudgetGuard(
        Constant(10.0), Policy(refuse_below=1.0), ttl=60.0, estimate=0.25, store=store
    )
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # heartbeats: every worker learns there are 3
        guard.check("m", credential=key)
        time.sleep(0.05)
    for _ in range(2):
        guard.reserve("m", credential=key).settle(0.25)
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.01)
    spent = 0.0
    for _ in range(40):
        reservation = guard.reserve("m", credential=key)
        if reservation.decision.action != "refuse":
            reservation.settle(0.25)
            spent += 0.25
    print(f"spent={spent} workers={guard.ledger.workers}", flush=True)  # type: ignore[attr-defined]


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "fixed":
        fixed(args[0], int(args[1]), float(args[2]))
    elif mode == "slow-refresh":
        slow_refresh(args[0], args[1])
    else:
        local(args[0], args[1], args[2])
