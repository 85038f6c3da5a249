"""Where each device and rack stands: the static tags of every series it writes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from pydantic import Field

from dcim.core.config import DeviceKind, Id, StrictModel


class Feed(StrictModel):
    """One power feed of a rack: the PDU on it and the breaker that protects it."""

    pdu: Id = Field(examples=["pdu-a01a"])
    """Id of the PDU device on this feed (a `kind: pdu` entry of `devices`)."""
    breaker_a: Annotated[float, Field(gt=0, le=1000, examples=[32, 63, 250])] = 32.0
    """Rating of the feed's upstream breaker, in amperes per phase."""
    voltage_v: Annotated[float, Field(gt=0, le=1000, examples=[230, 240, 277])] = 230.0
    """Nominal phase-to-neutral voltage of the feed, in volts."""
    phases: Literal[1, 3] = 3
    """Number of phases of the feed."""


class Feeds(StrictModel):
    """The rack's A and B feeds (2N power): either may be absent."""

    a: Feed | None = None
    """The A feed."""
    b: Feed | None = None
    """The B feed."""


class Rack(StrictModel):
    """One rack: its cooling, its power budget, its feeds and, if liquid-cooled, its CDU."""

    id: Id = Field(examples=["A01"])
    """Rack id, unique in the site (letters, digits, `_`, `.`, `-`); tag `rack` of its series."""
    cooling: Literal["air", "liquid"]
    """How the rack is cooled; a liquid-cooled rack names the CDU that serves it in `cdu`."""
    power_budget_kw: Annotated[float, Field(gt=0, le=2000, examples=[45, 150])]
    """Power the rack may draw, in kW: utilization and power rules are judged against it."""
    feeds: Feeds = Feeds()
    """The rack's power feeds and their PDUs."""
    cdu: Id | None = Field(default=None, examples=["cdu-1"])
    """Id of the CDU whose secondary loop (TCS) serves this rack; required when `cooling` is liquid."""
    description: str = ""
    """Free text for the people who read the configuration."""


class Row(StrictModel):
    """A row of racks."""

    id: Id = Field(examples=["A"])
    """Row id, unique in its room; tag `row` of its racks' series."""
    racks: list[Rack] = Field(default_factory=list)
    """The racks of the row."""


class Room(StrictModel):
    """A room (data hall) of the site."""

    id: Id = Field(examples=["dh1"])
    """Room id; tag `room` of its racks' and devices' series."""
    rows: list[Row] = Field(default_factory=list)
    """The rows of the room."""


class Site(StrictModel):
    """The site (one hall, or one part of a hall, per daemon)."""

    id: Id = Field(examples=["hall-1"])
    """Site id: the second level of every MQTT topic and tag `site` of every series."""
    name: str = Field(default="", examples=["AI hall 1"])
    """Name shown to people."""


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
