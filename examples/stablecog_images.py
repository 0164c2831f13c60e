"""creditguard in front of Stablecog image generation, where balances are whole credits.

``StablecogCredits`` reads ``GET /v1/credits``; every ``POST /v1/image/generation/create``
sent through ``guard.client()`` is judged first (on downgrade its ``model_id`` is
rewritten). A create call costs ``num_outputs`` credits and answers the credits left,
``remaining_credits``, which the guard takes as its new balance: one balance fetch
serves the whole run.

Offline: the script starts a fake Stablecog on 127.0.0.1 with 10 credits.
Run: ``python examples/stablecog_images.py``
"""

from __future__ import annotations

import logging

import creditguard as cg
from creditguard.sources import StablecogCredits
from creditguard.testing import FakeProvider

KEY = "stablecog-example-not-a-real-key-00000000"  # known only to the fake provider
FLUX, SSD = "flux-1-dev", "ssd-1b"  # placeholders for Stablecog's model ids

# Judged on the credits left after the call; each call is estimated at 2 credits.
policy = cg.Policy(warn_below=6, downgrade_below=4, refuse_below=2, downgrade={FLUX: SSD})


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake:
        fake.add_key(KEY, credits=10)
        source = StablecogCredits(api_key=KEY, base_url=fake.stablecog_base_url)
        guard = cg.BudgetGuard(source, policy, estimate=2, ttl=3600)

        with guard.client(
            base_url=fake.stablecog_base_url, headers={"Authorization": f"Bearer {KEY}"}
        ) as http:
            for n in range(1, 7):
                body = {"prompt": "a lighthouse at dawn", "model_id": FLUX, "num_outputs": 2}
                response = http.post("/image/generation/create", json=body)
                decision = response.headers["x-creditguard-decision"]
                if response.status_code == 402:
                    reason = response.json()["error"]["message"]
                    print(f"image {n}: refused, HTTP 402: {reason}")
                    break
                response.raise_for_status()
                model = fake.requests[-1].model  # what the provider was asked for
                left = response.json()["remaining_credits"]
                print(f"image {n}: {decision:<9} -> model_id {model}, {left} credits left")

        print(
            f"the provider made {fake.count('stablecog_create')} generations and was asked "
            f"for the balance {fake.count('stablecog_credits')} time(s)"
        )
        guard.close()


if __name__ == "__main__":
    main()
