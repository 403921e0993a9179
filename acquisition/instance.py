"""One daemon per journal and per node.

Two daemons on one journal would interleave their writes; two daemons on one node id share
one MQTT client id (``assayd-{node}``), so the broker hands the session back and forth
between them, and the terminal talks to whichever holds it. So:

* :class:`JournalLock`: an exclusive ``flock`` on ``<journal>.lock`` beside the journal,
  held for the daemon's life, with the holder's pid, node and start time written in it.
  The kernel drops it when the process ends, however it ends (SIGKILL included), so a
  restart after a crash takes it at once. A second daemon gets :class:`InstanceError`
  naming the holder's pid. (A separate file, not the database: SQLite's own locks are
  POSIX locks on the database file, and some file systems emulate flock with those.)
* :class:`Identity`: who this daemon process is (a new instance id at every start, host,
  boot id, pid, start time); every status payload carries it.
* :func:`live_rival`: does a status payload of our node show another daemon that is, or
  may be, alive? A status saying ``online`` with another instance id does, unless it
  comes from this very PC and that process is provably gone (its pid is not running, or
  the PC has rebooted since: another boot id). A status from another PC cannot be proven
  stale: after a power cut there, the broker keeps it until that daemon's keepalive runs
  out (about 1.5 x ``mqtt.keepalive_s``), then publishes its Last Will (``offline``).
* :func:`claim_node`: at start, before anything else connects, read the node's retained
  status over a short-lived connection of its own (another client id, so a live daemon is
  not disturbed) and refuse with :class:`InstanceError` while a rival is online. With
  ``takeover`` it publishes this daemon's ``online`` status instead; the rival, which
  watches its status topic (:class:`~acquisition.mqtt_link.MqttLink`), stops.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from acquisition.config import LabConfig
from acquisition.errors import InstanceError, JournalError
from acquisition.mqtt_link import broker_error
from acquisition.mqtt_params import client_kwargs
from drivers.backoff import Backoff, ReconnectBackoff

__all__ = ["Identity", "JournalLock", "Rival", "claim_node", "live_rival", "stale_reason"]

log = structlog.get_logger(__name__)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_PAHO_LOGGER = "acquisition.instance.paho"


@dataclass(frozen=True)
class Identity:
    """This daemon process, as its status payloads and its journal lock name it."""

    instance: str
    host: str
    pid: int
    boot_id: str | None
    started_at: datetime

    @classmethod
    def current(cls, started_at: datetime) -> Identity:
        """A new identity for this process. Blocking (reads the boot id from /proc)."""
        try:
            boot_id: str | None = _BOOT_ID.read_text(encoding="ascii").strip() or None
        except OSError:  # not Linux: the pid check alone decides
            boot_id = None
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), boot_id, started_at)


@dataclass(frozen=True)
class Rival:
    """Another daemon's ``online`` status for our node."""

    instance: str | None
    host: str | None
    pid: int | None
    boot_id: str | None
    started_at: str | None

    def describe(self) -> str:
        return (
            f"assayd pid {self.pid if self.pid is not None else '?'}"
            f" on host {self.host or '?'}, started {self.started_at or '?'}"
        )


