"""One budget across guards, processes and machines: the ledger over a real Redis."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from redis_server import (  # noqa: F401  (the fixtures)
    RedisServer,
    redis_cluster_fixture,
    redis_server_fixture,
)

import creditguard as cg
from creditguard import Balance, BudgetGuard, ConfigError, Policy, Reservation
from creditguard._shared import SharedLedger
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-SHAREDSECRET0000000000000000"
SECRET = "test-fingerprint-secret"


class Source:
    """Counts fetches across every guard that shares it."""

    name = "test"
    per_credential = True

    def __init__(self, remaining: float = 10.0, delay: float = 0.0) -> None:
        self.remaining = remaining
        self.delay = delay
        self.calls = 0
        self.lock = threading.Lock()

    def fetch(self, credential: str | None) -> Balance:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return Balance(self.remaining, total=100.0, source="test")

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


def guard(redis: RedisServer, source: Any, timeout: float = 0.2, **kw: Any) -> BudgetGuard:
    """A guard over ``redis``; a short store ``timeout`` for the outage tests
    (tests not about outages pass a patient one: a loaded machine's slow reply
    would send the guard to its local books, rightly, and fail them)."""
    kw.setdefault("policy", Policy(refuse_below=1.0))
    kw.setdefault("estimate", 0.25)
    policy = kw.pop("policy")
    store = f"{redis.url}?secret={SECRET}&timeout={timeout}"
    return BudgetGuard(source, policy, store=store, **kw)


def test_guards_share_one_budget(redis_server: RedisServer) -> None:
    source = Source()
    a, b = guard(redis_server, source, 2.0), guard(redis_server, source, 2.0)
    assert isinstance(a.ledger, SharedLedger)
    r = a.reserve("m", credential=KEY)
    assert b.ledger.reserved(KEY) == 0.25  # a hold in one process counts in the other
    r.settle(2.0)
    d = b.check("m", credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 8.0
    assert source.calls == 1  # one fetch for both
    a.close()
    b.close()


def test_concurrent_guards_never_hold_past_the_floor(redis_server: RedisServer) -> None:
    source = Source(10.0)
    guards = [guard(redis_server, source, 2.0) for _ in range(4)]
    for g in guards:
        g.check(credential=KEY)
    results: list[str] = []
    kept: list[Reservation] = []  # open (a reservation dropped open is charged)
    start = threading.Barrier(40)

    def worker(g: BudgetGuard) -> None:
        start.wait()
        for _ in range(3):
            kept.append(g.reserve("m", credential=KEY))
            results.append(kept[-1].decision.action)

    threads = [threading.Thread(target=worker, args=(guards[i % 4],)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("allow") == 36  # (10 - 1) / 0.25, not one more
    assert guards[0].ledger.reserved(KEY) == pytest.approx(9.0)
    for g in guards:
        g.close()


def test_one_refresh_for_all_guards(redis_server: RedisServer) -> None:
    source = Source(delay=0.2)
    # (a store op past its timeout would rightly fall back to a local fetch:
    # a loaded machine must not fail this test that way)
    guards = [
        BudgetGuard(
            source,
            Policy(refuse_below=1.0),
            estimate=0.25,
            store=f"{redis_server.url}?secret={SECRET}&timeout=2",
        )
        for _ in range(4)
    ]
    threads = [
        threading.Thread(target=g.check, kwargs={"credential": KEY})
        for g in guards
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert source.calls == 1
    for g in guards:
        g.close()


def test_a_lease_taken_after_another_refresh_does_not_fetch_again(
    redis_server: RedisServer,
) -> None:
    """A worker that read the stale snapshot, then took the lease only after
    another worker had refreshed and let it go, reads the fresh one (it used
    to fetch a second time)."""
    source = Source()
    a, b = guard(redis_server, source, 2.0), guard(redis_server, source, 2.0)
    entered, refreshed = threading.Event(), threading.Event()
    try_lock = b.ledger.store.try_lock  # type: ignore[attr-defined]

    def late_try_lock(*args: Any) -> bool:
        entered.set()
        refreshed.wait(10)  # b has read the stale snapshot; a refreshes meanwhile
        return try_lock(*args)

    b.ledger.store.try_lock = late_try_lock  # type: ignore[attr-defined]
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.append(b.check(credential=KEY)))
    worker.start()
    assert entered.wait(10)  # (b is at its lease, past its read)
    assert a.check(credential=KEY).balance.remaining == 10  # type: ignore[union-attr]
    refreshed.set()
    worker.join()
    assert seen[0].balance.remaining == 10
    assert source.calls == 1
    a.close()
    b.close()


async def test_async_checks_share_too(redis_server: RedisServer) -> None:
    source = Source()
    a, b = guard(redis_server, source), guard(redis_server, source)
    r = await a.areserve("m", credential=KEY)
    assert (await b.acheck("m", credential=KEY, estimate=0)).balance.remaining == 10  # type: ignore[union-attr]
    assert b.ledger.reserved(KEY) == 0.25
    r.release()  # (on an event loop's thread: sent by a task, awaited by aclose)
    await a.aclose()
    assert b.ledger.reserved(KEY) == 0
    await b.aclose()


def test_redis_killed_mid_run_falls_back_to_local_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    source = Source()
    g = guard(redis_server, source)
    g.reserve("m", credential=KEY).settle(3.0)
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="creditguard"):
        for _ in range(5):
            # no exception: the local books take over (a fixed estimate: m's learned 3.0
            # would hold the headroom down to the floor)
            r = g.reserve("m", credential=KEY, estimate=0.01)
            assert r.decision.action == "allow"
            r.settle(1.0)
    # the outage was not read as "nothing spent": the local mirror kept the 3.0
    d = g.check(credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == pytest.approx(2.0)
    assert sum("shared store unavailable" in r.getMessage() for r in caplog.records) == 1
    redis_server.start()  # back, empty
    time.sleep(1.1)  # past the back-off
    g.reserve("m", credential=KEY).settle(0.5)
    other = guard(redis_server, source)
    assert other.ledger.reserved(KEY) == 0
    d = other.check(credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 10 - 0.5  # shared again
    g.close()
    other.close()


@pytest.mark.parametrize("rule", ["refuse", "allow"])
def test_store_error_refuse_and_allow(redis_server: RedisServer, rule: str) -> None:
    g = guard(redis_server, Source(), policy=Policy(refuse_below=1.0, store_error=rule))  # type: ignore[arg-type]
    redis_server.kill()
    d = g.check("m", credential=KEY)
    assert d.action == rule and f"store_error={rule}" in d.reason
    g.close()


def test_a_shared_store_needs_a_fingerprint_secret(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDITGUARD_FINGERPRINT_SECRET", raising=False)
    with pytest.raises(ConfigError, match="fingerprint secret") as info:
        BudgetGuard(Source(), store=f"redis://:hunter2@127.0.0.1:{redis_server.port}/0")
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("CREDITGUARD_FINGERPRINT_SECRET", SECRET)
    BudgetGuard(Source(), store=redis_server.url).close()


def test_four_processes_share_one_budget(redis_server: RedisServer, tmp_path: Path) -> None:
    """4 worker processes x 50 calls against the loopback fake provider: the
    provider charges no more than B - F + one estimate, and the credits
    endpoint is asked once in all (ttl 60 s)."""
    with FakeProvider() as fake:
        fake.prices["m"] = 0.25
        fake.add_key(KEY, credits=100.0, limit=20.0)
        store = f"{redis_server.url}?secret={SECRET}"
        worker = Path(__file__).with_name("shared_worker.py")
        procs = [
            subprocess.Popen(
                [sys.executable, str(worker), fake.openrouter_base_url, store, KEY, "50"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
        charged = fake.key(KEY).usage
        allowed = sum(int(out.split("allowed=")[1].split()[0]) for out, _ in outputs)
        print(f"4 processes x 50 calls: {allowed} allowed, provider charged {charged:.2f}")
        assert charged <= 20.0 - 1.0 + 0.25 + 1e-9
        assert allowed == 76  # (20 - 1) / 0.25: the floor held across processes
        assert fake.count("key") == 1
        assert KEY not in "".join(out + err for out, err in outputs)


# -- issue 14: budgets the guard keeps itself, leases, degraded mode, async, round trips --------

WORKER = Path(__file__).with_name("store_worker.py")


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def test_fixed_budget_is_one_budget_for_processes_and_restarts(redis_server: RedisServer) -> None:
    """FixedBudget(1.0/day), 3 processes at once and one started after them:
    together they spend the limit, never more than one estimate past it."""
    store = f"{redis_server.url}?secret={SECRET}"
    first = [spawn("fixed", store, "12", "0.05") for _ in range(3)]
    allowed = [int(finish(p).split("allowed=")[1]) for p in first]
    later = finish(spawn("fixed", store, "12", "0.05"))  # a restart: no fresh budget
    allowed.append(int(later.split("allowed=")[1]))
    spent = sum(allowed) * 0.05
    print(f"FixedBudget(1.0): allowed per process {allowed}, spent {spent:.2f}")
    assert spent <= 1.0 + 0.05 + 1e-9
    assert sum(allowed) == 20  # the whole budget, and no more
    assert allowed[3] < 12  # the restarted process found the budget drawn down


def test_fixed_budget_per_credential_in_the_store(redis_server: RedisServer) -> None:
    from creditguard.sources import FixedBudget

    def make() -> BudgetGuard:
        return BudgetGuard(
            FixedBudget(1.0, period="1h", per_credential=True),
            Policy(refuse_below=0.0),
            estimate=0.25,
            store=f"{redis_server.url}?secret={SECRET}",
        )

    a, b = make(), make()
    for _ in range(3):
        a.reserve("m", credential="key-a").settle(0.25)
    b.reserve("m", credential="key-b").settle(0.25)
    a.invalidate("key-a")
    b.invalidate("key-a")
    # the other process, its own count empty, sees the spend of each credential
    assert b.check("m", credential="key-a", estimate=0).balance.remaining == 0.25  # type: ignore[union-attr]
    assert b.check("m", credential="key-b", estimate=0).balance.remaining == 0.75  # type: ignore[union-attr]
    assert b.reserve("m", credential="key-a").decision.action == "allow"  # the last 0.25
    assert a.reserve("m", credential="key-a").decision.action == "refuse"
    a.close()
    b.close()


def test_a_crashed_refresher_stalls_the_next_first_check_less_than_3s(
    redis_server: RedisServer,
) -> None:
    store = f"{redis_server.url}?secret={SECRET}"
    proc = spawn("slow-refresh", store, KEY)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "fetching"  # it holds the lease now
        raw = redis_lib().Redis.from_url(redis_server.url)
        (lock,) = raw.keys("*:lock")
        assert 0 < raw.pttl(lock) <= 3000  # a short lease, not refresh_timeout
        raw.close()
        proc.kill()  # SIGKILL mid-fetch
        proc.wait(10)
        g = guard(redis_server, Source())
        start = time.monotonic()
        d = g.check("m", credential=KEY)
        took = time.monotonic() - start
        print(f"first check after a SIGKILLed refresher: {took:.2f} s")
        assert d.balance is not None and d.balance.remaining == 10.0
        assert took < 3.0
        g.close()
    finally:
        proc.kill()
        proc.communicate()


def test_the_lease_is_renewed_while_a_slow_fetch_runs(redis_server: RedisServer) -> None:
    """A fetch slower than the lease (3 s) keeps it: nobody fetches twice."""
    release = threading.Event()

    class Slow(Source):
        def fetch(self, credential: str | None) -> Balance:
            with self.lock:
                self.calls += 1
            release.wait(30)
            return Balance(self.remaining, total=100.0, source="test")

    source, waiting = Slow(), Source()
    a, b = guard(redis_server, source), guard(redis_server, waiting)
    thread = threading.Thread(target=a.check, args=("m",), kwargs={"credential": KEY})
    thread.start()
    raw = redis_lib().Redis.from_url(redis_server.url)
    time.sleep(3.3)  # past one lease: still held, renewed by the refresher
    (lock,) = raw.keys("*:lock")
    assert raw.pttl(lock) > 0
    checked: list[Any] = []
    other = threading.Thread(target=lambda: checked.append(b.check("m", credential=KEY)))
    other.start()
    time.sleep(0.2)
    release.set()  # the slow fetch ends: b gets its figure instead of fetching
    thread.join()
    other.join()
    assert source.calls == 1 and waiting.calls == 0
    assert checked[0].balance is not None and checked[0].balance.remaining == 10.0
    assert raw.keys("*:lock") == []  # freed
    raw.close()
    a.close()
    b.close()


def redis_lib() -> Any:
    import redis

    return redis


async def test_a_paused_redis_never_stalls_the_event_loop_for_a_store_timeout(
    redis_server: RedisServer,
) -> None:
    """20 tasks calling all along; Redis SIGSTOPped for 3 s in the middle. A
    store call made blocking on the loop would stall it for the store's
    timeout (0.2 s) at least, again and again; the bound is under that, with
    room for a loaded machine's scheduling (a 50 ms bound failed at 54 ms)."""
    import asyncio

    g = guard(redis_server, Source(1000.0), estimate=0.01)
    await g.acheck("m", credential=KEY)  # a fresh snapshot
    stalls: list[float] = []
    paused = asyncio.Event()
    done = asyncio.Event()

    async def ticker() -> None:
        await paused.wait()
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            stalls.append(now - last - 0.005)
            last = now

    async def caller() -> int:
        calls = 0
        while not done.is_set():
            r = await g.areserve("m", credential=KEY)
            r.settle(0.01)
            calls += 1
            await asyncio.sleep(0.01)
        return calls

    tick = asyncio.create_task(ticker())
    callers = [asyncio.create_task(caller()) for _ in range(20)]
    await asyncio.sleep(0.5)  # calling, Redis up
    redis_server.pause()
    paused.set()
    try:
        await asyncio.sleep(3.0)
    finally:
        redis_server.resume()
    await asyncio.sleep(0.3)
    done.set()
    calls = await asyncio.gather(*callers)
    await tick
    worst = max(stalls)
    print(f"Redis paused 3 s, 20 tasks, {sum(calls)} calls: worst loop stall {worst * 1000:.1f} ms")
    try:
        assert worst < 0.15
        assert sum(calls) > 20 * 100  # the tasks went on (on the local books)
        # Redis answers again: every call's cost reaches it exactly once, and the
        # holds whose scripts timed out (run by Redis after it resumed) are released
        await asyncio.sleep(1.1)  # past the back-off
        await g.acheck("m", credential=KEY)
    finally:  # (its connections closed here, not collected in a later test)
        await g.aclose()
    raw = redis_lib().Redis.from_url(redis_server.url)
    (snap,) = raw.keys("*:snap")
    assert int(raw.hget(snap, "debits")) == sum(calls) * 10_000  # 0.01 each, in micro-units
    raw.close()
    other = guard(redis_server, Source(1000.0))
    assert other.ledger.reserved(KEY) == 0
    other.close()


