"""The library tried as a demanding user would: real SDKs and real workloads, with
faults, measured as what the provider billed against what the guard charged and the
budget. Each scenario states its figures; a bug still open on main is an
``xfail(strict=True)`` test naming it."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from sdk_helpers import (
    ESTIMATE,
    KEY,
    LIMIT,
    MODEL,
    PRICE,
    QUICK,
    SECRET,
    SLOW,
    assert_no_secret,
    bounded_guard,
    in_threads,
    settle_down,
    spent,
)

import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, ConfigError, CreditsExhausted, Policy
from creditguard.sources import (
    AnthropicSpend,
    ByHost,
    DeepSeekBalance,
    FixedBudget,
    OpenAISpend,
    OpenRouterKey,
    Tightest,
)
from creditguard.testing import FakeProvider


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line of every scenario (DEBUG included) is free of the keys in play."""
    import logging

    caplog.set_level(logging.DEBUG)
    yield
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            assert_no_secret(record.getMessage(), str(record.exc_text or ""))


def _spent(guard: BudgetGuard, model: str) -> float:
    """What the guard has charged against its FixedBudget so far."""
    balance = guard.check(model).balance
    assert balance is not None and balance.used is not None
    return balance.used


# -- Anthropic prompt caching: the cache's tokens are billed -----------------------------
# Anthropic's ``input_tokens`` leaves out the prompt-cache writes and reads
# (``cache_creation_input_tokens`` at 1.25x the input price, 2x for a 1-hour cache;
# ``cache_read_input_tokens`` at 0.1x). A call that writes a 200k-token system prompt
# to the cache costs $0.75 at $3/M input; main charged it $0.00033, so a $10 FixedBudget
# let ~30,000 such calls through instead of 13.

CLAUDE = "claude-sonnet-4-5"
ANTHROPIC_KEY = f"sk-ant-{SECRET}-cache-0123456789"
PROMPT_PRICE, COMPLETION_PRICE = 3e-6, 15e-6
CACHE_USAGE: dict[str, Any] = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 200_000,
    "cache_read_input_tokens": 50_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 150_000, "ephemeral_1h_input_tokens": 50_000},
    "output_tokens": 20,
}
# what Anthropic bills for CACHE_USAGE
CACHE_COST = (
    10 * PROMPT_PRICE
    + 150_000 * PROMPT_PRICE * 1.25
    + 50_000 * PROMPT_PRICE * 2.0
    + 50_000 * PROMPT_PRICE * 0.1
    + 20 * COMPLETION_PRICE
)


