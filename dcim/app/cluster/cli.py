"""`dcim cluster status -c FILE [--json]`: the site's nodes, shard owners, lease times and leader, as etcd
holds them (no daemon needed; any node's configuration file will do).

    site hall-1 through 10.20.0.11:2379: 3 nodes, leader dcim-b (token 31)
    NODE      LEASE LEFT  JOINED
    dcim-a    4 s / 5 s   2026-12-02 05:01:52 (3h ago)
    ...
    SHARD        OWNER     ASSIGNED  DEVICES
    rack:A01     dcim-a    dcim-a    cdu-1 pdu-a01a pdu-a01b
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cluster", help="the site's cluster of nodes (etcd): nodes, shard owners, leases, leader")
    actions = parser.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="nodes, shard owners, lease times and the leader, from etcd")
    status.add_argument("-c", "--config", required=True, help="configuration file (YAML) with a cluster section")
    status.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    status.set_defaults(func=cmd_cluster_status)


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from dcim.app.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 2
    if config.cluster is None:
        print(f"{args.config}: no cluster section: this daemon runs alone", file=sys.stderr)
        return 2
    from dcim.app.cluster.engine import EngineError

    try:
        report = asyncio.run(read_status(config))
    except EngineError as err:
        print(f"dcim: cannot read the cluster's state: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0


async def read_status(config: Any) -> dict[str, Any]:
    """The cluster's state as etcd holds it: one read of the site's keys and one lease query per node."""
    from dcim.app.cluster.engine import Etcd
    from dcim.app.cluster.shards import assign, device_groups

    cluster = config.cluster
    root = f"{cluster.prefix}/{config.site.id}/"
    etcd = Etcd(cluster.endpoints, timeout=max(1.0, cluster.ttl_seconds() / 3), credentials=cluster.credentials())
    try:
        result = await etcd.call(lambda c: c.get_prefix(root.encode()))
        members: dict[str, dict[str, Any]] = {}
        owners: dict[str, str] = {}
        leader: dict[str, Any] | None = None
        alarms = paged = 0
        for kv in result:
            kind, _, name = kv.key.decode()[len(root):].partition("/")
            if kind == "members":
                info = _json(kv.value)
                members[name] = {"lease": int(kv.lease), "joined": info.get("since")}
            elif kind == "owners":
                owners[name] = kv.value.decode()
            elif kind == "leader":
                leader = {"node": kv.value.decode(), "token": int(kv.create_revision)}
            elif kind == "alarms":
                alarms += 1
            elif kind == "paged":
                paged += 1
        for member in members.values():
            granted = await etcd.call(partial(_lease_info, lease=member["lease"]))
            member["lease_remaining_s"] = int(granted.TTL)
            member["lease_granted_s"] = int(granted.grantedTTL)
    finally:
        await etcd.close()
    enabled = {d.id for d in config.devices if d.enabled}
    groups = {g: [d for d in ds if d in enabled] for g, ds in device_groups(config).items()}
    groups = {g: ds for g, ds in groups.items() if ds}
    wanted = assign(groups, members)
    return {
        "site": config.site.id,
        "endpoint": etcd.endpoint,
        "revision": int(result.header.revision),
        "leader": leader,
        "nodes": members,
        "shards": {g: {"owner": owners.get(g), "assigned": wanted.get(g), "devices": ds}
                   for g, ds in sorted(groups.items())},
        "alarms_shared": alarms,
        "alarms_paged": paged,
    }


async def _lease_info(client: Any, *, lease: int) -> Any:
    return await client.get_lease_info(lease, keys=False)


def _json(value: bytes) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def render(report: dict[str, Any]) -> str:
    leader = report["leader"]
    lead = f"leader {leader['node']} (token {leader['token']})" if leader else "NO LEADER"
    lines = [f"site {report['site']} through {report['endpoint']}: {len(report['nodes'])} nodes, {lead}", ""]
    lines.append(f"{'NODE':24}  {'LEASE LEFT':12}  JOINED")
    now = time.time()
    for name, node in sorted(report["nodes"].items()):
        joined = node.get("joined")
        when = "-"
        if isinstance(joined, int | float):
            stamp = datetime.fromtimestamp(joined, UTC).strftime("%Y-%m-%d %H:%M:%S")
            when = f"{stamp} ({_age(now - joined)} ago)"
        left = f"{node['lease_remaining_s']} s / {node['lease_granted_s']} s"
        lines.append(f"{name:24}  {left:12}  {when}")
    lines += ["", f"{'SHARD':20}  {'OWNER':24}  {'ASSIGNED':24}  DEVICES"]
    for group, shard in report["shards"].items():
        owner = shard["owner"] or "(none: not polled)"
        moving = "" if shard["owner"] == shard["assigned"] else "  (moving)"
        lines.append(f"{group:20}  {owner:24}  {shard['assigned'] or '-':24}  {' '.join(shard['devices'])}{moving}")
    lines += ["", f"alarms shared: {report['alarms_shared']}, paged and active: {report['alarms_paged']}"]
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
