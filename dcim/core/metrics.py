"""Process metrics in the Prometheus text format: counters, gauges and summaries, no dependency.

    POLLS = REGISTRY.counter("dcim_polls_total", "Device polls", ("device", "result"))
    POLLS.inc(device="cdu-1", result="ok")
    REGISTRY.render()  ->  '# HELP dcim_polls_total Device polls\\n# TYPE ...\\ndcim_polls_total{...} 1\\n'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# A registry's series as plain data (`Registry.snapshot`), for another process' registry to render with its
# own (`Registry.add_remote`): name -> (kind, help, label names, values, summaries' counts).
Snapshot = dict[str, tuple[str, str, tuple[str, ...], dict[tuple[str, ...], float], dict[tuple[str, ...], int]]]


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
        self.texts = _Texts(labels)  # kept between scrapes (`_render`)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        names = self.label_names
        if not names:
            return ()
        return tuple([str(labels[n]) for n in names])

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        return _render(self.name, self.kind, self.help, self.label_names, self.values, {}, self.texts)


class _Texts:
    """What a metric's text keeps from one scrape to the next: its series' keys in order and each series'
    label text (escaped once, not at every scrape). Made again when the series change; the label texts of
    series gone are dropped once they outnumber the live ones (so they stay bounded by the series)."""

    __slots__ = ("keys", "label_names", "labels", "order")

    def __init__(self, label_names: tuple[str, ...] = ()) -> None:
        self.label_names = label_names
        self.keys: frozenset[tuple[str, ...]] = frozenset()
        self.order: list[tuple[str, ...]] = []
        self.labels: dict[tuple[str, ...], str] = {}

    def update(self, label_names: tuple[str, ...], values: dict[tuple[str, ...], float]) -> None:
        if label_names != self.label_names:
            self.label_names, self.labels = label_names, {}
        elif values.keys() == self.keys:
            return
        self.keys = frozenset(values)
        self.order = sorted(self.keys)

    def trim(self) -> None:
        if len(self.labels) > 2 * len(self.keys) + 1024:
            self.labels = {key: text for key, text in self.labels.items() if key in self.keys}


def _number(value: float) -> str:
    """A sample value as the text format reads it, exactly: an integral value as an integer (a counter past
    a million keeps its last digits), any other finite one as its shortest repr, else NaN / +Inf / -Inf."""
    if type(value) is int:
        return str(value)
    if value - value == 0.0:
        if value.is_integer() and -9007199254740992.0 <= value <= 9007199254740992.0:  # 2**53
            return str(int(value))
        return repr(float(value))
    if value != value:
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _render(name: str, kind: str, help_text: str, label_names: tuple[str, ...], values: dict[tuple[str, ...], float],
            counts: dict[tuple[str, ...], int], texts: _Texts | None = None) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    if texts is None:
        texts = _Texts()
    texts.update(label_names, values)
    labels = texts.labels
    number = _number
    if kind == "summary":
        sum_name, count_name = f"{name}_sum", f"{name}_count"
        for key in texts.order:
            label_text = labels.get(key)
            if label_text is None:
                label_text = labels[key] = _labels(label_names, key)
            lines.append(f"{sum_name}{label_text} {number(values[key])}")
            lines.append(f"{count_name}{label_text} {counts.get(key, 0)}")
    else:
        for key in texts.order:
            label_text = labels.get(key)
            if label_text is None:
                label_text = labels[key] = _labels(label_names, key)
            lines.append(f"{name}{label_text} {number(values[key])}")
    texts.trim()
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
        return _render(self.name, self.kind, self.help, self.label_names, self.values, self.counts, self.texts)


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
        # Other processes' series (poll workers), rendered with this registry's: each source gives snapshots.
        self._remotes: list[Callable[[], Iterable[Snapshot]]] = []
        # The texts of series only other processes have, by metric name (the names are the code's: bounded).
        self._remote_texts: dict[str, _Texts] = {}

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

    def add_remote(self, source: Callable[[], Iterable[Snapshot]]) -> None:
        self._remotes.append(source)

    def remove_remote(self, source: Callable[[], Iterable[Snapshot]]) -> None:
        if source in self._remotes:
            self._remotes.remove(source)

    def snapshot(self) -> Snapshot:
        """Every series with a value, as plain data (`marshal`-able) for another process to render."""
        for collect in self._collectors:
            collect()
        return {m.name: (m.kind, m.help, m.label_names, dict(m.values),
                         dict(m.counts) if isinstance(m, Summary) else {})
                for m in self._metrics.values() if m.values}

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        remote: Snapshot = {}
        for source in self._remotes:
            for snapshot in source():
                for name, (kind, help_text, label_names, values, counts) in snapshot.items():
                    got = remote.get(name)
                    if got is None:
                        remote[name] = (kind, help_text, label_names, dict(values), dict(counts))
                    elif got[0] == kind and got[2] == label_names:
                        _add(got[3], values)
                        _add(got[4], counts)
        lines: list[str] = []
        for metric in self._metrics.values():
            other = remote.pop(metric.name, None)
            if other is None or other[0] != metric.kind or other[2] != metric.label_names:
                lines += metric.render()
                continue
            # The same series in several processes (a counter of all devices): summed; per-device series
            # are each in one process only.
            values, counts = dict(metric.values), dict(metric.counts) if isinstance(metric, Summary) else {}
            _add(values, other[3])
            _add(counts, other[4])
            lines += _render(metric.name, metric.kind, metric.help, metric.label_names, values, counts, metric.texts)
        for name, (kind, help_text, label_names, values, counts) in remote.items():
            texts = self._remote_texts.get(name)
            if texts is None:
                texts = self._remote_texts[name] = _Texts(label_names)
            lines += _render(name, kind, help_text, label_names, values, counts, texts)
        return "\n".join(lines) + "\n"


def _add(into: dict[Any, Any], values: dict[Any, Any]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0) + value


REGISTRY = Registry()
