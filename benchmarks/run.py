"""The guard's cost, as ratios against the bare path (issues 7 and 17).

Every figure compares the guarded path with the bare one *in this process*:
bare and guarded batches alternate (bare first in even rounds, guarded first in
odd ones), each batch runs the same number of calls with the garbage collector
off and is timed with ``time.perf_counter_ns``. The table shows the median time
per call of each side and the median over rounds of guarded/bare (each guarded
batch against the bare batch beside it: load that drifts between rounds cancels
out); the paired interquartile range below each row says how noisy it was.
Nothing leaves the machine: HTTP goes to a MockTransport whose handler answers
a fixed chat completion, balances come from an in-process source.

    python benchmarks/run.py            # full run, ~1.5 minutes
    python benchmarks/run.py --quick    # ~15 s, coarser
    python benchmarks/run.py --profile  # and a cProfile of each FAIL
    python benchmarks/run.py --strict   # exit 1 when a goal is missed
    python benchmarks/run.py --only decorator   # rows whose name has this

Measured:

1. transport, cache hit: ``client.post`` of a 1 KB chat body (messages
   first, then model, openai-SDK headers) through ``httpx.Client(transport=
   MockTransport(handler))`` vs ``creditguard.httpx.client(guard, transport=
   MockTransport(handler))``; allow, downgrade, and a GET /models that is no
   generation call; sync and async; httpx and httpx2. The guarded path holds
   and settles each call (the response's ``usage.cost``), as in production.
2. decorator, cache hit: ``@guard`` vs a pass-through ``wrapt.decorator`` on
   the same trivial function (async: an ``async def`` pass-through wrapper).
3. cold-cache stampede: 1,000 asyncio tasks + 32 threads ask for one
   credential whose source sleeps 50 ms; the bare side is the same 1,032
   concurrent calls of the sleeping fetch itself.
4. memory: 100,000 distinct credentials through ``guard.check`` with the
   default maxsize, in a fresh child process (RSS and tracemalloc).
5. accounting: ``guard.reserve(...).settle(cost)`` vs ``guard.check(...)``.
6. metrics: the transport allow path with ``metrics=`` an OpenTelemetry SDK
   MeterProvider (read by an ``InMemoryMetricReader``) vs ``metrics=False``;
   goal <= 1.10x.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import wrapt

import creditguard.httpx as cg_httpx
from creditguard import Balance, BudgetGuard, Policy

try:
    import httpx2

    import creditguard.httpx2 as cg_httpx2
except ImportError:  # pragma: no cover - the httpx2 extra is optional
    httpx2 = None  # type: ignore[assignment]
    cg_httpx2 = None  # type: ignore[assignment]

# -- the scene -------------------------------------------------------------------

BASE_URL = "https://openrouter.ai/api/v1"
MODEL = "openai/gpt-4o"
CHEAP_MODEL = "openai/gpt-4o-mini"
KEY_ALLOW = "sk-or-v1-" + "a1" * 32
KEY_DOWNGRADE = "sk-or-v1-" + "d2" * 32
COST = 1e-7  # usage.cost of every answer: settled, debited, never changes the tier

POLICY = Policy(
    warn_below=10.0,
    downgrade_below=5.0,
    refuse_below=1.0,
    downgrade={MODEL: CHEAP_MODEL},
)
BALANCES = {
    KEY_ALLOW: Balance(remaining=1_000_000.0, total=1_000_000.0, source="bench"),
    KEY_DOWNGRADE: Balance(remaining=3.0, total=100.0, source="bench"),  # 1 <= 3 < 5
    None: Balance(remaining=1_000_000.0, source="bench"),  # the decorator's own key
}
TTL = 1e9  # every timed call is a cache hit

_SYSTEM = (
    "You are a careful assistant for a billing dashboard. Answer in short, plain "
    "sentences, cite the invoice line you rely on, and never guess amounts. "
) * 2
_TURNS = [
    ("user", "Why did my bill go up in March compared with February? " * 3),
    ("assistant", "March has two more working days and the batch jobs ran twice. " * 3),
    ("user", "Which of the batch jobs cost the most, and can I cap it next month? " * 3),
]
_MESSAGES = [{"role": "system", "content": _SYSTEM}] + [
    {"role": role, "content": text} for role, text in _TURNS
]
# messages first, then model (the order openai 1.x/2.x send; the worst case for
# finding the model), then the sampling options
CHAT_BODY = json.dumps(
    {"messages": _MESSAGES, "model": MODEL, "max_tokens": 512, "temperature": 0.2},
    separators=(",", ":"),
    ensure_ascii=False,
).encode()
assert 1024 <= len(CHAT_BODY) <= 2048, len(CHAT_BODY)

SDK_HEADERS = {
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "OpenAI/Python 3.54.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "3.54.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
}

RESULT = {
    "id": "gen-bench-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Batch job B: cap it at 40 USD."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 372, "completion_tokens": 11, "total_tokens": 383, "cost": COST},
}
REPLY_BODY = json.dumps(RESULT, separators=(",", ":")).encode()
REPLY_HEADERS = {"content-type": "application/json"}
MODELS_BODY = b'{"object":"list","data":[{"id":"openai/gpt-4o"},{"id":"openai/gpt-4o-mini"}]}'


def _handler_for(lib: Any) -> Callable[[Any], Any]:
    """One cheap handler per HTTP library, the same for the bare and the guarded
    client: a fixed answer, nothing read from the request."""
    response_cls = lib.Response

    def handler(request: Any) -> Any:
        if request.method == "GET":
            return response_cls(200, headers=REPLY_HEADERS, content=MODELS_BODY)
        return response_cls(200, headers=REPLY_HEADERS, content=REPLY_BODY)

    return handler


class StaticSource:
    """A credits source that answers a fixed Balance per credential from memory
    (after ``delay`` seconds: ``time.sleep`` in fetch, ``asyncio.sleep`` in
    afetch), and counts its fetches."""

    name = "bench"
    per_credential = True

    def __init__(self, balances: dict[str | None, Balance], delay: float = 0.0) -> None:
        self.balances = balances
        self.default = Balance(remaining=1_000_000.0, source="bench")
        self.delay = delay
        self.fetches = 0
        self._lock = threading.Lock()

    def fetch(self, credential: str | None) -> Balance:
        with self._lock:
            self.fetches += 1
        if self.delay:
            time.sleep(self.delay)
        return self.balances.get(credential, self.default)

    async def afetch(self, credential: str | None) -> Balance:
        with self._lock:
            self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.balances.get(credential, self.default)


def new_guard(**kwargs: Any) -> BudgetGuard:
    return BudgetGuard(StaticSource(dict(BALANCES)), POLICY, ttl=TTL, **kwargs)


# -- rows ----------------------------------------------------------------------

Batch = Callable[[int], Any]  # runs n calls (returns an awaitable for async rows)


@dataclass
class Pair:
    """Two batch functions to compare, and how to set them up."""

    name: str
    goal: float | None  # the guarded/bare ratio must be <= this (None: reported only)
    is_async: bool
    setup: Callable[[], tuple[Batch, Batch, Callable[[], None]]]
    # setup() -> (bare, guarded, verify); verify() raises if the guarded path
    # did not take the branch the row is about (called before and after timing)


@dataclass
class Row:
    name: str
    bare: str
    guarded: str
    ratio: str
    goal: str
    verdict: str  # PASS, FAIL or INFO
    extra: str = ""
    pair: Pair | None = None
    guarded_ns: float = 0.0  # median guarded time per call, unprofiled


def _expect(response: Any, action: str | None) -> None:
    got = response.headers.get("x-creditguard-decision")
    if got != action or response.status_code != 200:
        raise AssertionError(f"expected decision {action!r}, got {got!r} ({response.status_code})")


def transport_pair(lib_name: str, is_async: bool, kind: str) -> Pair:
    """kind: allow, downgrade or get (a non-generation GET /models)."""
    lib = httpx if lib_name == "httpx" else httpx2
    cg_lib = cg_httpx if lib_name == "httpx" else cg_httpx2
    key = KEY_DOWNGRADE if kind == "downgrade" else KEY_ALLOW
    headers = {**SDK_HEADERS, "authorization": f"Bearer {key}"}
    if is_async:
        headers["x-stainless-async"] = "async:asyncio"
    expected = {"allow": "allow", "downgrade": "downgrade", "get": None}[kind]
    label = {"allow": "allow", "downgrade": "downgrade", "get": "GET /models (no generation)"}
    name = f"transport {lib_name} {'async' if is_async else 'sync'} {label[kind]}"
    goal = 1.45 if kind == "downgrade" else 1.25  # issue 17 (issue 7's 1.05 / 1.03 retired)

    def setup() -> tuple[Batch, Batch, Callable[[], None]]:
        guard = new_guard()
        handler = _handler_for(lib)
        timeout = lib.Timeout(timeout=600.0, connect=5.0)
        opts: dict[str, Any] = {"base_url": BASE_URL, "timeout": timeout}
        if is_async:
            bare_client = lib.AsyncClient(transport=lib.MockTransport(handler), **opts)
            guarded_client = cg_lib.async_client(
                guard, transport=lib.MockTransport(handler), **opts
            )
        else:
            bare_client = lib.Client(transport=lib.MockTransport(handler), **opts)
            guarded_client = cg_lib.client(guard, transport=lib.MockTransport(handler), **opts)

        def sync_batch(client: Any) -> Batch:
            if kind == "get":

                def batch(n: int) -> None:
                    get = client.get
                    for _ in range(n):
                        get("/models", headers=headers)

            else:

                def batch(n: int) -> None:
                    post = client.post
                    for _ in range(n):
                        post("/chat/completions", content=CHAT_BODY, headers=headers)

            return batch

        def async_batch(client: Any) -> Batch:
            if kind == "get":

                async def batch(n: int) -> None:
                    get = client.get
                    for _ in range(n):
                        await get("/models", headers=headers)

            else:

                async def batch(n: int) -> None:
                    post = client.post
                    for _ in range(n):
                        await post("/chat/completions", content=CHAT_BODY, headers=headers)

            return batch

        def verify() -> None:
            # a separate client on the same guard whose handler sees the body
            seen: list[bytes] = []

            def spy(request: Any) -> Any:
                seen.append(request.read())
                return handler(request)

            with cg_lib.client(guard, transport=lib.MockTransport(spy), **opts) as c:
                if kind == "get":
                    _expect(c.get("/models", headers=headers), None)
                else:
                    r = c.post("/chat/completions", content=CHAT_BODY, headers=headers)
                    _expect(r, expected)
                    want = CHEAP_MODEL if kind == "downgrade" else MODEL
                    if json.loads(seen[-1])["model"] != want:
                        raise AssertionError(f"upstream saw {json.loads(seen[-1])['model']!r}")
            if guard.ledger.reserved(key) != 0.0:
                raise AssertionError("a hold was left open: calls are not settled")

        make = async_batch if is_async else sync_batch
        return make(bare_client), make(guarded_client), verify

    return Pair(name, goal, is_async, setup)


def _passthrough_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


async def _passthrough_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return await wrapped(*args, **kwargs)


def decorator_pair(is_async: bool) -> Pair:
    name = f"decorator {'async' if is_async else 'sync'} (@guard vs wrapt pass-through)"

    def setup() -> tuple[Batch, Batch, Callable[[], None]]:
        guard = new_guard()
        if is_async:

            async def ask(prompt: str, model: str = MODEL) -> dict[str, Any]:
                return RESULT

            bare_fn = wrapt.decorator(_passthrough_async)(ask)
            guarded_fn = guard(ask)

            def abatch(fn: Any) -> Batch:
                async def batch(n: int) -> None:
                    for _ in range(n):
                        await fn("hello", model=MODEL)

                return batch

            def verify() -> None:
                if asyncio.run(guarded_fn("hello", model=MODEL)) is not RESULT:
                    raise AssertionError("the guarded function did not run")

            return abatch(bare_fn), abatch(guarded_fn), verify

        def ask_sync(prompt: str, model: str = MODEL) -> dict[str, Any]:
            return RESULT

        bare_fn = wrapt.decorator(_passthrough_sync)(ask_sync)
        guarded_fn = guard(ask_sync)

        def batch_of(fn: Any) -> Batch:
            def batch(n: int) -> None:
                for _ in range(n):
                    fn("hello", model=MODEL)

            return batch

        def verify_sync() -> None:
            if guarded_fn("hello", model=MODEL) is not RESULT:
                raise AssertionError("the guarded function did not run")

        return batch_of(bare_fn), batch_of(guarded_fn), verify_sync

    return Pair(name, 7.0, is_async, setup)  # issue 17 (issue 7's 2.0 retired)


def accounting_pair() -> Pair:
    def setup() -> tuple[Batch, Batch, Callable[[], None]]:
        guard = new_guard()

        def allow_only(n: int) -> None:
            check = guard.check
            for _ in range(n):
                check(MODEL, credential=KEY_ALLOW)

        def reserve_settle(n: int) -> None:
            reserve = guard.reserve
            for _ in range(n):
                reserve(MODEL, credential=KEY_ALLOW).settle(COST)

        def verify() -> None:
            if guard.check(MODEL, credential=KEY_ALLOW).action != "allow":
                raise AssertionError("not an allow")
            if guard.ledger.reserved(KEY_ALLOW) != 0.0:
                raise AssertionError("a hold was left open")

        return allow_only, reserve_settle, verify

    return Pair("accounting: reserve+settle vs check (allow-only)", None, False, setup)


def metrics_pair() -> Pair:
    """The allow path with metrics on (the OpenTelemetry SDK reading them with an
    in-memory reader) against the same path with them off: the transport on
    httpx2 (openai 3.x's stack, else httpx), sync."""
    lib = httpx2 if httpx2 is not None else httpx
    cg_lib = cg_httpx2 if httpx2 is not None else cg_httpx
    headers = {**SDK_HEADERS, "authorization": f"Bearer {KEY_ALLOW}"}

    def setup() -> tuple[Batch, Batch, Callable[[], None]]:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        quiet = new_guard(metrics=False)
        counted = new_guard(metrics=MeterProvider(metric_readers=[reader]))
        handler = _handler_for(lib)
        opts: dict[str, Any] = {"base_url": BASE_URL}

        def batch_of(guard: BudgetGuard) -> Batch:
            client = cg_lib.client(guard, transport=lib.MockTransport(handler), **opts)

            def batch(n: int) -> None:
                post = client.post
                for _ in range(n):
                    post("/chat/completions", content=CHAT_BODY, headers=headers)

            return batch

        def verify() -> None:
            with cg_lib.client(counted, transport=lib.MockTransport(handler), **opts) as c:
                _expect(c.post("/chat/completions", content=CHAT_BODY, headers=headers), "allow")
            data = reader.get_metrics_data()
            names = {
                m.name
                for rm in (data.resource_metrics if data is not None else [])
                for sm in rm.scope_metrics
                for m in sm.metrics
            }
            if "creditguard.decisions" not in names or "creditguard.spend" not in names:
                raise AssertionError(f"metrics not reported: {sorted(names)}")

        return batch_of(quiet), batch_of(counted), verify

    name = f"metrics on vs off: transport {'httpx2' if httpx2 is not None else 'httpx'} sync allow"
    return Pair(name, 1.10, False, setup)


def all_pairs() -> list[Pair]:
    pairs = []
    libs = ["httpx"] + (["httpx2"] if httpx2 is not None else [])
    for lib_name in libs:
        for is_async in (False, True):
            for kind in ("allow", "downgrade", "get"):
                pairs.append(transport_pair(lib_name, is_async, kind))
    pairs += [decorator_pair(False), decorator_pair(True), accounting_pair()]
    try:
        import opentelemetry.sdk.metrics  # noqa: F401  (the metrics row needs the SDK)
    except ImportError:
        pass
    else:
        pairs.append(metrics_pair())
    return pairs


# -- timing ----------------------------------------------------------------------


class Runner:
    """Times one batch: sync in place, async inside one long-lived event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def time(self, batch: Batch, n: int, is_async: bool) -> int:
        if is_async:
            return self._time_async(batch, n)
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            batch(n)
            return time.perf_counter_ns() - t0
        finally:
            gc.enable()

    def _time_async(self, batch: Batch, n: int) -> int:
        async def timed() -> int:
            t0 = time.perf_counter_ns()
            await batch(n)
            return time.perf_counter_ns() - t0

        gc.disable()
        try:
            return self.loop.run_until_complete(timed())
        finally:
            gc.enable()

    def run(self, batch: Batch, n: int, is_async: bool) -> None:
        if is_async:
            self.loop.run_until_complete(batch(n))
        else:
            batch(n)

    def close(self) -> None:
        self.loop.close()


def _fmt_time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.2f} us"


def measure(pair: Pair, runner: Runner, budget: float, batch_ns: int) -> Row:
    bare, guarded, verify = pair.setup()
    verify()
    # calibrate on the guarded side (the slower): batches of about batch_ns
    n = 1
    while n < 1 << 20:
        if runner.time(guarded, n, pair.is_async) >= batch_ns:
            break
        n *= 2
    warm_until = time.perf_counter() + min(0.5, budget / 8)
    while time.perf_counter() < warm_until:
        runner.time(bare, n, pair.is_async)
        runner.time(guarded, n, pair.is_async)
    gc.collect()
    b: list[int] = []
    g: list[int] = []
    end = time.perf_counter() + budget
    rounds = 0
    while rounds < 15 or time.perf_counter() < end:
        if rounds % 2 == 0:
            b.append(runner.time(bare, n, pair.is_async))
            g.append(runner.time(guarded, n, pair.is_async))
        else:
            g.append(runner.time(guarded, n, pair.is_async))
            b.append(runner.time(bare, n, pair.is_async))
        rounds += 1
        if rounds % 64 == 0:
            gc.collect()
    verify()
    med_b = statistics.median(b) / n
    med_g = statistics.median(g) / n
    q1, ratio, q3 = statistics.quantiles([x / y for x, y in zip(g, b, strict=True)], n=4)
    verdict = "INFO" if pair.goal is None else ("PASS" if ratio <= pair.goal else "FAIL")
    return Row(
        pair.name,
        _fmt_time(med_b),
        _fmt_time(med_g),
        f"{ratio:.3f}x",
        "-" if pair.goal is None else f"<= {pair.goal:.2f}x",
        verdict,
        extra=f"{(med_g - med_b) / 1e3:+.2f} us/op; paired IQR {q1:.3f}-{q3:.3f}; "
        f"{rounds} rounds x {n}",
        pair=pair,
        guarded_ns=med_g,
    )


# -- stampede --------------------------------------------------------------------

TASKS = 1000
THREADS = 32
FETCH_DELAY = 0.05
STAMPEDE_KEY = "sk-or-v1-" + "5e" * 32


def stampede_once(guarded: bool, loop: asyncio.AbstractEventLoop) -> tuple[int, int]:
    """(wall ns, upstream fetches) of 1,000 tasks + 32 threads asking at once,
    through a cold guard or straight at the sleeping source."""
    source = StaticSource({}, delay=FETCH_DELAY)
    guard = BudgetGuard(source, POLICY, ttl=TTL) if guarded else None
    barrier = threading.Barrier(THREADS + 1)
    failures: list[str] = []

    def worker() -> None:
        barrier.wait()
        if guard is not None:
            decision = guard.check(MODEL, credential=STAMPEDE_KEY)
            if decision.action != "allow" or decision.balance is None:
                failures.append(decision.reason)
        else:
            source.fetch(STAMPEDE_KEY)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()

    async def main() -> int:
        barrier.wait()  # every thread is waiting: they and the tasks start together
        t0 = time.perf_counter_ns()
        if guard is not None:
            decisions = await asyncio.gather(
                *[guard.acheck(MODEL, credential=STAMPEDE_KEY) for _ in range(TASKS)]
            )
            failures.extend(d.reason for d in decisions if d.action != "allow" or not d.balance)
        else:
            await asyncio.gather(*[source.afetch(STAMPEDE_KEY) for _ in range(TASKS)])
        for t in threads:
            t.join()
        return time.perf_counter_ns() - t0

    gc.disable()
    try:
        wall = loop.run_until_complete(main())
    finally:
        gc.enable()
    if failures:
        raise AssertionError(f"stampede: {len(failures)} bad decisions, e.g. {failures[0]}")
    return wall, source.fetches


def measure_stampede(reps: int, loop: asyncio.AbstractEventLoop) -> list[Row]:
    stampede_once(True, loop)  # warm-up: imports, code paths
    stampede_once(False, loop)
    b: list[int] = []
    g: list[int] = []
    fetches: list[int] = []
    bare_fetches = 0
    for i in range(reps):
        order = (False, True) if i % 2 == 0 else (True, False)
        for guarded in order:
            wall, count = stampede_once(guarded, loop)
            if guarded:
                g.append(wall)
                fetches.append(count)
            else:
                b.append(wall)
                bare_fetches = count
        gc.collect()
    med_b, med_g = statistics.median(b), statistics.median(g)
    ratio = statistics.median([x / y for x, y in zip(g, b, strict=True)])
    who = f"{TASKS} tasks + {THREADS} threads"
    one = all(f == 1 for f in fetches)
    return [
        Row(
            f"stampede, cold cache: upstream fetches ({who})",
            f"{bare_fetches}",
            f"{max(fetches)}" if one else f"{min(fetches)}..{max(fetches)}",
            "-",
            "== 1",
            "PASS" if one else "FAIL",
            extra=f"{reps} stampedes, fetch sleeps {FETCH_DELAY * 1000:.0f} ms",
        ),
        Row(
            f"stampede, cold cache: wall time ({who})",
            _fmt_time(med_b),
            _fmt_time(med_g),
            f"{ratio:.3f}x",
            "<= 1.10x",
            "PASS" if ratio <= 1.10 else "FAIL",
            extra=f"bare: {TASKS + THREADS} concurrent calls of the sleeping fetch; "
            f"+{(med_g - med_b) / 1e6:.2f} ms; {reps} rounds",
        ),
    ]


# -- memory (in a fresh child process) --------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_child(count: int, trace: bool) -> dict[str, Any]:
    """Runs in a child: RSS growth of ``count`` credentials through one guard,
    then (``trace``) the Python-level bytes a second guard keeps, by tracemalloc."""
    import tracemalloc

    credentials = [f"sk-or-v1-{i:064x}" for i in range(count)]  # the input, made first
    out: dict[str, Any] = {"count": count}
    guard = BudgetGuard(StaticSource({}), POLICY, ttl=TTL)  # default maxsize
    out["maxsize"] = guard.ledger._cache.maxsize
    gc.collect()
    before = _rss_kb()
    checkpoints = {}
    for i, credential in enumerate(credentials, 1):
        guard.check(MODEL, credential=credential)
        if i in (count // 10, count // 2, count):
            gc.collect()
            checkpoints[i] = _rss_kb() - before
    out["rss_before_kb"] = before
    out["rss_after_kb"] = _rss_kb()
    out["rss_growth_kb"] = checkpoints
    out["cached"] = len(guard.ledger)
    if trace:
        del guard
        gc.collect()
        tracemalloc.start(1)
        guard = BudgetGuard(StaticSource({}), POLICY, ttl=TTL)
        base = tracemalloc.take_snapshot()
        start, _ = tracemalloc.get_traced_memory()
        for credential in credentials:
            guard.check(MODEL, credential=credential)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        top = tracemalloc.take_snapshot().compare_to(base, "lineno")[:5]
        out["traced_kept"] = current - start
        out["traced_peak"] = peak - start
        out["traced_top"] = [
            f"{s.size_diff / 1e6:+.2f} MB {s.count_diff:+d} blocks "
            f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno}"
            for s in top
        ]
        tracemalloc.stop()
    return out


def measure_memory(count: int, trace: bool) -> list[Row]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(count)]
    if not trace:
        cmd.append("--no-trace")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{done.stderr}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    growth = out["rss_growth_kb"]
    final = growth[str(count)] / 1024
    steps = ", ".join(f"{int(k):,}: {v / 1024:+.1f} MB" for k, v in growth.items())
    rows = [
        Row(
            f"memory: {count:,} credentials, RSS growth",
            "-",
            "-",
            f"{final:+.1f} MB",
            "<= 50 MB",
            "PASS" if final <= 50 else "FAIL",
            extra=f"maxsize {out['maxsize']:,}, {out['cached']:,} cached after; growth at {steps}",
        )
    ]
    if trace:
        rows.append(
            Row(
                f"memory: {count:,} credentials, tracemalloc",
                "-",
                "-",
                f"{out['traced_kept'] / 1e6:+.1f} MB",
                "-",
                "INFO",
                extra=f"kept by a second guard (peak {out['traced_peak'] / 1e6:.1f} MB); "
                "top: " + "; ".join(out["traced_top"][:3]),
            )
        )
    return rows


# -- profiles of the FAILs -------------------------------------------------------

_Key = tuple[str, int, str]
_Stat = tuple[int, float, dict[_Key, Any]]  # calls, own seconds, callers


def _stats(prof: cProfile.Profile) -> dict[_Key, _Stat]:
    raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return {k: (v[1], v[2], v[4]) for k, v in raw.items()}


def _ours(key: _Key) -> bool:
    return "/creditguard/" in key[0]


def _where(key: _Key) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    if _ours(key):
        short = "creditguard/" + filename.split("/creditguard/", 1)[1]
    else:
        short = "/".join(filename.split("/")[-2:])
    return f"{short}:{line}({func})"


def _blame(key: _Key, stats: dict[_Key, _Stat], depth: int = 4) -> str:
    """The creditguard functions nearest above a library function in the call
    graph (at most ``depth`` callers up), most frequent first."""
    frontier, seen = {key}, {key}
    for _ in range(depth):
        found: dict[_Key, int] = {}
        above: set[_Key] = set()
        for k in frontier:
            for caller, edge in stats.get(k, (0, 0.0, {}))[2].items():
                if _ours(caller):
                    found[caller] = found.get(caller, 0) + edge[1]
                elif caller not in seen:
                    above.add(caller)
        if found:
            names = sorted(found, key=lambda c: -found[c])[:3]
            return "  <- " + ", ".join(f"{c[2]}" for c in names)
        seen |= above
        frontier = above
    return ""


def _report(
    g: dict[_Key, _Stat], b: dict[_Key, _Stat], ops: int, scale: float, unit: str, top: int
) -> list[str]:
    """Lines: creditguard functions by own time, then every function's own
    time added over the bare run; times x ``scale`` / ``ops`` in ``unit``,
    calls / ``ops``."""
    ours = sorted(((k, v) for k, v in g.items() if _ours(k)), key=lambda kv: -kv[1][1])
    total = sum(v[1] for _, v in ours) or 1e-12
    lines = [
        "  creditguard functions by own time:",
        f"  {'own ' + unit:>10} {'share':>6} {'calls':>8}  function",
    ]
    for key, (calls, own, _) in ours[:top]:
        lines.append(
            f"  {own * scale / ops:10.2f} {own / total:6.1%} {calls / ops:8.4g}  {_where(key)}"
        )
    lines.append(f"  {total * scale / ops:10.2f} {1:6.0%} {'':>8}  (all creditguard functions)")
    delta = []
    for key, stat in g.items():
        bstat = b.get(key, (0, 0.0, {}))
        if stat[1] - bstat[1] > 0 and (_ours(key) or stat[0] != bstat[0]):
            delta.append((stat[1] - bstat[1], stat[0] - bstat[0], key))
    delta.sort(key=lambda d: -d[0])
    added = sum(d[0] for d in delta) or 1e-12
    lines.append(
        "  own time added over the bare path, any module "
        "(* creditguard; <- the creditguard code above it):"
    )
    lines.append(f"  {'+own ' + unit:>10} {'share':>6} {'+calls':>8}  function")
    for extra, calls, key in delta[:top]:
        mark = "*" if _ours(key) else " "
        blame = "" if _ours(key) else _blame(key, g)
        lines.append(
            f"  {extra * scale / ops:+10.2f} {extra / added:6.1%} {calls / ops:+8.4g} "
            f"{mark}{_where(key)}{blame}"
        )
    return lines


def _merge_min(runs: list[dict[_Key, _Stat]]) -> dict[_Key, _Stat]:
    """Per function, the run where its own time was least: the same calls in
    every run, so the least is the one least disturbed by the machine."""
    merged: dict[_Key, _Stat] = {}
    for stats in runs:
        for key, stat in stats.items():
            if key not in merged or stat[1] < merged[key][1]:
                merged[key] = stat
    return merged


def profile_pair(
    pair: Pair, runner: Runner, guarded_ns: float, top: int = 10, reps: int = 3
) -> list[str]:
    """cProfile of the guarded and the bare path (same calls, ``reps`` runs
    each, alternating; per function the least own time of its runs): the
    guarded path's own time by creditguard function, and what it adds over the
    bare path in any module, per call."""
    ops = int(min(20_000, max(200, 0.15e9 / max(guarded_ns, 1.0))))
    bare, guarded, _ = pair.setup()
    runner.run(guarded, min(ops, 200), pair.is_async)
    runner.run(bare, min(ops, 200), pair.is_async)
    runs: dict[str, list[dict[_Key, _Stat]]] = {"bare": [], "guarded": []}
    totals: dict[str, list[float]] = {"bare": [], "guarded": []}
    for _ in range(reps):
        for side, batch in (("bare", bare), ("guarded", guarded)):
            prof = cProfile.Profile()
            gc.disable()
            try:
                t0 = time.perf_counter_ns()
                prof.enable()
                runner.run(batch, ops, pair.is_async)
                prof.disable()
                totals[side].append((time.perf_counter_ns() - t0) / ops)
            finally:
                gc.enable()
            runs[side].append(_stats(prof))
    bare_t, guarded_t = min(totals["bare"]), min(totals["guarded"])
    lines = [
        f"profile: {pair.name}",
        f"  cProfile, {reps} x {ops} calls each side: bare {_fmt_time(bare_t)}/call, guarded "
        f"{_fmt_time(guarded_t)}/call (the profiler inflates ~{guarded_t / guarded_ns:.1f}x: "
        "read the shares); own time in us per call",
    ]
    g, b = _merge_min(runs["guarded"]), _merge_min(runs["bare"])
    return lines + _report(g, b, ops, 1e6, "us", top)


def profile_stampede(loop: asyncio.AbstractEventLoop, top: int = 10, reps: int = 3) -> list[str]:
    """cProfile of bare and guarded stampedes (``reps`` each, alternating; per
    function the least own time), event-loop thread only: the 1,000 tasks,
    not the 32 threads."""
    runs: dict[bool, list[dict[_Key, _Stat]]] = {False: [], True: []}
    walls: dict[bool, list[int]] = {False: [], True: []}
    for _ in range(reps):
        for guarded in (False, True):
            prof = cProfile.Profile()
            prof.enable()
            wall, _ = stampede_once(guarded, loop)
            prof.disable()
            walls[guarded].append(wall)
            runs[guarded].append(_stats(prof))
    lines = [
        "profile: stampede, cold cache: wall time",
        f"  cProfile of the event-loop thread (the {TASKS} tasks; threads not profiled), "
        f"{reps} stampedes each side: bare {_fmt_time(min(walls[False]))}, guarded "
        f"{_fmt_time(min(walls[True]))}; own time in ms per stampede, calls per stampede",
    ]
    g, b = _merge_min(runs[True]), _merge_min(runs[False])
    return lines + _report(g, b, 1, 1e3, "ms", top)


# -- main -------------------------------------------------------------------------

GOALS_NOTE = """\
Goals (issue 17, "Performance, restated": hold the line while features land):
  - transport allow path <= 1.25x the bare MockTransport round trip; downgrade path <= 1.45x;
  - decorator <= 7x a wrapt pass-through decorator, sync and async;
  - stampede: exactly 1 fetch; guard adds <= 10% to the wall time of 1,000 concurrent bare calls;
  - memory bounded: <= 50 MB extra at 100,000 credentials with the default maxsize.
  The non-generation GET is held to the allow goal (it should pass straight through);
  accounting (reserve + settle vs allow-only) has no goal and is reported (INFO);
  metrics on (OpenTelemetry SDK, in-memory reader) <= 1.10x the same allow path with them off.
  What a user compares, the guard against the peer libraries on the real SDK call
  (<= 25 us added per call through creditguard.httpx2, <= 20 us for @guard), is
  measured by benchmarks/peers.py (make bench-peers)."""


def print_table(rows: list[Row], verbose: bool = True) -> None:
    headers = ("benchmark", "bare/op", "guarded/op", "ratio", "goal", "result")
    cells = [(r.name, r.bare, r.guarded, r.ratio, r.goal, r.verdict) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    aligns = ("<", ">", ">", ">", "<", "<")

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(
            f"{v:{a}{w}}" for v, a, w in zip(values, aligns, widths, strict=True)
        ).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row, c in zip(rows, cells, strict=True):
        print(line(c))
        if verbose and row.extra:
            print(f"    {row.extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~15 s run, coarser figures")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--profile", action="store_true", help="cProfile each FAIL")
    parser.add_argument("--only", metavar="TEXT", help="only rows whose name contains TEXT")
    parser.add_argument("--memory-child", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--no-trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    quiet = logging.getLogger("creditguard")  # one downgrade warning would land on stderr
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, trace=not args.no_trace)))
        return 0

    budget, batch_ns, reps = (0.45, 2_000_000, 4) if args.quick else (4.0, 4_000_000, 15)
    only = (args.only or "").lower()
    started = time.perf_counter()
    print(
        f"creditguard benchmarks ({'quick' if args.quick else 'full'}): guarded vs bare in one "
        f"process, interleaved batches, medians; python {sys.version.split()[0]}, "
        f"httpx {httpx.__version__}"
        + (f", httpx2 {httpx2.__version__}" if httpx2 is not None else ", no httpx2")
        + f", wrapt {wrapt.__version__}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(
        f"chat body {len(CHAT_BODY)} bytes, messages first; answer {len(REPLY_BODY)} bytes; "
        "ratio = median of paired guarded/bare batches\n"
    )
    runner = Runner()
    rows: list[Row] = []
    try:
        for pair in all_pairs():
            if only and only not in pair.name.lower():
                continue
            row = measure(pair, runner, budget, batch_ns)
            rows.append(row)
            print(f"  {row.verdict}  {row.name}: {row.ratio}  ({row.extra})", flush=True)
        if not only or only in "stampede":
            for row in measure_stampede(reps, runner.loop):
                rows.append(row)
                print(f"  {row.verdict}  {row.name}: {row.guarded} ({row.extra})", flush=True)
        if not only or only in "memory":
            for row in measure_memory(100_000, trace=not args.quick):
                rows.append(row)
                print(f"  {row.verdict}  {row.name}: {row.ratio}", flush=True)
        print()
        print_table(rows)
        print()
        print(GOALS_NOTE)
        failed = [r for r in rows if r.verdict == "FAIL"]
        print(
            f"\n{len(rows) - len(failed)} of {len(rows)} rows pass or inform, "
            f"{len(failed)} FAIL; {time.perf_counter() - started:.0f} s"
        )
        if args.profile and failed:
            for row in failed:
                print()
                if row.pair is not None:
                    lines = profile_pair(row.pair, runner, row.guarded_ns)
                elif "stampede" in row.name and "wall" in row.name:
                    lines = profile_stampede(runner.loop)
                else:
                    lines = [f"(no profile for {row.name})"]
                print("\n".join(lines))
    finally:
        runner.close()
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
