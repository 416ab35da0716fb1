"""Webhook sources: signature checks and the payload they put into the River.

Signatures (HMAC-SHA256 with the source's secret, compared in constant time):
    sha256  X-Signature-256: <hex> or sha256=<hex>, over the raw body
    github  X-Hub-Signature-256: sha256=<hex>, over the raw body
    stripe  Stripe-Signature: t=<unix>,v1=<hex>[,v1=...], over "<t>.<body>", and t must be
            within `tolerance` seconds of now (replay protection)
River payload: {"source", "path", "headers": {configured headers}, "body": <the JSON>,
"received_at"}. A delivery id (Idempotency-Key, X-GitHub-Delivery, or the Stripe event
id) becomes the River message id, so a webhook retried by its sender is stored once
within the River's duplicate window.

Telegram sources (the Bot API webhook): with a `secret` (the `secret_token` given to
setWebhook) a request must carry it in X-Telegram-Bot-Api-Secret-Token; the update's
`update_id` is its message id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from nimsforest.forest.config import SignatureKind, SourceSpec
from nimsforest.forest.leaf import utc_now
from nimsforest.forest.specs import SourceType

TELEGRAM_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class WebhookRejected(Exception):
    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


def _hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())


def verify(
    spec: SourceSpec, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> None:
    """Raise WebhookRejected unless the request carries a valid signature (a telegram
    source: the secret token Telegram sends back, when the source has a secret)."""
    if spec.type is SourceType.TELEGRAM:
        if spec.secret is None:
            return
        token = {k.lower(): v for k, v in headers.items()}.get(TELEGRAM_HEADER.lower(), "")
        if not hmac.compare_digest(token.encode(), spec.secret.get_secret_value().encode()):
            raise WebhookRejected(f"The request has no valid {TELEGRAM_HEADER} header.")
        return
    kind = spec.signature
    if kind is SignatureKind.NONE:
        return
    secret = spec.secret.get_secret_value() if spec.secret else ""
    h = {k.lower(): v for k, v in headers.items()}
    if kind is SignatureKind.SHA256:
        given = h.get("x-signature-256")
        if not given:
            raise WebhookRejected("The request has no X-Signature-256 header.")
        if not _same(_hmac(secret, body), given.removeprefix("sha256=")):
            raise WebhookRejected("The X-Signature-256 signature does not match the body.")
        return
    if kind is SignatureKind.GITHUB:
        given = h.get("x-hub-signature-256")
        if not given:
            raise WebhookRejected("The request has no X-Hub-Signature-256 header.")
        if not given.startswith("sha256=") or not _same(_hmac(secret, body), given[7:]):
            raise WebhookRejected("The X-Hub-Signature-256 signature does not match the body.")
        return
    given = h.get("stripe-signature")
    if not given:
        raise WebhookRejected("The request has no Stripe-Signature header.")
    ts: str | None = None
    sigs: list[str] = []
    for part in given.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            ts = value
        elif key == "v1":
            sigs.append(value)
    if not ts or not ts.isdigit() or not sigs:
        raise WebhookRejected("The Stripe-Signature header has no timestamp or no v1 signature.")
    now = time.time() if now is None else now
    if abs(now - int(ts)) > spec.tolerance:
        raise WebhookRejected("The Stripe-Signature timestamp is outside the tolerance window.")
    expected = _hmac(secret, ts.encode() + b"." + body)
    if not any(_same(expected, s) for s in sigs):
        raise WebhookRejected("The Stripe-Signature signature does not match the body.")


def river_payload(
    name: str, spec: SourceSpec, headers: Mapping[str, str], body: Any
) -> dict[str, Any]:
    h = {k.lower(): v for k, v in headers.items()}
    copied = {name_: h[name_.lower()] for name_ in spec.headers if name_.lower() in h}
    return {
        "source": name,
        "path": spec.path,
        "headers": copied,
        "body": body,
        "received_at": utc_now(),
    }


def delivery_id(name: str, spec: SourceSpec, headers: Mapping[str, str], body: Any) -> str | None:
    h = {k.lower(): v for k, v in headers.items()}
    ident = h.get("idempotency-key") or h.get("x-github-delivery")
    if spec.type is SourceType.TELEGRAM and isinstance(body, dict):
        update = body.get("update_id")
        ident = str(update) if isinstance(update, int) and not isinstance(update, bool) else None
    if not ident and spec.signature is SignatureKind.STRIPE and isinstance(body, dict):
        ident = body.get("id") if isinstance(body.get("id"), str) else None
    return f"{name}:{ident}" if ident else None


def sign_sha256(secret: str, body: bytes) -> str:
    """The X-Signature-256 value for `body` (for senders and tests)."""
    return "sha256=" + _hmac(secret, body)


def sign_stripe(secret: str, body: bytes, ts: int | None = None) -> str:
    ts = int(time.time()) if ts is None else ts
    return f"t={ts},v1={_hmac(secret, str(ts).encode() + b'.' + body)}"


def parse_json_body(body: bytes) -> Any:
    if not body.strip():
        raise WebhookRejected("The request body is empty; a JSON body is required.", 400)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("The request body is not valid JSON.", 400) from None


__all__ = [
    "WebhookRejected",
    "delivery_id",
    "parse_json_body",
    "river_payload",
    "sign_sha256",
    "sign_stripe",
    "verify",
]