def _message(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [{"type": "text", "text": "Hi."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _message_stream(usage: dict[str, Any]) -> bytes:
    start = {**usage, "output_tokens": 1}
    events = [
        ("message_start", {"type": "message_start", "message": _message(start)}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


def _anthropic_provider(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    if body.get("stream"):
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=_message_stream(CACHE_USAGE),
        )
    return httpx2.Response(200, json=_message(CACHE_USAGE))


def _cache_guard() -> BudgetGuard:
    return BudgetGuard(
        FixedBudget(10.0),
        Policy(refuse_below=1.0),
        pricing={"claude-*": {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE}},
        pricing_from=None,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_prompt_cache_tokens_are_charged_through_the_transport(stream: bool) -> None:
    guard = _cache_guard()
    client = anthropic.Anthropic(
        api_key=ANTHROPIC_KEY,
        base_url="https://api.anthropic.com",
        http_client=cg2.client(guard, transport=httpx2.MockTransport(_anthropic_provider)),
        max_retries=0,
    )
    system = [{"type": "text", "text": "rules " * 1000, "cache_control": {"type": "ephemeral"}}]
    args: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 64,
        "system": system,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    if stream:
        with client.messages.stream(**args) as events:
            for _ in events:
                pass
    else:
        client.messages.create(**args)
    assert _spent(guard, CLAUDE) == pytest.approx(CACHE_COST)
    assert guard.ledger.reserved(None) == 0


def _anthropic_client() -> anthropic.Anthropic:
    """The anthropic SDK over the fake Anthropic provider (no guard of its own)."""
    return anthropic.Anthropic(
        api_key=ANTHROPIC_KEY,
        base_url="https://api.anthropic.com",
        http_client=httpx2.Client(transport=httpx2.MockTransport(_anthropic_provider)),
        max_retries=0,
    )


def test_anthropic_prompt_cache_tokens_are_charged_through_the_decorator() -> None:
    guard = _cache_guard()
    client = _anthropic_client()

    @guard
    def ask(prompt: str, model: str = CLAUDE) -> Any:
        return client.messages.create(
            model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}]
        )

    ask("Hi")
    assert _spent(guard, CLAUDE) == pytest.approx(CACHE_COST)


def test_openai_style_usage_that_counts_the_cache_in_its_prompt_is_not_charged_twice() -> None:
    """LiteLLM and gateways report Anthropic calls in OpenAI's shape: ``prompt_tokens``
    includes the cache there, beside copies of Anthropic's cache fields."""
    from creditguard.costs import Price, cost_from_usage

    usage = {
        "prompt_tokens": 250_010,
        "completion_tokens": 20,
        "cache_creation_input_tokens": 200_000,
        "cache_read_input_tokens": 50_000,
    }
    cost = cost_from_usage(usage, Price(PROMPT_PRICE, COMPLETION_PRICE))
    assert cost == pytest.approx(250_010 * PROMPT_PRICE + 20 * COMPLETION_PRICE)


# -- a burst of priced calls that set no output limit -------------------------------------
# Most chat calls set no max_tokens. With a price known (OpenRouter's list, the default
# for an OpenRouter source), such a call holds its prompt + ``estimate`` ($0.01) and,
# being priced, never learns what it really costs: a reasoning model answering in
# 2,000 tokens ($0.12 a call at $15/$60 per M) spent $6.09 of a $1.00 budget in a burst
# of 50 before the fix, and every later burst did the same.

O1 = "openai/o1"
O1_PRICE = (15e-6, 60e-6)
BURST_KEY = f"sk-or-v1-{SECRET}-burst-0123456789abcdef"


@pytest.fixture(name="burst_fake")
def _burst_fake() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        fake.add_key(BURST_KEY, credits=1_000.0)
        fake.token_prices[O1] = O1_PRICE
        fake.unbounded_tokens = 2_000  # what an answer runs to with no max_tokens
        yield fake
        if fake.stream_gate is not None:
            fake.stream_gate.set()


async def _gated_burst(fake: FakeProvider, client: openai.AsyncOpenAI, n: int) -> int:
    """``n`` streamed calls at once, none settled before every one was decided: the
    streams pause after their first chunk until all ``n`` are in flight or refused."""
    gate = fake.stream_gate = threading.Event()
    decided = 0
    all_decided = asyncio.Event()

    async def one() -> bool:
        nonlocal decided
        try:
            stream = await client.chat.completions.create(
                model=O1, messages=[{"role": "user", "content": "Think. " * 60}], stream=True
            )
        except openai.APIStatusError as exc:
            assert exc.response.headers.get("x-creditguard-decision") == "refuse", exc
            stream = None
        decided += 1
        if decided == n:
            all_decided.set()
        await all_decided.wait()
        gate.set()
        if stream is None:
            return False
        async for _ in stream:
            pass
        return True

    done = sum(await asyncio.gather(*(one() for _ in range(n))))
    fake.stream_gate = None
    return done


async def test_a_burst_of_priced_calls_without_max_tokens_keeps_the_budget(
    burst_fake: FakeProvider,
) -> None:
    fake = burst_fake
    guard = BudgetGuard(
        Tightest(OpenRouterKey(base_url=fake.openrouter_base_url), FixedBudget(1.0)),
        Policy(refuse_below=0),
    )  # defaults otherwise: pricing_from="auto" reads the fake's /models
    async with openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url,
        api_key=BURST_KEY,
        http_client=cg2.async_client(guard, transport=httpx2.AsyncHTTPTransport()),
        max_retries=0,
    ) as client:
        warm_up = await _gated_burst(fake, client, 2)  # two calls: their costs are seen
        assert warm_up == 2
        one_call = fake.key(BURST_KEY).usage / 2
        assert one_call > 0.1  # each call really costs about $0.12
        await _gated_burst(fake, client, 50)
    await guard.aclose()
    spent = fake.key(BURST_KEY).usage
    assert spent <= 1.0 + one_call, f"spent ${spent:.2f} of a $1.00 budget"
    assert guard.ledger.reserved(BURST_KEY) == 0


# -- a local budget inside Tightest while the provider's balance endpoint is down -------
# Tightest(OpenRouterKey(), FixedBudget(1.0)) is how a user caps a key at $1 of its
# credits. When /api/v1/key fails (an outage, or a base_url whose /key is not served),
# Tightest raises, the guard has no balance at all and, with the default
# on_source_error="allow", lets every call through: 30 calls of $0.10 spent $3.00, the
# FixedBudget itself recording $3.00 of its $1.00, before the fix. The local budget answers
# whatever the provider does; it should still bind.

TIGHT_KEY = f"sk-or-v1-{SECRET}-tight-0123456789abcdef"


def test_a_fixed_budget_inside_tightest_binds_while_the_provider_endpoint_is_down() -> None:
    with FakeProvider(default_price=0.10) as fake:
        fake.add_key(TIGHT_KEY, credits=1_000.0)
        fake.fault("key", status=503)  # the provider's balance endpoint is down throughout
        budget = FixedBudget(1.0)
        guard = BudgetGuard(
            Tightest(OpenRouterKey(base_url=fake.openrouter_base_url), budget),
            Policy(refuse_below=0),
        )
        client = openai.OpenAI(
            base_url=fake.openrouter_base_url,
            api_key=TIGHT_KEY,
            http_client=guard.client(transport=httpx.HTTPTransport()),
            max_retries=0,
        )
        refused = 0
        for _ in range(30):
            try:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIStatusError as exc:
                assert exc.response.headers.get("x-creditguard-decision") == "refuse", exc
                refused += 1
        client.close()
        guard.close()
        spent = fake.key(TIGHT_KEY).usage
        assert budget.spent(None) == pytest.approx(spent)  # the budget saw every call
        assert spent <= 1.0 + 0.10 + 1e-9, f"spent ${spent:.2f} of a $1.00 FixedBudget"
        assert refused > 0


# -- bad inputs to the Python API: a typed error naming what was wrong ---------------------
# main raised AttributeError for a ``pricing`` or ByHost ``policies`` that is not a
# mapping, and OverflowError for a huge int ``timeout`` or spend ``budget``.


@pytest.mark.parametrize(
    ("key", "build"),
    [
        ("pricing", lambda: BudgetGuard(FixedBudget(1.0), pricing="gpt-4o=0.01")),
        ("pricing", lambda: BudgetGuard(FixedBudget(1.0), pricing=[("gpt-4o", 0.01)])),
        ("policies", lambda: ByHost({"a.example": FixedBudget(1.0)}, policies=Policy())),
        ("timeout", lambda: OpenRouterKey(timeout=10**400)),
        ("timeout", lambda: DeepSeekBalance(timeout=10**400)),
        ("budget", lambda: OpenAISpend(10**400, api_key="sk-admin-x")),
        ("budget", lambda: AnthropicSpend(10**400, api_key="sk-ant-admin-x")),
        ("timeout", lambda: OpenAISpend(5.0, api_key="sk-admin-x", timeout=10**400)),
    ],
)
def test_bad_python_arguments_are_config_errors(key: str, build: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.key == key
    assert caught.value.allowed


# -- LangChain: runs that time out are charged -------------------------------------------
# CreditGuardCallbackHandler released the hold of every run that ended in on_llm_error,
# and GuardedChatModel released every stream that failed before its first chunk: a
# read timeout (the provider still answers, and bills) was free. 20 threads calling
# ChatOpenAI with a 0.15 s timeout against a provider answering in 0.3 s spent the key's
# whole $1.00 past a $0.80 floor (the transport route is held to $0.21).

LC_FLOOR = 0.8  # a $0.20 headroom: ~20 calls of $0.01 reach it
LC_BOUND = LIMIT - LC_FLOOR + ESTIMATE + 1e-9


def _timing_out_fake() -> FakeProvider:
    fake = FakeProvider(default_price=PRICE).start()
    fake.add_key(KEY, limit=LIMIT)
    fake.fault("chat", delay=SLOW)  # every call answers (and is billed) after SLOW s
    return fake


def _chat_openai(fake: FakeProvider, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL,
        base_url=fake.openrouter_base_url,
        api_key=KEY,  # type: ignore[arg-type]
        timeout=QUICK,
        max_retries=0,
        **kwargs,
    )


def test_langchain_callback_runs_that_time_out_keep_the_bound() -> None:
    from creditguard_langchain import CreditGuardCallbackHandler

    fake = _timing_out_fake()
    try:
        guard = bounded_guard(fake, policy=Policy(refuse_below=LC_FLOOR))
        handler = CreditGuardCallbackHandler(guard, credential=KEY)
        llm = _chat_openai(fake, callbacks=[handler])
        refusals: list[int] = []

        def worker() -> None:
            for _ in range(4):
                try:
                    llm.invoke("Say hi.")
                except CreditsExhausted:
                    refusals.append(1)
                    return
                except openai.APITimeoutError:
                    continue

        in_threads([worker] * 20)
        settle_down(fake, SLOW)
        assert refusals, "the floor was never reached"
        assert spent(fake) <= LC_BOUND, f"provider billed {spent(fake):.2f}"
        assert handler.in_flight == 0
        assert guard.ledger.reserved(KEY) == 0
        guard.close()
    finally:
        fake.stop()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["stream", "astream"])
async def test_guarded_chat_model_streams_that_time_out_keep_the_bound(
    asynchronous: bool,
) -> None:
    from creditguard_langchain import GuardedChatModel

    fake = _timing_out_fake()
    try:
        guard = bounded_guard(fake, policy=Policy(refuse_below=LC_FLOOR))
        model = GuardedChatModel(guard, {MODEL: _chat_openai(fake)}, credential=KEY)
        refused = timeouts = 0
        for _ in range(40):  # one call at a time: each settles before the next
            try:
                if asynchronous:
                    async for _chunk in model.astream("Say hi."):
                        pass
                else:
                    for _chunk in model.stream("Say hi."):
                        pass
            except CreditsExhausted:
                refused += 1
                break
            except openai.APITimeoutError:
                timeouts += 1
        settle_down(fake, SLOW)
        assert refused == 1 and timeouts >= 20
        assert spent(fake) <= LC_BOUND, f"provider billed {spent(fake):.2f}"
        assert guard.ledger.reserved(KEY) == 0
        await guard.aclose()
    finally:
        fake.stop()


# -- a script that exits with a response it dropped unread (shared store) ---------------
# A response nobody reads or closes is charged by a finalizer, "settled at the next
# guarded call" (Ledger.defer). A script whose last call's response is dropped makes no
# next call: its settle never runs, and over Redis the call's hold then expires after
# hold_timeout uncharged, so the shared FixedBudget never counts it (before the fix: billed
# $0.10, the store counted $0.00 and still held $0.20 until the hold expired).

_DROPPING_SCRIPT = """
import gc, sys
import httpx, openai
import creditguard as cg
from creditguard.sources import FixedBudget

url, store, key = sys.argv[1:4]
guard = cg.BudgetGuard(FixedBudget(1.0), cg.Policy(refuse_below=0), estimate=0.2, store=store)
client = openai.OpenAI(
    base_url=url, api_key=key, max_retries=0,
    http_client=guard.client(transport=httpx.HTTPTransport()),
)
raw = client.chat.completions.with_raw_response.create(
    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
)
del raw  # never read: its finalizer runs here
gc.collect()
print("exiting")
"""


def test_a_response_dropped_before_the_process_exits_is_charged_in_the_store(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = f"{redis_server.url}?secret=user-faults-secret"
    script = tmp_path / "drop.py"
    script.write_text(_DROPPING_SCRIPT)
    with FakeProvider(default_price=0.10) as fake:
        fake.add_key(KEY, credits=100.0)
        done = subprocess.run(
            [sys.executable, str(script), fake.openrouter_base_url, store, KEY],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0 and "exiting" in done.stdout, done.stderr[-2000:]
        assert_no_secret(done.stdout, done.stderr)
        assert fake.key(KEY).usage == pytest.approx(0.10)  # the provider billed the call
    other = BudgetGuard(FixedBudget(1.0), Policy(refuse_below=0), store=store)
    try:
        balance = other.check("m", estimate=0).balance
        assert balance is not None
        assert balance.used == pytest.approx(0.2)  # its estimate, counted in the store
        assert other.ledger.reserved(None) == 0
    finally:
        other.close()


# -- a compressed event stream --------------------------------------------------------
# httpx asks for gzip (Accept-Encoding), and a gateway that compresses text/event-stream
# (nginx with gzip_types, a CDN) answers so; the transport sees the compressed bytes.
# It then reads no event: with a known price, a stream that ends is charged "what
# passed", counted as 0 output characters, i.e. its prompt only: a call that really
# cost $0.50 and held $0.08 was charged $0.00006 before the fix. (Unpriced, the estimate.)

GZ_PRICE = {"openai/gpt-4o": {"prompt": 2.5e-6, "completion": 1e-5}}


def _gzip_sse(request: httpx.Request) -> httpx.Response:
    chunk = {"id": "g", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        for text in ("Hel", "lo")
    ]
    usage = {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010, "cost": 0.5}
    events.append({**chunk, "choices": [], "usage": usage})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
        content=gzip.compress(body + b"data: [DONE]\n\n"),
    )


def test_a_compressed_event_stream_is_charged_at_least_its_estimate() -> None:
    guard = BudgetGuard(
        FixedBudget(10.0), Policy(refuse_below=0), pricing=GZ_PRICE, pricing_from=None
    )
    client = openai.OpenAI(
        base_url="https://openrouter.ai/api/v1",
        api_key=f"sk-or-v1-{SECRET}-gzip",
        http_client=guard.client(transport=httpx.MockTransport(_gzip_sse)),
        max_retries=0,
    )
    stream = client.chat.completions.create(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        max_tokens=8000,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello"  # the SDK decoded it
    held = 8000 * 1e-5  # (and the prompt's few tokens)
    charged = _spent(guard, "openai/gpt-4o")
    assert charged >= held, f"charged ${charged:.5f} for a call that held ${held:.2f}"
    client.close()


# -- one FixedBudget object under two guards in one process -----------------------------
# (two team guards spent $2.00 of a $1.00 organisation budget: tested in test_guard.py,
# test_guards_over_one_fixed_budget_in_one_process_see_each_others_spend)


# -- a stream that runs longer than hold_timeout ------------------------------------------
# hold_timeout (900 s) is "longer than the 600 s read timeout of the guard's clients",
# but a read timeout bounds the wait between two chunks, not a stream: a reasoning model
# streaming for 20 minutes is still running, and billing, when its hold expires. On
# main the hold stopped counting at 900 s while the stream still flowed: a second $0.90
# call then passed a $1.00 budget the first $0.90 call was still spending ($1.80).

LONG_PRICE = {"slow/reasoner": {"prompt": 0.0, "completion": 1e-4}}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reasoner(request: httpx.Request) -> httpx.Response:
    """A chat stream of 9,000 completion tokens ($0.90), its usage in its last event."""
    chunk = {"id": "g", "object": "chat.completion.chunk", "created": 1, "model": "slow/reasoner"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": "..."}, "finish_reason": None}]}
        for _ in range(3)
    ]
    usage = {"prompt_tokens": 0, "completion_tokens": 9000, "total_tokens": 9000, "cost": 0.9}
    events.append({**chunk, "choices": [], "usage": usage})
    lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=httpx.ByteStream(b"".join([*lines, b"data: [DONE]\n\n"])),
    )


def test_a_stream_read_for_longer_than_hold_timeout_keeps_its_hold() -> None:
    clock = _Clock()
    guard = BudgetGuard(
        FixedBudget(1.0),
        Policy(refuse_below=0),
        pricing=LONG_PRICE,
        pricing_from=None,
        timer=clock,
    )
    client = openai.OpenAI(
        base_url="https://openrouter.ai/api/v1",
        api_key=f"sk-or-v1-{SECRET}-long",
        http_client=guard.client(transport=httpx.MockTransport(_reasoner)),
        max_retries=0,
    )
    ask: dict[str, Any] = {
        "model": "slow/reasoner",
        "messages": [{"role": "user", "content": "think"}],
        "max_tokens": 9000,  # holds $0.90
        "stream": True,
    }
    first = client.chat.completions.create(**ask)
    next(iter(first))  # the answer has begun ...
    clock.now += 20 * 60  # ... and is still streaming 20 minutes later
    assert guard.ledger.reserved(None) == pytest.approx(0.9), "the running call's hold lapsed"
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(**ask)  # $0.90 more: over the $1.00 budget
    assert refused.value.status_code == 402
    for _ in first:
        pass
    assert _spent(guard, "slow/reasoner") == pytest.approx(0.9)
    client.close()


# -- a key pasted into api_key_env ---------------------------------------------------------
# api_key_env names the variable; a user who pastes the key there gets a ConfigError.
# On main it showed the value whole when the masking did not recognise it as a key:
# fal's "id:secret" keys, and upper-case hex tokens, in the config and the spend sources.

PASTED = [
    "8a4f5c2e-1234-4abc-9def-0123456789ab:0123456789abcdef0123456789abcdef",  # fal
    "ABCDEF0123456789ABCDEF0123456789",
]


@pytest.mark.parametrize("key", PASTED, ids=["fal", "hex"])
@pytest.mark.parametrize("where", ["config", "source", "spend"])
def test_a_key_pasted_into_api_key_env_never_shows(key: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        if where == "config":
            BudgetGuard.from_config(
                {"creditguard": {"source": "fal", "api_key_env": key}}, env=False
            )
        elif where == "source":
            DeepSeekBalance(api_key_env=key)
        else:
            OpenAISpend(5.0, api_key_env=key)
    error = caught.value
    assert error.key == "api_key_env"
    for text in (str(error), repr(error), str(error.value), error.allowed):
        assert key not in text
        assert key.split(":")[-1] not in text


# -- a guarded generator that streams an SDK's chunks -------------------------------------
# @guard on a generator that yields a chat stream's chunks (or a batch of completions)
# charged its estimate when it ended, whatever its items reported: OpenRouter's last
# chunk says usage.cost = $0.12, and the guard charged $0.01, so a $1.00 FixedBudget let
# 100 such streams spend $12 before the fix.

STREAM_KEY = f"sk-or-v1-{SECRET}-genstream-0123456789"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_guarded_generator_is_charged_what_its_items_report(asynchronous: bool) -> None:
    with FakeProvider(default_price=0.12) as fake:
        fake.add_key(STREAM_KEY, credits=100.0)
        guard = BudgetGuard(FixedBudget(1.0), Policy(refuse_below=0), pricing_from=None)
        messages = [{"role": "user", "content": "hi"}]
        if asynchronous:
            aclient = openai.AsyncOpenAI(
                base_url=fake.openrouter_base_url, api_key=STREAM_KEY, max_retries=0
            )

            @guard
            async def astream_answer(model: str = "m") -> Any:
                stream = await aclient.chat.completions.create(
                    model=model, messages=messages, stream=True
                )
                async for chunk in stream:
                    yield chunk

            async def answer() -> None:
                async for _ in astream_answer():
                    pass

        else:
            client = openai.OpenAI(
                base_url=fake.openrouter_base_url, api_key=STREAM_KEY, max_retries=0
            )

            @guard
            def stream_answer(model: str = "m") -> Any:
                yield from client.chat.completions.create(
                    model=model, messages=messages, stream=True
                )

            async def answer() -> None:
                for _ in stream_answer():
                    pass

        calls = 0
        for _ in range(20):
            try:
                await answer()
            except CreditsExhausted:
                break
            calls += 1
        if asynchronous:
            await aclient.close()
        else:
            client.close()
        billed = fake.key(STREAM_KEY).usage
        assert _spent(guard, "m") == pytest.approx(billed)  # what the last chunks said
        assert billed <= 1.0 + 0.12 + 1e-9, f"{calls} streams spent ${billed:.2f} of $1.00"
        await guard.aclose()


# -- a gateway timeout after the provider ran the call --------------------------------------
# A gateway in front of the model (Cloudflare's 524, a load balancer's 504) gives up on
# a long generation the provider still finishes and bills. The guard takes any 4xx/5xx
# for "the provider turned it down" and releases the hold: calls answered 504 after
# being billed spent the key's whole $1.00 past a $0.80 floor before the fix, through the
# transport and through the decorator alike. (FakeProvider.fault(billed=True) bills the
# call, then answers the fault.)


def _gateway_timeouts() -> FakeProvider:
    fake = FakeProvider(default_price=PRICE).start()
    fake.add_key(KEY, limit=LIMIT)
    fake.fault("chat", status=504, billed=True)  # every call runs, is billed, then 504s
    return fake


def test_decorated_calls_answered_504_after_billing_keep_the_bound() -> None:
    fake = _gateway_timeouts()
    try:
        guard = bounded_guard(fake, policy=Policy(refuse_below=LC_FLOOR))
        client = openai.OpenAI(base_url=fake.openrouter_base_url, api_key=KEY, max_retries=0)

        @guard.protect(credential_arg="key")
        def ask(key: str, model: str = MODEL) -> Any:
            return client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )

        refused = False
        for _ in range(60):
            try:
                ask(KEY)
            except CreditsExhausted:
                refused = True
                break
            except openai.InternalServerError as exc:
                assert exc.status_code == 504
        client.close()
        assert refused, "the floor was never reached"
        assert spent(fake) <= LC_BOUND, f"provider billed {spent(fake):.2f}"
        guard.close()
    finally:
        fake.stop()


def test_transported_calls_answered_504_after_billing_keep_the_bound() -> None:
    fake = _gateway_timeouts()
    try:
        guard = bounded_guard(fake, policy=Policy(refuse_below=LC_FLOOR))
        client = openai.OpenAI(
            base_url=fake.openrouter_base_url,
            api_key=KEY,
            http_client=guard.client(transport=httpx.HTTPTransport()),
            max_retries=0,
        )
        refused = False
        for _ in range(60):
            try:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIStatusError as exc:
                if exc.status_code == 402:
                    refused = True
                    break
                assert exc.status_code == 504
        client.close()
        guard.close()
        assert spent(fake) <= LC_BOUND, f"provider billed {spent(fake):.2f}"
        assert refused, "the floor was never reached"
    finally:
        fake.stop()


# -- an Anthropic stream that errors after its output began ----------------------------------
# Anthropic reports a stream's input tokens (and 1 output token) in message_start and the
# output in message_delta at the end. A stream that ends on an ``error`` event
# (overloaded_error mid-answer) after 2,500 tokens of output never sends the latter: the
# transport settled it from message_start's partial report, $0.003 of input, although
# the stream ended without its last event and $0.0375 of output had passed (the hold
# was $0.06). A stream cut short this way should cost at least what passed.


def _overloaded_midway(request: httpx2.Request) -> httpx2.Response:
    start = _message({"input_tokens": 1000, "output_tokens": 1})
    start["content"], start["stop_reason"] = [], None
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    delta = {"type": "text_delta", "text": "word " * 10}  # 50 characters
    events += [
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    ] * 200
    error = {"type": "overloaded_error", "message": "Overloaded"}
    events.append(("error", {"type": "error", "error": error}))
    body = b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def test_an_anthropic_stream_that_errors_midway_is_charged_what_passed() -> None:
    guard = _cache_guard()
    client = anthropic.Anthropic(
        api_key=ANTHROPIC_KEY,
        base_url="https://api.anthropic.com",
        http_client=cg2.client(guard, transport=httpx2.MockTransport(_overloaded_midway)),
        max_retries=0,
    )
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(
            model=CLAUDE, max_tokens=4000, messages=[{"role": "user", "content": "Hi"}]
        ) as events,
    ):
        for _ in events:
            pass
    passed = 200 * 50 / 4 * COMPLETION_PRICE  # output characters / 4 at the output price
    assert _spent(guard, CLAUDE) >= passed
    client.close()


def test_a_guarded_generator_of_anthropic_events_is_charged_their_merged_usage() -> None:
    """message_start reports the input (and the prompt cache), message_delta the
    output: one call, charged once, from both."""
    guard = _cache_guard()
    client = _anthropic_client()

    @guard
    def events(prompt: str, model: str = CLAUDE) -> Any:
        yield from client.messages.create(
            model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}], stream=True
        )

    assert len(list(events("Hi"))) == 6
    assert _spent(guard, CLAUDE) == pytest.approx(CACHE_COST)
    client.close()


def test_a_guarded_generator_of_several_completions_is_charged_each() -> None:
    with FakeProvider(default_price=0.12) as fake:
        fake.add_key(STREAM_KEY, credits=100.0)
        guard = BudgetGuard(FixedBudget(10.0), Policy(refuse_below=0), pricing_from=None)
        client = openai.OpenAI(base_url=fake.openrouter_base_url, api_key=STREAM_KEY, max_retries=0)

        @guard
        def answers(questions: list[str], model: str = "m") -> Any:
            for question in questions:
                yield client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": question}]
                )

        assert len(list(answers(["a", "b", "c"]))) == 3
        client.close()
        assert _spent(guard, "m") == pytest.approx(fake.key(STREAM_KEY).usage) == 0.36


