"""The `cluster:` section: which etcd to coordinate through, who this node is, how long its lease lives."""

from __future__ import annotations

import hashlib
import math
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from dcim.core.config import Id, PositiveDuration, StrictModel
from dcim.core.secrets import Secret


class ClusterConfig(StrictModel):
    """Several nodes for one site (docs/scale-out.md). Not set: this daemon polls every device itself."""

    endpoints: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+:[0-9]{1,5}$")]] = Field(
        min_length=1, examples=[["10.20.0.11:2379", "10.20.0.12:2379", "10.20.0.13:2379"]])
    """etcd client endpoints as host:port (plain gRPC), every member of the etcd cluster: a node moves to the
    next one when the one it talks to stops answering."""
    node_id: Id | None = Field(default=None, examples=["dcim-a"])
    """This node's name in the cluster, unique per site; default: the host name and a hash of state_dir, so
    two instances on one host are two nodes."""
    lease_ttl: PositiveDuration = Field(default=5.0, examples=["5s"])
    """Time to live of the node's etcd lease (whole seconds, at least 2). A node that stops renewing it (dead,
    paused, cut off) loses its shards and, if it led, its leadership this long after its last renewal; a
    node that cannot renew it for this long stops its notifications and control writes itself."""
    prefix: Annotated[str, Field(pattern=r"^(/[A-Za-z0-9_.-]+)+$")] = "/dcim"
    """Key prefix in etcd; the site's keys are under {prefix}/{site id}/."""
    username: str | None = Field(default=None, examples=["dcim"])
    """etcd user, when etcd's authentication is on (`etcdctl auth enable`); the user needs read and write on
    the prefix. Not set: no authentication. The password travels in clear over plain gRPC: keep etcd on a
    trusted network."""
    password: Secret | None = None
    """Password of `username`, as a reference (env:NAME, file:PATH or credential:NAME), never inline."""

    @model_validator(mode="after")
    def _user_and_password_together(self) -> ClusterConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("cluster.username and cluster.password go together: set both or neither")
        return self

    def credentials(self) -> tuple[str | None, str | None]:
        return self.username, self.password.get_secret_value() if self.password is not None else None

    @field_validator("lease_ttl")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        if value < 2:
            raise ValueError("lease_ttl must be at least 2 s: etcd grants leases in whole seconds and a shorter "
                             "one expires on a single slow renewal")
        return float(math.ceil(value))

    def ttl_seconds(self) -> int:
        return int(self.lease_ttl)

    def node_name(self, state_dir: str) -> str:
        if self.node_id is not None:
            return self.node_id
        where = hashlib.blake2b(str(Path(state_dir).resolve()).encode(), digest_size=4).hexdigest()
        host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname()) or "node"
        return f"{host[:50]}-{where}"
