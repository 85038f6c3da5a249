"""Where each device and rack stands: the static tags of every series it writes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import Field

from dcim.core.config import DeviceKind, Id, StrictModel


class Feed(StrictModel):
    pdu: Id
    breaker_a: Annotated[float, Field(gt=0, le=1000)] = 32.0
    voltage_v: Annotated[float, Field(gt=0, le=1000)] = 230.0
    phases: Literal[1, 3] = 3


class Feeds(StrictModel):
    a: Feed | None = None
    b: Feed | None = None


class Rack(StrictModel):
    id: Id
    cooling: Literal["air", "liquid"]
    power_budget_kw: Annotated[float, Field(gt=0, le=2000)]
    feeds: Feeds = Feeds()
    # The CDU whose secondary loop (TCS) serves this rack; liquid-cooled racks need one.
    cdu: Id | None = None
    description: str = ""


class Row(StrictModel):
    id: Id
    racks: list[Rack] = Field(default_factory=list)


class Room(StrictModel):
    id: Id
    rows: list[Row] = Field(default_factory=list)


class Site(StrictModel):
    id: Id
    name: str = ""


class PlacedDevice(Protocol):
    """What the topology needs of a device's configuration (every protocol's device model has it)."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> DeviceKind: ...
    @property
    def room(self) -> str | None: ...
    @property
    def row(self) -> str | None: ...
    @property
    def rack(self) -> str | None: ...
    @property
    def feed(self) -> Literal["a", "b"] | None: ...


class Hall(Protocol):
    """The site as the layers below the application see the configuration: its places and devices."""

    @property
    def site(self) -> Site: ...
    @property
    def rooms(self) -> list[Room]: ...
    @property
    def devices(self) -> Sequence[PlacedDevice]: ...
    @property
    def state_dir(self) -> str: ...

    def racks(self) -> Iterator[tuple[Room, Row, Rack]]: ...


@dataclass(frozen=True, slots=True)
class RackPlace:
    rack: Rack
    room: str
    row: str


class Topology:
    def __init__(self, config: Hall) -> None:
        self.site = config.site.id
        self.racks: dict[str, RackPlace] = {
            rack.id: RackPlace(rack, room.id, row.id) for room, row, rack in config.racks()
        }
        self.kinds: dict[str, str] = {d.id: d.kind for d in config.devices}
        self._tags: dict[str, tuple[tuple[str, str], ...]] = {}
        # A PDU named as a rack's feed takes that rack's place and the feed letter.
        feed_of: dict[str, tuple[str, str]] = {}
        for place in self.racks.values():
            for side in ("a", "b"):
                feed = getattr(place.rack.feeds, side)
                if feed is not None:
                    feed_of[feed.pdu] = (place.rack.id, side)
        for device in config.devices:
            tags: dict[str, str] = {"site": self.site}
            rack_id = device.rack
            feed = device.feed
            if device.id in feed_of:
                rack_id, feed = rack_id or feed_of[device.id][0], feed or feed_of[device.id][1]
            if rack_id and rack_id in self.racks:
                tags["room"] = self.racks[rack_id].room
                tags["row"] = self.racks[rack_id].row
                tags["rack"] = rack_id
            if device.room:
                tags["room"] = device.room
            if device.row:
                tags["row"] = device.row
            if feed:
                tags["feed"] = feed
            tags["device"] = device.id
            self._tags[device.id] = tuple(sorted(tags.items()))
        for rack_id, place in self.racks.items():
            rack_tags = {"site": self.site, "room": place.room, "row": place.row, "rack": rack_id}
            # The CDU loop serving the rack: lets dashboards join a rack with its coolant readings.
            if place.rack.cdu:
                rack_tags["cdu"] = place.rack.cdu
            self._tags[rack_id] = tuple(sorted(rack_tags.items()))

    def tags(self, source: str) -> tuple[tuple[str, str], ...]:
        """Static tags of a device or rack id (a rack's derived metrics carry no `device` tag)."""
        return self._tags.get(source, (("site", self.site), ("device", source)))

    def racks_served_by(self, cdu: str) -> list[str]:
        return [r for r, place in self.racks.items() if place.rack.cdu == cdu]
