"""``make demo``: the seed's competition-binding assay, end to end, from the bench terminal.

Starts a real Mosquitto on a free port, the simulated bench (``assay-sim bench``) and the
daemon (``assayd``), then does what a scientist would do at the terminal:

1. ``assay status`` and ``assay instruments`` (all four instruments, live readings);
2. ``assay plate-map competition`` writes the plate map (total, NSB, progesterone in
   triplicate over ten concentrations) and ``assay protocol check`` prints the plan;
3. ``assay run start competition-binding --plate-map ... --watch``: the plate goes into the
   incubator (the virtual operator's hands), 90 min at 37 C once stable with the temperature
   live, the harvest with its washes, the mat into the counter, each well as it is counted,
   then the analysis;
4. ``assay results RUN --plot fit.png``: the fit, IC50 and Ki with their 95% CIs, QC, and
   the plot's path.

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
PROTOCOL = Path("config/protocols/competition-binding.toml")


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _assay(config: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [str(VENV_BIN / "assay"), "--config", str(config), *args]
    print("$ assay " + " ".join(args), flush=True)
    result = subprocess.run(argv, text=True, capture_output=capture, check=False)
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
            kinds=("counter", "incubator", "harvester", "perfusion"),
            counter_poll_s=2.0,  # simulated seconds between the counter's status polls
            top_extra=f'protocols_dir = "{PROTOCOL.parent.resolve()}"',
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

        _say("stopping")
        code = daemon.stop()
        print(f"assayd stopped (exit {code})")
        print(f"assay-sim stopped (exit {sim.stop()})")
    print("demo: done", flush=True)
    return 0


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
