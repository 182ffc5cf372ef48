"""Verifies one received webhook with two independent Standard Webhooks implementations.

Used by the end-to-end tests (tests/e2e/compat.rs). Reads one JSON object on stdin:

    {"secrets": ["whsec_..."], "headers": {"webhook-id": ...}, "bodyBase64": "...",
     "expect": "valid" | "invalid"}

and checks the webhook with every secret, separately, in both `standardwebhooks` and `svix`
(`Webhook(secret).verify(body, headers)`). With "valid" every library must accept with every
secret; with "invalid" every library must reject with every secret. Prints one JSON line with each
check's result and exits 1 if any check went the other way (2 on bad input).
"""

import base64
import json
import sys

import standardwebhooks
import svix
from standardwebhooks.webhooks import Webhook as StandardWebhook
from svix.webhooks import Webhook as SvixWebhook


def check(library, secret, body, headers):
    """Returns (accepted, detail)."""
    try:
        if library == "standardwebhooks":
            parsed = StandardWebhook(secret).verify(body, dict(headers))
            # On success the library returns the parsed body: it must be the body we sent.
            if parsed != json.loads(body):
                return False, "verify() returned a different body"
        else:
            SvixWebhook(secret).verify(body, dict(headers))
        return True, "accepted"
    except Exception as e:  # noqa: BLE001 - any exception means "rejected"
        return False, "%s: %s" % (type(e).__name__, e)


def main():
    try:
        req = json.load(sys.stdin)
        secrets = req["secrets"]
        headers = req["headers"]
        body = base64.b64decode(req["bodyBase64"], validate=True)
        expect = req["expect"]
        if expect not in ("valid", "invalid") or not secrets:
            raise ValueError("expect must be valid or invalid, and secrets non-empty")
    except Exception as e:  # noqa: BLE001
        print("bad input: %s" % e, file=sys.stderr)
        return 2

    results = []
    for library in ("standardwebhooks", "svix"):
        for index, secret in enumerate(secrets):
            accepted, detail = check(library, secret, body, headers)
            results.append(
                {"library": library, "secret": index, "accepted": accepted, "detail": detail}
            )
    want = expect == "valid"
    wrong = [r for r in results if r["accepted"] != want]
    print(
        json.dumps(
            {
                "versions": {
                    "standardwebhooks": getattr(standardwebhooks, "__version__", None),
                    "svix": getattr(svix, "__version__", None),
                },
                "expect": expect,
                "results": results,
                "ok": not wrong,
            }
        )
    )
    for r in wrong:
        print(
            "%s with secret #%d: expected %s, got %s"
            % (r["library"], r["secret"], expect, r["detail"]),
            file=sys.stderr,
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
