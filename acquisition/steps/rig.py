"""What the patch-clamp steps share: the run's rig (amplifier, digitizer and how they are
wired) and a probe sweep, a short membrane test measured and not kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from acquisition.analysis.membrane import MembraneTest, membrane_test
from acquisition.config import DigitizerConfig
from acquisition.waveforms import StepWaveform, command_at_cell
from drivers.roles import Amplifier, Digitizer

if TYPE_CHECKING:
    from acquisition.steps.context import StepContext
    from drivers.amplifier import Telegraph

__all__ = ["PROBE", "PROBE_RATE_HZ", "Rig", "probe_test", "rig_of"]

PROBE_RATE_HZ = 20_000
_DEFAULT_WIRING = DigitizerConfig(kind="digitizer", id="digitizer", address="tcp://127.0.0.1:1")


@dataclass
class Rig:
    amp: Amplifier
    dig: Digitizer
    wiring: DigitizerConfig  # which digitizer inputs and output the amplifier is wired to

    async def voltage_clamp(self, holding_v: float) -> Telegraph:
        """The seal test off, voltage clamp on the membrane current at ``holding_v``."""
        await self.amp.seal_test(False)
        await self.amp.set_mode("VC")
        await self.amp.set_primary_signal("membrane_current")
        await self.amp.set_holding(holding_v, enable=True)
        return await self.amp.telegraph()

    async def load(self, command_v: npt.NDArray[np.float64], holding_v: float,
                   rate_hz: int) -> Telegraph:  # fmt: skip
        """Voltage clamp at ``holding_v`` and the digitizer ready to play ``command_v`` (the
        potential at the cell, V) at ``rate_hz``; the telegraph it will be recorded with."""
        tele = await self.voltage_clamp(holding_v)
        inputs = [self.wiring.current_input]
        if self.wiring.command_input is not None:
            inputs.append(self.wiring.command_input)
        await self.dig.stop()  # whatever an earlier failure left running
        await self.dig.configure(rate_hz, inputs, self.wiring.command_output)
        await self.dig.upload((command_v - holding_v) / tele.ext_cmd_sensitivity)
        return tele


def rig_of(ctx: StepContext) -> Rig:
    amp, dig = ctx.handle("amplifier").driver, ctx.handle("digitizer").driver
    assert isinstance(amp, Amplifier) and isinstance(dig, Digitizer)  # the roles
    cfg = ctx.handle("digitizer").config
    return Rig(amp, dig, cfg if isinstance(cfg, DigitizerConfig) else _DEFAULT_WIRING)


PROBE = StepWaveform.model_validate({"shape": "step", "step": "-10 mV", "at": "10 ms",
                                     "width": "20 ms", "length": "40 ms"})  # fmt: skip
"""A 40 ms membrane-test sweep: 10 ms at the holding, 20 ms at the step, 10 ms back."""


async def probe_test(rig: Rig, holding_v: float, dv_v: float = -0.010) -> MembraneTest:
    """One membrane test on a probe sweep (not spooled: a measurement of the patch, e.g.
    to confirm whole cell); AnalysisError when the current shows no cell (no capacitive
    transient: still cell-attached), DataLossError / LinkError from the digitizer."""
    wave = PROBE.model_copy(update={"step": dv_v})
    cmd = command_at_cell(wave, holding_v, PROBE_RATE_HZ)
    start = round(wave.at * PROBE_RATE_HZ)
    end = start + round(wave.width * PROBE_RATE_HZ)
    tele = await rig.load(cmd, holding_v, PROBE_RATE_HZ)
    sweep = await rig.dig.acquire_sweep(len(cmd))
    current = sweep.volts(0) / tele.scale_v_per_unit
    return membrane_test(current, PROBE_RATE_HZ, start, end, dv_v)
