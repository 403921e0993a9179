"""A real Mosquitto broker in a subprocess, for tests, demos and benchmarks.

::

    with MosquittoBroker(users={"assayd": "pw"}, tls=True) as broker:
        ... broker.port, broker.tls_port, broker.ca_path ...
        broker.kill(); broker.start()          # SIGKILL, then back on the same port

Every method is synchronous and quick (it waits only for the broker's port to accept TCP);
async code may call the ``a``-prefixed twins (``await broker.arestart()``), which run the
same work on a thread. Mosquitto cannot listen on port 0, so a free loopback port is picked
and the start is retried on another one if a concurrent process wins the bind race. The
config, password file, ACL, certificates, persistence database and log (``log_path``) all
live in one temporary directory, removed by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from devtools import certs

__all__ = ["MosquittoBroker", "ensure_mosquitto"]

_INSTALL_HINT = "apt-get install -y mosquitto mosquitto-clients"


def ensure_mosquitto() -> str:
    """The path of the mosquitto binary, or RuntimeError naming the install command."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise RuntimeError(f"the mosquitto broker is not installed: {_INSTALL_HINT}")
    return found


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One mosquitto process; see the module docstring."""

    def __init__(
        self,
        *,
        persistence: bool = False,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        tls: bool = False,
        max_queued_messages: int | None = None,
        autosave_interval_s: int | None = None,
        extra_config: str = "",
        host: str = "127.0.0.1",
        port: int | None = None,
        tls_port: int | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.binary = ensure_mosquitto()
        self.host = host
        self.persistence = persistence
        self.users = dict(users or {})
        self.acl = acl
        self.tls = tls
        self.max_queued_messages = max_queued_messages
        self.autosave_interval_s = autosave_interval_s
        self.extra_config = extra_config
        self.start_timeout_s = start_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.workdir = Path(self._tmp.name)
        self.workdir.chmod(0o755)  # run as root, mosquitto may drop privileges
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = port  # pinned: never moved to another port
        self._tls_port: int | None = tls_port if tls else None
        self.ca_path: Path | None = None
        self._server: certs.KeyPair | None = None
        self._prepare_files()

    # -- public surface ----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker was never started")
        return self._port

    @property
    def tls_port(self) -> int:
        if self._tls_port is None:
            raise RuntimeError("the broker has no TLS listener (tls=False) or never started")
        return self._tls_port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MosquittoBroker:
        """Start (on the previous ports if it ran before) and wait until it accepts TCP."""
        if self.running:
            return self
        fixed = self._port is not None and (self._tls_port is not None or not self.tls)
        last_error = ""
        for attempt in range(20):
            if not fixed:
                self._port = self._port or _free_port(self.host)
                self._tls_port = _free_port(self.host) if self.tls else None
            self._write_config()
            if self._spawn_and_wait():
                return self
            last_error = self._log_tail()
            if fixed:  # the old port may still be held for a moment: retry it
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        raise RuntimeError(f"mosquitto did not start on {self.host}:{self._port}: {last_error}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence database), then wait."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving anything."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGKILL if ``hard``) and start again on the same port(s)."""
        self.kill() if hard else self.stop()
        self.start()

    def reload(self, *, acl: str | None = None) -> None:
        """SIGHUP: Mosquitto re-reads its config, password file and ACL (``acl`` replaces
        the ACL file first, if given). Returns once the signal is sent."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the broker is not running")
        if acl is not None:
            self.acl = acl
            (self.workdir / "acl").write_text(acl)
            self._write_config()
        self._proc.send_signal(signal.SIGHUP)

    def close(self) -> None:
        """Kill the broker and remove its directory."""
        with contextlib.suppress(Exception):
            self.kill()
        self._tmp.cleanup()

    async def astart(self) -> MosquittoBroker:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def arestart(self, *, hard: bool = False) -> None:
        await asyncio.to_thread(lambda: self.restart(hard=hard))

    def __enter__(self) -> MosquittoBroker:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MosquittoBroker {self.host}:{self._port} running={self.running}>"

    # -- internals ---------------------------------------------------------------------

    def _prepare_files(self) -> None:
        if self.users:
            pwfile = self.workdir / "passwd"
            pwfile.touch(mode=0o600)
            passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for user, password in self.users.items():
                proc = subprocess.run(
                    [passwd, "-b", str(pwfile), user, password],
                    capture_output=True, text=True, check=False, timeout=30,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise RuntimeError(f"mosquitto_passwd failed ({_INSTALL_HINT}?): {proc.stderr}")
            pwfile.chmod(0o600)
        if self.acl is not None:
            (self.workdir / "acl").write_text(self.acl)
        if self.tls:
            ca = certs.make_ca(self.workdir / "certs")
            self.ca_path = ca.cert
            self._server = certs.issue(ca, self.workdir / "certs", "server")
        if self.persistence:
            (self.workdir / "db").mkdir(mode=0o755)

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.users:
            lines.append(f"password_file {self.workdir / 'passwd'}")
        if self.acl is not None:
            lines.append(f"acl_file {self.workdir / 'acl'}")
        if self.max_queued_messages is not None:
            lines.append(f"max_queued_messages {self.max_queued_messages}")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir / 'db'}/",
                "persistence_file mosquitto.db",
            ]
            if self.autosave_interval_s is not None:
                lines.append(f"autosave_interval {self.autosave_interval_s}")
        else:
            lines.append("persistence false")
        if self.extra_config:
            lines.append(self.extra_config)
        lines.append(f"listener {self._port} {self.host}")
        lines.append("set_tcp_nodelay true")  # per listener: no Nagle delay on small replies
        if self.tls and self._server is not None and self.ca_path is not None:
            lines += [
                f"listener {self._tls_port} {self.host}",
                f"cafile {self.ca_path}",
                f"certfile {self._server.cert}",
                f"keyfile {self._server.key}",
                "set_tcp_nodelay true",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _spawn_and_wait(self) -> bool:
        stderr_path = self.workdir / "stderr.log"
        with stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
            )  # fmt: skip
        ports = [p for p in (self._port, self._tls_port) if p is not None]
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if all(_accepts(self.host, p) for p in ports):
                return self._proc.poll() is None
            time.sleep(0.01)
        self._signal(signal.SIGKILL, 5.0)
        return False

    def _signal(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _log_tail(self, lines: int = 5) -> str:
        text = ""
        for path in (self.workdir / "stderr.log", self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no log output)"
