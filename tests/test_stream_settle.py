"""What a streamed call is charged when its usage report is partial, late or
nested (the transport's SSE tap), and what an SDK retry's error status says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from creditguard import BudgetGuard, Policy
from creditguard import httpx as cg
from creditguard._protect import unbilled
from creditguard.sources import FixedBudget

PRICING = {"m": {"prompt": 1e-6, "completion": 1e-5}}


def _sse(*events: dict[str, object]) -> list[bytes]:
    return [f"event: x\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def _guarded(chunks: list[bytes]) -> tuple[BudgetGuard, httpx.Client]:
    def handler(request: httpx.Request) -> httpx.Response:
        def stream() -> Iterator[bytes]:
            yield from chunks

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())

    guard = BudgetGuard(FixedBudget(100.0, period=None), Policy(), pricing=PRICING)
    client = cg.client(guard, transport=httpx.MockTransport(handler))
    return guard, client


def _spent(guard: BudgetGuard) -> float:
    balance = guard.check(estimate=0).balance
    assert balance is not None
    return 100.0 - balance.remaining


def test_a_stream_cut_after_a_partial_usage_report_is_charged_its_estimate() -> None:
    # Anthropic's message_start reports the input and 1 output token; a stream
    # stopped after it may have been generated further: at least the estimate
    chunks = _sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}},
        *[{"type": "content_block_delta", "delta": {"text": "x" * 100}}] * 20,
    )
    guard, client = _guarded(chunks)
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    with client.stream("POST", "https://api.anthropic.com/v1/messages", json=body) as response:
        next(response.iter_bytes())  # the first event only, then the stream is dropped
    estimate = len(json.dumps(body)) / 4 * 1e-6 + 1000 * 1e-5
    assert _spent(guard) >= estimate * 0.99
    assert guard.ledger.reserved(None) == 0


def test_a_stream_settle_says_where_its_cost_came_from() -> None:
    """The spend event (metrics' creditguard.cost.source) names the source of
    a streamed call's cost: tokens x prices from its usage or its characters,
    the estimate when cut short; never "provider" for a figure worked out here."""
    seen: list[str] = []
    chunks = _sse(*[{"type": "content_block_delta", "delta": {"text": "x" * 100}}] * 3)
    guard, client = _guarded(chunks)
    guard.events.subscribe("spend", lambda key, cost, how: seen.append(how))
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with client.stream("POST", "https://api.anthropic.com/v1/messages", json=body) as response:
        response.read()  # no usage report: its characters at the model's prices
    long = {**body, "max_tokens": 1000}
    with client.stream("POST", "https://api.anthropic.com/v1/messages", json=long) as response:
        next(response.iter_bytes())  # cut short: at least its estimate
    usage = {"type": "message_delta", "usage": {"input_tokens": 5, "output_tokens": 7}}
    guard2, client2 = _guarded(_sse(usage))
    guard2.events.subscribe("spend", lambda key, cost, how: seen.append(how))
    with client2.stream("POST", "https://api.anthropic.com/v1/messages", json=body) as response:
        response.read()  # its usage x prices
    assert seen == ["tokens", "estimate", "tokens"]


def test_a_responses_stream_is_settled_from_response_completed_usage() -> None:
    usage = {"input_tokens": 10, "output_tokens": 20_000}
    chunks = _sse(
        {"type": "response.output_text.delta", "delta": "ok"},
        {"type": "response.completed", "response": {"usage": usage}},
    )
    guard, client = _guarded(chunks)
    body = {"model": "m", "input": "hi", "stream": True}
    with client.stream("POST", "https://api.openai.com/v1/responses", json=body) as response:
        response.read()
    assert _spent(guard) == pytest.approx(10 * 1e-6 + 20_000 * 1e-5)


@pytest.mark.parametrize(("attempt", "released"), [("0", True), ("2", False), (None, True)])
def test_an_error_status_releases_only_a_first_attempt(attempt: str | None, released: bool) -> None:
    # a retry's 503 says nothing of the earlier attempt that timed out (maybe billed)
    headers = {} if attempt is None else {"x-stainless-retry-count": attempt}
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions", headers=headers)
    response = httpx.Response(503, request=request)
    error = httpx.HTTPStatusError("503", request=request, response=response)
    assert unbilled(error) is released


def test_an_exception_thrown_into_a_guarded_generator_charges_the_call() -> None:
    # (a consumer's gen.throw(), e.g. inside @contextmanager, ended the stream
    # without a charge or a release: its hold stayed open until it expired)
    guard = BudgetGuard(FixedBudget(100.0, period=None), Policy(), estimate=0.5)

    @guard
    def stream(model: str = "m") -> Iterator[str]:
        yield "a"
        yield "b"

    gen = stream()
    assert next(gen) == "a"
    with pytest.raises(ValueError):
        gen.throw(ValueError("the consumer gave up"))
    assert guard.ledger.reserved(None) == 0
    assert _spent(guard) == pytest.approx(0.5)


async def test_an_exception_thrown_into_a_guarded_async_generator_charges_the_call() -> None:
    guard = BudgetGuard(FixedBudget(100.0, period=None), Policy(), estimate=0.5)

    @guard
    async def stream(model: str = "m") -> AsyncIterator[str]:
        yield "a"
        yield "b"

    agen = stream()
    assert await agen.__anext__() == "a"
    with pytest.raises(ValueError):
        await agen.athrow(ValueError("the consumer gave up"))
    assert guard.ledger.reserved(None) == 0
    assert _spent(guard) == pytest.approx(0.5)


def _encoded(coding: str, chunks: list[bytes]) -> tuple[BudgetGuard, httpx.Client]:
    import gzip
    import zlib

    whole = b"".join(chunks)
    if coding == "gzip":
        data = gzip.compress(whole)
    elif coding == "deflate":
        data = zlib.compress(whole)
    else:  # br: not decoded here (nor by httpx without brotli)
        data = b"\x00not brotli"
    parts = [data[i : i + 7] for i in range(0, len(data), 7)]  # split anywhere

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": coding}
        return httpx.Response(200, headers=headers, content=iter(parts))

    guard = BudgetGuard(FixedBudget(100.0, period=None), Policy(), pricing=PRICING)
    return guard, cg.client(guard, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_event_stream_is_read_for_its_usage(coding: str) -> None:
    # (a gateway compressing text/event-stream: the tap read no event and a
    # priced stream was charged its prompt only, $0.00006 for a $0.50 call)
    usage = {"prompt_tokens": 10, "completion_tokens": 5000, "cost": 0.5}
    chunks = _sse(
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [], "usage": usage},
    )
    guard, client = _encoded(coding, [*chunks, b"data: [DONE]\n\n"])
    body = {"model": "m", "max_tokens": 8000, "stream": True, "messages": []}
    with client.stream("POST", "https://openrouter.ai/api/v1/chat/completions", json=body) as r:
        r.read()
    assert _spent(guard) == pytest.approx(0.5)
    assert guard.ledger.reserved(None) == 0


def test_an_event_stream_in_an_encoding_not_read_here_is_charged_its_estimate() -> None:
    guard, client = _encoded("br", [])
    body = {"model": "m", "max_tokens": 8000, "stream": True, "messages": []}
    with client.stream("POST", "https://openrouter.ai/api/v1/chat/completions", json=body) as r:
        for _ in r.iter_raw():
            pass
    estimate = len(json.dumps(body)) / 4 * 1e-6 + 8000 * 1e-5
    assert _spent(guard) == pytest.approx(estimate, rel=0.05)  # (was its prompt only)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_json_body_larger_than_what_is_kept_is_read_for_its_usage(
    coding: str,
) -> None:
    # (the first version inflated only the first 64 KiB, and the usage that ends
    # an OpenAI body was never read: a long answer was charged its estimate)
    import gzip
    import zlib

    answer = {"choices": [{"message": {"content": "x" * 130_000}}], "usage": {"cost": 0.9}}
    whole = json.dumps(answer).encode()
    data = gzip.compress(whole) if coding == "gzip" else zlib.compress(whole)
    parts = [data[i : i + 4096] for i in range(0, len(data), 4096)]

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/json", "content-encoding": coding}
        return httpx.Response(200, headers=headers, content=iter(parts))

    guard = BudgetGuard(FixedBudget(100.0, period=None), Policy(), pricing=PRICING)
    client = cg.client(guard, transport=httpx.MockTransport(handler))
    body = {"model": "unpriced", "messages": []}
    with client.stream("POST", "https://openrouter.ai/api/v1/chat/completions", json=body) as r:
        r.read()
    assert _spent(guard) == pytest.approx(0.9)


def test_a_compressed_event_stream_of_two_gzip_members_is_charged_its_estimate() -> None:
    # (only the first member was read: a $0.50 stream was charged its prompt)
    import gzip

    usage = {"prompt_tokens": 10, "completion_tokens": 5000, "cost": 0.5}
    first = gzip.compress(b"".join(_sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})))
    second = gzip.compress(b"".join(_sse({"choices": [], "usage": usage})) + b"data: [DONE]\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, content=iter([first + second]))

    guard = BudgetGuard(FixedBudget(100.0, period=None), Policy(), pricing=PRICING)
    client = cg.client(guard, transport=httpx.MockTransport(handler))
    body = {"model": "m", "max_tokens": 8000, "stream": True, "messages": []}
    with client.stream("POST", "https://openrouter.ai/api/v1/chat/completions", json=body) as r:
        for _ in r.iter_raw():
            pass
    assert _spent(guard) >= 8000 * 1e-5  # at least its estimate, not its prompt
