"""The balance sources of DeepSeek, Moonshot, Novita, fal, Stability and Vercel AI Gateway,
OpenRouterKey's resets, and units: parse tests against the fake provider (sync, async),
every fault kind, per-call keys, config names."""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from test_sources import GENERIC_FAULTS, Recorder, assert_no_key, reply

import creditguard as cg
from creditguard import Balance, BudgetGuard, ConfigError, CreditSourceError, Policy
from creditguard.config import load_config
from creditguard.sources import (
    ByHost,
    DeepSeekBalance,
    FalBalance,
    MoonshotBalance,
    NovitaBalance,
    OpenRouterKey,
    StabilityBalance,
    Tightest,
    VercelGatewayCredits,
)
from creditguard.sources._deepseek import parse_deepseek
from creditguard.sources._openrouter import next_reset
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-SECRETSECRET1234"
OTHER = "sk-other-OTHEROTHER5678"
MODES = ["sync", "async"]

SOURCES: list[Any] = [
    DeepSeekBalance,
    MoonshotBalance,
    NovitaBalance,
    FalBalance,
    StabilityBalance,
    VercelGatewayCredits,
]
CONFIG_NAMES = {
    "deepseek": DeepSeekBalance,
    "moonshot": MoonshotBalance,
    "novita": NovitaBalance,
    "fal": FalBalance,
    "stability": StabilityBalance,
    "vercel": VercelGatewayCredits,
}
# what each provider documents (its own example answers)
DOC_EXAMPLES: dict[Any, tuple[object, float, str]] = {
    DeepSeekBalance: (
        {
            "is_available": True,
            "balance_infos": [
                {
                    "currency": "CNY",
                    "total_balance": "110.00",
                    "granted_balance": "10.00",
                    "topped_up_balance": "100.00",
                }
            ],
        },
        110.0,
        "CNY",
    ),
    MoonshotBalance: (
        {
            "code": 0,
            "data": {
                "available_balance": 49.58894,
                "voucher_balance": 46.58893,
                "cash_balance": 3.00001,
            },
            "scode": "0x0",
            "status": True,
        },
        49.58894,
        "USD",
    ),
    NovitaBalance: (
        {
            "availableBalance": "1000000",
            "cashBalance": "800000",
            "creditLimit": "200000",
            "pendingCharges": "0",
            "outstandingInvoices": "0",
        },
        100.0,
        "USD",
    ),
    FalBalance: (
        {"username": "my-team", "credits": {"current_balance": 24.5, "currency": "USD"}},
        24.5,
        "USD",
    ),
    StabilityBalance: ({"credits": 0.6336833840314097}, 0.6336833840314097, "credits"),
    VercelGatewayCredits: ({"balance": "95.50", "total_used": "4.50"}, 95.5, "USD"),
}
DEFAULT_URLS = {
    DeepSeekBalance: "https://api.deepseek.com/user/balance",
    MoonshotBalance: "https://api.moonshot.ai/v1/users/me/balance",
    NovitaBalance: "https://api.novita.ai/openapi/v1/billing/balance/detail",
    FalBalance: "https://api.fal.ai/v1/account/billing?expand=credits",
    StabilityBalance: "https://api.stability.ai/v1/user/balance",
    VercelGatewayCredits: "https://ai-gateway.vercel.sh/v1/credits",
}
ENDPOINT = {
    DeepSeekBalance: "deepseek_balance",
    MoonshotBalance: "moonshot_balance",
    NovitaBalance: "novita_balance",
    FalBalance: "fal_billing",
    StabilityBalance: "stability_balance",
    VercelGatewayCredits: "vercel_credits",
}


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


