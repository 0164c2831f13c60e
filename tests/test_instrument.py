"""guard.instrument(): clients built without the guard — an openai client made with no
``http_client=``, a LangChain ChatOpenAI built inside a helper — are guarded while it
is on, never twice, and plain again after close(). Against the loopback fake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
from langchain_openai import ChatOpenAI
from sdk_helpers import (
    CHEAP,
    EXPENSIVE,
    KEYS,
    MESSAGES,
    TIMEOUT,
    chat_requests,
    debug_logs_never_show_a_key,
    make_guard,
    running_fake,
)

import creditguard.httpx as cg1
import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, ConfigError, Decision
from creditguard.instrument import Instrumentation
from creditguard.testing import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    yield from running_fake()


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from debug_logs_never_show_a_key(caplog)


@pytest.fixture
def decisions() -> list[Decision]:
    return []


@pytest.fixture
def guard(fake: FakeProvider, decisions: list[Decision]) -> Iterator[BudgetGuard]:
    g = make_guard(fake, decisions)
    yield g
    g.close()


@pytest.fixture
def instrumented(guard: BudgetGuard) -> Iterator[Instrumentation]:
    handle = guard.instrument()
    try:
        yield handle
    finally:
        handle.close()


def plain_openai(fake: FakeProvider, tier: str) -> openai.OpenAI:
    """An openai client as most code builds it: no http_client= anywhere."""
    return openai.OpenAI(
        base_url=fake.openrouter_base_url, api_key=KEYS[tier], max_retries=0, timeout=TIMEOUT
    )


def test_an_openai_client_built_without_http_client_is_guarded(
    fake: FakeProvider, guard: BudgetGuard, instrumented: Instrumentation
) -> None:
    with plain_openai(fake, "downgrade") as client:
        raw = client.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)
    assert raw.headers["x-creditguard-decision"] == "downgrade"
    assert [r.model for r in chat_requests(fake)] == [CHEAP]
    with plain_openai(fake, "refuse") as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)
    assert info.value.status_code == 402
    assert len(chat_requests(fake)) == 1  # the refused call never left
    assert instrumented.wrapped >= 2


async def test_an_async_openai_client_is_guarded(
    fake: FakeProvider, guard: BudgetGuard, instrumented: Instrumentation
) -> None:
    client = openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url, api_key=KEYS["refuse"], max_retries=0, timeout=TIMEOUT
    )
    async with client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=EXPENSIVE, messages=MESSAGES)
    assert info.value.status_code == 402
    assert chat_requests(fake) == []


def build_chat_model(fake: FakeProvider, tier: str) -> ChatOpenAI:
    """A model built deep inside some framework's code, out of the app's reach."""
    return ChatOpenAI(
        model=EXPENSIVE,
        base_url=fake.openrouter_base_url,
        api_key=KEYS[tier],  # type: ignore[arg-type]
        max_retries=0,
        timeout=TIMEOUT,
    )


def test_a_langchain_model_built_inside_a_helper_is_guarded(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    with guard.instrument():
        downgraded = build_chat_model(fake, "downgrade")
        refused = build_chat_model(fake, "refuse")
    # built while instrumented: guarded for good, also after the block
    message = downgraded.invoke("hi")
    assert message.response_metadata["model_name"] == CHEAP
    with pytest.raises(openai.APIStatusError) as info:
        refused.invoke("hi")
    assert info.value.status_code == 402
    assert [r.model for r in chat_requests(fake)] == [CHEAP]
    assert [d.action for d in decisions] == ["downgrade", "refuse"]


async def test_a_langchain_model_is_guarded_in_async_code(
    fake: FakeProvider, guard: BudgetGuard
) -> None:
    with guard.instrument():
        model = build_chat_model(fake, "refuse")
        with pytest.raises(openai.APIStatusError):
            await model.ainvoke("hi")
    assert chat_requests(fake) == []


def test_after_close_new_clients_are_not_guarded(
    fake: FakeProvider, guard: BudgetGuard, decisions: list[Decision]
) -> None:
    handle = guard.instrument()
    handle.close()
    handle.close()  # idempotent
    assert not handle.active
    with plain_openai(fake, "refuse") as client:
        raw = client.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)
    assert "x-creditguard-decision" not in raw.headers
    assert len(chat_requests(fake)) == 1 and decisions == []
    model = build_chat_model(fake, "refuse")
    assert model.invoke("hi").content == fake.reply_text
    assert decisions == []


@pytest.mark.parametrize("stack", ["httpx", "httpx2"])
def test_a_guard_client_is_not_guarded_twice(
    fake: FakeProvider,
    guard: BudgetGuard,
    decisions: list[Decision],
    instrumented: Instrumentation,
    stack: str,
) -> None:
    http: Any = guard.client() if stack == "httpx" else cg2.client(guard)
    shell = cg1.GuardTransport if stack == "httpx" else cg2.GuardTransport
    assert isinstance(http._transport, shell)
    assert not isinstance(http._transport._inner, (cg1.GuardTransport, cg2.GuardTransport))
    client = openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEYS["warn"],
        http_client=http,
        max_retries=0,
        timeout=TIMEOUT,
    )
    with client:
        raw = client.chat.completions.with_raw_response.create(model=EXPENSIVE, messages=MESSAGES)
    assert raw.headers.get_list("x-creditguard-decision") == ["warn"]
    assert [d.action for d in decisions] == ["warn"]  # judged once


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_every_client_kind_and_its_mounts_are_wrapped(
    guard: BudgetGuard, instrumented: Instrumentation, module: Any
) -> None:
    class Subclass(module.Client):  # type: ignore[misc,name-defined]
        pass

    inner = module.MockTransport(lambda request: module.Response(200))
    mounted = module.MockTransport(lambda request: module.Response(204))
    sync_shell = (cg1 if module is httpx else cg2).GuardTransport
    async_shell = (cg1 if module is httpx else cg2).AsyncGuardTransport
    with module.Client(transport=inner, mounts={"http://other": mounted}) as c:
        assert isinstance(c._transport, sync_shell) and c._transport._inner is inner
        (wrapped,) = c._mounts.values()
        assert isinstance(wrapped, sync_shell) and wrapped._inner is mounted
        assert c.get("http://other/x").status_code == 204
    with Subclass(transport=inner) as c:
        assert isinstance(c._transport, sync_shell)
    async with module.AsyncClient(transport=inner) as ac:
        assert isinstance(ac._transport, async_shell)
        assert (await ac.get("http://host/x")).status_code == 200


def test_one_guard_instruments_at_a_time(
    fake: FakeProvider, guard: BudgetGuard, instrumented: Instrumentation
) -> None:
    other = make_guard(fake)
    with pytest.raises(ConfigError, match="one guard instrumenting at a time"):
        other.instrument()
    other.close()
    instrumented.close()
    with other.instrument() as handle:
        assert handle.active and "active" in repr(handle)
    assert not handle.active
    other.close()


def test_close_restores_the_classes(guard: BudgetGuard) -> None:
    before = (httpx.Client.__init__, httpx.AsyncClient.__init__, httpx2.Client.__init__)
    with guard.instrument():
        assert httpx.Client.__init__ is not before[0]
    assert (httpx.Client.__init__, httpx.AsyncClient.__init__, httpx2.Client.__init__) == before


@pytest.mark.parametrize("paths", ["/chat/completions", [], [""], [None], 5])
def test_bad_paths_are_refused_at_instrument_not_at_a_distant_client(
    guard: BudgetGuard, paths: Any
) -> None:
    # a bare string would be its characters ('/', 'c', ...): every path judged
    with pytest.raises(ConfigError) as info:
        guard.instrument(paths=paths)
    assert "paths" in str(info.value)
    # nothing was patched: clients are built as usual
    with httpx.Client() as client:
        assert not isinstance(client._transport, cg1.GuardTransport)
