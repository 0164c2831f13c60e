"""The fake provider's admin cost reports: OpenAI's ``GET /v1/organization/costs`` and
Anthropic's ``GET /v1/organizations/cost_report``, with a settable lag.

Every generation call the fake charges is logged as organisation spend (USD) at the
time it was made; :meth:`CostReports.add_cost` logs more (spend "from elsewhere", or
earlier in the period). A report shows a logged cost once it is ``cost_lag`` seconds
old, in the 1-day UTC bucket of its time, the way the real reports trail the calls.
Admin keys are registered with :meth:`CostReports.add_admin_key`; other keys get 401.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from ._wire import Incoming, Reply

__all__ = ["CostReports"]

_DAY = 86_400
_JSON = (("Content-Type", "application/json"),)


def _reply(status: int, doc: Any) -> Reply:
    import json

    return Reply(status, _JSON, json.dumps(doc, separators=(",", ":")).encode())


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CostReports:
    """Organisation spend and the two admin cost reports over it (a FakeProvider part)."""

    lock: threading.RLock

    def __init__(self) -> None:
        #: seconds a cost takes to show in the reports
        self.cost_lag = 0.0
        #: the reports' clock (Unix seconds); replace it to move time in tests
        self.cost_clock = time.time
        #: the most buckets one page holds, whatever ``limit`` asks (None: ``limit``)
        self.cost_page_size: int | None = None
        self._admin_keys: set[str] = set()
        self._cost_log: list[tuple[float, float]] = []

    def add_admin_key(self, key: str) -> None:
        """Accept ``key`` on the admin cost endpoints."""
        with self.lock:
            self._admin_keys.add(key)

    def add_cost(self, usd: float, *, at: float | None = None) -> None:
        """Log ``usd`` of organisation spend made at ``at`` (Unix seconds; default now)."""
        if not usd >= 0:
            raise ValueError("usd must be >= 0")
        with self.lock:
            self._cost_log.append((self.cost_clock() if at is None else at, float(usd)))

    def reported_cost(self, since: float = 0.0) -> float:
        """What the reports show right now of spend made at or after ``since``."""
        with self.lock:
            shown = self.cost_clock() - self.cost_lag
            return sum(usd for at, usd in self._cost_log if since <= at <= shown)

    def _log_spend(self, usd: float) -> None:
        """A generation call was charged ``usd`` (call under the lock)."""
        self._cost_log.append((self.cost_clock(), usd))

    # -- the endpoints ----------------------------------------------------------

    def _admin(self, incoming: Incoming, header: str) -> bool:
        value = incoming.headers.get(header, "")
        if header == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                return False
        with self.lock:
            return value.strip() in self._admin_keys

    def _buckets(
        self, start: float, query: Mapping[str, list[str]], most: int
    ) -> tuple[list[Any], int, int]:
        """Daily buckets from ``start`` to now: (bucket sums, first index, page size);
        first index -1 for a bad ``limit`` (1 to ``most``, default 7) or ``page``."""
        try:
            limit = int(query.get("limit", ["7"])[0])
            first = int(query.get("page", ["page_0"])[0].removeprefix("page_"))
        except ValueError:
            return [], -1, 0
        if not 1 <= limit <= most or first < 0:
            return [], -1, 0
        size = limit if self.cost_page_size is None else min(limit, self.cost_page_size)
        day0 = start - start % _DAY
        with self.lock:
            now = self.cost_clock()
            shown = now - self.cost_lag
            days = int((now - day0) // _DAY) + 1
            sums = [Decimal(0)] * days
            for at, usd in self._cost_log:
                if day0 <= at <= shown:
                    sums[int((at - day0) // _DAY)] += Decimal(repr(usd))
        return [(day0 + i * _DAY, total) for i, total in enumerate(sums)], first, size

    def _openai_costs(self, incoming: Incoming) -> Reply:
        if not self._admin(incoming, "authorization"):
            return _reply(
                401, {"error": {"message": "Invalid admin key", "type": "invalid_request_error"}}
            )
        query = parse_qs(incoming.query)
        try:
            start = float(int(query["start_time"][0]))
        except (KeyError, ValueError):
            return _reply(400, {"error": {"message": "start_time is required"}})
        buckets, first, limit = self._buckets(start, query, 180)
        if first < 0:
            return _reply(400, {"error": {"message": "bad limit or page"}})
        page = buckets[first : first + limit]
        more = first + limit < len(buckets)
        data = [
            {
                "object": "bucket",
                "start_time": int(at),
                "end_time": int(at) + _DAY,
                "results": []
                if not total
                else [
                    {
                        "object": "organization.costs.result",
                        "amount": {"value": float(total), "currency": "usd"},
                        "line_item": None,
                        "project_id": None,
                    }
                ],
            }
            for at, total in page
        ]
        return _reply(
            200,
            {
                "object": "page",
                "data": data,
                "has_more": more,
                "next_page": f"page_{first + limit}" if more else None,
            },
        )

    def _anthropic_costs(self, incoming: Incoming) -> Reply:
        if not self._admin(incoming, "x-api-key"):
            return _reply(
                401,
                {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                },
            )
        query = parse_qs(incoming.query)
        try:
            text = query["starting_at"][0]
            start = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            return _reply(400, {"type": "error", "error": {"message": "starting_at is required"}})
        buckets, first, limit = self._buckets(start, query, 31)
        if first < 0:
            return _reply(400, {"type": "error", "error": {"message": "bad limit or page"}})
        page = buckets[first : first + limit]
        more = first + limit < len(buckets)
        data = [
            {
                "starting_at": _rfc3339(at),
                "ending_at": _rfc3339(at + _DAY),
                "results": []
                if not total
                else [
                    {
                        "amount": str(total * 100),  # cents, as a decimal string
                        "currency": "USD",
                        "cost_type": None,
                        "description": None,
                        "model": None,
                        "workspace_id": None,
                    }
                ],
            }
            for at, total in page
        ]
        return _reply(
            200,
            {
                "data": data,
                "has_more": more,
                "next_page": f"page_{first + limit}" if more else None,
            },
        )
