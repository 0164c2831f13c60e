"""The real anthropic 2.x SDK over the httpx2 guard transport, against the loopback fake.

anthropic 2.x builds on httpx2, so the guard goes in as ``http_client=cg2.client(guard)``
(or ``cg2.async_client(guard)``). Every test drives the SDK's own public calls and checks
what the fake provider really received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from creditguard import BudgetGuard, Decision, Policy
from creditguard import httpx2 as cg2
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-ant-api03-SDKTESTSECRETAAAAAAAAAAAAAAAAAAAA"
OTHER = "sk-ant-api03-SDKTESTSECRETBBBBBBBBBBBBBBBBBBBB"
BIG, CHEAP = "claude-big", "claude-cheap"
POLICY = Policy(warn_below=5, downgrade_below=2, refuse_below=0.5, downgrade={BIG: CHEAP})
ARGS: dict[str, Any] = {
    "model": BIG,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hello"}],
}
# key limits (USD) that put the guard in each tier (estimate 0, thresholds above)
FUNDS = {"allow": 10.0, "downgrade": 1.5, "refuse": 0.3}
MODES = ["create", "create-stream", "stream-helper"]
FIRST_TEXT_WITHIN = 5.0  # seconds; the fake's gate gives up after 10


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.add_key(KEY, limit=FUNDS["allow"])
        yield provider


@pytest.fixture
def decisions() -> list[Decision]:
    return []


@pytest.fixture
def make_guard(fake: FakeProvider) -> Iterator[Callable[..., BudgetGuard]]:
    """Guards judged by the fake's ``GET /api/v1/key`` on the key each call carries;
    closed after the test, whatever happens in it."""
    made: list[BudgetGuard] = []

    def factory(policy: Policy = POLICY, **kw: Any) -> BudgetGuard:
        kw.setdefault("estimate", 0.0)
        g = BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy, **kw)
        made.append(g)
        return g

    yield factory
    for g in made:
        g.close()


@pytest.fixture
def guard(make_guard: Callable[..., BudgetGuard], decisions: list[Decision]) -> BudgetGuard:
    return make_guard(on_decision=decisions.append)


def sync_client(fake: FakeProvider, guard: BudgetGuard, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", KEY)
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(
        base_url=fake.anthropic_base_url, http_client=cg2.client(guard), **kw
    )


def async_client(fake: FakeProvider, guard: BudgetGuard, **kw: Any) -> anthropic.AsyncAnthropic:
    kw.setdefault("api_key", KEY)
    kw.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(
        base_url=fake.anthropic_base_url, http_client=cg2.async_client(guard), **kw
    )


def ask(client: anthropic.Anthropic, mode: str) -> tuple[str, str]:
    """One call in ``mode``: the model the SDK reports and the text it got."""
    if mode == "create":
        message = client.messages.create(**ARGS)
        return message.model, "".join(b.text for b in message.content if b.type == "text")
    if mode == "create-stream":
        with client.messages.create(**ARGS, stream=True) as stream:
            events = list(stream)
        start = next(e for e in events if e.type == "message_start")
        text = "".join(
            e.delta.text
            for e in events
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
        return start.message.model, text
    with client.messages.stream(**ARGS) as helper:
        text = "".join(helper.text_stream)
        return helper.get_final_message().model, text


async def aask(client: anthropic.AsyncAnthropic, mode: str) -> tuple[str, str]:
    if mode == "create":
        message = await client.messages.create(**ARGS)
        return message.model, "".join(b.text for b in message.content if b.type == "text")
    if mode == "create-stream":
        stream = await client.messages.create(**ARGS, stream=True)
        async with stream:
            events = [e async for e in stream]
        start = next(e for e in events if e.type == "message_start")
        text = "".join(
            e.delta.text
            for e in events
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
        return start.message.model, text
    async with client.messages.stream(**ARGS) as helper:
        text = "".join([t async for t in helper.text_stream])
        return (await helper.get_final_message()).model, text


def models_seen(fake: FakeProvider) -> list[str | None]:
    return [r.model for r in fake.requests if r.endpoint == "messages"]


# -- allow / downgrade / refuse, sync and async, streaming and not ----------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("action", "expected"), [("allow", BIG), ("downgrade", CHEAP)])
def test_sync_forwards_the_model_the_guard_chose(
    fake: FakeProvider,
    guard: BudgetGuard,
    decisions: list[Decision],
    mode: str,
    action: str,
    expected: str,
) -> None:
    fake.set_key(KEY, limit=FUNDS[action])
    with sync_client(fake, guard) as client:
        model, text = ask(client, mode)
    assert (model, text) == (expected, fake.reply_text)
    assert models_seen(fake) == [expected]
    assert [d.action for d in decisions] == [action]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("action", "expected"), [("allow", BIG), ("downgrade", CHEAP)])
async def test_async_forwards_the_model_the_guard_chose(
    fake: FakeProvider,
    guard: BudgetGuard,
    decisions: list[Decision],
    mode: str,
    action: str,
    expected: str,
) -> None:
    fake.set_key(KEY, limit=FUNDS[action])
    async with async_client(fake, guard) as client:
        model, text = await aask(client, mode)
    assert (model, text) == (expected, fake.reply_text)
    assert models_seen(fake) == [expected]
    assert [d.action for d in decisions] == [action]


def check_refusal(exc: anthropic.PaymentRequiredError) -> None:
    assert exc.status_code == 402
    assert exc.type == "insufficient_credits"  # error.type of the body
    assert exc.response.headers["x-creditguard-decision"] == "refuse"
    assert exc.response.headers["x-should-retry"] == "false"
    body = exc.body
    assert isinstance(body, dict)
    assert body["error"]["code"] == 402
    meta = body["error"]["metadata"]["creditguard"]
    assert set(meta) == {"action", "reason", "model"}  # DESIGN: no balance figures
    assert meta["action"] == "refuse" and meta["model"] == BIG
    assert isinstance(meta["reason"], str) and meta["reason"]


@pytest.mark.parametrize("mode", MODES)
def test_sync_refusal_is_a_402_the_sdk_does_not_retry(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], mode: str
) -> None:
    fake.set_key(KEY, limit=FUNDS["refuse"])
    with (
        sync_client(fake, guard, max_retries=3) as client,
        pytest.raises(anthropic.PaymentRequiredError) as info,
    ):
        ask(client, mode)
    check_refusal(info.value)
    assert fake.count("messages") == 0
    assert [d.action for d in decisions] == ["refuse"]  # one attempt, no retry


@pytest.mark.parametrize("mode", MODES)
async def test_async_refusal_is_a_402_the_sdk_does_not_retry(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision], mode: str
) -> None:
    fake.set_key(KEY, limit=FUNDS["refuse"])
    async with async_client(fake, guard, max_retries=3) as client:
        with pytest.raises(anthropic.PaymentRequiredError) as info:
            await aask(client, mode)
    check_refusal(info.value)
    assert fake.count("messages") == 0
    assert [d.action for d in decisions] == ["refuse"]


def test_refusal_is_a_status_error_not_a_connection_error(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    fake.set_key(KEY, limit=FUNDS["refuse"])
    with sync_client(fake, guard, max_retries=2) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(**ARGS)
    assert type(info.value) is anthropic.PaymentRequiredError
    assert not isinstance(info.value, anthropic.APIConnectionError)


def test_the_decision_is_on_the_response_headers(fake: FakeProvider, guard: BudgetGuard) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    with sync_client(fake, guard) as client:
        raw = client.messages.with_raw_response.create(**ARGS)
        message = raw.parse()
    assert raw.headers["x-creditguard-decision"] == "downgrade"
    assert raw.headers["x-creditguard-model-requested"] == BIG
    assert message.model == CHEAP


def test_downgrade_changes_nothing_but_the_model(fake: FakeProvider, guard: BudgetGuard) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    request: dict[str, Any] = {
        "model": BIG,
        "max_tokens": 16,
        "system": 'Answer in Fran\u00e7ais, quote "model": "x" verbatim.',
        "messages": [{"role": "user", "content": 'caf\u00e9 \u2615 \U0001f600 \\ "model"'}],
        "metadata": {"user_id": "u-1"},
        "stop_sequences": ["model"],
    }
    with sync_client(fake, guard) as client:
        client.messages.create(**request)
    sent = next(r for r in fake.requests if r.endpoint == "messages")
    assert sent.json == {**request, "model": CHEAP}


def test_beta_messages_are_judged_too(fake: FakeProvider, guard: BudgetGuard) -> None:
    # client.beta.messages posts to /v1/messages?beta=true: the query is not the path
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    with sync_client(fake, guard) as client:
        message = client.beta.messages.create(**ARGS)
    assert message.model == CHEAP
    assert models_seen(fake) == [CHEAP]


def test_other_endpoints_pass_untouched(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    # count_tokens is a POST under /messages/ that costs nothing: not judged, even at
    # a balance that refuses generation calls (the fake has no such route: 404).
    fake.set_key(KEY, limit=FUNDS["refuse"])
    with sync_client(fake, guard) as client, pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model=BIG, messages=ARGS["messages"])
    assert decisions == []
    assert fake.count("key") == 0
    assert [r.path for r in fake.requests] == ["/v1/messages/count_tokens"]


# -- whose balance: the key the SDK sends -------------------------------------------------


def test_each_key_is_judged_on_its_own_balance(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    fake.add_key(OTHER, limit=FUNDS["downgrade"])
    with sync_client(fake, guard) as rich, sync_client(fake, guard, api_key=OTHER) as poor:
        assert rich.messages.create(**ARGS).model == BIG
        assert poor.messages.create(**ARGS).model == CHEAP
    assert [d.action for d in decisions] == ["allow", "downgrade"]
    # anthropic 2.x sends api_key as `Authorization: Bearer` (not x-api-key);
    # the balance lookups went out with the same key the call carried
    messages = [r for r in fake.requests if r.endpoint == "messages"]
    assert [r.headers.get("authorization") for r in messages] == [
        f"Bearer {KEY}",
        f"Bearer {OTHER}",
    ]
    lookups = [r.headers.get("authorization") for r in fake.requests if r.endpoint == "key"]
    assert lookups == [f"Bearer {KEY}", f"Bearer {OTHER}"]


def test_credential_from_the_x_api_key_header(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    with sync_client(
        fake,
        guard,
        api_key=None,
        default_headers={"x-api-key": KEY, "Authorization": anthropic.Omit()},
    ) as client:
        assert client.messages.create(**ARGS).model == CHEAP
    sent = next(r for r in fake.requests if r.endpoint == "messages")
    assert sent.headers.get("x-api-key") == KEY and "authorization" not in sent.headers
    lookup = next(r for r in fake.requests if r.endpoint == "key")
    assert lookup.headers.get("authorization") == f"Bearer {KEY}"
    assert [d.action for d in decisions] == ["downgrade"]


# -- retries ------------------------------------------------------------------------------


# first attempts the SDK retries: a 500, an overloaded 529, a dropped connection
FAULTS: dict[str, dict[str, Any]] = {
    "500": {"status": 500},
    "529": {"status": 529},
    "dropped": {"drop": True},
}


def _retry_setup(
    fake: FakeProvider,
    make_guard: Callable[..., BudgetGuard],
    decisions: list[Decision],
    fault: str = "500",
) -> BudgetGuard:
    """A guard that would allow a second judgment: after its first decision the key
    is topped up and the cached balance expires well before the SDK's retry
    (>= 0.375 s). The retry keeps the first decision (downgraded); it only takes a
    new hold, which the fresh balance has room for."""
    fake.set_key(KEY, limit=FUNDS["downgrade"])

    def decided(decision: Decision) -> None:
        decisions.append(decision)
        fake.set_key(KEY, limit=FUNDS["allow"])

    fake.fault("messages", times=1, **FAULTS[fault])
    return make_guard(ttl=0.05, on_decision=decided)


def _check_retry(fake: FakeProvider, decisions: list[Decision], model: str) -> None:
    assert model == CHEAP
    messages = [r for r in fake.requests if r.endpoint == "messages"]
    assert [r.model for r in messages] == [CHEAP, CHEAP]
    assert [r.headers.get("x-stainless-retry-count") for r in messages] == ["0", "1"]
    assert [d.action for d in decisions] == ["downgrade"]  # the retry was not judged again


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_sync_retry_carries_the_same_downgrade(
    fake: FakeProvider, make_guard: Callable[..., BudgetGuard], fault: str
) -> None:
    decisions: list[Decision] = []
    guard = _retry_setup(fake, make_guard, decisions, fault)
    with sync_client(fake, guard, max_retries=2) as client:
        model = client.messages.create(**ARGS).model
    _check_retry(fake, decisions, model)


@pytest.mark.parametrize("fault", ["500", "dropped"])
async def test_async_retry_carries_the_same_downgrade(
    fake: FakeProvider, make_guard: Callable[..., BudgetGuard], fault: str
) -> None:
    decisions: list[Decision] = []
    guard = _retry_setup(fake, make_guard, decisions, fault)
    async with async_client(fake, guard, max_retries=2) as client:
        model = (await client.messages.create(**ARGS)).model
    _check_retry(fake, decisions, model)


def test_streamed_retry_carries_the_same_downgrade(
    fake: FakeProvider, make_guard: Callable[..., BudgetGuard]
) -> None:
    decisions: list[Decision] = []
    guard = _retry_setup(fake, make_guard, decisions)
    with sync_client(fake, guard, max_retries=2) as client:
        with client.messages.stream(**ARGS) as helper:
            model = helper.get_final_message().model
    _check_retry(fake, decisions, model)


# -- the key stays secret -----------------------------------------------------------------


@pytest.mark.parametrize("cause", ["low balance", "source error"])
def test_the_key_never_appears_in_errors_or_logs(
    fake: FakeProvider,
    make_guard: Callable[..., BudgetGuard],
    caplog: pytest.LogCaptureFixture,
    cause: str,
) -> None:
    if cause == "low balance":
        fake.set_key(KEY, limit=FUNDS["refuse"])
    else:
        fake.fault("key", status=401)
    guard = make_guard(dataclasses.replace(POLICY, on_source_error="refuse"), estimate=0.01)
    with caplog.at_level(logging.DEBUG):
        with sync_client(fake, guard, max_retries=2) as client:
            with pytest.raises(anthropic.PaymentRequiredError) as info:
                client.messages.create(**ARGS)
            # and a downgraded call that reaches the provider, for the logs
            fake.clear_faults()
            fake.set_key(KEY, limit=FUNDS["downgrade"])
            guard.invalidate(KEY)
            assert client.messages.create(**ARGS).model == CHEAP
    exc = info.value
    texts = [str(exc), repr(exc), repr(exc.body), exc.response.text, caplog.text, repr(guard)]
    assert all("SDKTESTSECRET" not in text for text in texts)  # not even a part of it
    assert fake.count("messages") == 1


# -- streaming is not buffered ------------------------------------------------------------


def test_sync_stream_reaches_the_sdk_unbuffered(fake: FakeProvider, guard: BudgetGuard) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])  # the rewritten request streams too
    gate = fake.stream_gate = threading.Event()
    started = time.monotonic()
    with sync_client(fake, guard) as client, client.messages.stream(**ARGS) as helper:
        texts = iter(helper.text_stream)
        first = next(texts)
        waited = time.monotonic() - started
        # the server is holding the rest of the stream until the gate opens
        assert not gate.is_set() and waited < FIRST_TEXT_WITHIN
        gate.set()
        rest = list(texts)
        message = helper.get_final_message()
    assert first + "".join(rest) == fake.reply_text and rest
    assert message.model == CHEAP


async def test_async_stream_reaches_the_sdk_unbuffered(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    gate = fake.stream_gate = threading.Event()
    started = time.monotonic()
    async with (
        async_client(fake, guard) as client,
        client.messages.stream(**ARGS) as helper,
    ):
        texts = helper.text_stream.__aiter__()
        first = await texts.__anext__()
        waited = time.monotonic() - started
        assert not gate.is_set() and waited < FIRST_TEXT_WITHIN
        gate.set()
        rest = [t async for t in texts]
        message = await helper.get_final_message()
    assert first + "".join(rest) == fake.reply_text and rest
    assert message.model == CHEAP


def test_a_stream_closed_early_releases_its_connection(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    gate = fake.stream_gate = threading.Event()  # the rest never comes before we leave
    with sync_client(fake, guard) as client:
        with client.messages.stream(**ARGS) as helper:
            assert next(iter(helper.text_stream))
        gate.set()
        # the connection was returned or dropped cleanly: the next call works
        assert client.messages.create(**ARGS).model == CHEAP


async def test_async_stream_closed_early(fake: FakeProvider, guard: BudgetGuard) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    gate = fake.stream_gate = threading.Event()
    async with async_client(fake, guard) as client:
        async with client.messages.stream(**ARGS) as helper:
            assert await helper.text_stream.__aiter__().__anext__()
        gate.set()
        assert (await client.messages.create(**ARGS)).model == CHEAP


async def test_concurrent_calls_share_one_balance_fetch(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    fake.fault("key", delay=0.2)  # a slow balance endpoint: every call waits on one fetch
    async with async_client(fake, guard) as client:
        replies = await asyncio.gather(*(client.messages.create(**ARGS) for _ in range(20)))
    assert {r.model for r in replies} == {CHEAP}
    assert fake.count("key") == 1
    assert [d.action for d in decisions] == ["downgrade"] * 20


def test_an_httpx2_client_of_your_own_with_the_guard_transport(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    # the explicit form: any httpx2.Client, the guard transport wrapping its inner transport
    fake.set_key(KEY, limit=FUNDS["downgrade"])
    http = httpx2.Client(transport=cg2.GuardTransport(guard, inner=httpx2.HTTPTransport()))
    with anthropic.Anthropic(
        base_url=fake.anthropic_base_url, api_key=KEY, http_client=http, max_retries=0
    ) as client:
        assert client.messages.create(**ARGS).model == CHEAP
    assert http.is_closed
    assert models_seen(fake) == [CHEAP]
