"""Decisions per second per process: the in-process ledger vs the Redis store.

Each decision is a full guarded call's bookkeeping: check the balance, hold the
estimate, settle the real cost (``guard.reserve(...).settle(cost)``). Starts its
own redis-server on a free loopback port; skipped (exit 0) without one.

    python benchmarks/store.py [seconds]
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time

from creditguard import Balance, BudgetGuard, Policy

KEY = "sk-or-v1-store-benchmark-0000000000000"


class Source:
    name = "bench"
    per_credential = True

    def fetch(self, credential: str | None) -> Balance:
        return Balance(1e9, total=1e9, source="bench")

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


def rate(guard: BudgetGuard, seconds: float) -> float:
    guard.check(credential=KEY)  # warm
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            guard.reserve("m", credential=KEY).settle(0.001)
        n += 100
    return n / (time.perf_counter() - start)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    binary = shutil.which("redis-server")
    if binary is None:
        print("store benchmark skipped: no redis-server on this machine")
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        policy = Policy(refuse_below=1.0)
        memory = BudgetGuard(Source(), policy, ttl=3600)
        shared = BudgetGuard(
            Source(), policy, ttl=3600, store=f"redis://127.0.0.1:{port}/0?secret=bench"
        )
        mem, red = rate(memory, seconds), rate(shared, seconds)
        shared.close()
    finally:
        server.kill()
        server.wait()
    print("decisions per second per process (check + hold + settle), one credential:")
    print(f"  in-process ledger   {mem:10,.0f}/s")
    print(f"  Redis store         {red:10,.0f}/s   (loopback redis-server)")
    print(f"  ratio               {mem / red:10.1f}x  (memory / redis)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
