"""The guard transport over httpx and httpx2: what is judged, how bodies are
rewritten or left alone, refusals, provider answers, retries, streaming."""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

import creditguard.httpx as cg1
import creditguard.httpx2 as cg2
from creditguard import Balance, BudgetGuard, ConfigError, Decision, Policy
from creditguard._body import find_member
from creditguard.sources import FixedBudget, OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-TRANSPORTSECRET000000000000"
OTHER = "sk-or-v1-TRANSPORTOTHER0000000000000"
POLICY = Policy(
    warn_below=5, downgrade_below=3, refuse_below=1, downgrade={"big": "small", "*": "cheap"}
)
BODY = (
    b'{"messages": [{"role": "user", "content": "caf\\u00e9 \xc3\xa9 \\"model\\": \\"x\\""}],'
    b'\n  "model" :  "big", "temperature": 0.2, "meta": {"model": "big"}}'
)


class Source:
    """Balances per credential, fetch counter."""

    name = "test"
    per_credential = True

    def __init__(self, remaining: float) -> None:
        self.remaining: dict[str | None, float] = {}
        self.default = remaining
        self.calls = 0
        self.seen: list[str | None] = []

    def fetch(self, credential: str | None) -> Balance:
        self.calls += 1
        self.seen.append(credential)
        return Balance(self.remaining.get(credential, self.default), total=100.0, source="test")

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


class Upstream:
    """A mock provider for either library that records the raw requests it gets."""

    def __init__(self, lib: ModuleType) -> None:
        self.lib = lib
        self.requests: list[Any] = []
        self.bodies: list[bytes] = []
        self.reply: Callable[[Any], Any] = lambda request: lib.Response(200, json={"ok": True})

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        self.bodies.append(request.content)
        return self.reply(request)


