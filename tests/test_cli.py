"""The bench terminal as a scientist uses it: real processes, real broker, its exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devtools.mosquitto import MosquittoBroker
from tests.e2e import lab_stack, terminal_env

pytestmark = pytest.mark.slow
ASSAY = str(Path(sys.executable).parent / "assay")


def assay(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ASSAY, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=terminal_env(),
    )


def test_a_count_from_the_terminal(broker: MosquittoBroker, tmp_path: Path) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=2000.0) as stack:
        cfg = stack.lab.config_path
        inst = assay(cfg, "instruments", "--wait", "15")
        assert inst.returncode == 0, inst.stderr
        assert "counter" in inst.stdout and "idle" in inst.stdout
        started = assay(cfg, "run", "start", "count-plate", "--count-time", "10", "--watch")
        assert started.returncode == 0, started.stderr
        run = re.search(r"started run (\S+)", started.stdout)
        assert run is not None
        assert "completed" in started.stdout
        run_id = run.group(1)

        as_csv = assay(cfg, "results", run_id, "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
        assert len(rows) == 96 and {r["run"] for r in rows} == {run_id}
        as_json = json.loads(assay(cfg, "results", run_id, "--format", "json").stdout)
        assert [w["well"] for w in as_json["wells"]] == [r["well"] for r in rows]
        assert as_json["stop"]["exit_status"] == "success"
        table = assay(cfg, "results", run_id)
        assert table.returncode == 0 and "96 wells; stop: success" in table.stdout
        assert run_id in assay(cfg, "runs").stdout
        status = assay(cfg, "status")
        assert status.returncode == 0 and "online" in status.stdout

        missing = assay(cfg, "results", "no-such-run")
        assert missing.returncode == 1
        assert missing.stderr.strip() == "assay: not_found: no run 'no-such-run'"


def test_watch_survives_a_broker_restart(tmp_path: Path) -> None:
    with MosquittoBroker() as broker, lab_stack(tmp_path, broker.port, time_scale=150.0) as stack:
        cfg = stack.lab.config_path
        assert assay(cfg, "instruments", "--wait", "15").returncode == 0
        started = assay(cfg, "run", "start", "--count-time", "30")
        run = re.search(r"started run (\S+)", started.stdout)
        assert run is not None
        watch = subprocess.Popen(
            [ASSAY, "--config", str(cfg), "run", "watch", run.group(1)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Restart the broker (SIGKILL) once the watch has seen the count going.
        timer = threading.Timer(1.0, broker.restart, kwargs={"hard": True})
        timer.start()
        try:
            out, _ = watch.communicate(timeout=60)
        finally:
            timer.cancel()
        assert watch.returncode == 0, out
        assert "reconnecting" in out
        assert "completed" in out


def test_terminal_says_clearly_when_nothing_answers(tmp_path: Path) -> None:
    from devtools.stack import free_port, write_lab_config

    lab = write_lab_config(tmp_path, broker_port=free_port())
    no_broker = assay(lab.config_path, "status", timeout=30)
    assert no_broker.returncode == 3
    assert "cannot reach the MQTT broker at 127.0.0.1:" in no_broker.stderr
    assert "Traceback" not in no_broker.stderr


def test_terminal_says_clearly_when_the_daemon_is_not_running(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    from devtools.stack import write_lab_config

    lab = write_lab_config(tmp_path, broker_port=broker.port, node="ghost")
    out = assay(lab.config_path, "--timeout", "1", "instruments", timeout=30)
    assert out.returncode == 3
    assert "daemon 'ghost' did not answer" in out.stderr


def test_instruments_shows_the_whole_simulated_bench_with_live_readings(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    kinds = ("counter", "incubator", "harvester", "perfusion")
    with lab_stack(tmp_path, broker.port, time_scale=60.0, kinds=kinds) as stack:
        out = assay(stack.lab.config_path, "instruments", "--wait", "20")
        assert out.returncode == 0, out.stdout + out.stderr
        rows = [line for line in out.stdout.splitlines() if line.startswith("│")]
        assert {row.split("│")[1].strip() for row in rows} >= set(kinds)
        assert all(row.split("│")[4].strip() in {"yes", ""} for row in rows)
        # The key reading of each: temperature, vacuum, valve states, the plate in the counter.
        for needle in ("temperature_c=21", "vacuum_bar=", "valves=00000000", "plate_id=DEMO-0001"):
            assert needle in out.stdout, needle


def test_the_virtual_operator_through_the_daemon(broker: MosquittoBroker, tmp_path: Path) -> None:
    kinds = ("counter", "incubator")
    with lab_stack(tmp_path, broker.port, time_scale=60.0, kinds=kinds) as stack:
        cfg = stack.lab.config_path
        added = assay(cfg, "sim", "add_plate", "plate_id=P9", "layout=competition")
        assert added.returncode == 0, added.stderr
        placed = assay(cfg, "sim", "place_plate", "plate_id=P9", "location=incubator:incubator")
        assert placed.returncode == 0, placed.stderr
        world = json.loads(assay(cfg, "sim", "world").stdout)
        assert world["world"]["plates"]["P9"]["location"] == "incubator:incubator"
        door = json.loads(assay(cfg, "sim", "open_incubator_door").stdout)
        assert door["door_open"] is True
        bad = assay(cfg, "sim", "place_plate", "plate_id=nope", "location=bench")
        assert bad.returncode == 1 and "bad_request" in bad.stderr and "nope" in bad.stderr
