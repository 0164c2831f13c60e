"""RedisStore against a real redis-server on loopback (see redis_server.py)."""

from __future__ import annotations

import math
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from redis_server import (  # noqa: F401  (redis_server_fixture: the redis_server fixture)
    REQUIRE_ENV,
    RedisServer,
    free_port,
    redis_server_fixture,
    start_server,
)

from creditguard import Balance
from creditguard._fingerprint import Fingerprinter
from creditguard.errors import ConfigError, CreditGuardError
from creditguard.stores import RedisStore, SharedState, Store, StoreError

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - the redis extra is not installed
    if os.environ.get(REQUIRE_ENV) == "1":
        raise
    pytest.skip(
        "redis-py is not installed: pip install 'creditguard[redis]'", allow_module_level=True
    )

RAW_KEY = "sk-or-v1-SECRETSECRETSECRETSECRETSECRET"
FP = Fingerprinter("shared secret")(RAW_KEY)
NOW = 1_700_000_000.0
# The timeout of the stores in tests that are not about timeouts. The default (0.25 s) is
# what an app wants, but a loaded 2-core machine can make one reply that slow, and the
# test then fails on a StoreError it was not about. Tests about timeouts set their own.
PATIENT = 5.0


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStore]:
    s = RedisStore(redis_server.url, timeout=PATIENT)
    yield s
    s.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client, to look at what the store wrote."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def put(store: RedisStore, remaining: float, key: str = FP, **kw: Any) -> None:
    store.put(key, Balance(remaining=remaining, **kw), NOW, 0.0, keep_for=60)


def headroom(state: SharedState) -> float:
    assert state.balance is not None
    remaining = 0.0 if state.exhausted else state.balance.remaining
    return remaining - state.debits - state.held


# -- packaging and import ---------------------------------------------------------


def test_import_without_redis_and_the_extra_named() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import creditguard.stores as s\n"
        "try:\n"
        "    s.RedisStore()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'creditguard[redis]'" in out.stdout


def test_lua_scripts_are_package_data() -> None:
    lua = files("creditguard.stores") / "lua"
    names = {entry.name for entry in lua.iterdir()}
    for name in ("read", "admit", "put", "budget", "set_remaining", "settle", "release", "lock"):
        assert f"{name}.lua" in names
    assert {"exhaust.lua", "unlock.lua", "_holds.lua"} <= names


def test_scripts_take_every_key_through_KEYS() -> None:
    lua = files("creditguard.stores") / "lua"
    for entry in lua.iterdir():
        text = entry.read_text(encoding="utf-8")
        assert not re.search(r"['\"][^'\"]*:(snap|holds|exp|late|lock)['\"]", text), entry.name
        for call in re.findall(r"redis\.call\('(\w+)', (\w+)", text):
            # (holds, late, spend, done, before: a local or a shared function's parameter)
            assert call[1] in ("KEYS", "holds", "late", "spend", "done", "before", "snap"), (
                entry.name,
                call,
            )
        for local in re.findall(r"^local (?:\w+, )*(holds|late|spend|done|snap)\b.*$", text, re.M):
            assert re.search(rf"^local [^=]*\b{local}\b[^=]*= [^\n]*KEYS\[", text, re.M), (
                entry.name,
                local,
            )


def test_shared_lua_functions_get_their_keys_from_KEYS() -> None:
    """A script calls the shared functions of its prelude with keys from KEYS."""
    lua = files("creditguard.stores") / "lua"
    texts = {entry.name: entry.read_text(encoding="utf-8") for entry in lua.iterdir()}
    shared = {
        name: (file, params.split(", "))
        for file, text in texts.items()
        if file.startswith("_")
        for name, params in re.findall(r"^local function (\w+)\(([^)]*)\)", text, re.M)
    }
    assert {"holds_state", "end_hold", "window_spend"} <= set(shared)
    used = set()
    for file, text in texts.items():
        if file.startswith("_"):
            continue
        code = re.sub(r"--[^\n]*", "", text)
        for call in re.finditer(r"\b(\w+)\(", code):
            name = call[1]
            if name not in shared:
                continue
            used.add(name)
            args, depth = [""], 0
            for char in code[call.end() :]:
                if char == ")" and depth == 0:
                    break
                depth += (char == "(") - (char == ")")
                if char == "," and depth == 0:
                    args.append("")
                else:
                    args[-1] += char
            params = shared[name][1]
            for param, arg in zip(params, [a.strip() for a in args], strict=True):
                if param in ("holds", "late", "spend", "done", "before"):
                    assert arg.startswith("KEYS[") or arg in ("holds", "nil"), (file, name, arg)
    assert used == set(shared)  # (each shared function is used)


def test_a_store_is_a_store(store: RedisStore) -> None:
    assert isinstance(store, Store)


def test_store_error_is_a_creditguard_error_and_pickles() -> None:
    exc = StoreError("redis://127.0.0.1:1/0: read: ConnectionError")
    assert isinstance(exc, CreditGuardError)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is StoreError and again.reason == exc.reason


# -- snapshots ----------------------------------------------------------------------


def test_read_without_anything(store: RedisStore) -> None:
    assert store.read(FP, NOW) == SharedState(None, 0.0, 0.0, False, 0.0)


def test_put_and_read_round_trip(store: RedisStore, raw: redis.Redis) -> None:
    balance = Balance(12.5, total=20.0, used=7.5, unit="credits", fetched_at=NOW, source="or")
    store.put(FP, balance, NOW, 0.0, keep_for=30)
    state = store.read(FP, NOW + 1)
    assert state == SharedState(balance, NOW, 0.0, False, 0.0)
    assert 29_000 < raw.pttl(f"cg:{{{FP}}}:snap") <= 30_000


