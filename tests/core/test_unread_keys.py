"""The BAD samples of a device whose polls fail before it was ever read take their keys (point, measurement,
tags) from its profile, worked out once per profile and not at every failed poll: with a whole hall
unreachable at a start, working them out each time was most of the daemon's CPU. The keys themselves are
checked against a real PDU's readings in tests/drivers/test_snmp_driver.py."""

from __future__ import annotations

import pytest

from dcim.app import poller
from dcim.app.poller import unread_keys
from dcim.drivers.profiles import load_profile


@pytest.mark.parametrize("name", ["generic-cdu", "raritan-px", "apc-rpdu2", "generic-chiller"])
def test_a_profiles_keys_are_worked_out_once(name: str) -> None:
    profile = load_profile(name)
    keys = unread_keys(profile)
    assert unread_keys(profile) is keys
    assert keys == tuple(
        (p.name, profile.measurement(p), tuple(sorted((getattr(p, "tags", None) or {}).items())))
        for p in profile.points if not getattr(p, "index_tag", None) and getattr(p, "readable", True))
    assert keys and all(type(tags) is tuple for _, _, tags in keys)


def test_another_profile_object_gets_its_own_and_the_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile("generic-cdu")
    copy = profile.model_copy(update={"points": profile.points[:3]})
    assert len(unread_keys(copy)) == 3 and len(unread_keys(profile)) == len(profile.points)
    monkeypatch.setattr(poller._UNREAD, "limit", 4)
    copies = [profile.model_copy() for _ in range(20)]  # kept alive: twenty ids at once
    for other in copies:
        assert unread_keys(other) == unread_keys(profile)
        assert len(poller._UNREAD) <= 4