@pytest.fixture(params=["httpx", "httpx2"])
def stack(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    return (httpx, cg1) if request.param == "httpx" else (httpx2, cg2)


class Harness:
    def __init__(self, stack: tuple[ModuleType, ModuleType], remaining: float, **kw: Any):
        self.lib, self.cg = stack
        self.source = Source(remaining)
        self.decisions: list[Decision] = []
        self.guard = BudgetGuard(
            self.source, POLICY, estimate=0.0, on_decision=self.decisions.append, **kw
        )
        self.upstream = Upstream(self.lib)
        self.client = self.cg.client(
            self.guard,
            transport=self.lib.MockTransport(self.upstream),
            base_url="https://llm.test/api/v1",
            headers={"Authorization": f"Bearer {KEY}"},
        )

    def post(self, path: str = "/chat/completions", content: Any = BODY, **kw: Any) -> Any:
        return self.client.post(path, content=content, **kw)


@pytest.fixture
def make(stack: tuple[ModuleType, ModuleType]) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(remaining: float, **kw: Any) -> Harness:
        h = Harness(stack, remaining, **kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.client.close()


def test_allow_forwards_byte_for_byte(make: Callable[..., Harness]) -> None:
    h = make(50)
    r = h.post()
    assert r.status_code == 200
    assert r.headers["x-creditguard-decision"] == "allow"
    assert h.upstream.bodies == [BODY]
    assert h.decisions[0].requested_model == "big"
    assert h.source.seen == [KEY]


def test_warn_forwards_and_labels(make: Callable[..., Harness]) -> None:
    h = make(4)
    r = h.post()
    assert r.headers["x-creditguard-decision"] == "warn"
    assert h.upstream.bodies == [BODY]


def test_downgrade_splices_only_the_model(make: Callable[..., Harness]) -> None:
    h = make(2)
    r = h.post()
    assert r.headers["x-creditguard-decision"] == "downgrade"
    assert r.headers["x-creditguard-model-requested"] == "big"
    sent = h.upstream.bodies[0]
    assert sent == BODY.replace(b'"model" :  "big"', b'"model" :  "small"')
    assert h.upstream.requests[0].headers["content-length"] == str(len(sent))
    assert json.loads(sent)["meta"] == {"model": "big"}  # nested "model" untouched


def test_downgrade_rewrites_the_model_the_provider_reads(make: Callable[..., Harness]) -> None:
    # duplicate keys: JSON parsers that keep one value keep the last, so the
    # last top-level "model" is judged and rewritten (rewriting the first would
    # let the expensive one through)
    h = make(2)
    body = b'{"model": "big", "messages": [{"model": "x"}], "model": "big", "n": 1}'
    r = h.post(content=body)
    assert r.headers["x-creditguard-decision"] == "downgrade"
    sent = h.upstream.bodies[0]
    assert sent == b'{"model": "big", "messages": [{"model": "x"}], "model": "small", "n": 1}'
    assert json.loads(sent)["model"] == "small"


def test_a_response_labelled_already_keeps_one_label(make: Callable[..., Harness]) -> None:
    h = make(50)
    h.upstream.reply = lambda request: h.lib.Response(
        200, headers={"X-CreditGuard-Decision": "warn"}, json={"ok": True}
    )
    r = h.post()
    assert r.headers.get_list("x-creditguard-decision") == ["allow"]


def test_refuse_answers_402_without_touching_the_network(make: Callable[..., Harness]) -> None:
    h = make(0.5)
    r = h.post()
    assert r.status_code == 402
    assert h.upstream.requests == []
    assert r.headers["x-creditguard-decision"] == "refuse"
    assert r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert error["code"] == 402 and isinstance(error["code"], int)
    assert error["type"] == "insufficient_credits"
    assert "below the refuse threshold" in error["message"]
    assert error["metadata"]["creditguard"] == {
        "action": "refuse",
        "reason": "the credits left after this call would be below the refuse threshold",
        "model": "big",
    }
    assert KEY not in r.text
    assert "0.5" not in r.text  # no balance figures leave the process


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("POST", "/embeddings"),
        ("GET", "/chat/completions"),
        ("POST", "/chat/completions/123/cancel"),
    ],
)
def test_non_generation_requests_pass_untouched(
    make: Callable[..., Harness], method: str, path: str
) -> None:
    h = make(0.5)  # would be refused if judged
    r = h.client.request(method, path, content=BODY if method == "POST" else None)
    assert r.status_code == 200
    assert "x-creditguard-decision" not in r.headers
    assert h.source.calls == 0 and h.decisions == []


@pytest.mark.parametrize(
    "path",
    [
        "/chat/completions",
        "/completions",
        "/responses",
        "/messages",
        "/images/generations",
        "/chat/completions/",  # (providers serve it the same: it passed unjudged)
        "/v1/messages//",
    ],
)
def test_every_generation_path_is_judged(make: Callable[..., Harness], path: str) -> None:
    h = make(2)
    h.post(path)
    assert h.decisions[0].action == "downgrade"


def test_paths_are_configurable(stack: tuple[ModuleType, ModuleType]) -> None:
    lib, cg = stack
    upstream = Upstream(lib)
    guard = BudgetGuard(Source(0.5), POLICY)
    with cg.client(
        guard, transport=lib.MockTransport(upstream), paths=["/generate"], base_url="http://t"
    ) as client:
        assert client.post("/generate", content=BODY).status_code == 402
        assert client.post("/chat/completions", content=BODY).status_code == 200