def test_put_without_total_and_used(store: RedisStore) -> None:
    put(store, 3.0)
    state = store.read(FP, NOW)
    assert state.balance is not None
    assert state.balance.total is None and state.balance.used is None


def test_unlimited_and_negative_remaining(store: RedisStore, raw: redis.Redis) -> None:
    put(store, math.inf)
    state = store.read(FP, NOW)
    assert state.balance is not None and state.balance.unlimited
    assert raw.hget(f"cg:{{{FP}}}:snap", "unlimited") == b"1"
    put(store, -2.75)
    state = store.read(FP, NOW)
    assert state.balance is not None and state.balance.remaining == -2.75


def test_put_carries_spend_recorded_while_the_fetch_ran(store: RedisStore) -> None:
    put(store, 10.0)
    store.debit(FP, 3.0)
    base = store.read(FP, NOW).debits  # the fetch starts here
    store.debit(FP, 2.0)  # recorded meanwhile: not in the fetched figure
    store.exhaust(FP)
    store.put(FP, Balance(7.0), NOW + 5, base, keep_for=60)
    state = store.read(FP, NOW + 5)
    assert state.debits == 2.0
    assert not state.exhausted
    assert state.fetched_at == NOW + 5


def test_put_never_leaves_negative_debits(store: RedisStore) -> None:
    store.debit(FP, 1.0)
    store.put(FP, Balance(7.0), NOW, 5.0, keep_for=60)
    assert store.read(FP, NOW).debits == 0.0


def test_put_leaves_holds_alone(store: RedisStore) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 4.0, 0.0, NOW, NOW + 60)
    put(store, 9.0)
    assert store.read(FP, NOW).held == 4.0
    assert store.settle(FP, "h", 1.0)


def test_snapshot_expires_after_keep_for(store: RedisStore, raw: redis.Redis) -> None:
    # keep_for 1 s, not 0.15: the read just after the put must come before the expiry,
    # and a loaded machine can take 0.15 s between two calls; read again at 2x keep_for
    # (as before: 0.3 s for 0.15), and the expiry Redis was given is checked exactly
    store.put(FP, Balance(5.0), NOW, 0.0, keep_for=1.0)
    assert 0 < raw.pttl(f"cg:{{{FP}}}:snap") <= 1000
    assert store.read(FP, NOW).balance is not None
    time.sleep(2.0)
    assert store.read(FP, NOW).balance is None


def test_set_remaining_keeps_total_unit_and_source(store: RedisStore) -> None:
    put(store, 10.0, total=20.0, used=10.0, unit="credits", source="stablecog")
    store.debit(FP, 1.0)
    store.exhaust(FP)
    store.set_remaining(FP, 4.0, NOW + 3, keep_for=60)
    state = store.read(FP, NOW + 3)
    assert state == SharedState(
        Balance(4.0, total=20.0, used=16.0, unit="credits", fetched_at=NOW + 3, source="stablecog"),
        NOW + 3,
        0.0,
        False,
        0.0,
    )


def test_set_remaining_without_a_snapshot(store: RedisStore, raw: redis.Redis) -> None:
    store.debit(FP, 1.0)
    store.set_remaining(FP, 8.0, NOW, keep_for=10)
    state = store.read(FP, NOW)
    assert state == SharedState(Balance(8.0, unit="credits", fetched_at=NOW), NOW, 0.0, False, 0.0)
    assert 0 < raw.pttl(f"cg:{{{FP}}}:snap") <= 10_000


def test_set_remaining_unlimited(store: RedisStore) -> None:
    put(store, 10.0, total=20.0, used=10.0)
    store.set_remaining(FP, math.inf, NOW, keep_for=10)
    state = store.read(FP, NOW)
    assert state.balance is not None and state.balance.unlimited and state.balance.used == 0.0


def test_debit_without_a_snapshot_is_kept_and_expires(store: RedisStore, raw: redis.Redis) -> None:
    store.debit(FP, 0.5)
    state = store.read(FP, NOW)
    assert state.balance is None and state.debits == 0.5
    assert raw.pttl(f"cg:{{{FP}}}:snap") > 0  # nothing lives forever


def test_debit_keeps_the_snapshot_expiry(store: RedisStore, raw: redis.Redis) -> None:
    store.put(FP, Balance(5.0), NOW, 0.0, keep_for=30)
    store.debit(FP, 1.0)
    assert 29_000 < raw.pttl(f"cg:{{{FP}}}:snap") <= 30_000


def test_exhaust_without_a_snapshot_creates_an_empty_one(store: RedisStore) -> None:
    before = time.time()
    store.exhaust(FP)
    state = store.read(FP, NOW)
    assert state.exhausted
    assert state.balance is not None and state.balance.remaining == 0.0
    assert state.balance.source == "provider refusal"
    assert before <= state.fetched_at <= time.time()


def test_exhaust_keeps_the_snapshot(store: RedisStore) -> None:
    put(store, 10.0, total=12.0)
    store.debit(FP, 1.0)
    store.exhaust(FP)
    state = store.read(FP, NOW)
    assert state.exhausted and state.debits == 1.0
    assert state.balance is not None and state.balance.remaining == 10.0


# -- micro-units --------------------------------------------------------------------


