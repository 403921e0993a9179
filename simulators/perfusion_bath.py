"""The bath of a perfusion rig: which solution reaches the cell, and when.

Solution leaves the open valves at the flow rate, travels a plug-flow dead volume (so a
switch shows up ``dead_volume / flow`` seconds of flow later), then mixes into the bath
with a first-order time constant. Solved exactly, piecewise, on the caller's clock times:
no ticking task, no sleeps. Used by :mod:`simulators.perfusion`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from drivers.perfusion.codec import VALVES

__all__ = ["BathModel"]

_MAX_PARCELS: Final = 256  # line parcels; beyond this the oldest two merge (slight diffusion)


class BathModel:
    """Which solution bathes the cell: plug-flow dead volume, then first-order exchange.

    While any solution flows (at ``flow_ul_per_s``, an equal mix of the open valves), the
    line pushes its oldest parcel into the bath, where composition ``c`` relaxes towards
    the parcel's ``p`` as ``dc/dt = (p - c) / exchange_tau_s``. With no flow nothing moves.
    Time only goes forward: :meth:`composition` may not look before the last change.
    """

    def __init__(
        self, *, flow_ul_per_s: float, dead_volume_ul: float, exchange_tau_s: float,
        initial_solution: int = 1, start_s: float = 0.0,
    ) -> None:
        if flow_ul_per_s <= 0 or dead_volume_ul < 0 or exchange_tau_s <= 0:
            raise ValueError("need flow > 0, dead volume >= 0 and tau > 0")
        if not 1 <= initial_solution <= VALVES:
            raise ValueError(f"initial solution must be 1-{VALVES}")
        self.flow_ul_per_s = flow_ul_per_s
        self.dead_volume_ul = dead_volume_ul
        self.exchange_tau_s = exchange_tau_s
        pure = _pure(initial_solution)
        self._t = start_s
        self._bath = pure
        self._line: deque[_Parcel] = deque()  # the dead volume, oldest parcel first
        if dead_volume_ul > 0:
            self._line.append(_Parcel(dead_volume_ul, pure))
        self._inlet: tuple[float, ...] | None = None

    @property
    def delay_s(self) -> float:
        """How long a switch takes to reach the bath while solution flows."""
        return self.dead_volume_ul / self.flow_ul_per_s

    def set_inlet(self, now: float, valves: list[int]) -> None:
        """From ``now`` on, ``valves`` (an equal mix; none: no flow) feed the line."""
        self._advance(now)
        self._inlet = None
        if valves:
            self._inlet = tuple(valves.count(v) / len(valves) for v in range(1, VALVES + 1))

    def composition(self, at: float) -> dict[int, float]:
        """Fraction of each solution (valve number -> 0..1) in the bath at time ``at``."""
        self._advance(at)
        return {v: self._bath[v - 1] for v in range(1, VALVES + 1)}

    def _advance(self, t: float) -> None:
        if t < self._t - 1e-9:
            raise ValueError(f"the bath model cannot look back ({t} < {self._t})")
        inlet, volume = self._inlet, max(0.0, t - self._t) * self.flow_ul_per_s
        self._t = max(self._t, t)
        if inlet is None:
            return  # no flow: line and bath stand still
        while volume > 0:
            if not self._line:  # no dead volume: the inlet goes straight in
                self._exchange(inlet, volume)
                return
            head = self._line[0]
            step = min(head.volume_ul, volume)
            self._exchange(head.composition, step)
            volume -= step
            head.volume_ul -= step
            if head.volume_ul <= 1e-12 * max(1.0, self.dead_volume_ul):
                self._line.popleft()
            self._push(inlet, step)

    def _exchange(self, comp: tuple[float, ...], volume_ul: float) -> None:
        decay = math.exp(-(volume_ul / self.flow_ul_per_s) / self.exchange_tau_s)
        self._bath = tuple(p + (c - p) * decay for c, p in zip(self._bath, comp, strict=True))

    def _push(self, comp: tuple[float, ...], volume_ul: float) -> None:
        if self._line and self._line[-1].composition == comp:
            self._line[-1].volume_ul += volume_ul
        else:
            self._line.append(_Parcel(volume_ul, comp))
        if len(self._line) > _MAX_PARCELS:
            a, b = self._line.popleft(), self._line.popleft()
            total = a.volume_ul + b.volume_ul
            mixed = tuple((x * a.volume_ul + y * b.volume_ul) / total
                          for x, y in zip(a.composition, b.composition, strict=True))
            self._line.appendleft(_Parcel(total, mixed))


@dataclass(slots=True)
class _Parcel:
    """A slug of liquid in the dead volume (mutable: its volume shrinks as it drains)."""

    volume_ul: float
    composition: tuple[float, ...]


def _pure(valve: int) -> tuple[float, ...]:
    return tuple(1.0 if v == valve else 0.0 for v in range(1, VALVES + 1))
