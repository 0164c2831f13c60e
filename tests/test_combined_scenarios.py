"""Features combined as a demanding user combines them (review of issues 12, 13, 14).

Each scenario runs a real SDK against the loopback fake provider and checks the one
figure that matters: what the provider charged against the bound the guard promises
(the refuse floor plus one call's estimate), and that no hold is left behind.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import openai
import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401
from sdk_helpers import (  # the fixtures: fake, stack and the autouse _quick_retries
    BOUND,
    ESTIMATE,
    FLOOR,
    HUNG,
    KEY,
    LIMIT,
    MODEL,
    PATIENT,
    PRICE,
    QUICK,
    SLOW,
    async_openai,
    bounded_guard,
    fault_fake,  # noqa: F401
    in_threads,
    quick_retries,  # noqa: F401
    refused_by_guard,
    settle_down,
    spent,
    stack_param,  # noqa: F401
    sync_openai,
    sync_worker,
    wait_for_spent,
)
from sdk_helpers import SAY_HI as MESSAGES

from creditguard import BudgetGuard, CreditsExhausted, Policy
from creditguard._shared import SharedLedger
from creditguard.sources import FixedBudget, OpenRouterKey
from creditguard.testing import FakeProvider

pytest.importorskip("redis")

SECRET = "combined-secret"


def store_url(redis: RedisServer) -> str:
    """The shared store, waiting up to 5 s for Redis (not the 0.25 s default): none of
    these scenarios is about store timeouts, and on a loaded machine a reply slower than
    0.25 s sent the guard to its local books for a second of back-off, where the figures
    checked (what is held in the store) are not the store's."""
    return f"{redis.url}?secret={SECRET}&timeout=5"


def redis_guard(fake: FakeProvider, redis: RedisServer, **kw: Any) -> BudgetGuard:
    return bounded_guard(fake, store=store_url(redis), **kw)