BAD_BODIES = {
    "not json": b"model=big&prompt=hi",
    "truncated json": b'{"messages": [], "model": "bi',
    "json array": b'[{"model": "big"}]',
    "no model": b'{"messages": []}',
    "model not a string": b'{"model": ["big"], "messages": []}',
    "model null": b'{"model": null}',
    "not utf-8": b'{"model": "big", "x": "\xff\xfe"}',
    "empty": b"",
    "empty object": b"{}",
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bodies_we_cannot_read_are_forwarded_as_they_came(
    make: Callable[..., Harness], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    h = make(2)  # downgrade tier: there is nothing to rewrite
    with caplog.at_level(logging.DEBUG, logger="creditguard"):
        r = h.post(content=BAD_BODIES[name])
    assert r.status_code == 200
    assert h.upstream.bodies == [BAD_BODIES[name]]
    assert h.decisions[0].action == "warn"
    assert "no model to rewrite" in h.decisions[0].reason
    assert "not parsed" in caplog.text


def test_gzip_encoded_body_is_forwarded_unparsed(make: Callable[..., Harness]) -> None:
    h = make(2)
    packed = gzip.compress(BODY)
    h.post(content=packed, headers={"content-encoding": "gzip"})
    assert h.upstream.bodies == [packed]
    assert h.decisions[0].action == "warn"


def test_streamed_request_body_is_forwarded_unparsed(make: Callable[..., Harness]) -> None:
    h = make(2)

    def chunks() -> Iterator[bytes]:
        yield BODY[:10]
        yield BODY[10:]

    r = h.post(content=chunks())
    assert r.status_code == 200
    assert h.upstream.bodies == [BODY]
    assert h.decisions[0].action == "warn"


def test_huge_body_is_forwarded_unparsed(make: Callable[..., Harness]) -> None:
    h = make(2)
    huge = b'{"model": "big", "pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    h.post(content=huge)
    assert h.upstream.bodies[0] == huge
    assert h.decisions[0].model is None


def test_unreadable_bodies_are_still_refused(make: Callable[..., Harness]) -> None:
    h = make(0.5)
    for body in BAD_BODIES.values():
        assert h.post(content=body).status_code == 402
    assert h.upstream.requests == []


def test_stablecog_rewrites_model_id(make: Callable[..., Harness]) -> None:
    h = make(4.5)  # a create call holds its num_outputs: 2.5 left after it, downgrade
    body = b'{"prompt": "a cat", "model_id": "big", "num_outputs": 2}'
    h.post("/image/generation/create", content=body)
    assert h.upstream.bodies == [body.replace(b'"big"', b'"small"')]


def test_credential_from_x_api_key_and_per_key_balances(make: Callable[..., Harness]) -> None:
    h = make(50)
    h.source.remaining[OTHER] = 0.5
    r = h.post(headers={"Authorization": "", "x-api-key": OTHER})
    assert r.status_code == 402
    assert h.post().status_code == 200
    assert h.source.seen == [OTHER, KEY]


def test_source_with_its_own_key_ignores_the_calls_key(make: Callable[..., Harness]) -> None:
    h = make(50)
    h.source.per_credential = False
    h2 = make(50)
    h2.source.per_credential = False
    h2.guard = BudgetGuard(h2.source, POLICY)
    with h2.cg.client(
        h2.guard, transport=h2.lib.MockTransport(h2.upstream), base_url="http://t"
    ) as c:
        c.post("/chat/completions", content=BODY, headers={"x-api-key": OTHER})
    assert h2.source.seen == [None]


# -- what the provider answers ------------------------------------------------


def test_provider_402_marks_the_balance_exhausted(make: Callable[..., Harness]) -> None:
    h = make(50)
    h.upstream.reply = lambda req: h.lib.Response(
        402, json={"error": {"code": 402, "message": "Insufficient credits"}}
    )
    assert h.post().status_code == 402
    assert len(h.upstream.requests) == 1
    r = h.post()  # now refused locally
    assert r.headers["x-creditguard-decision"] == "refuse"
    assert len(h.upstream.requests) == 1


@pytest.mark.parametrize(
    ("message", "exhausted"),
    [("Key budget limit exceeded", True), ("Model not allowed for this key", False)],
)
def test_provider_403_marks_exhausted_only_for_budgets(
    make: Callable[..., Harness], message: str, exhausted: bool
) -> None:
    h = make(50)
    h.upstream.reply = lambda req: h.lib.Response(
        403, json={"error": {"code": 403, "message": message}}
    )
    h.post().read()
    h.upstream.reply = lambda req: h.lib.Response(200, json={})
    assert (h.post().status_code == 402) is exhausted


def test_stablecog_insufficient_credits_and_remaining_credits(
    make: Callable[..., Harness],
) -> None:
    h = make(50)
    h.source.name = "stablecog"
    h2 = make(50)
    src = h2.source
    src.name = "stablecog"
    guard = BudgetGuard(src, Policy(refuse_below=10), estimate=2)
    upstream = h2.upstream
    body = b'{"prompt": "cat", "model_id": "m", "num_outputs": 2}'
    with h2.cg.client(
        guard,
        transport=h2.lib.MockTransport(upstream),
        base_url="http://t",
        headers={"Authorization": f"Bearer {KEY}"},
    ) as c:
        upstream.reply = lambda req: h2.lib.Response(200, json={"remaining_credits": 11})
        assert c.post("/image/generation/create", content=body).status_code == 200
        d = guard.check(credential=KEY, estimate=0)
        assert d.balance is not None and d.balance.remaining == 11
        assert d.balance.total == 100.0  # kept from the fetched snapshot
        assert c.post("/image/generation/create", content=body).status_code == 402  # 11-2 < 10
        guard.invalidate(KEY)
        upstream.reply = lambda req: h2.lib.Response(400, json={"error": "insufficient_credits"})
        assert c.post("/image/generation/create", content=body).status_code == 400
        assert guard.check(credential=KEY).action == "refuse"


# -- retries ------------------------------------------------------------------


def test_a_retry_is_not_judged_again_and_is_rewritten_the_same(
    make: Callable[..., Harness],
) -> None:
    h = make(2)
    first = h.post(headers={"x-stainless-retry-count": "0"})
    assert first.headers["x-creditguard-decision"] == "downgrade"
    h.source.default = 50  # even if the balance changed, the retry follows the first attempt
    h.guard.invalidate(KEY)
    retry = h.post(headers={"x-stainless-retry-count": "1"})
    assert retry.headers["x-creditguard-decision"] == "downgrade"
    assert len(h.decisions) == 1
    assert h.upstream.bodies[0] == h.upstream.bodies[1] != BODY


def test_a_retry_of_a_long_body_follows_its_first_attempt(
    make: Callable[..., Harness],
) -> None:
    """A 60 KB body is known to its retry by its length and ends (the whole
    of it is not hashed); a body of another length is another call."""
    h = make(2)
    message = {"role": "user", "content": "x" * 60_000}
    body = json.dumps({"model": "gpt-4o", "messages": [message]}).encode()
    first = h.post(content=body, headers={"x-stainless-retry-count": "0"})
    assert first.headers["x-creditguard-decision"] == "downgrade"
    h.source.default = 50
    h.guard.invalidate(KEY)
    retry = h.post(content=body, headers={"x-stainless-retry-count": "1"})
    assert retry.headers["x-creditguard-decision"] == "downgrade"
    assert len(h.decisions) == 1
    other = body.replace(b"xxxx", b"xxx", 1)
    assert h.post(content=other, headers={"x-stainless-retry-count": "1"}).status_code == 200
    assert len(h.decisions) == 2  # not the same call: judged


def test_long_bodies_alike_at_both_ends_are_told_apart_by_model_and_limit(
    stack: tuple[ModuleType, ModuleType],
) -> None:
    """A long system prompt before the model and long tools after the output
    limit: two calls whose bodies match in length and at both ends, to
    different models with different limits. The retry of the dear one holds
    and is charged as its own first attempt, not as the cheap one."""
    lib, cg = stack
    system = {"role": "system", "content": "s" * 6000}
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 6000}}]

    def body(model: str, limit: int) -> bytes:
        messages = [system, {"role": "user", "content": "hi"}]
        doc = {"messages": messages, "model": model, "max_tokens": limit, "tools": tools}
        return json.dumps(doc).encode()

    pricing = {
        "cheap-1": {"prompt": 0.0, "completion": 0.0001},
        "dear-01": {"prompt": 0.0, "completion": 0.01},
    }
    guard = BudgetGuard(FixedBudget(100.0), Policy(refuse_below=0), estimate=0.0, pricing=pricing)
    held: list[float] = []

    def remaining(guard: BudgetGuard) -> float:
        balance = guard.check(estimate=0).balance
        assert balance is not None
        return balance.remaining

    def reply(request: Any) -> Any:
        held.append(guard.ledger.reserved(None))
        return lib.Response(200, json={"usage": {"prompt_tokens": 0, "completion_tokens": 4000}})

    cheap, dear = body("cheap-1", 1000), body("dear-01", 4000)
    assert len(cheap) == len(dear) and cheap != dear
    with cg.client(guard, transport=lib.MockTransport(reply), base_url="https://x/v1") as c:
        c.post("/chat/completions", content=dear, headers={"x-stainless-retry-count": "0"})
        c.post("/chat/completions", content=cheap, headers={"x-stainless-retry-count": "0"})
        left = remaining(guard)
        c.post("/chat/completions", content=dear, headers={"x-stainless-retry-count": "1"})
        after = remaining(guard)
    assert held == [pytest.approx(40.0), pytest.approx(0.1), pytest.approx(40.0)]
    assert left - after == pytest.approx(40.0)  # 4,000 tokens at the dear model's price


