"""The shipped broker configuration (config/mosquitto) on a real Mosquitto.

The ACL is fed to the broker verbatim: every account may read daemon state, only the daemon
account publishes it, operators may also send commands, and any other account (a viewer)
is read-only. With a real daemon: a viewer's ``run.start`` is dropped by the broker and
creates no run, while an operator's starts one that the viewer can follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import SecretStr

from acquisition.cli.client import DaemonClient, NoReplyError
from acquisition.config import LabConfig, load_config
from acquisition.errors import CommandError
from devtools.mosquitto import MosquittoBroker, ensure_mosquitto
from devtools.stack import DaemonProcess, SimBenchProcess, free_port, write_lab_config
from tests.e2e import wait_connected

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_ACL = ROOT / "config" / "mosquitto" / "acl"
SHIPPED_CONF = ROOT / "config" / "mosquitto" / "mosquitto.conf"
# The accounts docs/operations.md creates; "viewer" has no entry in the ACL at all.
PASSWORDS = {"assayd": "daemon-Pw-4kq9", "operator": "operator-Pw-7xr2", "viewer": "viewer-Pw-2mz8"}
WAIT_S = 30.0
# The viewer's terminal would wait this long for a reply; a refusal must come before.
NO_REPLY_S = 5.0
NOT_AUTHORIZED = 0x87
# PUBACK reason codes: 0x00 success, 0x10 "no matching subscribers" (accepted all the same).
GRANTED, DENIED = "granted", "denied"
_VERDICTS = {0x00: GRANTED, 0x10: GRANTED, NOT_AUTHORIZED: DENIED}


@pytest.fixture
def shipped_broker(own_broker: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return own_broker(users=PASSWORDS, acl=SHIPPED_ACL.read_text(encoding="utf-8"))


def _client(
    b: MosquittoBroker | int, user: str | None, identifier: str | None = None
) -> aiomqtt.Client:
    """An MQTT v5 client of ``user`` (None: anonymous) on broker ``b`` (or this port)."""
    host, port = ("127.0.0.1", b) if isinstance(b, int) else (b.host, b.port)
    return aiomqtt.Client(
        host, port, username=user, password=PASSWORDS[user] if user else None,
        identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
    )  # fmt: skip


def _pubacks(client: aiomqtt.Client) -> list[int]:
    """The reason code of every PUBACK ``client`` receives, in order (aiomqtt drops them)."""
    codes: list[int] = []
    paho = client._client
    forward: Callable[..., None] = paho.on_publish  # type: ignore[assignment]

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        codes.append(int(reason.value))
        forward(c, userdata, mid, reason, props)

    paho.on_publish = on_publish
    return codes


def _as(cfg: LabConfig, user: str) -> LabConfig:
    """The terminal's config for ``user``: same broker and node, that account."""
    mqtt = cfg.mqtt.model_copy(update={"username": user, "password": SecretStr(PASSWORDS[user])})
    return cfg.model_copy(update={"mqtt": mqtt})


async def test_the_shipped_acl_loads_and_grants_writes_by_role(
    shipped_broker: MosquittoBroker,
) -> None:
    b = shipped_broker
    assert "Error" not in b.log_path.read_text(), "the broker took the ACL as it is"
    node = "lab-acl"
    cases = {
        "viewer": {"cmd": DENIED, "status": DENIED, "runs/r1/state": DENIED},
        "operator": {"cmd": GRANTED, "status": DENIED, "runs/r1/events": DENIED},
        "assayd": {"status": GRANTED, "runs/r1/state": GRANTED, "replies/x": GRANTED},
    }
    for user, expected in cases.items():
        async with _client(b, user) as client:
            codes = _pubacks(client)
            for suffix in expected:
                await client.publish(f"assay/{node}/{suffix}", b"{}", qos=1)
        verdicts = [_VERDICTS.get(code, hex(code)) for code in codes]
        assert dict(zip(expected, verdicts, strict=True)) == expected, user
    # Any node id: the ACL is written with "+", nothing to substitute per lab.
    async with _client(b, "operator") as client:
        codes = _pubacks(client)
        await client.publish("assay/another-node/cmd", b"{}", qos=1)
    assert [_VERDICTS.get(code) for code in codes] == [GRANTED]


