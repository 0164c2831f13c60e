"""Alerts through the real openai SDK, and the webhook against a loopback HTTP server
that answers, fails and hangs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sdk_helpers import (
    EXPENSIVE,
    MESSAGES,
    SECRET,
    TIMEOUT,
    assert_no_secret,
    debug_logs_never_show_a_key,
    running_fake,
    sync_http,
)

import creditguard as cg
from creditguard.alerts import Alert, Webhook
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = f"sk-or-v1-{SECRET}-ALERTS-0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    for provider in running_fake():
        provider.add_key(KEY, credits=1000.0, limit=2.0)
        provider.prices[EXPENSIVE] = 0.25
        yield provider


@pytest.fixture(autouse=True)
def _no_key_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield from debug_logs_never_show_a_key(caplog)


class Hook:
    """A loopback webhook receiver. ``script`` lists how the next posts are
    answered: ``"ok"``, ``"fail"`` (500), ``"reject"`` (400), ``"hang"`` (no
    answer until ``release`` is set); then ``"ok"``."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.script: list[str] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with lock:
                    hook.bodies.append(json.loads(body))
                    mode = hook.script.pop(0) if hook.script else "ok"
                if mode == "hang":
                    hook.release.wait(10)
                    return
                status = {"ok": 200, "fail": 500, "reject": 400}[mode]
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/services/T000/B000/{SECRET}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def make_guard(fake: FakeProvider, **kwargs: Any) -> cg.BudgetGuard:
    return cg.BudgetGuard(
        OpenRouterKey(base_url=fake.openrouter_base_url, timeout=TIMEOUT),
        cg.Policy(alerts=("50%", 0.5)),
        estimate=0.0,
        **kwargs,
    )


def calls(fake: FakeProvider, guard: cg.BudgetGuard, n: int) -> list[str]:
    actions = []
    with openai.OpenAI(
        base_url=fake.openrouter_base_url,
        api_key=KEY,
        http_client=sync_http(guard),
        max_retries=0,
        timeout=TIMEOUT,
    ) as client:
        for _ in range(n):
            raw = client.chat.completions.with_raw_response.create(
                model=EXPENSIVE,
                messages=MESSAGES,  # type: ignore[arg-type]
            )
            actions.append(raw.headers["x-creditguard-decision"])
    return actions


def test_each_level_fires_once_per_crossing_and_rearms_on_top_up(fake: FakeProvider) -> None:
    alerts: list[Alert] = []
    guard = make_guard(fake, on_alert=alerts.append)
    calls(fake, guard, 7)  # available 2.0, 1.75, ... 0.5 before each call
    fp = guard.ledger.key(KEY)[:8]
    assert alerts == [
        Alert(level="50%", available=0.75, unit="USD", fingerprint=fp, model=EXPENSIVE)
    ]
    calls(fake, guard, 1)  # 0.25 left before it: below 0.5
    assert [a.level for a in alerts] == ["50%", 0.5]
    assert alerts[1].available == pytest.approx(0.25)
    for alert in alerts:
        assert_no_secret(repr(alert), alert.text)
        assert len(alert.fingerprint) == 8

    # a top-up: back above both levels, which re-arms them; crossing again fires again
    fake.set_key(KEY, limit=4.0)  # 2.0 of 4.0 left: exactly at 50%, not below it
    guard.invalidate(KEY)
    calls(fake, guard, 1)
    assert len(alerts) == 2
    calls(fake, guard, 1)  # 1.75 of 4.0: below 50% again
    assert [a.level for a in alerts] == ["50%", 0.5, "50%"]
    guard.close()


def test_alerts_of_other_credentials_are_their_own(fake: FakeProvider) -> None:
    other = f"sk-or-v1-{SECRET}-OTHER-0123456789abcdef"
    fake.add_key(other, credits=1000.0, limit=100.0)
    alerts: list[Alert] = []
    guard = make_guard(fake, on_alert=alerts.append)
    for _ in range(3):
        guard.check(EXPENSIVE, credential=other)
    calls(fake, guard, 6)
    assert len(alerts) == 1 and alerts[0].fingerprint == guard.ledger.key(KEY)[:8]
    guard.close()


