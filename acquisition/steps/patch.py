"""The patch-clamp steps before and around recording: seal test, break-in, membrane test,
holding, compensation. Each drives the run's amplifier (and digitizer) and records what it
measured; none reports a stage it did not measure (a whole cell is confirmed by the
membrane test's capacitive transient, never assumed).

On a simulated bench the virtual operator's hands do what a person does at a real rig
(approach a cell and seal onto it, rupture the patch with suction); on a real rig the step
says what to do in the run's state and watches the amplifier until it sees it done, or
gives up after its timeout with a precondition fault (retry once done, skip, abort).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from acquisition.errors import AnalysisError, PreconditionError
from acquisition.payloads import Progress
from acquisition.quantities import (
    DURATION,
    FREQUENCY,
    PERCENT,
    POTENTIAL,
    RESISTANCE,
    format_duration,
    quantity,
)  # fmt: skip
from acquisition.steps.registry import PlanLine, SafeHow, StepModel, StepType, register_step_type
from acquisition.steps.rig import probe_test, rig_of
from drivers.errors import DataLossError
from drivers.roles import Amplifier

if TYPE_CHECKING:
    from acquisition.analysis.membrane import MembraneTest
    from acquisition.instruments import InstrumentHandle
    from acquisition.steps.context import StepContext, StepProgress

__all__ = ["BreakInStep", "CompensateStep", "MembraneTestStep", "SealTestStep",
           "SetHoldingStep"]  # fmt: skip

POLL_S = 1.0
WHOLE_CELL_MIN_CM_F = 5e-12  # a capacitive transient of a cell, not of the pipette
WHOLE_CELL_MAX_RA_OHM = 100e6
QC_RA_OHM = (1e6, 20e6)  # the whole-cell QC criteria (ipfx v1.1, science.md)
QC_RA_OVER_RIN = 0.15
QC_LEAK_A = 100e-12
QC_CM_F = (10e-12, 100e-12)
_ROLES = ("amplifier", "digitizer")
Holding = Annotated[float, quantity(POTENTIAL, lo=-0.2, hi=0.2)]


def _mohm(ohm: float) -> str:
    return f"{ohm / 1e9:.2f} GOhm" if ohm >= 1e9 else f"{ohm / 1e6:.1f} MOhm"


async def _say(ctx: StepContext, text: str, done: int, total: int, unit: str,
               **latest: Any) -> None:  # fmt: skip
    await ctx.progress(Progress(done=done, total=total, unit=unit), latest={"say": text,
                                                                           **latest})


# ----------------------------------------------------------------------------- seal test


class SealTestStep(StepModel):
    """Seal-test pulses on; wait until the seal is at least ``threshold``."""

    type: Literal["seal_test"]
    threshold: Annotated[float, quantity(RESISTANCE, lo=1e8, hi=1e11)] = 1e9
    timeout: Annotated[float, quantity(DURATION, lo=1, hi=3600)] = 180.0
    amplitude: Annotated[float, quantity(POTENTIAL, lo=0.001, hi=0.05)] = 0.010
    frequency: Annotated[float, quantity(FREQUENCY, lo=1, hi=500)] = 50.0


async def run_seal_test(ctx: StepContext, step: SealTestStep, progress: StepProgress) -> None:
    amp = rig_of(ctx).amp
    await amp.set_mode("VC")
    await amp.seal_test(True, amplitude_v=step.amplitude, frequency_hz=step.frequency)
    did = await ctx.operator("approach_cell") if ctx.operator is not None else None
    clock, start = ctx.clock, ctx.clock.monotonic()
    best = 0.0
    while True:
        meter = await amp.meter()
        r = meter.resistance_ohm or 0.0
        best = max(best, r)
        elapsed = clock.monotonic() - start
        if r >= step.threshold:
            progress.detail = {"seal_ohm": r, "after_s": round(elapsed, 1),
                               "stage": "cell_attached", "by": did or "the operator"}  # fmt: skip
            return
        if elapsed >= step.timeout:
            raise PreconditionError(
                f"no seal of {_mohm(step.threshold)} within {format_duration(step.timeout)} "
                f"(best {_mohm(best)}): a new pipette or another cell, then retry",
                instrument=amp.instrument_id)  # fmt: skip
        await _say(ctx, "approach the cell and apply gentle suction: the seal is watched",
                   round(elapsed), round(step.timeout), "s", seal_mohm=round(r / 1e6, 1))
        await clock.sleep(POLL_S)


def _plan_seal(step: SealTestStep) -> PlanLine:
    return PlanLine(f"seal test {step.amplitude * 1e3:g} mV at {step.frequency:g} Hz until "
                    f"{_mohm(step.threshold)}", 0.0, f"at most {format_duration(step.timeout)}",
                    expected="operator time", operator_time=True)  # fmt: skip


# ----------------------------------------------------------------------------- break-in


class BreakInStep(StepModel):
    """Rupture the patch; done when a membrane test shows a cell (whole cell)."""

    type: Literal["break_in"]
    holding: Holding = -0.070
    timeout: Annotated[float, quantity(DURATION, lo=1, hi=3600)] = 120.0


async def run_break_in(ctx: StepContext, step: BreakInStep, progress: StepProgress) -> None:
    rig = rig_of(ctx)
    did = await ctx.operator("break_in") if ctx.operator is not None else None
    clock, start = ctx.clock, ctx.clock.monotonic()
    last = "no membrane test yet"
    while True:
        test: MembraneTest | None = None
        try:
            test = await probe_test(rig, step.holding)
        except (AnalysisError, DataLossError) as exc:
            last = str(exc)
        elapsed = clock.monotonic() - start
        if test is not None and test.cm_f >= WHOLE_CELL_MIN_CM_F \
                and test.ra_ohm <= WHOLE_CELL_MAX_RA_OHM:  # fmt: skip
            progress.detail = {"stage": "whole_cell", "after_s": round(elapsed, 1),
                               "by": did or "the operator", **_test_facts(test)}  # fmt: skip
            return
        if test is not None:
            last = f"Cm {test.cm_f * 1e12:.1f} pF, Ra {_mohm(test.ra_ohm)}: not a cell yet"
        if elapsed >= step.timeout:
            raise PreconditionError(
                f"no whole-cell access within {format_duration(step.timeout)} ({last}): "
                f"rupture the patch, then retry", instrument=rig.amp.instrument_id)  # fmt: skip
        await _say(ctx, "rupture the patch with a short pulse of suction", round(elapsed),
                   round(step.timeout), "s")
        await clock.sleep(POLL_S)


def _plan_break_in(step: BreakInStep) -> PlanLine:
    return PlanLine(f"rupture the patch at {step.holding * 1e3:g} mV; whole cell confirmed by "
                    f"the membrane test", 0.0, f"at most {format_duration(step.timeout)}",
                    expected="operator time", operator_time=True)  # fmt: skip


def _test_facts(test: MembraneTest) -> dict[str, float]:
    facts = {"ra_ohm": test.ra_ohm, "rm_ohm": test.rm_ohm, "cm_f": test.cm_f,
             "rt_ohm": test.rt_ohm, "tau_s": test.tau_s, "holding_a": test.baseline_a}
    if test.ra_peak_ohm is not None:
        facts["ra_peak_ohm"] = test.ra_peak_ohm
    return facts


# ----------------------------------------------------------------------------- membrane test


class MembraneTestStep(StepModel):
    """``tests`` membrane tests of ``step`` at ``holding``: Ra, Rm, Cm, holding current,
    judged against the whole-cell QC criteria (ipfx v1.1)."""

    type: Literal["membrane_test"]
    holding: Holding = -0.070
    step: Annotated[float, quantity(POTENTIAL, lo=-0.05, hi=0.05)] = -0.010
    tests: int = Field(5, ge=1, le=100)

    @field_validator("step")
    @classmethod
    def _not_zero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("a membrane test needs a step other than 0 mV, like '-10 mV'")
        return v


async def run_membrane_test(ctx: StepContext, step: MembraneTestStep,
                            progress: StepProgress) -> None:  # fmt: skip
    rig = rig_of(ctx)
    tests: list[MembraneTest] = []
    for i in range(step.tests):
        try:
            tests.append(await probe_test(rig, step.holding, step.step))
        except AnalysisError as exc:
            raise PreconditionError(f"membrane test {i + 1}: {exc}: is the cell still in "
                                    f"whole cell?", instrument=rig.amp.instrument_id) from None
        await _say(ctx, "membrane test", i + 1, step.tests, "tests")
    keys = set.intersection(*(set(_test_facts(t)) for t in tests))
    mean = {key: sum(_test_facts(t)[key] for t in tests) / len(tests) for key in sorted(keys)}
    progress.detail = {**mean, "tests": len(tests),
                       "method": "Ra, Rm, Cm by the charge and decay tau; ra_peak_ohm by the "
                       "transient's peak (biased high by the filter)",
                       "qc": qc_of_cell(mean)}  # fmt: skip


def qc_of_cell(facts: Mapping[str, float]) -> list[str]:
    """What the whole-cell QC criteria (ipfx v1.1) find wrong with a membrane test."""
    out: list[str] = []
    ra, rin, leak, cm = facts["ra_ohm"], facts["rm_ohm"], facts["holding_a"], facts["cm_f"]
    if not QC_RA_OHM[0] <= ra <= QC_RA_OHM[1]:
        out.append(f"access {_mohm(ra)} outside 1-20 MOhm")
    if rin > 0 and ra / rin > QC_RA_OVER_RIN:
        out.append(f"Ra/Rin {ra / rin:.2f} above 0.15")
    if abs(leak) > QC_LEAK_A:
        out.append(f"leak {leak * 1e12:.0f} pA beyond +-100 pA")
    if not QC_CM_F[0] <= cm <= QC_CM_F[1]:
        out.append(f"Cm {cm * 1e12:.1f} pF outside 10-100 pF")
    return out


def _plan_membrane_test(step: MembraneTestStep) -> PlanLine:
    return PlanLine(f"{step.tests} x {step.step * 1e3:+g} mV at {step.holding * 1e3:g} mV: Ra, "
                    f"Rm, Cm", step.tests * 0.04)  # fmt: skip


# ----------------------------------------------------------------------------- holding


class SetHoldingStep(StepModel):
    type: Literal["set_holding"]
    holding: Holding


async def run_set_holding(ctx: StepContext, step: SetHoldingStep,
                          progress: StepProgress) -> None:  # fmt: skip
    rig = rig_of(ctx)
    await rig.voltage_clamp(step.holding)
    held, enabled = await rig.amp.holding()
    progress.detail = {"holding_v": held, "enabled": enabled}


# ----------------------------------------------------------------------------- compensation


class CompensateStep(StepModel):
    """The amplifier's auto compensations, then Rs compensation to ``rs_correction``."""

    type: Literal["compensate"]
    fast: bool = True
    slow: bool = False
    whole_cell: bool = True
    rs_correction: Annotated[float, quantity(PERCENT, lo=0, hi=95)] = 70.0
    rs_prediction: Annotated[float, quantity(PERCENT, lo=0, hi=95)] = 70.0
    rs_bandwidth: Annotated[float, quantity(FREQUENCY, lo=300, hi=20_000)] = 1_000.0


