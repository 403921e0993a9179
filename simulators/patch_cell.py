"""The simulated whole-cell patch: pipette, membrane and the currents a drug changes.

The circuit is the textbook one: the amplifier holds the pipette at the command ``Vc``;
the access (series) resistance ``Ra`` joins it to the membrane, a capacitance ``Cm`` in
parallel with a leak ``Rm`` (reversal ``E_leak``) and the voltage-gated currents::

    Cm dVm/dt = (Vc - Vm)/Ra - (Vm - E_leak)/Rm - I_NaP(Vm) - I_NMDA(Vm)
    I_measured = (Vc - Vm)/Ra

The linear part is stepped exactly (exponential update per sample, with the command held
over the sample), so a voltage step gives the textbook transient: time constant
``Cm*Ra*Rm/(Ra+Rm)`` and steady current ``dV/(Ra+Rm)``. The gated currents are added to it
per sample (they are slow against the sample interval):

- the transient sodium current ``I_NaT = g_NaT * m**3 * h * (Vm - E_Na)``, Hodgkin-Huxley
  style: activation ``m`` (half at -35 mV, 7 mV, 0.1 ms) and inactivation ``h`` (half at
  -60 mV, 6 mV, 1 ms), each stepped exactly towards its steady state: a fast inward
  current on a depolarising step, inactivated on a slow ramp;
- the persistent sodium current ``I_NaP = g_NaP * m_inf(Vm) * (Vm - E_Na)``, with a
  Boltzmann activation (half at -50 mV, slope 5 mV): seen on a slow ramp as an inward
  current from about -60 mV;
- an NMDA current when NMDA is in the bath, with its Mg2+ block (Jahr & Stevens).

Drugs act through the bath's concentrations (what the perfusion delivers): DHEA-S inhibits
I_NaP through the sigma-1 receptor (S1R) unless an S1R antagonist (NE-100, haloperidol)
occupies it; PREG-S potentiates the NMDA current. Effect sizes are the cell's true values
(``DrugEffects``); the analysis must find them. Units are SI throughout (V, A, ohm, F, s,
molar).

Pure code: no clock, no I/O. The amplifier simulator adds the electrode offset, the
feedback resistor's noise, the Bessel filter and the digitizer's quantisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import signal

__all__ = ["MODEL_CELL", "Bath", "DrugEffects", "PatchCell", "inap_scale", "nmda_scale"]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DrugEffects:
    """The true pharmacology of the simulated cell (what the analysis should find)."""

    dheas_inap_max_inhibition: float = 0.40  # fraction of I_NaP DHEA-S removes at saturation
    dheas_ic50_m: float = 1e-6
    s1r_antagonist_ki_m: dict[str, float] = field(default_factory=lambda: {
        "NE-100": 1e-9, "haloperidol": 3e-9, "progesterone": 3e-7})  # fmt: skip
    pregs_nmda_max_potentiation: float = 0.60  # fraction added at saturation
    pregs_ec50_m: float = 5e-6


@dataclass(frozen=True)
class Bath:
    """Concentrations in the recording chamber, molar, by compound name."""

    molar: Mapping[str, float] = field(default_factory=dict)

    def of(self, name: str) -> float:
        return max(0.0, float(self.molar.get(name, 0.0)))

    @classmethod
    def mixed(
        cls, composition: Mapping[int, float], solutions: Mapping[int, Mapping[str, float]]
    ) -> Bath:
        """The bath the perfusion makes: ``composition`` (valve -> fraction of the bath,
        :meth:`simulators.perfusion_bath.BathModel.composition`) of ``solutions`` (valve ->
        compound -> molar; a valve not listed is plain saline)."""
        molar: dict[str, float] = {}
        for valve, fraction in composition.items():
            for name, c in solutions.get(valve, {}).items():
                molar[name] = molar.get(name, 0.0) + fraction * c
        return cls(molar)


def _s1r_free(bath: Bath, effects: DrugEffects) -> float:
    """The fraction of S1R an antagonist leaves free (competitive, occupancy c/(c+Ki))."""
    load = sum(bath.of(name) / ki for name, ki in effects.s1r_antagonist_ki_m.items())
    return 1.0 / (1.0 + load)


def inap_scale(bath: Bath, effects: DrugEffects) -> float:
    """I_NaP's conductance factor in this bath: DHEA-S inhibits it through free S1R."""
    c = bath.of("DHEA-S")
    inhibition = effects.dheas_inap_max_inhibition * c / (c + effects.dheas_ic50_m)
    return 1.0 - inhibition * _s1r_free(bath, effects)


def nmda_scale(bath: Bath, effects: DrugEffects) -> float:
    """The NMDA current's factor in this bath: PREG-S potentiates it."""
    c = bath.of("PREG-S")
    return 1.0 + effects.pregs_nmda_max_potentiation * c / (c + effects.pregs_ec50_m)


