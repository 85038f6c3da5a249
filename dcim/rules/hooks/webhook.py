"""Generic webhook: POST the notification's JSON, signed so the receiver can trust it.

Headers sent:

    Content-Type: application/json
    X-Dcim-Timestamp: 1767225600                    (unix seconds when this attempt was sent)
    X-Dcim-Signature: sha256=<hex>                  (when a secret is configured)
    Idempotency-Key: <hex>                          (same for every retry of one message)

The signature is HMAC-SHA256 with the shared secret over `<timestamp>.<body>` (the timestamp header's
digits, a dot, then the raw body bytes). A receiver recomputes it, compares in constant time, and rejects a
timestamp older than a few minutes: a captured request cannot be replayed later, nor its timestamp moved,
without breaking the signature. `verify_signature` below is that check.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from dcim.core.secrets import Secret
from dcim.rules.hooks.base import Hook, HookConfig, HookType, HttpUrl, post, reveal

if TYPE_CHECKING:
    import aiohttp

    from dcim.rules.hooks.notification import Notification


class WebhookHook(HookConfig):
    """POST the notification as JSON; signed with HMAC-SHA256 when a secret is given."""

    type: Literal["webhook"]
    """webhook: an HTTP POST of JSON."""
    url: HttpUrl = Field(examples=["https://ops.facility.example/dcim"])
    """Where to POST."""
    secret: Secret | None = None
    """HMAC-SHA256 key signing each request (X-Dcim-Signature header), as a reference; not set: unsigned."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when `signature` is the sender's for this body and the timestamp is recent enough."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender(Hook):
    def __init__(self, name: str, config: WebhookHook) -> None:
        super().__init__(name)
        self.config = config

    def render(self, notification: Notification) -> list[bytes]:
        return [notification.to_json()]

    async def send(self, body: bytes, session: aiohttp.ClientSession) -> None:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "dcim-notify/1",
            "X-Dcim-Timestamp": timestamp,
            "Idempotency-Key": hashlib.sha256(body).hexdigest()[:32],
            **self.config.headers,
        }
        secret = reveal(self.config.secret)
        if secret is not None:
            headers["X-Dcim-Signature"] = sign(secret, timestamp, body)
        await post(session, self.config.url, body, headers, self.config.timeout)


HOOK = HookType("webhook", WebhookHook, WebhookSender)