async def run_compensate(ctx: StepContext, step: CompensateStep,
                         progress: StepProgress) -> None:  # fmt: skip
    amp: Any = rig_of(ctx).amp  # the shipped driver's auto functions (not every role's)
    done: dict[str, Any] = {}
    if step.fast:
        done["fast_cap_f"], done["fast_tau_s"] = await amp.auto_fast_comp()
    if step.slow:
        done["slow_cap_f"], done["slow_tau_s"] = await amp.auto_slow_comp()
    if step.whole_cell:
        done["whole_cell_cm_f"], done["whole_cell_rs_ohm"] = await amp.auto_whole_cell_comp()
    enable = step.rs_correction > 0 or step.rs_prediction > 0
    await amp.set_rs_compensation(enable=enable, correction_pct=step.rs_correction,
                                  prediction_pct=step.rs_prediction,
                                  bandwidth_hz=step.rs_bandwidth)  # fmt: skip
    progress.detail = {**done, **(await amp.compensation())}


def _plan_compensate(step: CompensateStep) -> PlanLine:
    parts = [n for n, on in (("fast", step.fast), ("slow", step.slow),
                             ("whole-cell", step.whole_cell)) if on]  # fmt: skip
    return PlanLine(f"auto {', '.join(parts) or 'no'} compensation; Rs {step.rs_correction:g} % "
                    f"correction, {step.rs_prediction:g} % prediction", 6.0,
                    "the auto functions take seconds")  # fmt: skip


