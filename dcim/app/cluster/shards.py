"""Shards: the site's devices in groups that stay together, and which live node owns each group.

A group keeps what the rules evaluate together on one node: a rack's feed PDUs, the CDU whose loop serves the
rack, and every other rack on that same CDU loop (a CDU serving racks A01 and A02 puts both racks, their PDUs
and the CDU in one group). A device that names its rack (`rack:`) joins that rack's group. Devices tied to no
rack (chillers, plant meters) form one group per room they name, or one of their own: the configuration does
not say which racks a chiller serves, so the plant is not split by rack.

Assignment is rendezvous (highest random weight) hashing of the group id over the live node ids: every node
computes the same owner from the same member list, a node that leaves moves only its own groups (each to the
node that ranks second for it), and a node that joins takes only the groups it now ranks first for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from dcim.core.topology import Hall


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # A rack's name wins over a device's, then the smaller name: the group id is that of its first
            # rack whatever the order of the configuration.
            low, high = sorted((ra, rb), key=lambda name: (not name.startswith("rack:"), name))
            self.parent[high] = low


def device_groups(hall: Hall) -> dict[str, list[str]]:
    """Group id -> device ids (enabled or not: the caller filters). Rack groups are named `rack:<first rack>`,
    the others `room:<room>` or `device:<id>`."""
    union = _Union()
    for _room, _row, rack in hall.racks():
        node = f"rack:{rack.id}"
        union.find(node)
        for side in ("a", "b"):
            feed = getattr(rack.feeds, side)
            if feed is not None:
                union.join(node, f"device:{feed.pdu}")
        if rack.cdu:
            union.join(node, f"device:{rack.cdu}")
    for device in hall.devices:
        node = f"device:{device.id}"
        if device.rack:
            union.join(f"rack:{device.rack}", node)
    room_of = {d.id: d.room for d in hall.devices}
    groups: dict[str, list[str]] = {}
    for device in hall.devices:
        root = union.find(f"device:{device.id}")
        if not root.startswith("rack:"):
            # On no rack (a chiller, a plant meter): with the room's other plant devices, else alone.
            room = room_of.get(device.id)
            root = f"room:{room}" if room else root
        groups.setdefault(root, []).append(device.id)
    return {name: sorted(devices) for name, devices in sorted(groups.items())}


def rack_groups(hall: Hall, groups: Mapping[str, list[str]]) -> dict[str, str]:
    """Rack id -> the group its devices are in (a rack without devices: its own rack group)."""
    group_of = {device: group for group, devices in groups.items() for device in devices}
    out: dict[str, str] = {}
    for _room, _row, rack in hall.racks():
        found = [f.pdu for f in (rack.feeds.a, rack.feeds.b) if f is not None] + ([rack.cdu] if rack.cdu else [])
        out[rack.id] = next((group_of[d] for d in found if d in group_of), f"rack:{rack.id}")
    return out


def weight(group: str, node: str) -> int:
    digest = hashlib.blake2b(f"{group}\x00{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(group: str, nodes: Iterable[str]) -> str | None:
    """The node that ranks highest for `group` (ties, which a 64-bit hash makes unlikely, by name)."""
    best: tuple[int, str] | None = None
    for node in nodes:
        candidate = (weight(group, node), node)
        if best is None or candidate > best:
            best = candidate
    return best[1] if best is not None else None


def assign(groups: Iterable[str], nodes: Iterable[str]) -> dict[str, str | None]:
    live = sorted(set(nodes))
    return {group: owner(group, live) for group in groups}
