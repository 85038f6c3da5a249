"""A metric's child (its series for fixed labels, the key made once) counts into the same series as the
labelled calls, and shows in the rendered text the same way."""

from __future__ import annotations

from dcim.core.metrics import Registry


def test_a_child_writes_the_series_its_labels_name() -> None:
    registry = Registry()
    polls = registry.counter("t_polls_total", "polls", ("device", "result"))
    online = registry.gauge("t_online", "online", ("device",))
    seconds = registry.summary("t_seconds", "seconds", ("device",))
    ok = polls.child(device="cdu-1", result="ok")
    ok.inc()
    ok.inc(2)
    polls.inc(device="cdu-1", result="ok")
    polls.child(device="cdu-2", result="error").inc()
    online.child(device="cdu-1").set(1.0)
    online.child(device="cdu-1").set(0.0)
    child = seconds.child(device="cdu-1")
    child.observe(0.25)
    seconds.observe(0.5, device="cdu-1")
    assert polls.get(device="cdu-1", result="ok") == 4.0
    assert polls.get(device="cdu-2", result="error") == 1.0
    assert online.get(device="cdu-1") == 0.0
    text = registry.render()
    assert 't_polls_total{device="cdu-1",result="ok"} 4' in text
    assert 't_seconds_sum{device="cdu-1"} 0.75' in text and 't_seconds_count{device="cdu-1"} 2' in text
