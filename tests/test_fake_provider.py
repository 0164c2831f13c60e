"""Tests for creditguard.testing.FakeProvider: MockTransport handler and loopback server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from creditguard.testing import FakeProvider, KeyState

KEY = "sk-or-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/api/v1/chat/completions"
MOCK_BASE = "http://fake.test"


@pytest.fixture
def fake() -> FakeProvider:
    """A fake that is not started: reached through MockTransport only."""
    f = FakeProvider()
    f.add_key(KEY, credits=10.0)
    return f


@pytest.fixture
def mock(fake: FakeProvider) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(fake.handler), base_url=MOCK_BASE) as c:
        yield c


@pytest.fixture
def live(fake_provider: FakeProvider) -> Iterator[httpx.Client]:
    """A client on the loopback server started by the plugin's fixture."""
    fake_provider.add_key(KEY, credits=10.0)
    with httpx.Client(base_url=fake_provider.url, timeout=5.0) as c:
        yield c


@pytest.fixture(params=["mock", "live"])
def both(
    request: pytest.FixtureRequest, fake: FakeProvider
) -> Iterator[tuple[FakeProvider, httpx.Client]]:
    """The same scenario through MockTransport and through the real server."""
    if request.param == "mock":
        with httpx.Client(transport=httpx.MockTransport(fake.handler), base_url=MOCK_BASE) as c:
            yield fake, c
    else:
        with fake, httpx.Client(base_url=fake.url, timeout=5.0) as c:
            yield fake, c


def chat_body(model: str = "openai/gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse_blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


def sse_data(block: str) -> Any:
    line = next(x for x in block.split("\n") if x.startswith("data: "))
    payload = line[len("data: ") :]
    return payload if payload == "[DONE]" else json.loads(payload)


# ------------------------------------------------------------------ lifecycle and URLs


def test_urls_and_lifecycle() -> None:
    fake = FakeProvider()
    assert not fake.running
    with pytest.raises(RuntimeError):
        _ = fake.url
    with fake as started:
        assert started is fake and fake.running
        assert fake.url.startswith("http://127.0.0.1:")
        port = int(fake.url.rsplit(":", 1)[1])
        assert port > 0
        assert fake.openrouter_base_url == fake.url + "/api/v1"
        assert fake.stablecog_base_url == fake.url + "/v1"
        assert fake.openai_base_url == fake.url + "/v1"
        assert fake.anthropic_base_url == fake.url
        assert fake.start() is fake  # idempotent
    assert not fake.running
    fake.stop()  # idempotent
    with fake:  # restartable
        fake.add_key("k")
        r = httpx.get(fake.openrouter_base_url + "/key", headers={"x-api-key": "k"})
        assert r.status_code == 200


def test_plugin_fixture_is_started(fake_provider: FakeProvider) -> None:
    assert fake_provider.running
    fake_provider.add_key("k", credits=3.0)
    r = httpx.get(
        fake_provider.openrouter_base_url + "/credits", headers={"Authorization": "Bearer k"}
    )
    assert r.json() == {"data": {"total_credits": 3.0, "total_usage": 0.0}}


# ------------------------------------------------------------------ keys and auth


def test_key_state_and_set_key(fake: FakeProvider) -> None:
    state = fake.add_key("k2", credits=5.0, usage=1.0, limit=3.0, budget_remaining=2.0)
    assert state == KeyState(5.0, 1.0, 3.0, 2.0)
    assert fake.key("k2") is state
    assert state.remaining == 4.0
    fake.set_key("k2", usage=2.5, limit=None)
    assert (state.usage, state.limit) == (2.5, None)
    with pytest.raises(TypeError):
        fake.set_key("k2", nope=1.0)
    with pytest.raises(KeyError):
        fake.key("missing")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/credits", None),
        ("GET", "/api/v1/key", None),
        ("POST", CHAT, chat_body()),
        ("POST", "/v1/messages", {"model": "claude", "max_tokens": 5, "messages": []}),
        ("GET", "/v1/credits", None),
        ("POST", "/v1/image/generation/create", {"prompt": "cat"}),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"x-api-key": "nope"}])
