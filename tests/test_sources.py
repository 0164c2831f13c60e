"""Tests of creditguard.sources: every source sync and async, every fault, no key leaks."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import logging
import math
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import httpx
import pytest

import creditguard.sources as sources_pkg
from creditguard import Balance, ConfigError, CreditSourceError
from creditguard.sources import (
    CallableSource,
    CreditSource,
    FixedBudget,
    OpenRouterCredits,
    OpenRouterKey,
    StablecogCredits,
    Tightest,
)

KEY = "sk-or-v1-SECRETSECRET1234"
OTHER_KEY = "sk-or-v1-OTHEROTHER5678"
MODES = ["sync", "async"]

Handler = Callable[[httpx.Request], httpx.Response]
HttpSourceType = type[OpenRouterCredits] | type[OpenRouterKey] | type[StablecogCredits]


def fetch(source: Any, mode: str, credential: str | None = None) -> Balance:
    if mode == "sync":
        result: Balance = source.fetch(credential)
    else:
        result = asyncio.run(source.afetch(credential))
    return result


def fetch_error(source: Any, mode: str, credential: str | None = None) -> CreditSourceError:
    with pytest.raises(CreditSourceError) as info:
        fetch(source, mode, credential)
    return info.value


class Recorder:
    """A MockTransport handler answering one canned response, remembering requests."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def keys(self) -> list[str]:
        return [r.headers["authorization"].removeprefix("Bearer ") for r in self.requests]


def reply(status: int = 200, body: bytes | object = b"{}") -> Handler:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content)

    return handler


