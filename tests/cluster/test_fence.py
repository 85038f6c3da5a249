"""The write fence against a real etcd, step by step: no background session, the node's state set by hand, so
each refusal is the one named (etcd's compare of the owner key's create revision, or the node's own clock)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest
import yaml

from dcim.app.cluster.engine import transact, txn_revision
from dcim.app.cluster.node import ClusterNode
from dcim.app.config import parse_config
from tests.cluster.etcd import EtcdCluster
from tests.grafana.hall import hall_config
from tests.helpers import require_binary
from tests.systemd.test_sandbox import run_in_sandbox


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    require_binary("etcd", "etcd-server")
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1) as cluster:
        yield cluster


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _claim(client: aetcd.Client, key: bytes, value: bytes, lease: int) -> int:
    t = client.transactions
    ok, responses = await transact(client, [t.create(key) == 0], [t.put(key, value, lease)])
    assert ok
    return txn_revision(responses)


async def test_a_write_is_fenced_by_the_owner_key_s_revision_in_etcd(etcd: EtcdCluster, tmp_path: Path) -> None:
    raw: dict[str, Any] = hall_config()
    raw["state_dir"] = str(tmp_path)
    raw["cluster"] = {"endpoints": etcd.endpoints, "node_id": "node-a", "prefix": "/fence-test"}
    config = parse_config(raw)
    assert config.cluster is not None

    async def apply(devices: set[str]) -> None:
        raise AssertionError("no session runs in this test")

    clock = Clock()
    node = ClusterNode(config.cluster, config, apply=apply, notifier=None, clock=clock)
    client = aetcd.Client(host=etcd.members[0].host, port=etcd.members[0].port, timeout=5)
    await client.connect()
    try:
        mine = await client.lease(30)
        theirs = await client.lease(30)
        group = node.group_of["cdu-1"]
        key = node._key("owners", group)
        node.lease_id, node.connected, node.deadline = mine.id, True, clock.now + 5
        node.claims[group] = await _claim(client, key, b"node-a", mine.id)

        # Its own shard, its lease live: allowed, and recorded in etcd by the same transaction.
        assert await node.fence_write("cdu-1") is None
        written = await client.get(node._key("writes", "cdu-1"))
        assert written is not None and b"node-a" in written.value
        # A device of a shard it does not own: refused before etcd is asked.
        assert "does not own" in (await node.fence_write("pdu-b01a") or "")

        # Its lease gone (as after a pause longer than the TTL) and the shard taken by another node, while the
        # node still believes itself live: etcd's compare of the key's create revision refuses it.
        await mine.revoke()
        await _claim(client, key, b"node-b", theirs.id)
        reason = await node.fence_write("cdu-1")
        assert reason is not None and "no longer this node's" in reason
        # And on its own clock, past the deadline, it refuses without asking etcd.
        clock.now += 6
        assert "not live" in (await node.fence_write("cdu-1") or "")
        # etcd unreachable: refused, never allowed by default.
        node.deadline = clock.now + 5
        etcd.members[0].pause()
        try:
            reason = await asyncio.wait_for(node.fence_write("cdu-1"), 30)
        finally:
            etcd.members[0].resume()
        assert reason is not None and "cannot confirm" in reason
    finally:
        await node.etcd.close()
        await client.close()


def test_the_etcd_client_works_under_the_unit_s_sandbox(etcd: EtcdCluster, tmp_path: Path) -> None:
    """gRPC (aetcd's transport) under dcim.service's system-call filter and W^X memory rule: `dcim cluster
    status` connects, reads the site's keys and a lease, as a node does."""
    require_binary("systemd-analyze", "systemd")
    raw: dict[str, Any] = hall_config()
    raw["state_dir"] = str(tmp_path)
    raw["cluster"] = {"endpoints": etcd.endpoints, "node_id": "node-a", "prefix": "/sandbox-test"}
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_in_sandbox("dcim.app.cli", "cluster", "status", "-c", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("sandbox: "), result.stderr
    report = json.loads(result.stdout)
    assert report["site"] == "hall-1" and report["leader"] is None and report["nodes"] == {}
    assert set(report["shards"]) == {"rack:A01", "rack:A02", "rack:B01", "rack:B02", "room:plant"}