def test_a_guarded_generator_of_responses_events_is_charged_the_completed_usage() -> None:
    """The Responses API reports a stream's usage in response.completed's response."""
    guard = BudgetGuard(
        FixedBudget(10.0),
        Policy(refuse_below=0),
        pricing={"gpt-5": {"prompt": 1e-6, "completion": 1e-5}},
        pricing_from=None,
    )
    usage = {"input_tokens": 1000, "output_tokens": 2000, "total_tokens": 3000}

    @guard
    def events(prompt: str, model: str = "gpt-5") -> Any:  # as a raw SSE reader yields them
        yield {"type": "response.created", "response": {"id": "resp_1", "usage": None}}
        yield {"type": "response.output_text.delta", "delta": "Hi"}
        yield {"type": "response.completed", "response": {"id": "resp_1", "usage": usage}}

    assert len(list(events("Hi"))) == 3
    assert _spent(guard, "gpt-5") == pytest.approx(1000 * 1e-6 + 2000 * 1e-5)


# -- a guarded function that returns an SDK stream -----------------------------------------
# ``@guard def ask(...): return client.chat.completions.create(..., stream=True)`` (the
# FastAPI StreamingResponse pattern) was charged its estimate when it returned the
# stream, before any chunk: OpenRouter's last chunk then said usage.cost = $0.12, never
# read, and a $1.00 FixedBudget let 20 such calls spend $2.40. The call is now held
# until its stream ends and charged what the chunks reported.


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_returned_sdk_stream_is_charged_what_its_chunks_report(
    asynchronous: bool,
) -> None:
    with FakeProvider(default_price=0.12) as fake:
        fake.add_key(STREAM_KEY, credits=100.0)
        guard = BudgetGuard(FixedBudget(1.0), Policy(refuse_below=0), pricing_from=None)
        messages = [{"role": "user", "content": "hi"}]
        client = openai.OpenAI(base_url=fake.openrouter_base_url, api_key=STREAM_KEY, max_retries=0)
        aclient = openai.AsyncOpenAI(
            base_url=fake.openrouter_base_url, api_key=STREAM_KEY, max_retries=0
        )

        @guard
        def ask(model: str = "m") -> Any:
            return client.chat.completions.create(model=model, messages=messages, stream=True)

        @guard
        async def aask(model: str = "m") -> Any:
            return await aclient.chat.completions.create(
                model=model, messages=messages, stream=True
            )

        calls = 0
        for _ in range(20):
            try:
                if asynchronous:
                    stream = await aask()
                    assert isinstance(stream, openai.AsyncStream)
                    async for _chunk in stream:
                        pass
                else:
                    stream = ask()
                    assert isinstance(stream, openai.Stream)
                    for _chunk in stream:
                        pass
            except CreditsExhausted:
                break
            calls += 1
        client.close()
        await aclient.close()
        billed = fake.key(STREAM_KEY).usage
        assert _spent(guard, "m") == pytest.approx(billed)
        assert billed <= 1.0 + 0.12 + 1e-9, f"{calls} streams spent ${billed:.2f} of $1.00"
        assert guard.ledger.reserved(None) == 0


def test_a_returned_sdk_stream_closed_early_is_charged_at_least_its_estimate() -> None:
    with FakeProvider(default_price=0.12) as fake:
        fake.add_key(STREAM_KEY, credits=100.0)
        guard = BudgetGuard(
            FixedBudget(10.0), Policy(refuse_below=0), estimate=0.05, pricing_from=None
        )
        client = openai.OpenAI(base_url=fake.openrouter_base_url, api_key=STREAM_KEY, max_retries=0)

        @guard
        def ask(model: str = "m") -> Any:
            return client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True
            )

        with ask() as stream:
            next(stream)  # the first chunk, then left
        assert guard.ledger.reserved(None) == 0
        assert _spent(guard, "m") == pytest.approx(0.05)
        dropped = ask()  # never read nor closed: charged when collected
        assert guard.ledger.reserved(None) == pytest.approx(0.05)
        del dropped
        gc.collect()
        assert _spent(guard, "m") == pytest.approx(0.10)  # (the next look settles it)
        assert guard.ledger.reserved(None) == 0
        client.close()
