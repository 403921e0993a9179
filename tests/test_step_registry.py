"""The step-type registry: what a protocol may hold is what is registered, in the shipped
order, and the engine's core modules never name a step type (they read the registry)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from acquisition.protocols import ProtocolFileError, parse_protocol
from acquisition.steps import PlanLine, StepModel, StepType, register_step_type, step_types
from acquisition.steps.builtin import SHIPPED

ENGINE = Path(__file__).resolve().parents[1] / "acquisition" / "engine"
CORE = ("runner", "asking", "recovery", "launch", "runs", "safety", "steering", "leasing",
        "control")  # fmt: skip


def test_the_shipped_step_types_come_first_in_their_order() -> None:
    assert tuple(step_types())[: len(SHIPPED)] == SHIPPED


def test_an_unknown_step_type_is_refused_naming_those_registered() -> None:
    with pytest.raises(ProtocolFileError) as err:
        parse_protocol('name = "x"\n[[steps]]\ntype = "centrifuge"\n', source="x.toml")
    assert str(err.value).startswith("x.toml: steps[0].type: a step type: one of incubate, "
                                     "harvest, count, prompt, analyze, wait")  # fmt: skip


def test_a_step_type_registered_later_is_accepted_by_the_loader() -> None:
    class Tare(StepModel):
        type: Literal["tare-test"]
        grams: float

    register_step_type(StepType(name="tare-test", model=Tare,
                                plan=lambda step: PlanLine(f"{step.grams:g} g", 1.0)))  # fmt: skip
    protocol, _ = parse_protocol('name = "t"\n[[steps]]\ntype = "tare-test"\ngrams = 2\n')
    assert protocol.steps[0].type == "tare-test" and protocol.steps[0].grams == 2.0
    with pytest.raises(ProtocolFileError, match=r"steps\[0\]\.grams"):
        parse_protocol('name = "t"\n[[steps]]\ntype = "tare-test"\ngrams = "heavy"\n')


def test_a_model_whose_type_is_not_its_literal_name_is_refused() -> None:
    with pytest.raises(TypeError, match="Literal"):
        register_step_type(StepType(name="loose", model=StepModel,
                                    plan=lambda step: PlanLine("", 0.0)))  # fmt: skip


@pytest.mark.parametrize("module", CORE)
def test_the_engine_core_names_no_step_type(module: str) -> None:
    """No string literal that is a shipped step type or instrument kind, no import of a step
    type's module (the step context and the labware view are the steps' common ground)."""
    from acquisition.kinds import instrument_kinds

    names = set(SHIPPED) | set(instrument_kinds())
    tree = ast.parse((ENGINE / f"{module}.py").read_text(encoding="utf-8"))
    named = [node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in names]  # fmt: skip
    step_modules = {f"acquisition.steps.{name}" for name in SHIPPED}
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module in step_modules]  # fmt: skip
    assert not named and not imported, (named, imported)


async def test_a_step_types_failing_make_safe_does_not_stop_the_others() -> None:
    """A bug in one step type's make-safe (a plug-in) is reported, the others still run:
    the run's end (and its stop document) never depends on every plug-in being right."""
    from acquisition.engine.safety import make_safe

    called: list[str] = []

    async def broken(handles: Any, how: str) -> None:
        raise RuntimeError("plug-in bug")

    async def fine(handles: Any, how: str) -> None:
        called.append(how)

    class One(StepModel):
        type: Literal["one-test"]

    class Two(StepModel):
        type: Literal["two-test"]

    plan = lambda step: PlanLine("", 0.0)  # noqa: E731
    register_step_type(StepType(name="one-test", model=One, plan=plan, roles=("a",),
                                make_safe=broken))  # fmt: skip
    register_step_type(StepType(name="two-test", model=Two, plan=plan, roles=("b",),
                                make_safe=fine))  # fmt: skip
    handle: Any = SimpleNamespace(config=SimpleNamespace(id="x"))
    problems = await make_safe(["one-test", "two-test"], {"a": handle, "b": handle}, "abort")
    assert called == ["abort"] and problems == ["x: RuntimeError: plug-in bug"]
