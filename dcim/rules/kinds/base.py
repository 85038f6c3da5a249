"""What a rule kind is: a configuration model and a condition, behind a small protocol.

A rule kind decides one thing: whether its condition holds for one subject now, and with what value and
threshold. Everything else is the engine's and shared by every kind: binding rules to subjects, the alarm
state machine (pending, firing, resolved, the `for` and `clear_after` delays), hysteresis, `no_data`,
`only_if`, overrides, inhibition.

    class BandRule(RuleBase):                       # the configuration: the common fields plus its own
        kind: Literal["band"]
        low: float
        high: float

    class BandCondition(Condition[BandRule]):       # one rule bound to one subject
        def assess(self, now_ns):                   # None: no data, the alarm holds as it is
            value = self.subject.number(self.rule.metric, now_ns)
            ...
            return Assessment(value, [(Severity.WARNING, excess, None)])

        def describe(self, assessment, severity, threshold):
            return f"{self.subject.id}: {self.rule.metric} {assessment.value} outside the band"

    KIND = RuleKind("band", BandRule, BandCondition)

An assessment lists, most severe first, each severity the rule can raise with its `excess`: how far the
value is past that severity's threshold, in the metric's unit (positive: the condition holds). The engine
applies hysteresis to it: once an alarm is at a severity, the condition holds while `excess > -hysteresis`.
A kind without a notion of distance (a state) uses +inf / -inf.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar, get_args

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from dcim.core.config import Duration, PositiveDuration, StrictModel
from dcim.core.events import Severity
from dcim.core.samples import Value
from dcim.rules.metrics import Reading, Readings
from dcim.rules.model import RACK_METRICS, Threshold, parse_threshold

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
Canonical = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
# The JSON Schema of a threshold says what rules.model.parse_threshold accepts, with the same pieces: a number,
# "N% of NAME", "NAME", "NAME + N" / "NAME - N", or a number as text. tests/config/test_schema.py holds the
# two to the same verdicts.
_THRESHOLD_TEXT = (r"^\s*([-+]?\d+(\.\d+)?\s*%\s*of\s+[a-z][a-z0-9_]*"
                   r"|[a-z][a-z0-9_]*\s*([-+]\s*\d+(\.\d+)?)?"
                   r"|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
ThresholdSpec = Annotated[float | str, WithJsonSchema({
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": _THRESHOLD_TEXT}],
    "examples": [80, "85% of power_budget_kw", "supply_temp_setpoint_c + 2"],
})]


def check_threshold(value: Any) -> Any:
    """A field validator (mode "before") for threshold fields: a number or an expression (rules.model)."""
    if value is None:
        return None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        parse_threshold(value)
        return value
    raise ValueError("a threshold is a number or an expression like '80% of power_budget_kw'")


def same_value(value: Value, wanted: Value) -> bool:
    """A reading equals a configured value: text case-insensitively, numbers and booleans as numbers."""
    if isinstance(value, str) or isinstance(wanted, str):
        return str(value).lower() == str(wanted).lower()
    return float(value) == float(wanted)


class RackSelector(StrictModel):
    """Racks a rule applies to: every given field must match (none given: every rack)."""

    cooling: Literal["air", "liquid"] | None = None
    """Only racks cooled this way."""
    rooms: list[str] | None = Field(default=None, examples=[["dh1"]])
    """Only racks in these rooms."""
    rows: list[str] | None = Field(default=None, examples=[["A", "B"]])
    """Only racks in these rows."""
    ids: list[str] | None = Field(default=None, examples=[["A01", "A02"]])
    """Only these racks."""


class DeviceSelector(StrictModel):
    """Devices a rule applies to: every given field must match (none given: every device)."""

    kind: Literal["pdu", "cdu", "chiller"] | None = None
    """Only devices of this kind."""
    ids: list[str] | None = Field(default=None, examples=[["cdu-1"]])
    """Only these devices."""


class Scope(StrictModel):
    """What a rule judges: racks (their derived metrics) or devices (their points), one of the two."""

    racks: RackSelector | None = None
    """Judge racks, selected by these fields."""
    devices: DeviceSelector | None = None
    """Judge devices, selected by these fields."""

    @model_validator(mode="after")
    def _one(self) -> Scope:
        if (self.racks is None) == (self.devices is None):
            raise ValueError("a scope selects either racks or devices (e.g. {racks: {cooling: liquid}})")
        return self


class NoData(StrictModel):
    """An alarm when the rule's metric has had no good value for a while."""

    after: PositiveDuration
    """How long without a good value before the no-data alarm fires."""
    severity: Severity = Severity.WARNING
    """Severity of the no-data alarm."""


