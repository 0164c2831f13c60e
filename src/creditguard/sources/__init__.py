"""Where balances come from.

A credits source turns a credential into a :class:`~creditguard.Balance`::

    CreditSource            the protocol: name, per_credential, fetch(), afetch()
    ├── OpenRouterCredits   GET /credits  (account credits, management key)
    ├── OpenRouterKey       GET /key      (what one key can still spend)
    ├── StablecogCredits    GET /credits  (whole credits)
    ├── DeepSeekBalance     GET /user/balance            (CNY or USD)
    ├── MoonshotBalance     GET /v1/users/me/balance     (USD, or CNY on .cn)
    ├── NovitaBalance       GET /openapi/v1/billing/balance/detail  (USD)
    ├── FalBalance          GET /v1/account/billing      (admin key; USD)
    ├── StabilityBalance    GET /v1/user/balance         (credits)
    ├── VercelGatewayCredits  GET /v1/credits            (USD)
    ├── CallableSource      a function of yours, sync or async
    ├── FixedBudget         a local budget per day / week / month
    ├── OpenAISpend         a budget less OpenAI's cost report (admin key)
    ├── AnthropicSpend      a budget less Anthropic's cost report (admin key)
    ├── Tightest            the binding one of several sources
    └── ByHost              the source of the host each call goes to

Every failure is a :class:`~creditguard.CreditSourceError` that never holds a key.
"""

from ._base import CreditSource
from ._byhost import ByHost
from ._callable import CallableSource
from ._deepseek import DeepSeekBalance
from ._fal import FalBalance
from ._fixed import FixedBudget
from ._moonshot import MoonshotBalance
from ._novita import NovitaBalance
from ._openrouter import OpenRouterCredits, OpenRouterKey
from ._spend import AnthropicSpend, OpenAISpend
from ._stability import StabilityBalance
from ._stablecog import StablecogCredits
from ._tightest import Tightest
from ._vercel import VercelGatewayCredits

__all__ = [
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
