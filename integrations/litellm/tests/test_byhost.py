"""One guard for several providers behind litellm's one client_session: each call is
judged on the balance of the host it goes to (creditguard.sources.ByHost)."""

from __future__ import annotations

from collections.abc import Iterator

import litellm
import pytest
from conftest import KEY, MESSAGES, TIMEOUT, assert_no_secret

from creditguard import BudgetGuard, Decision, Policy
from creditguard.sources import ByHost, DeepSeekBalance, OpenRouterKey
from creditguard.testing import FakeProvider, HostRouter
from creditguard_litellm import guard_litellm, refused

OPENROUTER = "https://openrouter.ai/api/v1"
DEEPSEEK = "https://api.deepseek.com/v1"


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    """OpenRouter, where the key may spend 100, and DeepSeek, where the same key has
    0.3 CNY left."""
    with FakeProvider() as openrouter, FakeProvider() as deepseek:
        openrouter.add_key(KEY, limit=100.0)
        deepseek.add_key(KEY, credits=0.3)
        deepseek.currency = "CNY"
        yield openrouter, deepseek


def _guard(
    openrouter: FakeProvider, deepseek: FakeProvider, decisions: list[Decision], **kwargs: object
) -> tuple[BudgetGuard, ByHost, HostRouter]:
    source = ByHost(
        {
            "openrouter.ai": OpenRouterKey(base_url=openrouter.openrouter_base_url),
            "api.deepseek.com": DeepSeekBalance(base_url=deepseek.deepseek_base_url),
        },
        **kwargs,  # type: ignore[arg-type]
    )
    guard = BudgetGuard(
        source, Policy(refuse_below=0.5), estimate=0.0, on_decision=decisions.append
    )
    router = HostRouter({"openrouter.ai": openrouter.url, "api.deepseek.com": deepseek.url})
    return guard, source, router


def _call(model: str, api_base: str) -> dict[str, object]:
    return {
        "model": f"openai/{model}",
        "api_base": api_base,
        "api_key": KEY,
        "messages": MESSAGES,
        "timeout": TIMEOUT,
    }


def test_two_hosts_through_one_client_session(
    fakes: tuple[FakeProvider, FakeProvider], decisions: list[Decision]
) -> None:
    openrouter, deepseek = fakes
    guard, source, router = _guard(openrouter, deepseek, decisions)
    with guard_litellm(guard, transport=router):
        response = litellm.completion(**_call("openai/gpt-4o", OPENROUTER))
        assert response.choices[0].message.content == openrouter.reply_text
        with pytest.raises(litellm.APIError) as info:  # 0.3 left there, under 0.5
            litellm.completion(**_call("deepseek-chat", DEEPSEEK))
        assert refused(info.value)
        assert_no_secret(str(info.value), repr(info.value))
    assert [d.action for d in decisions] == ["allow", "refuse"]
    assert openrouter.count("chat") == 1 and deepseek.count("chat") == 0
    assert openrouter.count("key") == 1 and deepseek.count("deepseek_balance") == 1
    spent = guard.check(credential=source.credential("openrouter.ai", KEY)).balance
    assert spent is not None
    assert spent.remaining == pytest.approx(100.0 - openrouter.default_price)
    guard.close()


async def test_two_hosts_through_one_aclient_session_and_a_policy_per_host(
    fakes: tuple[FakeProvider, FakeProvider], decisions: list[Decision]
) -> None:
    openrouter, deepseek = fakes
    lenient = Policy(refuse_below=0.1, unit="CNY")
    guard, _, router = _guard(
        openrouter, deepseek, decisions, policies={"api.deepseek.com": lenient}
    )
    async with guard_litellm(guard, transport=router):
        await litellm.acompletion(**_call("deepseek-chat", DEEPSEEK))  # 0.3 >= 0.1: allowed
        await litellm.acompletion(**_call("openai/gpt-4o", OPENROUTER))
    assert [d.action for d in decisions] == ["allow", "allow"]
    assert openrouter.count("chat") == 1 and deepseek.count("chat") == 1
    await guard.aclose()
