"""The simulated PDU's energy counter is a counter: it grows with the power drawn and holds still while the
feed is tripped, so the demo's energy column never drops to 0 on a trip (the power column says `tripped`)."""

from __future__ import annotations

from dcim.app.config import load_config
from dcim.simulators.plant import Plant
from tests.demo.busy import EXAMPLE


def test_energy_counter_grows_with_power_and_holds_through_a_trip() -> None:
    plant = Plant(load_config(EXAMPLE), seed=3)
    pdu = "apc-a01a"
    start = float(plant.values(pdu)["energy_kwh"])
    readings = []
    for _ in range(60):  # an hour in minutes
        plant.advance(60)
        readings.append(float(plant.values(pdu)["energy_kwh"]))
    assert readings == sorted(readings) and readings[-1] > start
    # About an hour of the feed's load: between its least and its most over the hour.
    assert 10 < readings[-1] - start < 200
    plant.inject(pdu, "feed_trip")
    before = float(plant.values(pdu)["energy_kwh"])
    for _ in range(10):
        plant.advance(60)
        values = plant.values(pdu)
        assert values["power_w"] == 0.0 and values["energy_kwh"] == before
    plant.clear(pdu, "feed_trip")
    plant.advance(60)
    assert float(plant.values(pdu)["energy_kwh"]) > before
