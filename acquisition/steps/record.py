"""The record step: sweeps of a command waveform in voltage clamp, to the spool and NWB.

For each sweep the amplifier's telegraph is read (what the sweep is recorded with), the
digitizer plays the command and records the current simultaneously, and the sweep is
appended to the run's spool and flushed to disk *before* its summary (:class:`SweepReading`,
stream ``sweep``) is journaled: a summary always has its samples on disk. At the end of the
step the run's NWB file is written from the whole spool (every record step of the run, in
sweep order) and journaled as an ``artifact`` document. Raw samples never enter a document.

* A sweep that lost samples (a dropped frame, a checksum error, an overrun:
  :class:`~drivers.errors.DataLossError`) is not kept: an ``interruption`` document names
  it and the samples lost, and the sweep is recorded again (after three losses in a row the
  step fails and the operator decides).
* A pause or an abort takes effect between sweeps: the sweep in progress is finished and
  kept first (at most one sweep's length). An abort leaves the amplifier in voltage clamp
  at the configured safe holding with the seal test off, the digitizer stopped.
* After a daemon killed mid-recording, the resume keeps every sweep the spool holds (one
  spooled but not yet journaled gets its summary now), names the sweep that was in progress
  in an ``interruption`` document, records it again and writes the NWB file from the spool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from acquisition.analysis.sweep import Reference, summarize_sweep
from acquisition.errors import InterlockError, PreconditionError
from acquisition.nwb_file import NwbRun, write_nwb
from acquisition.payloads import DataDocument, Progress, SweepReading
from acquisition.quantities import DURATION, FREQUENCY, POTENTIAL, format_duration, quantity
from acquisition.run_recorder import utcnow
from acquisition.spool import SpooledSweep, SweepSpool, read_spool
from acquisition.steps.registry import PlanLine, SafeHow, StepModel, StepType, register_step_type
from acquisition.steps.rig import rig_of
from acquisition.waveforms import (
    FileWaveform,
    StepWaveform,
    Waveform,
    WaveformError,
    command_at_cell,
    load_waveform_file,
    segments,
)  # fmt: skip
from drivers.errors import DataLossError, InstrumentFaultError
from drivers.roles import Amplifier, Digitizer

if TYPE_CHECKING:
    from acquisition.instruments import InstrumentHandle
    from acquisition.steps.context import StepContext, StepProgress
    from drivers.amplifier import Telegraph
    from drivers.digitizer import Sweep

__all__ = ["RecordStep", "nwb_path", "run_record", "run_reference", "spool_path", "sweep_reading"]

COMMAND_V_PER_CODE = 2e-5  # the spooled command at the cell: +-655 mV in 20 uV steps
MAX_SWEEP_SAMPLES = 2_000_000  # what one upload to the digitizer holds (4 MiB)
MAX_LOSSES_IN_A_ROW = 3
NWB_MEDIA_TYPE = "application/x-nwb"
SATURATED = (-32768, 32767)
_DURATION = r"P\d+[YMWD](?:\d+[MWD]){0,3}"  # ISO 8601, in years to days: P21D, P1Y2M
_AGE = rf"^{_DURATION}(?:/{_DURATION})?$"


class Subject(BaseModel):
    """Whose cell it is, for the NWB file: what NWB (and DANDI) require of a subject. Nothing
    is filled in for a field not given."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    subject_id: str = Field(min_length=1, max_length=100)
    species: str = Field(min_length=1, max_length=100, examples=["Rattus norvegicus"])
    sex: Literal["M", "F", "U", "O"] = Field(description="U: unknown, O: other")
    age: str = Field(pattern=_AGE, examples=["P21D", "P3W", "P21D/P28D"],
                     description="ISO 8601 duration since birth, or a range")  # fmt: skip
    description: str | None = Field(None, max_length=300)


