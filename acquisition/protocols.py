"""Assay protocols as data: TOML files in config/protocols, validated, and their plan.

``load_protocol(path)`` returns a :class:`Protocol` or raises :class:`ProtocolError` whose
message is the one line a user sees: ``<file>: <location>: <what was expected>``, with
locations like ``steps[2].duration`` (0-based, as written in the file's ``[[steps]]`` order).

Quantities carry units in the file (``"90 min"``, ``"37 C"``, ``"1 mL"``, ``"2 %"``,
``"300 rpm"``); on the model they are floats in base units, named with the unit:
``duration_s``, ``temperature_c``, ``wash_volume_ml``, ``precision_pct``, ``shaking_rpm``.

``plan(protocol)`` estimates each step's duration (touching no instrument) and
``check_protocol_command(path)`` is ``assay protocol check FILE``.
"""

from __future__ import annotations

import math
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from acquisition.commands import CompetitionModel
from acquisition.config import short_repr as _short
from acquisition.errors import ConfigError
from acquisition.quantities import (
    DURATION,
    PERCENT,
    SPEED,
    TEMPERATURE,
    TEMPERATURE_TOLERANCE,
    VOLUME,
    format_duration,
    parse_quantity,
    quantity,
)

__all__ = [
    "AMBIENT_C",
    "COUNTER_DETECTORS",
    "COUNT_OVERHEAD_S",
    "HARVEST_OVERHEAD_S",
    "HARVEST_WASH_S",
    "PLATE_WELLS",
    "STABILISE_RATE_C_PER_MIN",
    "AnalyzeStep",
    "CountStep",
    "HarvestStep",
    "IncubateStep",
    "Plan",
    "PlanStep",
    "PromptAction",
    "PromptStep",
    "Protocol",
    "ProtocolError",
    "Step",
    "WaitStep",
    "check_protocol_command",
    "expected_duration_s",
    "format_plan",
    "load_protocol",
    "parse_protocol",
    "plan",
    "protocol_from_data",
    "stabilisation_s",
]

# ---------------------------------------------------------------- planning assumptions
AMBIENT_C = 22.0  # an incubation starts from room temperature
STABILISE_RATE_C_PER_MIN = 2.0  # how fast the incubator approaches its setpoint
HARVEST_WASH_S = 20.0  # one wash cycle of the harvester
HARVEST_OVERHEAD_S = 20.0  # aspirate, vacuum up and down
PLATE_WELLS = 96
COUNTER_DETECTORS = 12  # 96 wells / 12 detectors = 8 plate positions
COUNT_OVERHEAD_S = 2.0  # plate movement and settling per position

_HOUR = 3600.0