def test_micro_units_are_exact(store: RedisStore, raw: redis.Redis) -> None:
    put(store, 0.3)
    assert store.reserve(FP, "a", 0.1, None, NOW, NOW + 60)
    assert store.reserve(FP, "b", 0.2, None, NOW, NOW + 60)
    assert store.settle(FP, "a", 0.1)
    assert store.settle(FP, "b", 0.2)
    assert raw.hget(f"cg:{{{FP}}}:snap", "debits") == b"300000"
    assert store.read(FP, NOW).debits == 0.3  # 0.1 + 0.2 == 0.30000000000000004 in floats
    # and the floor check sees exactly nothing left, not a hair below zero
    assert store.reserve(FP, "c", 0.0, 0.0, NOW, NOW + 60)
    assert not store.reserve(FP, "d", 0.000001, 0.0, NOW, NOW + 60)


def test_many_small_debits_add_up_exactly(store: RedisStore) -> None:
    for _ in range(1000):
        store.debit(FP, 0.001)
    assert store.read(FP, NOW).debits == 1.0


# -- reservations ------------------------------------------------------------------------


def test_reserve_refuses_below_the_floor(store: RedisStore) -> None:
    put(store, 10.0)
    store.debit(FP, 1.0)
    assert store.reserve(FP, "a", 4.0, 2.0, NOW, NOW + 60)  # 10 - 1 - 4 = 5
    assert store.reserve(FP, "b", 3.0, 2.0, NOW, NOW + 60)  # 5 - 3 = 2: at the floor
    assert not store.reserve(FP, "c", 0.5, 2.0, NOW, NOW + 60)  # 1.5 < 2
    state = store.read(FP, NOW)
    assert state.held == 7.0 and headroom(state) == 2.0
    assert store.reserve(FP, "d", 0.5, None, NOW, NOW + 60)  # no floor: no check


def test_reserve_without_a_snapshot_or_unlimited_always_holds(store: RedisStore) -> None:
    assert store.reserve(FP, "a", 1e6, 0.0, NOW, NOW + 60)
    put(store, math.inf)
    assert store.reserve(FP, "b", 1e6, 0.0, NOW, NOW + 60)
    assert store.read(FP, NOW).held == 2e6


def test_reserve_when_exhausted_counts_nothing_left(store: RedisStore) -> None:
    put(store, 10.0)
    store.exhaust(FP)
    assert not store.reserve(FP, "a", 0.1, 0.0, NOW, NOW + 60)
    assert store.reserve(FP, "b", 0.1, -1.0, NOW, NOW + 60)
    put(store, math.inf)
    store.exhaust(FP)  # an exhausted unlimited key has nothing left either
    assert not store.reserve(FP, "c", 0.1, 0.0, NOW, NOW + 60)


def test_reserve_with_a_negative_remaining(store: RedisStore) -> None:
    put(store, -5.0)
    assert not store.reserve(FP, "a", 1.0, 0.0, NOW, NOW + 60)
    assert store.reserve(FP, "b", 1.0, -10.0, NOW, NOW + 60)  # -6 >= -10
    assert not store.reserve(FP, "c", 5.0, -10.0, NOW, NOW + 60)  # -11 < -10


def test_settle_applies_once(store: RedisStore) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 2.0, 0.0, NOW, NOW + 60)
    assert store.settle(FP, "h", 1.25)
    assert not store.settle(FP, "h", 1.25)  # a retried settle: HDEL removed nothing
    assert not store.release(FP, "h")
    state = store.read(FP, NOW)
    assert state.debits == 1.25 and state.held == 0.0


def test_release_drops_the_hold_without_a_charge(store: RedisStore) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 2.0, 0.0, NOW, NOW + 60)
    assert store.release(FP, "h")
    assert not store.release(FP, "h")
    assert not store.settle(FP, "h", 2.0)
    assert store.read(FP, NOW) == SharedState(Balance(10.0), NOW, 0.0, False, 0.0)


def test_a_settle_whose_hold_vanished_still_charges_once(
    store: RedisStore, raw: redis.Redis
) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 2.0, 0.0, NOW, NOW + 60)
    raw.flushall()  # the hold is gone with everything else
    assert store.settle(FP, "h", 1.5) == 2  # not found, charged all the same
    assert store.settle(FP, "h", 1.5) == 0  # once
    assert store.read(FP, NOW).debits == 1.5
    assert not store.release(FP, "nope")


def test_debit_with_an_id_applies_once(store: RedisStore) -> None:
    put(store, 10.0)
    store.debit(FP, 1.0, "write-back-1")
    store.debit(FP, 1.0, "write-back-1")  # written back again after a timeout
    store.debit(FP, 0.5)
    store.debit(FP, 0.5)  # (no id: two debits)
    assert store.read(FP, NOW).debits == 2.0


def test_settle_with_zero_cost(store: RedisStore) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 2.0, 0.0, NOW, NOW + 60)
    assert store.settle(FP, "h", 0.0)
    assert store.read(FP, NOW).debits == 0.0


def test_bad_amounts_are_refused_before_redis(store: RedisStore) -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            store.debit(FP, bad)
        with pytest.raises(ValueError):
            store.settle(FP, "h", bad)
        with pytest.raises(ValueError):
            store.reserve(FP, "h", bad, None, NOW, NOW + 1)
    with pytest.raises(ValueError):
        store.read("{bad}", NOW)
    for reserved in ("", "=", "<", "^", "~"):  # (the holds hash's own fields)
        with pytest.raises(ValueError):
            store.reserve(FP, reserved, 1.0, None, NOW, NOW + 1)
        with pytest.raises(ValueError):
            store.settle(FP, reserved, 1.0)


# -- expiry of holds ----------------------------------------------------------------------


def test_expired_holds_stop_counting(store: RedisStore, raw: redis.Redis) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "old", 6.0, 0.0, NOW, NOW + 10)
    assert not store.reserve(FP, "x", 6.0, 0.0, NOW + 9, NOW + 20)
    assert store.read(FP, NOW + 9.999).held == 6.0
    assert store.read(FP, NOW + 10).held == 0.0  # purged at its expiry
    assert not raw.hexists(f"cg:{{{FP}}}:holds", "old")
    assert store.reserve(FP, "new", 6.0, 0.0, NOW + 10, NOW + 20)


