"""Shards without any server: the grouping of a hall's devices, rendezvous assignment, the cluster section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dcim.app.cluster.shards import assign, device_groups, owner, rack_groups
from dcim.app.cluster_config import ClusterConfig
from dcim.app.config import ConfigError, parse_config
from tests.grafana.hall import hall_config


def test_a_rack_s_pdus_and_cdu_are_one_shard_and_the_plant_another() -> None:
    config = parse_config(hall_config())
    groups = device_groups(config)
    assert groups == {
        "rack:A01": ["cdu-1", "pdu-a01a", "pdu-a01b"],
        "rack:A02": ["cdu-2", "pdu-a02a", "pdu-a02b"],
        "rack:B01": ["pdu-b01a", "pdu-b01b"],
        "rack:B02": ["pdu-b02a", "pdu-b02b"],
        "room:plant": ["chiller-1"],
    }
    assert rack_groups(config, groups) == {"A01": "rack:A01", "A02": "rack:A02", "B01": "rack:B01",
                                           "B02": "rack:B02"}


def test_racks_on_one_cdu_loop_are_one_shard_whatever_the_order() -> None:
    raw: dict[str, Any] = hall_config()
    racks = raw["rooms"][0]["rows"][0]["racks"]
    racks[1]["cdu"] = "cdu-1"  # A02 on cdu-1's loop too
    first = device_groups(parse_config(raw))
    racks.reverse()
    raw["devices"].reverse()
    second = device_groups(parse_config(raw))
    assert first == second
    assert first["rack:A01"] == ["cdu-1", "pdu-a01a", "pdu-a01b", "pdu-a02a", "pdu-a02b"]
    # cdu-2 serves no rack now: with the other rack-less devices of its room.
    assert first["room:dh1"] == ["cdu-2"]


def test_rendezvous_moves_only_the_shards_of_the_node_that_leaves_or_joins() -> None:
    groups = [f"rack:R{n:03d}" for n in range(300)]
    nodes = ["a", "b", "c", "d"]
    before = assign(groups, nodes)
    counts = {n: sum(1 for o in before.values() if o == n) for n in nodes}
    assert all(50 <= c <= 100 for c in counts.values()), counts  # 75 each on average
    after = assign(groups, ["a", "b", "c"])
    moved = {g for g in groups if before[g] != after[g]}
    assert moved == {g for g in groups if before[g] == "d"}
    joined = assign(groups, [*nodes, "e"])
    moved = {g for g in groups if before[g] != joined[g]}
    assert moved and all(joined[g] == "e" for g in moved)
    # Every node computes the same owner whatever the order it lists the nodes in.
    assert all(owner(g, reversed(nodes)) == before[g] for g in groups)
    assert owner("rack:A01", []) is None


def test_the_cluster_section(tmp_path: Path) -> None:
    raw: dict[str, Any] = hall_config()
    assert parse_config(raw).cluster is None  # off by default
    raw["cluster"] = {"endpoints": ["10.0.0.1:2379", "etcd-2:2379"], "lease_ttl": "4.2s"}
    cluster = parse_config(raw).cluster
    assert cluster is not None and cluster.ttl_seconds() == 5 and cluster.prefix == "/dcim"
    # Two instances on one host are two nodes; a name given is kept.
    assert cluster.node_name(str(tmp_path / "a")) != cluster.node_name(str(tmp_path / "b"))
    assert ClusterConfig(endpoints=["h:1"], node_id="dcim-a").node_name("x") == "dcim-a"
    for bad, where in (({"endpoints": []}, "cluster.endpoints"),
                       ({"endpoints": ["no-port"]}, "cluster.endpoints[0]"),
                       ({"endpoints": ["h:2379"], "lease_ttl": "1s"}, "cluster.lease_ttl"),
                       ({"endpoints": ["h:2379"], "prefix": "dcim"}, "cluster.prefix")):
        raw["cluster"] = bad
        with pytest.raises(ConfigError) as err:
            parse_config(raw)
        assert [p for p, _ in err.value.errors] == [where], err.value.errors
