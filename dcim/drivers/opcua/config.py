"""Configuration of an OPC UA server (a chiller).

    - id: chiller-1
      kind: chiller
      protocol: opcua
      profile: generic-chiller
      endpoint: opc.tcp://10.0.4.21:4840
      mode: subscribe                 # subscribe (default) | poll
      publishing_interval: 1s         # how often the server sends the changes it collected
      sampling_interval: 500ms        # how often the server samples each node
      queue_size: 1                   # per monitored item; >1 keeps every change between publishes
      deadband: {type: percent, value: 0.5}   # of EURange; or {type: absolute, value: 0.1}
      security_policy: Basic256Sha256
      security_mode: SignAndEncrypt
      certificate: /etc/dcim/opcua/client.der
      private_key: /etc/dcim/opcua/client.key.pem
      application_uri: urn:dcim:client:facility-01   # must equal the URI in the certificate
      trust_list: /etc/dcim/opcua/trusted            # server certificates (or their CAs) we accept
      username: dcim
      password: credential:opcua-password
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dcim.core.config import PositiveDuration, StrictModel
from dcim.core.secrets import Secret
from dcim.drivers.base import DeviceBase


class Deadband(StrictModel):
    """Which changes the server reports in subscribe mode (an OPC UA DataChangeFilter)."""

    type: Literal["none", "absolute", "percent"] = "none"
    """none: every change; absolute: changes larger than `value` in the node's unit; percent: larger than
    `value` percent of the node's EURange (nodes without one get no deadband)."""
    value: Annotated[float, Field(ge=0, examples=[0.1, 0.5])] = 0.0
    """Size of the deadband (at most 100 for percent)."""

    @model_validator(mode="after")
    def _percent_range(self) -> Deadband:
        if self.type == "percent" and self.value > 100:
            raise ValueError("a percent deadband is at most 100")
        return self


class OpcUaDevice(DeviceBase):
    """A device reached over OPC UA (a chiller or a plant controller)."""

    protocol: Literal["opcua"]
    """OPC UA (binary, opc.tcp)."""
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$", examples=["opc.tcp://10.20.3.21:4840"])
    """Endpoint URL of the server; `host` is not used by this protocol."""
    mode: Literal["subscribe", "poll"] = "subscribe"
    """subscribe: the server reports changes (monitored items); poll: read every `interval`."""
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    """Message security policy; Basic256Sha256 needs `certificate`, `private_key` and `trust_list`."""
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    """Message security mode: None only with security_policy None."""
    certificate: str | None = Field(default=None, examples=["/etc/dcim/opcua/client.der"])
    """Our client certificate (DER or PEM), which the server must trust."""
    private_key: str | None = Field(default=None, examples=["/etc/dcim/opcua/client.key.pem"])
    """Private key of `certificate` (PEM)."""
    private_key_password: Secret | None = None
    """Pass phrase of an encrypted `private_key`, as a reference."""
    application_uri: str | None = Field(default=None, examples=["urn:dcim:client:facility-01"])
    """Our application URI; taken from the certificate's subjectAltName when not given, and must equal it
    when given (servers check it)."""
    trust_list: str | None = Field(default=None, examples=["/etc/dcim/opcua/trusted"])
    """A file or a directory of trusted server certificates (or the CAs that signed them), PEM or DER."""
    username: str | None = Field(default=None, examples=["dcim"])
    """User name for the session (with `password`); not set: anonymous."""
    password: Secret | None = None
    """Password of `username`, as a reference."""
    publishing_interval: PositiveDuration = 1.0
    """Subscribe mode: how often the server sends the changes it collected."""
    sampling_interval: PositiveDuration = 0.5
    """Subscribe mode: how often the server samples each node."""
    queue_size: Annotated[int, Field(ge=1, le=1000)] = 1
    """Subscribe mode: changes kept per node between two publishes; 1 keeps the latest only."""
    deadband: Deadband = Deadband()
    """Subscribe mode: which changes are worth reporting."""
    watchdog_interval: PositiveDuration = 1.0
    """How often the server state is probed to detect a dead connection."""
    reconnect_min: PositiveDuration = 0.5
    """First wait before reconnecting; it doubles, with jitter, up to `reconnect_max`."""
    reconnect_max: PositiveDuration = 30.0
    """Longest wait between two reconnection attempts."""

    @model_validator(mode="after")
    def _security(self) -> OpcUaDevice:
        if self.security_policy == "None":
            if self.security_mode != "None":
                raise ValueError("security_mode needs security_policy: Basic256Sha256")
        else:
            if self.security_mode == "None":
                raise ValueError(f"security_policy {self.security_policy} needs security_mode Sign or SignAndEncrypt")
            missing = [n for n in ("certificate", "private_key", "trust_list") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"security_policy {self.security_policy} needs {', '.join(missing)}")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min is above reconnect_max")
        return self