def test_reserve_purges_expired_holds_itself(store: RedisStore) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "old", 6.0, 0.0, NOW, NOW + 10)
    assert store.reserve(FP, "new", 6.0, 0.0, NOW + 11, NOW + 20)  # no read in between


def test_holds_stop_counting_each_at_its_expiry(store: RedisStore, raw: redis.Redis) -> None:
    put(store, 100.0)
    for name, expiry, amount in (("a", 10, 1.0), ("b", 20, 2.0), ("c", 30, 4.0), ("d", 40, 8.0)):
        assert store.reserve(FP, name, amount, 0.0, NOW, NOW + expiry)
    assert store.settle(FP, "a", 0.5) == 1  # the first to expire is gone: no expiry at 10
    assert store.read(FP, NOW + 5).held == 14.0
    assert store.read(FP, NOW + 15).held == 14.0
    assert store.read(FP, NOW + 20).held == 12.0  # b at its expiry
    assert store.release(FP, "d")
    assert store.read(FP, NOW + 29.999).held == 4.0
    status, state = store.admit(FP, "e", 1.0, 0.0, NOW + 30, NOW + 50)  # c at its expiry
    assert (status, state.held) == (1, 0.0)
    assert store.read(FP, NOW + 49).held == 1.0
    assert store.read(FP, NOW + 50).held == 0.0
    late = {m.decode() for m in raw.zrange(f"cg:{{{FP}}}:late", 0, -1)}
    assert late == {"b", "c", "e"}
    assert store.settle(FP, "c", 3.0) == 1  # a late settle still charges, once
    assert store.settle(FP, "c", 3.0) == 0
    assert store.read(FP, NOW + 50).debits == 3.5


def test_holds_expire_in_real_time(store: RedisStore) -> None:
    put(store, 10.0)
    now = time.time()
    # 1 s, not 0.2: the read just after the reserve must come before the expiry on a loaded
    # machine too; read again once it passed (by 0.2 s more, as before)
    assert store.reserve(FP, "h", 6.0, 0.0, now, now + 1.0)
    assert store.read(FP, time.time()).held == 6.0
    time.sleep(max(0.0, now + 1.2 - time.time()))
    assert store.read(FP, time.time()).held == 0.0


def test_a_late_settle_still_charges_once(store: RedisStore) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 6.0, 0.0, NOW, NOW + 10)
    assert store.read(FP, NOW + 11).held == 0.0  # expired: no longer held
    assert store.settle(FP, "h", 2.5)  # the call did finish: its cost is owed
    assert not store.settle(FP, "h", 2.5)
    assert store.read(FP, NOW + 11).debits == 2.5
    assert store.reserve(FP, "g", 1.0, 0.0, NOW, NOW + 10)
    store.read(FP, NOW + 11)
    assert store.release(FP, "g")
    assert not store.release(FP, "g")


def test_hold_keys_expire_by_themselves(store: RedisStore, raw: redis.Redis) -> None:
    now = time.time()
    assert store.reserve(FP, "h", 1.0, None, now, now + 60)
    ttl = raw.pttl(f"cg:{{{FP}}}:holds")
    assert ttl > 60_000  # outlives its hold (a late settle still finds it)
    assert ttl <= (60 + 86_400 + 2) * 1000  # but not forever
    store.read(FP, now + 61)
    assert 0 < raw.pttl(f"cg:{{{FP}}}:late") <= (86_400 + 2) * 1000


# -- atomicity -------------------------------------------------------------------------------


def run_threads(count: int, work: Callable[[int], None]) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_concurrent_reserves_never_go_below_the_floor(store: RedisStore) -> None:
    put(store, 10.0)
    won: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for j in range(5):
            if store.reserve(FP, f"{i}-{j}", 1.0, 2.0, NOW, NOW + 60):
                with lock:
                    won.append(f"{i}-{j}")

    run_threads(20, work)
    state = store.read(FP, NOW)
    assert len(won) == 8
    assert state.held == 8.0 and headroom(state) == 2.0


def test_concurrent_reserve_and_settle_keep_the_floor(redis_server: RedisServer) -> None:
    stores = [RedisStore(redis_server.url, timeout=PATIENT) for _ in range(4)]  # 4 pools
    put(stores[0], 10.0)
    won = [0] * 20

    def work(i: int) -> None:
        s = stores[i % 4]
        for j in range(10):
            hold = f"{i}-{j}"
            if s.reserve(FP, hold, 1.0, 2.0, NOW, NOW + 60):
                won[i] += 1
                assert headroom(s.read(FP, NOW)) >= 2.0
                assert s.settle(FP, hold, 1.0)
                assert not s.settle(FP, hold, 1.0)

    run_threads(20, work)
    state = stores[0].read(FP, NOW)
    assert sum(won) == 8
    assert state.debits == 8.0 and state.held == 0.0
    for s in stores:
        s.close()


# -- the refresh lock ---------------------------------------------------------------------------


def test_lock_is_taken_once_and_freed_by_its_token(store: RedisStore) -> None:
    assert store.try_lock(FP, "one", 10)
    assert not store.try_lock(FP, "two", 10)
    store.unlock(FP, "two")  # not the holder: nothing happens
    assert not store.try_lock(FP, "two", 10)
    store.unlock(FP, "one")
    assert store.try_lock(FP, "two", 10)


