"""Money is never lost to a fault (issue 12; streams charged what passed, issue 13).

Every scenario runs the real SDKs (openai 3.x on httpx and httpx2 clients, anthropic
2.x) against the loopback fake provider. The budget is the one the issue measured:
a key limit of 1.00, every call costing 0.01, ``refuse_below=0.5`` and an estimate
of 0.01, so however the calls fail the provider may charge at most 0.51. Workers
call until the guard refuses them (a 402 of its own), as a busy app would.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from sdk_helpers import (  # the fixtures: fake, stack and the autouse _quick_retries
    BOUND,
    FLOOR,
    HUNG,
    KEY,
    LIMIT,
    MODEL,
    PATIENT,
    PRICE,
    QUICK,
    SLOW,
    STACKS,
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

import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, ConfigError, CreditsExhausted, Policy
from creditguard.sources import FixedBudget, OpenRouterKey
from creditguard.testing import FakeProvider

WORKERS = 20


async def async_worker(
    client: openai.AsyncOpenAI,
    refusals: list[int],
    *,
    wait_for: float | None = None,
) -> None:
    for _ in range(20):
        try:
            call = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            if wait_for is None:
                await call
            else:
                await asyncio.wait_for(call, wait_for)
        except openai.APIStatusError as exc:
            assert refused_by_guard(exc), exc
            refusals.append(1)
            return
        except (openai.APITimeoutError, openai.APIConnectionError, TimeoutError):
            continue


def assert_within_bound(
    fake: FakeProvider, guard: BudgetGuard, refusals: list[int], *, all_sent: bool = False
) -> None:
    assert refusals, "the burst never reached the refuse floor"
    assert spent(fake) <= BOUND, f"provider charged {spent(fake):.2f} > {BOUND:.2f}"
    if all_sent:  # every call reached the provider: they went through up to the floor
        assert spent(fake) >= FLOOR - 0.1 - 1e-9
    # (a call cancelled while still connecting never reached the provider, yet is
    # charged its estimate: the guard cannot tell, and the next poll corrects it)
    assert guard.ledger.reserved(KEY) == 0  # no hold left behind


# -- SDK retries of first attempts answered 500 ------------------------------------------


def test_retries_after_500s_keep_the_bound_threads(fake: FakeProvider, stack: str) -> None:
    fake.fault("chat", status=500, attempt=0)  # every first attempt fails once
    guard = bounded_guard(fake)
    refusals: list[int] = []
    with sync_openai(fake, guard, stack, max_retries=2) as client:
        in_threads([lambda: sync_worker(client, refusals)] * WORKERS)
    assert_within_bound(fake, guard, refusals, all_sent=True)
    retries = [r for r in fake.requests if r.headers.get("x-stainless-retry-count") == "1"]
    assert len(retries) >= 40  # the 500s really were retried
    guard.close()


async def test_retries_after_500s_keep_the_bound_tasks(fake: FakeProvider, stack: str) -> None:
    fake.fault("chat", status=500, attempt=0)
    guard = bounded_guard(fake)
    refusals: list[int] = []
    async with async_openai(fake, guard, stack, max_retries=2) as client:
        await asyncio.gather(*(async_worker(client, refusals) for _ in range(WORKERS)))
    assert_within_bound(fake, guard, refusals, all_sent=True)
    await guard.aclose()


def test_a_retry_that_would_cross_the_floor_is_refused(fake: FakeProvider, stack: str) -> None:
    guard = bounded_guard(fake)
    fake.fault("chat", status=500, times=1)
    gate = threading.Event()

    def dried(*_: Any) -> None:  # after the first decision the key runs down to the floor
        fake.set_key(KEY, usage=LIMIT - FLOOR)
        guard.invalidate(KEY)  # and the guard will see it
        gate.set()

    guard.on_decision = dried
    with sync_openai(fake, guard, stack, max_retries=1) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert gate.is_set() and refused_by_guard(info.value)
    assert fake.count("chat") == 1  # the retry never reached the provider
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


def test_a_retry_after_a_timed_out_attempt_is_held_and_settled(
    fake: FakeProvider, stack: str
) -> None:
    guard = bounded_guard(fake, estimate=0.05)
    # the first attempt always times out; the retry, under the same client timeout, must
    # not: PATIENT (1 s), not QUICK (0.15 s), which a loaded machine's answer can exceed
    fake.fault("chat", delay=HUNG, times=1)
    with sync_openai(fake, guard, stack, max_retries=1, timeout=PATIENT) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    wait_for_spent(fake, 2 * PRICE)  # the provider finishes the first one after HUNG s
    assert fake.count("chat") == 2
    assert spent(fake) == pytest.approx(2 * PRICE)  # the provider finished both
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None
    # the timed-out attempt keeps its estimate, the retry its real cost, until the next poll
    assert belief.remaining == pytest.approx(LIMIT - 0.05 - PRICE)
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


# -- timeouts and cancellations ----------------------------------------------------------


def test_client_timeouts_keep_the_bound_threads(fake: FakeProvider, stack: str) -> None:
    fake.fault("chat", delay=SLOW)  # the provider answers (and bills) after the client gave up
    guard = bounded_guard(fake)
    refusals: list[int] = []
    with sync_openai(fake, guard, stack, timeout=QUICK) as client:
        in_threads([lambda: sync_worker(client, refusals)] * WORKERS)
    settle_down(fake, SLOW)
    assert_within_bound(fake, guard, refusals)
    guard.close()


async def test_client_timeouts_keep_the_bound_tasks(fake: FakeProvider, stack: str) -> None:
    fake.fault("chat", delay=SLOW)
    guard = bounded_guard(fake)
    refusals: list[int] = []
    async with async_openai(fake, guard, stack, timeout=QUICK) as client:
        await asyncio.gather(*(async_worker(client, refusals) for _ in range(WORKERS)))
    await asyncio.to_thread(settle_down, fake, SLOW)
    assert_within_bound(fake, guard, refusals)
    await guard.aclose()


async def test_wait_for_cancellations_keep_the_bound(fake: FakeProvider, stack: str) -> None:
    # cancelled after PATIENT (1 s), the provider answering after HUNG (2 s): with QUICK
    # (0.15 s) a loaded machine cancelled most of 20 concurrent calls before the SDK had
    # handed them to the guard (nothing held, nothing charged), and the burst never
    # reached the floor in 20 calls a worker
    fake.fault("chat", delay=HUNG)
    guard = bounded_guard(fake)
    refusals: list[int] = []
    async with async_openai(fake, guard, stack) as client:
        await asyncio.gather(
            *(async_worker(client, refusals, wait_for=PATIENT) for _ in range(WORKERS))
        )
    await asyncio.to_thread(settle_down, fake, HUNG)
    assert_within_bound(fake, guard, refusals)
    await guard.aclose()


async def test_cancelled_decorated_calls_keep_the_bound(fake: FakeProvider) -> None:
    fake.fault("chat", delay=SLOW)
    guard = bounded_guard(
        fake, source=OpenRouterKey(api_key=KEY, base_url=fake.openrouter_base_url)
    )
    refusals: list[int] = []
    async with openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url, api_key=KEY, max_retries=0, timeout=5.0
    ) as client:

        @guard
        async def ask(model: str) -> Any:
            return await client.chat.completions.create(model=model, messages=MESSAGES)

        async def worker() -> None:
            for _ in range(20):
                try:
                    await asyncio.wait_for(ask(MODEL), QUICK)
                except CreditsExhausted:
                    refusals.append(1)
                    return
                except TimeoutError:
                    continue

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    await asyncio.to_thread(settle_down, fake, SLOW)
    assert refusals and spent(fake) <= BOUND
    assert guard.ledger.reserved(None) == 0
    await guard.aclose()


def test_timed_out_decorated_calls_keep_the_bound(fake: FakeProvider) -> None:
    fake.fault("chat", delay=SLOW)
    guard = bounded_guard(
        fake, source=OpenRouterKey(api_key=KEY, base_url=fake.openrouter_base_url)
    )
    refusals: list[int] = []
    with openai.OpenAI(
        base_url=fake.openrouter_base_url, api_key=KEY, max_retries=0, timeout=QUICK
    ) as client:

        @guard
        def ask(model: str) -> Any:
            return client.chat.completions.create(model=model, messages=MESSAGES)

        def worker() -> None:
            for _ in range(20):
                try:
                    ask(MODEL)
                except CreditsExhausted:
                    refusals.append(1)
                    return
                except openai.APITimeoutError:
                    continue

        in_threads([worker] * WORKERS)
    settle_down(fake, SLOW)
    assert refusals and spent(fake) <= BOUND
    assert guard.ledger.reserved(None) == 0
    guard.close()


def test_a_connect_error_releases_the_hold(stack: str) -> None:
    """Nothing sent (no server listening): nothing charged."""
    guard = BudgetGuard(OpenRouterKey(api_key=KEY, base_url="http://127.0.0.1:9"), estimate=0.5)
    guard.ledger.set_balance(KEY, _balance(10.0))
    guard.ledger.set_balance(None, _balance(10.0))
    with openai.OpenAI(
        base_url="http://127.0.0.1:9/api/v1",
        api_key=KEY,
        max_retries=0,
        http_client=guard.client() if stack == "httpx" else cg2.client(guard),
    ) as client:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None and belief.remaining == 10.0
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


def _balance(remaining: float) -> Any:
    from creditguard import Balance

    return Balance(remaining=remaining, source="test")


# -- streams dropped unread ---------------------------------------------------------------


def _dropped_streams_setup(fake: FakeProvider) -> BudgetGuard:
    # an estimate that makes four abandoned holds refuse the fifth call while they stand
    return bounded_guard(fake, estimate=0.12)


def _check_dropped(fake: FakeProvider, guard: BudgetGuard) -> None:
    assert fake.count("chat") == 4
    assert guard.ledger.reserved(KEY) == 0  # charged by the finalizer, not left to expire
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None
    assert belief.remaining == pytest.approx(LIMIT - 4 * 0.12)  # the estimates, charged


def test_streams_dropped_unread_are_charged_sync(fake: FakeProvider, stack: str) -> None:
    guard = _dropped_streams_setup(fake)
    with sync_openai(fake, guard, stack) as client:
        for _ in range(4):
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            del stream
        gc.collect()
        _check_dropped(fake, guard)
        guard.invalidate(KEY)  # the next poll brings the provider's figure: 0.04 spent
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # not refused
    assert spent(fake) == pytest.approx(5 * PRICE)
    guard.close()


async def test_streams_dropped_unread_are_charged_async(fake: FakeProvider, stack: str) -> None:
    guard = _dropped_streams_setup(fake)
    async with async_openai(fake, guard, stack) as client:
        for _ in range(4):
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
            del stream
        gc.collect()
        _check_dropped(fake, guard)
        guard.invalidate(KEY)  # the next poll brings the provider's figure: 0.04 spent
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert spent(fake) == pytest.approx(5 * PRICE)
    await guard.aclose()


def test_a_raw_response_never_read_is_charged(fake: FakeProvider, stack: str) -> None:
    """A plain httpx/httpx2 response opened with stream=True and dropped."""
    guard = bounded_guard(fake, estimate=0.2)
    if stack == "httpx":
        http: Any = guard.client(transport=httpx.HTTPTransport(verify=False))
    else:
        http = cg2.client(guard, transport=httpx2.HTTPTransport(verify=False))
    body = {"model": MODEL, "messages": MESSAGES}
    with http:
        request = http.build_request(
            "POST",
            fake.openrouter_base_url + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        )
        response = http.send(request, stream=True)
        assert guard.ledger.reserved(KEY) == pytest.approx(0.2)
        del response
        gc.collect()
        assert guard.ledger.reserved(KEY) == 0
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(LIMIT - 0.2)
    guard.close()


# -- the Anthropic middleware ------------------------------------------------------------


CLAUDE = "claude-faults"
CLAUDE_ARGS: dict[str, Any] = {
    "model": CLAUDE,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
}


def anthropic_setup(fake: FakeProvider) -> tuple[BudgetGuard, FixedBudget]:
    fake.add_key(KEY, credits=10.0)  # the provider's own account is not the bound here
    budget = FixedBudget(LIMIT)
    guard = bounded_guard(fake, source=budget)
    fake.fault("messages", status=500, attempt=0)  # every call succeeds on its retry
    return guard, budget


def check_anthropic(fake: FakeProvider, budget: FixedBudget, refusals: list[int]) -> None:
    assert refusals
    assert spent(fake) <= BOUND
    booked = budget.fetch(None).used
    assert booked == pytest.approx(spent(fake))  # every call that succeeded is booked


def test_anthropic_middleware_books_calls_that_succeed_on_a_retry(fake: FakeProvider) -> None:
    guard, budget = anthropic_setup(fake)
    refusals: list[int] = []
    with anthropic.Anthropic(
        base_url=fake.anthropic_base_url,
        api_key=KEY,
        middleware=[guard.anthropic_middleware()],
        max_retries=2,
    ) as client:

        def worker() -> None:
            for _ in range(20):
                try:
                    client.messages.create(**CLAUDE_ARGS)
                except CreditsExhausted:
                    refusals.append(1)
                    return

        in_threads([worker] * WORKERS)
    check_anthropic(fake, budget, refusals)
    guard.close()


async def test_anthropic_middleware_books_calls_that_succeed_on_a_retry_async(
    fake: FakeProvider,
) -> None:
    guard, budget = anthropic_setup(fake)
    refusals: list[int] = []
    async with anthropic.AsyncAnthropic(
        base_url=fake.anthropic_base_url,
        api_key=KEY,
        middleware=[guard.anthropic_middleware()],
        max_retries=2,
    ) as client:

        async def worker() -> None:
            for _ in range(20):
                try:
                    await client.messages.create(**CLAUDE_ARGS)
                except CreditsExhausted:
                    refusals.append(1)
                    return

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    check_anthropic(fake, budget, refusals)
    await guard.aclose()


def test_anthropic_middleware_estimates_like_the_transport(fake: FakeProvider) -> None:
    fake.add_key(KEY, credits=10.0)
    prompt, completion = 1e-4, 1e-3
    pricing = {"claude-*": {"prompt": prompt, "completion": completion}}
    guard = bounded_guard(fake, source=FixedBudget(10.0), pricing=pricing)
    fake.fault("messages", delay=1.0, times=1)
    held: list[float] = []

    def watch() -> None:
        # looked at once the provider has the request (the hold was taken before it was
        # sent) and holds it for 1 s; was: 0.15 s after the thread started, which a loaded
        # machine could reach before the request was sent or after it was answered
        deadline = time.monotonic() + 10
        while fake.count("messages") < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        held.append(_held(guard))

    with anthropic.Anthropic(
        base_url=fake.anthropic_base_url,
        api_key=KEY,
        middleware=[guard.anthropic_middleware()],
        max_retries=0,
    ) as client:
        watcher = threading.Thread(target=watch)
        watcher.start()
        client.messages.create(**CLAUDE_ARGS)
        watcher.join()
        text = json.dumps(CLAUDE_ARGS, ensure_ascii=False)
        assert held == [pytest.approx(len(text) / 4 * prompt + 16 * completion)]
        # a stream is settled from its message_start and message_delta usage
        with client.messages.stream(**CLAUDE_ARGS) as helper:
            final = helper.get_final_message()
    cost = final.usage.input_tokens * prompt + final.usage.output_tokens * completion
    first = 16 * completion + final.usage.input_tokens * prompt  # the same call, not streamed
    belief = guard.check(estimate=0).balance
    assert belief is not None
    assert belief.remaining == pytest.approx(10.0 - first - cost, rel=0.05)
    assert guard.ledger.reserved(None) == 0
    guard.close()


def _held(guard: BudgetGuard) -> float:
    return guard.ledger.reserved(None)


# -- provider refusals read precisely ------------------------------------------------------


def _openrouter_error(status: int, reason: str | None, source: str, **meta: Any) -> bytes:
    metadata = {"limit_source": source, **meta}
    if reason is not None:
        metadata["reason"] = reason
    return json.dumps(
        {"error": {"code": status, "message": "refused", "metadata": metadata}}
    ).encode()


def test_an_in_flight_budget_402_is_transient(fake: FakeProvider, stack: str) -> None:
    guard = bounded_guard(fake)
    body = _openrouter_error(402, "in_flight_budget_exhausted", "openrouter_in_flight_budget")
    fake.fault("chat", status=402, body=body, headers={"Retry-After": "3"}, times=1)
    with sync_openai(fake, guard, stack) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert info.value.status_code == 402
        assert info.value.response.headers["retry-after"] == "3"  # as it came
        assert info.value.response.headers["x-creditguard-decision"] == "allow"
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # not exhausted
    assert fake.count("chat") == 2
    guard.close()


@pytest.mark.parametrize(
    ("status", "source"),
    [
        (402, "openrouter_credits"),
        (403, "openrouter_key_limit"),
        (403, "openrouter_guardrail_budget"),
        (403, "openrouter_workspace_budget"),
    ],
)
def test_a_budget_refusal_marks_the_credential_exhausted(
    fake: FakeProvider, stack: str, status: int, source: str
) -> None:
    guard = bounded_guard(fake)
    resets = "2030-01-01T00:00:00Z"
    body = _openrouter_error(status, None, source, resets_at=resets)
    fake.fault("chat", status=status, body=body, times=1)
    with sync_openai(fake, guard, stack) as client:
        with pytest.raises(openai.APIStatusError) as first:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert first.value.status_code == status
        with pytest.raises(openai.APIStatusError) as second:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert refused_by_guard(second.value) and fake.count("chat") == 1
    balance = guard.check(credential=KEY, estimate=0).balance
    assert balance is not None and balance.remaining <= 0
    if status == 403:
        assert balance.resets_at == 1893456000.0  # 2030-01-01 UTC
    guard.close()


def test_a_403_about_something_else_marks_nothing(fake: FakeProvider) -> None:
    guard = bounded_guard(fake)
    body = _openrouter_error(403, None, "openrouter_moderation")
    fake.fault("chat", status=403, body=body, times=1)
    with sync_openai(fake, guard, "httpx") as client:
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert fake.count("chat") == 2
    guard.close()


# -- bad numbers stay inside -------------------------------------------------------------


@pytest.mark.parametrize("cost", ["1e300", "1e308", "1e400", "1" + "0" * 400])
def test_an_absurd_usage_cost_charges_the_estimate(
    fake: FakeProvider, stack: str, cost: str
) -> None:
    guard = bounded_guard(fake, estimate=0.05)
    body = (
        '{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[],'
        '"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":' + cost + "}}"
    ).encode()
    fake.fault("chat", status=200, body=body, times=2)
    with sync_openai(fake, guard, stack) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=False)
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(LIMIT - 2 * 0.05)
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


@pytest.mark.parametrize(
    "build",
    [
        lambda: Policy(refuse_below=10**400),
        lambda: Policy(warn_below=10**400),
        lambda: Policy(max_stale=10**400),
        lambda: BudgetGuard(FixedBudget(1.0), estimate=10**400),
        lambda: BudgetGuard(FixedBudget(1.0), hold_timeout=10**400),
        lambda: BudgetGuard(FixedBudget(1.0), pricing={"m": {"prompt": 10**400, "completion": 0}}),
    ],
)
def test_huge_thresholds_are_config_errors(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


def test_a_huge_cost_given_by_hand_is_a_value_error() -> None:
    guard = BudgetGuard(FixedBudget(1.0))
    with pytest.raises(ValueError, match="finite"):
        guard.record(10**400)
    reservation = guard.reserve(estimate=0.1)
    with pytest.raises(ValueError, match="finite"):
        reservation.settle(10**400)


@pytest.mark.parametrize("cost", [1e300, 1e13, 10**12, -1, float("nan"), "0.5"])
def test_a_cost_past_max_cost_or_bad_is_refused_and_nothing_is_charged(cost: Any) -> None:
    # (record(1e300) left the balance at -1e300 for the period, and over Redis
    # broke the store's counter: the spend was dropped; a bad settle() closed
    # the reservation before it raised, leaving its hold to expire unsettled)
    guard = BudgetGuard(FixedBudget(10.0), Policy(refuse_below=1.0))
    with pytest.raises(ConfigError, match="cost") as info:
        guard.record(cost)
    assert "finite number >= 0" in str(info.value)
    assert guard.check("m").available == 10.0
    reservation = guard.reserve("m", estimate=0.5)
    with pytest.raises(ConfigError, match="cost"):
        reservation.settle(cost)
    assert guard.ledger.reserved(None) == 0.5  # still held, still open
    reservation.settle(2.0)  # the right figure, afterwards
    assert guard.ledger.reserved(None) == 0.0
    assert guard.check("m").available == 8.0


def test_the_ledger_holds_a_cost_past_max_cost_at_max_cost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (what reaches the ledger another way is held at the cap, logged: a figure
    # past it would overflow the shared store's counters and lose the spend)
    guard = BudgetGuard(FixedBudget(1e10, unit="credits"), Policy())
    guard.ledger.record(None, 1e300)
    assert guard.check("m").available == pytest.approx(1e10 - 1e9)
    assert "not believable" in caplog.text


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_body_nested_thousands_deep_is_forwarded_unread(
    fake: FakeProvider, stack: str, where: str
) -> None:
    guard = bounded_guard(fake)
    deep = "[" * 100_000 + "]" * 100_000
    if where == "before":
        text = '{"messages":' + deep + ',"model":"' + MODEL + '"}'
    else:
        text = '{"model":"' + MODEL + '","messages":' + deep + "}"
    if stack == "httpx":
        http: Any = guard.client(transport=httpx.HTTPTransport(verify=False))
    else:
        http = cg2.client(guard, transport=httpx2.HTTPTransport(verify=False))
    with http:
        response = http.post(
            fake.openrouter_base_url + "/chat/completions",
            content=text.encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
    assert response.status_code == 400  # the provider's answer, not a RecursionError here
    assert fake.count("chat") == 1
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


# -- streams charged what passed (issue 13) ------------------------------------------------


PRICED = {MODEL: {"prompt": 1e-4, "completion": 1e-3}}


def test_a_stream_without_usage_is_charged_what_passed(fake: FakeProvider, stack: str) -> None:
    fake.stream_usage_always = False  # OpenAI's way: usage only when asked
    guard = bounded_guard(fake, pricing=PRICED, estimate=0.3)
    with sync_openai(fake, guard, stack) as client:
        chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    sent = fake.requests[-1]
    text = json.dumps(sent.json, separators=(",", ":"))  # (openai sends compact JSON)
    chars = len(fake.reply_text)
    expected = len(text) / 4 * 1e-4 + chars / 4 * 1e-3
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None
    assert belief.remaining == pytest.approx(LIMIT - expected, rel=1e-3)
    guard.close()


def test_a_stream_without_usage_and_no_price_is_charged_its_estimate(fake: FakeProvider) -> None:
    fake.stream_usage_always = False
    guard = bounded_guard(fake, estimate=0.3)
    with sync_openai(fake, guard, "httpx2") as client:
        list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(LIMIT - 0.3)
    guard.close()


@pytest.mark.parametrize("options", [None, {"include_obfuscation": False}])
async def test_stream_usage_asks_for_the_usage(
    fake: FakeProvider, stack: str, options: dict[str, Any] | None
) -> None:
    fake.stream_usage_always = False
    guard = bounded_guard(fake, stream_usage=True, estimate=0.3)
    extra: dict[str, Any] = {} if options is None else {"stream_options": options}
    async with async_openai(fake, guard, stack) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, **extra
        )
        chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    sent = fake.requests[-1].json
    assert sent["stream_options"] == {**(options or {}), "include_usage": True}
    belief = (await guard.acheck(credential=KEY, estimate=0)).balance
    assert belief is not None and belief.remaining == pytest.approx(LIMIT - PRICE)
    await guard.aclose()


def test_stream_usage_is_off_by_default(fake: FakeProvider) -> None:
    guard = bounded_guard(fake)
    with sync_openai(fake, guard, "httpx") as client:
        list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert "stream_options" not in fake.requests[-1].json
    guard.close()


@pytest.mark.parametrize("stack", STACKS)
def test_an_sse_body_in_memory_is_settled(stack: str) -> None:
    events = (
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"cost":0.02}}\n\n'
        b"data: [DONE]\n\n"
    )
    lib: Any = httpx if stack == "httpx" else httpx2
    transport = lib.MockTransport(
        lambda request: lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=events
        )
    )
    guard = BudgetGuard(FixedBudget(1.0), estimate=0.3)
    http = (
        guard.client(transport=transport)
        if stack == "httpx"
        else cg2.client(guard, transport=transport)
    )
    with http:
        response = http.post(
            "http://test/v1/chat/completions", json={"model": MODEL, "stream": True}
        )
        assert response.status_code == 200
    belief = guard.check(estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(1.0 - 0.02)
    assert guard.ledger.reserved(None) == 0


def test_a_reservation_dropped_open_is_charged() -> None:
    guard = BudgetGuard(FixedBudget(1.0), estimate=0.25)
    reservation = guard.reserve("m")
    assert guard.ledger.reserved(None) == pytest.approx(0.25)
    del reservation
    gc.collect()
    assert guard.ledger.reserved(None) == 0
    belief = guard.check(estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(0.75)
    settled = guard.reserve("m")
    settled.settle(0.1)
    del settled
    gc.collect()  # settled already: its finalizer charges nothing more
    belief = guard.check(estimate=0).balance
    assert belief is not None and belief.remaining == pytest.approx(0.65)


def test_a_fixed_budget_of_10_to_the_400_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        FixedBudget(10**400)


@pytest.mark.parametrize("stack", STACKS)
def test_a_max_tokens_of_10_to_the_400_is_held_at_the_cap_and_refused(stack: str) -> None:
    lib: Any = httpx if stack == "httpx" else httpx2
    seen: list[bytes] = []

    def answer(request: Any) -> Any:
        seen.append(request.content)
        return lib.Response(200, json={"usage": {"cost": 0.1}})

    guard = BudgetGuard(
        FixedBudget(10.0), Policy(refuse_below=1.0), pricing={"m": {"prompt": 0, "completion": 1}}
    )
    transport = lib.MockTransport(answer)
    http = (
        guard.client(transport=transport)
        if stack == "httpx"
        else cg2.client(guard, transport=transport)
    )
    body = b'{"model":"m","max_tokens":' + b"9" * 400 + b"}"
    with http:
        response = http.post("http://test/v1/chat/completions", content=body)
        fits = http.post("http://test/v1/chat/completions", content=b'{"model":"m","max_tokens":2}')
    assert response.status_code == 402  # the guard's refusal, not an OverflowError
    assert fits.status_code == 200 and len(seen) == 1
    assert guard.ledger.reserved(None) == 0


def test_anthropic_middleware_refuses_a_retry_that_would_cross_the_floor(
    fake: FakeProvider,
) -> None:
    fake.add_key(KEY, credits=10.0)
    budget = FixedBudget(LIMIT)
    guard = bounded_guard(fake, source=budget)
    fake.fault("messages", status=500, times=1)

    def dried(*_: Any) -> None:  # after the first decision the budget runs down to the floor
        if budget.fetch(None).used == 0:
            budget.record(None, LIMIT - FLOOR)
            guard.invalidate()

    guard.on_decision = dried
    with anthropic.Anthropic(
        base_url=fake.anthropic_base_url,
        api_key=KEY,
        middleware=[guard.anthropic_middleware()],
        max_retries=2,
    ) as client:
        with pytest.raises(CreditsExhausted) as info:
            client.messages.create(**CLAUDE_ARGS)
    assert "SDK retry" in info.value.decision.reason
    assert fake.count("messages") == 1  # the retry never reached the provider
    assert guard.ledger.reserved(None) == 0
    guard.close()


class _TimeoutThenRefused(httpx.BaseTransport):
    """The first attempt times out reading (sent: maybe billed); the SDK's
    retry cannot connect (nothing sent)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-stainless-retry-count", "0") == "0":
            raise httpx.ReadTimeout("read timed out", request=request)
        raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize("surface", ["decorator", "reserve"])
