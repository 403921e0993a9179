"""Start the product's processes the way a lab would, for the demo, e2e tests and benches.

Everything runs as real processes on loopback: ``assay-sim bench`` (the simulated
instruments on their real interfaces), ``assayd`` (the daemon) and, via
:mod:`devtools.mosquitto`, a real broker. Nothing here imports the simulators or reaches into
the daemon: they meet only over their wires, as in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = ["DaemonProcess", "LabFiles", "SimBenchProcess", "free_port", "write_lab_config"]

VENV_BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LabFiles:
    """A lab config written for one stack, and the ports it names."""

    config_path: Path
    workdir: Path
    broker_port: int
    counter_port: int
    control_port: int
    journal_path: Path
    node: str = "lab1"
    env: dict[str, str] = field(default_factory=dict)


def write_lab_config(
    workdir: Path,
    *,
    broker_port: int,
    node: str = "lab1",
    time_scale: float = 60.0,
    counter_port: int | None = None,
    control_port: int | None = None,
    detectors: int = 12,
    overhead_s: float = 2.0,
    seed: int = 1,
    mqtt_extra: str = "",
    kinds: tuple[str, ...] = ("counter",),
    simulation_extra: str = "",
    counter_poll_s: float = 0.05,
    top_extra: str = "",
    virtual_operator: bool = True,
    journal_path: Path | None = None,
) -> LabFiles:
    """Write ``workdir/lab.toml`` for a simulated bench on free loopback ports.

    ``kinds``: which instruments the bench has (``counter``, ``incubator``, ``harvester``,
    ``perfusion``, ``amplifier``, ``digitizer``); serial ones get a pty link inside
    ``workdir``. ``journal_path``: default ``workdir/journal.sqlite3`` (give another to
    restart a daemon on the same journal).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    counter_port = counter_port or free_port()
    control_port = control_port or free_port()
    journal = journal_path or workdir / "journal.sqlite3"
    text = f"""\
node = "{node}"
{top_extra}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
topic_prefix = "assay"
{mqtt_extra}

[journal]
path = "{journal}"

[logging]
level = "info"
format = "json"

{_instrument_tables(workdir, kinds, counter_port, counter_poll_s)}
[simulation]
enabled = true
time_scale = {time_scale}
control_port = {control_port}
virtual_operator = {str(virtual_operator).lower()}

[simulation.counter]
detectors = {detectors}
overhead_s = {overhead_s}
background_cpm = 25.0
seed = {seed}
{simulation_extra}
"""
    path = workdir / "lab.toml"
    path.write_text(text, encoding="utf-8")
    return LabFiles(path, workdir, broker_port, counter_port, control_port, journal, node)


def _instrument_tables(
    workdir: Path, kinds: tuple[str, ...], counter_port: int, counter_poll_s: float
) -> str:
    tables = {
        "counter": f"""[[instruments]]
id = "counter"
kind = "counter"
address = "TCPIP::127.0.0.1::{counter_port}::SOCKET"
poll_interval_s = {counter_poll_s}
status_interval_s = 0.5
""",
        "incubator": f"""[[instruments]]
id = "incubator"
kind = "incubator"
address = "modbus-tcp://127.0.0.1:{free_port()}"
status_interval_s = 0.5
""",
        "harvester": f"""[[instruments]]
id = "harvester"
kind = "harvester"
address = "{workdir / "harvester.pty"}"
status_interval_s = 0.5
""",
        "perfusion": f"""[[instruments]]
id = "perfusion"
kind = "perfusion"
address = "{workdir / "perfusion.pty"}"
status_interval_s = 0.5
""",
        "amplifier": f"""[[instruments]]
id = "amplifier"
kind = "amplifier"
address = "tcp://127.0.0.1:{free_port()}"
status_interval_s = 0.5
""",
        "digitizer": f"""[[instruments]]
id = "digitizer"
kind = "digitizer"
address = "tcp://127.0.0.1:{free_port()}"
status_interval_s = 0.5
""",
    }
    return "\n".join(tables[k] for k in kinds)


class _Process:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    name = "process"

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._log: BinaryIO | None = None

    def start(self) -> None:
        self._close_log()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_log(self, needle: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not log {needle!r} in {timeout_s} s:\n{self.tail()}")

    def output(self) -> str:
        """What this process (since its latest start) has written."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> _Process:
        try:
            self.start()
        except BaseException:  # it never got going: nothing of it left open
            self.stop()
            self._close_log()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SimBenchProcess(_Process):
    """``assay-sim bench --config PATH``; ready once it prints ``ready``."""

    name = "assay-sim"

    def __init__(self, lab: LabFiles) -> None:
        super().__init__(
            [str(VENV_BIN / "assay-sim"), "bench", "--config", str(lab.config_path)],
            lab.workdir / "assay-sim.log",
            lab.env,
        )

    def start(self) -> None:
        super().start()
        self.wait_for_log("ready")


class DaemonProcess(_Process):
    """``assayd --config PATH [ARGS]``; ready once it logs ``broker connected``."""

    name = "assayd"

    def __init__(self, lab: LabFiles, *args: str) -> None:
        super().__init__(
            [str(VENV_BIN / "assayd"), "--config", str(lab.config_path), *args],
            lab.workdir / "assayd.log",
            lab.env,
        )

    def start(self) -> None:
        super().start()
        self.wait_for_log("broker connected")

    def run_to_exit(self, timeout_s: float = 30.0) -> int:
        """Start it and wait for it to exit by itself (a daemon expected to refuse to
        start); its exit code. TimeoutError (after killing it) if it keeps running."""
        super().start()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"{self.name} still running after {timeout_s} s:\n{self.tail()}"
            ) from None
        finally:
            self._close_log()

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        """Wait for the running daemon to exit by itself; its exit code."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} still running after {timeout_s} s:\n{self.tail()}"
            ) from None
