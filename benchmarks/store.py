"""The shared store's cost per guarded call, next to Redis's own round trips.

One guarded call is ``guard.reserve(...)`` then ``settle(cost)``: the read and
the hold in one script, the settle in another. This prints, in one run and
against one loopback redis-server it starts itself:

* round trips per guarded call, counted from ``INFO commandstats`` (EVALSHA
  calls plus any command no script runs; a script's own commands don't count);
* µs per guarded call vs two bare EVALSHA round trips (goal: <= 1.5x),
  measured in alternating batches (medians), so that a busy machine slows
  both alike; for scale, the same two round trips on one bare redis-py
  connection too (no client layers: how the store itself sends its scripts);
* the same for async code (``await guard.areserve(...)``, redis.asyncio);
* the in-process ledger, for scale;
* 8 processes' aggregate guarded calls per second on one Redis.

    python benchmarks/store.py [seconds]

Skipped (exit 0) without a redis-server binary.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from typing import Any

from creditguard import Balance, BudgetGuard, Policy

KEY = "sk-or-v1-store-benchmark-0000000000000"
SECRET = "bench"


class Source:
    name = "bench"
    per_credential = True

    def fetch(self, credential: str | None) -> Balance:
        return Balance(1e9, total=1e9, source="bench")

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


def make_guard(url: str | None) -> BudgetGuard:
    store = None if url is None else f"{url}?secret={SECRET}"
    return BudgetGuard(Source(), Policy(refuse_below=1.0), ttl=3600, store=store)


def round_trips(raw: Any) -> int:
    """Commands clients sent (see the module docstring)."""
    inside: set[str] = set()
    for entry in (files("creditguard.stores") / "lua").iterdir():
        inside.update(m.lower() for m in re.findall(r"redis\.call\('(\w+)'", entry.read_text()))
    stats = raw.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_").split("|")[0] not in inside | {"info"}
    )


def paired(base: Any, guarded: Any, seconds: float, batch: int = 200) -> tuple[float, float]:
    """µs per call of ``base`` and of ``guarded``, measured in alternating
    batches for ``seconds`` (a busy machine slows both alike), each the
    median over the batches."""
    a, b = alternating([base, guarded], seconds, batch)
    return a, b


def alternating(fns: list[Any], seconds: float, batch: int = 200) -> list[float]:
    """:func:`paired` for any number of functions."""
    for _ in range(batch):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            out.append((time.perf_counter() - start) / batch * 1e6)
    return [statistics.median(out) for out in times]


async def apaired(
    base: Any, guarded: Any, seconds: float, drain: Any, batch: int = 200
) -> tuple[float, float]:
    for _ in range(batch):
        await base()
        await guarded()
    await drain()
    a: list[float] = []
    b: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for fn, out in ((base, a), (guarded, b)):
            start = time.perf_counter()
            for _ in range(batch):
                await fn()
            if fn is guarded:
                await drain()  # the settles run as tasks: their time counts too
            out.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(a), statistics.median(b)


def sync_rows(url: str, seconds: float) -> dict[str, float]:
    import redis

    raw = redis.Redis.from_url(url)
    sha = raw.script_load("return 1")
    guard = make_guard(url)
    guard.check(credential=KEY)

    def two_evalsha() -> None:
        raw.evalsha(sha, 1, "cg:{bench}:x")
        raw.evalsha(sha, 1, "cg:{bench}:x")

    conn = raw.connection_pool.make_connection()
    packed = [b"".join(conn.pack_command("EVALSHA", sha, 1, "cg:{bench}:x"))]

    def two_on_a_connection() -> None:
        for _ in range(2):
            conn.send_packed_command(packed, check_health=False)
            conn.read_response()

    def call() -> None:
        guard.reserve("m", credential=KEY).settle(0.001)

    before = round_trips(raw)
    for _ in range(1000):
        call()
    trips = (round_trips(raw) - before) / 1000
    two, guarded, bare = alternating([two_evalsha, call, two_on_a_connection], seconds)
    conn.disconnect()
    guard.close()
    memory = make_guard(None)
    memory.check(credential=KEY)
    local = paired(lambda: None, lambda: memory.reserve("m", credential=KEY).settle(0.001), 0.5)[1]
    raw.close()
    return {"two": two, "guarded": guarded, "trips": trips, "memory": local, "bare": bare}


async def async_rows(url: str, seconds: float) -> dict[str, float]:
    import redis
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    sha = await client.script_load("return 1")
    guard = make_guard(url)
    await guard.acheck(credential=KEY)
    ledger: Any = guard.ledger

    async def two_evalsha() -> None:
        await client.evalsha(sha, 1, "cg:{bench}:x")
        await client.evalsha(sha, 1, "cg:{bench}:x")

    async def call() -> None:
        (await guard.areserve("m", credential=KEY)).settle(0.001)

    async def drain() -> None:
        pending = [t for t in ledger._background if not t.done()]
        if pending:
            await asyncio.wait(pending)

    raw = redis.Redis.from_url(url)
    before = round_trips(raw)
    for _ in range(1000):
        await call()
    await drain()
    trips = (round_trips(raw) - before) / 1000
    two, guarded = await apaired(two_evalsha, call, seconds, drain)
    await guard.aclose()
    await client.aclose()
    raw.close()
    return {"two": two, "guarded": guarded, "trips": trips}


def child(url: str, seconds: float) -> None:
    guard = make_guard(url)
    guard.check(credential=KEY)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            guard.reserve("m", credential=KEY).settle(0.001)
        n += 50
    guard.close()
    print(n / (time.perf_counter() - start))


def processes(url: str, seconds: float, count: int = 8) -> float:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    return sum(float(p.communicate()[0]) for p in procs)


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], float(sys.argv[3]))
        return 0
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
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
    url = f"redis://127.0.0.1:{port}/0"
    try:
        time.sleep(0.3)
        sync = sync_rows(url, seconds)
        aio = asyncio.run(async_rows(url, seconds))
        aggregate = processes(url, seconds)
    finally:
        server.kill()
        server.wait()
    print("one guarded call (reserve + settle) on a loopback redis-server, one credential:")
    print(f"  round trips per call, sync       {sync['trips']:8.2f}   (goal <= 2)")
    print(f"  round trips per call, async      {aio['trips']:8.2f}   (goal <= 2)")
    for name, row in (("sync ", sync), ("async", aio)):
        two = row["two"]
        print(
            f"  {name} guarded call {row['guarded']:8.1f} us   two EVALSHA round trips "
            f"{two:6.1f} us   ratio {row['guarded'] / two:4.2f}x (goal <= 1.5x)"
        )
    bare = sync["bare"]
    print(
        f"  (for scale: two EVALSHA round trips on one bare redis-py connection {bare:6.1f} us,"
        f" {sync['guarded'] / bare:4.2f}x)"
    )
    print(f"  in-process ledger, sync          {sync['memory']:8.1f} us")
    print(f"  8 processes on one Redis     {aggregate:10,.0f} guarded calls/s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