def test_first_attempts_are_remembered_in_bounded_memory(
    make: Callable[..., Harness],
) -> None:
    """Thousands of first attempts: the last thousand stay known to their
    retries, the memory of them stays bounded (two generations of 1,024)."""
    h = make(2)
    transport = h.client._transport
    core = transport._core
    for i in range(3000):
        body = b'{"model": "gpt-4o", "n": %d}' % i
        h.post(content=body, headers={"x-stainless-retry-count": "0"})
    assert len(core._retries) + len(core._retries_old) <= 2048
    judged = len(h.decisions)
    for i in range(3000 - 1024, 3000):  # the last 1,024: each retry follows its first attempt
        body = b'{"model": "gpt-4o", "n": %d}' % i
        h.post(content=body, headers={"x-stainless-retry-count": "1"})
    assert len(h.decisions) == judged
    h.post(content=b'{"model": "gpt-4o", "n": 0}', headers={"x-stainless-retry-count": "1"})
    assert len(h.decisions) == judged + 1  # long forgotten: judged as a new call


def test_an_unknown_retry_is_judged(make: Callable[..., Harness]) -> None:
    h = make(2)
    h.post(headers={"x-stainless-retry-count": "3"})
    assert len(h.decisions) == 1


# -- lifecycle and the real network stack ------------------------------------------