async def store_holds_released(*guards: BudgetGuard, within: float = 10.0) -> None:
    """Wait until the store writes the guards started on the loop (in the background) have
    released every hold: polled off the loop, so a loaded machine only waits longer (a
    fixed 0.2 s sleep was not always enough). A hold never released still fails the test
    that asserts it: holds expire after hold_timeout (900 s), not within."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        held = [await asyncio.to_thread(g.ledger.reserved, KEY) for g in guards]
        if all(abs(h) < 1e-9 for h in held):
            return
        await asyncio.sleep(0.02)


# -- 1. two guards on one Redis store, SDK retries after 500s and timeouts ---------------


def test_two_guards_on_redis_retries_and_timeouts_keep_the_bound(
    fake: FakeProvider, redis_server: RedisServer, stack: str
) -> None:
    fake.fault("chat", status=500, attempt=0)  # every first attempt fails (released)
    fake.fault("chat", delay=SLOW, attempt=1)  # every retry times out (charged)
    a, b = redis_guard(fake, redis_server), redis_guard(fake, redis_server)
    refusals: list[int] = []
    with (
        sync_openai(fake, a, stack, max_retries=2, timeout=QUICK) as ca,
        sync_openai(fake, b, stack, max_retries=2, timeout=QUICK) as cb,
    ):
        in_threads([lambda c=c: sync_worker(c, refusals, calls=30) for c in (ca, cb) * 5])
    settle_down(fake, SLOW)
    assert refusals
    assert spent(fake) <= BOUND, f"charged {spent(fake):.2f} > {BOUND:.2f}"
    assert spent(fake) >= FLOOR - 0.15  # the budget was used
    assert a.ledger.reserved(KEY) == 0 and b.ledger.reserved(KEY) == 0
    a.close()
    b.close()


# -- 2. Redis store, async code, streams dropped unread (the GC finalizer) -------------


async def test_async_redis_streams_dropped_unread_never_block_the_loop(
    fake: FakeProvider, redis_server: RedisServer, stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = redis_guard(fake, redis_server, estimate=0.05)
    ledger = guard.ledger
    assert isinstance(ledger, SharedLedger)
    on_loop: list[str] = []
    sync_drive = SharedLedger._drive

    def watched(self: SharedLedger, program: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            on_loop.append("sync Redis call on the event loop")
        return sync_drive(self, program)

    monkeypatch.setattr(SharedLedger, "_drive", watched)
    async with async_openai(fake, guard, stack) as client:
        for _ in range(3):
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
            del stream  # dropped unread: its finalizer charges the estimate
            gc.collect()
        # the next call drains the deferred settles (on the loop's thread)
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        await store_holds_released(guard)  # background store writes
    assert on_loop == []
    assert ledger.reserved(KEY) == pytest.approx(0)
    belief = (await guard.acheck(credential=KEY, estimate=0)).balance
    assert belief is not None
    # 3 streams charged their estimate, the last call its price
    assert belief.remaining == pytest.approx(LIMIT - 3 * 0.05 - PRICE)
    await guard.aclose()


# -- 3. downgrade before refuse, then an SDK retry after a 500 --------------------------

BIG, SMALL = "acme/big", "acme/small"
PRICES = {
    BIG: {"prompt": 1e-5, "completion": 1e-4},  # 1000 output tokens: ~0.1
    SMALL: {"prompt": 1e-7, "completion": 1e-6},  # ~0.001
}


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_a_retry_after_a_downgrade_reuses_the_downgraded_model_and_its_estimate(
    fake: FakeProvider, redis_server: RedisServer, stack: str, shared: bool
) -> None:
    # BIG would leave 0.9 (< 0.95): downgraded to SMALL, which leaves ~0.999
    policy = Policy(refuse_below=0.95, downgrade={BIG: SMALL})
    kw: dict[str, Any] = dict(policy=policy, pricing=PRICES, pricing_from=None)
    if shared:
        guard = redis_guard(fake, redis_server, **kw)
    else:
        kw.pop("policy")
        guard = BudgetGuard(
            OpenRouterKey(base_url=fake.openrouter_base_url), policy, ttl=600.0, **kw
        )
    fake.fault("chat", status=500, attempt=0)
    # the retry in flight long enough to look at (1 s: the sampler, every 20 ms, may be
    # kept off the CPU for a while on a loaded machine; it was 0.3 s)
    fake.fault("chat", delay=1.0, attempt=1)
    held: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            held.append(guard.ledger.reserved(KEY))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    decisions: list[Any] = []
    guard.on_decision = decisions.append
    with sync_openai(fake, guard, stack, max_retries=1) as client:
        sampler.start()
        done = client.chat.completions.create(model=BIG, messages=MESSAGES, max_tokens=1000)
        stop.set()
        sampler.join()
    sent = [r.json["model"] for r in fake.requests if r.endpoint == "chat"]
    assert sent == [SMALL, SMALL]  # the retry reuses the rewrite
    assert done.choices
    # while the retry ran, SMALL's estimate was held (BIG's would be ~0.1)
    assert 0 < max(held) < 0.01
    assert [d.action for d in decisions] == ["downgrade"]  # judged once
    assert decisions[0].model == SMALL
    assert guard.ledger.reserved(KEY) == 0
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None
    assert belief.remaining == pytest.approx(LIMIT - PRICE)  # the retry's real cost only
    guard.close()


# -- 4. shadow mode, a retry and a timeout: charged exactly as when enforcing ------------


@pytest.mark.parametrize("enforce", [True, False], ids=["enforce", "shadow"])
def test_shadow_mode_charges_a_retry_and_a_timeout_as_enforcing_does(
    fake: FakeProvider, redis_server: RedisServer, stack: str, enforce: bool
) -> None:
    guard = redis_guard(
        fake, redis_server, estimate=0.05, policy=Policy(refuse_below=FLOOR, enforce=enforce)
    )
    fake.fault("chat", status=500, attempt=0)  # released: the provider answered an error
    fake.fault("chat", delay=HUNG, attempt=1)  # timed out: may be billed, charged 0.05
    # attempt 2 must not time out under the same client timeout: PATIENT, not QUICK (a
    # loaded machine's normal answer can take more than QUICK)
    with sync_openai(fake, guard, stack, max_retries=2, timeout=PATIENT) as client:
        done = client.with_raw_response.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert done.headers.get("x-creditguard-enforced") == (None if enforce else "false")
    wait_for_spent(fake, 2 * PRICE)  # the provider finishes attempt 1 after HUNG s
    assert fake.count("chat") == 3
    assert spent(fake) == pytest.approx(2 * PRICE)  # the provider billed attempts 1 and 2
    assert guard.ledger.reserved(KEY) == 0
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None
    assert belief.remaining == pytest.approx(LIMIT - 0.05 - PRICE)
    guard.close()


# -- 5. FixedBudget kept in Redis, reserve() as a context manager whose body raises ------


def test_fixed_budget_in_redis_reserve_body_raising_after_the_call_is_charged(
    fake: FakeProvider, redis_server: RedisServer
) -> None:
    def make() -> BudgetGuard:
        return BudgetGuard(
            FixedBudget(1.0),
            Policy(refuse_below=0.0),
            estimate=0.2,
            store=store_url(redis_server),
        )

    a, b = make(), make()  # two processes drawing down one budget
    with openai.OpenAI(
        base_url=fake.openrouter_base_url, api_key=KEY, max_retries=0, timeout=5.0
    ) as client:
        # the call went out and was billed, then the caller's own code failed
        with pytest.raises(KeyError), a.reserve(MODEL):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
            raise KeyError("choices")
        # a timeout: may have been billed
        fake.fault("chat", delay=SLOW, times=1)
        with pytest.raises(openai.APITimeoutError), b.reserve(MODEL):
            client.with_options(timeout=QUICK).chat.completions.create(
                model=MODEL, messages=MESSAGES
            )
        # settled with its real cost, then raising: charged that once
        with pytest.raises(RuntimeError), a.reserve(MODEL) as r:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
            r.settle(0.1)
            raise RuntimeError("after settle")
        # nothing sent (a connect error): released
        with pytest.raises(openai.APIConnectionError), b.reserve(MODEL):
            openai.OpenAI(
                base_url="http://127.0.0.1:1/v1", api_key=KEY, max_retries=0
            ).chat.completions.create(model=MODEL, messages=MESSAGES)
    for g in (a, b):
        assert g.ledger.reserved(None) == pytest.approx(0)
        d = g.check(MODEL, estimate=0)
        assert d.balance is not None
        assert d.balance.remaining == pytest.approx(1.0 - 0.2 - 0.2 - 0.1)
    # 0.5 left: two more of 0.2 fit (on either process), a third does not
    for g in (a, b):
        with g.reserve(MODEL) as r:
            assert r.decision.action == "allow"
    refused = b.reserve(MODEL)
    assert refused.decision.action == "refuse"
    a.close()
    b.close()


# -- 6. clamp max_tokens, streams without usage, then learned estimates ------------------


async def test_clamped_streams_without_usage_stay_above_the_floor(
    fake: FakeProvider, redis_server: RedisServer, stack: str
) -> None:
    fake.token_prices[BIG] = (1e-5, 1e-4)
    policy = Policy(refuse_below=0.9, clamp_max_tokens=True, min_tokens=16)
    guard = redis_guard(fake, redis_server, policy=policy, pricing=PRICES, pricing_from=None)
    decisions: list[Any] = []
    guard.on_decision = decisions.append
    outcomes: list[str] = []
    async with async_openai(fake, guard, stack) as client:
        for _ in range(20):
            try:
                stream = await client.chat.completions.create(
                    model=BIG, messages=MESSAGES, max_tokens=4000, stream=True
                )
                async for _chunk in stream:
                    pass
                outcomes.append("ok")
            except openai.APIStatusError as exc:
                assert refused_by_guard(exc), exc
                outcomes.append("refused")
                break
        await store_holds_released(guard)
    sent = [r.json.get("max_tokens") for r in fake.requests if r.endpoint == "chat"]
    print(sent, outcomes, spent(fake), [d.reason for d in decisions][:3])
    assert "refused" in outcomes and outcomes.count("ok") >= 1
    assert all(16 <= n < 4000 for n in sent)  # clamped to what fits
    assert spent(fake) <= LIMIT - 0.9 + 1e-9  # never past the floor
    assert guard.ledger.reserved(KEY) == pytest.approx(0)
    await guard.aclose()


async def test_a_stream_without_usage_is_charged_the_learned_estimate(
    fake: FakeProvider, redis_server: RedisServer, stack: str
) -> None:
    unpriced = "acme/unpriced"
    fake.token_prices[unpriced] = (1e-5, 1e-4)  # ~0.1 a call with max_tokens=1000
    guard = redis_guard(fake, redis_server, pricing_from=None, policy=Policy(refuse_below=0.0))
    async with async_openai(fake, guard, stack) as client:
        for _ in range(3):
            await client.chat.completions.create(model=unpriced, messages=MESSAGES, max_tokens=1000)
        await asyncio.sleep(0.1)
        learned = guard.prices.learned.p90(unpriced)
        assert learned == pytest.approx(0.1, rel=0.01)
        before = (await guard.acheck(credential=KEY, estimate=0)).balance
        stream = await client.chat.completions.create(
            model=unpriced, messages=MESSAGES, max_tokens=1000, stream=True
        )
        async for _chunk in stream:
            pass
        await store_holds_released(guard)
    after = (await guard.acheck(credential=KEY, estimate=0)).balance
    assert before is not None and after is not None
    print(before.remaining, after.remaining, spent(fake))
    # the stream really cost ~0.1; it is charged no less than what was learned
    assert before.remaining - after.remaining == pytest.approx(learned, rel=0.05)
    assert guard.ledger.reserved(KEY) == pytest.approx(0)
    await guard.aclose()


# -- 7. a guard closed with a finalizer's settle still queued ---------------------------


def fixed_guard(redis: RedisServer) -> BudgetGuard:
    return BudgetGuard(
        FixedBudget(1.0),
        Policy(refuse_below=0.0),
        estimate=0.2,
        store=store_url(redis),
    )


def test_close_settles_a_reservation_dropped_open(redis_server: RedisServer) -> None:
    a = fixed_guard(redis_server)
    r = a.reserve(MODEL)
    assert r.decision.action == "allow"
    del r  # the caller lost it: charged its estimate by the finalizer, at the next call
    gc.collect()
    a.close()  # ... or when the guard closes: the process may make no other call
    b = fixed_guard(redis_server)
    d = b.check(MODEL, estimate=0)
    assert d.balance is not None
    assert d.balance.remaining == pytest.approx(0.8)
    b.close()


async def test_aclose_settles_a_stream_dropped_unread(
    fake: FakeProvider, redis_server: RedisServer, stack: str
) -> None:
    source = FixedBudget(1.0)
    guard = BudgetGuard(
        source, Policy(refuse_below=0.0), estimate=0.2, store=store_url(redis_server)
    )
    async with async_openai(fake, guard, stack) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        del stream
        gc.collect()
    await guard.aclose()
    b = fixed_guard(redis_server)
    d = b.check(MODEL, estimate=0)
    assert d.balance is not None
    assert d.balance.remaining == pytest.approx(0.8)  # the estimate: it may have been billed
    b.close()


# the script's client and store connections die with its loop, unclosed, as in a script
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_settle_at_the_end_of_asyncio_run_reaches_the_store(
    fake: FakeProvider, redis_server: RedisServer
) -> None:
    """A script's ``asyncio.run(main())`` whose last call settles as the loop ends
    (no aclose): the store write started on the loop must not be lost."""
    guard = BudgetGuard(
        FixedBudget(1.0),
        Policy(refuse_below=0.0),
        estimate=0.2,
        store=store_url(redis_server),
    )

    async def main() -> None:
        client = async_openai(fake, guard, "httpx")
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        # returns at once: the store write is still a task of the loop

    asyncio.run(main())
    b = fixed_guard(redis_server)
    d = b.check(MODEL, estimate=0)
    assert d.balance is not None
    assert d.balance.remaining == pytest.approx(1.0 - PRICE)
    b.close()
    guard.close()
    gc.collect()  # here, not in the next test


# -- 8. Anthropic middleware, FixedBudget in Redis over 2 guards, retries and timeouts ---


async def test_anthropic_two_guards_on_a_redis_budget_with_retries_and_timeouts(
    fake: FakeProvider, redis_server: RedisServer
) -> None:
    import anthropic  # (retried at once, no key from the environment: _quick_retries)

    fake.add_key(KEY, credits=10.0)  # the budget below is the bound
    fake.fault("messages", status=500, attempt=0)  # released, retried
    fake.fault("messages", delay=SLOW, attempt=1)  # timed out: charged, retried
    guards = [
        BudgetGuard(
            FixedBudget(LIMIT),
            Policy(refuse_below=FLOOR),
            estimate=ESTIMATE,
            store=store_url(redis_server),
        )
        for _ in range(2)
    ]
    refusals: list[int] = []
    args: dict[str, Any] = {
        "model": "claude-faults",  # priced by no list: charged the fake's cost
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}],
    }

    async def worker(client: anthropic.AsyncAnthropic) -> None:
        for _ in range(30):
            try:
                await client.messages.create(**args)
            except CreditsExhausted:
                refusals.append(1)
                return
            except anthropic.APITimeoutError:
                continue

    clients = [
        anthropic.AsyncAnthropic(
            base_url=fake.anthropic_base_url,
            api_key=KEY,
            middleware=[g.anthropic_middleware()],
            max_retries=2,
            timeout=QUICK,
        )
        for g in guards
    ]
    await asyncio.gather(*(worker(c) for c in clients * 5))
    for c in clients:
        await c.close()
    await asyncio.to_thread(settle_down, fake, SLOW)
    assert refusals
    assert spent(fake) <= BOUND, f"charged {spent(fake):.2f} > {BOUND:.2f}"
    for g in guards:
        await g.aclose()
    third = fixed_guard(redis_server)
    d = third.check(estimate=0)
    assert d.balance is not None
    # every billed attempt is booked in the shared budget (timed-out ones at the estimate)
    assert LIMIT - d.balance.remaining == pytest.approx(spent(fake), abs=1e-6)
    third.close()


# -- 9. rewrites and retries: clamp, shadow ---------------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_a_retry_after_a_clamp_sends_and_holds_the_clamped_limit(
    fake: FakeProvider, redis_server: RedisServer, stack: str, shared: bool
) -> None:
    fake.token_prices[BIG] = (1e-5, 1e-4)
    policy = Policy(refuse_below=0.9, clamp_max_tokens=True, min_tokens=16)
    kw: dict[str, Any] = dict(pricing=PRICES, pricing_from=None, ttl=600.0)
    if shared:
        guard = redis_guard(fake, redis_server, policy=policy, **kw)
    else:
        guard = BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy, **kw)
    fake.fault("chat", status=500, attempt=0)
    decisions: list[Any] = []
    guard.on_decision = decisions.append
    with sync_openai(fake, guard, stack, max_retries=1) as client:
        client.chat.completions.create(model=BIG, messages=MESSAGES, max_tokens=4000)
    sent = [r.json.get("max_tokens") for r in fake.requests if r.endpoint == "chat"]
    assert len(sent) == 2 and sent[0] == sent[1] < 4000  # the retry keeps the clamp
    assert [d.action for d in decisions] == ["downgrade"]
    assert spent(fake) <= LIMIT - 0.9 + 1e-9
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


def test_shadow_mode_downgrade_and_retry_send_and_hold_what_runs(
    fake: FakeProvider, redis_server: RedisServer, stack: str
) -> None:
    policy = Policy(refuse_below=0.95, downgrade={BIG: SMALL}, enforce=False)
    guard = redis_guard(fake, redis_server, policy=policy, pricing=PRICES, pricing_from=None)
    fake.fault("chat", status=500, attempt=0)
    fake.fault("chat", delay=1.0, attempt=1)  # in flight long enough to sample (was 0.3 s)
    held: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            held.append(guard.ledger.reserved(KEY))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    with sync_openai(fake, guard, stack, max_retries=1) as client:
        sampler.start()
        done = client.chat.completions.with_raw_response.create(
            model=BIG, messages=MESSAGES, max_tokens=1000
        )
        stop.set()
        sampler.join()
    assert done.headers["x-creditguard-enforced"] == "false"
    sent = [r.json["model"] for r in fake.requests if r.endpoint == "chat"]
    assert sent == [BIG, BIG]  # nothing rewritten
    assert max(held) == pytest.approx(0.1, rel=0.05)  # BIG's estimate: what runs
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


# -- 10. streams, retries and abandoned reads over Redis, 2 guards, async ----------------


async def test_async_streams_retried_and_abandoned_over_redis_keep_the_bound(
    fake: FakeProvider, redis_server: RedisServer, stack: str
) -> None:
    fake.fault("chat", status=500, attempt=0)
    guards = [redis_guard(fake, redis_server, stream_usage=True) for _ in range(2)]
    clients = [async_openai(fake, g, stack, max_retries=2) for g in guards]
    refusals: list[int] = []

    async def worker(client: openai.AsyncOpenAI, n: int) -> None:
        for i in range(40):
            try:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True
                )
                if (i + n) % 3 == 0:  # read one chunk, then walk away
                    async with stream:
                        async for _chunk in stream:
                            break
                elif (i + n) % 3 == 1:
                    async for _chunk in stream:
                        pass
                else:  # dropped unread
                    del stream
                    gc.collect()
            except openai.APIStatusError as exc:
                assert refused_by_guard(exc), exc
                refusals.append(1)
                return

    await asyncio.gather(*(worker(c, n) for n, c in enumerate(clients * 5)))
    for c in clients:
        await c.close()
    gc.collect()
    await asyncio.to_thread(settle_down, fake)
    assert refusals
    assert spent(fake) <= BOUND, f"charged {spent(fake):.2f} > {BOUND:.2f}"
    await store_holds_released(*guards)  # the store writes started on the loop
    for g in guards:
        assert g.ledger.reserved(KEY) == pytest.approx(0)  # read in the store
    for g in guards:
        await g.aclose()
