"""Alerts: a callback and a Slack-style webhook told once when credits cross a level.

``Policy(alerts=(...))`` names levels of available credits (percents of the total, or
credits). Each fires ``on_alert`` once per credential when crossed downward and is
re-armed when the balance is back above it (a top-up). ``alert_webhook=URL`` posts the
same alert as JSON with a Slack-compatible ``text``, from a background thread that
never holds up a call. The runway (seconds until the money runs out at the recent burn
rate) rides on every decision.

Offline: a fake provider and a fake webhook receiver, both on 127.0.0.1.
Run: ``python examples/alerts_webhook.py``
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
MESSAGES: Any = [{"role": "user", "content": "Say hello."}]
received: list[dict[str, Any]] = []


class Receiver(BaseHTTPRequestHandler):
    """What a Slack incoming webhook would get."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        received.append(json.loads(body))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook_url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXXX"

    with FakeProvider() as fake:
        fake.add_key(KEY, credits=100.0, limit=2.00)  # $2.00 for this key
        fake.prices["openai/gpt-4o"] = 0.25  # what each call costs

        def on_alert(alert: cg.Alert) -> None:
            print(f"  on_alert: below {alert.level} with ${alert.available:.2f} available")

        guard = cg.BudgetGuard(
            OpenRouterKey(base_url=fake.openrouter_base_url),
            cg.Policy(refuse_below=0.10, alerts=("50%", "20%")),
            estimate=0.0,
            on_alert=on_alert,
            alert_webhook=webhook_url,
        )
        with openai.OpenAI(
            base_url=fake.openrouter_base_url, api_key=KEY, http_client=guard.client()
        ) as client:
            for n in range(1, 9):
                try:
                    client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
                    print(f"call {n}: allowed")
                except openai.APIStatusError as exc:
                    print(f"call {n}: refused, HTTP {exc.status_code}")

            fake.set_key(KEY, limit=4.00)  # a top-up: $2.25 of $4.00 left, above 50% again
            guard.invalidate(KEY)
            print("topped up to $4.00")
            for n in range(9, 12):
                decision = guard.check("openai/gpt-4o", credential=KEY)
                client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
                print(f"call {n}: allowed with ${decision.available:.2f} available")

        guard.close()  # the webhook's queue is delivered before it stops
    server.shutdown()
    server.server_close()
    print(f"the webhook received {len(received)} alerts:")
    for body in received:
        print(f"  {body['text']}")


if __name__ == "__main__":
    main()
