"""Another process' series (a poll worker's, sent as a snapshot) in this registry's /metrics: one family per
name, the same series summed, a worker's counters carried over its restart, its gauges not."""

from __future__ import annotations

import marshal

from dcim.app.pollworker import Framed
from dcim.app.pollworkers import WorkerProcess
from dcim.core.metrics import Registry, Snapshot


def worker_registry() -> Registry:
    registry = Registry()
    registry.counter("t_requests_total", "requests", ("gateway",)).inc(3, gateway="10.0.0.1:502")
    registry.counter("t_all_total", "all").inc(5)
    registry.gauge("t_connected", "connected", ("gateway",)).set(1, gateway="10.0.0.1:502")
    registry.summary("t_seconds", "seconds", ("gateway",)).observe(0.5, gateway="10.0.0.1:502")
    registry.counter("t_unused_total", "never counted")
    return registry


def test_a_snapshot_renders_with_the_registrys_own_series() -> None:
    snapshot = marshal.loads(marshal.dumps(worker_registry().snapshot()))  # as it crosses the socket
    assert "t_unused_total" not in snapshot  # families without a series are not sent
    daemon = Registry()
    daemon.counter("t_all_total", "all").inc(2)
    daemon.counter("t_requests_total", "requests", ("gateway",)).inc(1, gateway="10.0.0.2:502")
    daemon.add_remote(lambda: [snapshot])
    text = daemon.render()
    assert text.count("# TYPE t_requests_total counter") == 1
    assert 't_requests_total{gateway="10.0.0.1:502"} 3' in text and 't_requests_total{gateway="10.0.0.2:502"} 1' in text
    assert "t_all_total 7" in text  # the same series in both processes: summed
    assert 't_connected{gateway="10.0.0.1:502"} 1' in text  # a family only the worker has
    assert 't_seconds_sum{gateway="10.0.0.1:502"} 0.5' in text and 't_seconds_count{gateway="10.0.0.1:502"} 1' in text
    source = daemon._remotes[0]
    daemon.remove_remote(source)
    assert "10.0.0.1" not in daemon.render()


def test_a_workers_counters_carry_over_its_restart_and_its_gauges_do_not() -> None:
    worker = WorkerProcess(0, "info", "auto")
    first: Snapshot = worker_registry().snapshot()
    worker.snapshot = first
    worker._retire(Framed(lambda message: None, lambda exc: None))  # the process exited
    second = Registry()
    second.counter("t_requests_total", "requests", ("gateway",)).inc(1, gateway="10.0.0.1:502")
    worker.snapshot = second.snapshot()  # its next life, counting from zero
    daemon = Registry()
    daemon.add_remote(lambda: [worker.carried, worker.snapshot])
    text = daemon.render()
    assert 't_requests_total{gateway="10.0.0.1:502"} 4' in text
    assert "t_all_total 5" in text and 't_seconds_count{gateway="10.0.0.1:502"} 1' in text
    assert "t_connected{" not in text  # how things were in a life that is over