def test_a_callback_that_raises_is_logged_not_raised(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("boom")

    guard = make_guard(fake, on_alert=broken)
    assert calls(fake, guard, 7)[-1] == "allow"
    assert any("raised" in r.getMessage() for r in caplog.records)
    guard.close()


def test_webhook_posts_a_slack_text_without_any_key(fake: FakeProvider, hook: Hook) -> None:
    webhook = Webhook(hook.url, backoff=0.01)
    guard = make_guard(fake, alert_webhook=webhook)
    calls(fake, guard, 8)
    assert webhook.wait(5.0)
    assert webhook.sent == 2 and webhook.dropped == 0
    texts = [body["text"] for body in hook.bodies]
    assert len(texts) == 2 and "alert level 50%" in texts[0]
    assert hook.bodies[0]["creditguard"]["fingerprint"] == guard.ledger.key(KEY)[:8]
    assert hook.bodies[0]["creditguard"]["model"] == EXPENSIVE
    assert_no_secret(json.dumps(hook.bodies))
    assert "sk-or" not in json.dumps(hook.bodies)
    assert_no_secret(repr(webhook))  # the URL's secret path is never shown
    guard.close()


async def test_aclose_stops_the_webhook_worker_whatever_the_source() -> None:
    """A guard over a source with no async close (FixedBudget) stops its alert
    webhook's worker at aclose() too, as close() does."""
    from creditguard.sources import FixedBudget

    webhook = Webhook("http://127.0.0.1:9/hook", backoff=0.01)
    guard = cg.BudgetGuard(FixedBudget(10.0), alert_webhook=webhook)
    await guard.aclose()
    assert webhook._closed.is_set()  # (close() was never called by aclose() here)


def test_webhook_retries_with_backoff(fake: FakeProvider, hook: Hook) -> None:
    hook.script = ["fail", "fail"]
    webhook = Webhook(hook.url, backoff=0.01, retries=3)
    guard = make_guard(fake, alert_webhook=webhook)
    calls(fake, guard, 7)
    assert webhook.wait(5.0)
    assert len(hook.bodies) == 3  # two failures, then delivered
    assert webhook.sent == 1 and webhook.dropped == 0
    guard.close()


def test_a_hung_webhook_never_holds_a_call_and_drops_are_counted(
    fake: FakeProvider, hook: Hook
) -> None:
    reader = InMemoryMetricReader()
    hook.script = ["hang", "hang"]
    webhook = Webhook(hook.url, timeout=0.2, retries=1, backoff=0.01)
    guard = make_guard(fake, alert_webhook=webhook, metrics=MeterProvider(metric_readers=[reader]))
    # the calls finish while the receiver is still hung (it is released only below)
    assert calls(fake, guard, 7) == ["allow"] * 7
    assert not hook.release.is_set()
    assert webhook.wait(5.0)
    assert webhook.dropped == 1 and webhook.sent == 0
    data = reader.get_metrics_data()
    assert data is not None
    dropped = [
        p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "creditguard.alerts.dropped"
        for p in m.data.data_points
    ]
    assert dropped == [1]
    hook.release.set()
    guard.close()


def test_a_full_queue_drops_instead_of_waiting(hook: Hook) -> None:
    hook.script = ["hang"]
    events = cg.BudgetGuard(
        cg.sources.CallableSource(lambda: 1.0), metrics=False
    ).events  # any guard's events: the dropped ones are told there
    lost: list[Alert] = []
    events.subscribe("dropped", lost.append)
    webhook = Webhook(hook.url, events, timeout=1.0, retries=0, maxsize=1)
    alert = Alert(level=5.0, available=4.0, unit="USD", fingerprint="abcdef12", model=None)
    for _ in range(4):
        webhook.send(alert)  # one in flight (hung), one queued, the rest dropped
    assert webhook.dropped >= 2 and len(lost) == webhook.dropped
    hook.release.set()
    webhook.close()


def test_a_refused_post_is_not_retried(hook: Hook) -> None:
    hook.script = ["reject"]
    webhook = Webhook(hook.url, backoff=0.01)
    webhook.send(Alert(level="20%", available=1.0, unit="USD", fingerprint="abcdef12", model="m"))
    assert webhook.wait(5.0)
    assert len(hook.bodies) == 1 and webhook.dropped == 1
    webhook.close()


@pytest.mark.parametrize(
    "url",
    [f"ftp://hooks.example/services/{SECRET}", f"hooks.example/services/{SECRET}", "http:///x"],
)
def test_bad_webhook_urls_are_config_errors_that_hide_the_path(url: str) -> None:
    with pytest.raises(cg.ConfigError) as info:
        Webhook(url)
    assert info.value.key == "alert_webhook"
    assert_no_secret(str(info.value))


def test_config_names_the_webhook_variable(
    fake: FakeProvider, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM_ALERT_WEBHOOK", hook.url)
    guard = cg.BudgetGuard.from_config(
        {
            "source": "openrouter-key",
            "base_url": fake.openrouter_base_url,
            "alerts": ["50%", 0.5],
            "alert_webhook_env": "TEAM_ALERT_WEBHOOK",
            "metrics": False,
        },
        env=False,
    )
    assert guard.policy.alerts == ("50%", 0.5)
    calls(fake, guard, 7)
    guard.close()  # closing delivers what is queued
    assert [b["creditguard"]["level"] for b in hook.bodies] == ["50%"]
    with pytest.raises(cg.ConfigError, match="alert_webhook_env"):
        cg.BudgetGuard.from_config(
            {"source": "openrouter-key", "alert_webhook_env": "NOT_SET_ANYWHERE_X"}, env=False
        )
    with pytest.raises(cg.ConfigError, match="metrics"):
        cg.load_config({"source": "openrouter-key", "metrics": "sometimes"}, env=False)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "it has no scheme"),
        (f"hooks.example/services/{SECRET}", "it has no scheme"),
        (f"ftp://hooks.example/services/{SECRET}", "its scheme is 'ftp'"),
        (f"http:///services/{SECRET}", "an http:// URL with a host; this one has none"),
        ("http://[hooks.example/x", "does not parse"),
    ],
)
def test_a_refused_webhook_url_says_it_is_hidden_and_names_its_scheme(url: str, says: str) -> None:
    # "not a url" was reported as alert_webhook = '://': neither the value nor a reason
    with pytest.raises(cg.ConfigError) as info:
        Webhook(url)
    text = str(info.value)
    assert "'://'" not in text
    assert "not shown: a webhook URL may hold a secret" in text
    assert says in text and "http://" in text
    assert_no_secret(text)
    with pytest.raises(cg.ConfigError) as typed:
        Webhook(5)  # type: ignore[arg-type]
    assert "<int>" in str(typed.value)