def test_local_mode_splits_the_headroom_between_processes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """3 processes, Redis killed: each spends only its share of the headroom."""
    store = f"{redis_server.url}?secret={SECRET}&timeout=0.2"
    go = tmp_path / "go"
    procs = [spawn("local", store, KEY, str(go)) for _ in range(3)]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr
    redis_server.kill()
    go.touch()
    outs = [finish(p) for p in procs]
    spent_down = sum(float(out.split("spent=")[1].split()[0]) for out in outs)
    assert all("workers=3" in out for out in outs), outs
    spent = 3 * 2 * 0.25 + spent_down  # before the kill, then alone
    print(f"store_error=local, 3 processes, Redis killed: spent {spent:.2f} of 10 - floor 1")
    assert spent <= 10.0 - 1.0 + 3 * 0.25
    assert spent_down >= 7.5 - 3 * 0.25  # each went on with its share


def test_spend_while_the_store_was_down_is_written_back_once(
    redis_server: RedisServer,
) -> None:
    a, b = guard(redis_server, Source()), guard(redis_server, Source())
    a.reserve("m", credential=KEY).settle(1.0)
    redis_server.pause()
    try:
        for _ in range(4):
            r = a.reserve("m", credential=KEY)
            assert r.decision.action == "allow"
            r.settle(0.5)
    finally:
        redis_server.resume()
    time.sleep(1.1)  # past the back-off
    a.check("m", credential=KEY)  # answers again: the 2.0 goes back, once
    for _ in range(3):
        d = b.check("m", credential=KEY, estimate=0)
        assert d.balance is not None and d.balance.remaining == pytest.approx(10 - 1 - 2)
        a.check("m", credential=KEY)
    assert b.ledger.reserved(KEY) == 0  # the hold that timed out was released
    a.close()
    b.close()


