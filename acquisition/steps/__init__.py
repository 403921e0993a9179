"""Step types as plug-ins (:mod:`.registry`): one module per type declares its protocol
model, what it does, how it is planned, checked, paused, judged after a fault, rebuilt
after a crash and left safe. The shipped ones: :mod:`.prompt`, :mod:`.incubate`,
:mod:`.harvest`, :mod:`.count`, :mod:`.wait`, :mod:`.analyze` (loaded by :mod:`.builtin`).
docs/architecture.md has the checklist for adding one.
"""

from acquisition.steps.registry import (
    Assessment,
    PlanLine,
    SafeHow,
    StepModel,
    StepType,
    register_step_type,
    step_type,
    step_types,
)

__all__ = [
    "Assessment",
    "PlanLine",
    "SafeHow",
    "StepModel",
    "StepType",
    "register_step_type",
    "step_type",
    "step_types",
]
