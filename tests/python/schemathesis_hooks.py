"""Schemathesis hooks for `tests/e2e/schemathesis.rs`, loaded through `SCHEMATHESIS_HOOKS`.

Both hooks edit a generated request just before it is sent (`before_call`), so they apply to every
phase (examples, coverage, fuzzing, stateful):

1. Loopback only. The ingest API stores outbound URLs (a dispatch's `callbackUrl` and
   `provider.url`, a subscription's `callbackUrl`) that the worker and the deliverer later connect
   to, and the address policy lets public hosts through. A generated URL could name any host on the
   internet, so every such string that could parse as an absolute URL (it has a `:`; without one
   the server cannot read a scheme and refuses it) is replaced by one of two loopback URLs, chosen
   from a checksum of the generated value (so the same input always maps the same way): mostly
   the test's receiver, which `delivery.allow_hosts` admits, and one in four a 127.0.0.2 address,
   which the policy refuses (422) without connecting anywhere.
   Values that are not strings are left alone: the server refuses them by their type.

2. Signed provider events. For the provider the test configured, about half of the generated
   events are sent as the exact JSON bytes that get signed with the provider's secret
   (`X-Provider-Signature: sha256=<hex HMAC-SHA256>`), so the documented 200 and 422 answers are
   reached and not only 401; the other half keep the generated (wrong) signature.

Environment (set by the Rust test):
  DISPATCHER_ST_ALLOWED_URL    the receiver's URL, e.g. http://127.0.0.1:PORT/hook
  DISPATCHER_ST_REFUSED_URL    a loopback URL the address policy refuses
  DISPATCHER_ST_PROVIDER       the configured provider's name (e.g. acme)
  DISPATCHER_ST_PROVIDER_SECRET its HMAC secret
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import zlib
from typing import Any

import schemathesis

ALLOWED_URL = os.environ["DISPATCHER_ST_ALLOWED_URL"]
REFUSED_URL = os.environ["DISPATCHER_ST_REFUSED_URL"]
PROVIDER = os.environ.get("DISPATCHER_ST_PROVIDER", "")
PROVIDER_SECRET = os.environ.get("DISPATCHER_ST_PROVIDER_SECRET", "").encode()

for url in (ALLOWED_URL, REFUSED_URL):
    assert url.startswith(("http://127.", "https://127.")), f"not a loopback URL: {url}"

PROVIDER_EVENTS_PATH = "/v1/providers/{provider}/events"


def _checksum(data: bytes) -> int:
    return zlib.crc32(data)


def _encode(value: str) -> bytes:
    # Generated strings may hold lone surrogates; they still need a stable checksum.
    return value.encode("utf-8", "surrogatepass")


def _loopback(value: Any) -> Any:
    if not isinstance(value, str) or ":" not in value:
        return value
    return REFUSED_URL if _checksum(_encode(value)) % 4 == 0 else ALLOWED_URL


def _keep_on_loopback(body: Any) -> None:
    if not isinstance(body, dict):
        return
    if "callbackUrl" in body:
        body["callbackUrl"] = _loopback(body["callbackUrl"])
    provider = body.get("provider")
    if isinstance(provider, dict) and "url" in provider:
        provider["url"] = _loopback(provider["url"])


def _sign_provider_event(case: Any) -> None:
    if not PROVIDER or case.path != PROVIDER_EVENTS_PATH:
        return
    if (case.path_parameters or {}).get("provider") != PROVIDER:
        return
    body = case.body
    if isinstance(body, (bytes, bytearray)) or type(body).__name__ == "NotSet":
        return
    try:
        raw = json.dumps(body, allow_nan=False).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return
    if _checksum(raw) % 2 == 1:
        return
    signature = hmac.new(PROVIDER_SECRET, raw, hashlib.sha256).hexdigest()
    # Raw bytes are sent as they are, so the signature covers exactly what the server receives.
    case.body = raw
    if case.headers is None:
        case.headers = {}
    case.headers["X-Provider-Signature"] = f"sha256={signature}"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    _keep_on_loopback(case.body)
    _sign_provider_event(case)
