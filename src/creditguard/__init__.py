"""creditguard: check LLM credits before every call — warn, downgrade, or refuse cleanly.

Public API: :class:`BudgetGuard` (``check``/``acheck``, the decorator,
``from_config``), :class:`Policy`, :func:`decide`, :class:`Decision`,
:class:`Balance`, :class:`Alert`, :func:`load_config`, and the exceptions. Credits sources live
in :mod:`creditguard.sources`; the fake provider for tests in
:mod:`creditguard.testing`.
"""

from ._version import __version__ as __version__
from .alerts import Alert
from .balance import Balance
from .config import load_config
from .errors import ConfigError, CreditGuardError, CreditsExhausted, CreditSourceError
from .guard import BudgetGuard, Reservation
from .httpx import AsyncGuardTransport, GuardTransport
from .policy import Decision, Policy, decide

__all__ = [
    "Alert",
    "AsyncGuardTransport",
    "Balance",
    "BudgetGuard",
    "ConfigError",
    "CreditGuardError",
    "CreditSourceError",
    "CreditsExhausted",
    "Decision",
    "GuardTransport",
    "Policy",
    "Reservation",
    "decide",
    "load_config",
]
