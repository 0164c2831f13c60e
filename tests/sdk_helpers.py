"""Shared pieces of the real-SDK tests (openai, openrouter, langchain-openai), and
the set-up of the fault scenarios (test_faults.py, test_combined_scenarios.py).

Every SDK talks to the loopback :class:`FakeProvider` only. The guard judges each call
on the balance of the key the call carries (``OpenRouterKey()`` with no key of its
own), so one fake holds one key per policy tier and a test picks its tier by key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import httpx2
import openai
import openai._base_client
import pytest

import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, Decision, Policy
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider, RecordedRequest

SECRET = "SDKTESTSECRET"
"""Part of every fake key: it must never show up in an exception or a log line."""

EXPENSIVE = "openai/gpt-4o"
CHEAP = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hi. Grüße, 世界 ✓"}]  # non-ASCII on purpose

POLICY = Policy(
    warn_below=5.0,
    downgrade_below=2.0,
    refuse_below=0.5,
    downgrade={EXPENSIVE: CHEAP},
)
# the key's own limit (USD) that lands each tier of POLICY (estimate=0.0)
LIMITS = {"allow": 100.0, "warn": 4.0, "downgrade": 1.0, "refuse": 0.2}
KEYS = {tier: f"sk-or-v1-{SECRET}-{tier.upper()}-0123456789abcdef" for tier in LIMITS}

# short timeouts everywhere: the fake answers in milliseconds
TIMEOUT = 5.0


def running_fake() -> Iterator[FakeProvider]:
    """Body of each test module's ``fake`` fixture: a running fake provider with one
    key per tier of POLICY."""
    with FakeProvider() as provider:
        for tier, limit in LIMITS.items():
            provider.add_key(KEYS[tier], limit=limit)
        yield provider
        gate = provider.stream_gate
        if gate is not None:
            gate.set()


def debug_logs_never_show_a_key(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Body of each test module's autouse fixture: DEBUG logs are captured during the
    test, and none (message or traceback) may contain a key."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    # caplog.text only holds the current phase (teardown, here): read the call's records
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            assert_no_secret(formatter.format(record))


def make_guard(fake: FakeProvider, decisions: list[Decision] | None = None) -> BudgetGuard:
    """The guard under test; ``decisions`` collects what ``on_decision`` reports."""
    return BudgetGuard(
        OpenRouterKey(
            base_url=fake.openrouter_base_url,
            timeout=TIMEOUT,
            transport=httpx.HTTPTransport(verify=False),  # see sync_http()
        ),
        POLICY,
        estimate=0.0,
        on_decision=None if decisions is None else decisions.append,
    )


# A default inner transport builds a TLS context (~30 ms of CA loading) per client; the
# fake is plain http on 127.0.0.1, so most tests give the guard's client an inner
# transport without one. ``default=True`` keeps the one-liner exactly as users write it.


def sync_http(guard: BudgetGuard, stack: str = "httpx", *, default: bool = False) -> Any:
    """``guard.client()`` (httpx) or ``creditguard.httpx2.client(guard)``."""
    if stack == "httpx":
        if default:
            return guard.client()
        return guard.client(transport=httpx.HTTPTransport(verify=False))
    if default:
        return cg2.client(guard)
    return cg2.client(guard, transport=httpx2.HTTPTransport(verify=False))


def async_http(guard: BudgetGuard, stack: str = "httpx", *, default: bool = False) -> Any:
    """``guard.async_client()`` (httpx) or ``creditguard.httpx2.async_client(guard)``."""
    if stack == "httpx":
        if default:
            return guard.async_client()
        return guard.async_client(transport=httpx.AsyncHTTPTransport(verify=False))
    if default:
        return cg2.async_client(guard)
    return cg2.async_client(guard, transport=httpx2.AsyncHTTPTransport(verify=False))


def chat_requests(fake: FakeProvider) -> list[RecordedRequest]:
    """The generation requests the fake server received."""
    return [r for r in fake.requests if r.endpoint == "chat"]


def without_model(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict)
    return {k: v for k, v in body.items() if k != "model"}


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, f"an API key leaked into: {text[:300]!r}"


def assert_exception_hides_key(exc: BaseException) -> None:
    """Neither the exception nor anything chained to it shows a key."""
    seen: BaseException | None = exc
    while seen is not None:
        assert_no_secret(str(seen), repr(seen))
        seen = seen.__cause__ or seen.__context__


# -- fault scenarios (test_faults.py, test_combined_scenarios.py) ------------------------
# The budget issue 12 measured: a key limit of 1.00, every call costing 0.01,
# refuse_below=0.5 and an estimate of 0.01, so however the calls fail the provider may
# charge at most BOUND. The modules take the fixtures below by importing them.

KEY = "sk-or-v1-FAULTSTESTKEY-0123456789abcdef"
MODEL = "faults/model"
SAY_HI = [{"role": "user", "content": "Say hi."}]
LIMIT, PRICE, FLOOR, ESTIMATE = 1.0, 0.01, 0.5, 0.01
BOUND = FLOOR + ESTIMATE + 1e-9  # the most the provider may charge: 0.51
SLOW, QUICK = 0.3, 0.15  # the provider answers after SLOW s; clients give up after QUICK
# Where one attempt must time out and the NEXT must not (its client has the same timeout),
# QUICK is too short: on a loaded 2-core machine a normal answer can take more than 0.15 s,
# the retry times out too and the test fails on the machine, not on the guard. PATIENT is a
# timeout every normal loopback answer beats; HUNG a provider delay that always outlasts it.
HUNG, PATIENT = 2.0, 1.0
STACKS = ["httpx", "httpx2"]


@pytest.fixture(name="fake")
def fault_fake() -> Iterator[FakeProvider]:
    """A running fake provider billing PRICE per call, KEY limited to LIMIT."""
    with FakeProvider(default_price=PRICE) as provider:
        provider.add_key(KEY, limit=LIMIT)
        yield provider


@pytest.fixture(name="stack", params=STACKS)
def stack_param(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(name="_quick_retries", autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs retry at once, and anthropic reads no key or URL from the environment
    (autouse in the modules that import it)."""
    import anthropic  # (not in every venv that imports this module: imported here)

    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.001)
    monkeypatch.setattr(anthropic.Anthropic, "_calculate_retry_timeout", lambda *a, **k: 0.01)
    monkeypatch.setattr(anthropic.AsyncAnthropic, "_calculate_retry_timeout", lambda *a, **k: 0.01)
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def bounded_guard(fake: FakeProvider, **kwargs: Any) -> BudgetGuard:
    """A guard on KEY's balance (OpenRouterKey) with refuse_below=FLOOR and
    estimate=ESTIMATE, polled once (ttl=600): the holds and charges carry the burst.
    Any BudgetGuard argument (``policy``, ``source``, ``store``, ...) may be given."""
    kwargs.setdefault("ttl", 600.0)
    kwargs.setdefault("estimate", ESTIMATE)
    policy = kwargs.pop("policy", Policy(refuse_below=FLOOR))
    source = kwargs.pop("source", None) or OpenRouterKey(base_url=fake.openrouter_base_url)
    return BudgetGuard(source, policy, **kwargs)