async def _safe(handles: Mapping[str, InstrumentHandle], how: SafeHow) -> None:
    """An abort or a daemon stop: the amplifier in voltage clamp at its safe holding with
    the seal test off."""
    if how == "end":
        return
    amp = handles.get("amplifier")
    if amp is not None and isinstance(amp.driver, Amplifier):
        holding_mv: Any = getattr(amp.config, "safe_holding_mv", -70.0)
        await amp.driver.make_safe(float(holding_mv) * 1e-3)


for _entry in (
    StepType(name="seal_test", model=SealTestStep, plan=_plan_seal, run=run_seal_test,
             roles=("amplifier",), make_safe=_safe, handles_plate=False),
    StepType(name="break_in", model=BreakInStep, plan=_plan_break_in, run=run_break_in,
             roles=_ROLES, make_safe=_safe, handles_plate=False),
    StepType(name="membrane_test", model=MembraneTestStep, plan=_plan_membrane_test,
             run=run_membrane_test, roles=_ROLES, make_safe=_safe, handles_plate=False),
    StepType(name="set_holding", model=SetHoldingStep,
             plan=lambda s: PlanLine(f"hold at {s.holding * 1e3:g} mV", 0.0),
             run=run_set_holding, roles=("amplifier",), handles_plate=False),
    StepType(name="compensate", model=CompensateStep, plan=_plan_compensate,
             run=run_compensate, roles=("amplifier",), make_safe=_safe, handles_plate=False),
):  # fmt: skip
    register_step_type(_entry)