async def test_a_viewer_reads_daemon_state_and_its_own_replies_but_no_one_elses(
    shipped_broker: MosquittoBroker,
) -> None:
    b = shipped_broker
    node = "lab-read"
    me = "assay-cli-viewer01"
    visible = [
        f"assay/{node}/instruments/counter",
        f"assay/{node}/runs/r1/state",
        f"assay/{node}/runs/r1/events",
        f"assay/{node}/runs/r1/result",
        f"assay/{node}/replies/{me}",
        f"assay/{node}/status",  # the last one: the end marker
    ]
    hidden = [f"assay/{node}/cmd", f"assay/{node}/replies/assay-cli-operator01"]
    seen: list[str] = []
    async with _client(b, "viewer", identifier=me) as viewer:
        await viewer.subscribe("assay/#", qos=1)
        async with _client(b, "assayd") as daemon:
            codes = _pubacks(daemon)
            # One publisher, one subscriber, QoS 1: delivered in this order, so once the
            # marker arrives every earlier message that was going to arrive has.
            for topic in hidden + visible:
                await daemon.publish(topic, b"{}", qos=1)
        assert [_VERDICTS.get(code) for code in codes] == [GRANTED] * len(hidden + visible)
        async with asyncio.timeout(WAIT_S):
            async for message in viewer.messages:
                seen.append(str(message.topic))
                if seen[-1] == visible[-1]:
                    break
    assert seen == visible


@pytest.mark.slow
async def test_a_viewer_cannot_start_a_run_and_an_operator_can(
    shipped_broker: MosquittoBroker, tmp_path: Path
) -> None:
    lab = write_lab_config(
        tmp_path, broker_port=shipped_broker.port, time_scale=2000.0,
        mqtt_extra='username = "assayd"',
    )  # fmt: skip
    lab.env["ASSAY_MQTT__PASSWORD"] = PASSWORDS["assayd"]  # as the systemd EnvironmentFile
    start = {"count_time_s": 1, "wells": ["A1", "A2"], "label": "acl"}
    with SimBenchProcess(lab), DaemonProcess(lab):
        cfg = load_config(lab.config_path)
        assert cfg.mqtt.username == "assayd" and cfg.mqtt.password is None
        async with (
            DaemonClient(_as(cfg, "operator"), timeout_s=WAIT_S) as operator,
            DaemonClient(_as(cfg, "viewer"), timeout_s=NO_REPLY_S) as viewer,
        ):
            await wait_connected(operator)
            # The viewer sees what the daemon publishes.
            status = await viewer.retained(cfg.topic("status"), wait_s=WAIT_S)
            assert status is not None and status["state"] == "online"
            # (the retained state may still be on its way from the daemon's outbox)
            async with asyncio.timeout(WAIT_S):
                while True:
                    counter = await viewer.retained(cfg.topic("instruments", "counter"))
                    if counter is not None and counter["connected"] is True:
                        break
                    await asyncio.sleep(0.05)

            # The broker refuses the viewer's command (PUBACK 0x87) and drops it; the
            # terminal reads the PUBACK's reason code and says so at once.
            codes = _pubacks(viewer.client)
            with pytest.raises(CommandError) as refused:
                await viewer.request("run.start", start)
            assert codes == [NOT_AUTHORIZED]
            assert not isinstance(refused.value, NoReplyError)
            assert refused.value.code == "not_authorized"
            assert refused.value.message.startswith(
                "the broker refused 'run.start' from user 'viewer' (Not authorized)"
            )
            assert await operator.request("runs") == [], "the viewer's run.start ran"

            # The operator's run.start runs, and the viewer can follow the run.
            async with viewer.subscription(cfg.topic("runs", "+", "state")) as states:
                started = await operator.request("run.start", start)
                assert [r["run"] for r in await operator.request("runs")] == [started["run"]]
                async with asyncio.timeout(WAIT_S):
                    while True:
                        message = await states.get()
                        assert message is not None, viewer.lost
                        state = _json(message)
                        if state["run"] == started["run"] and state["state"] == "completed":
                            break
            results = await operator.request("results", {"run": started["run"]})
            assert [w["well"] for w in results["wells"]] == ["A1", "A2"]