def test_flushall_loses_nothing_of_a_fixed_budget_beyond_one_refresh(
    redis_server: RedisServer,
) -> None:
    from creditguard.sources import FixedBudget

    def make() -> BudgetGuard:
        return BudgetGuard(
            FixedBudget(10.0, period="day"),
            Policy(refuse_below=0.0),
            estimate=0.5,
            store=f"{redis_server.url}?secret={SECRET}",
        )

    a = make()
    for _ in range(4):
        a.reserve("m").settle(0.25)
    in_flight = [a.reserve("m") for _ in range(10)]
    raw = redis_lib().Redis.from_url(redis_server.url)
    raw.flushall()
    raw.close()
    for r in in_flight:
        r.settle(0.3)  # their holds vanished: each cost is still charged, once
    b = make()
    d = b.check("m", estimate=0)  # rebuilt by the next refresh
    assert d.balance is not None and d.balance.remaining == pytest.approx(10 - 1 - 3)
    a.invalidate()
    d = a.check("m", estimate=0)
    assert d.balance is not None and d.balance.remaining == pytest.approx(10 - 1 - 3)
    a.close()
    b.close()


def test_redis_restarted_empty_is_rebuilt_by_the_next_refresh(redis_server: RedisServer) -> None:
    source = Source(10.0)
    g = guard(redis_server, source)
    g.reserve("m", credential=KEY).settle(1.0)
    held = g.reserve("m", credential=KEY)
    redis_server.restart()  # empty
    held.settle(0.5)  # charged though its hold is gone
    d = g.check("m", credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 10.0  # the provider's figure
    assert source.calls == 2
    g.close()


def round_trips(raw: Any) -> int:
    """Commands clients sent: EVALSHA/EVAL calls, plus every command that no
    script runs (INFO commandstats counts a script's own commands too)."""
    import re
    from importlib.resources import files

    inside: set[str] = set()
    for entry in (files("creditguard.stores") / "lua").iterdir():
        inside.update(m.lower() for m in re.findall(r"redis\.call\('(\w+)'", entry.read_text()))
    stats = raw.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_").split("|")[0] not in inside | {"info"}
    )


