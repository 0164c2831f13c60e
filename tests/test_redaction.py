"""One set of masking rules (errors.redact) for every text creditguard shows:
a URL password holding an unencoded "@", secret-named query values in a
ConfigError, JSON and header secrets in a described exception. Each test
below failed on the code before the rules were shared."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from creditguard import cli
from creditguard._fingerprint import describe, redact
from creditguard.config import load_config
from creditguard.errors import ConfigError
from creditguard.prices import OpenRouterPrices
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

# a password with an unencoded "@": everything after the first "@" leaked before
PASSWORD = "p@ssTAIL-w0rd"
TAIL = "ssTAIL-w0rd"
GATEWAY = f"https://team:{PASSWORD}@gw.example/api/v1"
QSECRET = "QSECRET7f3a"


def _clean(text: str) -> None:
    assert TAIL not in text and PASSWORD not in text, text
    assert "gw.example" in text, text  # where it points is still shown


def test_redact_masks_a_password_with_an_unencoded_at_whole() -> None:
    _clean(redact(GATEWAY))
    _clean(redact(f"could not reach {GATEWAY}: timed out"))
    # a user name with an "@" (an e-mail address) and a "/" in the password
    assert "w0rd" not in redact("https://me@corp.com:p/a@w0rd@gw.example/v1")
    assert "w0rd" not in redact("redis+cluster://u:p@w0rd@h1:7000,h2:7001/?prefix=cg")


def test_a_source_repr_masks_a_password_with_an_unencoded_at() -> None:
    _clean(repr(OpenRouterKey(base_url=GATEWAY)))


def test_the_price_list_masks_a_password_with_an_unencoded_at(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prices = OpenRouterPrices(GATEWAY)
    _clean(repr(prices))
    with caplog.at_level(logging.WARNING, logger="creditguard"):
        prices._failed(OSError(f"could not reach {GATEWAY}"))
    assert caplog.records
    _clean(caplog.text)


def test_a_config_error_masks_a_password_with_an_unencoded_at() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {"source": "openrouter", "base_url": GATEWAY.replace("https", "ftp")}, environ={}
        )
    _clean(str(info.value))
    _clean(repr(info.value.value))


@pytest.mark.parametrize(
    "name", ["key", "api_key", "apikey", "token", "access_token", "secret", "password", "sig"]
)
def test_a_config_error_masks_secret_query_values(name: str) -> None:
    url = f"ftp://gw.example/v1?{name}={QSECRET}&mode=x"
    with pytest.raises(ConfigError) as info:
        load_config({"source": "openrouter", "base_url": url}, environ={})
    for text in (str(info.value), repr(info.value.value), info.value.allowed):
        assert QSECRET not in text
    assert "gw.example" in str(info.value) and "mode=x" in str(info.value)
    error = ConfigError("store", f"mysql://db/0?{name}={QSECRET}", "a redis URL")
    assert QSECRET not in str(error) and QSECRET not in repr(error.value)


def test_a_config_error_masks_the_key_name_and_what_is_allowed_too() -> None:
    error = ConfigError(
        f"store?token={QSECRET}", 1, f"see https://u:{PASSWORD}@gw.example/ ?secret={QSECRET}"
    )
    assert QSECRET not in str(error) and QSECRET not in error.key + error.allowed
    _clean(str(error))


@pytest.mark.parametrize(
    "message",
    [
        f"GET https://gw.example/v1?secret={QSECRET} failed",
        f"GET https://gw.example/v1?password={QSECRET}&x=1 failed",
        f"GET https://gw.example/blob?X-Amz-Signature={QSECRET} failed",
        f'bad reply from gw.example: {{"api_key": "{QSECRET}", "error": "quota"}}',
        f"bad request to gw.example: {{'x-api-key': '{QSECRET}'}}",
        f"gw.example refused headers {{'Authorization': 'Bearer {QSECRET}'}}",
        f"gw.example: Authorization: Key {QSECRET}",
        f"unusable client Client(api_key='{QSECRET}', base_url='https://gw.example')",
    ],
)
def test_describe_masks_secrets_a_lower_layer_put_in_its_message(message: str) -> None:
    text = describe(RuntimeError(message))
    assert QSECRET not in text and "gw.example" in text


def test_a_config_error_masks_a_key_in_the_repr_of_an_object() -> None:
    class Client:  # (a model or client object given where a setting belongs)
        def __repr__(self) -> str:
            return f"Client(api_key='{QSECRET}', host='gw.example')"

    error = ConfigError("models.fast", Client(), "a LangChain chat model")
    assert QSECRET not in str(error) and "gw.example" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "max_tokens=100 clamped",  # a parameter, not a secret
        "api_key_env=OPENROUTER_API_KEY",  # the name of a variable, not its value
        "https://api.cloudflare.com:443/ai/run/@cf/meta/llama-3",  # a port, then an "@"
        "http://[::1]:8080/a@b",
        "connect https://host:443 failed; write to ops@example.com",
        "redis://host:6379/0?prefix=cg&secret=...",  # an example in what is allowed
        "Invalid bearer token",
    ],
)
def test_redact_leaves_text_without_secrets_alone(text: str) -> None:
    assert redact(text) == text


def test_cli_status_never_prints_a_gateway_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-or-v1-REDACTSECRET0000000000000000"
    with FakeProvider() as fake:
        fake.add_key(key, limit=5.0)
        monkeypatch.setenv("CG_TEST_KEY", key)
        base = fake.openrouter_base_url.replace("://", f"://team:{PASSWORD}@")
        path = tmp_path / "creditguard.toml"
        path.write_text(
            "[creditguard]\n"
            'source = "openrouter-key"\n'
            'api_key_env = "CG_TEST_KEY"\n'
            f'base_url = "{base}"\n'
            'pricing_from = "openrouter"\n'
        )
        cli.main(["status", "--config", str(path), "--model", "x"])
        cli.main(["status", "--json", "--config", str(path), "--model", "x"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "base_url=" in text  # the source was shown
    assert TAIL not in text and PASSWORD not in text and key not in text


@pytest.mark.parametrize("password", ["pa ss XYZword", "pa'ssXYZ", 'pa"ssXYZ', "pa<ssXYZ"])
def test_a_store_password_holding_a_space_or_a_quote_is_masked(password: str) -> None:
    """A config field known to be one URL: its password is masked whatever it
    holds (in free text a space or a quote would end the URL)."""
    from creditguard.config import load_config

    config = load_config({"source": "fixed", "limit": 1, "store": f"redis://:{password}@h/0"})
    assert "XYZ" not in repr(config)
    with pytest.raises(ConfigError) as info:
        load_config({"source": "fixed", "limit": 1, "store": f"rediz://:{password}@h/0"})
    assert "XYZ" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["redis://user:p@ss#w0rdXYZ@127.0.0.1/0", "redis://:[SecretXYZ]@127.0.0.1/0"]
)
def test_a_store_url_password_holding_a_hash_or_brackets_is_masked(url: str) -> None:
    """A # ends a URL's netloc early, and [...] makes urlsplit raise: either way
    the guard's ConfigError shows no part of the password."""
    from creditguard import BudgetGuard
    from creditguard.sources import FixedBudget

    with pytest.raises(ConfigError) as info:
        BudgetGuard(FixedBudget(1.0), store=url)
    assert "XYZ" not in str(info.value)


