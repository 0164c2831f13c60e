"""ByHost: one guard under one HTTP client that talks to several providers judges
each call on the balance of the host it goes to, with a policy per host."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

import creditguard.httpx2 as cg2
from creditguard import Balance, BudgetGuard, ConfigError, CreditSourceError, Decision, Policy
from creditguard.sources import (
    ByHost,
    CallableSource,
    DeepSeekBalance,
    FixedBudget,
    OpenRouterKey,
    Tightest,
)
from creditguard.testing import FakeProvider, HostRouter

SECRET = "BYHOSTSECRET"
KEY = f"sk-{SECRET}-0123456789abcdef"  # the same key string on both providers
OPENROUTER = "https://openrouter.ai/api/v1"
DEEPSEEK = "https://api.deepseek.com/v1"
POLICY = Policy(warn_below=5.0, refuse_below=0.5)
MESSAGES = [{"role": "user", "content": "hi"}]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, f"a key leaked into: {text[:300]!r}"


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            assert_no_secret(record.getMessage())


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    """OpenRouter (the key may spend 100) and DeepSeek (the same key has 0.3 CNY there)."""
    with FakeProvider() as openrouter, FakeProvider() as deepseek:
        openrouter.add_key(KEY, limit=100.0)
        deepseek.add_key(KEY, credits=0.3)
        deepseek.currency = "CNY"
        yield openrouter, deepseek


def by_host(
    openrouter: FakeProvider, deepseek: FakeProvider, **kwargs: Any
) -> tuple[ByHost, HostRouter]:
    source = ByHost(
        {
            "openrouter.ai": OpenRouterKey(base_url=openrouter.openrouter_base_url),
            "api.deepseek.com": DeepSeekBalance(base_url=deepseek.deepseek_base_url),
        },
        **kwargs,
    )
    router = HostRouter({"openrouter.ai": openrouter.url, "api.deepseek.com": deepseek.url})
    return source, router


# -- through one openai client ------------------------------------------------------------


@pytest.mark.parametrize("stack", ["httpx", "httpx2"])
def test_two_hosts_through_one_openai_client(
    fakes: tuple[FakeProvider, FakeProvider], stack: str
) -> None:
    openrouter, deepseek = fakes
    decisions: list[Decision] = []
    source, router = by_host(openrouter, deepseek)
    guard = BudgetGuard(source, POLICY, estimate=0.0, on_decision=decisions.append)
    if stack == "httpx":
        http: Any = guard.client(transport=router)
    else:
        http = cg2.client(guard, transport=router)
    client = openai.OpenAI(base_url=OPENROUTER, api_key=KEY, http_client=http, max_retries=0)
    # the same client (the same HTTP client) pointed at the other provider
    other = client.with_options(base_url=DEEPSEEK)
    with client:
        answer = client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
        assert answer.choices[0].message.content == openrouter.reply_text
        with pytest.raises(openai.APIStatusError) as info:  # 0.3 left there: under 0.5
            other.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
        assert info.value.status_code == 402
        client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert [d.action for d in decisions] == ["allow", "refuse", "allow"]
    assert openrouter.count("chat") == 2 and deepseek.count("chat") == 0
    assert (
        openrouter.count("key") == 1 and deepseek.count("deepseek_balance") == 1
    )  # one balance per host
    # each host's balance, fetched from its own provider, spent by its own calls
    here = guard.check(credential=source.credential("openrouter.ai", KEY)).balance
    there = guard.check(credential=source.credential("api.deepseek.com", KEY)).balance
    assert here is not None and there is not None
    assert here.remaining == pytest.approx(100.0 - 2 * openrouter.default_price)
    assert there.remaining == pytest.approx(0.3)
    assert len(guard.ledger) == 2
    guard.close()
    assert_no_secret(repr(guard), repr(source))


async def test_two_hosts_through_one_async_openai_client(
    fakes: tuple[FakeProvider, FakeProvider],
) -> None:
    openrouter, deepseek = fakes
    source, router = by_host(openrouter, deepseek)
    guard = BudgetGuard(source, POLICY, estimate=0.0)
    client = openai.AsyncOpenAI(
        base_url=DEEPSEEK,
        api_key=KEY,
        http_client=guard.async_client(transport=router),
        max_retries=0,
    )
    async with client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
        assert info.value.status_code == 402
        await client.with_options(base_url=OPENROUTER).chat.completions.create(
            model="openai/gpt-4o", messages=MESSAGES
        )
    assert openrouter.count("chat") == 1 and deepseek.count("chat") == 0
    await guard.aclose()


def test_a_policy_per_host(fakes: tuple[FakeProvider, FakeProvider]) -> None:
    openrouter, deepseek = fakes
    lenient = Policy(refuse_below=0.1, warn_below=1.0, unit="CNY")
    source, router = by_host(openrouter, deepseek, policies={"api.deepseek.com": lenient})
    decisions: list[Decision] = []
    guard = BudgetGuard(source, POLICY, estimate=0.0, on_decision=decisions.append)
    with openai.OpenAI(
        base_url=DEEPSEEK, api_key=KEY, http_client=guard.client(transport=router), max_retries=0
    ) as client:
        client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)  # fetched
        client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)  # cached
    assert [d.action for d in decisions] == ["warn", "warn"]  # 0.3 is above 0.1, below 1.0
    assert deepseek.count("chat") == 2
    # the guard's own policy still rules the other host
    assert guard.check(credential=source.credential("openrouter.ai", KEY)).action == "allow"
    guard.close()


def test_a_provider_refusal_marks_only_its_host(fakes: tuple[FakeProvider, FakeProvider]) -> None:
    openrouter, deepseek = fakes
    source, router = by_host(openrouter, deepseek)
    guard = BudgetGuard(source, Policy(), estimate=0.0)  # no thresholds: the provider decides
    deepseek.set_key(KEY, usage=0.3)
    with openai.OpenAI(
        base_url=DEEPSEEK, api_key=KEY, http_client=guard.client(transport=router), max_retries=0
    ) as client:
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
        client.with_options(base_url=OPENROUTER).chat.completions.create(
            model="openai/gpt-4o", messages=MESSAGES
        )
    there = guard.check(credential=source.credential("api.deepseek.com", KEY)).balance
    here = guard.check(credential=source.credential("openrouter.ai", KEY)).balance
    assert there is not None and there.exhausted
    assert here is not None and not here.exhausted
    guard.close()


# -- the source on its own ----------------------------------------------------------------


def _fixed(limit: float) -> FixedBudget:
    return FixedBudget(limit, period=None)


def test_keys_are_per_host_and_per_key_only_where_the_source_is() -> None:
    shared = _fixed(5.0)  # one budget for the host, whatever key a call carries
    per_key = CallableSource(lambda credential: 1.0)
    source = ByHost({"a.example": shared, "b.example": per_key})
    assert source.per_credential
    a1 = source.host_credential("a.example", None, "key-1")
    a2 = source.host_credential("a.example", None, "key-2")
    b1 = source.host_credential("b.example", None, "key-1")
    b2 = source.host_credential("b.example", None, "key-2")
    assert a1 == a2  # the key is left out for a source of its own
    assert len({a1, b1, b2}) == 3
    assert source.credential("a.example", "key-1") == a1
    assert source.credential("A.Example.", "key-1") == a1
    guard = BudgetGuard(source)
    assert guard.ledger.key(a1) != guard.ledger.key(b1)


def test_host_and_port_first_then_host_then_star() -> None:
    source = ByHost(
        {
            "127.0.0.1:8001": CallableSource(lambda: 1.0, name="port"),
            "127.0.0.1": CallableSource(lambda: 2.0, name="host"),
            "*": CallableSource(lambda: 3.0, name="any"),
        }
    )

    def remaining(credential: str | None) -> float:
        return source.fetch(credential).remaining

    assert remaining(source.host_credential("127.0.0.1", 8001, None)) == 1.0
    assert remaining(source.host_credential("127.0.0.1", 8002, None)) == 2.0
    assert remaining(source.host_credential("elsewhere.example", None, None)) == 3.0
    assert remaining(source.credential("127.0.0.1:8001")) == 1.0
    assert remaining(None) == 3.0  # no host named: the "*" source
    assert remaining("a plain key") == 3.0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_no_host_and_unknown_host_are_clear_errors(mode: str) -> None:
    source = ByHost({"a.example": _fixed(1.0)})

    def fetch(credential: str | None) -> Balance:
        if mode == "sync":
            return source.fetch(credential)
        return asyncio.run(source.afetch(credential))

    with pytest.raises(CreditSourceError) as info:
        fetch(KEY)
    assert "names no host" in info.value.reason
    assert "by_host.credential" in info.value.reason
    with pytest.raises(CreditSourceError) as info:
        fetch(source.host_credential("b.example", None, KEY))
    assert "no source for host 'b.example'" in info.value.reason
    assert info.value.source == "by-host"
    assert_no_secret(str(info.value))


def test_check_and_decorator_without_a_host() -> None:
    """check() and the decorator know no host: a '*' source judges them, or the
    balance is unusable with a reason that says how to name the host."""
    source = ByHost({"a.example": _fixed(1.0)})
    guard = BudgetGuard(source, Policy(on_source_error="refuse"))
    decision = guard.check("m")
    assert decision.action == "refuse"
    assert "names no host" in decision.reason

    @guard
    def call(model: str = "m") -> str:
        return "done"

    with pytest.raises(Exception, match="names no host"):
        call()
    named = guard.check("m", credential=source.credential("a.example"))
    assert named.action == "allow" and named.balance is not None
    assert named.balance.remaining == 1.0


def test_spend_reaches_the_host_source() -> None:
    a, b = _fixed(10.0), _fixed(10.0)
    source = ByHost({"a.example": a, "b.example": b})
    guard = BudgetGuard(source, estimate=0.0)
    with guard.reserve("m", credential=source.credential("a.example"), estimate=1.0) as held:
        held.settle(2.5)
    assert a.fetch(None).used == 2.5 and b.fetch(None).used == 0.0
    guard.record(1.0, credential=source.credential("b.example"))
    assert b.fetch(None).used == 1.0
    guard.record(1.0, credential=source.credential("nowhere.example"))  # no source: nothing kept


def test_record_only_when_a_source_keeps_spend() -> None:
    remote = ByHost({"a.example": CallableSource(lambda: 1.0)})
    assert not hasattr(remote, "record")
    local = ByHost({"a.example": CallableSource(lambda: 1.0), "b.example": _fixed(1.0)})
    assert callable(local.record)


def test_foreign_errors_are_source_errors_without_the_key() -> None:
    def broken(credential: str | None) -> float:
        raise RuntimeError(f"boom {credential}")

    source = ByHost({"a.example": CallableSource(broken)})
    with pytest.raises(CreditSourceError) as info:
        source.fetch(source.credential("a.example", KEY))
    assert_no_secret(str(info.value), repr(info.value))


@pytest.mark.parametrize(
    ("sources", "policies", "key"),
    [
        ({}, None, "sources"),
        ([("a.example", FixedBudget(1))], None, "sources"),
        ({"a.example": object()}, None, "sources"),
        ({"https://a.example/v1": FixedBudget(1)}, None, "sources"),
        ({"": FixedBudget(1)}, None, "sources"),
        ({"a.example": FixedBudget(1), "A.example": FixedBudget(1)}, None, "sources"),
        ({"a.example": FixedBudget(1)}, {"b.example": Policy()}, "policies"),
        ({"a.example": FixedBudget(1)}, {"a.example": {"refuse_below": 1}}, "policies"),
    ],
)
def test_config_errors(sources: Any, policies: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ByHost(sources, policies=policies)
    assert info.value.key == key


def test_nested_in_tightest_and_closed(fakes: tuple[FakeProvider, FakeProvider]) -> None:
    openrouter, deepseek = fakes
    source, _ = by_host(openrouter, deepseek)
    both = Tightest(source)
    balance = both.fetch(source.credential("api.deepseek.com", KEY))
    assert balance.remaining == pytest.approx(0.3)
    source.close()
    asyncio.run(source.aclose())
    assert "openrouter.ai" in repr(source) and SECRET not in repr(source)


def test_httpx_client_for_unrouted_host_never_leaves(
    fakes: tuple[FakeProvider, FakeProvider],
) -> None:
    openrouter, deepseek = fakes
    _, router = by_host(openrouter, deepseek)
    with httpx.Client(transport=router) as http, pytest.raises(httpx.ConnectError):
        http.get("https://example.invalid/")


class _Named:
    """A source whose balance says which host entry answered."""

    per_credential = False

    def __init__(self, name: str) -> None:
        self.name = name

    def fetch(self, credential: str | None) -> Balance:
        return Balance(remaining=1.0, total=None, source=self.name)

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


@pytest.mark.parametrize(
    ("configured", "url"),
    [
        ("api.deepseek.com", "https://API.DeepSeek.com./v1/chat/completions"),  # trailing dot
        ("bücher.example", "https://xn--bcher-kva.example/v1/chat/completions"),
        ("xn--bcher-kva.example", "https://bücher.example/v1/chat/completions"),
        ("[::1]:8080", "http://[::1]:8080/v1/chat/completions"),
        ("::1", "http://[::1]:9/v1/chat/completions"),
        ("[::1]", "http://[::1]/v1/chat/completions"),
    ],
)
def test_a_host_is_found_however_the_url_spells_it(configured: str, url: str) -> None:
    # the transport passes httpx's URL.host (Unicode IDNA, trailing dot kept, IPv6 bare)
    by_host = ByHost({configured: _Named("this"), "*": _Named("other")})
    for parsed in (httpx.URL(url), httpx2.URL(url)):
        credential = by_host.host_credential(parsed.host, parsed.port, KEY)
        assert by_host.fetch(credential).source == "this"
    assert by_host.fetch(by_host.credential(httpx.URL(url).netloc.decode())).source == "this"
