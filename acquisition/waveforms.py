"""The command waveforms a ``record`` step plays: a step, a slow ramp, or a file.

Each is a protocol table with units (``[steps.waveform]``), validated when the protocol is
read; :func:`command_at_cell` turns one into the command potential at the cell, sample by
sample, around the holding potential. What the digitizer plays is that minus the holding
(the amplifier adds its own holding) divided by the amplifier's external command
sensitivity (20 mV/V in voltage clamp), so a command must stay within +-200 mV of the
holding potential: the digitizer's +-10 V.

* ``step``: holding, then ``step`` (relative to the holding) from ``at`` for ``width``,
  then holding again, ``length`` in all: a membrane test (``step = "-10 mV"``) or an
  activation step.
* ``ramp``: holding for ``pre`` (with a ``test_pulse``, by default -5 mV for 20 ms after
  10 ms, the sweep's own membrane test: per-sweep QC of access and leak), a jump to
  ``from``, a linear ramp to ``to`` over ``duration`` (absolute potentials), back to
  holding for ``post``: a slow ramp shows the persistent sodium current.
* ``file``: one potential in mV per line (relative to the holding), at the step's sample
  rate, from a file inside the daemon's data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from acquisition.quantities import DURATION, POTENTIAL, parse_quantity, quantity

__all__ = [
    "MAX_EXCURSION_V", "FileWaveform", "RampWaveform", "StepWaveform", "Waveform",
    "WaveformError", "command_at_cell", "load_waveform_file", "segments",
]

MAX_EXCURSION_V = 0.200  # +-10 V at 20 mV/V
_PULSE_AT_S, _PULSE_END_S = 0.010, 0.030  # a ramp's test pulse, in its pre
MEMBRANE_TEST_MAX_V = 0.020  # a step of at most this is the sweep's membrane test
MAX_SWEEP_S = 60.0
Array = npt.NDArray[np.float64]


class WaveformError(ValueError):
    """A waveform that cannot be played; ``str()`` says what and where."""


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepWaveform(_Shape):
    shape: Literal["step"]
    step: Annotated[float, quantity(POTENTIAL, lo=-MAX_EXCURSION_V, hi=MAX_EXCURSION_V)] = Field(
        description="the step, relative to the holding potential, e.g. '-10 mV'")  # fmt: skip
    at: Annotated[float, quantity(DURATION, lo=0, hi=MAX_SWEEP_S)] = 0.02
    width: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=MAX_SWEEP_S)]
    length: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=MAX_SWEEP_S)]

    @model_validator(mode="after")
    def _fits(self) -> StepWaveform:
        if self.at + self.width > self.length:
            raise ValueError("at + width must fit in length (the sweep)")
        return self

    def describe(self) -> str:
        return (f"step {self.step * 1e3:+g} mV for {self.width * 1e3:g} ms, "
                f"{self.length * 1e3:g} ms sweeps")  # fmt: skip


def _pulse(value: object) -> float | None:
    if value == "off":
        return None
    try:
        return parse_quantity(POTENTIAL, value, lo=-0.05, hi=0.05)
    except ValueError:
        raise ValueError("'off' or a test pulse of at most +-50 mV, like '-5 mV'") from None


class RampWaveform(_Shape):
    shape: Literal["ramp"]
    start: Annotated[float, quantity(POTENTIAL, lo=-0.3, hi=0.3)] = Field(
        alias="from", description="where the ramp starts (absolute), e.g. '-100 mV'")
    end: Annotated[float, quantity(POTENTIAL, lo=-0.3, hi=0.3)] = Field(
        alias="to", description="where it ends (absolute), e.g. '+20 mV'")
    duration: Annotated[float, quantity(DURATION, lo=0, lo_open=True, hi=MAX_SWEEP_S)]
    pre: Annotated[float, quantity(DURATION, lo=0, hi=MAX_SWEEP_S)] = 0.1
    post: Annotated[float, quantity(DURATION, lo=0, hi=MAX_SWEEP_S)] = 0.1
    test_pulse: Annotated[float | None, BeforeValidator(_pulse)] = Field(
        -0.005, description="the sweep's own membrane test in pre, e.g. '-5 mV' ('off': none)")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _room_for_the_pulse(self) -> RampWaveform:
        if self.test_pulse is not None and self.pre < _PULSE_END_S + 0.010:
            raise ValueError("pre must be at least 40 ms for the test pulse (or test_pulse "
                             "= 'off')")
        return self

    def describe(self) -> str:
        return (f"ramp {self.start * 1e3:g} -> {self.end * 1e3:g} mV over "
                f"{self.duration:g} s")  # fmt: skip


class FileWaveform(_Shape):
    shape: Literal["file"]
    path: str = Field(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9_.\-/]+$",
                      description="inside the daemon's data directory, e.g. "
                      "'waveforms/mini.txt': one potential in mV per line")  # fmt: skip

    @model_validator(mode="after")
    def _inside(self) -> FileWaveform:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError("a path inside the daemon's data directory, without '..'")
        return self

    def describe(self) -> str:
        return f"waveform from {self.path}"


Waveform = Annotated[StepWaveform | RampWaveform | FileWaveform, Field(discriminator="shape")]


def load_waveform_file(path: Path) -> Array:
    """The file's potentials (V, relative to the holding); WaveformError naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WaveformError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise WaveformError(f"{path}: not a text file") from None
    values: list[float] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            mv = float(line)
        except ValueError:
            raise WaveformError(f"{path}:{n}: a potential in mV, got {line.strip()[:30]!r}") \
                from None  # fmt: skip
        if not abs(mv) <= MAX_EXCURSION_V * 1e3:
            raise WaveformError(f"{path}:{n}: {mv:g} mV is beyond +-200 mV of the holding")
        values.append(mv * 1e-3)
    if not values:
        raise WaveformError(f"{path}: no potentials in it")
    return np.asarray(values, dtype=np.float64)


