"""The OpenAPI document as one daemon configuration of tests/openapi/schemathesis.sh
sees it, written to stdout.

src/http/openapi.json describes every configuration at once: the webhook
body is webhookd's own shape without --payload-map or any JSON object with
one (an anyOf of the two), and the admin token is optional (it depends on
--admin-token-file). Schemathesis takes every request that a schema allows
as one the daemon must accept, so each run gets the document narrowed to
its configuration, and nothing else changed:

  phase_document.py DOCUMENT native
      the webhook body is TransactionPayload (no --payload-map)
  phase_document.py DOCUMENT mapped BODY_SCHEMA
      the webhook body is BODY_SCHEMA (what the run's map takes), and the
      admin operations require the bearer token (--admin-token-file)

It fails, rather than narrow something it does not recognise, if the
document's webhook body or an admin operation's security has another form.
"""

import json
import sys

WEBHOOK = ("/v1/webhooks/transactions", "post")
BOTH_SHAPES = [
    {"$ref": "#/components/schemas/TransactionPayload"},
    {"$ref": "#/components/schemas/ProviderPayload"},
]
OPTIONAL_TOKEN = [{}, {"adminToken": []}]
METHODS = ("get", "post", "put", "patch", "delete")


def fail(message):
    sys.exit(f"phase_document.py: {message}")


def main(argv):
    if len(argv) < 3 or argv[2] not in ("native", "mapped") or (argv[2] == "mapped") != (len(argv) == 4):
        fail("usage: phase_document.py DOCUMENT native | DOCUMENT mapped BODY_SCHEMA")
    with open(argv[1], encoding="utf-8") as f:
        document = json.load(f)
    path, method = WEBHOOK
    body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
    if body["schema"] != {"anyOf": BOTH_SHAPES}:
        fail(f"the webhook body is not anyOf TransactionPayload, ProviderPayload: {body['schema']}")
    if argv[2] == "native":
        body["schema"] = BOTH_SHAPES[0]
    else:
        with open(argv[3], encoding="utf-8") as f:
            document["components"]["schemas"]["MappedBody"] = json.load(f)
        body["schema"] = {"$ref": "#/components/schemas/MappedBody"}
        for item in document["paths"].values():
            for name in METHODS:
                operation = item.get(name)
                if operation is None or "security" not in operation:
                    continue
                if operation["security"] != OPTIONAL_TOKEN:
                    fail(f"{operation['operationId']}: unexpected security {operation['security']}")
                operation["security"] = OPTIONAL_TOKEN[1:]
    json.dump(document, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv)