def base_url(fake: FakeProvider, cls: Any) -> str:
    return str(
        {
            DeepSeekBalance: fake.deepseek_base_url,
            MoonshotBalance: fake.moonshot_base_url,
            NovitaBalance: fake.novita_base_url,
            FalBalance: fake.fal_base_url,
            StabilityBalance: fake.stability_base_url,
            VercelGatewayCredits: fake.vercel_base_url,
        }[cls]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def fake(server: FakeProvider) -> Iterator[FakeProvider]:
    server.add_key(KEY, credits=10.0, usage=2.5)
    server.add_key(OTHER, credits=3.0, usage=0.0)
    yield server
    server.clear_faults()
    server.reset_counts()
    server.currency = "USD"


@pytest.fixture
def make() -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def build(cls: Any, answer: Any, **kwargs: Any) -> Any:
        recorder = answer if isinstance(answer, Recorder) else Recorder(answer)
        source = cls(transport=httpx.MockTransport(recorder), **kwargs)
        source.recorder = recorder
        made.append(source)
        return source

    yield build
    for source in made:
        source.close()


# -- against the fake provider (a real loopback server) ----------------------------------


EXPECTED_TOTALS = {VercelGatewayCredits: (10.0, 2.5)}


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_reads_the_fake_providers_balance(fake: FakeProvider, cls: Any, mode: str) -> None:
    with cls(base_url=base_url(fake, cls), timeout=5) as source:
        balance = fetch(source, mode, KEY)
        assert balance.remaining == 7.5
        assert balance.source == cls.name
        assert balance.unit == ("credits" if cls is StabilityBalance else "USD")
        assert (balance.total, balance.used) == EXPECTED_TOTALS.get(cls, (None, None))
        assert balance.fetched_at > 0
        assert fake.count(ENDPOINT[cls]) == 1
        (request,) = fake.requests
        scheme = "Key" if cls is FalBalance else "Bearer"
        assert request.headers["authorization"] == f"{scheme} {KEY}"
        assert request.method == "GET"

        # a generation call through the same provider's base URL draws it down
        with httpx.Client() as http:
            answer = http.post(
                base_url(fake, cls) + "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"{scheme} {KEY}"},
            )
        assert answer.status_code == 200
        assert fetch(source, mode, KEY).remaining == pytest.approx(7.49)


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_per_call_keys_are_isolated(fake: FakeProvider, cls: Any, mode: str) -> None:
    with cls(base_url=base_url(fake, cls)) as source:
        assert source.per_credential is True
        assert fetch(source, mode, KEY).remaining == 7.5
        assert fetch(source, mode, OTHER).remaining == 3.0
        sent = [r.headers["authorization"].split(" ", 1)[1] for r in fake.requests]
        assert sent == [KEY, OTHER]
        error = fetch_error(source, mode, "sk-unknown-000000")
        assert (error.status_code, error.source, error.misconfigured) == (401, cls.name, False)


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_per_call_keys_through_a_guard(fake: FakeProvider, cls: Any, mode: str) -> None:
    source = cls(base_url=base_url(fake, cls))
    guard = cg.BudgetGuard(source, cg.Policy(refuse_below=5.0))

    def check(credential: str) -> cg.Decision:
        if mode == "sync":
            return guard.check("m", credential=credential)
        return asyncio.run(guard.acheck("m", credential=credential))

    assert check(KEY).action == "allow"  # 7.5 left
    assert check(OTHER).action == "refuse"  # 3 left
    assert check(KEY).action == "allow"  # cached per key
    assert fake.count(ENDPOINT[cls]) == 2
    guard.close()


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_own_key_wins_over_the_calls(
    fake: FakeProvider, cls: Any, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_PROVIDER_KEY", OTHER)
    with cls(base_url=base_url(fake, cls), api_key_env="CG_PROVIDER_KEY") as source:
        assert source.per_credential is False
        assert fetch(source, mode, KEY).remaining == 3.0
    assert KEY not in repr(source) and OTHER not in repr(source)


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_faults_of_the_fake_provider(fake: FakeProvider, cls: Any, mode: str) -> None:
    endpoint = ENDPOINT[cls]
    # timeout 1 s, not 0.5: the 500, HTML and dropped answers must come within it on a
    # loaded machine too; the delay fault (2.5 s) outlasts it
    with cls(base_url=base_url(fake, cls), timeout=1.0) as source:
        fake.fault(endpoint, status=500, times=1)
        assert fetch_error(source, mode, KEY).status_code == 500
        fake.fault(endpoint, body=b"<html>gateway</html>", times=1)
        assert "not JSON" in fetch_error(source, mode, KEY).reason
        fake.fault(endpoint, delay=2.5, times=1)
        assert "timeout after 1 s" in fetch_error(source, mode, KEY).reason
        fake.fault(endpoint, drop=True, times=1)
        assert "connection failed" in fetch_error(source, mode, KEY).reason
        assert fetch(source, mode, KEY).remaining == 7.5
    assert fake.count(endpoint) == 5


# -- the providers' own examples ---------------------------------------------------------


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_documented_examples(make: Callable[..., Any], cls: Any, mode: str) -> None:
    body, remaining, unit = DOC_EXAMPLES[cls]
    source = make(cls, reply(body=body), api_key=KEY, timeout=3)
    balance = fetch(source, mode)
    assert (balance.remaining, balance.unit, balance.source) == (remaining, unit, cls.name)
    (request,) = source.recorder.requests
    assert str(request.url) == DEFAULT_URLS[cls]
    assert request.extensions["timeout"]["read"] == 3.0


@pytest.mark.parametrize(
    ("cls", "given", "url"),
    [
        (DeepSeekBalance, "https://api.deepseek.com/v1", "https://api.deepseek.com/user/balance"),
        (DeepSeekBalance, "https://api.deepseek.com/", "https://api.deepseek.com/user/balance"),
        (
            MoonshotBalance,
            "https://api.moonshot.cn/v1",
            "https://api.moonshot.cn/v1/users/me/balance",
        ),
        (
            NovitaBalance,
            "https://api.novita.ai/v3/openai",
            "https://api.novita.ai/openapi/v1/billing/balance/detail",
        ),
        (
            NovitaBalance,
            "https://api.novita.ai/openai/",
            "https://api.novita.ai/openapi/v1/billing/balance/detail",
        ),
        (StabilityBalance, "https://api.stability.ai/v2beta", DEFAULT_URLS[StabilityBalance]),
        (StabilityBalance, "https://api.stability.ai/v1", DEFAULT_URLS[StabilityBalance]),
        (
            FalBalance,
            "http://127.0.0.1:9/v1",
            "http://127.0.0.1:9/v1/account/billing?expand=credits",
        ),
        (VercelGatewayCredits, "https://gw.example/v1/", "https://gw.example/v1/credits"),
    ],
)
def test_base_url_as_the_sdk_takes_it(
    make: Callable[..., Any], cls: Any, given: str, url: str
) -> None:
    body = DOC_EXAMPLES[cls][0]
    source = make(cls, reply(body=body), api_key=KEY, base_url=given)
    fetch(source, "sync")
    assert str(source.recorder.requests[0].url) == url
    assert source.base_url == given


# -- every fault kind --------------------------------------------------------------------


BODY_FAULTS: dict[Any, list[tuple[object, str]]] = {
    DeepSeekBalance: [
        ({}, "balance_infos is missing"),
        ({"balance_infos": None}, "balance_infos is null"),
        ({"balance_infos": {}}, "balance_infos is not an array"),
        ({"balance_infos": []}, "balance_infos is empty"),
        ({"balance_infos": ["x"]}, "balance_infos[0] is not an object"),
        ({"balance_infos": [{"total_balance": "1.00"}]}, "balance_infos[0].currency is missing"),
        ({"balance_infos": [{"currency": 1, "total_balance": "1"}]}, "currency is a number"),
        ({"balance_infos": [{"currency": " ", "total_balance": "1"}]}, "currency is empty"),
        ({"balance_infos": [{"currency": "USD"}]}, "balance_infos[0].total_balance is missing"),
        (
            {"balance_infos": [{"currency": "USD", "total_balance": 110.0}]},
            "total_balance is a number, expected a decimal string",
        ),
        (
            {"balance_infos": [{"currency": "USD", "total_balance": "NaN"}]},
            "total_balance is not a decimal string",
        ),
        (
            {"balance_infos": [{"currency": "USD", "total_balance": "Infinity"}]},
            "not a decimal string",
        ),
        (
            {"balance_infos": [{"currency": "USD", "total_balance": "1e400"}]},
            "not a decimal string",
        ),
        (
            {"balance_infos": [{"currency": "USD", "total_balance": "9" * 400}]},
            "not a decimal string",
        ),
        (
            {"balance_infos": [{"currency": "USD", "total_balance": "1", "granted_balance": True}]},
            "granted_balance is a boolean",
        ),
        (
            {"is_available": "yes", "balance_infos": [{"currency": "USD", "total_balance": "1"}]},
            "is_available is not a boolean",
        ),
    ],
    MoonshotBalance: [
        ({}, "data is missing"),
        ({"code": 0, "data": None}, "data is null"),
        ({"code": 0, "data": {}}, "data.available_balance is missing"),
        ({"data": {"available_balance": "49.5"}}, "data.available_balance is a string"),
        ({"data": {"available_balance": True}}, "data.available_balance is a boolean"),
        (b'{"data": {"available_balance": 1e999}}', "not a finite number"),
        (
            {"data": {"available_balance": 1, "voucher_balance": -1}},
            "data.voucher_balance is negative",
        ),
        ({"data": {"available_balance": 1, "cash_balance": "3"}}, "data.cash_balance is a string"),
        ({"code": 40001, "data": {"available_balance": 1}}, "code is 40001, not 0"),
        ({"code": "0", "data": {"available_balance": 1}}, "code is not an integer"),
        ({"status": False, "data": {"available_balance": 1}}, "status is false"),
        ({"status": "ok", "data": {"available_balance": 1}}, "status is not a boolean"),
    ],
    NovitaBalance: [
        ({}, "availableBalance is missing"),
        ({"availableBalance": None}, "availableBalance is null"),
        ({"availableBalance": 1000000}, "availableBalance is a number, expected a decimal string"),
        ({"availableBalance": "abc"}, "availableBalance is not a decimal string"),
        ({"availableBalance": ""}, "availableBalance is not a decimal string"),
        ({"availableBalance": "NaN"}, "availableBalance is not a decimal string"),
        ({"availableBalance": "1e6"}, "availableBalance is not a decimal string"),
        ({"availableBalance": "1", "creditLimit": "-5"}, "creditLimit is negative"),
        ({"availableBalance": "1", "pendingCharges": []}, "pendingCharges is an array"),
        ({"availableBalance": "1", "cashBalance": False}, "cashBalance is a boolean"),
    ],
    FalBalance: [
        ({"username": "t"}, "credits is missing"),
        ({"credits": None}, "credits is null"),
        ({"credits": "24.5"}, "credits is a string, expected an object"),
        ({"credits": {}}, "credits.current_balance is missing"),
        ({"credits": {"current_balance": "24.5"}}, "credits.current_balance is a string"),
        (b'{"credits": {"current_balance": -1e999}}', "not a finite number"),
        ({"credits": {"current_balance": 1, "currency": 840}}, "credits.currency is a number"),
        ({"credits": {"current_balance": 1, "currency": ""}}, "credits.currency is empty"),
    ],
    StabilityBalance: [
        ({}, "credits is missing"),
        ({"credits": None}, "credits is null"),
        ({"credits": "0.63"}, "credits is a string"),
        ({"credits": [1]}, "credits is an array"),
        (b'{"credits": 1e999}', "credits is not a finite number"),
    ],
    VercelGatewayCredits: [
        ({}, "balance is missing"),
        ({"balance": "95.50"}, "total_used is missing"),
        ({"balance": 95.5, "total_used": "4.50"}, "balance is a number, expected a decimal"),
        ({"balance": "95.50", "total_used": None}, "total_used is null"),
        ({"balance": "95.50", "total_used": "-1.00"}, "total_used is negative"),
        ({"balance": "ninety", "total_used": "1"}, "balance is not a decimal string"),
        ({"balance": "-Infinity", "total_used": "1"}, "balance is not a decimal string"),
    ],
}

FAULTS = [
    pytest.param(cls, answer, status, reason, id=f"{cls.name}-{fault_id}")
    for cls in SOURCES
    for fault_id, answer, status, reason in [
        *GENERIC_FAULTS,
        *(
            (f"body-{i}", reply(200, body), 200, reason)
            for i, (body, reason) in enumerate(BODY_FAULTS[cls])
        ),
    ]
]


@pytest.mark.parametrize(("cls", "answer", "status", "reason"), FAULTS)
@pytest.mark.parametrize("mode", MODES)
def test_every_fault_is_a_source_error(
    make: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    cls: Any,
    answer: Any,
    status: int | None,
    reason: str,
    mode: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    source = make(cls, answer)
    error = fetch_error(source, mode, KEY)
    assert error.status_code == status
    assert reason in error.reason
    assert error.source == cls.name
    assert error.__cause__ is None and error.__context__ is None
    formatted = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert_no_key(str(error), repr(error), formatted, caplog.text)


@pytest.mark.parametrize("cls", SOURCES, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", MODES)
def test_a_refused_own_key_is_a_misconfiguration(
    make: Callable[..., Any], cls: Any, mode: str
) -> None:
    for status in (401, 403):
        source = make(cls, reply(status, {"error": {"message": "nope"}}), api_key=KEY)
        error = fetch_error(source, mode)
        assert (error.status_code, error.misconfigured) == (status, True)


def test_fal_forbidden_says_an_admin_key_is_needed(make: Callable[..., Any]) -> None:
    source = make(FalBalance, reply(403, {"detail": "Forbidden"}), api_key=KEY)
    error = fetch_error(source, "sync")
    assert "admin key" in error.reason
    assert "Forbidden" in error.reason


# -- provider specifics ------------------------------------------------------------------


def _infos(*entries: tuple[str, str], available: bool = True) -> dict[str, object]:
    infos = [{"currency": c, "total_balance": t} for c, t in entries]
    return {"is_available": available, "balance_infos": infos}


@pytest.mark.parametrize(
    ("body", "unit", "expected"),
    [
        (_infos(("CNY", "110.00"), ("USD", "5.25")), None, (5.25, "USD")),
        (_infos(("CNY", "110.00"), ("USD", "5.25")), "CNY", (110.0, "CNY")),
        (_infos(("CNY", "110.00"), ("EUR", "3")), None, (110.0, "CNY")),
        (_infos(("USD", "-0.50")), None, (-0.5, "USD")),
        (_infos(("USD", "4.00"), available=False), None, (0.0, "USD")),
        (_infos(("USD", "-1.00"), available=False), None, (-1.0, "USD")),
        ({"balance_infos": [{"currency": "USD", "total_balance": "+2."}]}, None, (2.0, "USD")),
        ({"balance_infos": [{"currency": "USD", "total_balance": ".5"}]}, None, (0.5, "USD")),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_deepseek_entries(
    make: Callable[..., Any],
    mode: str,
    body: object,
    unit: str | None,
    expected: tuple[float, str],
) -> None:
    balance = fetch(make(DeepSeekBalance, reply(body=body), api_key=KEY, unit=unit), mode)
    assert (balance.remaining, balance.unit) == expected
    assert math.copysign(1.0, balance.remaining) == math.copysign(1.0, expected[0])


def test_deepseek_without_the_asked_currency(make: Callable[..., Any]) -> None:
    body = _infos(("CNY", "110.00"))
    error = fetch_error(make(DeepSeekBalance, reply(body=body), api_key=KEY, unit="USD"), "sync")
    assert error.reason == "no USD balance (balance_infos has CNY)"
    with pytest.raises(ConfigError):
        DeepSeekBalance(unit="")


@pytest.mark.parametrize(
    ("kwargs", "unit"),
    [
        ({}, "USD"),
        ({"base_url": "https://api.moonshot.cn/v1"}, "CNY"),
        ({"base_url": "https://API.Moonshot.CN/v1"}, "CNY"),
        ({"base_url": "https://proxy.example/moonshot.cn/v1"}, "USD"),
        ({"base_url": "https://proxy.example/v1", "unit": "CNY"}, "CNY"),
    ],
)
def test_moonshot_unit_follows_the_host(
    make: Callable[..., Any], kwargs: dict[str, str], unit: str
) -> None:
    body = DOC_EXAMPLES[MoonshotBalance][0]
    source = make(MoonshotBalance, reply(body=body), api_key=KEY, **kwargs)
    assert source.unit == unit
    assert fetch(source, "sync").unit == unit


def test_moonshot_negative_available_is_exhausted(make: Callable[..., Any]) -> None:
    body = {"data": {"available_balance": -2.5, "voucher_balance": 0, "cash_balance": -2.5}}
    balance = fetch(make(MoonshotBalance, reply(body=body), api_key=KEY), "sync")
    assert balance.remaining == -2.5 and balance.exhausted


def test_novita_amounts_are_ten_thousandths_of_a_dollar(make: Callable[..., Any]) -> None:
    for raw, usd in [("10000", 1.0), ("1", 0.0001), ("-25000", -2.5), ("0", 0.0)]:
        source = make(NovitaBalance, reply(body={"availableBalance": raw}), api_key=KEY)
        assert fetch(source, "sync").remaining == pytest.approx(usd)


def test_fal_sends_its_key_scheme_and_asks_for_credits(make: Callable[..., Any]) -> None:
    body = {"username": "t", "credits": {"current_balance": 3}}
    source = make(FalBalance, reply(body=body), api_key=KEY)
    balance = fetch(source, "sync")
    assert (balance.remaining, balance.unit) == (3.0, "USD")  # no currency: USD
    (request,) = source.recorder.requests
    assert request.headers["authorization"] == f"Key {KEY}"
    assert request.url.params["expand"] == "credits"


def test_vercel_total_is_balance_plus_use(make: Callable[..., Any]) -> None:
    source = make(VercelGatewayCredits, reply(body={"balance": "-1.50", "total_used": "11.50"}))
    balance = fetch(source, "sync", KEY)
    assert (balance.remaining, balance.total, balance.used) == (-1.5, None, 11.5)
    assert balance.exhausted


# -- config names ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), CONFIG_NAMES.items())
def test_config_names_load(name: str, cls: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source = load_config({"source": name}, env=False).build_source()
    assert type(source) is cls
    assert source.per_credential is True
    assert source.name == name

    monkeypatch.setenv("CG_PROVIDER_KEY", KEY)
    cfg = {
        "source": name,
        "api_key_env": "CG_PROVIDER_KEY",
        "timeout": 2,
        "base_url": "http://x/v1",
    }
    guard = cg.BudgetGuard.from_config(cfg, env=False)
    assert type(guard.source) is cls
    assert guard.source.per_credential is False
    assert guard.source.timeout == 2.0  # type: ignore[attr-defined]
    assert KEY not in repr(guard)
    guard.close()


def test_config_unit_picks_deepseeks_entry_and_asserts_the_policys() -> None:
    cfg = load_config({"source": "deepseek", "unit": "CNY"}, env=False)
    assert cfg.policy.unit == "CNY"
    source = cfg.build_source()
    assert isinstance(source, DeepSeekBalance) and source.unit == "CNY"
    with pytest.raises(ConfigError) as info:
        load_config({"unit": ""}, env=False)
    assert "unit" in str(info.value)


def test_a_guards_policy_unit_picks_deepseeks_entry_from_python_too(
    make: Callable[..., Any],
) -> None:
    # (the config path passed it; BudgetGuard(DeepSeekBalance(), Policy(unit="CNY"))
    # read the USD entry, found the unit wrong and failed open on every call)
    body = _infos(("CNY", "110.00"), ("USD", "5.25"))
    source = make(DeepSeekBalance, reply(body=body), api_key=KEY)
    guard = BudgetGuard(source, Policy(unit="CNY", refuse_below=200.0))
    d = guard.check("deepseek-chat")
    assert d.balance is not None and (d.balance.remaining, d.balance.unit) == (110.0, "CNY")
    assert d.action == "refuse"  # judged on the CNY entry: not failed open
    chosen = make(DeepSeekBalance, reply(body=body), api_key=KEY, unit="USD")
    BudgetGuard(chosen, Policy(unit="CNY"))
    assert chosen.unit == "USD"  # a unit the source was given stays
    routed = make(DeepSeekBalance, reply(body=body), api_key=KEY)
    tight = make(DeepSeekBalance, reply(body=body), api_key=KEY)
    BudgetGuard(
        ByHost(
            {"api.deepseek.com": routed, "*": Tightest(tight)},
            policies={"api.deepseek.com": Policy(unit="CNY")},
        ),
        Policy(unit="USD"),
    )
    assert (routed.unit, tight.unit) == ("CNY", "USD")  # the route's own policy, else the guard's
    guard.close()


# -- units -------------------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["allow", "refuse"])
@pytest.mark.parametrize("mode", MODES)
def test_a_balance_in_another_unit_is_unusable(
    make: Callable[..., Any], mode: str, on_error: Any
) -> None:
    body = DOC_EXAMPLES[MoonshotBalance][0]
    source = make(MoonshotBalance, reply(body=body), base_url="https://api.moonshot.cn/v1")
    policy = cg.Policy(refuse_below=1.0, unit="USD", on_source_error=on_error)
    guard = cg.BudgetGuard(source, policy)
    if mode == "sync":
        decision = guard.check("m", credential=KEY)
    else:
        decision = asyncio.run(guard.acheck("m", credential=KEY))
    assert decision.action == on_error
    assert "CNY" in decision.reason and "USD" in decision.reason
    assert f"on_source_error={on_error}" in decision.reason
    assert decision.balance is not None and decision.balance.unit == "CNY"
    guard.close()


@pytest.mark.parametrize("mode", MODES)
def test_tightest_never_compares_units(make: Callable[..., Any], mode: str) -> None:
    from creditguard.sources import CallableSource, FixedBudget, Tightest

    cny = make(DeepSeekBalance, reply(body=_infos(("CNY", "110.00"))), api_key=KEY)
    error = fetch_error(Tightest(cny, FixedBudget(5.0)), mode)
    assert error.reason == (
        "the balances are in different units (CNY from deepseek, USD from fixed) "
        "and cannot be compared"
    )
    same = Tightest(cny, FixedBudget(500.0, unit="CNY"), CallableSource(lambda: math.inf))
    balance = fetch(same, mode)
    assert (balance.remaining, balance.unit, balance.source) == (110.0, "CNY", "deepseek")


def test_unit_checks_in_decide() -> None:
    cny = Balance(remaining=500.0, total=1000.0, unit="CNY", source="moonshot")
    assert cg.decide(cny, cg.Policy(refuse_below=1.0), "m").action == "allow"  # no unit asserted
    assert cg.decide(cny, cg.Policy(refuse_below=1.0, unit="CNY"), "m").action == "allow"
    refused = cg.decide(cny, cg.Policy(unit="USD", on_source_error="refuse"), "m")
    assert refused.action == "refuse"
    assert "in CNY" in refused.reason and "in USD" in refused.reason
    # percent thresholds work in any unit
    credits = Balance(remaining=5.0, total=100.0, unit="credits")
    assert cg.decide(credits, cg.Policy(refuse_below="10%"), "m").action == "refuse"
    assert cg.decide(credits, cg.Policy(refuse_below="4%", unit="credits"), "m").action == "allow"
    with pytest.raises(ConfigError):
        cg.Policy(unit="")
    with pytest.raises(ConfigError):
        cg.Policy(unit=5)  # type: ignore[arg-type]


# -- OpenRouterKey: limit_reset, usage per period, resets_at -----------------------------


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [
        ("daily", _utc(2026, 12, 5, 8, 30), _utc(2026, 12, 6)),
        ("daily", _utc(2026, 12, 31, 23, 59), _utc(2027, 1, 1)),
        ("weekly", _utc(2026, 12, 5, 8, 30), _utc(2026, 12, 7)),  # a Saturday -> Monday
        ("weekly", _utc(2026, 12, 7, 0, 0), _utc(2026, 12, 14)),  # a Monday -> next one
        ("monthly", _utc(2026, 12, 5), _utc(2027, 1, 1)),
        ("monthly", _utc(2026, 1, 31, 12), _utc(2026, 2, 1)),
        ("monthly", _utc(2024, 2, 29, 23, 59), _utc(2024, 3, 1)),
    ],
)
def test_next_reset(period: str, now: float, expected: float) -> None:
    assert next_reset(period, now) == expected


@pytest.mark.parametrize(
    ("data", "used", "resets"),
    [
        (
            {
                "limit": 10,
                "limit_remaining": 4,
                "limit_reset": "daily",
                "usage": 50,
                "usage_daily": 6,
            },
            6.0,
            "daily",
        ),
        (
            {"limit": 10, "limit_remaining": 4, "limit_reset": "weekly", "usage_weekly": 6},
            6.0,
            "weekly",
        ),
        (
            {"limit": 10, "limit_remaining": 4, "limit_reset": "monthly", "usage": 9},
            9.0,
            "monthly",
        ),
        ({"limit": 10, "limit_remaining": 4, "limit_reset": None, "usage": 6}, 6.0, None),
        ({"limit": 10, "limit_remaining": 4, "limit_reset": "hourly", "usage": 6}, 6.0, None),
        ({"limit": None, "limit_reset": "daily", "usage": 6, "usage_daily": 1}, 6.0, None),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_openrouter_key_reads_its_reset(
    make: Callable[..., Any], mode: str, data: dict[str, object], used: float, resets: str | None
) -> None:
    balance = fetch(make(OpenRouterKey, reply(body={"data": data})), mode, KEY)
    assert balance.used == used
    if resets is None:
        assert balance.resets_at is None
    else:
        assert balance.resets_at == next_reset(resets, balance.fetched_at)
        assert balance.resets_at > balance.fetched_at


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-31T00:00:00Z", _utc(2026, 12, 31)),
        ("2026-12-31T01:00:00+01:00", _utc(2026, 12, 31)),
        ("2026-12-31T00:00:00", _utc(2026, 12, 31)),
        (1798675200, 1798675200.0),
        ("soon", None),
        (None, None),
        (True, None),
        (-5, None),
        ([1], None),
    ],
)
def test_openrouter_budget_resets_at(
    make: Callable[..., Any], value: object, expected: float | None
) -> None:
    data = {"limit": None, "effective_budget": {"remaining_usd": 2, "resets_at": value}}
    balance = fetch(make(OpenRouterKey, reply(body={"data": data})), "sync", KEY)
    assert (balance.remaining, balance.resets_at) == (2.0, expected)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"limit_reset": 1}, "data.limit_reset is a number, expected a string"),
        ({"usage_daily": "1"}, "data.usage_daily is a string"),
        ({"usage_weekly": -1}, "data.usage_weekly is negative"),
        ({"usage_monthly": True}, "data.usage_monthly is a boolean"),
    ],
)
def test_openrouter_key_period_fields_are_strict(
    make: Callable[..., Any], data: dict[str, object], reason: str
) -> None:
    error = fetch_error(
        make(OpenRouterKey, reply(body={"data": {"limit": 1, **data}})), "sync", KEY
    )
    assert reason in error.reason


def test_balance_resets_at_is_kept_and_checked() -> None:
    balance = Balance(remaining=5.0, total=10.0, used=5.0, resets_at=1798675200.0)
    assert balance.debited(1.0).resets_at == 1798675200.0
    assert balance.debited(1.0).remaining == 4.0
    for bad in (math.nan, math.inf, "tomorrow", True):
        with pytest.raises(ValueError):
            Balance(remaining=1.0, resets_at=bad)  # type: ignore[arg-type]


def test_the_transport_refuses_a_balance_in_another_unit_as_unusable(fake: FakeProvider) -> None:
    fake.currency = "CNY"
    source = DeepSeekBalance(base_url=fake.deepseek_base_url)
    guard = cg.BudgetGuard(source, cg.Policy(unit="USD", on_source_error="refuse"))
    with guard.client() as http:
        answer = http.post(
            fake.deepseek_base_url + "/chat/completions",
            json={"model": "deepseek-chat", "messages": []},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert answer.status_code == 402
    reason = answer.json()["error"]["metadata"]["creditguard"]["reason"]
    assert reason == "no usable credit balance could be had, and the policy refuses then"
    assert fake.count("chat") == 0
    guard.close()


def test_a_unit_is_one_spelling_whoever_writes_it() -> None:
    # Policy(unit="usd") once made every USD balance unusable ("in USD ... in usd")
    usd = cg.Balance(remaining=10.0, unit="USD")
    assert cg.Policy(unit=" usd").unit == "USD"
    assert cg.decide(usd, cg.Policy(refuse_below=1.0, unit="usd"), "m").action == "allow"
    assert cg.Policy(unit="credits").unit == "credits"
    doc = {
        "is_available": True,
        "balance_infos": [
            {"currency": "cny", "total_balance": "70.00"},
            {"currency": "usd", "total_balance": "10.00"},
        ],
    }
    assert parse_deepseek(doc).unit == "USD"  # the USD entry, however DeepSeek spells it
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=doc))
    with DeepSeekBalance(api_key="sk-unit", unit="cny", transport=transport) as source:
        assert source.fetch(None).remaining == 70.0
