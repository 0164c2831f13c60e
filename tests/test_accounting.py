"""Accounting between polls (issue 4), end to end against the loopback fake provider.

Holds bound the overshoot of a burst; real costs from JSON bodies and SSE streams
replace the holds to the cent; calls that failed after they were sent (cancelled,
dropped) are charged their estimate, refused and provider-refused calls release them; a
refresh keeps the holds of calls in flight; FixedBudget is drawn down by settled costs;
the decorator reads the ``usage.cost`` of an openai ``ChatCompletion``.

The balance the guard believes in is read with ``check(estimate=0)``: the cached
snapshot less what was settled since. The truth is the fake's ``limit - usage``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import openai._base_client
import pytest
from openai.types.chat import ChatCompletion

import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, Policy
from creditguard.sources import FixedBudget, OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-ACCOUNTINGTESTKEY-0123456789abcdef"
LIMIT = 10.0  # B: the key's own limit, what the guard sees as remaining
FLOOR = 1.0  # F: refuse_below
MODEL = "acct/model"
MESSAGES = [{"role": "user", "content": "Say hi."}]
AUTH = {"Authorization": f"Bearer {KEY}"}
PRICE = 0.0123  # what the fake charges per call (and reports as usage.cost)
ESTIMATE = 0.05  # the guard's estimate: deliberately not the price
TIMEOUT = 5.0
STACKS = ["httpx", "httpx2"]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.add_key(KEY, limit=LIMIT)
        provider.prices[MODEL] = PRICE
        yield provider
        if provider.stream_gate is not None:
            provider.stream_gate.set()  # no stream thread left waiting


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_guard(fake: FakeProvider, **kwargs: Any) -> BudgetGuard:
    """A guard judging each call on the fake's ``GET /key`` of the call's key; the
    balance is fetched once (long ttl) unless a test says otherwise."""
    policy = kwargs.pop("policy", Policy(refuse_below=FLOOR))
    kwargs.setdefault("ttl", 600.0)
    kwargs.setdefault("estimate", ESTIMATE)
    return BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy, **kwargs)


def http_client(guard: BudgetGuard, base_url: str) -> httpx.Client:
    return guard.client(transport=httpx.HTTPTransport(verify=False), base_url=base_url)


def ahttp_client(guard: BudgetGuard, base_url: str) -> httpx.AsyncClient:
    return guard.async_client(transport=httpx.AsyncHTTPTransport(verify=False), base_url=base_url)


def sync_openai(fake: FakeProvider, guard: BudgetGuard, stack: str = "httpx") -> openai.OpenAI:
    if stack == "httpx":
        http: Any = guard.client(transport=httpx.HTTPTransport(verify=False))
    else:
        http = cg2.client(guard, transport=httpx2.HTTPTransport(verify=False))
    return openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=http,
        max_retries=0,
        timeout=TIMEOUT,
    )


def async_openai(
    fake: FakeProvider, guard: BudgetGuard, stack: str = "httpx"
) -> openai.AsyncOpenAI:
    if stack == "httpx":
        http: Any = guard.async_client(transport=httpx.AsyncHTTPTransport(verify=False))
    else:
        http = cg2.async_client(guard, transport=httpx2.AsyncHTTPTransport(verify=False))
    return openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=http,
        max_retries=0,
        timeout=TIMEOUT,
    )


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, **extra}


def belief(guard: BudgetGuard, credential: str | None = KEY) -> float:
    """What the guard believes is left: the cached balance less what was settled."""
    balance = guard.check(credential=credential, estimate=0).balance
    assert balance is not None
    return balance.remaining


async def abelief(guard: BudgetGuard, credential: str | None = KEY) -> float:
    balance = (await guard.acheck(credential=credential, estimate=0)).balance
    assert balance is not None
    return balance.remaining


def truth(fake: FakeProvider) -> float:
    """What the provider says is left of the key's limit."""
    return LIMIT - fake.key(KEY).usage


def exact(value: float) -> Any:
    return pytest.approx(value, abs=1e-9)


# -- 1, 2. a burst of 100 concurrent calls cannot spend past the floor -----------------

