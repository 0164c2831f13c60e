"""The guard against the loopback fake provider: real HTTP, real sources."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from creditguard import BudgetGuard, CreditsExhausted, Policy
from creditguard.sources import OpenRouterKey, StablecogCredits
from creditguard.testing import FakeProvider

KEY_A = "sk-or-v1-END2ENDSECRETAAAAAAAAAAAAAAAA"
KEY_B = "sk-or-v1-END2ENDSECRETBBBBBBBBBBBBBBBB"
POLICY = Policy(warn_below=5, downgrade_below=2, refuse_below=0.5, downgrade={"*": "cheap"})


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.add_key(KEY_A, limit=10.0)
        provider.add_key(KEY_B, limit=1.0)
        yield provider


def make_guard(fake: FakeProvider, **kwargs: Any) -> BudgetGuard:
    policy = kwargs.pop("policy", POLICY)
    kwargs.setdefault("estimate", 0.0)
    return BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy, **kwargs)


async def test_cold_cache_200_tasks_and_16_threads_make_one_upstream_fetch(
    fake: FakeProvider,
) -> None:
    fake.fault("key", delay=0.3)  # the fetch is slow, so everyone piles up behind it
    guard = make_guard(fake)
    start = threading.Barrier(17)
    thread_actions: list[str] = []

    def worker() -> None:
        start.wait()
        thread_actions.append(guard.check("big", credential=KEY_A).action)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    await asyncio.to_thread(start.wait)
    decisions = await asyncio.gather(*(guard.acheck("big", credential=KEY_A) for _ in range(200)))
    for t in threads:
        await asyncio.to_thread(t.join)
    assert fake.count("key") == 1
    assert [d.action for d in decisions] == ["allow"] * 200
    assert thread_actions == ["allow"] * 16
    guard.close()


def test_two_credentials_never_share_a_balance(fake: FakeProvider) -> None:
    guard = make_guard(fake)
    assert guard.check("big", credential=KEY_A).action == "allow"
    d = guard.check("big", credential=KEY_B)
    assert (d.action, d.model) == ("downgrade", "cheap")
    assert fake.count("key") == 2
    seen = {r.headers.get("authorization") for r in fake.requests}
    assert seen == {f"Bearer {KEY_A}", f"Bearer {KEY_B}"}
    guard.close()


def test_decorator_end_to_end_drains_and_refuses(fake: FakeProvider) -> None:
    import httpx

    fake.prices["big"] = 3.0
    fake.prices["cheap"] = 0.5
    guard = make_guard(fake, estimate=0.5)
    with httpx.Client(base_url=fake.openrouter_base_url) as http:

        @guard.protect(credential_arg="key")
        def ask(model: str, key: str) -> Any:
            r = http.post(
                "/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": model, "messages": []},
            )
            r.raise_for_status()
            return r.json()

        models = []
        while True:
            try:
                models.append(ask("big", KEY_A)["model"])
            except CreditsExhausted as exc:
                assert exc.decision.balance is not None
                break
    # 10 -> 7 -> 4: big's learned estimate (3.0, its settled cost) would leave 1, under
    # downgrade_below 2 -> cheap calls until the floor
    assert models[:2] == ["big", "big"]
    assert set(models[2:]) == {"cheap"}
    assert fake.key(KEY_A).usage == pytest.approx(
        10 - guard.check(credential=KEY_A).balance.remaining
    )  # type: ignore[union-attr]
    assert fake.count("key") == 1  # local accounting, no re-polling within ttl
    guard.close()


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 401}, "HTTP 401"),
        ({"status": 403}, "HTTP 403"),
        ({"status": 200, "body": b"<html>oops"}, "JSON"),
        ({"status": 200, "body": b'{"data": {"limit": 1'}, "JSON"),
        ({"status": 200, "body": b'{"data": {"limit_remaining": "9"}}'}, "limit_remaining"),
        ({"status": 200, "body": b'{"data": {"limit_remaining": true}}'}, "limit_remaining"),
        ({"status": 200, "body": b'{"data": {"limit_remaining": NaN}}'}, "NaN"),
        ({"status": 200, "body": b'{"data": {"usage": -1}}'}, "usage"),
        ({"status": 200, "body": b'{"nodata": {}}'}, "data"),
        ({"drop": True}, "connection failed"),
        (
            {
                "status": 403,
                "body": json.dumps(
                    {"error": {"message": "x" * 100 + f" key {KEY_A} bad"}}
                ).encode(),
            },
            "<redacted>",
        ),
        ({"delay": 2.5}, "timeout after 1 s"),
    ],
)
@pytest.mark.parametrize("on_error", ["allow", "refuse"])
def test_every_source_fault_applies_policy_and_never_leaks_the_key(
    fake: FakeProvider,
    caplog: pytest.LogCaptureFixture,
    fault: dict[str, Any],
    expect: str,
    on_error: str,
) -> None:
    fake.fault("key", **fault)
    errors: list[Exception] = []
    guard = BudgetGuard(
        # 1 s, not 0.3: every other fault's answer must come within it on a loaded
        # machine too (a slow 500 became a timeout); the delay fault (2.5 s) outlasts it
        OpenRouterKey(base_url=fake.openrouter_base_url, timeout=1.0),
        Policy(refuse_below=0.5, on_source_error=on_error),  # type: ignore[arg-type]
        on_source_error=errors.append,
    )
    with caplog.at_level(logging.DEBUG):
        d = guard.check("big", credential=KEY_A)
        again = guard.check("big", credential=KEY_A)  # negative-cached: no second fetch
    assert d.action == on_error and d.balance is None
    assert again.action == on_error
    assert fake.count("key") == 1
    assert len(errors) == 1 and expect in str(errors[0])
    texts = [d.reason, str(errors[0]), repr(errors[0]), caplog.text, repr(guard)]
    assert all(KEY_A[:16] not in text and KEY_A[-16:] not in text for text in texts)
    guard.close()


def test_stale_balance_serves_through_an_outage(fake: FakeProvider) -> None:
    clock = [0.0]
    guard = make_guard(
        fake, ttl=10, timer=lambda: clock[0], policy=Policy(refuse_below=1, max_stale=60)
    )
    assert guard.check("big", credential=KEY_A).balance.remaining == 10  # type: ignore[union-attr]
    fake.fault("key", status=503)
    clock[0] = 30
    d = guard.check("big", credential=KEY_A)
    assert d.action == "allow" and d.stale and d.balance.remaining == 10  # type: ignore[union-attr]
    clock[0] = 61
    d = guard.check("big", credential=KEY_A)
    assert d.balance is None and "HTTP 503" in d.reason
    fake.clear_faults()
    clock[0] = 70  # past error_ttl: fetched again, fresh
    d = guard.check("big", credential=KEY_A)
    assert not d.stale and d.balance.remaining == 10  # type: ignore[union-attr]
    guard.close()


def test_stablecog_whole_credits(fake: FakeProvider) -> None:
    fake.add_key("stablecog-key-123456", credits=40)
    guard = BudgetGuard(
        StablecogCredits(api_key="stablecog-key-123456", base_url=fake.stablecog_base_url),
        Policy(refuse_below=10),
        estimate=2,
    )
    d = guard.check("sdxl")
    assert d.action == "allow" and d.balance is not None
    assert (d.balance.remaining, d.balance.unit) == (40, "credits")
    guard.record(30)
    assert guard.check("sdxl").action == "refuse"
    guard.close()