def _rival(payload: bytes, me: Identity) -> Rival | None:
    """The status payload as a rival: ``online`` with an instance id that is not ours."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("state") != "online":
        return None
    if data.get("instance") == me.instance:
        return None
    pid = data.get("pid")

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return Rival(
        instance=text("instance"),
        host=text("host"),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        boot_id=text("boot_id"),
        started_at=text("started_at"),
    )


def _pid_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def stale_reason(
    rival: Rival, me: Identity, *, running: Callable[[int], bool] = _pid_running
) -> str | None:
    """Why ``rival``'s status is provably stale (its daemon is gone), or None.

    Only a status from this host can be proven stale: the PC rebooted since (another boot
    id), or its pid is not running (or is this process's own now).
    """
    if rival.host is None or rival.host != me.host:
        return None
    if rival.boot_id and me.boot_id and rival.boot_id != me.boot_id:
        return "this PC has rebooted since"
    if rival.pid is None:
        return None
    if rival.pid == me.pid:
        return f"pid {rival.pid} is this process now"
    if not running(rival.pid):
        return f"pid {rival.pid} is not running"
    return None


def live_rival(payload: bytes, me: Identity) -> Rival | None:
    """Another daemon that is (or may be) online for our node, from a status payload."""
    rival = _rival(payload, me)
    if rival is None or stale_reason(rival, me) is not None:
        return None
    return rival


# -- the journal lock ------------------------------------------------------------------------


class JournalLock:
    """``JournalLock.acquire(journal, ...)`` ... ``release()``; blocking calls (use a thread)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, journal: Path, me: Identity, node: str) -> JournalLock:
        """Lock ``journal`` for this process; InstanceError naming the holder if taken."""
        path = journal.with_name(journal.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise JournalError(f"cannot open the journal lock {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InstanceError(
                f"journal {journal} is in use by another assayd ({holder});"
                " one journal serves one daemon: stop that one, or give this one"
                " another journal.path"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot lock the journal {path}: {exc.strerror}") from exc
        record = {
            "pid": me.pid,
            "node": node,
            "host": me.host,
            "instance": me.instance,
            "started_at": me.started_at.isoformat(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Unlock (closing the file drops the lock). The file stays: removing it could let
        a daemon lock a new file while another still holds the old one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    try:
        data: Any = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return "pid unknown"
    node = f", node {data['node']}" if isinstance(data.get("node"), str) else ""
    since = f", started {data['started_at']}" if isinstance(data.get("started_at"), str) else ""
    return f"pid {data['pid']}{node}{since}"


# -- the node's retained status at start -------------------------------------------------------


def refusal(config: LabConfig, rival: Rival) -> str:
    """The one line a daemon that finds ``rival`` online prints before it exits."""
    mqtt = config.mqtt
    return (
        f"node '{config.node}' is already online on broker {mqtt.host}:{mqtt.port}:"
        f" {rival.describe()}. Stop that daemon first. If it is dead (its PC lost power),"
        " the broker marks it offline once its keepalive runs out (about 1.5 x"
        f" mqtt.keepalive_s, {1.5 * mqtt.keepalive_s:g} s with this config); wait for that,"
        " or start this one with --takeover"
    )


async def claim_node(
    config: LabConfig,
    me: Identity,
    *,
    online: Callable[[], bytes],
    takeover: bool,
    stopped: asyncio.Event,
    backoff: Backoff | None = None,
    timeout_s: float = 10.0,
) -> bool:
    """Make sure no other daemon of our node is online; True once this one may connect.

    Retries (with backoff, logging each new error once) while the broker is unreachable;
    False if ``stopped`` is set meanwhile. Raises :class:`InstanceError` (the line from
    :func:`refusal`) if a live rival is online and ``takeover`` is false.
    """
    delays = ReconnectBackoff(backoff or Backoff(base_s=0.1, factor=2.0, cap_s=5.0))
    last_error: str | None = None
    where = f"{config.mqtt.host}:{config.mqtt.port}"
    while not stopped.is_set():
        try:
            await _claim_once(config, me, online=online, takeover=takeover, timeout_s=timeout_s)
            return True
        except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
            error = str(broker_error(exc, where))
            if error != last_error:
                log.warning(
                    "broker connect failed; the node's status is checked before anything starts",
                    error=error,
                )
            last_error = error
        try:
            async with asyncio.timeout(delays.next_delay(None)):
                await stopped.wait()
        except TimeoutError:
            pass
    return False


async def _claim_once(
    config: LabConfig,
    me: Identity,
    *,
    online: Callable[[], bytes],
    takeover: bool,
    timeout_s: float,
) -> None:
    kwargs = await asyncio.to_thread(client_kwargs, config.mqtt)  # TLS files: off the loop
    paho_logger = logging.getLogger(_PAHO_LOGGER)
    paho_logger.setLevel(logging.WARNING)
    topic = config.topic("status")
    async with aiomqtt.Client(
        **kwargs,
        identifier=f"assayd-{config.node}-check-{me.instance[:8]}",
        clean_start=True,
        timeout=timeout_s,
        logger=paho_logger,
    ) as client:
        await client.subscribe(topic, qos=1)
        # The broker sends the retained status while it handles the SUBSCRIBE, before it
        # answers our next packet: once the UNSUBSCRIBE is acknowledged, it is queued.
        await client.unsubscribe(topic)
        payload = b""
        if len(client.messages) > 0:
            async for message in client.messages:
                if isinstance(message.payload, bytes | bytearray):
                    payload = bytes(message.payload)
                break
        rival = _rival(payload, me) if payload else None
        if rival is None:
            return
        if (why := stale_reason(rival, me)) is not None:
            log.warning(
                "the node's retained status says online, but that daemon is gone; going on",
                other=rival.describe(),
                why=why,
            )
            return
        if not takeover:
            raise InstanceError(refusal(config, rival))
        log.warning("taking over the node from another daemon (--takeover)", other=rival.describe())
        # Our status first: the rival sees it on its status subscription and stops, before
        # our connection takes its MQTT session over.
        await client.publish(topic, online(), qos=1, retain=True)