BURST = 100
BURST_PRICE = 0.25  # each call's estimate equals its real cost
BOUND = LIMIT - FLOOR + BURST_PRICE  # B - F + one estimate
CALL_DELAY = 0.3  # every call stays in flight this long, so the whole burst overlaps


def _burst_guard(fake: FakeProvider, reserve: bool) -> BudgetGuard:
    fake.add_key(KEY, limit=LIMIT)  # a fresh account for each run
    fake.prices[MODEL] = BURST_PRICE
    return make_guard(fake, estimate=BURST_PRICE, reserve=reserve)


async def _async_burst(fake: FakeProvider, reserve: bool) -> tuple[float, list[int]]:
    guard = _burst_guard(fake, reserve)
    await guard.acheck(credential=KEY)  # the balance is cached before the burst
    async with ahttp_client(guard, fake.openrouter_base_url) as http:

        async def one() -> int:
            response = await http.post("/chat/completions", headers=AUTH, json=chat_body())
            return response.status_code

        statuses = await asyncio.gather(*(one() for _ in range(BURST)))
    await guard.aclose()
    assert guard.ledger.reserved(KEY) == 0
    return fake.key(KEY).usage, list(statuses)


def _thread_burst(fake: FakeProvider, reserve: bool) -> tuple[float, list[int]]:
    guard = _burst_guard(fake, reserve)
    guard.check(credential=KEY)
    statuses: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(BURST)
    with http_client(guard, fake.openrouter_base_url) as http:

        def one() -> None:
            try:
                start.wait(timeout=TIMEOUT)
                response = http.post("/chat/completions", headers=AUTH, json=chat_body())
                statuses.append(response.status_code)
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(BURST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=3 * TIMEOUT)
    guard.close()
    assert not errors
    assert guard.ledger.reserved(KEY) == 0
    return fake.key(KEY).usage, statuses


def _check_overshoot(
    kind: str, held: tuple[float, list[int]], unheld: tuple[float, list[int]]
) -> None:
    (charged, statuses), (overspent, unheld_statuses) = held, unheld
    print(
        f"\n{kind} burst of {BURST} calls at {BURST_PRICE} each, B={LIMIT:g} F={FLOOR:g}: "
        f"charged {charged:.2f} with reservations, {overspent:.2f} without "
        f"(bound B - F + estimate = {BOUND:.2f})"
    )
    assert len(statuses) == len(unheld_statuses) == BURST
    # with holds: every call is judged on what the calls in flight leave, so the burst
    # stops at the floor (36 calls of 0.25 leave exactly 1.0); the rest are refused
    # by the guard before reaching the provider
    assert charged <= BOUND + 1e-9
    assert charged == exact(LIMIT - FLOOR)
    assert statuses.count(200) == 36 and statuses.count(402) == BURST - 36
    # without: everyone sees 10.0 left, and only the provider's own limit stops them
    assert overspent > BOUND
    assert overspent == exact(LIMIT)
    assert unheld_statuses.count(200) == 40


async def test_overshoot_async_burst_is_bounded_by_holds(fake: FakeProvider) -> None:
    fake.fault("chat", delay=CALL_DELAY)
    held = await _async_burst(fake, reserve=True)
    unheld = await _async_burst(fake, reserve=False)
    _check_overshoot("async", held, unheld)


def test_overshoot_threaded_burst_is_bounded_by_holds(fake: FakeProvider) -> None:
    fake.fault("chat", delay=CALL_DELAY)
    held = _thread_burst(fake, reserve=True)
    unheld = _thread_burst(fake, reserve=False)
    _check_overshoot("threads", held, unheld)


# -- 3. streams settle to the cent ------------------------------------------------------