def test_lock_expires(store: RedisStore) -> None:
    assert store.try_lock(FP, "one", 0.1)
    time.sleep(0.2)
    assert store.try_lock(FP, "two", 10)
    store.unlock(FP, "one")  # the expired holder cannot free the new one's lock
    assert not store.try_lock(FP, "three", 10)


# -- keys ----------------------------------------------------------------------------------------


def everything(raw: redis.Redis) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in raw.scan_iter():
        kind = raw.type(key)
        name = key.decode()
        if kind == b"hash":
            out[name] = raw.hgetall(key)
        elif kind == b"zset":
            out[name] = raw.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[name] = raw.smembers(key)
        else:
            out[name] = raw.get(key)
    return out


def test_keys_carry_the_prefix_and_never_the_raw_key(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    store = RedisStore(redis_server.url, prefix="app1", timeout=PATIENT)
    key = Fingerprinter("shared secret")(RAW_KEY)
    store.put(key, Balance(5.0, source="or"), NOW, 0.0, keep_for=60)
    assert store.reserve(key, "h1", 1.0, 0.0, NOW, NOW + 10)
    assert store.reserve(key, "h2", 1.0, 0.0, NOW, NOW + 20)
    store.read(key, NOW + 15)  # h1 expires into :late
    store.debit(key, 0.5)
    assert store.try_lock(key, "token", 10)
    data = everything(raw)
    done = {name for name in data if re.fullmatch(rf"app1:{{{key}}}:done:\d+", name)}
    assert len(done) == 1  # the ids settled lately
    assert set(data) - done == {
        f"app1:{{{key}}}:{name}" for name in ("snap", "holds", "late", "lock")
    }
    assert RAW_KEY not in repr(data)
    for name in data:
        assert raw.pttl(name) > 0, name
    raw.close()
    store.close()


def test_prefixes_are_isolated(redis_server: RedisServer) -> None:
    a = RedisStore(redis_server.url, prefix="a", timeout=PATIENT)
    b = RedisStore(redis_server.url, prefix="b", timeout=PATIENT)
    put(a, 10.0)
    a.debit(FP, 1.0)
    assert a.reserve(FP, "h", 2.0, 0.0, NOW, NOW + 60)
    assert a.try_lock(FP, "t", 10)
    assert b.read(FP, NOW) == SharedState(None, 0.0, 0.0, False, 0.0)
    assert b.settle(FP, "h", 1.0) == 2  # b never saw the hold: charged in b alone
    assert b.try_lock(FP, "t", 10)
    assert a.read(FP, NOW).held == 2.0
    assert a.read(FP, NOW).debits == 1.0 and b.read(FP, NOW).debits == 1.0
    a.close()
    b.close()


def test_credentials_are_isolated(store: RedisStore) -> None:
    other = Fingerprinter("shared secret")("sk-other")
    put(store, 10.0)
    assert store.reserve(FP, "h", 2.0, 0.0, NOW, NOW + 60)
    assert store.read(other, NOW) == SharedState(None, 0.0, 0.0, False, 0.0)


# -- URLs and construction ---------------------------------------------------------------------


def test_from_url_reads_prefix_and_timeout_and_drops_secret(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0?prefix=tenant7&timeout=0.5&secret=xyz&db=3"
    store = RedisStore.from_url(url)
    assert store.prefix == "tenant7" and store.timeout == 0.5
    store.debit(FP, 1.0)
    raw = redis.Redis(port=redis_server.port, db=3)  # db=3 reached redis-py
    names = sorted(k.decode().removeprefix(f"tenant7:{{{FP}}}:") for k in raw.scan_iter())
    assert len(names) == 2 and names[0].startswith("done:") and names[1] == "snap"
    assert "xyz" not in repr(store)
    raw.close()
    store.close()


def test_from_url_defaults() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:6379/0")
    assert store.prefix == "cg" and store.timeout == 0.25
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?timeout=nope",
        "redis://127.0.0.1:6379/0?timeout=0",
        "redis://127.0.0.1:6379/0?timeout=inf",
        "redis://127.0.0.1:6379/0?prefix=a{b}",
        "redis://127.0.0.1:6379/0?prefix=",
    ],
)
def test_bad_settings_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        RedisStore.from_url(url)


def test_init_wants_prefix_and_timeout_as_arguments() -> None:
    with pytest.raises(ConfigError, match="from_url"):
        RedisStore("redis://127.0.0.1:6379/0?prefix=x")


def test_a_bad_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisStore("redis://:hunter2pw@127.0.0.1:notaport/0")
    assert "hunter2pw" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["redis://:pa/ss99word@127.0.0.1:1/0", "redis://:pa?ss99word@127.0.0.1:1/0"]
)
def test_a_password_holding_a_slash_or_question_mark_is_never_shown(url: str) -> None:
    """Unencoded, a / or ? ends the URL's netloc early: the rest of the
    password reads as a path or query; it is masked whole all the same."""
    try:
        store = RedisStore(url, timeout=0.2)
    except ConfigError as exc:  # (redis-py may refuse such a URL: then its error)
        assert "ss99word" not in str(exc)
        return
    assert "ss99word" not in repr(store)
    with pytest.raises(StoreError) as info:
        store.read(FP, NOW)
    assert "ss99word" not in str(info.value)
    store.close()


def test_an_at_sign_in_a_query_value_is_no_password() -> None:
    store = RedisStore("redis://127.0.0.1:6379/0?client_name=me@example", timeout=0.2)
    assert "redis://127.0.0.1:6379/0" in repr(store) and "redacted" not in repr(store)
    store.close()


def test_repr_has_no_password() -> None:
    store = RedisStore("redis://user:hunter2pw@127.0.0.1:6379/0")
    assert "hunter2pw" not in repr(store) and "user" not in repr(store)
    store.close()


