"""Checks a push from vod-signer (`--notify-url`): Standard Webhooks signatures.

vod-signer signs each POST with three headers: `webhook-id` (the same on every retry of one
notification: deduplicate by it), `webhook-timestamp` (Unix seconds of this attempt) and
`webhook-signature` (`v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)>`, one per
secret during a rotation, space-separated). A secret is written `whsec_<base64>` (the prefix is
optional); the HMAC key is its decoded bytes.

    payload = verify_webhook(request.headers, request.body, os.environ["VOD_SIGNER_WEBHOOK_SECRET"])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

#: Seconds a push's timestamp may be off the receiver's clock, as Standard Webhooks, Svix and
#: Stripe allow: an older push is refused as a replay.
DEFAULT_TOLERANCE = 300.0


class WebhookVerificationError(Exception):
    """The push is not provably from vod-signer, or not fresh: answer it 4xx, do not act on it."""


class MissingHeader(WebhookVerificationError):
    """One of `webhook-id`, `webhook-timestamp`, `webhook-signature` is absent."""

    def __init__(self, header: str) -> None:
        super().__init__(f"the push has no {header} header")
        #: The missing header's name.
        self.header = header


class InvalidTimestamp(WebhookVerificationError):
    """`webhook-timestamp` is not Unix seconds."""


class TimestampOutOfTolerance(WebhookVerificationError):
    """`webhook-timestamp` is further from now than the tolerance: a replay, or a clock off."""

    def __init__(self, timestamp: int, now: float, tolerance: float) -> None:
        super().__init__(f"webhook-timestamp {timestamp} is {timestamp - now:+.0f} s from now, "
                         f"more than the {tolerance:g} s allowed")
        self.timestamp = timestamp
        self.now = now
        self.tolerance = tolerance


class NoMatchingSignature(WebhookVerificationError):
    """No `v1` signature in `webhook-signature` is any of the secrets' over this body."""


#: A webhook secret: `whsec_<base64>` text, or the raw key bytes.
Secret: TypeAlias = str | bytes


def _key(secret: Secret) -> bytes:
    """A `whsec_<base64>` (or bare base64) secret's HMAC key; bytes are the key itself."""
    if isinstance(secret, bytes):
        return secret
    encoded = secret.strip().removeprefix("whsec_")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is `whsec_` and base64 (as in "
                         "--notify-secret-file)") from None


def _header(headers: Mapping[str, str], name: str) -> str:
    # Header names are case-insensitive; a plain dict may hold them in any case.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    if value is None:
        raise MissingHeader(name)
    return value


def verify_webhook(headers: Mapping[str, str], body: bytes | str,
                   secrets: Secret | Sequence[Secret], *,
                   tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> Any:
    """Checks a push and answers its body, parsed (JSON: Tencent VOD's `NewFileUpload` event
    shape, or `UploadAbandoned`).

    `headers`: the request's headers (any mapping; names in any case). `body`: the raw bytes
    received, before any parsing (a str is taken as its UTF-8 bytes). `secrets`: one secret,
    or several while the sender rotates (any one matching passes). `tolerance`: seconds the
    timestamp may be off `now` (default the current time). Signatures are compared in constant
    time. Raises a `WebhookVerificationError` that says why."""
    webhook_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp.strip())
    except ValueError:
        raise InvalidTimestamp(f"webhook-timestamp {stamp[:32]!r} is not Unix seconds") from None
    now = time.time() if now is None else now
    if abs(timestamp - now) > tolerance:
        raise TimestampOutOfTolerance(timestamp, now, tolerance)
    raw = body.encode() if isinstance(body, str) else bytes(body)
    signed = f"{webhook_id}.{timestamp}.".encode() + raw
    keys = [_key(s) for s in ([secrets] if isinstance(secrets, (str, bytes)) else secrets)]
    if not keys:
        raise ValueError("no webhook secret given")
    expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            sent = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every expected tag is compared, so the time taken does not say which one matched.
        if any([hmac.compare_digest(sent, tag) for tag in expected]):
            return json.loads(raw)
    raise NoMatchingSignature("no webhook-signature matches the body with the given secrets")
