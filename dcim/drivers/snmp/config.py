"""Configuration of an SNMP agent (a rack PDU)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dcim.core.config import PositiveDuration
from dcim.core.secrets import Secret
from dcim.drivers.base import DeviceBase


class SnmpDevice(DeviceBase):
    """A device polled over SNMP (a rack PDU)."""

    protocol: Literal["snmp"]
    """SNMP over UDP."""
    port: Annotated[int, Field(ge=1, le=65535, examples=[161])] = 161
    """UDP port of the agent."""
    version: Literal["1", "2c", "3"] = "2c"
    """SNMP version (quoted in YAML: "2c", "3"); v3 needs `user` and, for authPriv, both keys."""
    community: str = Field(default="public", examples=["public"])
    """Read community (v1/v2c). It travels in clear text: keep SNMP on a management network."""
    # SET needs this (v1/v2c): without it every write is refused before anything is sent, never sent with the
    # read community. SNMPv3 writes go as `user`, whose access the agent's view decides.
    write_community: str | None = None
    """Write community for SET (v1/v2c: outlet switching). Not set: every write is refused before anything is
    sent; the read community is never used for writes. SNMPv3 writes go as `user`."""
    user: str | None = Field(default=None, examples=["dcim"])
    """SNMPv3 (USM) user name."""
    auth_protocol: Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"] = "none"
    """SNMPv3 authentication protocol; none: noAuthNoPriv."""
    auth_key: Secret | None = None
    """SNMPv3 authentication pass phrase, as a reference (env:NAME, file:PATH or credential:NAME)."""
    priv_protocol: Literal["none", "des", "aes128", "aes192", "aes256"] = "none"
    """SNMPv3 privacy (encryption) protocol; needs authentication."""
    priv_key: Secret | None = None
    """SNMPv3 privacy pass phrase, as a reference."""
    context: str = ""
    """SNMPv3 context name (most PDUs use the empty default)."""
    max_repetitions: Annotated[int, Field(ge=1, le=200)] = 25
    """Rows asked for per GETBULK when walking a table (outlets); lower it for agents that answer large
    requests slowly or not at all."""
    # Bounds of one table walk, against an agent whose table never ends (each GETBULK answers the next row):
    # a column is cut off at `max_walk_rows` rows, every walk of a poll after `walk_timeout` (default: none
    # of its own, the poll `deadline` applies). A cut-off column is one BAD sample with the reason.
    max_walk_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """A table column is cut off after this many rows (against an agent whose table never ends); the cut-off
    column is reported as one bad sample with the reason."""
    walk_timeout: PositiveDuration | None = None
    """Time limit of the table walks of one poll; not set: only `deadline` applies."""
    deadline: PositiveDuration | None = None
    """Whole-poll deadline: a slow agent is cut off here, whatever its per-request timeout and retries. Not
    set: timeout x (retries + 1) plus a quarter second."""
    client: Literal["builtin", "pysnmp"] = "builtin"
    """Who builds the messages: the driver's own codec (a tenth of the CPU), or pysnmp's engine, for an agent
    whose quirks only pysnmp copes with."""

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