def test_help_text_after_a_secret_name_is_not_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    # "name=" followed by the sentence's own punctuation, None or <not shown> is not a
    # secret: the masking turned help into "pass api_key=<redacted> the key a call ..."
    from creditguard import BudgetGuard
    from creditguard.errors import redact as redact_text
    from creditguard.sources import FixedBudget, OpenAISpend

    monkeypatch.delenv("CREDITGUARD_FINGERPRINT_SECRET", raising=False)
    with pytest.raises(ConfigError) as store:
        BudgetGuard(FixedBudget(10), store="redis://127.0.0.1:1/0")
    assert "fingerprint_secret=, or $CREDITGUARD_FINGERPRINT_SECRET" in str(store.value)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    with pytest.raises(ConfigError) as spend:
        OpenAISpend(5.0)
    assert "pass api_key=; the key a call carries is never used" in str(spend.value)
    assert "api_key=None (the call's credential)" in repr(OpenRouterKey())
    for text in ("api_key=<not shown>", "api_key='<not shown>'", "(or token=)", "key=None"):
        assert redact_text(text) == text
    # a real value after the same names is still masked, whatever follows it
    for value in ("sk-or-v1-0123456789abcdef", "hunter2x", "Nonesuch42", "abc;def"):
        for text in (f"api_key={value}, or", f"secret={value}; the", f"(token={value})"):
            masked = redact_text(text)
            assert value not in masked and "<redacted>" in masked, masked


@pytest.mark.parametrize(
    "text", ["db password=,Hunter2xyz failed", "auth token=;Zx9q8w7e6r5t", "pwd=)abc123def"]
)
def test_a_secret_starting_with_punctuation_is_still_masked(text: str) -> None:
    # (the help-text rule took ',' ';' ')' for the sentence's punctuation even
    # when a secret went on right after it: shown whole; the money reviewer)
    shown = redact(text)
    assert "<redacted>" in shown
    assert not any(part in shown for part in ("Hunter2", "Zx9q8", "abc123"))