class ProtocolError(ConfigError):
    """A protocol file is invalid; ``str(err)`` is ``<file>: <location>: <expected>``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shaking(value: object) -> float | None:
    if value == "off":
        return None
    try:
        return parse_quantity(SPEED, value, lo=100, hi=1500)
    except ValueError:
        raise ValueError("'off' or a shaking speed from 100 to 1500 rpm, like '300 rpm'") from None


class IncubateStep(_Strict):
    """Bring the plate to temperature, wait until stable, then time the incubation."""

    type: Literal["incubate"]
    instrument: str | None = Field(
        None, max_length=64, description="instrument id; default: the config's only one"
    )
    temperature_c: Annotated[float, quantity(TEMPERATURE, lo=4, hi=60)] = Field(alias="temperature")
    duration_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=72 * _HOUR)] = Field(
        alias="duration"
    )
    shaking_rpm: Annotated[float | None, BeforeValidator(_shaking)] = Field(
        None, alias="shaking", description="'off' (default) or e.g. '300 rpm'"
    )
    tolerance_c: Annotated[float, quantity(TEMPERATURE_TOLERANCE, lo=0, lo_open=True, hi=5)] = (
        Field(0.5, alias="tolerance", description="stable means within +/- this of the setpoint")
    )
    hold_s: Annotated[float, quantity(DURATION, lo=0, hi=_HOUR)] = Field(
        300.0, alias="hold", description="stable this long before the timer starts"
    )
    on_excursion: Literal["pause", "abort"] = "pause"
    grace_s: Annotated[float, quantity(DURATION, lo=0, hi=_HOUR)] = Field(
        120.0, alias="grace", description="out of tolerance this long before on_excursion acts"
    )


class HarvestStep(_Strict):
    """Filter the plate onto a mat: prewet the filter, wash, dry."""

    type: Literal["harvest"]
    instrument: str | None = Field(
        None, max_length=64, description="instrument id; default: the config's only one"
    )
    prewet_s: Annotated[float, quantity(DURATION, lo=0, hi=600)] = Field(alias="prewet")
    washes: StrictInt = Field(ge=1, le=10)
    wash_volume_ml: Annotated[float, quantity(VOLUME, lo=0, lo_open=True, hi=5)] = Field(
        alias="wash_volume", description="per well and wash"
    )
    dry_s: Annotated[float, quantity(DURATION, lo=0, hi=600)] = Field(alias="dry")
    buffer: str | None = Field(None, max_length=200, description="free text, e.g. 'ice-cold'")


class CountStep(_Strict):
    """Count the filter mat: each well for count_time, or less once precision is reached."""

    type: Literal["count"]
    instrument: str | None = Field(
        None, max_length=64, description="instrument id; default: the config's only one"
    )
    isotope: Literal["H3", "C14", "P32", "I125"]
    count_time_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=24 * _HOUR)] = Field(
        alias="count_time", description="per well"
    )
    precision_pct: Annotated[float | None, quantity(PERCENT, lo=0, lo_open=True, hi=100)] = Field(
        None, alias="precision", description="stop a well early at this %2-sigma"
    )


PromptAction = Literal["plate_to_incubator", "plate_to_harvester", "mat_to_counter"]


class PromptStep(_Strict):
    """Ask the operator to do something (load the plate, move the mat) and wait for them.

    ``action`` names the physical step, so that on a simulated bench the virtual operator
    can do it (acquisition/engine/operator.py); a prompt without one is only answered.
    """

    type: Literal["prompt"]
    text: str = Field(min_length=1, max_length=500)
    action: PromptAction | None = None
    timeout_s: Annotated[float | None, quantity(DURATION, lo=0, lo_open=True)] = Field(
        None, alias="timeout", description="no answer by then: the run pauses"
    )


class AnalyzeStep(_Strict):
    """Fit the last count (acquisition/analysis), constants named as in Prism."""

    type: Literal["analyze"]
    model: CompetitionModel
    competitor: str = Field(min_length=1, max_length=100)
    constants: dict[str, StrictFloat] = Field(default_factory=dict)
    rate: Literal["ccpm", "cpm"] = "ccpm"


class WaitStep(_Strict):
    type: Literal["wait"]
    duration_s: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=72 * _HOUR)] = Field(
        alias="duration"
    )


Step = Annotated[
    IncubateStep | HarvestStep | CountStep | PromptStep | AnalyzeStep | WaitStep,
    Field(discriminator="type"),
]
_STEP_TYPES = ("incubate", "harvest", "count", "prompt", "analyze", "wait")


class Protocol(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    description: str = Field("", max_length=2000)
    steps: list[Step] = Field(min_length=1)


# --------------------------------------------------------------------------- loading


def load_protocol(path: Path | str) -> Protocol:
    """Read and validate a protocol file; ProtocolError with a one-line message."""
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise ProtocolError(source, "(file)", "an existing TOML file (not found)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(source, "(syntax)", "a UTF-8 text file") from exc
    except OSError as exc:
        raise ProtocolError(source, "(file)", f"a readable file ({exc.strerror})") from exc
    return parse_protocol(text, source=source)[0]


def parse_protocol(text: str, *, source: str = "protocol") -> tuple[Protocol, dict[str, Any]]:
    """Validate a protocol file's text; the protocol and the file's data as parsed (what a
    run's start document records, so that a resume runs exactly the same protocol)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(source, "(syntax)", f"valid TOML ({exc})") from exc
    return protocol_from_data(data, source=source), data


def protocol_from_data(data: dict[str, Any], *, source: str = "protocol") -> Protocol:
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as exc:
        raise _one_line(source, exc) from exc
    _check_steps(source, protocol)
    return protocol


def _check_steps(source: str, protocol: Protocol) -> None:
    """What a single step cannot know: order, and the analysis model's constants."""
    counted = False
    for i, step in enumerate(protocol.steps):
        if isinstance(step, CountStep):
            counted = True
        elif isinstance(step, AnalyzeStep):
            if not counted:
                raise ProtocolError(
                    source, f"steps[{i}]", "an analyze step after a count step (nothing counted)"
                )
            _check_constants(source, f"steps[{i}].constants", step)


def _check_constants(source: str, loc: str, step: AnalyzeStep) -> None:
    from acquisition.analysis.models import MODELS

    needed = MODELS[step.model].constants
    for name, value in step.constants.items():
        if name not in needed:
            known = ", ".join(needed) if needed else "none"
            raise ProtocolError(
                source, f"{loc}.{name}", f"a constant of {step.model} (known: {known})"
            )
        if not (math.isfinite(value) and value > 0):
            raise ProtocolError(source, f"{loc}.{name}", f"a positive number (got {value!r})")
    missing = [c for c in needed if c not in step.constants]
    if missing:
        raise ProtocolError(
            source, loc, f"{', '.join(needed)} for {step.model} (missing {', '.join(missing)})"
        )


def _one_line(source: str, exc: ValidationError) -> ProtocolError:
    err = exc.errors(include_url=False)[0]
    raw_loc = tuple(err.get("loc", ()))
    loc = _format_loc(raw_loc)
    kind = err.get("type")
    msg = str(err.get("msg", "a valid value")).removeprefix("Value error, ")
    msg = msg.removeprefix("Input should be ")
    if kind == "union_tag_invalid":
        loc = f"{loc}.type"
        tag = err.get("ctx", {}).get("tag")
        msg = f"a step type: one of {', '.join(_STEP_TYPES)} (got {_short(tag)})"
    elif kind == "union_tag_not_found":
        loc = f"{loc}.type"
        msg = f"a step type: one of {', '.join(_STEP_TYPES)} (this key is required)"
    elif kind == "extra_forbidden":
        msg = "no such setting (check the spelling)"
    elif kind == "missing":
        msg = "a value (this setting is required)"
    elif kind == "too_short" and raw_loc == ("steps",):
        msg = "at least one step ([[steps]] with a type)"
    elif kind == "literal_error":
        msg = f"one of {msg} (got {_short(err.get('input'))})"
    elif "input" in err:
        msg = f"{msg} (got {_short(err['input'])})"
    return ProtocolError(source, loc or "(top level)", msg)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for n, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _STEP_TYPES and n >= 2 and isinstance(loc[n - 1], int):
            continue  # the discriminated-union tag adds noise to the path
        else:
            out += f".{part}" if out else str(part)
    return out


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlanStep:
    number: int  # 1-based, as printed; the file location is steps[number - 1]
    type: str
    settings: str
    duration_s: float  # expected; 0 for operator time and the analysis
    note: str


@dataclass(frozen=True)
class Plan:
    protocol: Protocol
    steps: tuple[PlanStep, ...]

    @property
    def total_s(self) -> float:
        return sum(s.duration_s for s in self.steps)

    @property
    def prompts(self) -> int:
        return sum(1 for s in self.steps if s.type == "prompt")


def plan(protocol: Protocol) -> Plan:
    """Each step's settings and expected duration, from the planning assumptions above."""
    return Plan(protocol, tuple(_plan_step(i + 1, s) for i, s in enumerate(protocol.steps)))


def expected_duration_s(step: Step) -> float:
    """One step's expected duration (0 for operator time and the analysis), as planned."""
    return _plan_step(1, step).duration_s


def stabilisation_s(step: IncubateStep) -> float:
    """Estimated time to reach the setpoint from ambient plus the stability hold."""
    ramp_s = abs(step.temperature_c - AMBIENT_C) / STABILISE_RATE_C_PER_MIN * 60.0
    return ramp_s + step.hold_s


def _plan_step(number: int, step: IncubateStep | HarvestStep | CountStep | PromptStep |
               AnalyzeStep | WaitStep) -> PlanStep:  # fmt: skip
    d = format_duration
    match step:
        case IncubateStep():
            shaking = "no shaking" if step.shaking_rpm is None else f"{step.shaking_rpm:g} rpm"
            settings = (
                f"{step.temperature_c:g} C for {d(step.duration_s)}, {shaking}; timer starts "
                f"once within +/-{step.tolerance_c:g} C for {d(step.hold_s)}; out of tolerance "
                f"for {d(step.grace_s)}: {step.on_excursion}"
            )
            stab = stabilisation_s(step)
            note = f"stabilisation ~{d(stab)} + {d(step.duration_s)}"
            return PlanStep(number, step.type, settings, stab + step.duration_s, note)
        case HarvestStep():
            settings = (
                f"prewet {d(step.prewet_s)}, {step.washes} x {_volume(step.wash_volume_ml)}"
                f"{' ' + step.buffer if step.buffer else ''}, dry {d(step.dry_s)}"
            )
            total = step.prewet_s + step.washes * HARVEST_WASH_S + step.dry_s + HARVEST_OVERHEAD_S
            return PlanStep(number, step.type, settings, total, "")
        case CountStep():
            positions = math.ceil(PLATE_WELLS / COUNTER_DETECTORS)
            stop = "" if step.precision_pct is None else f" or {step.precision_pct:g} % 2-sigma"
            settings = f"{step.isotope}, {d(step.count_time_s)} per well{stop}"
            total = positions * (step.count_time_s + COUNT_OVERHEAD_S)
            note = (
                f"{positions} positions x ({d(step.count_time_s)} + {COUNT_OVERHEAD_S:g} s), "
                f"{COUNTER_DETECTORS}-detector counter"
            )
            if step.precision_pct is not None:
                note += "; at most (precision may stop wells early)"
            return PlanStep(number, step.type, settings, total, note)
        case PromptStep():
            timeout = "" if step.timeout_s is None else f" (timeout {d(step.timeout_s)})"
            return PlanStep(number, step.type, f"{step.text!r}{timeout}", 0.0, "not counted")
        case AnalyzeStep():
            consts = ", ".join(f"{k}={v:g}" for k, v in step.constants.items())
            settings = f"{step.model} on {step.competitor}" + (f" ({consts})" if consts else "")
            return PlanStep(number, step.type, settings, 0.0, "not counted")
        case WaitStep():
            return PlanStep(number, step.type, d(step.duration_s), step.duration_s, "")
    raise AssertionError(step)  # pragma: no cover - the union is exhaustive


def _volume(ml: float) -> str:
    return f"{ml:g} mL" if ml >= 1 else f"{ml * 1000:g} uL"


def format_plan(p: Plan, source: str) -> str:
    lines = [f"protocol {p.protocol.name} ({source})"]
    if p.protocol.description:
        lines.append(f"  {p.protocol.description}")
    width = max(len(s.type) for s in p.steps)
    for s in p.steps:
        expected = f"~{format_duration(s.duration_s)}"
        if s.type == "prompt":
            expected = "operator time"
        elif s.type == "analyze":
            expected = "a few seconds"
        lines.append(f"  {s.number:>2}. {s.type:<{width}}  {s.settings}")
        lines.append(f"      {'':<{width}}  expected {expected}" + (f" ({s.note})" if s.note
                                                                       else ""))  # fmt: skip
    total = f"expected duration: ~{format_duration(p.total_s)}"
    if p.prompts:
        total += f" plus operator time at {p.prompts} prompt{'s' if p.prompts > 1 else ''}"
        total += " (not counted)"
    lines.append(total)
    return "\n".join(lines)


def check_protocol_command(path: Path) -> int:
    """``assay protocol check FILE``: print the plan and return 0, or print one error line to
    stderr (``assay: <file>: <location>: <expected>``) and return 2. Never raises."""
    try:
        protocol = load_protocol(path)
        text = format_plan(plan(protocol), str(path))
    except ProtocolError as exc:
        print(f"assay: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback at the bench
        print(f"assay: {path}: (internal): {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