class OnlyIf(StrictModel):
    """Judge the rule only while another point of the subject has one of these values (e.g. a chiller's
    COP only while it runs); otherwise its condition counts as clear."""

    point: Canonical = Field(examples=["running"])
    """The other point of the subject."""
    match: Annotated[list[Value], Field(min_length=1, examples=[[True]])]
    """Its values while which the rule is judged."""


class Tuning(StrictModel):
    """What an override can change for one subject (a field the rule's kind lacks is left alone)."""

    enabled: bool | None = None
    """false: the rule does not judge this subject."""
    warning: ThresholdSpec | None = None
    """The warning threshold for this subject."""
    critical: ThresholdSpec | None = None
    """The critical threshold for this subject."""
    for_: Duration | None = Field(default=None, alias="for")
    """The pending period for this subject."""
    hysteresis: Annotated[float, Field(ge=0)] | None = None
    """The hysteresis for this subject (metric units)."""
    clear_after: Duration | None = None
    """The clear delay for this subject."""

    _check = field_validator("warning", "critical", mode="before")(check_threshold)


class RuleBase(StrictModel):
    """The fields every rule has, whatever its kind. A kind's model adds `kind: Literal[NAME]` and its own."""

    name: Name = Field(examples=["rack-hot-aisle"])
    """Rule name (lower case, digits, `_`, `.`, `-`); an own rule named like a built-in one replaces it."""
    description: str = ""
    """What the rule watches, in words; used in alarm messages."""
    enabled: bool = True
    """false: the rule is kept but judges nothing."""
    scope: Scope
    """Racks or devices the rule judges."""
    metric: Canonical = Field(examples=["power_kw", "utilization_pct", "supply_temp_c", "leak"])
    """Canonical point (devices) or rack metric (racks) judged."""
    kind: str
    """The rule kind: threshold (the default), rate, state, or one an installed plugin adds."""
    for_: Duration = Field(default=0.0, alias="for")
    """Pending period: the condition must hold this long before the alarm fires."""
    hysteresis: Annotated[float, Field(ge=0)] = 0.0
    """Recovery margin: the value must come back past the threshold by this much (metric units) to clear."""
    clear_after: Duration = 0.0
    """The condition must stay clear this long before the alarm resolves."""
    no_data: NoData | None = None
    """An alarm when the metric has had no good value for a while; not set: none."""
    only_if: OnlyIf | None = None
    """Judge only while another point of the subject has one of the given values."""
    category: str = Field(default="", examples=["power", "coolant", "thermal", "chiller"])
    """Alarm category; `coolant` alarms of racks are hidden while their CDU loop has a fault."""
    loop_fault: bool = False
    """A firing alarm of this rule on a CDU hides the `coolant` alarms of the racks the CDU serves."""
    message: str = ""
    """Free text kept with the rule (alarm messages are made from `description`, or the name)."""
    overrides: dict[str, Tuning] = Field(default_factory=dict, examples=[{"A01": {"warning": 70}}])
    """Per rack or device id: changes to this rule for that subject."""

    @model_validator(mode="after")
    def _rack_metric(self) -> Self:
        if self.scope.racks is not None and self.metric not in RACK_METRICS:
            raise ValueError(
                f"metric {self.metric!r} is not a rack metric (rack metrics: {', '.join(RACK_METRICS)})"
            )
        return self

    def tuned(self, tuning: Tuning | None) -> Self:
        if tuning is None:
            return self
        fields = type(self).model_fields
        update = {k: v for k, v in tuning.model_dump().items() if v is not None and k in fields}
        return self.model_copy(update=update)