def raising(factory: Callable[[httpx.Request], Exception]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise factory(request)

    return handler


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    """Builds an HTTP source on a MockTransport; closes it after the test."""
    made: list[Any] = []

    def build(cls: HttpSourceType, answer: Handler, **kwargs: Any) -> Any:
        recorder = answer if isinstance(answer, Recorder) else Recorder(answer)
        source: Any = cls(transport=httpx.MockTransport(recorder), **kwargs)
        source.recorder = recorder
        made.append(source)
        return source

    yield build
    for source in made:
        source.close()


GOOD_BODIES: dict[HttpSourceType, object] = {
    OpenRouterCredits: {"data": {"total_credits": 25.0, "total_usage": 7.5}},
    OpenRouterKey: {"data": {"limit": 20, "limit_remaining": 12.5, "usage": 7.5}},
    StablecogCredits: {"total_remaining_credits": 90, "credits": []},
}
HTTP_SOURCES: list[HttpSourceType] = [OpenRouterCredits, OpenRouterKey, StablecogCredits]


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert "SECRETSECRET" not in text


# -- protocol and exports -----------------------------------------------------


def test_exports_exactly_the_public_names() -> None:
    assert sorted(sources_pkg.__all__) == sorted(
        [
            "AnthropicSpend",
            "ByHost",
            "CallableSource",
            "CreditSource",
            "DeepSeekBalance",
            "FalBalance",
            "FixedBudget",
            "MoonshotBalance",
            "NovitaBalance",
            "OpenAISpend",
            "OpenRouterCredits",
            "OpenRouterKey",
            "StabilityBalance",
            "StablecogCredits",
            "Tightest",
            "VercelGatewayCredits",
        ]
    )


def test_every_source_is_a_credit_source() -> None:
    every: list[Any] = [
        OpenRouterCredits(),
        OpenRouterKey(),
        StablecogCredits(),
        CallableSource(lambda: 1.0),
        FixedBudget(5),
    ]
    every.append(Tightest(*every))
    names = [source.name for source in every]
    assert names[:3] == ["openrouter-credits", "openrouter-key", "stablecog"]
    assert names[3].startswith("callable:")
    assert names[4:] == ["fixed", "tightest"]
    for source in every:
        assert isinstance(source, CreditSource)
    assert not isinstance(object(), CreditSource)
    for source in every:
        close = getattr(source, "close", None)
        if close is not None:
            close()


# -- HTTP sources: happy paths --------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_openrouter_credits(make: Callable[..., Any], mode: str) -> None:
    source = make(OpenRouterCredits, reply(body=GOOD_BODIES[OpenRouterCredits]), api_key=KEY)
    before = time.time()
    balance = fetch(source, mode)
    assert balance == Balance(
        remaining=17.5,
        total=25.0,
        used=7.5,
        unit="USD",
        fetched_at=balance.fetched_at,
        source="openrouter-credits",
    )
    assert before <= balance.fetched_at <= time.time()
    (request,) = source.recorder.requests
    assert request.method == "GET"
    assert str(request.url) == "https://openrouter.ai/api/v1/credits"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept"] == "application/json"
    assert request.extensions["timeout"] == {
        "connect": 10.0,
        "read": 10.0,
        "write": 10.0,
        "pool": 10.0,
    }


@pytest.mark.parametrize("mode", MODES)
def test_openrouter_credits_overdrawn_is_negative(make: Callable[..., Any], mode: str) -> None:
    body = {"data": {"total_credits": 5, "total_usage": 6.25}}
    balance = fetch(make(OpenRouterCredits, reply(body=body), api_key=KEY), mode)
    assert balance.remaining == -1.25
    assert balance.exhausted


@pytest.mark.parametrize("mode", MODES)
def test_openrouter_key(make: Callable[..., Any], mode: str) -> None:
    source = make(OpenRouterKey, reply(body=GOOD_BODIES[OpenRouterKey]), timeout=2.5)
    balance = fetch(source, mode, KEY)
    assert (balance.remaining, balance.total, balance.used) == (12.5, 20.0, 7.5)
    assert (balance.unit, balance.source) == ("USD", "openrouter-key")
    (request,) = source.recorder.requests
    assert str(request.url) == "https://openrouter.ai/api/v1/key"
    assert request.extensions["timeout"]["read"] == 2.5


@pytest.mark.parametrize("mode", MODES)
def test_stablecog(make: Callable[..., Any], mode: str) -> None:
    body = {
        "total_remaining_credits": 120,
        "credits": [
            {
                "id": "a",
                "remaining_amount": 20,
                "expires_at": None,
                "type": {"id": "t1", "name": "Free", "amount": 100},
            },
            {
                "id": "b",
                "remaining_amount": 100,
                "type": {"id": "t2", "name": "Pack", "amount": 150},
            },
        ],
    }
    source = make(StablecogCredits, reply(body=body), api_key=KEY)
    balance = fetch(source, mode)
    assert (balance.remaining, balance.total, balance.used) == (120, 250.0, None)
    assert (balance.unit, balance.source) == ("credits", "stablecog")
    assert str(source.recorder.requests[0].url) == "https://api.stablecog.com/v1/credits"
    assert source.recorder.keys == [KEY]


@pytest.mark.parametrize(
    ("credits", "total"),
    [
        (None, None),
        ([], None),
        ([{"type": {"amount": 10}}, {"type": {"amount": 5.5}}], 15.5),
        ([{"type": {"amount": 10}}, {"type": {}}], None),
        ([{"type": {"amount": 10}}, {"type": {"amount": "5"}}], None),
        ([{"type": {"amount": 10}}, {"type": {"amount": True}}], None),
        ([{"type": {"amount": -1}}], None),
        ([{"type": None}], None),
        (["x"], None),
    ],
)
def test_stablecog_total(make: Callable[..., Any], credits: object, total: float | None) -> None:
    body: dict[str, object] = {"total_remaining_credits": 3}
    if credits is not None:
        body["credits"] = credits
    balance = fetch(make(StablecogCredits, reply(body=body), api_key=KEY), "sync")
    assert balance.remaining == 3
    assert balance.total == total


def test_stablecog_negative_remaining_is_valid(make: Callable[..., Any]) -> None:
    body = {"total_remaining_credits": -2}
    balance = fetch(make(StablecogCredits, reply(body=body), api_key=KEY), "sync")
    assert balance.remaining == -2
    assert balance.exhausted


@pytest.mark.parametrize(
    ("data", "remaining", "total", "used"),
    [
        pytest.param(
            {"limit": None, "limit_remaining": None, "usage": 3, "effective_budget": None},
            math.inf,
            None,
            3.0,
            id="no-cap-unlimited",
        ),
        pytest.param(
            {"limit": 10, "limit_remaining": 4, "usage": 6}, 4.0, 10.0, 6.0, id="key-limit"
        ),
        pytest.param(
            {"limit": 10, "limit_remaining": 4, "effective_budget": {"remaining_usd": 2}},
            2.0,
            None,
            None,
            id="budget-tighter",
        ),
        pytest.param(
            {
                "limit": 10,
                "limit_remaining": 4,
                "effective_budget": {"remaining_usd": 2, "limit_usd": 5, "scope": "org"},
            },
            2.0,
            5.0,
            None,
            id="budget-tighter-with-total",
        ),
        pytest.param(
            {
                "limit": None,
                "limit_remaining": 2,
                "effective_budget": {"remaining_usd": 2, "budget_usd": 9},
            },
            2.0,
            None,
            None,
            id="tie-key-limit-wins",
        ),
        pytest.param(
            {"limit": 10, "limit_remaining": 1, "effective_budget": {"remaining_usd": 2}},
            1.0,
            10.0,
            None,
            id="key-limit-tighter",
        ),
        pytest.param(
            {"limit": None, "effective_budget": {"remaining_usd": 3.5, "resets_at": "x"}},
            3.5,
            None,
            None,
            id="budget-only",
        ),
        pytest.param(
            {"limit": None, "effective_budget": {"remaining_usd": 3, "limit_usd": "5"}},
            3.0,
            None,
            None,
            id="unreadable-budget-total-ignored",
        ),
        pytest.param(
            {"limit": None, "effective_budget": {"remaining_usd": None, "resets_at": None}},
            math.inf,
            None,
            None,
            id="budget-without-remaining",
        ),
        pytest.param(
            # (the older /auth/key answer: no limit_remaining; it read as unlimited)
            {"limit": 10, "usage": 6},
            4.0,
            10.0,
            6.0,
            id="limit-without-remaining",
        ),
        pytest.param(
            {"limit": 10, "usage": 9, "limit_reset": "daily", "usage_daily": 3},
            7.0,
            10.0,
            3.0,
            id="reset-limit-without-remaining",
        ),
        pytest.param(
            {"limit": 5, "limit_remaining": -0.5, "usage": 5.5},
            -0.5,
            5.0,
            5.5,
            id="overdrawn",
        ),
        pytest.param(
            {
                "label": "sk-or-v1-abc...xyz",
                "limit": 5,
                "limit_remaining": 1,
                "limit_reset": "monthly",
                "usage_daily": 1,
                "is_free_tier": False,
                "rate_limit": {"requests": 50, "interval": "10s"},
                "byok_usage": 0,
                "future_field": [1, {"x": None}],
            },
            1.0,
            5.0,
            None,
            id="unknown-fields-ignored",
        ),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_openrouter_key_remaining(
    make: Callable[..., Any],
    mode: str,
    data: dict[str, object],
    remaining: float,
    total: float | None,
    used: float | None,
) -> None:
    balance = fetch(make(OpenRouterKey, reply(body={"data": data})), mode, KEY)
    assert balance.remaining == remaining
    assert balance.total == total
    assert balance.used == used
    assert balance.source == "openrouter-key"
    assert balance.unlimited is (remaining == math.inf)


# -- HTTP sources: keys -------------------------------------------------------------


@pytest.mark.parametrize("cls", HTTP_SOURCES)
@pytest.mark.parametrize("mode", MODES)
def test_key_precedence(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, cls: HttpSourceType, mode: str
) -> None:
    monkeypatch.setenv("CG_TEST_KEY", "env-key-1234")
    monkeypatch.delenv("CG_TEST_UNSET", raising=False)
    answer = reply(body=GOOD_BODIES[cls])

    own = make(cls, answer, api_key="own-key-1234", api_key_env="CG_TEST_KEY")
    fetch(own, mode, "call-key-1234")
    assert own.recorder.keys == ["own-key-1234"]
    assert own.per_credential is False

    env = make(cls, answer, api_key_env="CG_TEST_KEY")
    fetch(env, mode, "call-key-1234")
    monkeypatch.setenv("CG_TEST_KEY", "env-key-5678")  # read at every fetch
    fetch(env, mode, "call-key-1234")
    assert env.recorder.keys == ["env-key-1234", "env-key-5678"]
    assert env.per_credential is False

    # a variable unset after the source was built: an error, never the call's key
    # (the source keeps one balance for every call: it must not be the call's)
    monkeypatch.delenv("CG_TEST_KEY")
    error = fetch_error(env, mode, "call-key-1234")
    assert "'CG_TEST_KEY' (api_key_env=) is not set" in error.reason
    assert env.recorder.keys == ["env-key-1234", "env-key-5678"]

    per_call = make(cls, answer)
    fetch(per_call, mode, "call-key-1234")
    fetch(per_call, mode, " call-key-5678\n")
    assert per_call.recorder.keys == ["call-key-1234", "call-key-5678"]
    assert per_call.per_credential is True


@pytest.mark.parametrize("cls", HTTP_SOURCES)
@pytest.mark.parametrize("mode", MODES)
def test_no_key_says_how_to_give_one(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, cls: HttpSourceType, mode: str
) -> None:
    monkeypatch.delenv("CG_TEST_UNSET", raising=False)
    source = make(cls, reply(body=GOOD_BODIES[cls]))
    error = fetch_error(source, mode, None)
    assert "api_key=" in error.reason
    assert "api_key_env=" in error.reason
    assert "credential" in error.reason
    assert error.source == cls.name
    assert error.status_code is None

    assert source.recorder.requests == []


@pytest.mark.parametrize("cls", HTTP_SOURCES)
@pytest.mark.parametrize("value", [None, "", "  \n"])
def test_api_key_env_naming_an_unset_variable_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, cls: HttpSourceType, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CG_TEST_UNSET", raising=False)
    else:
        monkeypatch.setenv("CG_TEST_UNSET", value)
    with pytest.raises(ConfigError) as info:
        cls(api_key_env="CG_TEST_UNSET")
    assert info.value.key == "api_key_env"
    assert "CG_TEST_UNSET is not set" in str(info.value)
    cls(api_key_env="CG_TEST_UNSET", api_key=KEY).close()  # an own key needs no variable


@pytest.mark.parametrize("bad", [f"{KEY}\nX-Evil: 1", f"{KEY} x", f"{KEY}é"])
def test_key_that_cannot_be_a_header(make: Callable[..., Any], bad: str) -> None:
    source = make(OpenRouterKey, reply(body=GOOD_BODIES[OpenRouterKey]))
    error = fetch_error(source, "sync", bad)
    assert "header" in error.reason
    assert_no_key(str(error), repr(error))
    assert source.recorder.requests == []


@pytest.mark.parametrize("cls", HTTP_SOURCES)
def test_repr_never_shows_the_key(cls: HttpSourceType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    own = cls(api_key=KEY)
    env = cls(api_key_env="OPENROUTER_API_KEY", base_url="https://example.test/v1/")
    per_call = cls(timeout=3)
    assert repr(own) == f"{cls.__name__}(base_url={cls().base_url!r}, api_key=<set>)"
    assert "api_key_env='OPENROUTER_API_KEY'" in repr(env)
    assert "https://example.test/v1/" in repr(env)
    assert "timeout=3" in repr(per_call)
    assert "credential" in repr(per_call)
    assert_no_key(repr(own), str(own), repr(env), repr(per_call))


def test_base_url_trailing_slash(make: Callable[..., Any]) -> None:
    source = make(
        StablecogCredits,
        reply(body=GOOD_BODIES[StablecogCredits]),
        api_key=KEY,
        base_url="http://127.0.0.1:9/v1/",
    )
    fetch(source, "sync")
    assert str(source.recorder.requests[0].url) == "http://127.0.0.1:9/v1/credits"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": ""}, "base_url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"api_key_env": ""}, "api_key_env"),
        ({"api_key": 1234}, "api_key"),
    ],
)
def test_http_source_config_errors(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        OpenRouterKey(**kwargs)
    assert info.value.key == key


def test_sync_client_is_reused_created_once_and_closed(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[httpx.Client] = []
    real_client = httpx.Client

    class CountingClient(real_client):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            created.append(self)

    monkeypatch.setattr(httpx, "Client", CountingClient)
    source = make(OpenRouterKey, reply(body=GOOD_BODIES[OpenRouterKey]), api_key=KEY)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                source.fetch(None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(created) == 1
    assert len(source.recorder.requests) == 40
    source.close()
    assert created[0].is_closed
    source.fetch(None)  # a closed source opens a new client
    assert len(created) == 2
    source.close()


async def test_afetch_uses_the_async_transport_and_aclose_closes_it() -> None:
    closed: list[str] = []

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=GOOD_BODIES[OpenRouterKey])

        async def aclose(self) -> None:
            closed.append("async")

    async with OpenRouterKey(api_key=KEY, async_transport=Transport()) as source:
        first = await source.afetch(None)
        second = await source.afetch(None)  # the borrowed transport survives each call
        assert first.remaining == second.remaining == 12.5
        assert closed == []
    assert closed == ["async"]


async def test_concurrent_afetch(make: Callable[..., Any]) -> None:
    source = make(OpenRouterKey, reply(body=GOOD_BODIES[OpenRouterKey]))
    balances = await asyncio.gather(*(source.afetch(f"key-{i:04d}") for i in range(20)))
    assert {balance.remaining for balance in balances} == {12.5}
    assert sorted(source.recorder.keys) == sorted(f"key-{i:04d}" for i in range(20))


# -- HTTP sources: faults -----------------------------------------------------------


def _fault(
    fault_id: str, answer: Handler, status: int | None, reason: str
) -> tuple[str, Handler, int | None, str]:
    return (fault_id, answer, status, reason)


GENERIC_FAULTS = [
    _fault(
        "connect-error",
        raising(lambda r: httpx.ConnectError(f"refused for {KEY}", request=r)),
        None,
        "could not connect",
    ),
    _fault(
        "read-timeout",
        raising(lambda r: httpx.ReadTimeout(f"timed out ({KEY})", request=r)),
        None,
        "timeout",
    ),
    _fault(
        "connect-timeout",
        raising(lambda r: httpx.ConnectTimeout("timed out", request=r)),
        None,
        "timeout",
    ),
    _fault("pool-timeout", raising(lambda r: httpx.PoolTimeout("", request=r)), None, "timeout"),
    _fault(
        "disconnected",
        raising(lambda r: httpx.RemoteProtocolError(f"peer closed {KEY}", request=r)),
        None,
        "connection failed",
    ),
    _fault(
        "transport-bug",
        raising(lambda r: RuntimeError(f"boom {r.headers['authorization']}")),
        None,
        "request failed",
    ),
    _fault("401", reply(401, {"error": {"code": 401, "message": "No auth"}}), 401, "key rejected"),
    _fault(
        "401-echoes-key",
        reply(401, {"error": {"code": 401, "message": f"Invalid key {KEY}"}}),
        401,
        "key rejected (unauthorized): Invalid key <redacted>",
    ),
    _fault("403", reply(403, {"error": "Forbidden"}), 403, "forbidden"),
    _fault("429", reply(429, {"message": "slow down"}), 429, "rate limited: slow down"),
    _fault("500", reply(500, b"Internal Server Error"), 500, "server error"),
    _fault("502-html", reply(502, b"<html>Bad gateway</html>"), 502, "server error"),
    _fault("503", reply(503, b""), 503, "server error"),
    _fault("404", reply(404, {"error": {"message": "Not Found"}}), 404, "unexpected HTTP status"),
    _fault("302", reply(302, b""), 302, "unexpected HTTP status"),
    _fault("empty-body", reply(200, b""), 200, "empty response body"),
    _fault("html-body", reply(200, b"<html>hello</html>"), 200, "not JSON"),
    _fault("bad-utf8", reply(200, b'{"data": "\xff"}'), 200, "not JSON"),
    _fault("truncated", reply(200, b'{"data": {"total_credits": 1'), 200, "truncated"),
    _fault("truncated-brace", reply(200, b"{"), 200, "truncated"),
    _fault(
        "nan",
        reply(200, b'{"data": {"total_credits": NaN}, "total_remaining_credits": NaN}'),
        200,
        "NaN",
    ),
    _fault(
        "infinity",
        reply(200, b'{"data": {"limit_remaining": Infinity}, "total_remaining_credits": Infinity}'),
        200,
        "Infinity",
    ),
    _fault(
        "-infinity",
        reply(200, b'{"data": {"usage": -Infinity}, "total_remaining_credits": -Infinity}'),
        200,
        "-Infinity",
    ),
    _fault("top-array", reply(200, b"[1, 2]"), 200, "is an array, expected an object"),
    _fault("top-string", reply(200, b'"credits"'), 200, "is a string, expected an object"),
    _fault("top-null", reply(200, b"null"), 200, "is null, expected an object"),
    _fault("top-number", reply(200, b"12"), 200, "is a number, expected an object"),
]

OPENROUTER_CREDITS_FAULTS = [
    ({}, "data is missing"),
    ({"data": None}, "data is null"),
    ({"data": [1]}, "data is an array"),
    ({"data": {"total_usage": 1}}, "data.total_credits is missing"),
    ({"data": {"total_credits": 1}}, "data.total_usage is missing"),
    ({"data": {"total_credits": "10", "total_usage": 1}}, "data.total_credits is a string"),
    ({"data": {"total_credits": True, "total_usage": 1}}, "data.total_credits is a boolean"),
    ({"data": {"total_credits": 1, "total_usage": None}}, "data.total_usage is null"),
    ({"data": {"total_credits": 1, "total_usage": {}}}, "data.total_usage is an object"),
    (b'{"data": {"total_credits": 1e999, "total_usage": 1}}', "not a finite number"),
    (b'{"data": {"total_credits": 1, "total_usage": -1e999}}', "not a finite number"),
    (
        b'{"data": {"total_credits": 1' + b"0" * 400 + b', "total_usage": 1}}',
        "not a finite number",
    ),
    ({"data": {"total_credits": -1, "total_usage": 1}}, "data.total_credits is negative"),
    ({"data": {"total_credits": 1, "total_usage": -0.5}}, "data.total_usage is negative"),
]
OPENROUTER_KEY_FAULTS = [
    ({}, "data is missing"),
    # a renamed or dropped limit must never read as "unlimited"
    ({"data": {}}, "data.limit is missing"),
    ({"data": {"limit_remaining": 5, "usage": 1}}, "data.limit is missing"),
    ({"data": "x"}, "data is a string"),
    ({"data": {"limit": "10"}}, "data.limit is a string"),
    ({"data": {"limit": -1}}, "data.limit is negative"),
    ({"data": {"limit_remaining": "1"}}, "data.limit_remaining is a string"),
    ({"data": {"limit_remaining": False}}, "data.limit_remaining is a boolean"),
    (b'{"data": {"limit_remaining": 1e400}}', "data.limit_remaining is not a finite number"),
    ({"data": {"usage": -1}}, "data.usage is negative"),
    # (a cap whose remaining amount cannot be known read as unlimited)
    ({"data": {"limit": 10}}, "data.limit_remaining is missing, and so is the usage"),
    (
        {"data": {"limit": 10, "usage": 1, "limit_reset": "weekly"}},
        "data.usage_weekly",
    ),
    (
        {"data": {"limit": None, "effective_budget": {"limit_usd": 5}}},
        "data.effective_budget.remaining_usd is missing",
    ),
    ({"data": {"usage": [1]}}, "data.usage is an array"),
    ({"data": {"effective_budget": "x"}}, "data.effective_budget is a string"),
    ({"data": {"effective_budget": [1]}}, "data.effective_budget is an array"),
    (
        {"data": {"effective_budget": {"remaining_usd": "2"}}},
        "data.effective_budget.remaining_usd is a string",
    ),
    (
        b'{"data": {"effective_budget": {"remaining_usd": -1e999}}}',
        "data.effective_budget.remaining_usd is not a finite number",
    ),
]
STABLECOG_FAULTS = [
    ({}, "total_remaining_credits is missing"),
    ({"total_remaining_credits": None}, "total_remaining_credits is null"),
    ({"total_remaining_credits": "120"}, "total_remaining_credits is a string"),
    ({"total_remaining_credits": True}, "total_remaining_credits is a boolean"),
    (b'{"total_remaining_credits": 1e999}', "total_remaining_credits is not a finite number"),
    ({"total_remaining_credits": 1, "credits": "x"}, "credits is not an array"),
    ({"total_remaining_credits": 1, "credits": {"a": 1}}, "credits is not an array"),
]


def _body_faults(
    cls: HttpSourceType, faults: list[tuple[object, str]]
) -> list[tuple[HttpSourceType, str, Handler, int | None, str]]:
    return [
        (cls, f"body-{index}", reply(200, body), 200, reason)
        for index, (body, reason) in enumerate(faults)
    ]


ALL_FAULTS = [
    pytest.param(cls, fault_id, answer, status, reason, id=f"{cls.name}-{fault_id}")
    for cls, fault_id, answer, status, reason in [
        *((cls, *fault) for cls in HTTP_SOURCES for fault in GENERIC_FAULTS),
        *_body_faults(OpenRouterCredits, OPENROUTER_CREDITS_FAULTS),
        *_body_faults(OpenRouterKey, OPENROUTER_KEY_FAULTS),
        *_body_faults(StablecogCredits, STABLECOG_FAULTS),
    ]
]


@pytest.mark.parametrize(("cls", "fault_id", "answer", "status", "reason"), ALL_FAULTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("via", ["api_key", "credential"])
def test_fault(
    make: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    cls: HttpSourceType,
    fault_id: str,
    answer: Handler,
    status: int | None,
    reason: str,
    mode: str,
    via: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    kwargs = {"api_key": KEY} if via == "api_key" else {}
    source = make(cls, answer, **kwargs)
    error = fetch_error(source, mode, KEY if via == "credential" else None)

    assert error.status_code == status
    assert reason in error.reason
    assert error.source == cls.name
    assert error.reason.strip()
    if status is None:
        assert "(HTTP" not in str(error)
    else:
        assert f"(HTTP {status})" in str(error)
    if "timeout" in fault_id:
        assert "timeout after 10 s" in error.reason
    # the request went out with the key, the error says nothing of it
    assert source.recorder.keys == [KEY]
    assert error.__cause__ is None
    assert error.__context__ is None
    assert error.__suppress_context__
    formatted = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert_no_key(str(error), repr(error), error.reason, formatted, repr(source), caplog.text)
    assert_no_key(*(repr(record.__dict__) for record in caplog.records))
    failures = [r for r in caplog.records if r.name == "creditguard.sources"]
    assert failures, "a failed fetch is logged"


def test_forbidden_hints_at_management_key(make: Callable[..., Any]) -> None:
    error = fetch_error(make(OpenRouterCredits, reply(403, b"{}"), api_key=KEY), "sync")
    assert "management key" in error.reason


# -- HTTP sources over a real loopback socket ----------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization", ""))
        body = json.dumps(GOOD_BODIES[OpenRouterKey]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def loopback() -> Iterator[str]:
    _Handler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_loopback_sync_and_async(
    loopback: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    contexts: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        contexts.append(object())
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    with OpenRouterKey(base_url=loopback, timeout=5) as source:
        assert source.fetch(KEY).remaining == 12.5
        assert source.fetch(KEY).remaining == 12.5

        async def twice() -> list[Balance]:
            return [await source.afetch(KEY), await source.afetch(KEY)]

        assert [b.remaining for b in asyncio.run(twice())] == [12.5, 12.5]
    assert _Handler.seen == [f"Bearer {KEY}"] * 4
    assert len(contexts) == 1  # one SSL context per source
    assert_no_key(caplog.text)


@pytest.mark.parametrize("mode", MODES)
def test_loopback_connection_refused(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with OpenRouterKey(base_url=f"http://127.0.0.1:{port}/api/v1", api_key=KEY) as source:
        error = fetch_error(source, mode)
    assert "could not connect" in error.reason
    assert error.status_code is None
    assert_no_key(str(error), repr(error), caplog.text)


@pytest.mark.parametrize("mode", MODES)
def test_loopback_timeout(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepts the connection in the backlog, never answers
        url = f"http://127.0.0.1:{server.getsockname()[1]}/api/v1"
        with OpenRouterKey(base_url=url, timeout=0.2) as source:
            started = time.monotonic()
            error = fetch_error(source, mode, KEY)
            assert time.monotonic() - started < 3
    assert error.reason.startswith("timeout after 0.2 s")
    assert_no_key(str(error), repr(error), caplog.text)


# -- CallableSource -------------------------------------------------------------------


def five() -> float:
    return 5.0


def by_key(credential: str | None) -> float:
    return {"a": 1.0, "b": 2.0}.get(credential or "", 0.0)


async def async_five() -> int:
    await asyncio.sleep(0)
    return 5


async def async_by_key(credential: str | None) -> Balance:
    await asyncio.sleep(0)
    return Balance(remaining=by_key(credential), total=10, unit="credits")


@pytest.mark.parametrize("mode", MODES)
def test_callable_sync_without_parameter(mode: str) -> None:
    source = CallableSource(five)
    assert source.per_credential is False
    assert source.name == "callable:five"
    balance = fetch(source, mode, "ignored")
    assert (balance.remaining, balance.source, balance.unit) == (5.0, "callable:five", "USD")
    assert balance.fetched_at > 0


@pytest.mark.parametrize("mode", MODES)
def test_callable_sync_with_parameter(mode: str) -> None:
    source = CallableSource(by_key, name="mine", unit="credits")
    assert source.per_credential is True
    assert fetch(source, mode, "a").remaining == 1.0
    assert fetch(source, mode, "b").remaining == 2.0
    assert fetch(source, mode, "b").source == "mine"
    assert fetch(source, mode, None).unit == "credits"


@pytest.mark.parametrize("mode", MODES)
def test_callable_async(mode: str) -> None:
    plain = CallableSource(async_five)
    assert plain.per_credential is False
    assert fetch(plain, mode).remaining == 5
    keyed = CallableSource(async_by_key)
    assert keyed.per_credential is True
    balance = fetch(keyed, mode, "b")
    assert (balance.remaining, balance.total, balance.unit) == (2.0, 10, "credits")
    assert balance.source == "callable:async_by_key"
    assert balance.fetched_at > 0


async def test_callable_fetch_of_async_fn_inside_a_loop_says_use_afetch() -> None:
    calls: list[object] = []

    async def fn() -> float:
        calls.append(1)
        return 1.0

    source = CallableSource(fn)
    with pytest.raises(CreditSourceError) as info:
        source.fetch(None)
    assert "afetch" in info.value.reason
    assert calls == []
    assert (await source.afetch(None)).remaining == 1.0


async def test_callable_afetch_runs_sync_fn_in_a_thread() -> None:
    threads: list[int] = []

    def fn(credential: str | None) -> float:
        threads.append(threading.get_ident())
        time.sleep(0.01)
        return 3.0

    balance = await CallableSource(fn).afetch("x")
    assert balance.remaining == 3.0
    assert threads and threads[0] != threading.get_ident()


def test_callable_forms() -> None:
    class Async:
        async def __call__(self, credential: str | None) -> float:
            return 7.0

    class Sync:
        def __call__(self) -> float:
            return 8.0

        def method(self, credential: str | None = None) -> float:
            return 9.0

    obj = Async()
    source = CallableSource(obj)
    assert source.per_credential is True
    assert asyncio.run(source.afetch("k")).remaining == 7.0
    assert source.fetch("k").remaining == 7.0  # no loop running here: asyncio.run
    assert CallableSource(Sync()).fetch(None).remaining == 8.0
    assert CallableSource(Sync().method).per_credential is True
    assert CallableSource(Sync().method).name.endswith("Sync.method")
    part = CallableSource(functools.partial(by_key, "b"))
    assert part.per_credential is False
    assert part.fetch("a").remaining == 2.0
    assert CallableSource(functools.partial(async_by_key)).fetch("a").remaining == 1.0
    assert CallableSource(lambda *args: 4.0).per_credential is True
    assert "credential" in repr(CallableSource(by_key))
    assert repr(CallableSource(async_five)).startswith("CallableSource(async async_five()")


def test_callable_sync_fn_returning_a_coroutine() -> None:
    source = CallableSource(lambda: async_five())
    assert source.fetch(None).remaining == 5
    assert asyncio.run(source.afetch(None)).remaining == 5


async def test_callable_sync_fn_returning_a_coroutine_inside_a_loop() -> None:
    source = CallableSource(lambda: async_five())
    with pytest.raises(CreditSourceError, match="afetch"):
        source.fetch(None)  # the coroutine is closed, no "never awaited" warning


@pytest.mark.parametrize("mode", MODES)
def test_callable_balance_keeps_or_fills_source(mode: str) -> None:
    own = Balance(remaining=1, source="elsewhere", fetched_at=123.0)
    assert fetch(CallableSource(lambda: own), mode) == own
    filled = fetch(CallableSource(lambda: Balance(remaining=2), name="n"), mode)
    assert filled.source == "n"
    assert filled.fetched_at > 0


@pytest.mark.parametrize("mode", MODES)
def test_callable_unlimited(mode: str) -> None:
    balance = fetch(CallableSource(lambda: math.inf), mode)
    assert balance.unlimited


@pytest.mark.parametrize(
    "value",
    [
        "5",
        True,
        None,
        math.nan,
        -math.inf,
        [1],
        {"remaining": 1},
        10**400,
        object(),
    ],
    ids=repr,
)
@pytest.mark.parametrize("mode", MODES)
def test_callable_bad_return_values(mode: str, value: object) -> None:
    error = fetch_error(CallableSource(lambda: value, name="bad"), mode)
    assert error.source == "bad"
    assert error.status_code is None
    assert "the function returned" in error.reason


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_callable_raising(mode: str, is_async: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def sync_fn(credential: str | None) -> float:
        raise ValueError(f"bad key {credential}")

    async def async_fn(credential: str | None) -> float:
        raise ValueError(f"bad key {credential}")

    source = CallableSource(async_fn if is_async else sync_fn, name="raiser")
    error = fetch_error(source, mode, KEY)
    assert error.reason == "ValueError: bad key <redacted>"
    assert error.source == "raiser"
    assert error.__context__ is None
    assert_no_key(str(error), repr(error), caplog.text)


@pytest.mark.parametrize("mode", MODES)
def test_callable_raising_a_source_error_passes_through(mode: str) -> None:
    def fn() -> float:
        raise CreditSourceError("upstream down", status_code=503)

    error = fetch_error(CallableSource(fn, name="c"), mode)
    assert (error.reason, error.status_code, error.source) == ("upstream down", 503, "c")


@pytest.mark.parametrize(
    ("fn", "kwargs"),
    [
        (42, {}),
        (lambda a, b: 1.0, {}),
        (lambda *, k: 1.0, {}),
        (five, {"name": ""}),
        (five, {"unit": ""}),
    ],
)
def test_callable_config_errors(fn: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        CallableSource(fn, **kwargs)


# -- FixedBudget --------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("period", "start", "same", "next_period"),
    [
        ("day", utc(2024, 1, 10, 0, 0), utc(2024, 1, 10, 23, 59, 59), utc(2024, 1, 11, 0, 0)),
        # 2024-01-15 is a Monday
        ("week", utc(2024, 1, 15, 0, 0), utc(2024, 1, 21, 23, 59), utc(2024, 1, 22, 0, 0)),
        ("month", utc(2024, 2, 1, 0, 0), utc(2024, 2, 29, 23, 59), utc(2024, 3, 1, 0, 0)),
        ("month", utc(2023, 12, 1, 0, 0), utc(2023, 12, 31, 23, 59), utc(2024, 1, 1, 0, 0)),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_fixed_budget_periods(
    mode: str, period: Any, start: datetime, same: datetime, next_period: datetime
) -> None:
    clock = Clock(start)
    budget = FixedBudget(10, period, clock=clock)
    budget.record(None, 3)
    balance = fetch(budget, mode)
    assert (balance.remaining, balance.total, balance.used) == (7.0, 10.0, 3.0)
    assert (balance.unit, balance.source) == ("USD", "fixed")
    clock.now = same
    budget.record("any", 1.5)
    assert fetch(budget, mode).remaining == 5.5
    clock.now = next_period
    balance = fetch(budget, mode)
    assert (balance.remaining, balance.used) == (10.0, 0.0)
    clock.now = start  # a clock going back never resurrects nor resets spend
    budget.record(None, 1)
    assert fetch(budget, mode).remaining == 9.0


def test_fixed_budget_week_starts_monday() -> None:
    clock = Clock(utc(2024, 1, 14, 23, 0))  # a Sunday
    budget = FixedBudget(10, "week", clock=clock)
    budget.record(None, 4)
    clock.now = utc(2024, 1, 15, 0, 0, 1)  # Monday
    assert budget.fetch(None).remaining == 10
    budget.record(None, 4)
    clock.now = utc(2024, 1, 17, 12, 0)  # Wednesday, same week
    assert budget.fetch(None).remaining == 6


def test_fixed_budget_periods_are_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    clock = Clock(datetime(2024, 1, 11, 1, 0, tzinfo=plus2))  # 2024-01-10 23:00 UTC
    budget = FixedBudget(10, "day", clock=clock)
    budget.record(None, 4)
    clock.now = utc(2024, 1, 10, 23, 30)
    assert budget.fetch(None).remaining == 6
    clock.now = datetime(2024, 1, 11, 2, 0, tzinfo=plus2)  # 00:00 UTC
    assert budget.fetch(None).remaining == 10
    clock.now = datetime(2024, 1, 11, 12, 0)  # naive: read as UTC, same day
    budget.record(None, 1)
    assert budget.fetch(None).remaining == 9


def test_fixed_budget_without_period_never_resets() -> None:
    clock = Clock(utc(2020, 1, 1))
    budget = FixedBudget(10, None, clock=clock)
    budget.record(None, 2)
    clock.now = utc(2030, 6, 1)
    assert budget.fetch(None).remaining == 8
    assert "period=None" in repr(budget)


def test_fixed_budget_default_clock_and_period() -> None:
    budget = FixedBudget(1.5)
    assert budget.period == "month"
    budget.record(None, 0)
    budget.record(None, 0.5)
    assert budget.fetch(None).remaining == 1.0


@pytest.mark.parametrize("mode", MODES)
def test_fixed_budget_overspent_is_negative(mode: str) -> None:
    budget = FixedBudget(1)
    budget.record(None, 1.25)
    balance = fetch(budget, mode)
    assert balance.remaining == -0.25
    assert balance.exhausted


@pytest.mark.parametrize("mode", MODES)
def test_fixed_budget_per_credential(mode: str) -> None:
    clock = Clock(utc(2024, 5, 1))
    budget = FixedBudget(10, "day", per_credential=True, unit="credits", clock=clock)
    assert budget.per_credential is True
    budget.record(KEY, 2)
    budget.record(OTHER_KEY, 5)
    budget.record(None, 1)
    assert fetch(budget, mode, KEY).remaining == 8
    assert fetch(budget, mode, OTHER_KEY).remaining == 5
    assert fetch(budget, mode, None).remaining == 9
    assert fetch(budget, mode, "never-seen").remaining == 10
    assert fetch(budget, mode, KEY).unit == "credits"
    # kept under fingerprints, never the raw key
    assert_no_key(repr(vars(budget)), repr(budget))
    clock.now = utc(2024, 5, 2)
    budget.record(OTHER_KEY, 1)
    assert len(budget._spent) == 1  # only the current period's buckets are kept

    shared = FixedBudget(10)
    shared.record(KEY, 2)
    shared.record(OTHER_KEY, 5)
    assert shared.per_credential is False
    assert fetch(shared, mode, KEY).remaining == 3
    assert fetch(shared, mode, None).remaining == 3


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((-1,), "limit"),
        ((math.nan,), "limit"),
        ((math.inf,), "limit"),
        (("10",), "limit"),
        ((True,), "limit"),
        ((None,), "limit"),
        ((10, "year"), "period"),
        ((10, "Month"), "period"),
        ((10, 30), "period"),
    ],
)
def test_fixed_budget_validation(args: tuple[Any, ...], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        FixedBudget(*args)
    assert info.value.key == key
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("cost", [-0.01, math.nan, math.inf, -math.inf, True, "1", None])
def test_fixed_budget_record_validation(cost: Any) -> None:
    budget = FixedBudget(10)
    with pytest.raises(ValueError):
        budget.record(None, cost)
    assert budget.fetch(None).remaining == 10


def test_fixed_budget_is_thread_safe() -> None:
    budget = FixedBudget(100_000, per_credential=True)
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(500):
            budget.record("k", 1)
            budget.fetch("k")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.fetch("k").used == 4000


# -- Tightest -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tightest_picks_the_least_remaining(mode: str) -> None:
    budget = FixedBudget(10)
    budget.record(None, 3)
    five_left = CallableSource(lambda: 5.0, name="five")
    unlimited = CallableSource(lambda: math.inf, name="open")
    tight = Tightest(unlimited, budget, five_left)
    assert tight.name == "tightest"
    assert tight.per_credential is False
    balance = fetch(tight, mode)
    assert (balance.remaining, balance.source) == (5.0, "five")
    budget.record(None, 4)
    balance = fetch(tight, mode)
    assert balance == Balance(
        remaining=3.0,
        total=10.0,
        used=7.0,
        unit="USD",
        fetched_at=balance.fetched_at,
        source="fixed",
        resets_at=budget.resets_at(),  # (the 1st of next month, UTC)
    )


@pytest.mark.parametrize("mode", MODES)
def test_tightest_ties_go_to_the_first(mode: str) -> None:
    tight = Tightest(CallableSource(lambda: 2, name="a"), CallableSource(lambda: 2.0, name="b"))
    assert fetch(tight, mode).source == "a"


@pytest.mark.parametrize("mode", MODES)
def test_tightest_with_http_sources(make: Callable[..., Any], mode: str) -> None:
    key = make(OpenRouterKey, reply(body={"data": {"limit": None, "usage": 1}}))
    credits = make(OpenRouterCredits, reply(body=GOOD_BODIES[OpenRouterCredits]), api_key=OTHER_KEY)
    tight = Tightest(key, credits)
    assert tight.per_credential is True
    balance = fetch(tight, mode, KEY)
    assert (balance.remaining, balance.source) == (17.5, "openrouter-credits")
    assert key.recorder.keys == [KEY]
    assert credits.recorder.keys == [OTHER_KEY]
    assert "OpenRouterKey(" in repr(tight)
    assert_no_key(repr(tight))


@pytest.mark.parametrize("mode", MODES)
def test_tightest_propagates_a_failure(make: Callable[..., Any], mode: str) -> None:
    ok = CallableSource(lambda: 1.0, name="ok")
    down = make(OpenRouterKey, reply(503, b"down"))
    error = fetch_error(Tightest(ok, down), mode, KEY)
    assert (error.source, error.status_code) == ("openrouter-key", 503)
    assert_no_key(str(error), repr(error))


@pytest.mark.parametrize("mode", MODES)
def test_tightest_wraps_foreign_errors(mode: str) -> None:
    class Broken:
        name = "broken"
        per_credential = True

        def fetch(self, credential: str | None) -> Balance:
            raise KeyError(credential)

        async def afetch(self, credential: str | None) -> Balance:
            raise KeyError(credential)

    error = fetch_error(Tightest(FixedBudget(1), Broken()), mode, KEY)
    assert error.source == "broken"
    assert error.reason.startswith("KeyError")
    assert_no_key(str(error))


async def test_tightest_afetch_is_concurrent() -> None:
    running = 0
    peak = 0

    async def slow() -> float:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 1.0

    tight = Tightest(*(CallableSource(slow, name=f"s{i}") for i in range(3)))
    assert (await tight.afetch(None)).source == "s0"
    assert peak == 3


def test_tightest_record_and_close_forward() -> None:
    calls: list[str] = []

    class Closing:
        name = "closing"
        per_credential = False

        def fetch(self, credential: str | None) -> Balance:
            return Balance(remaining=50)

        async def afetch(self, credential: str | None) -> Balance:
            return Balance(remaining=50)

        def close(self) -> None:
            calls.append("close")

    a, b = FixedBudget(10, per_credential=True), FixedBudget(5)
    tight = Tightest(a, CallableSource(lambda: 100.0), b, Closing())
    assert tight.per_credential is True
    tight.record(KEY, 2)
    assert a.fetch(KEY).remaining == 8
    assert b.fetch(None).remaining == 3
    assert tight.fetch(KEY).remaining == 3
    assert Tightest(Closing()).fetch(None).source == "closing"  # an unnamed balance is named
    tight.close()
    asyncio.run(tight.aclose())
    assert calls == ["close", "close"]


def test_tightest_config_errors() -> None:
    with pytest.raises(ConfigError):
        Tightest()
    with pytest.raises(ConfigError):
        Tightest(FixedBudget(1), object())  # type: ignore[arg-type]


def test_a_key_given_as_api_key_env_is_refused_without_echo() -> None:
    from creditguard import ConfigError
    from creditguard.sources import OpenRouterKey

    key = "sk-or-v1-0123456789abcdef0123456789abcdef"
    with pytest.raises(ConfigError) as info:
        OpenRouterKey(api_key_env=key)
    assert key not in str(info.value) and key not in repr(info.value)
    assert "api_key_env" in str(info.value)


def test_a_password_in_base_url_reaches_no_repr_error_or_cli_line() -> None:
    # a gateway's base_url may carry basic-auth credentials: shown masked everywhere
    source = sources_pkg.OpenRouterCredits(base_url="https://team:hunter2-secret@gw.example/api/v1")
    assert "hunter2" not in repr(source)
    assert "team:<redacted>@gw.example" in repr(source)
    with pytest.raises(ConfigError) as info:
        sources_pkg.OpenRouterCredits(base_url="htps://team:hunter2-secret@gw.example/api/v1")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value.value)


@pytest.mark.parametrize("cls", [sources_pkg.DeepSeekBalance, sources_pkg.OpenRouterKey])
def test_a_hex_key_given_as_api_key_env_is_not_echoed(cls: Any) -> None:
    # a 64-hex key starting with a letter is a valid variable name: "... is not set"
    # once quoted it whole in the text of what is allowed
    key = "a3f9c2e81b7d4f60" * 4
    with pytest.raises(ConfigError) as info:
        cls(api_key_env=key)
    assert key not in str(info.value) and key not in repr(info.value.args)
    assert "is not set" in str(info.value)
    with pytest.raises(ConfigError) as spend:
        sources_pkg.OpenAISpend(5.0, api_key_env=key)
    assert key not in str(spend.value)


@pytest.mark.parametrize(
    "cls",
    [
        sources_pkg.OpenRouterCredits,
        sources_pkg.OpenRouterKey,
        sources_pkg.StablecogCredits,
        sources_pkg.DeepSeekBalance,
        sources_pkg.MoonshotBalance,
        sources_pkg.VercelGatewayCredits,
    ],
)
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_api_key_is_a_config_error_not_the_calls_key(cls: Any, blank: str) -> None:
    # OpenRouterCredits(api_key=os.environ.get("MGMT", "")) with MGMT unset used to ask
    # /credits with each call's own key (403 there), and the guard failed open
    with pytest.raises(ConfigError) as info:
        cls(api_key=blank)
    assert info.value.key == "api_key"
    assert "non-empty key, or None" in info.value.allowed
    assert repr(blank) not in str(info.value)
    cls(api_key=None).close()  # None still means "each call's key"