class RecordStep(StepModel):
    """``sweeps`` sweeps of ``waveform`` at ``holding``, one every ``interval``."""

    type: Literal["record"]
    stimulus: str = Field(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.+\-]*$",
        description="the stimulus protocol's name, e.g. 'membrane-test'",
    )
    waveform: Waveform
    sweeps: int = Field(ge=1, le=10_000)
    interval: Annotated[float, quantity(DURATION, lo=0, hi=3600)] = Field(
        0.0, description="from one sweep's start to the next; shorter than a sweep: back to back")
    holding: Annotated[float, quantity(POTENTIAL, lo=-0.2, hi=0.2)] = -0.070
    rate: Annotated[float, quantity(FREQUENCY, lo=10_000, hi=100_000)] = 20_000.0
    condition: str | None = Field(
        None, max_length=200,
        description="what is applied (default: the solution of the last perfuse step before)",
    )  # fmt: skip
    on_qc_fail: Literal["continue", "pause", "abort"] = Field(
        "continue", description="what the run does once qc_fail_sweeps sweeps in a row fail QC")
    qc_fail_sweeps: int = Field(3, ge=1, le=1000)
    subject: Subject | None = Field(None, description="whose cell, for the run's NWB file; "
                                    "given once, on the run's first record step")  # fmt: skip

    @model_validator(mode="after")
    def _fits_an_upload(self) -> RecordStep:
        samples = round(self.sweep_s() * self.rate)
        if samples > MAX_SWEEP_SAMPLES:
            raise ValueError(f"a sweep of {samples} samples ({self.sweep_s():g} s at "
                             f"{self.rate / 1e3:g} kHz): at most {MAX_SWEEP_SAMPLES} (20 s "
                             f"at 100 kHz)")  # fmt: skip
        return self

    def sweep_s(self) -> float:
        w = self.waveform
        if isinstance(w, StepWaveform):
            return w.length
        if isinstance(w, FileWaveform):
            return 0.0  # known once the file is read
        return w.pre + w.duration + w.post


def spool_path(data_dir: Path, run: str) -> Path:
    return data_dir / "runs" / run / "sweeps.spool"


def nwb_path(data_dir: Path, run: str) -> Path:
    return data_dir / "runs" / run / f"{run}.nwb"


def _solution(ctx: StepContext) -> str | None:
    """What the bath holds: the last perfuse step's solution before this step."""
    for before in reversed(ctx.steps_before):
        if getattr(before, "type", None) == "perfuse":
            return str(before.solution)
    return None


def _subject(ctx: StepContext, step: RecordStep) -> Subject | None:
    """The run's subject: this step's, else the nearest record step's before it."""
    for candidate in (step, *reversed(ctx.steps_before)):
        found = getattr(candidate, "subject", None)
        if getattr(candidate, "type", None) == "record" and found is not None:
            return found  # type: ignore[no-any-return]
    return None


def _meta(ctx: StepContext, step: RecordStep, sweep: int, tele: Telegraph, *, started: Any,
          start_s: float, condition: str, solution: str | None,
          rs_comp: Mapping[str, float | bool]) -> dict[str, Any]:  # fmt: skip
    telegraph = {**tele.as_record(), "gain_v_per_a": tele.scale_v_per_unit}
    compensation = {"whole_cell_cm_f": tele.cm_f, "whole_cell_rs_ohm": tele.rs_ohm, **rs_comp}
    return {"index": sweep, "step_index": ctx.index, "started_at": started.isoformat(),
            "sample_rate_hz": float(step.rate), "starting_time_s": start_s,
            "stimulus": step.stimulus, "stimulus_type": step.waveform.shape,
            "stimulus_description": step.waveform.describe(), "condition": condition,
            "solution": solution, "holding_v": step.holding, "telegraph": telegraph,
            "compensation": compensation,
            "segments": segments(step.waveform, step.rate)}  # fmt: skip


