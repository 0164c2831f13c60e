"""Shared stores: one budget for many processes and machines.

A :class:`Store` keeps, per credential fingerprint, the last fetched balance
(the *snapshot*), the spend recorded since, whether a provider refused for lack
of credits, the credits held by calls in flight, and a refresh lock.
:class:`RedisStore` keeps them in Redis or a Redis Cluster; each change is
one atomic Lua script, sent from redis-py's sync client or from ``redis.asyncio``.

Errors join creditguard's tree::

    CreditGuardError
    └── StoreError    the store is down, too slow, or answered an error

``import creditguard.stores`` works without redis-py; only constructing a
:class:`RedisStore` needs it (``pip install 'creditguard[redis]'``).
"""

from __future__ import annotations

from ._base import SharedState, Spend, Store, StoreError
from ._redis import RedisStore

__all__ = ["RedisStore", "SharedState", "Spend", "Store", "StoreError"]
