"""Configuration of an OPC UA server (a chiller)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dcim.secrets import Secret
from drivers.base import DeviceBase, PositiveDuration


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    mode: Literal["subscribe", "poll"] = "subscribe"
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None
    username: str | None = None
    password: Secret | None = None
    publishing_interval: PositiveDuration = 1.0
