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
from redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)

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


def guard(redis: RedisServer, source: Any, **kw: Any) -> BudgetGuard:
    kw.setdefault("policy", Policy(refuse_below=1.0))
    kw.setdefault("estimate", 0.25)
    policy = kw.pop("policy")
    return BudgetGuard(source, policy, store=f"{redis.url}?secret={SECRET}&timeout=0.2", **kw)


def test_guards_share_one_budget(redis_server: RedisServer) -> None:
    source = Source()
    a, b = guard(redis_server, source), guard(redis_server, source)
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
    guards = [guard(redis_server, source) for _ in range(4)]
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
    guards = [guard(redis_server, source) for _ in range(4)]
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


async def test_async_checks_share_too(redis_server: RedisServer) -> None:
    source = Source()
    a, b = guard(redis_server, source), guard(redis_server, source)
    r = await a.areserve("m", credential=KEY)
    assert (await b.acheck("m", credential=KEY, estimate=0)).balance.remaining == 10  # type: ignore[union-attr]
    assert b.ledger.reserved(KEY) == 0.25
    r.release()
    assert b.ledger.reserved(KEY) == 0
    a.close()
    b.close()


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