def test_close_closes_the_inner_transport(stack: tuple[ModuleType, ModuleType]) -> None:
    lib, cg = stack
    closed: list[str] = []

    class Inner(lib.BaseTransport):  # type: ignore[name-defined, misc]
        def handle_request(self, request: Any) -> Any:
            return lib.Response(200)

        def close(self) -> None:
            closed.append("sync")

    guard = BudgetGuard(Source(50), POLICY)
    with lib.Client(transport=cg.GuardTransport(guard, inner=Inner())):
        pass
    assert closed == ["sync"]


def test_async_stack_end_to_end(stack: tuple[ModuleType, ModuleType]) -> None:
    import asyncio

    lib, cg = stack
    upstream = Upstream(lib)
    guard = BudgetGuard(Source(2), POLICY)

    async def main() -> list[Any]:
        async with cg.async_client(
            guard, transport=lib.MockTransport(upstream), base_url="http://t"
        ) as c:
            a = await c.post("/chat/completions", content=BODY)
            guard.ledger.mark_exhausted(None)
            b = await c.post("/chat/completions", content=BODY)
            return [a, b]

    a, b = asyncio.run(main())
    assert a.headers["x-creditguard-decision"] == "downgrade"
    assert upstream.bodies[0] == BODY.replace(b'"model" :  "big"', b'"model" :  "small"')
    assert b.status_code == 402 and len(upstream.requests) == 1