def _spooled(meta: dict[str, Any], sweep: Sweep, tele: Telegraph,
             command_v: npt.NDArray[np.float64]) -> SpooledSweep:  # fmt: skip
    im = np.ascontiguousarray(sweep.codes[:, 0])
    codes = np.round(command_v / COMMAND_V_PER_CODE)
    if np.max(np.abs(codes)) > 32767:  # the waveforms' bounds keep it inside: never wrap
        raise ValueError("the command is beyond the spool's +-655 mV")
    cmd = codes.astype(np.int16)
    return SpooledSweep(index=int(meta["index"]), meta=meta, channels={"im": im, "command": cmd},
                        units={"im": "A", "command": "V"},
                        scales={"im": sweep.volts_per_code / tele.scale_v_per_unit,
                                "command": COMMAND_V_PER_CODE})  # fmt: skip


def sweep_reading(s: SpooledSweep, reference: Reference) -> SweepReading:
    """The summary of a spooled sweep (also what a resume journals for one it finds)."""
    meta = s.meta
    current, command = s.scaled("im"), s.scaled("command")
    saturated = bool(np.isin(s.channels["im"], SATURATED).any())
    seg = meta.get("segments") or {}
    pulse = seg.get("pulse")
    ramp = seg.get("ramp")
    fig = summarize_sweep(
        current, command, float(meta["sample_rate_hz"]),
        pulse=(int(pulse[0]), int(pulse[1]), float(pulse[2])) if pulse else None,
        ramp=(int(ramp[0]), int(ramp[1])) if ramp else None,
        reference=reference, saturated=saturated,
    )  # fmt: skip
    return SweepReading(
        sweep=s.index, step_index=int(meta["step_index"]), started_at=meta["started_at"],
        sample_rate_hz=float(meta["sample_rate_hz"]), samples=len(current),
        t_s=meta.get("starting_time_s"),
        stimulus=str(meta["stimulus"]), solution=meta.get("solution"),
        condition=meta.get("condition"), holding_a=fig.holding_a, peak_a=fig.peak_a,
        steady_a=fig.steady_a, ra_ohm=fig.ra_ohm,
        rm_ohm=fig.rm_ohm, cm_f=fig.cm_f, input_ohm=fig.input_ohm, inap_a=fig.inap_a,
        inap_v=fig.inap_v, qc=fig.qc, trace=fig.trace,
    )  # fmt: skip


def run_reference(sweeps: list[SpooledSweep]) -> Reference:
    """The run's first sweep with a membrane test that passed QC: what access and input are
    compared to (a first sweep that failed its absolute criteria is no reference)."""
    for s in sorted(sweeps, key=lambda x: x.index):
        figures = s.meta.get("figures") or {}
        if figures.get("ra_ohm") and not s.meta.get("qc"):
            return Reference(figures["ra_ohm"], figures.get("input_ohm"))
    return Reference()


