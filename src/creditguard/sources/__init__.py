"""Where balances come from.

A credits source turns a credential into a :class:`~creditguard.Balance`::

    CreditSource            the protocol: name, per_credential, fetch(), afetch()
    ├── OpenRouterCredits   GET /credits  (account credits, management key)
    ├── OpenRouterKey       GET /key      (what one key can still spend)
    ├── StablecogCredits    GET /credits  (whole credits)
    ├── CallableSource      a function of yours, sync or async
    ├── FixedBudget         a local budget per day / week / month
    └── Tightest            the binding one of several sources

Every failure is a :class:`~creditguard.CreditSourceError` that never holds a key.
"""

from ._base import CreditSource
from ._callable import CallableSource
from ._fixed import FixedBudget
from ._openrouter import OpenRouterCredits, OpenRouterKey
from ._stablecog import StablecogCredits
from ._tightest import Tightest

__all__ = [
    "CallableSource",
    "CreditSource",
    "FixedBudget",
    "OpenRouterCredits",
    "OpenRouterKey",
    "StablecogCredits",
    "Tightest",
]