# -- failures --------------------------------------------------------------------------------------


def every_op(store: RedisStore) -> list[Callable[[], object]]:
    return [
        lambda: store.read(FP, NOW),
        lambda: store.put(FP, Balance(1.0), NOW, 0.0, 60),
        lambda: store.set_remaining(FP, 1.0, NOW, 60),
        lambda: store.reserve(FP, "h", 1.0, 0.0, NOW, NOW + 60),
        lambda: store.settle(FP, "h", 1.0),
        lambda: store.release(FP, "h"),
        lambda: store.debit(FP, 1.0),
        lambda: store.exhaust(FP),
        lambda: store.try_lock(FP, "t", 1.0),
        lambda: store.unlock(FP, "t"),
    ]


def test_a_closed_port_raises_store_error_fast_without_the_password() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore(f"redis://admin:hunter2pw@127.0.0.1:{port}/0")
    for op in every_op(store):
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            op()
        assert time.monotonic() - started < 1.0
        text = f"{info.value} {info.value!r} {info.value.__cause__}"
        assert "hunter2pw" not in text
        assert f"127.0.0.1:{port}" in str(info.value)
    store.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    sock.close()


def test_a_hung_server_raises_store_error_within_the_timeout(silent_port: int) -> None:
    store = RedisStore(f"redis://:hunter2pw@127.0.0.1:{silent_port}/0", timeout=0.2)
    for op in every_op(store)[:3]:
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout") as info:
            op()
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 1.0, elapsed
        assert "hunter2pw" not in str(info.value)
    store.close()


def test_wrong_password_is_a_store_error_without_it(tmp_path: Path) -> None:
    server = start_server(tmp_path, password="rightpass123")
    try:
        good = RedisStore(server.url)
        good.debit(FP, 1.0)
        assert good.read(FP, NOW).debits == 1.0
        bad = RedisStore(f"redis://:wrongpass456@127.0.0.1:{server.port}/0")
        with pytest.raises(StoreError) as info:
            bad.read(FP, NOW)
        assert "wrongpass456" not in str(info.value) and "rightpass123" not in str(info.value)
        good.close()
        bad.close()
    finally:
        server.stop()