class _Recording:
    """One record step's work, from its context; see the module docstring."""

    def __init__(self, ctx: StepContext, step: RecordStep, progress: StepProgress) -> None:
        self.ctx, self.step, self.progress = ctx, step, progress
        self.rig = rig_of(ctx)
        self.amp, self.dig = self.rig.amp, self.rig.dig
        self.data_dir = ctx.config.journal.data_directory
        self.spool_path = spool_path(self.data_dir, ctx.recorder.run)
        # which sweep is being recorded, written before it starts and removed once it is
        # journaled: what a resume finds here and not in the spool was lost
        self.marker = self.spool_path.with_name("sweep-in-progress.json")
        self.solution = _solution(ctx)
        self.condition = step.condition or self.solution or "control"
        self.command = np.zeros(0)
        self.next_index = 1
        self.losses = 0
        self.qc_fails = 0
        self.reference = Reference()
        sim = ctx.config.simulation
        # run time: on a simulated bench its clock runs time_scale times faster than the wall
        self.time_scale = sim.time_scale if sim.enabled else 1.0

    async def run(self) -> None:
        await self._catch_up()
        await self._set_up()
        spool = await asyncio.to_thread(SweepSpool.open, self.spool_path)
        try:
            try:
                await self._record(spool)
            finally:
                await asyncio.to_thread(spool.close)  # no sweep is being written any more
        except InterlockError:  # QC stops the step: what was recorded is still a file
            await self._write_nwb()
            raise
        await self._write_nwb()

    async def _record(self, spool: SweepSpool) -> None:
        last_start: float | None = None
        while len(self.progress.recorded) < self.step.sweeps:
            if last_start is not None:
                wait = last_start + self.step.interval - self.ctx.clock.monotonic()
                if wait > 0:
                    await self.ctx.clock.sleep(wait)
            last_start = self.ctx.clock.monotonic()
            await self._sweep_through_cancels(spool)

    async def _sweep_through_cancels(self, spool: SweepSpool) -> None:
        """One sweep, run to its end however often the step is cancelled meanwhile (a
        pause, an abort, the daemon stopping: the sweep in progress is kept); then the
        cancellation goes on. A sweep that lost samples is named and recorded again."""
        task = asyncio.ensure_future(self._one_sweep(spool))
        cancelled = False
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                cancelled = True
        error = None if task.cancelled() else task.exception()
        if isinstance(error, DataLossError):
            await self._name_loss(error)
        if cancelled:
            raise asyncio.CancelledError
        if isinstance(error, DataLossError):
            self.losses += 1
            if self.losses >= MAX_LOSSES_IN_A_ROW:
                raise error
        elif error is not None:
            raise error
        else:
            self.losses = 0

    async def _name_loss(self, exc: DataLossError) -> None:
        await self.ctx.recorder.interruption(
            f"sweep {self.next_index}: {exc}; not kept, recorded again",
            {"step_index": self.ctx.index, "sweep": self.next_index,
             "lost_samples": [list(r) for r in exc.lost],
             "reasons": list(exc.reasons)})  # fmt: skip
        await asyncio.to_thread(self.marker.unlink, missing_ok=True)

    async def _catch_up(self) -> None:
        """What the spool and the marker say (a resume, a retry): journal the sweeps spooled
        without a summary; name the one in progress when the step stopped, if it was lost."""
        progress, rec = self.progress, self.ctx.recorder
        contents = await asyncio.to_thread(read_spool, self.spool_path) \
            if self.spool_path.exists() else None  # fmt: skip
        spooled = contents.sweeps if contents is not None else []
        self.next_index = max((s.index for s in spooled), default=0) + 1
        self.reference = run_reference(spooled)
        for s in spooled:
            if s.meta.get("step_index") == self.ctx.index and s.index not in progress.recorded:
                await self._journal(s, await asyncio.to_thread(sweep_reading, s, self.reference))
        in_progress = await asyncio.to_thread(_read_marker, self.marker)
        if in_progress is not None and in_progress not in {s.index for s in spooled}:
            await rec.interruption(
                f"sweep {in_progress} was being recorded when the step stopped (the daemon "
                f"stopped, or a fault): not kept, it is recorded again "
                f"({len(progress.recorded)} of the step's {self.step.sweeps} sweeps kept)",
                {"step_index": self.ctx.index, "lost_sweep": in_progress,
                 "kept": list(progress.recorded),
                 "torn_bytes": contents.torn_tail_bytes if contents else 0},
            )  # fmt: skip
        if contents is not None and contents.damaged:
            await rec.interruption(
                f"the sweep spool has {len(contents.damaged)} damaged record(s): those "
                f"sweeps are not in the NWB file",
                {"step_index": self.ctx.index, "damaged_offsets": contents.damaged})  # fmt: skip
        await asyncio.to_thread(self.marker.unlink, missing_ok=True)

    async def _set_up(self) -> None:
        step = self.step
        values = None
        if isinstance(step.waveform, FileWaveform):
            try:
                values = await asyncio.to_thread(load_waveform_file,
                                                 self.data_dir / step.waveform.path)  # fmt: skip
            except WaveformError as exc:
                raise PreconditionError(f"the record step's waveform: {exc}",
                                        instrument=self.dig.instrument_id) from None
            if len(values) > MAX_SWEEP_SAMPLES:
                raise PreconditionError(f"{step.waveform.path}: {len(values)} samples, at most "
                                        f"{MAX_SWEEP_SAMPLES} a sweep",
                                        instrument=self.dig.instrument_id)  # fmt: skip
        self.command = command_at_cell(step.waveform, step.holding, step.rate, values)
        await self.rig.load(self.command, step.holding, int(step.rate))

    async def _one_sweep(self, spool: SweepSpool) -> None:
        started = utcnow()
        index = self.next_index
        await asyncio.to_thread(_write_marker, self.marker, index, self.ctx.index)
        tele = await self.amp.telegraph()
        if tele.mode != "VC" or tele.primary_signal != "membrane_current":
            raise InstrumentFaultError(
                f"the amplifier is in {tele.mode} with its primary output on "
                f"{tele.primary_signal}, not voltage clamp on the membrane current: the "
                f"sweep would not record what it says", instrument=self.amp.instrument_id,
                fault="amplifier_mode")  # fmt: skip
        rs_comp = await self.amp.compensation()
        sweep = await self.dig.acquire_sweep(len(self.command))
        start_s = (started - self.ctx.recorder.created_at).total_seconds() * self.time_scale
        meta = _meta(self.ctx, self.step, index, tele, started=started,
                     start_s=start_s, condition=self.condition, solution=self.solution,
                     rs_comp=rs_comp)
        bare = _spooled(meta, sweep, tele, self.command)
        reading = await asyncio.to_thread(sweep_reading, bare, self.reference)
        spooled = replace(bare, meta={**meta, "qc": reading.qc, "figures": {
            "ra_ohm": reading.ra_ohm, "input_ohm": reading.input_ohm}})  # fmt: skip
        await asyncio.to_thread(spool.append, spooled)  # on disk before its summary
        self.next_index = index + 1
        if self.reference.ra_ohm is None and reading.ra_ohm is not None and not reading.qc:
            self.reference = Reference(reading.ra_ohm, reading.input_ohm)
        await self._journal(spooled, reading)
        await asyncio.to_thread(self.marker.unlink, missing_ok=True)
        self._judge(reading)

    def _judge(self, reading: SweepReading) -> None:
        """The protocol's ``on_qc_fail`` once ``qc_fail_sweeps`` sweeps in a row failed."""
        self.qc_fails = self.qc_fails + 1 if reading.qc else 0
        step = self.step
        if step.on_qc_fail != "continue" and self.qc_fails >= step.qc_fail_sweeps:
            self.qc_fails = 0
            raise InterlockError(f"{step.qc_fail_sweeps} sweeps in a row failed QC (the last, "
                                 f"sweep {reading.sweep}: {'; '.join(reading.qc)})",
                                 step.on_qc_fail)  # fmt: skip

    async def _journal(self, s: SpooledSweep, reading: SweepReading) -> None:
        self.progress.recorded.append(s.index)
        done = len(self.progress.recorded)
        left = (self.step.sweeps - done) * max(self.step.interval, self.step.sweep_s())
        await self.ctx.recorder.data(
            reading, Progress(done=done, total=self.step.sweeps, unit="sweeps", eta_s=left),
            stream="sweep", latest={"sweep": s.index, "ra_mohm": _mohm(reading.ra_ohm),
                                    "holding_pa": _pa(reading.holding_a),
                                    "inap_pa": _pa(reading.inap_a), "qc": reading.qc},
        )  # fmt: skip
        self.ctx.notify()

    async def _write_nwb(self) -> None:
        rec, step = self.ctx.recorder, self.step
        path = nwb_path(self.data_dir, rec.run)
        given = _subject(self.ctx, step)
        subject = given.model_dump(exclude_none=True) if given else None
        run = NwbRun(run=rec.run, started_at=rec.created_at, subject=subject,
                     description=f"{rec.protocol}: whole-cell voltage clamp",
                     experiment_description=f"assay run {rec.run} of protocol {rec.protocol}",
                     cell_id=f"{rec.run}/cell-1")  # one cell a run  # fmt: skip

        def write() -> Any:
            return write_nwb(path, run, read_spool(self.spool_path).sweeps)

        written = await asyncio.to_thread(write)
        await rec.artifact(path, media_type=NWB_MEDIA_TYPE, step_index=self.ctx.index,
                           holds=f"{written.sweeps} sweeps (conditions: "
                           f"{', '.join(written.conditions)}), NWB icephys tables")  # fmt: skip
        self.progress.detail.update({"sweeps": len(self.progress.recorded),
                                     "nwb_sweeps": written.sweeps,
                                     "condition": self.condition, "solution": self.solution})


