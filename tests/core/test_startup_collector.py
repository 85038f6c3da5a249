"""Start-up builds what lives as long as the daemon (the configuration read from its file, every device's
driver and decode plans, the topology, the rules bound to their subjects) without a garbage collection in
the middle: at 21,500 devices the collector's walks of those growing heaps were most of a 37 s start."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dcim.app.config import ConfigError, load_config, load_yaml
from dcim.app.daemon import Daemon
from tests.e2e.harness import cdu_hall


@pytest.fixture
def collections() -> Iterator[list[str]]:
    """Each collection that starts while a configuration is read or parsed or a daemon built (that frame),
    with the collector's threshold so low that building anything of size would set one off if it could."""
    inside: list[str] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase != "start":
            return
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name in ("load_yaml", "parse_config", "_build"):
                inside.append(frame.f_code.co_name)
                return
            frame = frame.f_back

    thresholds = gc.get_threshold()
    gc.callbacks.append(count)
    gc.set_threshold(50)
    try:
        yield inside
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)


def test_a_configuration_is_read_without_a_collection(tmp_path: Path, collections: list[str]) -> None:
    path = cdu_hall(tmp_path, cdus=200)
    config = load_config(path)
    assert len(config.devices) == 200
    assert collections == []
    assert gc.isenabled()


async def test_a_daemon_is_built_without_a_collection(tmp_path: Path, collections: list[str]) -> None:
    config = load_config(cdu_hall(tmp_path, cdus=200))
    daemon = Daemon(config)
    assert collections == []
    assert gc.isenabled()
    assert len(daemon.coordinators) == 200
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(daemon.run(stop), 30)  # and it starts and stops as any other


def test_libyaml_and_pyyaml_read_a_configuration_alike(tmp_path: Path) -> None:
    text = (Path(cdu_hall(tmp_path, cdus=3)).read_text()
            + "notes: {a: 'x', b: 1.5e3, c: 0o17, d: yes, e: ~, f: 2026-12-05, g: [1, two, 3.0]}\n")
    path = tmp_path / "both.yaml"
    path.write_text(text)
    assert load_yaml(path) == yaml.load(text, Loader=yaml.SafeLoader)


@pytest.mark.parametrize(("text", "where", "what"), [
    ("devices: [\n  {id: a\n", "(yaml) line 3, column 1", "expected ',' or '}', but got '<stream end>'"),
    ("a: 1\n\tb: 2\n", "(yaml) line 2, column 1", "found character '\\t' that cannot start any token"),
    ("a: 1\na: 2\n", "a", "duplicate key (line 2; first at line 1)"),
])
def test_a_file_that_is_not_yaml_is_told_in_pyyamls_words(tmp_path: Path, text: str, where: str, what: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert (where, what) in caught.value.errors


async def test_the_profile_directories_are_listed_once_for_all_devices(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a configuration and building its daemon list the profile directories once each, not once a
    device (at 21,500 devices that was 1.5 s of a start, and again at every reload)."""
    from dcim.drivers import profiles

    listed: list[Path] = []
    real = profiles.available_profiles

    def counting(extra_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
        listed.append(Path("."))
        return real(extra_dirs)

    monkeypatch.setattr(profiles, "available_profiles", counting)
    monkeypatch.setattr("dcim.app.config.available_profiles", counting)
    monkeypatch.setattr("dcim.app.daemon.available_profiles", counting)
    config = load_config(cdu_hall(tmp_path, cdus=50))
    assert len(listed) == 1
    listed.clear()
    daemon = Daemon(config)
    assert len(daemon.coordinators) == 50 and len(listed) == 1