def test_guard_client_defaults(stack: tuple[ModuleType, ModuleType]) -> None:
    _lib, cg = stack
    guard = BudgetGuard(Source(50), POLICY)
    with cg.client(guard) as c:
        assert c.timeout.read == 600.0
        assert isinstance(c._transport, cg.GuardTransport)
    with guard.client() as c1:
        assert isinstance(c1, httpx.Client)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.add_key(KEY, limit=10.0)
        yield provider


@pytest.mark.parametrize("libname", ["httpx", "httpx2"])
def test_streams_pass_through_unbuffered(fake: FakeProvider, libname: str) -> None:
    _lib, cg = (httpx, cg1) if libname == "httpx" else (httpx2, cg2)
    gate = fake.stream_gate = threading.Event()
    guard = BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), POLICY)
    body = {"model": "big", "messages": [], "stream": True}
    with (
        cg.client(
            guard, base_url=fake.openrouter_base_url, headers={"Authorization": f"Bearer {KEY}"}
        ) as c,
        c.stream("POST", "/chat/completions", json=body) as r,
    ):
        assert r.headers["x-creditguard-decision"] == "allow"
        lines = r.iter_lines()
        seen = []
        for line in lines:
            seen.append(line)
            if '"content"' in line:
                break
        assert not gate.is_set()  # the first chunk came before the server sent the rest
        gate.set()
        seen.extend(lines)
    assert seen[-1] == "" or seen[-1] == "data: [DONE]"
    assert any(line == "data: [DONE]" for line in seen)
    guard.close()


def test_find_member() -> None:
    for text, value in [
        ('{"a": {"model": 1}, "model": "m"}', "m"),
        (' { "model" : "x" } ', "x"),
        ('{"model": "\\u00e9\\"q"}', 'é"q'),
        ('{"a": [1, {"model": "no"}], "b": "\\"model\\": 2", "model": 7}', 7),
    ]:
        found = find_member(text, "model")
        assert found is not None
        got, (start, end) = found
        assert got == value and json.loads(text[start:end]) == value
    assert find_member("{}", "model") is None
    assert find_member("[1]", "model") is None
    # the full scan validates the whole object: what the fast read relies on
    for bad in ('{"a": tru', '{"a": 1 "model": "x"}', '{"model": "x",}', '{"model": "x"} 1'):
        with pytest.raises(ValueError):
            find_member(bad, "model")
    # duplicates: the last one counts, as JSON parsers that keep one value read it
    found = find_member('{"model": "a", "n": 1, "model": "b"}', "model")
    assert found is not None and found[0] == "b"


def test_transport_options_given_to_client_build_the_inner_transport(
    stack: tuple[ModuleType, ModuleType],
) -> None:
    lib, cg = stack
    guard = BudgetGuard(Source(50), POLICY)
    with cg.client(guard, limits=lib.Limits(max_connections=3), verify=False) as c:
        inner = c._transport._inner
        assert isinstance(inner, lib.HTTPTransport)
        assert inner._pool._max_connections == 3
    with cg.client(guard) as c1, cg.client(guard) as c2:
        # the default TLS context is built once and shared
        assert c1._transport._inner._pool._ssl_context is c2._transport._inner._pool._ssl_context


