"""``make demo``: the seed's two experiments, end to end, from the bench terminal: the
competition-binding assay, then the patch-clamp experiment on the same bench.

Starts a real Mosquitto on a free port, the simulated bench (``assay-sim bench``) and the
daemon (``assayd``), then does what a scientist would do at the terminal:

1. ``assay status`` and ``assay instruments`` (all six instruments, live readings);
2. ``assay plate-map competition`` writes the plate map (total, NSB, progesterone in
   triplicate over ten concentrations) and ``assay protocol check`` prints the plan;
3. ``assay run start competition-binding --plate-map ... --watch``: the plate goes into the
   incubator (the virtual operator's hands), 90 min at 37 C once stable with the temperature
   live, the harvest with its washes, the mat into the counter, each well as it is counted,
   then the analysis;
4. ``assay results RUN --plot fit.png``: the fit, IC50 and Ki with their 95% CIs, QC, and
   the plot's path;
5. ``assay run start s1r-inap-dheas``: seal test, break-in, membrane test, compensation, slow
   ramps in baseline, DHEA-S 10 uM, DHEA-S + NE-100 and washout; ``assay results RUN --plot
   effect.png``: the cell, QC and the INaP effect table, and what it says.

Simulated time runs :data:`TIME_SCALE` times faster than real time (about two hours of assay
in well under a minute). Exits 0 on success. ``DEMO_BROKER_PORT`` pins the broker's port
(e.g. to run ``mosquitto_sub`` beside it). The plate map, the plot and the CSV are kept in
``var/demo`` (``DEMO_OUTPUT`` to choose another directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from devtools.mosquitto import MosquittoBroker
from devtools.stack import VENV_BIN, DaemonProcess, SimBenchProcess, write_lab_config

TIME_SCALE = 300.0  # 90 min of incubation in 18 s; the whole assay in about 35 s
PATCH_PROTOCOL = Path("config/protocols/s1r-inap-dheas.toml")
# At x300 the daemon's real-time work between conditions (writing the NWB file, a second or
# two) is minutes of simulated time, over which the access keeps drifting: a slower drift
# than the rig's default keeps this demo's cell within QC (a real rig runs at x1).
RIG = """
[simulation.rig]
cell = "neuron"
stage = "bath"
ra_drift_per_min = 0.002
[simulation.rig.solutions]
3 = { "DHEA-S" = 10e-6 }
4 = { "DHEA-S" = 10e-6, "NE-100" = 1e-6 }
"""
PROTOCOL = Path("config/protocols/competition-binding.toml")


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _assay(config: Path, *args: str, capture: bool = False,
           timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = [str(VENV_BIN / "assay"), "--config", str(config), *args]
    print("$ assay " + " ".join(args), flush=True)
    try:
        result = subprocess.run(argv, text=True, capture_output=capture, check=False,
                                timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SystemExit(f"demo: `assay {' '.join(args)}` did not end within {timeout_s:g} s "
                         "(a run waiting for the operator?)") from None
    if capture and result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        if capture and result.stderr:
            print(result.stderr, end="", file=sys.stderr)
        raise SystemExit(f"demo: `assay {' '.join(args)}` failed (exit {result.returncode})")
    return result


def main() -> int:
    pinned = os.environ.get("DEMO_BROKER_PORT")
    keep = os.environ.get("DEMO_OUTPUT")
    with tempfile.TemporaryDirectory(prefix="assay-demo-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        out = Path(keep or "var/demo").resolve()
        out.mkdir(parents=True, exist_ok=True)
        _say("starting Mosquitto, the simulated bench and the daemon")
        broker = stack.enter_context(MosquittoBroker(port=int(pinned) if pinned else None))
        lab = write_lab_config(
            workdir,
            broker_port=broker.port,
            time_scale=TIME_SCALE,
            kinds=("counter", "incubator", "harvester", "perfusion", "amplifier", "digitizer"),
            counter_poll_s=2.0,  # simulated seconds between the counter's status polls
            top_extra=f'protocols_dir = "{PROTOCOL.parent.resolve()}"',
            simulation_extra=RIG,
        )
        watch = f"mosquitto_sub -p {broker.port} -v -t 'assay/#'"
        print(f"broker   127.0.0.1:{broker.port}   (watch it: {watch})")
        sim = stack.enter_context(SimBenchProcess(lab))
        print(sim.output().replace("ready\n", ""), end="")
        daemon = stack.enter_context(DaemonProcess(lab))
        print(f"assayd   pid {daemon.pid}, logs in {daemon.log_path}")

        _say("the bench terminal")
        _assay(lab.config_path, "status")
        _assay(lab.config_path, "instruments", "--wait", "20")

        _say("the plate map and the protocol")
        plate_map = out / "competition-plate.toml"
        _assay(lab.config_path, "plate-map", "competition", "--competitor", "progesterone",
               "--top", "1e-5", "--points", "10", "--replicates", "3",
               "--output", str(plate_map))  # fmt: skip
        _assay(lab.config_path, "protocol", "check", str(PROTOCOL))

        _say(f"running the assay (simulated time x{TIME_SCALE:g}; the virtual operator "
             "moves the plate and the mat)")  # fmt: skip
        started = _assay(
            lab.config_path, "run", "start", "competition-binding", "--plate-map",
            str(plate_map), "--label", "make demo", capture=True,
        )  # fmt: skip
        match = re.search(r"started run (\S+)", started.stdout)
        if match is None:
            raise SystemExit("demo: could not read the run id from `assay run start`")
        run = match.group(1)
        _assay(lab.config_path, "run", "watch", run)

        _say("the result: IC50 and Ki with their 95% CIs, QC, the plot")
        plot = out / "fit.png"
        _assay(lab.config_path, "results", run, "--plot", str(plot))
        csv = out / "wells.csv"
        _assay(lab.config_path, "results", run, "--format", "csv", "--output", str(csv))
        _summary(lab.config_path, run, plot)

        _patch_clamp(lab.config_path, out)

        _say("stopping")
        code = daemon.stop()
        print(f"assayd stopped (exit {code})")
        print(f"assay-sim stopped (exit {sim.stop()})")
    print("demo: done", flush=True)
    return 0


def _patch_clamp(config: Path, out: Path) -> None:
    """The seed's second experiment on the same bench: DHEA-S on INaP through S1R."""
    _say("the patch-clamp experiment: seal, break in, ramps in baseline, DHEA-S, "
         "DHEA-S + NE-100, washout")  # fmt: skip
    _assay(config, "protocol", "check", str(PATCH_PROTOCOL))
    started = _assay(config, "run", "start", "s1r-inap-dheas", "--label", "make demo",
                     capture=True)  # fmt: skip
    match = re.search(r"started run (\S+)", started.stdout)
    if match is None:
        raise SystemExit("demo: could not read the run id from `assay run start`")
    run = match.group(1)
    _assay(config, "run", "watch", run, timeout_s=240)
    _say("the effect: INaP per condition, QC, the NWB file, the plot")
    plot = out / "effect.png"
    _assay(config, "results", run, "--plot", str(plot))
    effect = _results_json(config, run)["effect"]
    pct = [c["pct_of_baseline"] for c in effect["conditions"]]
    print()
    if len(pct) >= 4 and None not in pct[1:4]:
        drug, blocked, washout = (float(p) for p in pct[1:4])
        said = [
            f"DHEA-S {'reduces' if drug < 90 else 'does not reduce'} INaP to {drug:.0f} % of "
            "baseline",
            f"NE-100 {'prevents it' if blocked > 90 else 'does not prevent it'} "
            f"({blocked:.0f} %)",
            f"washout {'recovers' if washout > 90 else 'does not recover'} ({washout:.0f} %)",
        ]  # fmt: skip
        print("  " + "; ".join(said) + f"  (one simulated cell; plot {plot})")


def _summary(config: Path, run: str, plot: Path) -> None:
    """The headline: IC50 and Ki with their CIs, against the simulated world's truth."""
    res = _results_json(config, run)
    analysis = res.get("analysis")
    if not analysis:
        raise SystemExit(f"demo: run {run} has no analysis")
    derived = {p["name"]: p for p in analysis.get("derived") or []}
    print()
    for name in ("IC50", "Ki"):
        p = derived.get(name)
        if p is None:
            raise SystemExit(f"demo: the analysis has no {name}")
        print(f"  {name:<5} {p['estimate'] * 1e9:8.1f} nM   95% CI "
              f"{p['ci_low'] * 1e9:.1f} to {p['ci_high'] * 1e9:.1f} nM")  # fmt: skip
    verdict = "passed" if analysis["passed"] else "FAILED (see above)"
    print(f"  QC    {verdict}")
    print(f"  plot  {plot}")


def _results_json(config: Path, run: str) -> dict[str, Any]:
    argv = [str(VENV_BIN / "assay"), "--config", str(config), "results", run, "--format", "json"]
    out = subprocess.run(argv, text=True, capture_output=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"demo: `assay results {run}` failed: {out.stderr.strip()}")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


if __name__ == "__main__":
    sys.exit(main())
