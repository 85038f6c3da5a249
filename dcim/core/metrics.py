"""Process metrics in the Prometheus text format: counters, gauges and summaries, no dependency.

    POLLS = REGISTRY.counter("dcim_polls_total", "Device polls", ("device", "result"))
    POLLS.inc(device="cdu-1", result="ok")
    REGISTRY.render()  ->  '# HELP dcim_polls_total Device polls\\n# TYPE ...\\ndcim_polls_total{...} 1\\n'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{n}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for n, v in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self.values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        names = self.label_names
        if not names:
            return ()
        return tuple([str(labels[n]) for n in names])

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {value:g}")
        return lines


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def child(self, **labels: str) -> CounterChild:
        """The series of these labels, to count on a hot path without making its key each time."""
        return CounterChild(self, self._key(labels))


class _Child:
    """One series of a metric, its labels' key made once (`child`)."""

    __slots__ = ("key", "metric")

    def __init__(self, metric: Any, key: tuple[str, ...]) -> None:
        self.metric = metric
        self.key = key


class CounterChild(_Child):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        values = self.metric.values
        values[self.key] = values.get(self.key, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = value

    def child(self, **labels: str) -> GaugeChild:
        """The series of these labels, to set on a hot path without making its key each time."""
        return GaugeChild(self, self._key(labels))


class GaugeChild(_Child):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.metric.values[self.key] = value


class Summary(_Metric):
    """Count and sum (Prometheus summary without quantiles): enough for rates and means."""

    kind = "summary"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]) -> None:
        super().__init__(name, help_text, labels)
        self.counts: dict[tuple[str, ...], int] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def child(self, **labels: str) -> SummaryChild:
        """The series of these labels, to observe on a hot path without making its key each time."""
        return SummaryChild(self, self._key(labels))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, total in sorted(self.values.items()):
            label_text = _labels(self.label_names, key)
            lines.append(f"{self.name}_sum{label_text} {total:g}")
            lines.append(f"{self.name}_count{label_text} {self.counts[key]}")
        return lines


class SummaryChild(_Child):
    __slots__ = ()

    def observe(self, value: float) -> None:
        metric, key = self.metric, self.key
        metric.values[key] = metric.values.get(key, 0.0) + value
        metric.counts[key] = metric.counts.get(key, 0) + 1


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        # Gauges read at render time (queue depths), so nobody has to push them.
        self._collectors: list[Callable[[], None]] = []

    def _get(self, cls: type[_Metric], name: str, help_text: str, labels: tuple[str, ...]) -> _Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = cls(name, help_text, labels)
        if not isinstance(metric, cls):
            raise TypeError(f"{name} is already a {metric.kind}")
        return metric

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = self._get(Counter, name, help_text, labels)
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
        metric = self._get(Gauge, name, help_text, labels)
        assert isinstance(metric, Gauge)
        return metric

    def summary(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Summary:
        metric = self._get(Summary, name, help_text, labels)
        assert isinstance(metric, Summary)
        return metric

    def add_collector(self, collect: Callable[[], None]) -> None:
        self._collectors.append(collect)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.render()
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
