"""Physics of the simulated incubator: a heated chamber under PI control, and a plate shaker.

Pure state machines without clocks or I/O: the owner calls :meth:`ThermalModel.advance`
with elapsed simulated seconds, so a 90-minute incubation is integrated in one call.

Chamber: first-order lag towards ``ambient + heater_rise * power``, with time constant
``time_constant_s`` (door closed) or ``door_time_constant_s`` (door open, much faster losses).
Each step is integrated exactly (exponential), so long steps stay stable. The controller
ramps its working setpoint towards the target at the rate limit (degC/min, 0 = step) and
runs a PI loop on it (proportional band in degC, integral time in s, conditional integration
against wind-up), clamped to the output limits. Faults: a sensor break drives the output to
0 % and hides the PV; a stuck heater (``over_temperature``) heats at 100 % whatever the loop
asks; alarm 1 is an absolute high alarm (non-latching, with hysteresis); the loop-break
alarm trips when the output has sat at its high limit for the loop-break time without the
PV rising by half a proportional band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["ShakerModel", "ThermalModel", "ThermalParams"]

_MAX_STEP_S = 1.0


@dataclass(frozen=True)
class ThermalParams:
    ambient_c: float = 21.0
    initial_c: float = 21.0
    time_constant_s: float = 600.0
    door_time_constant_s: float = 180.0
    heater_rise_c: float = 30.0
    """Steady-state rise above ambient at 100 % output, door closed."""
    proportional_band_c: float = 4.0
    integral_time_s: float = 240.0
    over_temperature_c: float = 40.0
    alarm_hysteresis_c: float = 0.5
    pv_range_high_c: float = 100.0

    def __post_init__(self) -> None:
        if min(self.time_constant_s, self.door_time_constant_s, self.proportional_band_c,
               self.integral_time_s) <= 0:
            raise ValueError("time constants, proportional band and integral time must be > 0")
        if self.heater_rise_c <= 0:
            raise ValueError("heater_rise_c must be > 0")


@dataclass
class ThermalModel:
    params: ThermalParams = field(default_factory=ThermalParams)
    temperature_c: float = field(init=False)
    target_sp_c: float = field(init=False)
    working_sp_c: float = field(init=False)
    sp2_c: float = 0.0
    remote_sp_c: float = 0.0
    manual_output_pct: float = 0.0
    output_pct: float = 0.0
    output_high_pct: float = 100.0
    output_low_pct: float = 0.0
    sp_rate_c_per_min: float = 0.0
    loop_break_time_s: int = 0
    door_open: bool = False
    sensor_break: bool = False
    heater_stuck: bool = False
    alarm_high: bool = False
    loop_break: bool = False
    _integral: float = 0.0
    _saturated_s: float = 0.0
    _saturated_from_c: float = 0.0

    def __post_init__(self) -> None:
        self.temperature_c = self.params.initial_c
        self.target_sp_c = self.params.initial_c
        self.working_sp_c = self.params.initial_c

    # ------------------------------------------------------------------ commands

    def set_target(self, celsius: float) -> None:
        """A new target; with a rate limit the working setpoint ramps from the PV (servo)."""
        if self.sp_rate_c_per_min > 0 and not self.sensor_break:
            self.working_sp_c = self.temperature_c
        self.target_sp_c = celsius

    def set_output_limits(self, low_pct: float, high_pct: float) -> None:
        if not 0 <= low_pct <= high_pct <= 100:
            raise ValueError("need 0 <= low <= high <= 100")
        self.output_low_pct, self.output_high_pct = low_pct, high_pct

    @property
    def pv_over_range(self) -> bool:
        return self.temperature_c > self.params.pv_range_high_c

    # ------------------------------------------------------------------ integration

    def advance(self, seconds: float) -> None:
        remaining = max(0.0, seconds)
        while remaining > 1e-9:
            dt = min(_MAX_STEP_S, remaining)
            self._step(dt)
            remaining -= dt

    def _step(self, dt: float) -> None:
        p = self.params
        self._ramp(dt)
        self.output_pct = self._control(dt)
        heater_pct = 100.0 if self.heater_stuck else self.output_pct
        tau = p.door_time_constant_s if self.door_open else p.time_constant_s
        # Heater power is fixed; losses grow with the door open: the steady state moves down.
        steady = p.ambient_c + p.heater_rise_c * heater_pct / 100.0 * tau / p.time_constant_s
        self.temperature_c = steady + (self.temperature_c - steady) * math.exp(-dt / tau)
        self._alarms(dt)

    def _ramp(self, dt: float) -> None:
        if self.sp_rate_c_per_min <= 0:
            self.working_sp_c = self.target_sp_c
            return
        step = self.sp_rate_c_per_min / 60.0 * dt
        gap = self.target_sp_c - self.working_sp_c
        self.working_sp_c = self.target_sp_c if abs(gap) <= step else (
            self.working_sp_c + math.copysign(step, gap))

    def _control(self, dt: float) -> float:
        p = self.params
        if self.sensor_break:
            self._integral = 0.0
            return 0.0
        gain = 100.0 / p.proportional_band_c
        error = self.working_sp_c - self.temperature_c
        proposed = self._integral + gain * error * dt / p.integral_time_s
        raw = gain * error + proposed
        low, high = self.output_low_pct, self.output_high_pct
        # Conditional integration: do not wind up while saturated in the error's direction.
        if low < raw < high or (raw >= high and error < 0) or (raw <= low and error > 0):
            self._integral = proposed
        return min(high, max(low, gain * error + self._integral))

    def _alarms(self, dt: float) -> None:
        p = self.params
        t = self.temperature_c
        if t > p.over_temperature_c:
            self.alarm_high = True
        elif t < p.over_temperature_c - p.alarm_hysteresis_c:
            self.alarm_high = False
        if self.loop_break_time_s <= 0 or self.sensor_break:
            self._saturated_s = 0.0
            return
        if self.output_pct >= self.output_high_pct and self.working_sp_c > t:
            if self._saturated_s == 0.0:
                self._saturated_from_c = t
            self._saturated_s += dt
            moved = t - self._saturated_from_c
            if self._saturated_s >= self.loop_break_time_s:
                if moved < p.proportional_band_c / 2:
                    self.loop_break = True
                self._saturated_s, self._saturated_from_c = dt, t
        else:
            self._saturated_s = 0.0
            self.loop_break = False


@dataclass
class ShakerModel:
    """On/off and a speed setpoint; the actual speed follows at ``accel_rpm_per_s``."""

    min_rpm: int = 100
    max_rpm: int = 1500
    accel_rpm_per_s: float = 500.0
    on: bool = False
    rpm_setpoint: int = 300
    rpm: float = 0.0

    def advance(self, seconds: float) -> None:
        goal = float(self.rpm_setpoint) if self.on else 0.0
        step = self.accel_rpm_per_s * max(0.0, seconds)
        gap = goal - self.rpm
        self.rpm = goal if abs(gap) <= step else self.rpm + math.copysign(step, gap)