def command_at_cell(wave: StepWaveform | RampWaveform | FileWaveform, holding_v: float,
                    rate_hz: float, file_values: Array | None = None) -> Array:  # fmt: skip
    """The command potential at the cell (V), one value per sample."""
    if isinstance(wave, StepWaveform):
        n = round(wave.length * rate_hz)
        out = np.full(n, holding_v)
        a = round(wave.at * rate_hz)
        out[a : a + round(wave.width * rate_hz)] += wave.step
        return out
    if isinstance(wave, RampWaveform):
        pre, ramp, post = (round(x * rate_hz) for x in (wave.pre, wave.duration, wave.post))
        out = np.concatenate([np.full(pre, holding_v), np.linspace(wave.start, wave.end, ramp),
                              np.full(post, holding_v)])  # fmt: skip
        if wave.test_pulse is not None:
            out[round(_PULSE_AT_S * rate_hz) : round(_PULSE_END_S * rate_hz)] += wave.test_pulse
        if np.max(np.abs(out - holding_v)) > MAX_EXCURSION_V + 1e-12:
            raise WaveformError("the ramp goes beyond +-200 mV of the holding potential")
        return out
    if file_values is None:
        raise WaveformError(f"{wave.path}: the file was not loaded")
    return holding_v + file_values


def segments(wave: StepWaveform | RampWaveform | FileWaveform,
             rate_hz: float) -> dict[str, list[float] | None]:  # fmt: skip
    """Where the waveform's membrane-test pulse (start, end, dV) and ramp (start, end) are,
    in samples: what a sweep's summary measures, from the protocol rather than the trace."""
    if isinstance(wave, StepWaveform):
        a = round(wave.at * rate_hz)
        test = a > 0 and 0 < abs(wave.step) <= MEMBRANE_TEST_MAX_V
        # a larger step is a stimulus (activation): not a membrane test, no access QC on it
        return {"pulse": [a, a + round(wave.width * rate_hz), wave.step] if test else None,
                "ramp": None}
    if isinstance(wave, RampWaveform):
        pre = round(wave.pre * rate_hz)
        pulse = None if wave.test_pulse is None else [
            round(_PULSE_AT_S * rate_hz), round(_PULSE_END_S * rate_hz), wave.test_pulse]
        return {"pulse": pulse, "ramp": [pre, pre + round(wave.duration * rate_hz)]}
    return {"pulse": None, "ramp": None}