def test_a_retry_that_cannot_connect_after_a_timed_out_attempt_is_charged(surface: str) -> None:
    # (the connect error of the last attempt read as "nothing was sent": the
    # hold was released, though the first attempt may have been billed)
    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="sk-test-not-a-real-key",
        http_client=httpx.Client(transport=_TimeoutThenRefused()),
        max_retries=1,
    )
    guard = BudgetGuard(FixedBudget(1.0), Policy(refuse_below=0.1), estimate=0.2)

    def call() -> Any:
        return client.chat.completions.create(model=MODEL, messages=MESSAGES)

    with pytest.raises(openai.APIConnectionError):
        if surface == "decorator":
            guard(call)()
        else:
            with guard.reserve(MODEL):
                call()
    assert guard.check(MODEL).available == pytest.approx(0.8)  # the estimate, charged
    assert guard.ledger.reserved(None) == 0
    # a first attempt that cannot connect was not sent: released, as before
    with pytest.raises(httpx.ConnectError), guard.reserve(MODEL):
        raise httpx.ConnectError("refused", request=httpx.Request("POST", "http://x"))
    assert guard.check(MODEL).available == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (402, b'{"error":{"code":402,"message":"Insufficient credits"}}'),
        (403, b'{"error":{"code":403,"message":"Key limit exceeded","metadata":'
              b'{"limit_source":"key_limit"}}}'),
    ],
)  # fmt: skip
@pytest.mark.parametrize("surface", ["decorator", "reserve"])
def test_a_providers_refusal_for_credits_marks_the_key_exhausted_on_every_surface(
    fake: FakeProvider, surface: str, status: int, body: bytes
) -> None:
    # (the transport did; a decorated call or a reservation let the next calls
    # through on the cached figure until the next poll)
    key = "sk-or-v1-refused-000000000000000000000"
    fake.add_key(key, limit=10.0)
    guard = BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), Policy(refuse_below=1.0))
    client = openai.OpenAI(base_url=fake.openrouter_base_url, api_key=key, max_retries=0)

    def call() -> Any:
        return client.chat.completions.create(model=MODEL, messages=MESSAGES)

    fake.fault("chat", status=status, body=body, times=1)
    with pytest.raises(openai.APIStatusError):
        if surface == "decorator":
            guard.protect(credential_arg="k")(lambda k: call())(key)
        else:
            with guard.reserve(MODEL, credential=key):
                call()
    d = guard.check(MODEL, credential=key)
    assert d.action == "refuse" and d.available is not None and d.available <= 0
    # a 403 that is not about credits (a moderation refusal) marks nothing
    other = "sk-or-v1-moderated-0000000000000000000"
    fake.add_key(other, limit=10.0)
    fake.fault("chat", status=403, body=b'{"error":{"message":"flagged by moderation"}}')
    with pytest.raises(openai.APIStatusError), guard.reserve(MODEL, credential=other):
        openai.OpenAI(
            base_url=fake.openrouter_base_url, api_key=other, max_retries=0
        ).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert guard.check(MODEL, credential=other).action == "allow"
    guard.close()