def test_an_error_reply_is_a_store_error(store: RedisStore, raw: redis.Redis) -> None:
    raw.set(f"cg:{{{FP}}}:snap", "not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.debit(FP, 1.0)
    with pytest.raises(StoreError, match="read"):
        store.read(FP, NOW)


def test_garbage_in_the_snapshot_is_a_store_error(store: RedisStore, raw: redis.Redis) -> None:
    raw.hset(f"cg:{{{FP}}}:snap", mapping={"unlimited": "0", "remaining": "x", "fetched_at": "1"})
    with pytest.raises(StoreError, match="unexpected data"):
        store.read(FP, NOW)


def test_redis_killed_and_back(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    put(store, 10.0)
    assert store.reserve(FP, "h", 1.0, 0.0, NOW, NOW + 60)
    redis_server.kill()
    for op in every_op(store):
        started = time.monotonic()
        with pytest.raises(StoreError):
            op()
        assert time.monotonic() - started < 1.0
    redis_server.start()  # same port, empty (no persistence)
    assert store.read(FP, NOW) == SharedState(None, 0.0, 0.0, False, 0.0)
    put(store, 10.0)  # the scripts are loaded again by themselves (NOSCRIPT fallback)
    assert store.reserve(FP, "h", 1.0, 0.0, NOW, NOW + 60)
    assert store.settle(FP, "h", 1.0)
    store.close()


def test_script_cache_flushed(store: RedisStore, raw: redis.Redis) -> None:
    put(store, 10.0)
    raw.script_flush()
    assert store.reserve(FP, "h", 1.0, 0.0, NOW, NOW + 60)


# -- clients ---------------------------------------------------------------------------------------


def test_closed_store_refuses(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.read(FP, NOW)
    with pytest.raises(StoreError, match="closed"):
        store.try_lock(FP, "t", 1)


def test_a_client_passed_in(redis_server: RedisServer) -> None:
    client = redis.Redis(
        port=redis_server.port,
        decode_responses=True,
        socket_timeout=0.25,
        retry=Retry(NoBackoff(), 0),
    )
    store = RedisStore(client=client, prefix="x")
    put(store, 10.0, unit="credits", source="src")
    assert store.read(FP, NOW).balance == Balance(10.0, unit="credits", source="src")
    store.close()
    assert client.ping()  # not ours to close
    client.close()


def test_a_client_that_could_hang_or_retry_is_warned_about(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, socket_timeout=None)
    with pytest.warns(UserWarning, match="socket_timeout.*retries"):
        RedisStore(client=client)
    client.close()


def test_put_keeps_when_the_limit_resets(store: RedisStore) -> None:
    put(store, 4.0, total=10.0, resets_at=NOW + 3600)
    state = store.read(FP, NOW)
    assert state.balance is not None and state.balance.resets_at == NOW + 3600
    put(store, 4.0)
    assert store.read(FP, NOW).balance.resets_at is None  # type: ignore[union-attr]


# -- settled ids -------------------------------------------------------------------------------


def test_settled_ids_are_remembered_for_half_an_hour(store: RedisStore, raw: redis.Redis) -> None:
    put(store, 10.0)
    start = time.time() // 1800 * 1800 + 1799.0  # the end of a window
    assert store.reserve(FP, "a1", 1.0, 0.0, NOW, NOW + 60)
    assert store.settle(FP, "a1", 1.0, now=start) == 1
    assert store.settle(FP, "a1", 1.0, now=start + 1) == 0  # the next window: still known
    assert store.settle(FP, "a1", 1.0, now=start + 1800) == 0  # half an hour on
    assert store.settle(FP, "a1", 1.0, now=start + 1801) == 2  # forgotten: a new debit
    assert store.read(FP, NOW).debits == 2.0
    window = int(start // 1800)
    ttl = raw.pttl(f"cg:{{{FP}}}:done:{window}")  # kept to the end of the next window
    assert 0 < ttl <= (start + 1 + 1800 - time.time()) * 1000 + 1000


def test_a_debit_alone_remembers_its_id_and_expires(store: RedisStore, raw: redis.Redis) -> None:
    store.debit(FP, 1.0, "once")
    (done,) = raw.keys(f"cg:{{{FP}}}:done:*")
    ttl = raw.pttl(done)
    assert 1_800_000 <= ttl <= 3_601_000  # as long as the id is remembered, not forever
    store.debit(FP, 1.0, "once")
    assert store.read(FP, NOW).debits == 1.0
    assert all(raw.pttl(name) > 0 for name in raw.scan_iter())


def test_released_ids_are_remembered_and_their_sets_expire(
    store: RedisStore, raw: redis.Redis
) -> None:
    """Release remembers its id in the window's set as settle does (one shared
    Lua function): a settle of it later charges nothing, and every set expires,
    whichever of the two marked the window first."""
    put(store, 10.0)
    now = time.time()
    window = int(now // 1800)
    earlier = (window - 1) * 1800 + 5.0  # a settle in the window before marks that one
    assert store.reserve(FP, "a", 1.0, 0.0, now, now + 60)
    assert store.settle(FP, "a", 1.0, now=earlier) == 1
    for hold in ("b", "c"):  # released now: this window's set, marked once
        assert store.reserve(FP, hold, 1.0, 0.0, now, now + 60)
        assert store.release(FP, hold)
        assert store.settle(FP, hold, 1.0) == 0  # released: a settle charges nothing
    assert store.reserve(FP, "late", 1.0, 0.0, NOW, NOW + 10)
    store.read(FP, NOW + 11)  # expired unsettled: in `late`
    assert store.release(FP, "late")
    assert not store.release(FP, "late")
    assert store.settle(FP, "late", 1.0) == 0
    assert store.read(FP, NOW).debits == 1.0
    done = f"cg:{{{FP}}}:done:{window}"
    assert {m.decode() for m in raw.smembers(done)} == {"b", "c", "late"}
    assert 0 < raw.pttl(done) <= ((window + 2) * 1800 - now) * 1000 + 1000
    assert raw.pttl(f"cg:{{{FP}}}:done:{window - 1}") > 0
    assert all(raw.pttl(name) > 0 for name in raw.scan_iter())


def test_hold_keys_keep_their_expiry_between_holds(store: RedisStore, raw: redis.Redis) -> None:
    put(store, 10.0)
    for i in range(5):  # settled one by one: the keys stay, with their expiry
        assert store.reserve(FP, f"h{i}", 1.0, 0.0, NOW, NOW + 60)
        assert store.settle(FP, f"h{i}", 0.5) == 1
        assert 60_000 < raw.pttl(f"cg:{{{FP}}}:holds") <= (60 + 86_400 + 2) * 1000
    assert store.read(FP, NOW).held == 0.0


# -- the store's own connections (lines) ----------------------------------------------------------


def test_a_connection_the_server_closed_is_opened_again(
    store: RedisStore, raw: redis.Redis
) -> None:
    put(store, 10.0)
    assert store.reserve(FP, "h", 1.0, 0.0, NOW, NOW + 60)
    killed = raw.client_kill_filter(_type="normal", skipme=True)  # (an idle timeout, say)
    assert killed >= 1
    time.sleep(0.05)
    assert store.settle(FP, "h", 1.0) == 1  # no error: opened again, as a pool would
    assert store.read(FP, NOW).debits == 1.0


def test_a_call_interrupted_mid_reply_never_reads_it_later(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from creditguard.stores import _redis

    put(store, 10.0)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.undo()
        raise KeyboardInterrupt  # the reply is on its way, unread

    monkeypatch.setattr(_redis, "_read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.reserve(FP, "h", 1.0, 0.0, NOW, NOW + 60)
    # the next calls read their own replies, not the one left behind (that
    # connection was closed: the hold may or may not have been taken)
    for _ in range(3):
        assert store.read(FP, NOW).held in (0.0, 1.0)
        assert store.settle(FP, "x", 1.0) in (0, 2)
    assert store.read(FP, NOW).debits == 1.0


def test_threads_beyond_the_lines_go_through_the_pool(store: RedisStore) -> None:
    put(store, 1e6)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                assert store.reserve(FP, f"t{n}-{i}", 1.0, 0.0, NOW, NOW + 60)
                assert store.settle(FP, f"t{n}-{i}", 0.25) == 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    state = store.read(FP, NOW)
    assert state.debits == 16 * 40 * 0.25 and state.held == 0.0
    assert store._lines is not None and len(store._lines.lines) <= 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_uses_the_parents_connection(store: RedisStore) -> None:
    put(store, 1e6)
    store.debit(FP, 1.0)  # the parent's line is open
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            for i in range(200):
                store.debit(FP, 0.5, f"child-{i}")
            code = 0
        finally:
            os._exit(code)
    for i in range(200):
        store.debit(FP, 0.25, f"parent-{i}")
        assert store.read(FP, NOW).debits >= 1.0
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read(FP, NOW).debits == 1.0 + 200 * 0.5 + 200 * 0.25


async def test_async_tasks_share_the_lines(redis_server: RedisServer) -> None:
    import asyncio

    store = RedisStore(redis_server.url, timeout=PATIENT)
    store.put(FP, Balance(1e6), NOW, 0.0, keep_for=60)

    async def task(n: int) -> None:
        for i in range(20):
            status, _ = await store.aadmit(FP, f"a{n}-{i}", 1.0, 0.0, NOW, NOW + 60)
            assert status == 1
            assert await store.asettle(FP, f"a{n}-{i}", 0.5) == 1

    await asyncio.gather(*(task(n) for n in range(20)))
    state = await store.aread(FP, NOW)
    assert state.debits == 20 * 20 * 0.5 and state.held == 0.0
    await store.aclose()


async def test_an_async_call_cancelled_mid_reply_never_reads_it_later(
    redis_server: RedisServer,
) -> None:
    import asyncio

    store = RedisStore(redis_server.url, timeout=2.0)
    raw = redis.Redis.from_url(redis_server.url)
    store.put(FP, Balance(10.0), NOW, 0.0, keep_for=60)
    await store.aread(FP, NOW)  # this loop's line is open
    raw.client_pause(300)  # the reply will come late
    call = asyncio.ensure_future(store.aadmit(FP, "h", 1.0, 0.0, NOW, NOW + 60))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.3)  # the paused reply arrives now, on a connection closed since
    state = await store.aread(FP, NOW)
    assert state.balance == Balance(10.0) and state.held in (0.0, 1.0)
    assert await store.asettle(FP, "x", 0.5) == 2
    assert (await store.aread(FP, NOW)).debits == 0.5
    await store.aclose()
    raw.close()


async def test_an_async_connection_the_server_closed_is_opened_again(
    redis_server: RedisServer,
) -> None:
    import asyncio

    store = RedisStore(redis_server.url, timeout=PATIENT)
    raw = redis.Redis.from_url(redis_server.url)
    store.put(FP, Balance(10.0), NOW, 0.0, keep_for=60)
    await store.aread(FP, NOW)
    assert raw.client_kill_filter(_type="normal", skipme=True) >= 1
    await asyncio.sleep(0.05)
    assert (await store.aread(FP, NOW)).balance == Balance(10.0)
    await store.aclose()
    raw.close()


def test_a_reply_longer_than_one_read(store: RedisStore) -> None:
    source = "s" * 300_000  # (the snapshot comes back whole: several reads of the socket)
    store.put(FP, Balance(10.0, source=source), NOW, 0.0, keep_for=60)
    status, state = store.admit(FP, "h", 1.0, 0.0, NOW, NOW + 60)
    assert status == 1 and state.balance is not None and state.balance.source == source
    assert store.read(FP, NOW).held == 1.0


def test_a_settle_counts_budgets_only_where_one_script_may(redis_server: RedisServer) -> None:
    from creditguard.stores import Spend

    store = RedisStore(redis_server.url, timeout=PATIENT)
    assert store.folds(FP, "*") and store.folds(FP, FP)  # one Redis: any key
    day = Spend("day", 20_000, 20_000, None)
    assert store.settle(FP, "h", 0.5, counts=[("*", day), (FP, day)]) == 2
    assert store.window("*", day) == 0.5 and store.window(FP, day) == 0.5
    assert store.settle(FP, "h", 0.5, counts=[("*", day)]) == 0  # once, with the settle
    assert store.window("*", day) == 0.5
    assert store.window("*", day, known=2.0) == 2.0  # a lost count put back
    assert store.window("*", day) == 2.0
    store.close()
    cluster = RedisStore("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/")
    assert cluster.folds(FP, FP) and not cluster.folds(FP, "*")  # another slot
    with pytest.raises(ValueError):
        cluster.settle(FP, "h", 0.5, counts=[("*", day)])
    cluster.close()


@pytest.mark.parametrize("make", [RedisStore, RedisStore.from_url])
def test_an_unknown_query_parameter_is_a_config_error_listing_the_allowed(
    make: Callable[[str], RedisStore],
) -> None:
    # redis://...?prefx=cg reached redis-py, whose TypeError came at the first command
    url = "redis://:hunter2pw@127.0.0.1:6379/0?prefx=cg&secret=abcdefabcdef"
    with pytest.raises(ConfigError) as info:
        make(url)
    text = str(info.value)
    assert info.value.key == "store" and "'prefx' (did you mean 'prefix'?)" in text
    assert "allowed: prefix, timeout, secret, db" in text and "client_name" in text
    assert "hunter2pw" not in text and "abcdefabcdef" not in text
    # the rest of an unencoded "?" in a password reads as a query: never shown
    with pytest.raises(ConfigError) as hidden:
        make("redis://:pa?ss99word=x@127.0.0.1:6379/0")
    assert "ss99word" not in str(hidden.value) and "%3F" in str(hidden.value)
    make("redis://127.0.0.1:6379/0?db=2&client_name=me").close()  # redis-py's own: taken


def test_a_unix_socket_store_url_reaches_redis(tmp_path: Path) -> None:
    # unix:///path lost its "//" on the way to redis-py, which refused every unix:// URL
    from redis_server import redis_server_binary

    sock = tmp_path / "r.sock"
    server = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        store = RedisStore.from_url(f"unix://{sock}?prefix=u&secret=xyz&db=1&timeout={PATIENT}")
        assert store.prefix == "u" and f"unix://{sock}" in repr(store)
        store.debit(FP, 1.0)
        raw = redis.Redis(unix_socket_path=str(sock), db=1)
        assert any(k.decode().startswith(f"u:{{{FP}}}:") for k in raw.scan_iter())
        raw.close()
        store.close()
    finally:
        server.terminate()
        server.wait(10)
