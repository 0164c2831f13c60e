"""What a refused LiteLLM call raises, and how to tell one apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from creditguard import CreditsExhausted

if TYPE_CHECKING:
    from creditguard import Decision

__all__ = ["REFUSAL_MARK", "CreditGuardRefusal", "refused", "rule_of"]

REFUSAL_MARK = "creditguard refused the call"
"""How the message of every refusal starts: the proxy's error body, and the HTTP 402
a guard transport answers with (litellm carries it into the exception it raises)."""


def rule_of(decision: Decision) -> str:
    """Why a call was refused, naming the rule but no figures: an error may travel
    further than the app's logs (to an end user), and balances are the app's
    business. The full reason is in the guard's log and ``decision.reason``."""
    if decision.balance is None:
        return "no usable credit balance could be had, and the policy refuses then"
    if "unknown_price" in decision.reason:
        return "the model has no known price, and the policy refuses then"
    return "the credits left after this call would be below the refuse threshold"


class CreditGuardRefusal(CreditsExhausted):
    """:class:`creditguard.CreditsExhausted` as the LiteLLM proxy answers it:
    raised in ``async_pre_call_hook``, it becomes an HTTP ``status_code`` (402)
    error whose body carries ``message`` (no figures), ``type`` and ``code``.
    ``str()`` and ``.decision`` keep the full reason, as for any
    ``CreditsExhausted``."""

    status_code = 402
    type = "insufficient_credits"
    code = "insufficient_credits"
    param: str | None = None

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision)
        self.message = f"{REFUSAL_MARK}: {rule_of(decision)}"


def refused(exc: BaseException) -> bool:
    """Was ``exc`` raised because creditguard refused the call? True for
    :class:`creditguard.CreditsExhausted` (the proxy hook's), and for the exception
    litellm raises for the HTTP 402 of a guard transport (``litellm.APIError``
    with ``status_code`` 402 and creditguard's message)."""
    if isinstance(exc, CreditsExhausted):
        return True
    return getattr(exc, "status_code", None) == 402 and REFUSAL_MARK in str(exc)
