"""``make demo``: count a plate on the simulated bench from the bench terminal.

Starts a real Mosquitto on a free port, the simulated bench (``assay-sim bench``) and the
daemon (``assayd``), then does what a scientist would do at the terminal: ``assay status``,
``assay instruments``, ``assay run start count-plate``, ``assay run watch RUN`` (live
progress) and ``assay results RUN``. Stops everything cleanly and exits 0 on success.
Set ``DEMO_BROKER_PORT`` to pin the broker's port (e.g. to run ``mosquitto_sub`` beside it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.mosquitto import MosquittoBroker
from devtools.stack import VENV_BIN, DaemonProcess, SimBenchProcess, write_lab_config

TIME_SCALE = 30.0  # a 96-well plate at 60 s/well on 12 detectors takes ~17 s of wall time
COUNT_TIME_S = 60
# The simulated counter's demo plate: a progesterone-like competitor (Ki 100 nM) in rows A-C,
# a haloperidol-like one in D-F, radioligand at its Kd, ascending doses from column 3.
ANALYSIS = {
    "competitor": "progesterone-like",
    "constants": {"HotNM": 5.0, "HotKdNM": 5.0},
    "layout": {
        "competitors": {"progesterone-like": "ABC", "haloperidol-like": "DEF"},
        "descending": False,
        "blank_rows": "GH",
    },
}


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
    with tempfile.TemporaryDirectory(prefix="assay-demo-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        _say("starting Mosquitto, the simulated bench and the daemon")
        broker = stack.enter_context(MosquittoBroker(port=int(pinned) if pinned else None))
        lab = write_lab_config(
            workdir,
            broker_port=broker.port,
            time_scale=TIME_SCALE,
            kinds=("counter", "incubator", "harvester", "perfusion"),
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

        _say(f"counting the demo plate: {COUNT_TIME_S} s per well, simulated time x{TIME_SCALE:g}")
        started = _assay(
            lab.config_path,
            "run",
            "start",
            "count-plate",
            "--count-time",
            str(COUNT_TIME_S),
            "--label",
            "make demo",
            "--analysis",
            json.dumps(ANALYSIS),
            capture=True,
        )
        match = re.search(r"started run (\S+)", started.stdout)
        if match is None:
            raise SystemExit("demo: could not read the run id from `assay run start`")
        run = match.group(1)
        _assay(lab.config_path, "run", "watch", run)

        _say("per-well results and the analysis (Ki with its 95% CI, QC)")
        _wait_for_analysis(lab.config_path, run)
        _assay(lab.config_path, "results", run, "--plot", str(workdir / "fit.png"))
        _assay(
            lab.config_path,
            "results",
            run,
            "--format",
            "csv",
            "--output",
            str(workdir / "wells.csv"),
        )

        _say("stopping")
        code = daemon.stop()
        print(f"assayd stopped (exit {code})")
        print(f"assay-sim stopped (exit {sim.stop()})")
    print("demo: done", flush=True)
    return 0


def _wait_for_analysis(config: Path, run: str, attempts: int = 50) -> None:
    """The analysis follows the count's stop document by a fraction of a second."""
    for _ in range(attempts):
        out = subprocess.run(
            [str(VENV_BIN / "assay"), "--config", str(config), "results", run, "--format", "json"],
            text=True, capture_output=True, check=False,
        )  # fmt: skip
        if out.returncode == 0 and json.loads(out.stdout).get("analysis"):
            return
        time.sleep(0.2)
    raise SystemExit("demo: the analysis of the run did not appear")


if __name__ == "__main__":
    sys.exit(main())
