"""The prompt step: ask the operator to do something (load the plate, move the mat) and
wait for them. The run loop asks it (:mod:`acquisition.engine.asking`): the step type has no
executor of its own."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from acquisition.quantities import DURATION, format_duration, quantity
from acquisition.steps.registry import PlanLine, StepModel, StepType, register_step_type

__all__ = ["PromptAction", "PromptStep"]

PromptAction = Literal["plate_to_incubator", "plate_to_harvester", "mat_to_counter"]


class PromptStep(StepModel):
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


def _plan(step: PromptStep) -> PlanLine:
    timeout = "" if step.timeout_s is None else f" (timeout {format_duration(step.timeout_s)})"
    return PlanLine(f"{step.text!r}{timeout}", 0.0, "not counted", expected="operator time",
                    operator_time=True)  # fmt: skip


PROMPT = register_step_type(StepType(name="prompt", model=PromptStep, plan=_plan))
