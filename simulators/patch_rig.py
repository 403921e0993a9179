"""The simulated patch-clamp rig: pipette, seal, cell and the amplifier's analog path.

One rig per bench, shared by the amplifier simulator (its control: modes, holding, gain,
filter, seal test, compensation; :mod:`simulators.amplifier`) and the digitizer simulator
(its analog wires: command out, primary and secondary outputs in;
:mod:`simulators.digitizer`). Everything is on the bench clock:

* **The patch**: ``bath`` (the pipette's resistance only) -> ``cell_attached`` (a seal that
  grows towards ``seal_ohm``, above 1 GOhm) -> ``whole_cell`` (the cell of
  :mod:`simulators.patch_cell` behind an access resistance that drifts slowly), moved on by
  the control channel's ``patch`` op (the virtual operator's hands).
* **The bath**: what the perfusion simulator delivers (the world's bath composition, valve
  -> fraction) mixed from ``solutions`` (valve -> compound -> molar), read at each chunk.
* **The analog path**: the command at the cell (holding + the digitizer's command volts x
  the external command sensitivity, less the electrode offset left uncompensated); the
  current through the feedback resistor with its noise (by range), the Bessel low-pass, the
  gain, and +-10 V saturation. The digitizer quantises.
* **Faults**: ``seal_loss`` (the seal falls to 100 MOhm), ``rs_runaway`` (access grows 5x
  over a minute), ``no_seal`` (cells seal only to 300 MOhm, until ``seal_ok``),
  ``no_break_in`` (the next suction leaves the patch intact), ``commander_not_open`` /
  ``commander_open`` (the amplifier answers 6002).

Compensation settings are recorded and reported in the telegraph; of them only Rs
correction changes the simulated current (it divides the effective access resistance).
The cell's noise-free response to a block of command is memoised (access and membrane
resistance quantised in 0.2 % steps), so the sweeps of one condition cost one computation
of the cell until the access has drifted; the noise is drawn afresh for every sweep.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import signal

from drivers.clock import Clock
from simulators.patch_cell import MODEL_CELL, Bath, DrugEffects, PatchCell

__all__ = ["ChannelState", "PatchRig", "RigSpec", "Stage"]

Array = npt.NDArray[np.float64]
Stage = Literal["bath", "cell_attached", "whole_cell"]
STAGES: Final = ("bath", "cell_attached", "whole_cell")
# feedback resistor -> rms noise at full bandwidth (A), the 700B's figures
NOISE_A: Final = {50e9: 0.28e-12, 5e9: 0.9e-12, 500e6: 1.4e-12, 50e6: 4.0e-12}
EXT_CMD_VC: Final = 0.020  # V at the cell per command volt
EXT_CMD_IC: Final = 400e-12  # A per command volt
SATURATION_V: Final = 10.0
_RESPONSES_KEPT = 64
_STEP = 0.002  # resistances quantised in 0.2 % steps: a drifting access recomputes the cell
#                every 0.2 % of drift, not every sweep (the noise-free response is memoised)


def _quantized(ohm: float) -> float:
    return math.exp(round(math.log(ohm) / _STEP) * _STEP)


RIG_FAULTS: Final = ("seal_loss", "rs_runaway", "no_seal", "seal_ok", "no_break_in",
                     "commander_not_open", "commander_open")  # fmt: skip


@dataclass(frozen=True)
class RigSpec:
    """``[simulation.rig]``: the cell, the pipette and the pharmacology (true values)."""

    cell: str = "neuron"  # "neuron" (gated currents) or "model_cell" (the PATCH-1U model)
    stage: str = "whole_cell"  # where the patch starts
    pipette_ohm: float = 5e6
    seal_ohm: float = 3e9
    seal_time_s: float = 20.0  # the seal's time constant once cell-attached
    ra_ohm: float = 10e6
    ra_drift_per_min: float = 0.005  # fractional access growth per minute (12 % in 25 min)
    rm_ohm: float = 500e6
    cm_f: float = 33e-12
    g_nat_s: float = 30e-9
    g_nap_s: float = 2e-9
    g_nmda_s: float = 3e-9
    electrode_offset_v: float = 0.008
    dheas_inap_max_inhibition: float = 0.40
    dheas_ic50_m: float = 1e-6
    pregs_nmda_max_potentiation: float = 0.60
    pregs_ec50_m: float = 5e-6
    solutions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """valve (as text, TOML keys) -> compound -> molar; a valve not listed is saline."""
    perfusion: str | None = None  # the perfusion simulator feeding the bath (default: the one)
    cell_variability: float = 0.0
    """Cell-to-cell CV of Rm, Cm, Ra and the sodium and NMDA conductances: each new cell
    (the pipette back in the bath, then sealed) is drawn afresh (lognormal, seeded), so a
    batch of runs is a batch of different cells; the drug effects stay the truth's."""
    seed: int = 1

    def __post_init__(self) -> None:
        if self.cell not in ("neuron", "model_cell"):
            raise ValueError("cell: 'neuron' or 'model_cell'")
        if self.stage not in STAGES:
            raise ValueError(f"stage: one of {', '.join(STAGES)}")
        for name in ("pipette_ohm", "seal_ohm", "ra_ohm", "rm_ohm", "cm_f", "seal_time_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive")
        if not 0 <= self.cell_variability <= 1:
            raise ValueError("cell_variability: a coefficient of variation from 0 to 1")
        for valve, compounds in self.solutions.items():
            if not valve.isdigit() or not 1 <= int(valve) <= 8:
                raise ValueError(f"solutions.{valve}: a valve 1-8")
            for name, molar in compounds.items():
                if not isinstance(molar, int | float) or molar < 0:
                    raise ValueError(f"solutions.{valve}.{name}: a concentration >= 0 (molar)")

    def effects(self) -> DrugEffects:
        return DrugEffects(dheas_inap_max_inhibition=self.dheas_inap_max_inhibition,
                           dheas_ic50_m=self.dheas_ic50_m,
                           pregs_nmda_max_potentiation=self.pregs_nmda_max_potentiation,
                           pregs_ec50_m=self.pregs_ec50_m)  # fmt: skip