def _read_sse(http: httpx.Client) -> str:
    """One complete streamed call over raw httpx: the concatenated text."""
    parts = []
    with http.stream("POST", "/chat/completions", headers=AUTH, json=chat_body(stream=True)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                parts += [c["delta"].get("content") or "" for c in event["choices"]]
    return "".join(parts)


def test_complete_streams_settle_to_the_cent_sync(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    with http_client(guard, fake.openrouter_base_url) as http:
        for _ in range(3):
            assert _read_sse(http) == fake.reply_text
    with sync_openai(fake, guard, stack) as client:
        for _ in range(2):
            with client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            ) as chunks:
                last = list(chunks)[-1]
            assert last.usage is not None and last.usage.model_extra["cost"] == PRICE
    assert fake.count("chat") == 5 and fake.count("key") == 1
    assert fake.key(KEY).usage == exact(5 * PRICE)
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == exact(truth(fake))
    guard.close()


async def test_complete_streams_settle_to_the_cent_async(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    async with ahttp_client(guard, fake.openrouter_base_url) as http:
        for _ in range(3):
            async with http.stream(
                "POST", "/chat/completions", headers=AUTH, json=chat_body(stream=True)
            ) as r:
                lines = [line async for line in r.aiter_lines()]
            assert "data: [DONE]" in lines
    async with async_openai(fake, guard, stack) as client:
        for _ in range(2):
            chunks = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
            async with chunks:
                got = [c async for c in chunks]
            assert got[-1].usage is not None and got[-1].usage.model_extra["cost"] == PRICE
    assert fake.count("chat") == 5
    assert guard.ledger.reserved(KEY) == 0
    assert await abelief(guard) == exact(truth(fake))
    await guard.aclose()


def test_streams_closed_early_are_charged_their_estimate(fake: FakeProvider, stack: str) -> None:
    """The fake charges the full price when a stream starts; a client that closes the
    stream after the first chunk never sees the usage event, so the guard charges the
    call's estimate (documented: a cut stream is never free)."""
    guard = make_guard(fake)
    gate = fake.stream_gate = threading.Event()  # streams stop after their first chunk
    with http_client(guard, fake.openrouter_base_url) as http:
        with http.stream(
            "POST", "/chat/completions", headers=AUTH, json=chat_body(stream=True)
        ) as r:
            for line in r.iter_lines():
                if '"content"' in line:
                    break  # the first chunk: close here
            assert guard.ledger.reserved(KEY) == exact(ESTIMATE)
        assert guard.ledger.reserved(KEY) == 0
    with sync_openai(fake, guard, stack) as client:
        with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as s:
            first = next(iter(s))
            assert first.choices[0].delta.content
    n_closed = 2
    assert guard.ledger.reserved(KEY) == 0
    assert fake.key(KEY).usage == exact(n_closed * PRICE)
    assert belief(guard) == exact(LIMIT - n_closed * ESTIMATE)

    gate.set()  # complete streams from here on: settled from their usage.cost
    fake.stream_gate = None
    with http_client(guard, fake.openrouter_base_url) as http:
        assert _read_sse(http) == fake.reply_text
    assert belief(guard) == exact(LIMIT - n_closed * ESTIMATE - PRICE)
    guard.close()


async def test_async_stream_closed_early_is_charged_its_estimate(
    fake: FakeProvider, stack: str
) -> None:
    guard = make_guard(fake)
    fake.stream_gate = threading.Event()
    async with async_openai(fake, guard, stack) as client:
        s = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        first = await s.__anext__()
        assert first.choices[0].delta.content
        assert guard.ledger.reserved(KEY) == exact(ESTIMATE)
        await s.close()
    assert guard.ledger.reserved(KEY) == 0
    assert fake.key(KEY).usage == exact(PRICE)
    assert await abelief(guard) == exact(LIMIT - ESTIMATE)
    await guard.aclose()


async def test_async_stream_read_twice_is_settled_once(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    consumed = (httpx.StreamConsumed, httpx2.StreamConsumed)
    async with async_openai(fake, guard, stack) as client:
        for _ in range(2):
            s = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            first = [c async for c in s]
            again = [c async for c in s]  # the SDK's iterator is spent: nothing more
            assert first and not again
            with pytest.raises(consumed):
                await s.response.aread()
            await s.close()
            await s.close()
        # and at the HTTP level: a streamed body read, read again and closed twice
        http = client._client
        request = http.build_request(
            "POST",
            fake.openrouter_base_url + "/chat/completions",
            headers=AUTH,
            json=chat_body(stream=True),
        )
        response = await http.send(request, stream=True)
        body = await response.aread()
        assert await response.aread() == body and b'"cost"' in body
        await response.aclose()
        await response.aclose()
    assert fake.count("chat") == 3
    assert guard.ledger.reserved(KEY) == 0
    assert await abelief(guard) == exact(LIMIT - 3 * PRICE)
    assert await abelief(guard) == exact(truth(fake))
    await guard.aclose()


# -- 4. non-streamed: usage.cost, else tokens x prices ------------------------------------


def test_json_bodies_settle_usage_cost_exactly(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    with http_client(guard, fake.openrouter_base_url) as http:
        for _ in range(3):
            r = http.post("/chat/completions", headers=AUTH, json=chat_body())
            assert r.json()["usage"]["cost"] == PRICE
    with sync_openai(fake, guard, stack) as client:
        for _ in range(2):
            done = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert done.usage is not None
    assert fake.count("chat") == 5
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == exact(LIMIT - 5 * PRICE)
    assert belief(guard) == exact(truth(fake))
    guard.close()


async def test_json_bodies_settle_usage_cost_exactly_async(fake: FakeProvider) -> None:
    guard = make_guard(fake)
    async with ahttp_client(guard, fake.openrouter_base_url) as http:
        for _ in range(3):
            r = await http.post("/chat/completions", headers=AUTH, json=chat_body())
            assert r.status_code == 200
    assert await abelief(guard) == exact(LIMIT - 3 * PRICE)
    await guard.aclose()


P_IN, P_OUT = 1e-5, 3e-5  # per token: deliberately not what the fake charges per call
CLAUDE = "claude-test"


def test_anthropic_tokens_times_prices(fake: FakeProvider) -> None:
    guard = make_guard(fake, pricing={"claude-*": {"prompt": P_IN, "completion": P_OUT}})
    fake.prices[CLAUDE] = 0.5  # the fake's own charge is not what the guard can know
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {"model": CLAUDE, "max_tokens": 12, "messages": MESSAGES}
    debits = []
    with cg2.client(
        guard, transport=httpx2.HTTPTransport(verify=False), base_url=fake.anthropic_base_url
    ) as http:
        for _ in range(2):
            before = belief(guard)
            r = http.post("/v1/messages", headers=headers, json=body)
            usage = r.json()["usage"]
            assert "cost" not in usage and usage["input_tokens"] > 0
            debits.append(usage["input_tokens"] * P_IN + usage["output_tokens"] * P_OUT)
            assert before - belief(guard) == exact(debits[-1])
    with anthropic.Anthropic(
        base_url=fake.anthropic_base_url,
        api_key=KEY,
        http_client=cg2.client(guard, transport=httpx2.HTTPTransport(verify=False)),
        max_retries=0,
        timeout=TIMEOUT,
    ) as client:
        before = belief(guard)
        message = client.messages.create(**body)  # type: ignore[call-overload]
        debits.append(message.usage.input_tokens * P_IN + message.usage.output_tokens * P_OUT)
        assert before - belief(guard) == exact(debits[-1])
        # streamed: input tokens in message_start, output tokens in message_delta
        before = belief(guard)
        with client.messages.stream(**body) as events:  # type: ignore[arg-type]
            final = events.get_final_message()
        assert final.usage.output_tokens == 12
        debits.append(final.usage.input_tokens * P_IN + final.usage.output_tokens * P_OUT)
        assert before - belief(guard) == exact(debits[-1])
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == exact(LIMIT - sum(debits))
    guard.close()


# -- 5. calls cut off after they were sent are charged; refused calls release ---------------


async def test_a_cancelled_task_is_charged_its_estimate(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    await guard.acheck(credential=KEY)
    fake.fault("chat", delay=0.5, times=1)
    async with async_openai(fake, guard, stack) as client:
        task = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=MESSAGES))
        deadline = time.monotonic() + TIMEOUT
        while guard.ledger.reserved(KEY) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert guard.ledger.reserved(KEY) == exact(ESTIMATE)  # in flight, held
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert guard.ledger.reserved(KEY) == 0
        # the request went out: the provider may bill it, so its estimate is charged
        assert await abelief(guard) == exact(LIMIT - ESTIMATE)
        # the next call goes through and settles normally
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert guard.ledger.reserved(KEY) == 0
    assert await abelief(guard) == exact(LIMIT - ESTIMATE - PRICE)
    await guard.aclose()


def test_a_dropped_connection_is_charged_its_estimate_sync(fake: FakeProvider, stack: str) -> None:
    guard = make_guard(fake)
    fake.fault("chat", drop=True, times=1)
    with sync_openai(fake, guard, stack) as client:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert fake.count("chat") == 1 and fake.key(KEY).usage == 0
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == exact(LIMIT - ESTIMATE)  # sent, so maybe billed
    guard.close()


async def test_a_dropped_connection_is_charged_its_estimate_async(
    fake: FakeProvider, stack: str
) -> None:
    guard = make_guard(fake)
    fake.fault("chat", drop=True, times=1)
    async with async_openai(fake, guard, stack) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert fake.count("chat") == 1 and fake.key(KEY).usage == 0
    assert guard.ledger.reserved(KEY) == 0
    assert await abelief(guard) == exact(LIMIT - ESTIMATE)  # sent, so maybe billed
    await guard.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_provider_500_releases_its_hold(fake: FakeProvider, stack: str, stream: bool) -> None:
    guard = make_guard(fake)
    fake.fault("chat", status=500, times=1)
    with sync_openai(fake, guard, stack) as client:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == LIMIT
    guard.close()


@pytest.mark.parametrize("fault", [{"status": 500}, {"drop": True}], ids=["500", "drop"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_sdk_retry_is_settled_once(
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    fault: dict[str, Any],
    stream: bool,
) -> None:
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.001)
    guard = make_guard(fake)
    fake.fault("chat", times=1, **fault)
    with openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=guard.client(transport=httpx.HTTPTransport(verify=False)),
        max_retries=1,
        timeout=TIMEOUT,
    ) as client:
        done = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
        if stream:
            list(done)
    assert fake.count("chat") == 2  # the failed attempt and its retry
    assert fake.key(KEY).usage == exact(PRICE)
    assert guard.ledger.reserved(KEY) == 0
    # a 500 was answered: released; a dropped attempt was sent: its estimate stands
    # until the next poll
    dropped = ESTIMATE if "drop" in fault else 0.0
    assert belief(guard) == exact(truth(fake) - dropped)
    guard.close()


def test_a_streaming_hold_counts_past_hold_timeout_and_settles_once(
    fake: FakeProvider,
) -> None:
    # (a stream outliving hold_timeout used to lose its hold while it still ran,
    # and the budget was spent again under it; a stream dropped unread is
    # charged by its finalizer, so it needs no expiry)
    clock = [0.0]
    guard = make_guard(fake, hold_timeout=30.0, timer=lambda: clock[0])
    gate = fake.stream_gate = threading.Event()
    with http_client(guard, fake.openrouter_base_url) as http:
        with http.stream(
            "POST", "/chat/completions", headers=AUTH, json=chat_body(stream=True)
        ) as r:
            assert guard.ledger.reserved(KEY) == exact(ESTIMATE)
            clock[0] = 31.0  # the call outlived hold_timeout: still streaming, still held
            assert guard.ledger.reserved(KEY) == exact(ESTIMATE)
            gate.set()
            r.read()  # the late usage event still settles the real cost, once
            r.close()
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == exact(LIMIT - PRICE)
    guard.close()


# -- 6. the hold of a call: prompt size and max_tokens x prices ----------------------------

P_PROMPT, P_COMPLETION = 1e-4, 2e-3


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_hold_is_prompt_and_max_tokens_times_prices(fake: FakeProvider, field: str) -> None:
    pricing = {MODEL: {"prompt": P_PROMPT, "completion": P_COMPLETION}}
    guard = make_guard(fake, pricing=pricing)
    gate = fake.stream_gate = threading.Event()
    body = json.dumps(chat_body(stream=True, **{field: 1000})).encode()
    expected = len(body) / 4 * P_PROMPT + 1000 * P_COMPLETION  # ~2.0 of the 10.0 left
    # alone this one would leave 10 - 8.0x >= 1; behind the first call's hold it would not
    second = json.dumps(chat_body(**{field: 4000})).encode()
    too_big = json.dumps(chat_body(**{field: 5000})).encode()  # 10.0x: crosses the floor
    headers = {**AUTH, "content-type": "application/json"}
    with http_client(guard, fake.openrouter_base_url) as http:
        r = http.post("/chat/completions", headers=headers, content=too_big)
        assert r.status_code == 402 and r.headers["x-creditguard-decision"] == "refuse"
        assert fake.count("chat") == 0
        with http.stream("POST", "/chat/completions", headers=headers, content=body) as r:
            assert r.status_code == 200
            assert guard.ledger.reserved(KEY) == exact(expected)
            r2 = http.post("/chat/completions", headers=headers, content=second)
            assert r2.status_code == 402 and r2.headers["x-creditguard-decision"] == "refuse"
            assert guard.ledger.reserved(KEY) == exact(expected)
            gate.set()
            r.read()
        assert guard.ledger.reserved(KEY) == 0
        assert fake.count("chat") == 1
        # with the first call settled (at its usage.cost), the second one fits
        r3 = http.post("/chat/completions", headers=headers, content=second)
        assert r3.status_code == 200
    assert belief(guard) == exact(LIMIT - 2 * PRICE)
    guard.close()


# -- 7. a model with no known price --------------------------------------------------------

UNPRICED = "unknown/model"
PRICED_ONLY = {"known/*": {"prompt": 1e-6, "completion": 1e-6}}


def _two_unpriced_calls(fake: FakeProvider, rule: str) -> tuple[BudgetGuard, list[httpx.Response]]:
    policy = Policy(refuse_below=FLOOR, unknown_price=rule)  # type: ignore[arg-type]
    guard = make_guard(fake, policy=policy, pricing=PRICED_ONLY)
    body = {"model": UNPRICED, "messages": MESSAGES}
    with http_client(guard, fake.openrouter_base_url) as http:
        responses = [http.post("/chat/completions", headers=AUTH, json=body) for _ in range(2)]
    return guard, responses


def _price_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "creditguard" and r.levelno >= logging.WARNING
    ]


def test_unknown_price_refuse(fake: FakeProvider) -> None:
    guard, responses = _two_unpriced_calls(fake, "refuse")
    for r in responses:
        assert r.status_code == 402
        assert r.headers["x-creditguard-decision"] == "refuse"
        assert "no known price" in r.json()["error"]["message"]
    assert fake.count("chat") == 0
    assert guard.ledger.reserved(KEY) == 0
    guard.close()


def test_unknown_price_estimate_warns_once(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="creditguard")
    guard, responses = _two_unpriced_calls(fake, "estimate")
    assert [r.status_code for r in responses] == [200, 200]
    warnings = _price_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert UNPRICED in warnings[0] and "no price" in warnings[0]
    assert belief(guard) == exact(truth(fake))  # settled from usage.cost all the same
    guard.close()


def test_unknown_price_allow_is_silent(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="creditguard")
    guard, responses = _two_unpriced_calls(fake, "allow")
    assert [r.status_code for r in responses] == [200, 200]
    assert _price_warnings(caplog) == []
    assert belief(guard) == exact(truth(fake))
    guard.close()


# -- 8. holds carry over a refresh -------------------------------------------------------


def test_holds_carry_over_a_refresh(fake: FakeProvider) -> None:
    clock = [0.0]
    guard = make_guard(fake, ttl=5.0, timer=lambda: clock[0])
    gate = fake.stream_gate = threading.Event()
    assert belief(guard) == LIMIT
    with http_client(guard, fake.openrouter_base_url) as http:
        with http.stream(
            "POST", "/chat/completions", headers=AUTH, json=chat_body(stream=True)
        ) as r:
            assert guard.ledger.reserved(KEY) == exact(ESTIMATE)
            clock[0] = 10.0  # past ttl: the next check fetches a fresh balance
            assert fake.count("key") == 1
            fresh = belief(guard)
            assert fake.count("key") == 2
            # the fake charged at stream start, so the fresh figure shows it already
            assert fresh == exact(truth(fake)) == exact(LIMIT - PRICE)
            assert guard.ledger.reserved(KEY) == exact(ESTIMATE)  # the hold is kept
            gate.set()
            r.read()
    assert guard.ledger.reserved(KEY) == 0
    # Settled after the refresh, the call's cost is debited from the fresh snapshot,
    # which (on this fake) already reflected it: conservative by at most that call,
    # never optimistic, until the next poll.
    settled = belief(guard)
    assert truth(fake) - PRICE - 1e-9 <= settled <= truth(fake) + 1e-9
    clock[0] = 20.0
    assert belief(guard) == exact(truth(fake))
    assert fake.count("key") == 3
    guard.close()


def test_a_hold_settled_during_a_refresh_is_carried_not_lost(fake: FakeProvider) -> None:
    """A call that settles while the refresh is on its way (the provider's figure
    predates it) keeps its debit on the fresh balance."""
    clock = [0.0]
    guard = make_guard(fake, ttl=5.0, timer=lambda: clock[0])
    assert belief(guard) == LIMIT
    # the provider's figure is taken before the call below is charged, then sent late
    stale_figure = {"data": {"limit": LIMIT, "limit_remaining": LIMIT, "usage": 0.0}}
    fake.fault("key", body=json.dumps(stale_figure).encode(), delay=0.5, times=1)
    clock[0] = 10.0
    refreshed: list[float] = []
    refresher = threading.Thread(target=lambda: refreshed.append(belief(guard)))
    with http_client(guard, fake.openrouter_base_url) as http:
        refresher.start()
        deadline = time.monotonic() + TIMEOUT
        while fake.count("key") < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        # the fetch has reached the fake and waits there
        r = http.post("/chat/completions", headers=AUTH, json=chat_body())
        assert r.status_code == 200
    refresher.join(timeout=TIMEOUT)
    assert fake.count("key") == 2
    assert refreshed == [exact(LIMIT - PRICE)]
    assert belief(guard) == exact(LIMIT - PRICE) == exact(truth(fake))
    guard.close()


# -- 9. FixedBudget is drawn down by settled costs ------------------------------------------


def test_fixed_budget_is_drawn_down_by_settled_costs(fake: FakeProvider, stack: str) -> None:
    fake.add_key(KEY, limit=100.0)  # the provider would go on: the budget must stop it
    fake.prices[MODEL] = 1.2
    guard = BudgetGuard(
        FixedBudget(5.0),
        Policy(refuse_below=0.5),
        pricing={MODEL: {"prompt": 0.0, "completion": 0.001}},  # holds 100 x 0.001
        ttl=600.0,
    )
    costs: list[float] = []
    with sync_openai(fake, guard, stack) as client:
        while True:
            before = guard.source.fetch(None).remaining
            try:
                done = client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=100
                )
            except openai.APIStatusError as exc:
                assert exc.status_code == 402
                assert exc.response.headers["x-creditguard-decision"] == "refuse"
                break
            assert done.usage is not None
            costs.append(done.usage.model_extra["cost"])
            assert before - guard.source.fetch(None).remaining == exact(costs[-1])
            assert len(costs) < 10
    # 5.0 -> 3.8 -> 2.6 -> 1.4 -> 0.2: the fifth call (0.2 - 0.1 held < 0.5) is refused
    assert costs == [1.2] * 4
    assert fake.count("chat") == 4
    assert guard.source.fetch(None).remaining == exact(5.0 - 4 * 1.2)
    assert belief(guard, None) == exact(5.0 - 4 * 1.2)
    assert fake.key(KEY).usage == exact(sum(costs))
    assert guard.ledger.reserved(None) == 0
    guard.close()


def test_fixed_budget_refresh_counts_each_cost_once(fake: FakeProvider) -> None:
    clock = [0.0]
    budget = FixedBudget(5.0)
    guard = BudgetGuard(budget, Policy(refuse_below=0.5), ttl=5.0, timer=lambda: clock[0])
    with http_client(guard, fake.openrouter_base_url) as http:
        for _ in range(2):
            assert http.post("/chat/completions", headers=AUTH, json=chat_body()).is_success
        assert belief(guard, None) == exact(5.0 - 2 * PRICE)
        clock[0] = 10.0  # a refresh: the budget's own figure already holds both costs
        assert belief(guard, None) == exact(5.0 - 2 * PRICE)
        assert http.post("/chat/completions", headers=AUTH, json=chat_body()).is_success
    assert belief(guard, None) == exact(5.0 - 3 * PRICE)
    assert budget.fetch(None).remaining == exact(5.0 - 3 * PRICE)
    guard.close()


class _RefreshBeforeRecord(FixedBudget):
    """A FixedBudget whose next ``record`` first lets another thread refresh the
    guard's balance: the interleaving of a settle on one thread and a ttl-expired
    check on another that lands between the ledger's debit and the source's record."""

    def __init__(self, limit: float, clock: list[float]) -> None:
        super().__init__(limit)
        self.clock = clock
        self.guard: BudgetGuard | None = None
        self.armed = False
        self.seen: list[float] = []

    def record(self, credential: str | None, cost: float) -> None:
        if self.armed and self.guard is not None:
            self.armed = False
            guard = self.guard
            self.clock[0] += 10.0  # past ttl
            other = threading.Thread(target=lambda: self.seen.append(belief(guard, None)))
            other.start()
            other.join(1.0)  # a fix that makes the two steps atomic may block it: fine
        super().record(credential, cost)


def test_a_refresh_between_settle_and_source_record_loses_no_cost(fake: FakeProvider) -> None:
    clock = [0.0]
    budget = _RefreshBeforeRecord(5.0, clock)
    guard = BudgetGuard(budget, Policy(refuse_below=0.5), ttl=5.0, timer=lambda: clock[0])
    budget.guard = guard
    assert belief(guard, None) == 5.0
    budget.armed = True
    with http_client(guard, fake.openrouter_base_url) as http:
        assert http.post("/chat/completions", headers=AUTH, json=chat_body()).is_success
    assert budget.fetch(None).remaining == exact(5.0 - PRICE)
    try:
        # never more optimistic than the budget itself
        assert belief(guard, None) <= budget.fetch(None).remaining + 1e-9
    finally:
        guard.close()


# -- 10. the decorator reads an openai ChatCompletion's usage.cost ---------------------------


def test_decorator_settles_a_chat_completion_exactly(fake: FakeProvider) -> None:
    guard = make_guard(fake)
    with openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=httpx.Client(transport=httpx.HTTPTransport(verify=False)),
        max_retries=0,
        timeout=TIMEOUT,
    ) as client:

        @guard.protect(credential_arg="key")
        def ask(model: str, key: str) -> ChatCompletion:
            assert guard.ledger.reserved(key) == exact(ESTIMATE)  # held while it runs
            return client.chat.completions.create(model=model, messages=MESSAGES)

        for _ in range(3):
            done = ask(MODEL, KEY)
            assert isinstance(done, ChatCompletion)
            assert done.usage is not None and done.usage.model_extra["cost"] == PRICE
    assert guard.ledger.reserved(KEY) == 0
    assert belief(guard) == exact(LIMIT - 3 * PRICE)
    assert belief(guard) == exact(truth(fake))
    guard.close()


async def test_async_decorator_settles_a_chat_completion_exactly(fake: FakeProvider) -> None:
    guard = make_guard(fake)
    async with openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(verify=False)),
        max_retries=0,
        timeout=TIMEOUT,
    ) as client:

        @guard.protect(credential_arg="key")
        async def ask(model: str, key: str) -> ChatCompletion:
            return await client.chat.completions.create(model=model, messages=MESSAGES)

        results = await asyncio.gather(*(ask(MODEL, KEY) for _ in range(4)))
    assert all(isinstance(r, ChatCompletion) for r in results)
    assert guard.ledger.reserved(KEY) == 0
    assert await abelief(guard) == exact(LIMIT - 4 * PRICE)
    assert await abelief(guard) == exact(truth(fake))
    await guard.aclose()
