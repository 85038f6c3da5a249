"""The /metrics text: values written exactly (a counter past a million keeps its last digits), series that
come and go between scrapes shown as they are, the label texts kept between scrapes bounded by the series,
and the text read back by a real VictoriaMetrics (its Prometheus import) as written."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from dcim.core.metrics import Registry
from tests.servers import http_request


def _series(text: str) -> dict[str, str]:
    """Each sample line's series -> its value text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = value
    return out


def test_values_are_written_exactly() -> None:
    registry = Registry()
    published = registry.counter("t_published_total", "published")
    published.inc(1_234_567)
    published.inc(2)
    ratio = registry.gauge("t_ratio", "ratio", ("kind",))
    ratio.set(0.1 + 0.2, kind="sum")
    ratio.set(2.5e-07, kind="small")
    ratio.set(math.nan, kind="nan")
    ratio.set(math.inf, kind="up")
    ratio.set(-math.inf, kind="down")
    ratio.set(-3.0, kind="negative")
    ratio.set(2.0**60, kind="huge")
    seconds = registry.summary("t_seconds", "seconds")
    seconds.observe(0.125)
    seconds.observe(1_000_000.5)
    series = _series(registry.render())
    assert series["t_published_total"] == "1234569"  # not 1.23457e+06
    assert series['t_ratio{kind="sum"}'] == "0.30000000000000004"
    assert float(series['t_ratio{kind="small"}']) == 2.5e-07
    assert series['t_ratio{kind="nan"}'] == "NaN"
    assert series['t_ratio{kind="up"}'] == "+Inf"
    assert series['t_ratio{kind="down"}'] == "-Inf"
    assert series['t_ratio{kind="negative"}'] == "-3"
    assert float(series['t_ratio{kind="huge"}']) == 2.0**60
    assert series["t_seconds_sum"] == "1000000.625"
    assert series["t_seconds_count"] == "2"


def test_series_that_come_and_go_between_scrapes_are_shown_as_they_are() -> None:
    registry = Registry()
    polls = registry.counter("t_polls_total", "polls", ("device",))
    polls.inc(device="cdu-2")
    polls.inc(device="cdu-1")
    first = registry.render()
    assert first.index('device="cdu-1"') < first.index('device="cdu-2"')  # in order
    polls.inc(device="cdu-0")
    del polls.values[("cdu-2",)]
    polls.inc(device='odd "name" \\ here')
    series = _series(registry.render())
    assert series == {'t_polls_total{device="cdu-0"}': "1", 't_polls_total{device="cdu-1"}': "1",
                      't_polls_total{device="odd \\"name\\" \\\\ here"}': "1"}
    # The same number of series, other ones: still seen (the keys, not their count, tell a change).
    del polls.values[("cdu-0",)]
    polls.inc(device="cdu-3")
    assert set(_series(registry.render())) == {
        't_polls_total{device="cdu-1"}', 't_polls_total{device="cdu-3"}',
        't_polls_total{device="odd \\"name\\" \\\\ here"}'}


def test_the_label_texts_kept_between_scrapes_stay_bounded_by_the_series() -> None:
    registry = Registry()
    online = registry.gauge("t_online", "online", ("device",))
    for generation in range(6):
        online.values.clear()
        for i in range(2_000):
            online.set(1.0, device=f"gen{generation}-{i}")
        series = _series(registry.render())
        assert len(series) == 2_000 and f't_online{{device="gen{generation}-0"}}' in series
        assert len(online.texts.labels) <= 2 * 2_000 + 1024


def test_another_process_series_are_rendered_and_kept_apart_from_the_registrys() -> None:
    registry = Registry()
    polls = registry.counter("t_polls_total", "polls", ("device",))
    polls.inc(5, device="cdu-1")
    snapshots = [{"t_polls_total": ("counter", "polls", ("device",), {("cdu-2",): 3_000_001.0}, {}),
                  "t_worker_only": ("gauge", "a worker's", ("device",), {("cdu-2",): 0.5}, {})}]
    assert _series(registry.render()) == {'t_polls_total{device="cdu-1"}': "5"}
    registry.add_remote(lambda: snapshots)
    registry.render()  # the texts kept from this scrape serve the next
    series = _series(registry.render())
    assert series == {'t_polls_total{device="cdu-1"}': "5", 't_polls_total{device="cdu-2"}': "3000001",
                      't_worker_only{device="cdu-2"}': "0.5"}
    assert polls.values == {("cdu-1",): 5.0}  # the remote series are not taken into the registry's own


@pytest.mark.e2e
def test_victoriametrics_reads_the_text_as_written(victoria_metrics: Any) -> None:
    registry = Registry()
    published = registry.counter("t_published_total", "published", ("device",))
    published.inc(123_456_789, device='cdu "1"')
    ratio = registry.gauge("t_ratio", "ratio", ("device",))
    ratio.set(0.375, device="cdu-2")
    ratio.set(2.5e-07, device="cdu-3")
    seconds = registry.summary("t_seconds", "seconds", ("device",))
    seconds.observe(1_000_000.5, device="cdu-2")
    status, body = http_request("POST", f"{victoria_metrics.url}/api/v1/import/prometheus",
                                registry.render().encode())
    assert status == 204, body
    want = {("t_published_total", 'cdu "1"'): 123_456_789, ("t_ratio", "cdu-2"): 0.375,
                   ("t_ratio", "cdu-3"): 2.5e-07, ("t_seconds_sum", "cdu-2"): 1_000_000.5,
                   ("t_seconds_count", "cdu-2"): 1}
    got: dict[tuple[str, str | None], float] = {}
    deadline = time.monotonic() + 60  # the import becomes readable within a few seconds
    while len(got) < len(want) and time.monotonic() < deadline:
        time.sleep(0.2)
        got = {(s["metric"]["__name__"], s["metric"].get("device")): s["values"][-1]
               for s in victoria_metrics.export('{__name__=~"t_.*"}')}
    assert got == want
