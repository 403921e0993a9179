"""Assay protocols as data: TOML files in config/protocols, validated, and their plan.

``load_protocol(path)`` returns a :class:`Protocol` or raises :class:`ProtocolFileError` whose
message is the one line a user sees: ``<file>: <location>: <what was expected>``, with
locations like ``steps[2].duration`` (0-based, as written in the file's ``[[steps]]`` order).

Quantities carry units in the file (``"90 min"``, ``"37 C"``, ``"1 mL"``, ``"2 %"``,
``"300 rpm"``); on the model they are floats in base units, named with the unit:
``duration_s``, ``temperature_c``, ``wash_volume_ml``, ``precision_pct``, ``shaking_rpm``.

``plan(protocol)`` estimates each step's duration (touching no instrument) and
``check_protocol_command(path)`` is ``assay protocol check FILE``.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from acquisition.config import short_repr as _short
from acquisition.errors import ConfigError
from acquisition.quantities import format_duration
from acquisition.steps.analyze import AnalyzeStep
from acquisition.steps.count import CountStep
from acquisition.steps.harvest import HarvestStep
from acquisition.steps.incubate import IncubateStep
from acquisition.steps.prompt import PromptAction, PromptStep
from acquisition.steps.registry import StepModel, registry_version, step_type, step_types
from acquisition.steps.wait import WaitStep

__all__ = [
    "AnalyzeStep",
    "CountStep",
    "HarvestStep",
    "IncubateStep",
    "Plan",
    "PlanStep",
    "PromptAction",
    "PromptStep",
    "Protocol",
    "ProtocolFileError",
    "WaitStep",
    "check_protocol_command",
    "format_plan",
    "load_protocol",
    "parse_protocol",
    "plan",
    "protocol_from_data",
]

class ProtocolFileError(ConfigError):
    """A protocol file is invalid; ``str(err)`` is ``<file>: <location>: <expected>``."""


class Protocol(BaseModel):
    """A validated protocol; ``steps`` are the registered step types' models."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    description: str = Field("", max_length=2000)
    steps: list[StepModel] = Field(min_length=1)


@cache
def _validator(version: int) -> type[Protocol]:
    """Protocol with its steps as the union of the step types registered (at ``version``)."""
    models = tuple(t.model for t in step_types().values())
    union: Any = Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007
    return create_model("Protocol", __base__=Protocol, steps=(list[union], Field(min_length=1)))


# --------------------------------------------------------------------------- loading


def load_protocol(path: Path | str) -> Protocol:
    """Read and validate a protocol file; ProtocolFileError with a one-line message."""
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise ProtocolFileError(source, "(file)", "an existing TOML file (not found)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolFileError(source, "(syntax)", "a UTF-8 text file") from exc
    except OSError as exc:
        raise ProtocolFileError(source, "(file)", f"a readable file ({exc.strerror})") from exc
    return parse_protocol(text, source=source)[0]


def parse_protocol(text: str, *, source: str = "protocol") -> tuple[Protocol, dict[str, Any]]:
    """Validate a protocol file's text; the protocol and the file's data as parsed (what a
    run's start document records, so that a resume runs exactly the same protocol)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolFileError(source, "(syntax)", f"valid TOML ({exc})") from exc
    return protocol_from_data(data, source=source), data


def protocol_from_data(data: dict[str, Any], *, source: str = "protocol") -> Protocol:
    try:
        protocol = _validator(registry_version()).model_validate(data)
    except ValidationError as exc:
        raise _one_line(source, exc) from exc
    _check_steps(source, protocol)
    return protocol


def _check_steps(source: str, protocol: Protocol) -> None:
    """What a single step cannot know: each step type's rules given the steps before it."""
    for i, step in enumerate(protocol.steps):
        check = step_type(step.type).check
        problem = check(step, protocol.steps[:i]) if check is not None else None
        if problem is not None:
            raise ProtocolFileError(source, f"steps[{i}]{problem[0]}", problem[1])


def _one_line(source: str, exc: ValidationError) -> ProtocolFileError:
    err = exc.errors(include_url=False)[0]
    raw_loc = tuple(err.get("loc", ()))
    loc = _format_loc(raw_loc)
    kind = err.get("type")
    msg = str(err.get("msg", "a valid value")).removeprefix("Value error, ")
    msg = msg.removeprefix("Input should be ")
    if kind == "union_tag_invalid":
        loc = f"{loc}.type"
        tag = err.get("ctx", {}).get("tag")
        msg = f"a step type: one of {', '.join(step_types())} (got {_short(tag)})"
    elif kind == "union_tag_not_found":
        loc = f"{loc}.type"
        msg = f"a step type: one of {', '.join(step_types())} (this key is required)"
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
    return ProtocolFileError(source, loc or "(top level)", msg)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for n, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in step_types() and n >= 2 and isinstance(loc[n - 1], int):
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
    expected: str | None = None  # shown instead of "~<duration>"
    operator_time: bool = False


@dataclass(frozen=True)
class Plan:
    protocol: Protocol
    steps: tuple[PlanStep, ...]

    @property
    def total_s(self) -> float:
        return sum(s.duration_s for s in self.steps)

    @property
    def prompts(self) -> int:
        return sum(1 for s in self.steps if s.operator_time)


def plan(protocol: Protocol) -> Plan:
    """Each step's settings and expected duration, as its step type estimates them."""
    return Plan(protocol, tuple(_plan_step(i + 1, s) for i, s in enumerate(protocol.steps)))


def _plan_step(number: int, step: StepModel) -> PlanStep:
    line = step_type(step.type).plan(step)
    return PlanStep(number, step.type, line.settings, line.duration_s, line.note,
                    line.expected, line.operator_time)  # fmt: skip


def format_plan(p: Plan, source: str) -> str:
    lines = [f"protocol {p.protocol.name} ({source})"]
    if p.protocol.description:
        lines.append(f"  {p.protocol.description}")
    width = max(len(s.type) for s in p.steps)
    for s in p.steps:
        expected = s.expected or f"~{format_duration(s.duration_s)}"
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
    except ProtocolFileError as exc:
        print(f"assay: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback at the bench
        print(f"assay: {path}: (internal): {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