def _write_marker(marker: Path, sweep: int, step_index: int) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"sweep": sweep, "step_index": step_index}), encoding="utf-8")


def _read_marker(marker: Path) -> int | None:
    """The sweep the marker names, or None (no marker, or one a crash left unreadable)."""
    try:
        value = json.loads(marker.read_text(encoding="utf-8")).get("sweep")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _mohm(ohm: float | None) -> float | None:
    return None if ohm is None else round(ohm / 1e6, 2)


def _pa(amp: float | None) -> float | None:
    return None if amp is None else round(amp * 1e12, 1)


async def run_record(ctx: StepContext, step: RecordStep, progress: StepProgress) -> None:
    await _Recording(ctx, step, progress).run()


def _plan(step: RecordStep) -> PlanLine:
    each = max(step.interval, step.sweep_s())
    note = f"{format_duration(each)} a sweep"
    condition = f" ({step.condition})" if step.condition else ""
    return PlanLine(f"{step.stimulus}{condition}: {step.sweeps} x {step.waveform.describe()} at "
                    f"{step.holding * 1e3:g} mV, {step.rate / 1e3:g} kHz",
                    step.sweeps * each, note)  # fmt: skip


def _check(step: RecordStep, before: Sequence[StepModel]) -> tuple[str, str] | None:
    """The run's NWB file needs its subject, given on the first record step."""
    first = not any(getattr(b, "type", None) == "record" for b in before)
    if first and step.subject is None:
        return (".subject", "whose cell this is, for the NWB file, e.g. subject = { subject_id "
                "= \"rat-17\", species = \"Rattus norvegicus\", sex = \"M\", age = "
                "\"P21D\" } (NWB requires one)")
    return None


