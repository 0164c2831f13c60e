"""Credits requests that cannot hold a caller or its memory, and misconfiguration that is loud.

* ``timeout`` bounds a whole fetch: a server dripping bytes (headers or body) cannot
  keep ``fetch`` / ``afetch`` (or ``check`` / ``acheck``) past ``timeout`` + 1 s;
* a body over 1 MiB is a CreditSourceError, read as a stream (memory stays flat);
* ``api_key_env`` naming an unset variable is a ConfigError when the source is built;
* a 401/403 on the source's own key is logged at ERROR, once per ttl per source;
* a ConfigError never echoes a key given by mistake in code.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import creditguard as cg
from creditguard import ConfigError, CreditSourceError
from creditguard.sources import (
    CallableSource,
    OpenRouterCredits,
    OpenRouterKey,
    StablecogCredits,
    Tightest,
)
from creditguard.sources._http import MAX_BODY
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-SECRETSECRET1234"
MODES = ["sync", "async"]


def fetch(source: Any, mode: str, credential: str | None = None) -> cg.Balance:
    if mode == "sync":
        result: cg.Balance = source.fetch(credential)
    else:
        result = asyncio.run(source.afetch(credential))
    return result


def timed_error(source: Any, mode: str, credential: str | None = None) -> tuple[Any, float]:
    started = time.monotonic()
    with pytest.raises(CreditSourceError) as info:
        fetch(source, mode, credential)
    return info.value, time.monotonic() - started


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.add_key(KEY, credits=10.0, usage=2.5, limit=5.0)
        yield provider


# -- a total deadline -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_dripping_body_cannot_hold_a_fetch_past_its_timeout(
    fake: FakeProvider, mode: str
) -> None:
    fake.fault("key", drip=0.5)  # the ~300-byte answer would take minutes
    with OpenRouterKey(base_url=fake.openrouter_base_url, timeout=1) as source:
        error, elapsed = timed_error(source, mode, KEY)
    assert error.reason == "timeout after 1 s (the whole request)"
    assert error.status_code is None
    assert elapsed < 1 + 1.0
    assert fake.count("key") == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_dripping_body_through_the_mock_transport(fake: FakeProvider, mode: str) -> None:
    fake.fault("credits", drip=0.3)
    source = OpenRouterCredits(
        api_key=KEY, timeout=0.5, transport=httpx.MockTransport(fake.handler)
    )
    error, elapsed = timed_error(source, mode)
    source.close()
    assert "timeout after 0.5 s" in error.reason
    assert elapsed < 0.5 + 1.0


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_but_timely_drip_is_read(fake: FakeProvider, mode: str) -> None:
    fake.fault("key", drip=0.001, times=1)
    with OpenRouterKey(base_url=fake.openrouter_base_url, timeout=10) as source:
        balance = fetch(source, mode, KEY)
    assert (balance.remaining, balance.total) == (2.5, 5.0)


class _HeaderDripper:
    """A raw server that answers every request with its status line and headers one
    byte at a time (what httpx's per-read timeouts never catch)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 100:
                if self.stop.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize("mode", MODES)
def test_dripping_headers_cannot_hold_a_fetch_past_its_timeout(mode: str) -> None:
    server = _HeaderDripper(0.1)
    try:
        with OpenRouterKey(base_url=server.url, api_key=KEY, timeout=1) as source:
            error, elapsed = timed_error(source, mode)
    finally:
        server.close()
    assert error.reason == "timeout after 1 s (the whole request)"
    assert elapsed < 1 + 1.0


async def _timed_afetch(source: Any, release: threading.Event) -> tuple[Any, float]:
    """afetch timed inside the loop (asyncio.run() then waits for its
    executor's thread, still in the lookup, until ``release``)."""
    started = time.monotonic()
    try:
        with pytest.raises(CreditSourceError) as info:
            await source.afetch(None)
        return info.value, time.monotonic() - started
    finally:
        release.set()


@pytest.mark.parametrize("mode", MODES)
def test_a_hung_dns_lookup_cannot_hold_a_fetch_past_its_timeout(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No socket timeout bounds the lookup before a connection: a resolver that
    hangs must not hold the caller (sync: the fetch runs in a worker thread)."""
    real = socket.getaddrinfo
    release = threading.Event()

    def hung(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("dns-hangs.test", b"dns-hangs.test"):
            release.wait(10)  # (the old code waited all of it)
            raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    source = OpenRouterKey(base_url="http://dns-hangs.test:9/api/v1", api_key=KEY, timeout=0.5)

    try:
        if mode == "sync":
            error, elapsed = timed_error(source, mode)
        else:
            error, elapsed = asyncio.run(_timed_afetch(source, release))
    finally:
        release.set()
        source.close()
    assert error.reason == "timeout after 0.5 s (the whole request)"
    assert elapsed < 0.5 + 1.0
    assert KEY not in str(error)


def test_the_sync_client_keeps_working_after_a_deadline(fake: FakeProvider) -> None:
    with OpenRouterKey(base_url=fake.openrouter_base_url, timeout=1) as source:
        fake.fault("key", drip=0.5, times=1)
        timed_error(source, "sync", KEY)
        assert source.fetch(KEY).remaining == 2.5  # a fresh connection, a full answer


@pytest.mark.parametrize("mode", MODES)
def test_check_returns_within_timeout_against_a_dripping_endpoint(
    fake: FakeProvider, mode: str
) -> None:
    fake.fault("key", drip=0.5)
    source = OpenRouterKey(base_url=fake.openrouter_base_url, timeout=1)
    guard = cg.BudgetGuard(source, cg.Policy(refuse_below=1.0))
    started = time.monotonic()
    if mode == "sync":
        decision = guard.check("m", credential=KEY)
    else:
        decision = asyncio.run(guard.acheck("m", credential=KEY))
    elapsed = time.monotonic() - started
    guard.close()
    assert decision.action == "allow"  # on_source_error="allow": fail open, said so
    assert decision.balance is None
    assert "timeout after 1 s" in decision.reason
    assert elapsed < 1 + 1.0


def test_the_deadline_timer_ends_with_each_fetch(fake: FakeProvider) -> None:
    def timers() -> int:
        return sum(isinstance(t, threading.Timer) for t in threading.enumerate())

    before = timers()
    with OpenRouterKey(base_url=fake.openrouter_base_url, timeout=30) as source:
        for _ in range(20):
            assert source.fetch(KEY).remaining == 2.5
    deadline = time.monotonic() + 5
    while timers() > before and time.monotonic() < deadline:
        time.sleep(0.01)  # a cancelled timer's thread ends on its own
    assert timers() == before


# -- a size cap -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_an_endless_body_is_refused_with_flat_memory(fake: FakeProvider, mode: str) -> None:
    fake.fault("key", endless=True)
    with OpenRouterKey(base_url=fake.openrouter_base_url, timeout=10) as source:
        tracemalloc.start()
        try:
            error, _ = timed_error(source, mode, KEY)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert error.reason == "response body is over 1 MiB"
    assert error.status_code == 200
    assert peak < 50 * 2**20


@pytest.mark.parametrize("mode", MODES)
def test_an_endless_body_through_the_mock_transport(fake: FakeProvider, mode: str) -> None:
    fake.fault("stablecog_credits", endless=True)
    source = StablecogCredits(api_key=KEY, transport=httpx.MockTransport(fake.handler))
    error, _ = timed_error(source, mode)
    source.close()
    assert "over 1 MiB" in error.reason


@pytest.mark.parametrize("mode", MODES)
def test_a_declared_large_body_is_refused_unread(mode: str) -> None:
    read: list[int] = []

    class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            read.append(1)
            yield b"{}"

        async def __aiter__(self) -> Any:
            read.append(1)
            yield b"{}"

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": str(MAX_BODY + 1)}
        return httpx.Response(200, headers=headers, stream=Body())

    source = OpenRouterKey(api_key=KEY, transport=httpx.MockTransport(handler))
    error, _ = timed_error(source, mode)
    source.close()
    assert error.reason == "response body is over 1 MiB"
    assert read == []


@pytest.mark.parametrize("mode", MODES)
def test_a_body_of_just_under_the_cap_is_read(mode: str) -> None:
    doc = b'{"data": {"limit": 5, "limit_remaining": 1.5}}'
    body = doc + b" " * (MAX_BODY - len(doc))
    source = OpenRouterKey(
        api_key=KEY, transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    )
    assert fetch(source, mode).remaining == 1.5
    over = body + b" "
    big = OpenRouterKey(
        api_key=KEY, transport=httpx.MockTransport(lambda r: httpx.Response(200, content=over))
    )
    assert "over 1 MiB" in timed_error(big, mode)[0].reason
    source.close()
    big.close()


# -- api_key_env naming an unset variable --------------------------------------------


def test_config_naming_an_unset_variable_fails_when_the_guard_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CG_UNSET_KEY", raising=False)
    config = {"source": "openrouter", "api_key_env": "CG_UNSET_KEY"}
    with pytest.raises(ConfigError) as info:
        cg.BudgetGuard.from_config(config, env=False)
    assert info.value.key == "api_key_env"
    assert "CG_UNSET_KEY is not set" in str(info.value)
    monkeypatch.setenv("CG_UNSET_KEY", KEY)
    guard = cg.BudgetGuard.from_config(config, env=False)
    assert KEY not in repr(guard)
    guard.close()


# -- a refused own key is logged at ERROR ----------------------------------------------


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("mode", MODES)
def test_own_key_refused_is_logged_at_error_once_per_ttl(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture, status: int, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    now = [1000.0]
    seen: list[CreditSourceError] = []
    fake.fault("credits", status=status)
    source = OpenRouterCredits(api_key=KEY, transport=httpx.MockTransport(fake.handler))
    guard = cg.BudgetGuard(
        source,
        cg.Policy(refuse_below=1.0, error_ttl=0, max_stale=0, on_source_error="refuse"),
        ttl=30,
        timer=lambda: now[0],
        on_source_error=seen.append,
    )

    def check() -> cg.Decision:
        if mode == "sync":
            return guard.check("m")
        return asyncio.run(guard.acheck("m"))

    for _ in range(3):
        assert check().action == "refuse"  # on_source_error still decides
        now[0] += 5
    errors = _errors(caplog)
    assert len(errors) == 1
    assert errors[0].name == "creditguard"
    assert f"HTTP {status}" in errors[0].getMessage()
    assert "openrouter-credits" in errors[0].getMessage()
    assert len(seen) == 3 and all(e.misconfigured for e in seen)
    assert fake.count("credits") == 3

    now[0] += 30  # a ttl later: loud again
    check()
    assert len(_errors(caplog)) == 2
    assert KEY not in caplog.text
    guard.close()


@pytest.mark.parametrize("mode", MODES)
def test_the_calls_own_key_refused_is_not_an_error_of_configuration(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    source = OpenRouterKey(transport=httpx.MockTransport(fake.handler))  # the call's key
    guard = cg.BudgetGuard(source, cg.Policy(error_ttl=0))
    for _ in range(2):
        decision = (
            guard.check("m", credential="sk-unknown-key-123")
            if mode == "sync"
            else asyncio.run(guard.acheck("m", credential="sk-unknown-key-123"))
        )
        assert decision.balance is None
    assert _errors(caplog) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("HTTP 401" in r.getMessage() for r in warnings)
    guard.close()


@pytest.mark.parametrize("mode", MODES)
def test_misconfigured_marks_only_own_key_refusals(fake: FakeProvider, mode: str) -> None:
    transport = httpx.MockTransport(fake.handler)
    own = OpenRouterCredits(api_key="sk-or-v1-not-registered-000", transport=transport)
    per_call = OpenRouterKey(transport=transport)
    with pytest.raises(CreditSourceError) as info:
        fetch(own, mode)
    assert (info.value.status_code, info.value.misconfigured) == (401, True)
    with pytest.raises(CreditSourceError) as info:
        fetch(per_call, mode, "sk-or-v1-not-registered-000")
    assert (info.value.status_code, info.value.misconfigured) == (401, False)
    fake.fault("credits", status=500, times=1)
    with pytest.raises(CreditSourceError) as info:
        fetch(own, mode)
    assert (info.value.status_code, info.value.misconfigured) == (500, False)
    # kept through Tightest, CallableSource and pickling
    with pytest.raises(CreditSourceError) as info:
        fetch(Tightest(own, CallableSource(lambda: 1.0)), mode)
    assert info.value.misconfigured
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.misconfigured, copy.status_code, str(copy)) == (
        True,
        401,
        str(info.value),
    )

    def relay() -> float:
        return own.fetch(None).remaining

    with pytest.raises(CreditSourceError) as info:
        CallableSource(relay).fetch(None)
    assert info.value.misconfigured


# -- ConfigError never echoes a key ------------------------------------------------------


KEYS = [
    "sk-or-v1-0123456789abcdef0123456789abcdef",
    "sk-proj-AbCdEf0123456789",
    "sk-ant-api03-abcdefghijklmnop",
    "abcdef0123456789abcdef0123456789",
]


@pytest.mark.parametrize("key", KEYS)
def test_config_error_masks_a_key_given_in_code(key: str) -> None:
    attempts: list[Any] = [
        lambda: cg.BudgetGuard(CallableSource(lambda: 1.0), estimate=key),
        lambda: cg.BudgetGuard(CallableSource(lambda: 1.0), ttl=key),
        lambda: cg.Policy(refuse_below=key),
        lambda: cg.Policy(on_source_error=key),  # type: ignore[arg-type]
        lambda: cg.Policy(downgrade={"m": 5, key: 1}),  # type: ignore[dict-item]
        lambda: OpenRouterKey(base_url=key),
        lambda: OpenRouterKey(timeout=key),  # type: ignore[arg-type]
        lambda: cg.Policy(downgrade={"m": [key]}),  # type: ignore[dict-item]
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError) as info:
            attempt()
        error = info.value
        for text in (str(error), repr(error), repr(error.value), repr(error.args)):
            assert key not in text
        copy = pickle.loads(pickle.dumps(error))
        assert key not in str(copy)


def test_config_error_still_shows_ordinary_values() -> None:
    with pytest.raises(ConfigError) as info:
        cg.Policy(on_source_error="alow")  # type: ignore[arg-type]
    assert "'alow'" in str(info.value)
    assert info.value.value == "alow"
    with pytest.raises(ConfigError) as info:
        OpenRouterKey(base_url="ftp://openrouter.ai/api/v1")
    assert "ftp://openrouter.ai/api/v1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        cg.Policy(downgrade={"openai/gpt-4o": ""})
    assert "openai/gpt-4o" in str(info.value)


def test_no_watchdog_thread_outlives_a_sync_fetch() -> None:
    # each fetch arms a timer thread for its deadline; it ends with the fetch
    answer = {"data": {"limit": 10, "usage": 1, "limit_remaining": 9}}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with OpenRouterKey(api_key="sk-or-v1-watchdog", transport=transport) as source:
        before = set(threading.enumerate())
        for _ in range(50):
            source.fetch(None)
            assert set(threading.enumerate()) <= before
        failing = OpenRouterKey(
            api_key="sk-or-v1-watchdog",
            transport=httpx.MockTransport(lambda request: httpx.Response(500)),
        )
        with failing:
            for _ in range(20):
                with pytest.raises(CreditSourceError):
                    failing.fetch(None)
                assert set(threading.enumerate()) <= before