@dataclass(frozen=True)
class PatchCell:
    """One whole-cell recording's cell and pipette."""

    ra_ohm: float = 10e6
    rm_ohm: float = 500e6
    cm_f: float = 33e-12
    e_leak_v: float = -0.070
    g_nat_s: float = 30e-9  # transient sodium conductance
    g_nap_s: float = 2e-9  # persistent sodium conductance
    e_na_v: float = 0.050
    g_nmda_s: float = 3e-9  # at saturating NMDA
    nmda_ec50_m: float = 30e-6
    mg_mm: float = 1.0
    effects: DrugEffects = field(default_factory=DrugEffects)

    def tau_s(self) -> float:
        """The membrane charging time constant under voltage clamp."""
        return self.cm_f * self.ra_ohm * self.rm_ohm / (self.ra_ohm + self.rm_ohm)

    def resting_v(self) -> float:
        return self.e_leak_v

    def voltage_clamp(
        self, command_v: Array, rate_hz: float, bath: Bath | None = None,
        vm0_v: float | None = None, state: dict[str, float] | None = None,
    ) -> tuple[Array, Array]:  # fmt: skip
        """The measured current (A) and the membrane potential (V) for ``command_v``
        sampled at ``rate_hz``; the membrane starts at ``vm0_v`` (default: at rest with the
        first command applied, i.e. settled). ``state``: the membrane potential and the
        sodium gates to start from, if it holds them, and where they end (so a long
        recording can be computed block by block)."""
        bath = bath or Bath()
        dt = 1.0 / rate_hz
        g_a, g_m = 1.0 / self.ra_ohm, 1.0 / self.rm_ohm
        tau = self.cm_f / (g_a + g_m)
        decay = math.exp(-dt / tau)
        g_nap = self.g_nap_s * inap_scale(bath, self.effects)
        nmda = bath.of("NMDA")
        g_nmda = (self.g_nmda_s * nmda / (nmda + self.nmda_ec50_m)
                  * nmda_scale(bath, self.effects)) if nmda > 0 else 0.0  # fmt: skip
        cmd = np.asarray(command_v, dtype=np.float64)
        vm = np.empty_like(cmd)
        v = (cmd[0] * g_a + self.e_leak_v * g_m) / (g_a + g_m) if vm0_v is None else vm0_v
        state = {} if state is None else state
        v = state.get("v", v)
        if g_nap == 0.0 and g_nmda == 0.0 and self.g_nat_s == 0.0:  # linear: vectorised
            v_inf = (cmd * g_a + self.e_leak_v * g_m) / (g_a + g_m)
            out, _ = signal.lfilter([1.0 - decay], [1.0, -decay], v_inf, zi=[decay * v])
            vm = np.asarray(out, dtype=np.float64)
            if len(vm):
                state["v"] = float(vm[-1])
            return (cmd - vm) * g_a, vm
        m, h = state.get("m", _m_inf(v)), state.get("h", _h_inf(v))
        fm, fh = 1.0 - math.exp(-dt / _TAU_M_S), 1.0 - math.exp(-dt / _TAU_H_S)
        g_nat = self.g_nat_s
        for i, vc in enumerate(cmd):
            ionic = self._ionic(v, g_nap, g_nmda)
            if g_nat:
                ionic += g_nat * m * m * m * h * (v - self.e_na_v)
                m += (_m_inf(v) - m) * fm
                h += (_h_inf(v) - h) * fh
            # the linear circuit's exact step, the gated currents held over the sample
            v_inf = (vc * g_a + self.e_leak_v * g_m - ionic) / (g_a + g_m)
            v = v_inf + (v - v_inf) * decay
            vm[i] = v
        state.update(v=v, m=m, h=h)
        current = (cmd - vm) * g_a
        return current, vm

    def _ionic(self, v: float, g_nap: float, g_nmda: float) -> float:
        m_inf = 1.0 / (1.0 + math.exp(-(v + 0.050) / 0.005))
        i = g_nap * m_inf * (v - self.e_na_v)
        if g_nmda:
            block = 1.0 / (1.0 + self.mg_mm / 3.57 * math.exp(-0.062 * v * 1000.0))
            i += g_nmda * block * (v - 0.0)
        return i


_TAU_M_S = 1e-4
_TAU_H_S = 1e-3


def _m_inf(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-(v + 0.035) / 0.007))


def _h_inf(v: float) -> float:
    return 1.0 / (1.0 + math.exp((v + 0.060) / 0.006))


# The model cell of the public reference recordings (shared/reference-data/patchclamp):
# Rm 500 MOhm, Cm 33 pF, Ra about 10 MOhm, no gated currents.
MODEL_CELL = PatchCell(ra_ohm=10e6, rm_ohm=500e6, cm_f=33e-12, g_nat_s=0.0, g_nap_s=0.0,
                       g_nmda_s=0.0)