@dataclass
class ChannelState:
    """One headstage's settings, as the amplifier simulator sets them."""

    mode: str = "VC"
    holding: float = -0.070  # V in VC, A in IC
    holding_enable: bool = True
    primary_signal: str = "membrane_current"
    gain: int = 1
    lpf_hz: float | None = 10_000.0
    feedback_ohm: float = 500e6
    test_amplitude_v: float = 0.010
    test_frequency_hz: float = 50.0
    test_enable: bool = True  # an idle rig watches its patch; a recording turns it off
    offset_compensation_v: float = 0.0
    fast_cap_f: float = 0.0
    fast_tau_s: float = 0.0
    slow_cap_f: float = 0.0
    slow_tau_s: float = 0.0
    wc_cm_f: float = 0.0
    wc_rs_ohm: float = 0.0
    rs_enable: bool = False
    rs_correction_pct: float = 0.0
    rs_prediction_pct: float = 0.0
    rs_bandwidth_hz: float = 1_000.0

    def scale_v_per_a(self) -> float:
        return self.feedback_ohm * self.gain if self.mode == "VC" else 0.0

    def telegraph(self) -> dict[str, Any]:
        vc = self.mode == "VC"
        return {"mode": self.mode, "primary_signal": self.primary_signal, "gain": float(self.gain),
                "scale_v_per_unit": self.scale_v_per_a() if vc else 10.0 * self.gain,
                "lpf_hz": self.lpf_hz, "cm_f": self.wc_cm_f, "rs_ohm": self.wc_rs_ohm,
                "ext_cmd_sensitivity": EXT_CMD_VC if vc else EXT_CMD_IC,
                "feedback_ohm": self.feedback_ohm}  # fmt: skip