def test_two_round_trips_per_guarded_call(redis_server: RedisServer) -> None:
    raw = redis_lib().Redis.from_url(redis_server.url)
    g = guard(redis_server, Source(1e6), estimate=0.001)
    g.check("m", credential=KEY)

    def commands() -> int:
        return round_trips(raw)

    before = commands()
    for _ in range(200):
        g.reserve("m", credential=KEY).settle(0.001)
    sent = commands() - before
    assert sent <= 2 * 200 + 2  # (+ a heartbeat a second)
    before = commands()
    for _ in range(100):
        g.check("m", credential=KEY)
    assert commands() - before <= 100 + 2
    raw.close()
    g.close()


async def test_two_round_trips_per_async_guarded_call(redis_server: RedisServer) -> None:
    raw = redis_lib().Redis.from_url(redis_server.url)
    g = guard(redis_server, Source(1e6), estimate=0.001)
    for _ in range(20):  # (warm: the pool's connections are open, each said HELLO once)
        (await g.areserve("m", credential=KEY)).settle(0.001)
    before = round_trips(raw)
    for _ in range(100):
        (await g.areserve("m", credential=KEY)).settle(0.001)
    await g.aclose()
    sent = round_trips(raw) - before
    assert sent <= 2 * 100 + 2
    assert raw.hget(next(iter(raw.keys("*:snap"))), "debits") == b"120000"  # all settled
    raw.close()