class Subject:
    """A rack or a device as a rule sees it: its current values, and the attributes a threshold can name
    (a rack's `power_budget_kw`, `feed_capacity_kw`, `breaker_a`)."""

    __slots__ = ("attributes", "id", "readings")

    def __init__(self, subject_id: str, readings: Readings, attributes: dict[str, float | None]) -> None:
        self.id = subject_id
        self.readings = readings
        self.attributes = attributes

    def reading(self, point: str, now_ns: int) -> Reading | None:
        """The point's current good reading (None: missing, stale, or the device is offline)."""
        return self.readings.reading(self.id, point, now_ns)

    def number(self, point: str, now_ns: int) -> float | None:
        """The point's current value as a number (None also for a text value)."""
        return self.readings.number(self.id, point, now_ns)

    def lookup(self, name: str, now_ns: int) -> float | None:
        """An attribute of the subject, else another of its points."""
        if name in self.attributes:
            return self.attributes[name]
        return self.readings.number(self.id, name, now_ns)

    def resolve(self, threshold: Threshold, now_ns: int) -> float | None:
        """A threshold's value for this subject now (None: what it refers to has no current value)."""
        if threshold.ref is None:
            return threshold.offset
        base = self.lookup(threshold.ref, now_ns)
        return None if base is None else threshold.factor * base + threshold.offset


# (severity, excess past its threshold (> 0: the condition holds), the threshold for the record or None)
Level = tuple[Severity, float, float | None]


@dataclass(slots=True)
class Assessment:
    """What a condition found at one evaluation."""

    value: float | None  # kept on the alarm record (None: a value that is not a number)
    levels: Sequence[Level]  # most severe first; a severity whose threshold is unknown now is left out
    reading: Value | None = None  # the value as read, for the message (a text state)


R = TypeVar("R", bound=RuleBase)


class Condition(abc.ABC, Generic[R]):
    """One rule of a kind bound to one subject. Made once when the engine binds its rules."""

    # True: the engine calls `observe` with every new good value of the condition's points (a kind that
    # keeps history, such as `rate`).
    observes: ClassVar[bool] = False
    # True: `assess` depends on the subject's values alone (and on their going stale, which only takes a
    # verdict away), never on the passing of time. Then a bound rule judged clear, with no alarm and no
    # timer, cannot fire before one of `points()` has a new value, and the engine's tick does not judge it
    # again until then. False (the default, for an installed kind) judges it on every tick as well.
    timeless: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "timeless" not in cls.__dict__:
            # Not inherited: a subclass may judge with time (a kind built on `LimitCondition` whose
            # `assess` looks at the clock), so it is timeless only where it says so itself.
            cls.timeless = False
        if "assess" in cls.__dict__ and "clear" not in cls.__dict__:
            # A subclass that judges in its own way is asked through its own `assess`: a short cut of the
            # class it extends would judge what that class judges, not what this one does.
            cls.clear = Condition.clear  # type: ignore[method-assign]

    def __init__(self, rule: R, subject: Subject) -> None:
        self.rule = rule
        self.subject = subject

    def points(self) -> set[str]:
        """The subject's points whose new values re-judge the rule."""
        return {self.rule.metric}

    def observe(self, point: str, reading: Reading) -> None:
        """A new good value of one of `points()`; called only when `observes` is true."""

    @abc.abstractmethod
    def assess(self, now_ns: int) -> Assessment | None:
        """Judge the condition now. None: no current data, so the alarm holds as it is."""

    def clear(self, now_ns: int) -> bool | None:
        """For a rule with no alarm and no timer: True when `assess` finds no level past its threshold (the
        rule is clear), None when it has no verdict (no data), False otherwise (then the engine judges it in
        full, with `assess`). A kind may answer this more cheaply than `assess`, on the same values; the
        engine asks it for most judgements, since most rules are clear most of the time."""
        assessment = self.assess(now_ns)
        if assessment is None:
            return None
        return all(excess <= 0.0 for _, excess, _ in assessment.levels)

    @abc.abstractmethod
    def describe(self, assessment: Assessment, severity: Severity, threshold: float | None) -> str:
        """The alarm's message when the condition holds at `severity` (called only then)."""


@dataclass(frozen=True)
class RuleKind(Generic[R]):
    """A rule kind as registered: its `kind:` name, its configuration model, its condition."""

    name: str
    model: type[R]
    condition: Callable[[R, Subject], Condition[Any]]

    def __post_init__(self) -> None:
        field = self.model.model_fields.get("kind")
        if field is None or get_args(field.annotation) != (self.name,):
            raise TypeError(f"rule kind {self.name!r}: its model needs `kind: Literal[{self.name!r}]`")