class PatchRig:
    """The rig's physics; see the module docstring. Pure apart from the clock and the bath."""

    def __init__(self, spec: RigSpec, clock: Clock, bath: Any = None) -> None:
        self.spec = spec
        self.clock = clock
        self._bath_source = bath  # () -> valve -> fraction, or None
        self.channels = {1: ChannelState(), 2: ChannelState()}
        self.stage: str = spec.stage
        self._stage_at = clock.monotonic()
        self._seal_floor_ohm: float | None = None  # after seal_loss
        self._runaway_at: float | None = None
        self._seal_ceiling_ohm: float | None = None
        self._break_in_refused = False
        self.commander_open = True
        self._rng = np.random.default_rng(spec.seed)
        base = MODEL_CELL if spec.cell == "model_cell" else PatchCell()
        self.cell = replace(base, rm_ohm=spec.rm_ohm, cm_f=spec.cm_f,
                            g_nat_s=0.0 if spec.cell == "model_cell" else spec.g_nat_s,
                            g_nap_s=0.0 if spec.cell == "model_cell" else spec.g_nap_s,
                            g_nmda_s=0.0 if spec.cell == "model_cell" else spec.g_nmda_s,
                            effects=spec.effects())  # fmt: skip
        self._base_cell = self.cell
        self.cells = 1  # cells patched so far (the first is the spec's own)
        self.ra_base_ohm = spec.ra_ohm
        self._filters: dict[tuple[float, float], Any] = {}
        self._cell_state: dict[int, dict[str, float]] = {}  # channel -> membrane and gates
        # the cell's noise-free responses: the same block of command in the same bath with
        # the same access gives the same current (the noise is drawn afresh each time)
        self._responses: dict[tuple[Any, ...], tuple[Array, Array, dict[str, float]]] = {}

    # ------------------------------------------------------------------ the patch

    def move_to(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage: one of {', '.join(STAGES)}")
        if stage == "whole_cell" and self._break_in_refused and self.stage == "cell_attached":
            self._break_in_refused = False  # the next suction will
            return  # this one did not rupture it: still cell-attached
        self.stage = stage
        self._stage_at = self.clock.monotonic()
        if stage == "bath":  # a new pipette: the next cell is a fresh one
            self._seal_floor_ohm = None
            self._runaway_at = None
            self._new_cell()

    def _new_cell(self) -> None:
        cv = self.spec.cell_variability
        if cv <= 0:
            return
        self.cells += 1
        sigma = math.sqrt(math.log(1 + cv * cv))

        def vary(value: float) -> float:
            return float(value * self._rng.lognormal(-sigma * sigma / 2, sigma))

        base = self._base_cell
        self.cell = replace(base, rm_ohm=vary(base.rm_ohm), cm_f=vary(base.cm_f),
                            g_nat_s=vary(base.g_nat_s), g_nap_s=vary(base.g_nap_s),
                            g_nmda_s=vary(base.g_nmda_s))  # fmt: skip
        self.ra_base_ohm = vary(self.spec.ra_ohm)
        self._responses.clear()  # another cell answers otherwise

    def inject_fault(self, kind: str) -> None:
        if kind not in RIG_FAULTS:
            raise ValueError(f"unknown rig fault {kind!r}; known: {', '.join(RIG_FAULTS)}")
        if kind == "seal_loss":
            self._seal_floor_ohm = 100e6
        elif kind == "no_seal":  # cells will not seal (until seal_ok): they stop at 300 MOhm
            self._seal_ceiling_ohm = 300e6
        elif kind == "seal_ok":
            self._seal_ceiling_ohm = None
        elif kind == "no_break_in":  # the membrane resists the suction
            self._break_in_refused = True
        elif kind == "rs_runaway":
            self._runaway_at = self.clock.monotonic()
        else:
            self.commander_open = kind == "commander_open"

    def seal_ohm(self) -> float:
        if self.stage == "bath" or (self.spec.cell == "model_cell" and not self._seal_floor_ohm):
            # the model cell's circuit has no seal: its Rm is all the leak there is
            return math.inf
        target = min(self.spec.seal_ohm, self._seal_ceiling_ohm or math.inf)
        grown = target
        if self.stage == "cell_attached":
            t = self.clock.monotonic() - self._stage_at
            grown = 50e6 + (target - 50e6) * (1 - math.exp(-t / self.spec.seal_time_s))
        return min(grown, self._seal_floor_ohm) if self._seal_floor_ohm else grown

    def ra_ohm(self) -> float:
        """The access resistance now: a slow drift since break-in, a runaway if injected."""
        minutes = (self.clock.monotonic() - self._stage_at) / 60.0
        ra = self.ra_base_ohm * (1 + self.spec.ra_drift_per_min * minutes)
        if self._runaway_at is not None:
            ra *= 1 + 4 * min(1.0, (self.clock.monotonic() - self._runaway_at) / 60.0)
        return ra

    def resistance_ohm(self) -> float:
        """What a seal test measures: the steady resistance the pipette sees."""
        if self.stage == "bath":
            return self.spec.pipette_ohm
        if self.stage == "cell_attached":
            return self.spec.pipette_ohm + self.seal_ohm()
        rm = 1 / (1 / self.cell.rm_ohm + 1 / self.seal_ohm())
        return self.ra_ohm() + rm

    def bath(self) -> Bath:
        source = self._bath_source() if self._bath_source is not None else None
        if not source:
            return Bath()
        solutions = {int(k): v for k, v in self.spec.solutions.items()}
        return Bath.mixed(source, solutions)

    def truth(self) -> dict[str, Any]:
        return {"stage": self.stage, "cell": self.cells, "seal_ohm": self.seal_ohm(),
                "ra_ohm": self.ra_ohm(), "g_nap_s": self.cell.g_nap_s,
                "rm_ohm": self.cell.rm_ohm, "cm_f": self.cell.cm_f,
                "electrode_offset_v": self.spec.electrode_offset_v,
                "bath_molar": dict(self.bath().molar),
                "effects": self.spec.effects().__dict__}  # fmt: skip

    # ------------------------------------------------------------------ the analog path

    def respond(self, channel: int, command_v: Array, rate_hz: float, *,
                continuing: bool = False) -> tuple[Array, Array]:  # fmt: skip
        """The amplifier's primary and secondary outputs (V, before the digitizer) for the
        digitizer's ``command_v`` at ``rate_hz``; the bath and access as they are now.
        ``continuing``: this block follows the previous one of the channel (the membrane
        goes on from where it was; otherwise it starts settled at the first command)."""
        ch = self.channels[channel]
        if not continuing:
            self._cell_state[channel] = {}
        ext = EXT_CMD_VC if ch.mode == "VC" else EXT_CMD_IC
        hold = ch.holding if ch.holding_enable else 0.0
        drive = hold + np.asarray(command_v, dtype=np.float64) * ext
        if ch.test_enable and ch.mode == "VC":
            drive = drive + self._test_pulses(ch, len(drive), rate_hz)
        if ch.mode == "VC":
            current, vm = self._clamp(ch, drive, rate_hz,
                                      self._cell_state.setdefault(channel, {}))  # fmt: skip
            primary = current + self._rng.normal(0.0, NOISE_A[ch.feedback_ohm], len(current))
            primary_v = primary * ch.scale_v_per_a()
            secondary_v = drive * 10.0  # 10 mV/mV command potential
        else:
            injected = drive if ch.mode == "IC" else np.zeros_like(drive)
            vm = self._current_clamp(injected, rate_hz)
            primary_v = vm * 10.0 * ch.gain + self._rng.normal(0.0, 20e-6, len(vm))
            secondary_v = injected * 1e9 * 0.5  # 0.5 V/nA
        if ch.lpf_hz is not None and ch.lpf_hz < rate_hz / 2:
            primary_v = self._bessel(ch.lpf_hz, rate_hz, primary_v)
        return (np.clip(primary_v, -SATURATION_V, SATURATION_V),
                np.clip(secondary_v, -SATURATION_V, SATURATION_V))  # fmt: skip

    def holding_current_a(self, channel: int) -> float:
        """The steady current at the holding command (the meter's reading)."""
        ch = self.channels[channel]
        if ch.mode != "VC":
            return ch.holding if ch.mode == "IC" and ch.holding_enable else 0.0
        v = (ch.holding if ch.holding_enable else 0.0) - self._offset_left(ch)
        if self.stage != "whole_cell":
            return v / self.resistance_ohm()
        g_a, g_m, g_seal = 1 / self.ra_ohm(), 1 / self.cell.rm_ohm, 1 / self.seal_ohm()
        vm = (v * g_a + self.cell.e_leak_v * g_m) / (g_a + g_m + g_seal)
        return (v - vm) * g_a

    def _offset_left(self, ch: ChannelState) -> float:
        return self.spec.electrode_offset_v - ch.offset_compensation_v

    def _clamp(self, ch: ChannelState, drive: Array, rate_hz: float,
               state: dict[str, float]) -> tuple[Array, Array]:  # fmt: skip
        at_tip = drive - self._offset_left(ch)
        if self.stage != "whole_cell":
            return at_tip / self.resistance_ohm(), at_tip
        ra = self.ra_ohm()
        if ch.rs_enable:
            ra *= 1 - 0.95 * min(ch.rs_correction_pct, 95.0) / 100.0
        seal = self.seal_ohm()
        rm = 1 / (1 / self.cell.rm_ohm + 1 / seal)
        ra, rm = _quantized(ra), _quantized(rm)
        bath = self.bath()
        molar = tuple(sorted((k, round(v, 12)) for k, v in bath.molar.items() if v > 0))
        key = (hashlib.blake2b(at_tip.tobytes(), digest_size=16).digest(), rate_hz, ra, rm,
               molar, tuple(sorted(state.items())))  # fmt: skip
        hit = self._responses.get(key)
        if hit is None:
            cell = replace(self.cell, ra_ohm=ra, rm_ohm=rm)
            current, vm = cell.voltage_clamp(at_tip, rate_hz, bath, state=state)
            hit = (current, vm, dict(state))
            self._responses[key] = hit
            if len(self._responses) > _RESPONSES_KEPT:
                self._responses.pop(next(iter(self._responses)))
        state.clear()
        state.update(hit[2])
        return hit[0], hit[1]

    def _current_clamp(self, injected: Array, rate_hz: float) -> Array:
        c = self.cell
        tau = c.rm_ohm * c.cm_f
        a = math.exp(-1 / (rate_hz * tau))
        v_inf = c.e_leak_v + injected * c.rm_ohm
        out, _ = signal.lfilter([1 - a], [1, -a], v_inf, zi=[a * v_inf[0]])
        return np.asarray(out, dtype=np.float64)

    def _test_pulses(self, ch: ChannelState, n: int, rate_hz: float) -> Array:
        t = (np.arange(n) / rate_hz) * ch.test_frequency_hz
        return np.where((t % 1.0) < 0.5, ch.test_amplitude_v, 0.0)

    def _bessel(self, cutoff_hz: float, rate_hz: float, x: Array) -> Array:
        key = (cutoff_hz, rate_hz)
        if key not in self._filters:
            self._filters[key] = signal.bessel(4, cutoff_hz, fs=rate_hz, norm="mag", output="sos")
        sos = self._filters[key]
        zi = signal.sosfilt_zi(sos) * x[0]
        out, _ = signal.sosfilt(sos, x, zi=zi)
        return np.asarray(out, dtype=np.float64)
