"""One worker process of the multi-process test: 50 calls through the guard
transport, its balance shared with the other workers through Redis."""

from __future__ import annotations

import sys

from creditguard import BudgetGuard, Policy
from creditguard.sources import OpenRouterKey


def main(base_url: str, store_url: str, key: str, calls: int) -> None:
    guard = BudgetGuard(
        OpenRouterKey(base_url=base_url),
        Policy(refuse_below=1.0),
        ttl=60.0,
        estimate=0.25,
        store=store_url,
    )
    allowed = refused = 0
    with guard.client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for i in range(calls):
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
            status = http.post("/chat/completions", json=body).status_code
            if status == 200:
                allowed += 1
            else:
                refused += 1
    guard.close()
    print(f"allowed={allowed} refused={refused}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
