"""Signs a webhook body with a real Standard Webhooks library, as a sender does.

Usage: sign_standard_webhooks.py LIBRARY SECRET MSG_ID < BODY
LIBRARY is `svix` (svix.webhooks.Webhook) or `standardwebhooks`
(standardwebhooks.webhooks.Webhook). Prints one JSON object: the message
id, the timestamp (Unix seconds, now) and the signature header value
(`v1,<base64>`), for tests/signatures.rs to send as `svix-*` or `webhook-*`
headers.
"""

import json
import sys
from datetime import datetime, timezone


def main() -> None:
    library, secret, msg_id = sys.argv[1:4]
    if library == "svix":
        from svix.webhooks import Webhook
    elif library == "standardwebhooks":
        from standardwebhooks.webhooks import Webhook
    else:
        sys.exit(f"unknown library {library!r}")
    body = sys.stdin.buffer.read().decode()
    now = datetime.now(tz=timezone.utc)
    signature = Webhook(secret).sign(msg_id, now, body)
    # The libraries sign the timestamp as whole seconds, rounded down.
    timestamp = str(int(now.timestamp()))
    # Check the round trip with the same library's verifier.
    Webhook(secret).verify(
        body.encode(),
        {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature},
    )
    print(json.dumps({"id": msg_id, "timestamp": timestamp, "signature": signature}))


if __name__ == "__main__":
    main()