async def _prepare(ctx: StepContext, step: RecordStep, progress: StepProgress) -> dict[str, Any]:
    return {"sweeps": step.sweeps, "waveform": step.waveform.describe()}


def _rebuild(progress: StepProgress, doc: DataDocument) -> None:
    if isinstance(doc.reading, SweepReading) and doc.reading.sweep not in progress.recorded:
        progress.recorded.append(doc.reading.sweep)


def _resume(step: RecordStep, progress: StepProgress, since: Any, time_scale: float) -> None:
    """After a restart the step goes on from its sweeps (the spool and its marker say what
    the crash cut short: :meth:`_Recording._catch_up`)."""


def _interrupted(progress: StepProgress) -> tuple[dict[str, Any], Progress | None]:
    total = progress.before.get("sweeps")
    done = len(progress.recorded)
    return {"sweeps_recorded": done}, Progress(done=done, total=total if isinstance(
        total, int) else done, unit="sweeps")  # fmt: skip


async def _make_safe(handles: Mapping[str, InstrumentHandle], how: SafeHow) -> None:
    """An abort or a daemon stop: the digitizer stopped, the amplifier in voltage clamp at
    its safe holding with the seal test off."""
    if how == "end":
        return
    dig = handles.get("digitizer")
    if dig is not None and isinstance(dig.driver, Digitizer) and dig.driver.connected:
        await dig.driver.stop()
    amp = handles.get("amplifier")
    if amp is not None and isinstance(amp.driver, Amplifier):
        holding_mv: Any = getattr(amp.config, "safe_holding_mv", -70.0)
        await amp.driver.make_safe(float(holding_mv) * 1e-3)


RECORD = register_step_type(StepType(
    name="record", model=RecordStep, plan=_plan, run=run_record, check=_check,
    roles=("amplifier", "digitizer"), prepare=_prepare, rebuild=_rebuild, resume=_resume,
    interrupted=_interrupted, make_safe=_make_safe, handles_plate=False,
))  # fmt: skip
