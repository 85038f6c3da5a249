"""Configuration of an SNMP agent (a rack PDU)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dcim.core.config import PositiveDuration
from dcim.core.secrets import Secret
from dcim.drivers.base import DeviceBase


class SnmpDevice(DeviceBase):
    protocol: Literal["snmp"]
    port: Annotated[int, Field(ge=1, le=65535)] = 161
    version: Literal["1", "2c", "3"] = "2c"
    community: str = "public"
    # SET needs this (v1/v2c): without it every write is refused before anything is sent, never sent with the
    # read community. SNMPv3 writes go as `user`, whose access the agent's view decides.
    write_community: str | None = None
    # SNMPv3 (USM)
    user: str | None = None
    auth_protocol: Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"] = "none"
    auth_key: Secret | None = None
    priv_protocol: Literal["none", "des", "aes128", "aes192", "aes256"] = "none"
    priv_key: Secret | None = None
    context: str = ""
    max_repetitions: Annotated[int, Field(ge=1, le=200)] = 25
    # Bounds of one table walk, against an agent whose table never ends (each GETBULK answers the next row):
    # a column is cut off at `max_walk_rows` rows, every walk of a poll after `walk_timeout` (default: none
    # of its own, the poll `deadline` applies). A cut-off column is one BAD sample with the reason.
    max_walk_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    walk_timeout: PositiveDuration | None = None
    # Whole-poll deadline: a slow agent is cut off here, whatever its per-request timeout and retries.
    deadline: PositiveDuration | None = None
    # Who builds the messages: the driver's own BER codec (a tenth of the CPU), or pysnmp's engine, for an
    # agent whose quirks only pysnmp copes with.
    client: Literal["builtin", "pysnmp"] = "builtin"

    @model_validator(mode="after")
    def _v3(self) -> SnmpDevice:
        if self.version == "3":
            if not self.user:
                raise ValueError("SNMPv3 needs `user`")
            if self.auth_protocol != "none" and self.auth_key is None:
                raise ValueError("auth_protocol is set but auth_key is missing")
            if self.priv_protocol != "none":
                if self.auth_protocol == "none":
                    raise ValueError("SNMPv3 privacy needs authentication (set auth_protocol)")
                if self.priv_key is None:
                    raise ValueError("priv_protocol is set but priv_key is missing")
        return self
