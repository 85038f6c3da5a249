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
    # percent: of the node's EURange (read from the server; nodes without one get no deadband).
    type: Literal["none", "absolute", "percent"] = "none"
    value: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _percent_range(self) -> Deadband:
        if self.type == "percent" and self.value > 100:
            raise ValueError("a percent deadband is at most 100")
        return self


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$")
    mode: Literal["subscribe", "poll"] = "subscribe"
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = None
    private_key: str | None = None
    private_key_password: Secret | None = None
    # Our application URI: taken from the client certificate's subjectAltName when not given; when given
    # with a certificate, the two must agree (servers check it).
    application_uri: str | None = None
    # A file or a directory of trusted server certificates (or the CAs that signed them), PEM or DER.
    trust_list: str | None = None
    username: str | None = None
    password: Secret | None = None
    publishing_interval: PositiveDuration = 1.0
    sampling_interval: PositiveDuration = 0.5
    queue_size: Annotated[int, Field(ge=1, le=1000)] = 1
    deadband: Deadband = Deadband()
    # Dead-connection detection: the client probes the server state this often.
    watchdog_interval: PositiveDuration = 1.0
    # Reconnect backoff: doubles from `reconnect_min` up to `reconnect_max`, with jitter.
    reconnect_min: PositiveDuration = 0.5
    reconnect_max: PositiveDuration = 30.0

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