def test_a_redis_answering_garbage_follows_store_error(caplog: pytest.LogCaptureFixture) -> None:
    """A server that answers nonsense: StoreError, store_error applies, no secret shown."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    while conn.recv(4096):
                        conn.sendall(b"%\x00garbage\r\n:notanumber\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"redis://:hunter2@127.0.0.1:{port}/0?secret={SECRET}&timeout=0.2"
    try:
        with caplog.at_level(logging.DEBUG, logger="creditguard"):
            refuse = BudgetGuard(Source(), Policy(store_error="refuse"), store=url)
            d = refuse.check("m", credential=KEY)
            assert d.action == "refuse" and "store_error=refuse" in d.reason
            local = BudgetGuard(Source(), Policy(store_error="local"), store=url)
            d = local.check("m", credential=KEY)
            assert d.action == "allow" and d.balance is not None  # the source, on its own
        text = caplog.text + repr(refuse) + repr(local.ledger.store)
        for secret in ("hunter2", SECRET, KEY):
            assert secret not in text
        refuse.close()
        local.close()
    finally:
        stop.set()
        thread.join()
        server.close()


# -- Redis Cluster ----------------------------------------------------------------------------


def test_two_hundred_credentials_across_a_real_cluster(redis_cluster: Any) -> None:
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    g = BudgetGuard(
        Source(10.0),
        Policy(refuse_below=1.0),
        estimate=0.25,
        store=f"{redis_cluster.url}?prefix=c200&secret={SECRET}&timeout=0.5",
    )
    keys = [f"sk-cluster-{i:04d}" for i in range(200)]
    for key in keys:
        r = g.reserve("m", credential=key)
        assert r.decision.action == "allow"
        r.settle(0.5)
    for key in keys[:20]:
        d = g.check("m", credential=key, estimate=0)
        assert d.balance is not None and d.balance.remaining == 9.5
    # every credential's keys in one slot, the credentials spread over every master
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", redis_cluster.nodes[0].port)])
    per_node = []
    for node in redis_cluster.nodes:
        raw = redis.Redis(port=node.port)
        found = [k.decode() for k in raw.scan_iter("c200:*", count=1000)]
        per_node.append(len(found))
        for name in found:
            assert not any(key in name for key in keys)  # fingerprints, never keys
        raw.close()
    assert all(n > 0 for n in per_node), per_node
    snaps = [k for k in client.scan_iter("c200:*:snap", count=1000)]
    assert len(snaps) == 200
    for snap in snaps[:50]:
        tag = snap.decode().split("{")[1].split("}")[0]
        slots = {client.keyslot(k) for k in client.scan_iter(f"c200:{{{tag}}}:*")}
        assert len(slots) == 1
    client.close()
    g.close()


async def test_async_calls_on_a_real_cluster(redis_cluster: Any) -> None:
    g = BudgetGuard(
        Source(10.0),
        Policy(refuse_below=1.0),
        estimate=0.25,
        store=f"{redis_cluster.url}?prefix=casync&secret={SECRET}&timeout=0.5",
    )
    for i in range(20):
        r = await g.areserve("m", credential=f"sk-async-{i}")
        assert r.decision.action == "allow"
        r.settle(1.0)
    await g.aclose()
    other = BudgetGuard(
        Source(10.0),
        Policy(refuse_below=1.0),
        store=f"{redis_cluster.url}?prefix=casync&secret={SECRET}&timeout=0.5",
    )
    for i in range(20):
        d = other.check("m", credential=f"sk-async-{i}", estimate=0)
        assert d.balance is not None and d.balance.remaining == 9.0
    other.close()


def test_a_fixed_budget_inside_tightest_costs_no_round_trip_of_its_own(
    redis_server: RedisServer,
) -> None:
    from creditguard.sources import FixedBudget, Tightest

    raw = redis_lib().Redis.from_url(redis_server.url)
    for per_credential in (False, True):
        raw.flushall()
        budget = FixedBudget(1e3, period="day", per_credential=per_credential)
        source = Tightest(Source(1e6), budget)
        g = guard(redis_server, source, estimate=0.001)
        g.check("m", credential=KEY)
        before = round_trips(raw)
        for _ in range(100):
            g.reserve("m", credential=KEY).settle(0.01)
        assert round_trips(raw) - before <= 2 * 100 + 2  # (+ a heartbeat a second)
        assert budget._counter.spent(KEY) == pytest.approx(1.0)  # counted all the same
        g.close()
    raw.close()


def test_a_fixed_budget_inside_tightest_is_rebuilt_after_a_flush(
    redis_server: RedisServer,
) -> None:
    from creditguard.sources import FixedBudget, Tightest

    def make() -> BudgetGuard:
        source = Tightest(Source(100.0), FixedBudget(1.0, period="day"))
        return BudgetGuard(
            source,
            Policy(refuse_below=0.0),
            ttl=0.2,
            estimate=0.25,
            store=f"{redis_server.url}?secret={SECRET}",
        )

    raw = redis_lib().Redis.from_url(redis_server.url)
    a = make()
    for _ in range(3):
        a.reserve("m", credential=KEY).settle(0.25)
    raw.flushall()  # the budget's count is gone with everything else
    time.sleep(0.3)  # stale: the next check fetches every source again
    d = a.check("m", credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 0.25  # not a fresh 1.0
    time.sleep(0.3)
    b = make()  # another process: sees what a put back
    d = b.check("m", credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 0.25
    a.reserve("m", credential=KEY).settle(0.25)
    time.sleep(0.3)
    assert b.reserve("m", credential=KEY).decision.action == "refuse"
    a.close()
    b.close()
    raw.close()


def test_cluster_urls_are_checked_and_never_show_the_password() -> None:
    from creditguard.stores import RedisStore

    store = RedisStore.from_url("redis+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001/?prefix=x")
    assert "s3cret" not in repr(store) and "7001" in repr(store)
    store.close()
    for bad in (
        "redis+cluster://127.0.0.1:notaport/",
        "redis+cluster://127.0.0.1:7000/3",
        "redis+cluster://127.0.0.1:7000/?db=2",
    ):
        with pytest.raises(ConfigError):
            RedisStore.from_url(bad)


def test_a_cluster_that_is_down_is_a_store_error(caplog: pytest.LogCaptureFixture) -> None:
    from redis_server import free_port

    url = f"redis+cluster://:pw123@127.0.0.1:{free_port()}/?secret={SECRET}&timeout=0.2"
    g = BudgetGuard(Source(), Policy(store_error="refuse"), store=url)
    with caplog.at_level(logging.WARNING, logger="creditguard"):
        d = g.check("m", credential=KEY)
    assert d.action == "refuse" and "store_error=refuse" in d.reason
    assert "pw123" not in caplog.text and "shared store unavailable" in caplog.text
    g.close()


def test_a_fixed_budget_inside_tightest_is_counted_in_the_store(
    redis_server: RedisServer,
) -> None:
    from creditguard.sources import FixedBudget, Tightest

    def make() -> BudgetGuard:
        source = Tightest(Source(100.0), FixedBudget(1.0, period="day", per_credential=True))
        return BudgetGuard(
            source,
            Policy(refuse_below=0.0),
            ttl=0.2,
            estimate=0.25,
            store=f"{redis_server.url}?secret={SECRET}",
        )

    a = make()
    for _ in range(3):
        a.reserve("m", credential=KEY).settle(0.25)
    time.sleep(0.3)  # stale: the next check fetches every source again
    b = make()  # another process, or a restart: the same budget
    d = b.check("m", credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 0.25
    assert d.balance.source == "fixed"  # the budget binds, not the provider's 100
    b.reserve("m", credential=KEY).settle(0.25)  # the last 0.25
    time.sleep(0.3)
    assert a.reserve("m", credential=KEY).decision.action == "refuse"
    d = b.check("m", credential="sk-another-key", estimate=0)  # per credential
    assert d.balance is not None and d.balance.remaining == 1.0
    a.close()
    b.close()


def test_holds_whose_admit_or_release_reply_was_lost_are_released(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A script that ran in Redis but whose reply never came back (a timeout)
    # may have taken a hold (admit) or left one in place (release). Either is
    # released once the store answers again: before this process reads what
    # is held, at close, or at its next admit; not left to count against
    # every process until it expires.
    from creditguard.stores import StoreError

    source = Source()
    a, b = guard(redis_server, source), guard(redis_server, source)
    a.check(credential=KEY)  # the shared snapshot is fresh: admits take the fused path
    store: Any = a.ledger.store  # type: ignore[attr-defined]

    def lose_the_reply(real: Any) -> Any:
        def op(*args: Any) -> Any:
            real(*args)
            raise StoreError("timeout reading the reply (simulated)")

        return op

    with monkeypatch.context() as patch:
        patch.setattr(store, "admit", lose_the_reply(store.admit))
        r = a.reserve("m", credential=KEY)
    assert r.decision.allowed  # judged locally meanwhile
    assert b.ledger.reserved(KEY) == 0.25  # the orphan, seen by another process
    time.sleep(1.05)  # the store is left alone for a second after a failure
    a.ledger.reserved(KEY)
    assert b.ledger.reserved(KEY) == 0.0
    r.release()

    held = a.reserve("m", credential=KEY)
    assert b.ledger.reserved(KEY) == 0.25

    def never_arrives(*args: Any) -> Any:
        raise StoreError("timeout writing the command (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(store, "release", never_arrives)
        held.release()
    assert b.ledger.reserved(KEY) == 0.25  # still held in Redis
    time.sleep(1.05)
    a.close()  # a release that may not have happened is made again
    assert b.ledger.reserved(KEY) == 0.0
    b.close()


def test_max_rate_binds_on_the_shared_fast_path(redis_server: RedisServer) -> None:
    # (the fused read+hold path of a shared store judged on the balance alone:
    # max_rate and warn_runway never bound there, and decisions had no runway)
    from creditguard import CreditsExhausted

    class Clock:
        now = time.monotonic()

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    g = guard(
        redis_server,
        Source(1000.0),
        policy=Policy(max_rate="6/hour"),
        estimate=0.1,
        timer=clock,
        metrics=False,
    )
    g.check()  # a fresh shared snapshot: calls take the fused path

    @g
    def ask(model: str = "m") -> dict[str, Any]:
        return {"usage": {"cost": 0.1}}

    calls = 0
    with pytest.raises(CreditsExhausted) as info:
        for _ in range(200):
            ask()
            calls += 1
            clock.now += 0.5
    assert "max_rate" in info.value.decision.reason
    assert 14 <= calls <= 16  # 6/hour over 15 minutes: 1.5 credits of 0.1 calls
    g.close()


# -- per-route state: ByHost routes with policies of their own ---------------------------------


def routes(a: Policy, b: Policy, source_a: Any = None) -> Any:
    from creditguard.sources import ByHost

    return ByHost(
        {"a.example": source_a or Source(), "b.example": Source()},
        policies={"a.example": a, "b.example": b},
    )


def test_each_route_takes_its_share_above_its_own_floor_when_the_store_is_down(
    redis_server: RedisServer,
) -> None:
    # (the share was cut above the floor of whichever route an admit had seen
    # last: b's share above a's floor of 8 was 9 of 10, not 5, so two processes
    # could spend 18 of b's 10)
    source = routes(Policy(refuse_below=8.0), Policy(refuse_below=0.0))
    a, b = source.credential("a.example", KEY), source.credential("b.example", KEY)
    g, other = guard(redis_server, source), guard(redis_server, source)
    other.check(credential=b, estimate=0)  # a second worker, alive
    g.check(credential=b, estimate=0)
    g.check(credential=a, estimate=0)
    assert g.ledger.workers == 2  # type: ignore[attr-defined]
    redis_server.kill()
    d = g.check(credential=a, estimate=0)  # 8 + (10 - 8) / 2
    assert d.balance is not None and d.balance.remaining == pytest.approx(9.0)
    d = g.check(credential=b, estimate=0)  # 0 + 10 / 2
    assert d.balance is not None and d.balance.remaining == pytest.approx(5.0)
    assert g.reserve("m", credential=b, estimate=5.0).decision.action == "allow"
    assert g.reserve("m", credential=b, estimate=0.5).decision.action == "refuse"
    d = g.check(credential=a, estimate=0)  # (b's calls took nothing of a's share)
    assert d.balance is not None and d.balance.remaining == pytest.approx(9.0)
    g.close()
    other.close()


def test_a_share_cut_before_any_admit_is_cut_again_above_the_routes_floor(
    redis_server: RedisServer,
) -> None:
    # A lookup alone (no admit: the floor is the admit's to say) cuts the share
    # with no floor; the admit that follows cuts it again from the same shared
    # state, and local spend recorded on the share meanwhile stays.
    source = routes(Policy(refuse_below=4.0), Policy())
    a = source.credential("a.example", KEY)
    g, other = guard(redis_server, source), guard(redis_server, source)
    other.check(credential=a, estimate=0)
    g.ledger.get(a)  # seen, never admitted here
    redis_server.kill()
    g.ledger.reserved(a)  # finds the store down
    lookup = g.ledger.get(a)  # the share, floor unknown: 10 / 2
    assert lookup.balance is not None and lookup.balance.remaining == pytest.approx(5.0)
    g.ledger.record(a, 0.5)  # spent on the share meanwhile
    d = g.check(credential=a, estimate=0)  # 4 + (10 - 4) / 2 - 0.5
    assert d.balance is not None and d.balance.remaining == pytest.approx(6.5)
    g.close()
    other.close()


def test_a_refresh_inside_an_admit_holds_above_the_routes_own_floor(
    redis_server: RedisServer,
) -> None:
    # (when an admit found no fresh snapshot and refreshed it, it held against
    # the floor of the route an admit had seen last, here b's, taken while a's
    # balance was fetched: a's call was refused "by calls in flight elsewhere")
    from creditguard import CreditSourceError

    class Flaky(Source):
        """Fails once; the next fetch judges a call on route b meanwhile."""

        def __init__(self) -> None:
            super().__init__(10.0)
            self.fails = 1
            self.meanwhile: Any = None

        def fetch(self, credential: str | None) -> Balance:
            if self.fails:
                self.fails -= 1
                raise CreditSourceError("down a moment", source="test")
            if self.meanwhile is not None:
                self.meanwhile()
            return super().fetch(credential)

    flaky = Flaky()
    source = routes(Policy(refuse_below=1.0), Policy(refuse_below=8.0), flaky)
    a, b = source.credential("a.example", KEY), source.credential("b.example", KEY)
    g = guard(redis_server, source, policy=Policy(error_ttl=0))
    flaky.meanwhile = lambda: g.check(credential=b, estimate=0)
    r = g.reserve("m", credential=a, estimate=3.0)  # 10 - 3 >= a's floor of 1
    assert r.decision.action == "allow", r.decision.reason
    assert g.ledger.reserved(a) == 3.0
    r.release()
    g.close()


@pytest.mark.parametrize("default", ["local", "refuse", "allow"])
def test_each_route_follows_its_own_store_error(redis_server: RedisServer, default: str) -> None:
    # (the ledger followed the guard's store_error for every route: a route
    # with "refuse" went on from the local books and allowed, and a route with
    # "local" under a guard with "refuse" was allowed with no accounting at all)
    from creditguard.sources import ByHost

    source = ByHost(
        {host: Source() for host in ("a.example", "b.example", "c.example")},
        policies={
            "a.example": Policy(refuse_below=1.0, store_error="refuse"),
            "b.example": Policy(refuse_below=1.0, store_error="local"),
            "c.example": Policy(refuse_below=1.0, store_error="allow"),
        },
    )
    a, b, c = (source.credential(f"{x}.example", KEY) for x in "abc")
    g = guard(redis_server, source, policy=Policy(store_error=default))  # type: ignore[arg-type]
    for credential in (a, b, c):
        g.check(credential=credential)
    redis_server.kill()
    d = g.check("m", credential=a)
    assert d.action == "refuse" and "store_error=refuse" in d.reason
    d = g.check("m", credential=b)  # judged on this process's share of the last state
    assert d.action == "allow" and "store" not in d.reason
    assert d.balance is not None and d.balance.remaining == pytest.approx(10.0)
    d = g.check("m", credential=c)
    assert d.action == "allow" and "store_error=allow" in d.reason
    g.close()


def on(request: pytest.FixtureRequest, where: str, prefix: str) -> str:
    """The store URL of a test run on one Redis or on a real cluster."""
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    return f"{server.url}?prefix={prefix}&secret={SECRET}&timeout=0.5"


@pytest.mark.parametrize("where", ["redis", "cluster"])
def test_a_fixed_budget_route_is_one_budget_for_processes_and_restarts(
    request: pytest.FixtureRequest, where: str
) -> None:
    # (a FixedBudget routed by ByHost counted spend in each process: the next
    # refresh put the refresher's own count in the store, and a restart
    # handed out the whole budget again)
    from creditguard.sources import ByHost, FixedBudget

    def make() -> tuple[Any, BudgetGuard]:
        source = ByHost(
            {
                "a.example": FixedBudget(10.0, period=None),
                "b.example": FixedBudget(5.0, period="day", per_credential=True),
                "c.example": Source(),
            }
        )
        return source, BudgetGuard(source, Policy(), store=url, ttl=0.2, estimate=0.0)

    url = on(request, where, "route")

    (source, g1), (_, g2) = make(), make()
    a, c = source.credential("a.example", KEY), source.credential("c.example", KEY)
    b1, b2 = source.credential("b.example", KEY), source.credential("b.example", KEY + "2")
    g1.reserve("m", credential=a, estimate=1.0).settle(6.0)
    g1.record(1.5, credential=b1)
    g2.record(2.0, credential=c)  # another route: not this budget's spend
    time.sleep(0.25)  # past the ttl: g2 refreshes
    for g in (g2, g1):
        d = g.check(credential=a)
        assert d.balance is not None and d.balance.remaining == pytest.approx(4.0)
        d = g.check(credential=b1)
        assert d.balance is not None and d.balance.remaining == pytest.approx(3.5)
        d = g.check(credential=b2)  # per key
        assert d.balance is not None and d.balance.remaining == pytest.approx(5.0)
    g1.close()
    g2.close()
    _, g3 = make()  # restarted
    d = g3.check(credential=a)
    assert d.balance is not None and d.balance.remaining == pytest.approx(4.0)
    d = g3.check(credential=b1)
    assert d.balance is not None and d.balance.remaining == pytest.approx(3.5)
    g3.close()


@pytest.mark.parametrize("where", ["redis", "cluster"])
@pytest.mark.parametrize("per_credential", [False, True])
def test_two_budgets_of_one_period_in_a_tightest_count_apart(
    request: pytest.FixtureRequest, where: str, per_credential: bool
) -> None:
    # (both counted in one hash of the store, each spend was counted twice
    # in each: 4 spent left 2 of 10 and 12 of 20)
    from creditguard.sources import FixedBudget, Tightest

    def make() -> tuple[BudgetGuard, FixedBudget, FixedBudget]:
        low = FixedBudget(10.0, period="day", per_credential=per_credential)
        high = FixedBudget(20.0, period="day", per_credential=per_credential)
        other = FixedBudget(30.0, period="week", per_credential=per_credential)
        g = BudgetGuard(
            Tightest(Source(100.0), low, high, other),
            Policy(refuse_below=0.0),
            estimate=1.0,
            store=url,
        )
        return g, low, high

    url = on(request, where, f"apart{int(per_credential)}")  # (one cluster per module)

    a, low, high = make()
    a.reserve("m", credential=KEY).settle(4.0)
    assert low.fetch(KEY).remaining == 6.0
    assert high.fetch(KEY).remaining == 16.0
    a.close()
    b, low, high = make()  # another process: the same two counts
    assert (low.fetch(KEY).remaining, high.fetch(KEY).remaining) == (6.0, 16.0)
    d = b.check("m", credential=KEY, estimate=0)
    assert d.balance is not None and d.balance.remaining == 6.0
    b.close()


@pytest.mark.parametrize("where", ["redis", "cluster"])
def test_a_fixed_budget_inside_a_routes_tightest_is_counted_in_the_store(
    request: pytest.FixtureRequest, where: str
) -> None:
    # (a FixedBudget inside Tightest inside a ByHost route was counted in each
    # process, and a restart handed it out afresh)
    from creditguard.sources import ByHost, FixedBudget, Tightest

    def make() -> tuple[Any, BudgetGuard]:
        source = ByHost(
            {
                "a.example": Tightest(Source(100.0), FixedBudget(10.0, period=None)),
                "b.example": Tightest(
                    Source(100.0), FixedBudget(5.0, period=None, per_credential=True)
                ),
                "c.example": Tightest(Source(100.0), FixedBudget(7.0, period=None)),
            }
        )
        return source, BudgetGuard(source, Policy(), store=url, ttl=0.2, estimate=0.0)

    url = on(request, where, "tight")

    (source, g1), (_, g2) = make(), make()
    a1, a2 = source.credential("a.example", KEY), source.credential("a.example", KEY + "2")
    b1, b2 = source.credential("b.example", KEY), source.credential("b.example", KEY + "2")
    c = source.credential("c.example", KEY)
    g1.reserve("m", credential=a1, estimate=1.0).settle(6.0)
    g2.record(1.5, credential=b1)
    g2.record(2.0, credential=c)  # another route's budget
    time.sleep(0.25)  # past the ttl

    def remaining(g: BudgetGuard, credential: str) -> float:
        d = g.check(credential=credential)
        assert d.balance is not None
        return d.balance.remaining

    for g in (g2, g1):
        assert remaining(g, a1) == pytest.approx(4.0)
        assert remaining(g, a2) == pytest.approx(4.0)  # one budget for the host
        assert remaining(g, b1) == pytest.approx(3.5)
        assert remaining(g, b2) == pytest.approx(5.0)  # per key
        assert remaining(g, c) == pytest.approx(5.0)
    g1.close()
    g2.close()
    _, g3 = make()  # restarted
    assert remaining(g3, a1) == pytest.approx(4.0)
    assert remaining(g3, b1) == pytest.approx(3.5)
    g3.close()


# -- one balance, one key: sources.ByHost over the store --------------------------


def _remaining(guard: BudgetGuard, credential: str | None) -> float:
    balance = guard.check(credential=credential, estimate=0).balance
    assert balance is not None
    return balance.remaining


def test_a_star_route_budget_is_one_budget_however_a_call_names_it(
    redis_server: RedisServer,
) -> None:
    """A '*' FixedBudget route: a call naming its host through the transport, a
    plain key (check, reserve, the decorator) and no credential at all draw on
    one count in the store (each had a count of its own: 14 spent of 10)."""
    from creditguard.sources import ByHost, FixedBudget

    source = ByHost({"*": FixedBudget(10.0, period=None)})
    url = f"{redis_server.url}?secret=s&timeout=0.5"
    g = BudgetGuard(source, Policy(refuse_below=0), store=url, estimate=0.0)
    named = source.credential("*", "sk-or-v1-STAR0000000000000000000001")
    g.reserve("m", credential=named, estimate=1.0).settle(6.0)
    assert _remaining(g, "sk-or-v1-STAR0000000000000000000001") == pytest.approx(4.0)
    assert _remaining(g, "sk-or-v1-STAR0000000000000000000002") == pytest.approx(4.0)
    g.reserve("m", estimate=1.0).settle(4.0)  # names nothing: the '*' route too
    assert _remaining(g, named) == pytest.approx(0.0)
    assert _remaining(g, None) == pytest.approx(0.0)
    g.close()


def test_one_budget_object_for_two_hosts_is_one_cap(redis_server: RedisServer) -> None:
    from creditguard.sources import ByHost, FixedBudget

    budget = FixedBudget(10.0, period=None)
    source = ByHost({"api.openai.com": budget, "api.anthropic.com": budget})
    url = f"{redis_server.url}?secret=s&timeout=0.5"
    g = BudgetGuard(source, Policy(refuse_below=0), store=url, estimate=0.0)
    a, b = source.credential("api.openai.com"), source.credential("api.anthropic.com")
    g.reserve("m", credential=a, estimate=1.0).settle(8.0)
    g.reserve("m", credential=b, estimate=1.0).settle(8.0)
    assert _remaining(g, a) == pytest.approx(-6.0)
    assert _remaining(g, b) == pytest.approx(-6.0)
    g.close()


def test_a_cost_past_max_cost_reaching_the_shared_ledger_is_held_at_the_cap(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # (1e300 in micro-units overflowed the store's counter: the script failed,
    # the process went to its local share and the spend was dropped)
    from creditguard.sources import FixedBudget

    def make() -> BudgetGuard:
        return BudgetGuard(
            FixedBudget(1e10, unit="credits"),
            Policy(),
            store=f"{redis_server.url}?secret={SECRET}",
        )

    a = make()
    a.ledger.record(None, 1e300)
    r = a.reserve("m", estimate=1.0)
    a.ledger.settle(r._hold, 1e300)  # type: ignore[arg-type]
    b = make()  # another process sees both, at the cap
    assert b.check("m").available == pytest.approx(1e10 - 2e9)
    assert "shared store unavailable" not in caplog.text
    assert "not believable" in caplog.text
    a.close()
    b.close()


def test_a_local_budget_in_tightest_binds_over_redis_while_another_source_is_down(
    redis_server: RedisServer,
) -> None:
    # (the provider's error left no balance: every process failed open past the
    # FixedBudget counted in the store)
    from creditguard.sources import FixedBudget, Tightest

    class Down:
        name = "provider"
        per_credential = False

        def fetch(self, credential: str | None) -> Balance:
            raise cg.CreditSourceError("HTTP 503 from the provider", status_code=503)

        async def afetch(self, credential: str | None) -> Balance:
            return self.fetch(credential)

    def make() -> BudgetGuard:
        return BudgetGuard(
            Tightest(Down(), FixedBudget(1.0)),
            Policy(refuse_below=0.0),
            estimate=0.3,
            store=f"{redis_server.url}?secret={SECRET}",
        )

    a, b = make(), make()
    actions = []
    for i in range(5):
        r = (a, b)[i % 2].reserve("m")
        actions.append(r.decision.action)
        r.settle(0.3) if r.decision.action == "allow" else r.release()
    assert actions == ["allow", "allow", "allow", "refuse", "refuse"]
    a.close()
    b.close()


# (a settle a finalizer deferred, made when the process exits: test_user_faults.py,
# test_a_response_dropped_before_the_process_exits_is_charged_in_the_store)