def sync_openai(fake: FakeProvider, guard: BudgetGuard, stack: str, **kw: Any) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 5.0)
    return openai.OpenAI(
        base_url=fake.openrouter_base_url, api_key=KEY, http_client=sync_http(guard, stack), **kw
    )


def async_openai(
    fake: FakeProvider, guard: BudgetGuard, stack: str, **kw: Any
) -> openai.AsyncOpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 5.0)
    return openai.AsyncOpenAI(
        base_url=fake.openrouter_base_url, api_key=KEY, http_client=async_http(guard, stack), **kw
    )


def spent(fake: FakeProvider) -> float:
    return fake.key(KEY).usage


def wait_for_spent(fake: FakeProvider, amount: float, within: float = 15.0) -> None:
    """Wait until the provider has billed ``amount`` (calls a client gave up on are
    billed when the provider finishes them): polled, so a loaded machine only waits
    longer. The caller then asserts the exact figure (nothing billed beyond it)."""
    deadline = time.monotonic() + within
    while spent(fake) < amount - 1e-9 and time.monotonic() < deadline:
        time.sleep(0.01)


def settle_down(fake: FakeProvider, wait: float = 0.0) -> None:
    """Let calls the provider is still answering (slow faults) finish and be billed."""
    time.sleep(wait)
    deadline = time.monotonic() + 5.0
    last, stable = -1.0, 0
    while time.monotonic() < deadline and stable < 3:
        now = spent(fake)
        stable = stable + 1 if now == last else 0
        last = now
        time.sleep(0.1)


def refused_by_guard(exc: openai.APIStatusError) -> bool:
    return exc.status_code == 402 and exc.response.headers.get("x-creditguard-decision") == (
        "refuse"
    )


def in_threads(works: Sequence[Callable[[], None]]) -> None:
    """Runs each of ``works`` in a thread of its own; any exception fails the test."""
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker still runs after 60 s"
    assert not errors, errors[:3]


def sync_worker(
    client: openai.OpenAI, refusals: list[int], *, stream: bool = False, calls: int = 20
) -> None:
    """Call until the guard refuses (at most ``calls`` calls)."""
    for _ in range(calls):
        try:
            done = client.chat.completions.create(model=MODEL, messages=SAY_HI, stream=stream)
            if stream:
                list(done)  # type: ignore[call-overload]
        except openai.APIStatusError as exc:
            assert refused_by_guard(exc), exc
            refusals.append(1)
            return
        except (openai.APITimeoutError, openai.APIConnectionError):
            continue