def test_anthropic_out_of_credit_400_marks_exhausted(make: Callable[..., Harness]) -> None:
    h = make(50)
    h.upstream.reply = lambda req: h.lib.Response(
        400,
        json={
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "Your credit balance is too low to access the Anthropic API.",
            },
        },
    )
    assert h.post("/v1/messages").status_code == 400
    assert h.post("/v1/messages").status_code == 402  # refused locally now
    assert len(h.upstream.requests) == 1
    h2 = make(50)
    h2.upstream.reply = lambda req: h2.lib.Response(400, json={"error": "bad max_tokens"})
    h2.post("/v1/messages")
    assert h2.post("/v1/messages").status_code == 400  # an ordinary 400 is not a verdict


async def test_async_client_options_build_the_inner_transport(
    stack: tuple[ModuleType, ModuleType],
) -> None:
    lib, cg = stack
    guard = BudgetGuard(Source(50), POLICY)
    async with cg.async_client(guard, limits=lib.Limits(max_connections=2)) as c:
        inner = c._transport._inner
        assert isinstance(inner, lib.AsyncHTTPTransport)
        assert inner._pool._max_connections == 2
        assert c.timeout.read == 600.0


def test_a_body_broken_before_its_model_is_judged_but_never_rewritten(
    make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    # the model is read without decoding what comes before it; a rewrite checks
    # the whole body first, and a broken one goes out as it came
    body = b'{"messages": [oops], "model": "big"}'
    h = make(2)  # downgrade tier
    with caplog.at_level(logging.DEBUG, logger="creditguard"):
        r = h.post(content=body)
    assert r.status_code == 200
    assert h.upstream.bodies == [body]
    assert h.decisions[0].action == "warn"
    assert "no model to rewrite" in h.decisions[0].reason
    assert "not parsed" in caplog.text


@pytest.mark.parametrize("shortcuts", [True, False], ids=["private-parts", "public-api"])
def test_downgrade_and_credential_without_the_library_shortcuts(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch, shortcuts: bool
) -> None:
    # The hot path reads httpx's lowered header list and copies a request's
    # parts instead of building a new Request, when a probe at import says the
    # library keeps them that way; otherwise it uses the public API. Both ways
    # give the same request upstream, and the caller's request is untouched.
    h = make(2)
    lib = h.client._transport._core.lib
    monkeypatch.setattr(lib, "lowered_list", shortcuts)
    monkeypatch.setattr(lib, "cloneable", shortcuts)
    original = h.client.build_request("POST", "/chat/completions", content=BODY)
    r = h.client.send(original)
    assert r.headers["x-creditguard-decision"] == "downgrade"
    sent = h.upstream.requests[0]
    assert sent is not original and original.content == BODY
    assert json.loads(sent.content)["model"] == "small"
    assert sent.headers.get_list("content-length") == [str(len(sent.content))]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.url == original.url and sent.method == "POST"
    assert h.source.seen == [KEY]
    # the answer is labelled once, and its usage read, either way
    assert r.headers.get_list("x-creditguard-decision") == ["downgrade"]
    assert r.headers["x-creditguard-model-requested"] == "big"
    assert r.json() == {"ok": True}
    # a percent-encoded path is judged by its decoded form either way
    assert h.post("/chat/completion%73").headers["x-creditguard-decision"] == "downgrade"


@pytest.mark.parametrize("paths", ["/chat/completions", b"/chat/completions", [], [""]])
def test_paths_must_be_a_list_of_suffixes(paths: object) -> None:
    # a bare string would be read as its characters: every POST ending in "/" or
    # "s" would be judged (and possibly refused) as a generation call
    guard = BudgetGuard(FixedBudget(1.0), Policy(refuse_below=0.5))
    with pytest.raises(ConfigError, match="paths"):
        guard.client(transport=httpx.MockTransport(lambda r: httpx.Response(200)), paths=paths)


def test_an_httpx_client_and_an_httpx2_transport_do_not_mix(
    stack: tuple[ModuleType, ModuleType],
) -> None:
    # mixing the stacks failed as a bare AssertionError inside the client, or (an
    # httpx2 inner under creditguard.httpx) was accepted and failed at the first call
    lib, cg = stack
    other_lib, other_cg = (httpx2, cg2) if lib is httpx else (httpx, cg1)
    upstream = Upstream(lib)
    guard = BudgetGuard(Source(50), POLICY, estimate=0.0)
    for make in (
        lambda: cg.GuardTransport(guard, inner=other_lib.MockTransport(upstream)),
        lambda: cg.AsyncGuardTransport(guard, inner=other_lib.MockTransport(upstream)),
        lambda: cg.GuardTransport(guard, inner=other_cg.GuardTransport(guard)),
        lambda: cg.client(guard, transport=other_lib.HTTPTransport()),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.key == "inner"
        assert f"creditguard.{other_lib.__name__}." in info.value.allowed
    with pytest.raises(ConfigError, match="handle_async_request"):
        cg.AsyncGuardTransport(guard, inner=object())
    # a transport of the app's own may serve both libraries: taken (HostRouter does)
    from creditguard.testing import HostRouter

    cg.GuardTransport(guard, inner=HostRouter({})).close()
    # a client of the other library: a TypeError naming the transport to use, before
    # anything is judged or sent; the right client goes on as before
    name = other_lib.__name__
    with (
        other_lib.Client(
            transport=cg.GuardTransport(guard, inner=lib.MockTransport(upstream))
        ) as wrong,
        pytest.raises(TypeError, match=rf"creditguard\.{name}\.GuardTransport"),
    ):
        wrong.post("https://llm.test/v1/chat/completions", content=BODY)
    assert upstream.requests == []
    transport = cg.GuardTransport(guard, inner=lib.MockTransport(upstream))
    with lib.Client(transport=transport) as right:
        for _ in range(2):
            assert right.post("https://llm.test/v1/chat/completions", content=BODY).is_success
    assert "handle_request" not in vars(transport)  # checked once: later calls go straight


async def test_an_async_client_of_the_other_library_gets_a_clear_type_error(
    stack: tuple[ModuleType, ModuleType],
) -> None:
    lib, cg = stack
    other_lib = httpx2 if lib is httpx else httpx
    upstream = Upstream(lib)
    guard = BudgetGuard(Source(50), POLICY, estimate=0.0)
    transport = cg.AsyncGuardTransport(guard, inner=lib.MockTransport(upstream))
    async with other_lib.AsyncClient(transport=transport) as wrong:
        with pytest.raises(TypeError, match=rf"{other_lib.__name__}\.async_client\(guard\)"):
            await wrong.post("https://llm.test/v1/chat/completions", content=BODY)
    assert upstream.requests == []


def test_a_guard_transport_of_something_else_than_a_guard_is_a_config_error(
    stack: tuple[ModuleType, ModuleType],
) -> None:
    # GuardTransport(5) raised AttributeError ('int' object has no attribute 'source')
    _, cg = stack
    for make in (cg.GuardTransport, cg.AsyncGuardTransport, cg.client, cg.async_client):
        with pytest.raises(ConfigError) as info:
            make(5)
        assert info.value.key == "guard" and "BudgetGuard" in info.value.allowed


@pytest.mark.parametrize("paths", [["chat"], ["/chat/completions", "responses"], "/chat", [""], []])
def test_paths_must_be_suffixes_starting_with_a_slash(
    stack: tuple[ModuleType, ModuleType], paths: Any
) -> None:
    # paths=["chat"] was taken: it matched "/v1/groupchat" and every path ending in "chat"
    _, cg = stack
    guard = BudgetGuard(Source(50), POLICY)
    for make in (cg.GuardTransport, cg.AsyncGuardTransport):
        with pytest.raises(ConfigError) as info:
            make(guard, paths=paths)
        assert info.value.key == "paths" and "starting with '/'" in info.value.allowed
    cg.GuardTransport(guard, paths=("/generate",)).close()
