"""A scripted binding assay on the simulated bench: load -> incubate -> harvest -> count.

Drives the real drivers over their real transports (Modbus TCP, pty serial, VISA socket) and
does the operator's physical steps through the simulator's control channel, exactly what
the orchestrator (issue 5) will automate. Run it against a running ``assay-sim bench``::

    .venv/bin/assay-sim bench --config config/lab.toml &
    .venv/bin/python -m devtools.scripted_assay --config config/lab.toml [--minutes 90]

Times are simulated: the script waits on a clock scaled like the bench's
(``simulation.time_scale``), so a 90-minute incubation takes 90 min / scale of real time.
It prints the plate's counts next to the world's truth.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from acquisition.config import (
    CounterConfig,
    HarvesterConfig,
    IncubatorConfig,
    LabConfig,
    load_config,
)
from acquisition.sim_control import SimControl
from drivers.clock import Clock, ScaledClock
from drivers.counter import CounterDriver, WellCount
from drivers.errors import AssayError
from drivers.harvester import HarvesterDriver
from drivers.harvester.driver import HarvestReport
from drivers.incubator import IncubatorDriver

__all__ = ["AssayOutcome", "run_scripted_assay"]


@dataclass(frozen=True)
class AssayOutcome:
    plate_id: str
    mat_id: str
    stable_after_s: float
    harvest: HarvestReport
    wells: dict[str, WellCount]
    truth: dict[str, Any]
    plate: dict[str, Any]


def _one(config: LabConfig, kind: type[Any]) -> Any:
    found = [i for i in config.instruments if isinstance(i, kind)]
    if not found:
        raise SystemExit(f"scripted_assay: the config has no {kind.__name__}")
    return found[0]


async def run_scripted_assay(
    config: LabConfig,
    clock: Clock,
    *,
    plate_id: str = "P1",
    minutes: float = 90.0,
    celsius: float = 37.0,
    pei: bool = True,
    washes: int = 3,
    count_time_s: float = 60.0,
    layout: dict[str, Any] | None = None,
) -> AssayOutcome:
    """Run one assay; every wait is on ``clock`` (simulated time)."""
    inc_cfg: IncubatorConfig = _one(config, IncubatorConfig)
    har_cfg: HarvesterConfig = _one(config, HarvesterConfig)
    ctr_cfg: CounterConfig = _one(config, CounterConfig)
    if config.simulation.control_port is None:
        raise SystemExit("scripted_assay: simulation.control_port is not set")
    incubator = IncubatorDriver(inc_cfg.address, instrument_id=inc_cfg.id, clock=clock)
    harvester = HarvesterDriver(har_cfg.address, instrument_id=har_cfg.id, clock=clock, poll_s=5.0)
    counter = CounterDriver(
        ctr_cfg.address, instrument_id=ctr_cfg.id, clock=clock, poll_interval_s=2.0
    )
    async with (
        SimControl(config.simulation.control_host, config.simulation.control_port) as sim,
        incubator,
        harvester,
        counter,
    ):
        # Bring the incubator to temperature first; the timer starts once it is stable, when
        # the plate is set up (membranes, radioligand, competitors) and loaded.
        await incubator.set_temperature(celsius)
        t0 = clock.monotonic()
        await incubator.wait_until_stable(
            tolerance_c=0.5, hold_s=60.0, timeout_s=3 * 3600.0, poll_s=10.0
        )
        stable_after_s = clock.monotonic() - t0
        plate_args = layout or {"layout": "competition", "competitors": ["progesterone"]}
        await sim.request("add_plate", plate_id=plate_id, **plate_args)
        await sim.request("place_plate", plate_id=plate_id, location=f"incubator:{inc_cfg.id}")
        await incubator.start_shaking(300)
        await clock.sleep(minutes * 60.0)
        await incubator.stop_shaking()
        await sim.request("place_plate", plate_id=plate_id, location=f"harvester:{har_cfg.id}")
        report = await harvester.harvest(
            prewet_s=10 if pei else 0, washes=washes, wash_volume_ml=1.0, dry_s=30
        )
        world = (await sim.request("world"))["world"]
        mat_id = next(m for m, v in world["mats"].items() if v["plate_id"] == plate_id)
        # The spent plate leaves the harvester; the mat goes into the counter.
        await sim.request("place_plate", plate_id=plate_id, location="bench")
        await sim.request("place_mat", mat_id=mat_id, location=f"counter:{ctr_cfg.id}")
        wells = {w.well: w async for w in counter.count_plate(count_time_s=count_time_s)}
        await sim.request("place_mat", mat_id=mat_id, location="bench")
        truth = (await sim.request("truth"))["truth"]
        plate = (await sim.request("world"))["world"]["plates"][plate_id]
    return AssayOutcome(plate_id, mat_id, stable_after_s, report, wells, truth, plate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--minutes", type=float, default=90.0)
    parser.add_argument("--celsius", type=float, default=37.0)
    parser.add_argument("--no-pei", action="store_true")
    parser.add_argument("--plate-id", default=None, help="default: a new id each run")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except AssayError as exc:
        print(f"scripted_assay: {exc}", file=sys.stderr)
        return 2
    clock = ScaledClock(config.simulation.time_scale)
    plate_id = args.plate_id or f"P{time.strftime('%H%M%S')}"
    try:
        out = asyncio.run(
            run_scripted_assay(
                config, clock, plate_id=plate_id, minutes=args.minutes, celsius=args.celsius,
                pei=not args.no_pei,
            )
        )  # fmt: skip
    except AssayError as exc:
        print(f"scripted_assay: {exc}", file=sys.stderr)
        return 1
    print(f"plate {out.plate_id} -> mat {out.mat_id}; incubator stable after "
          f"{out.stable_after_s / 60:.1f} min; harvest took {out.harvest.duration_s:.0f} s, "
          f"clogged: {', '.join(out.harvest.clogged_wells) or 'none'}")  # fmt: skip
    print("row  " + "  ".join(f"{c:>7}" for c in range(1, 13)))
    for row in "ABCDEFGH":
        cells = [out.wells.get(f"{row}{c}") for c in range(1, 13)]
        print(f"{row}    " + "  ".join(f"{w.ccpm:7.0f}" if w else "      -" for w in cells))
    t = out.truth
    print(f"truth: Kd {t['kd_nm']} nM, Bmax {t['bmax_fmol_per_mg']} fmol/mg, Ki {t['ki_nm']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