def test_unknown_or_missing_key_is_401(
    fake: FakeProvider,
    mock: httpx.Client,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    r = mock.request(method, path, json=body, headers=headers)
    assert r.status_code == 401
    assert "error" in r.json()
    assert fake.key(KEY).usage == 0.0


def test_auth_by_x_api_key(mock: httpx.Client) -> None:
    r = mock.get("/api/v1/credits", headers={"x-api-key": KEY})
    assert r.status_code == 200


def test_unknown_path_and_wrong_method_are_404(fake: FakeProvider, mock: httpx.Client) -> None:
    assert mock.get("/nope", headers=AUTH).status_code == 404
    r = mock.get(CHAT, headers=AUTH)  # chat is POST only
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 404
    assert mock.post("/api/v1/credits", headers=AUTH).status_code == 404
    assert fake.count("unknown") == 3
    assert fake.count("chat") == 0


# ------------------------------------------------------------------ OpenRouter balance endpoints


def test_openrouter_credits_shape(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.set_key(KEY, credits=25.5, usage=3.25)
    r = client.get("/api/v1/credits", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"data": {"total_credits": 25.5, "total_usage": 3.25}}


def test_openrouter_key_shape_unlimited(mock: httpx.Client) -> None:
    data = mock.get("/api/v1/key", headers=AUTH).json()["data"]
    assert data["limit"] is None
    assert data["limit_remaining"] is None
    assert data["limit_reset"] is None
    assert data["effective_budget"] is None
    assert data["usage"] == data["usage_daily"] == data["usage_weekly"] == 0.0
    assert data["usage_monthly"] == 0.0
    assert data["is_free_tier"] is False
    assert data["include_byok_in_limit"] is False
    assert isinstance(data["label"], str)


def test_openrouter_key_shape_with_limit_and_budget(
    both: tuple[FakeProvider, httpx.Client],
) -> None:
    fake, client = both
    fake.set_key(KEY, usage=1.5, limit=4.0, budget_remaining=0.75)
    data = client.get("/api/v1/key", headers=AUTH).json()["data"]
    assert data["limit"] == 4.0
    assert data["limit_remaining"] == 2.5
    assert data["usage"] == 1.5
    assert data["effective_budget"] == {"remaining_usd": 0.75, "scope": "key", "resets_at": None}


# ------------------------------------------------------------------ chat completions


def test_chat_completion_shape_and_charge(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.prices["openai/gpt-4o"] = 0.25
    body = chat_body(max_tokens=5)
    r = client.post(CHAT, json=body, headers=AUTH)
    assert r.status_code == 200
    out = r.json()
    assert out["id"].startswith("gen-")
    assert out["object"] == "chat.completion"
    assert out["model"] == "openai/gpt-4o"
    assert isinstance(out["created"], int)
    [choice] = out["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == fake.reply_text
    assert choice["finish_reason"] == "stop"
    n = len(r.request.content) // 4
    assert out["usage"] == {
        "prompt_tokens": n,
        "completion_tokens": 5,
        "total_tokens": n + 5,
        "cost": 0.25,
    }
    assert fake.key(KEY).usage == 0.25
    # an unpriced model costs default_price; completion tokens are capped at 16
    r = client.post("/v1/chat/completions", json=chat_body("other", max_tokens=500), headers=AUTH)
    assert r.json()["usage"]["cost"] == 0.01
    assert r.json()["usage"]["completion_tokens"] == 16
    assert fake.key(KEY).usage == pytest.approx(0.26)


def test_chat_402_when_out_of_credits_charges_nothing(
    both: tuple[FakeProvider, httpx.Client],
) -> None:
    fake, client = both
    fake.set_key(KEY, credits=0.03)
    for _ in range(3):  # 0.03 buys exactly three 0.01 calls despite float rounding
        assert client.post(CHAT, json=chat_body(), headers=AUTH).status_code == 200
    r = client.post(CHAT, json=chat_body(), headers=AUTH)
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["code"] == 402
    assert err["message"].startswith("Insufficient credits.")
    assert fake.key(KEY).usage == pytest.approx(0.03)
    # streaming is refused the same way, with a JSON body
    r = client.post(CHAT, json=chat_body(stream=True), headers=AUTH)
    assert r.status_code == 402
    assert r.json()["error"]["code"] == 402
    assert fake.key(KEY).usage == pytest.approx(0.03)


@pytest.mark.parametrize(
    "fields",
    [
        {"credits": 10.0, "usage": 9.995},
        {"limit": 1.0, "usage": 0.995},
        {"budget_remaining": 0.005},
    ],
)
def test_chat_402_from_each_limit(
    fake: FakeProvider, mock: httpx.Client, fields: dict[str, float]
) -> None:
    fake.set_key(KEY, **fields)
    before = (fake.key(KEY).usage, fake.key(KEY).budget_remaining)
    r = mock.post(CHAT, json=chat_body(), headers=AUTH)
    assert r.status_code == 402
    assert (fake.key(KEY).usage, fake.key(KEY).budget_remaining) == before


def test_chat_draws_down_budget(fake: FakeProvider, mock: httpx.Client) -> None:
    fake.set_key(KEY, budget_remaining=0.5)
    assert mock.post(CHAT, json=chat_body(), headers=AUTH).status_code == 200
    assert fake.key(KEY).budget_remaining == pytest.approx(0.49)
    assert mock.get("/api/v1/key", headers=AUTH).json()["data"]["effective_budget"][
        "remaining_usd"
    ] == pytest.approx(0.49)


def test_chat_bad_request(fake: FakeProvider, mock: httpx.Client) -> None:
    assert mock.post(CHAT, content=b"{nope", headers=AUTH).status_code == 400
    assert mock.post(CHAT, json={"messages": []}, headers=AUTH).status_code == 400
    assert fake.key(KEY).usage == 0.0


def test_chat_stream_events(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.stream_chunks = 4
    fake.prices["m"] = 0.5
    with client.stream("POST", CHAT, json=chat_body("m", stream=True), headers=AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert fake.key(KEY).usage == 0.5  # charged at stream start
        text = r.read().decode()
    blocks = sse_blocks(text)
    assert blocks[0] == ": OPENROUTER PROCESSING"
    assert sse_data(blocks[-1]) == "[DONE]"
    chunks = [sse_data(b) for b in blocks[1:-1]]
    content, final = chunks[:-1], chunks[-1]
    assert len(content) == 4
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == fake.reply_text
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert final["choices"] == []
    assert final["usage"]["cost"] == 0.5
    assert final["usage"]["total_tokens"] == (
        final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]
    )
    assert fake.key(KEY).usage == 0.5


def test_stream_delay(fake: FakeProvider, mock: httpx.Client) -> None:
    fake.stream_delay = 0.02
    start = time.monotonic()
    r = mock.post(CHAT, json=chat_body(stream=True), headers=AUTH)
    # comment, 3 chunks, usage, [DONE]: 5 gaps
    assert time.monotonic() - start >= 5 * 0.02
    assert r.text.endswith("data: [DONE]\n\n")


def test_stream_gate_real_server(fake: FakeProvider) -> None:
    """The first content chunk reaches the client while the rest waits on the gate."""
    fake.stream_gate = threading.Event()
    with fake, httpx.Client(base_url=fake.url, timeout=5.0) as client:
        start = time.monotonic()
        with client.stream("POST", CHAT, json=chat_body(stream=True), headers=AUTH) as r:
            received = ""
            lines = r.iter_lines()
            for line in lines:
                received += line + "\n"
                if line.startswith("data: {"):
                    break
            first = time.monotonic() - start
            assert first < 2.0  # not held back until the gate's 10 s timeout
            assert "delta" in received
            assert "[DONE]" not in received
            assert not fake.stream_gate.is_set()
            fake.stream_gate.set()
            rest = "\n".join(lines)
        assert rest.rstrip().endswith("data: [DONE]")
        assert '"choices":[]' in rest


def test_stream_gate_mock_sync(fake: FakeProvider, mock: httpx.Client) -> None:
    gate = fake.stream_gate = threading.Event()
    with mock.stream("POST", CHAT, json=chat_body(stream=True), headers=AUTH) as r:
        chunks = r.iter_raw()
        assert next(chunks).startswith(b": OPENROUTER")
        assert b'"content"' in next(chunks)
        gate.set()
        rest = b"".join(chunks)
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_stream_gate_mock_async(fake: FakeProvider) -> None:
    gate = fake.stream_gate = threading.Event()
    transport = httpx.MockTransport(fake.handler)
    async with (
        httpx.AsyncClient(transport=transport, base_url=MOCK_BASE) as client,
        client.stream("POST", CHAT, json=chat_body(stream=True), headers=AUTH) as r,
    ):
        chunks = r.aiter_raw()
        assert (await chunks.__anext__()).startswith(b": OPENROUTER")
        assert b'"content"' in await chunks.__anext__()
        asyncio.get_running_loop().call_later(0.05, gate.set)
        rest = b"".join([c async for c in chunks])
    assert gate.is_set()
    assert rest.endswith(b"data: [DONE]\n\n")


# ------------------------------------------------------------------ Anthropic messages

MESSAGES = "/v1/messages"


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def test_messages_shape_and_charge(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.prices["claude-x"] = 0.2
    r = client.post(MESSAGES, json=anthropic_body(), headers={"x-api-key": KEY})
    assert r.status_code == 200
    out = r.json()
    assert out["id"].startswith("msg_")
    assert out["type"] == "message"
    assert out["role"] == "assistant"
    assert out["model"] == "claude-x"
    assert out["content"] == [{"type": "text", "text": fake.reply_text}]
    assert out["stop_reason"] == "end_turn"
    assert out["stop_sequence"] is None
    assert out["usage"] == {"input_tokens": len(r.request.content) // 4, "output_tokens": 8}
    assert fake.key(KEY).usage == 0.2


def test_messages_out_of_credits_is_400(fake: FakeProvider, mock: httpx.Client) -> None:
    fake.set_key(KEY, usage=9.999)
    r = mock.post(MESSAGES, json=anthropic_body(), headers={"x-api-key": KEY})
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Your credit balance is too low to access the Anthropic API.",
        },
    }
    assert fake.key(KEY).usage == 9.999


def test_messages_401_shape(mock: httpx.Client) -> None:
    r = mock.post(MESSAGES, json=anthropic_body(), headers={"x-api-key": "bad"})
    assert r.status_code == 401
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"


def test_messages_stream_events(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    with client.stream(
        "POST", MESSAGES, json=anthropic_body(stream=True), headers={"x-api-key": KEY}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    blocks = sse_blocks(text)
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = [sse_data(b) for b in blocks]
    assert [d["type"] for d in datas] == names
    assert datas[0]["message"]["model"] == "claude-x"
    text_out = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    assert text_out == fake.reply_text
    assert datas[6]["usage"] == {"output_tokens": 8}
    assert datas[6]["delta"]["stop_reason"] == "end_turn"
    assert fake.key(KEY).usage == 0.01


# ------------------------------------------------------------------ Stablecog


def test_stablecog_credits_shape(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.set_key(KEY, credits=100.0, usage=30.0)
    r = client.get("/v1/credits", headers=AUTH)
    assert r.status_code == 200
    out = r.json()
    assert out["total_remaining_credits"] == 70
    [credit] = out["credits"]
    assert credit["remaining_amount"] == 70
    assert credit["expires_at"] is None
    assert credit["type"]["amount"] == 100
    assert credit["type"]["name"] == "Fake credits"
    assert fake.count("stablecog_credits") == 1
    assert fake.count("credits") == 0


def test_stablecog_create_charges_and_refuses(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.set_key(KEY, credits=5.0)
    path = "/v1/image/generation/create"
    r = client.post(path, json={"prompt": "cat", "model_id": "sdxl"}, headers=AUTH)
    assert r.status_code == 200
    assert len(r.json()["outputs"]) == 2  # default num_outputs
    assert all(o["url"].startswith("https://") for o in r.json()["outputs"])
    assert r.json()["remaining_credits"] == 3
    r = client.post(path, json={"prompt": "cat", "num_outputs": 3}, headers=AUTH)
    assert r.json()["remaining_credits"] == 0
    r = client.post(path, json={"prompt": "cat", "num_outputs": 1}, headers=AUTH)
    assert r.status_code == 400
    assert r.json() == {"error": "insufficient_credits"}
    assert fake.key(KEY).usage == 5.0
    assert fake.requests[0].model == "sdxl"  # model_id is recorded as the model


# ------------------------------------------------------------------ faults


def test_fault_status_json_error(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.fault("credits", status=503)
    for _ in range(2):
        r = client.get("/api/v1/credits", headers=AUTH)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == 503
    fake.clear_faults()
    assert client.get("/api/v1/credits", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b'{"data": {"total_credits": 1', b'{"data": {"total_credits": "10"}}'],
)
def test_fault_garbage_body(both: tuple[FakeProvider, httpx.Client], body: bytes) -> None:
    fake, client = both
    fake.fault("credits", body=body, times=1)
    r = client.get("/api/v1/credits", headers=AUTH)
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["content-type"] == "application/json"
    assert client.get("/api/v1/credits", headers=AUTH).json()["data"]["total_credits"] == 10.0


def test_fault_status_with_body(mock: httpx.Client, fake: FakeProvider) -> None:
    fake.fault("key", status=403, body=b'{"error": {"message": "budget exceeded"}}', times=1)
    r = mock.get("/api/v1/key", headers=AUTH)
    assert r.status_code == 403
    assert r.json() == {"error": {"message": "budget exceeded"}}


def test_fault_delay_then_normal_answer(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    # 0.5 s, not 0.15: the second answer (no delay: times=1 is used up) is told apart from
    # a delayed one by the delay itself, and a loopback answer on a loaded machine can take
    # more than 0.15 s
    fake.fault("key", delay=0.5, times=1)
    start = time.monotonic()
    r = client.get("/api/v1/key", headers=AUTH)
    assert time.monotonic() - start >= 0.5
    assert r.status_code == 200 and "data" in r.json()
    start = time.monotonic()
    client.get("/api/v1/key", headers=AUTH)
    assert time.monotonic() - start < 0.5


def test_fault_delay_times_out_on_real_server(fake: FakeProvider) -> None:
    fake.fault("credits", delay=0.5, times=1)
    with (
        fake,
        httpx.Client(base_url=fake.url, timeout=0.1) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get("/api/v1/credits", headers=AUTH)


def test_fault_drop(both: tuple[FakeProvider, httpx.Client]) -> None:
    fake, client = both
    fake.fault("chat", drop=True, times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, json=chat_body(), headers=AUTH)
    assert fake.key(KEY).usage == 0.0  # nothing charged
    r = client.post(CHAT, json=chat_body(), headers=AUTH)  # times=1: back to normal
    assert r.status_code == 200
    assert fake.count("chat") == 2


def test_faults_queue_in_order(fake: FakeProvider, mock: httpx.Client) -> None:
    fake.fault("key", status=500, times=2)
    fake.fault("key", body=b"garbage", times=1)
    got = [mock.get("/api/v1/key", headers=AUTH) for _ in range(4)]
    assert [r.status_code for r in got] == [500, 500, 200, 200]
    assert got[2].content == b"garbage"
    assert "data" in got[3].json()


def test_fault_rejects_bad_arguments(fake: FakeProvider) -> None:
    with pytest.raises(ValueError):
        fake.fault("credit", status=500)  # typo
    with pytest.raises(ValueError):
        fake.fault("credits", status=500, times=0)


async def test_async_delay_does_not_block_the_loop(fake: FakeProvider) -> None:
    fake.fault("key", delay=0.5)
    transport = httpx.MockTransport(fake.handler)
    async with httpx.AsyncClient(transport=transport, base_url=MOCK_BASE) as client:
        start = time.monotonic()
        rs = await asyncio.gather(*(client.get("/api/v1/key", headers=AUTH) for _ in range(5)))
        elapsed = time.monotonic() - start
    assert all(r.status_code == 200 for r in rs)
    # five sequential sleeps would take 2.5 s, any two in a row 1 s: the bound is 2 delays
    # (was 0.6 s with a 0.2 s delay: 0.4 s of margin a loaded machine could use up)
    assert 0.5 <= elapsed < 1.0


async def test_async_drop_after_delay(fake: FakeProvider) -> None:
    fake.fault("chat", delay=0.05, drop=True, times=1)
    transport = httpx.MockTransport(fake.handler)
    async with httpx.AsyncClient(transport=transport, base_url=MOCK_BASE) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(CHAT, json=chat_body(), headers=AUTH)


async def test_ahandler(fake: FakeProvider) -> None:
    fake.fault("credits", delay=0.01, times=1)
    r = await fake.ahandler(httpx.Request("GET", MOCK_BASE + "/api/v1/credits", headers=AUTH))
    assert r.status_code == 200
    await r.aread()
    assert r.json()["data"]["total_credits"] == 10.0


# ------------------------------------------------------------------ counters and records


def test_counters_and_records(fake: FakeProvider, mock: httpx.Client) -> None:
    fake.fault("credits", status=500, times=1)
    mock.get("/api/v1/credits", headers=AUTH)  # counted although faulted
    mock.get("/api/v1/credits", headers=AUTH)
    mock.post(CHAT, json=chat_body("a/b"), headers=AUTH)
    assert fake.count("credits") == 2
    assert fake.count("chat") == 1
    assert fake.count("key") == 0
    reqs = fake.requests
    assert [r.endpoint for r in reqs] == ["credits", "credits", "chat"]
    assert reqs[0].method == "GET" and reqs[0].json is None and reqs[0].model is None
    assert reqs[2].path == CHAT
    assert reqs[2].model == "a/b"
    assert reqs[2].json == chat_body("a/b")
    assert reqs[2].headers["authorization"] == f"Bearer {KEY}"
    fake.reset_counts()
    assert fake.count("credits") == 0
    assert fake.requests == []


# ------------------------------------------------------------------ async clients


async def test_async_client_mock(fake: FakeProvider) -> None:
    transport = httpx.MockTransport(fake.handler)
    async with httpx.AsyncClient(transport=transport, base_url=MOCK_BASE) as client:
        r = await client.post(CHAT, json=chat_body(), headers=AUTH)
        assert r.json()["usage"]["cost"] == 0.01
        async with client.stream("POST", CHAT, json=chat_body(stream=True), headers=AUTH) as s:
            text = (await s.aread()).decode()
    assert text.startswith(": OPENROUTER PROCESSING\n\n")
    assert text.endswith("data: [DONE]\n\n")
    assert fake.key(KEY).usage == pytest.approx(0.02)


async def test_async_client_live(fake_provider: FakeProvider) -> None:
    fake = fake_provider
    fake.add_key(KEY, credits=1.0)
    fake.fault("key", delay=0.05, times=1)
    async with httpx.AsyncClient(base_url=fake.openrouter_base_url, timeout=5.0) as client:
        key_r, credits_r = await asyncio.gather(
            client.get("/key", headers=AUTH), client.get("/credits", headers=AUTH)
        )
        assert key_r.status_code == credits_r.status_code == 200
        chunks: list[str] = []
        async with client.stream(
            "POST", "/chat/completions", json=chat_body(stream=True), headers=AUTH
        ) as s:
            async for line in s.aiter_lines():
                chunks.append(line)
    assert chunks[0] == ": OPENROUTER PROCESSING"
    assert chunks[-2:] == ["data: [DONE]", ""] or chunks[-1] == "data: [DONE]"
    assert fake.count("key") == 1 and fake.count("chat") == 1


# ------------------------------------------------------------------ concurrency


def test_concurrent_requests_live(fake_provider: FakeProvider) -> None:
    fake = fake_provider
    fake.add_key(KEY)
    limits = httpx.Limits(max_connections=50)
    with (
        httpx.Client(base_url=fake.url, timeout=5.0, limits=limits) as client,
        ThreadPoolExecutor(max_workers=50) as pool,
    ):
        codes = list(
            pool.map(lambda _: client.get("/api/v1/key", headers=AUTH).status_code, range(50))
        )
    assert codes == [200] * 50
    assert fake.count("key") == 50
    assert len(fake.requests) == 50


def test_concurrent_charging_never_overdraws(fake: FakeProvider, mock: httpx.Client) -> None:
    fake.set_key(KEY, credits=0.25)
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(
            pool.map(
                lambda _: mock.post(CHAT, json=chat_body(), headers=AUTH).status_code, range(50)
            )
        )
    assert codes.count(200) == 25
    assert codes.count(402) == 25
    assert fake.count("chat") == 50
    assert fake.key(KEY).usage == pytest.approx(0.25)


async def test_sync_client_inside_async_code_still_gets_a_response(fake: FakeProvider) -> None:
    """A delay fault only returns a coroutine to MockTransport's async path."""
    fake.fault("key", delay=0.01, times=1)
    with httpx.Client(transport=httpx.MockTransport(fake.handler), base_url=MOCK_BASE) as c:
        assert c.get("/api/v1/key", headers=AUTH).status_code == 200
