"""PagerDuty Events API v2: one event per alarm, so PagerDuty's incidents follow dcim's alarms one to one.

    POST {url}   {"routing_key": ..., "event_action": "trigger" | "acknowledge" | "resolve",
                  "dedup_key": "dcim/<alarm key>",
                  "payload": {"summary", "source", "severity", "timestamp", "component", "group", "class",
                              "custom_details"}}        -> 202 Accepted

The dedup key is derived from the alarm key alone, so a retry, a reminder or a restart re-triggers the same
incident instead of opening another, and the resolve closes it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from dcim.core.events import AlarmEvent, AlarmState
from dcim.core.secrets import Secret
from dcim.rules.hooks.base import Hook, HookConfig, HookType, HttpUrl, post

if TYPE_CHECKING:
    import aiohttp

    from dcim.rules.hooks.notification import Notification


class PagerDutyHook(HookConfig):
    """PagerDuty Events API v2: a trigger / resolve event per alarm, dedup key derived from the alarm key."""

    type: Literal["pagerduty"]
    """pagerduty."""
    routing_key: Secret
    """The integration's routing key (Events API v2), as a reference."""
    url: HttpUrl = "https://events.pagerduty.com/v2/enqueue"
    """Events API endpoint (another one for a proxy or an EU account)."""
    source: str | None = None
    """PagerDuty's `source` field; not set: the alarm's subject (rack or device)."""


def iso(ts_ns: int) -> str:
    """PagerDuty's timestamp: ISO 8601, UTC, whole seconds (as in the notification's JSON)."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dedup_key(alarm_key: str) -> str:
    key = f"dcim/{alarm_key}"
    # PagerDuty accepts at most 255 characters.
    return key if len(key) <= 255 else "dcim/sha256:" + hashlib.sha256(alarm_key.encode()).hexdigest()


class PagerDutySender(Hook):
    def __init__(self, name: str, config: PagerDutyHook) -> None:
        super().__init__(name)
        self.config = config

    def _event(self, alarm: AlarmEvent) -> dict[str, Any]:
        if alarm.state is AlarmState.RESOLVED:
            return {"event_action": "resolve", "dedup_key": dedup_key(alarm.key)}
        details: dict[str, Any] = {"alarm_key": alarm.key, "metric": alarm.metric, **alarm.labels}
        if alarm.value is not None:
            details["value"] = alarm.value
        if alarm.threshold is not None:
            details["threshold"] = alarm.threshold
        return {
            "event_action": "acknowledge" if alarm.acknowledged else "trigger",
            "dedup_key": dedup_key(alarm.key),
            "payload": {
                "summary": f"{alarm.subject} {alarm.rule}: {alarm.message}"[:1024],
                "source": self.config.source or alarm.subject,
                "severity": alarm.severity.value,
                "timestamp": iso(alarm.ts_ns),
                "component": alarm.labels.get("device") or alarm.subject,
                "group": alarm.labels.get("rack") or alarm.labels.get("room", ""),
                "class": alarm.rule,
                "custom_details": details,
            },
        }

    def render(self, notification: Notification) -> list[bytes]:
        if notification.kind == "summary":
            event: dict[str, Any] = {
                "event_action": "trigger",
                "dedup_key": dedup_key(f"rate-limit/{notification.group_key}"),
                "payload": {
                    "summary": notification.title[:1024],
                    "source": "dcim",
                    "severity": notification.severity.value,
                    "timestamp": iso(notification.ts_ns),
                    "class": "rate-limit",
                    "custom_details": {"text": notification.text[:8000]},
                },
            }
            return [json.dumps(event).encode()]
        out = []
        for alarm in notification.alarms:
            # Alarms already sent are context for people, not news for PagerDuty; reminders re-trigger.
            if alarm.key in notification.changed or (
                notification.repeat and alarm.state is AlarmState.FIRING
            ):
                out.append(json.dumps(self._event(alarm)).encode())
        return out

    async def send(self, body: bytes, session: aiohttp.ClientSession) -> None:
        event = json.loads(body)
        event["routing_key"] = self.config.routing_key.get_secret_value()
        data = json.dumps(event).encode()
        await post(session, self.config.url, data, {"Content-Type": "application/json"}, self.config.timeout)


HOOK = HookType("pagerduty", PagerDutyHook, PagerDutySender)