def _json(message: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(message.payload, bytes | bytearray)
    data: dict[str, Any] = json.loads(message.payload)
    return data


# -- the shipped mosquitto.conf --------------------------------------------------------------

_PRODUCTION_PATHS = {
    "/etc/mosquitto/assay/": "etc/",
    "/var/lib/mosquitto/": "db/",
    "/var/log/mosquitto/": "log/",
    "/run/mosquitto/": "run/",
}
_LISTENER = "\nlistener 1883 127.0.0.1\n"


def _install_conf(root: Path, port: int, acl: str) -> Path:
    """The shipped conf, moved from its production paths into ``root`` and to ``port``."""
    text = SHIPPED_CONF.read_text(encoding="utf-8")
    for prod, here in _PRODUCTION_PATHS.items():
        assert prod in text, prod
        (root / here).mkdir(parents=True, exist_ok=True)
        text = text.replace(prod, f"{root / here}/")
    assert _LISTENER in text
    text = text.replace(_LISTENER, f"\nlistener {port} 127.0.0.1\n")
    if os.geteuid() == 0:  # mosquitto would switch to the mosquitto user, locked out of root
        text += "user root\n"
    (root / "etc" / "acl").write_text(acl, encoding="utf-8")
    passwd = root / "etc" / "passwd"
    passwd.touch(mode=0o600)
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    conf = root / "mosquitto.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


@contextlib.asynccontextmanager
async def _mosquitto(conf: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """``mosquitto -c conf`` until it accepts TCP on ``port``; SIGTERM (saves) at the end."""
    proc = await asyncio.create_subprocess_exec(
        ensure_mosquitto(), "-c", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"mosquitto exited {proc.returncode}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.communicate()


async def test_the_shipped_mosquitto_conf_runs_with_the_shipped_acl_and_persists_state(
    tmp_path: Path,
) -> None:
    port = free_port()
    conf = _install_conf(tmp_path, port, SHIPPED_ACL.read_text(encoding="utf-8"))
    status = b'{"state": "online"}'
    async with _mosquitto(conf, port) as proc:
        with pytest.raises(aiomqtt.MqttError, match="Not authorized"):  # allow_anonymous false
            async with _client(port, None):
                pass
        async with _client(port, "assayd") as daemon:
            await daemon.publish("assay/lab1/status", status, qos=1, retain=True)
    assert proc.returncode == 0
    assert (tmp_path / "db" / "mosquitto.db").is_file(), "persistence: saved on SIGTERM"
    # A broker restart keeps the retained state.
    async with _mosquitto(conf, port), _client(port, "viewer") as viewer:
        await viewer.subscribe("assay/+/status", qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(viewer.messages))
    assert message.payload == status and message.retain
    log = (tmp_path / "log" / "mosquitto.log").read_text()
    assert "Error" not in log, log


async def test_a_broken_acl_stops_the_broker_from_starting(tmp_path: Path) -> None:
    """So "the broker started" above does mean "Mosquitto parsed the ACL"."""
    port = free_port()
    broken = SHIPPED_ACL.read_text(encoding="utf-8") + "topic sideways assay/#\n"
    conf = _install_conf(tmp_path, port, broken)
    with pytest.raises(RuntimeError, match="mosquitto exited"):
        async with _mosquitto(conf, port):
            pass
    assert "sideways" in (tmp_path / "log" / "mosquitto.log").read_text()
