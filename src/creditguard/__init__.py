"""creditguard: check LLM credits before every call — warn, downgrade, or refuse cleanly."""

from .balance import Balance
from .errors import ConfigError, CreditGuardError, CreditsExhausted, CreditSourceError
from .policy import Decision, Policy, decide

__all__ = [
    "Balance",
    "ConfigError",
    "CreditGuardError",
    "CreditSourceError",
    "CreditsExhausted",
    "Decision",
    "Policy",
    "decide",
]
