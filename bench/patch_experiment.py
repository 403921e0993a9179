"""The seed's patch-clamp experiment, whole: wall time of s1r-inap-dheas (about 22 simulated
minutes) on the simulated bench, and the analysis time for its 120 sweeps.

Real processes (Mosquitto, ``assay-sim bench``, ``assayd``) at ``--time-scale`` (x300 by
default, as ``make demo``). Reported against the ideal: the protocol's simulated duration
divided by the time scale. Then, in this process, the run's analysis: every sweep's summary
recomputed from its spooled samples (membrane test on the pulse, the ramp's persistent
current) and the effect table, against the floor of reading the spool alone.

    .venv/bin/python bench/patch_experiment.py [--time-scale 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from acquisition.analysis.drug_effect import analyze_effect
from acquisition.cli.client import DaemonClient
from acquisition.config import load_config
from acquisition.protocols import parse_protocol, plan
from acquisition.spool import read_spool
from acquisition.steps.record import run_reference, sweep_reading
from devtools.demo import RIG  # the demo's cell: the same experiment, measured
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, SimBenchProcess, write_lab_config

PROTOCOL = REPO / "config" / "protocols" / "s1r-inap-dheas.toml"


async def _run(config_path: Path) -> tuple[str, float]:
    config = load_config(config_path)
    async with DaemonClient(config, timeout_s=10) as client:
        async with asyncio.timeout(30):
            while not all(i["connected"] for i in await client.request("instruments")):
                await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        run = (await client.request("run.start", {"protocol": "s1r-inap-dheas",
                                                  "protocol_toml": PROTOCOL.read_text()}))["run"]
        async with asyncio.timeout(600):
            while (await client.request("run.get", {"run": run}))["state"] not in (
                    "completed", "aborted", "failed", "paused"):  # fmt: skip
                await asyncio.sleep(0.1)
        return run, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=300.0)
    args = parser.parse_args()
    protocol, _ = parse_protocol(PROTOCOL.read_text())
    simulated = plan(protocol).total_s
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        lab = write_lab_config(Path(tmp), broker_port=broker.port, time_scale=args.time_scale,
                               kinds=("perfusion", "amplifier", "digitizer"),
                               simulation_extra=RIG)  # fmt: skip
        with SimBenchProcess(lab), DaemonProcess(lab):
            run, wall = asyncio.run(_run(lab.config_path))
        spool = Path(tmp) / "data" / "runs" / run / "sweeps.spool"
        t0 = time.perf_counter()
        contents = read_spool(spool)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference = run_reference(contents.sweeps)
        readings = [sweep_reading(s, reference).model_dump(mode="json") for s in contents.sweeps]
        summaries_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        effect = analyze_effect(run, readings)
        effect_s = time.perf_counter() - t0
    ideal = simulated / args.time_scale
    n = len(contents.sweeps)
    print(f"s1r-inap-dheas at x{args.time_scale:g}: {simulated / 60:.1f} simulated min (without "
          f"the operator's seal and break-in) in {wall:.1f} s of wall time; the ideal "
          f"{ideal:.1f} s (x{wall / ideal:.2f})")  # fmt: skip
    print(f"analysis of the run's {n} sweeps at 20 kHz: {summaries_s * 1e3:.0f} ms to recompute "
          f"every sweep's summary from its samples ({summaries_s / n * 1e3:.1f} ms a sweep) + "
          f"{effect_s * 1e3:.1f} ms for the effect table = {(summaries_s + effect_s):.2f} s "
          f"(target < 1 s); reading the spool alone {read_s * 1e3:.0f} ms "
          f"(x{(summaries_s + effect_s) / read_s:.1f})")  # fmt: skip
    pct = {c.condition: round(c.pct_of_baseline or 0, 1) for c in effect.conditions}
    print(f"effect (% of baseline): {pct}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
