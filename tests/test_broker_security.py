"""Password authentication, TLS and topic ACLs against a real Mosquitto; no secret in logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from structlog.testing import capture_logs

from acquisition.cli.client import DaemonClient
from acquisition.config import LabConfig
from acquisition.journal import Journal
from acquisition.logs import configure_logging
from acquisition.mqtt_link import MqttLink
from acquisition.mqtt_params import client_kwargs, tls_context
from devtools import certs
from devtools.mosquitto import MosquittoBroker

WAIT_S = 60.0
PASSWORD = "s3cret-Hunter2-pw"
WRONG = "wrong-Passw0rd-xyz"
READER_PW = "reader-pw-Zq8"


def _acl(node: str) -> str:
    return (
        "user assayd\n"
        f"topic readwrite assay/{node}/#\n"
        "\n"
        "user reader\n"
        "topic read assay/#\n"
    )


async def _ignore(_: aiomqtt.Message) -> None:
    return None


def _link(cfg: LabConfig, journal: Journal, **kwargs: Any) -> MqttLink:
    return MqttLink(
        cfg,
        journal,
        status_online=lambda: b'{"state": "online"}',
        status_offline=lambda why: b'{"state": "offline", "reason": "%s"}' % why.encode(),
        **{"on_command": _ignore, **kwargs},
    )


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    task = asyncio.create_task(link.run(), name="link-run")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _tls_client(b: MosquittoBroker, user: str, password: str, **kwargs: Any) -> aiomqtt.Client:
    assert b.ca_path is not None
    return aiomqtt.Client(
        "localhost", b.tls_port, username=user, password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_params=aiomqtt.TLSParameters(ca_certs=str(b.ca_path), cert_reqs=ssl.CERT_REQUIRED),
        **kwargs,
    )  # fmt: skip


@pytest.fixture
def secure_broker(
    own_broker: Callable[..., MosquittoBroker], unique: Callable[[str], str]
) -> tuple[MosquittoBroker, str]:
    node = unique("secure")
    b = own_broker(users={"assayd": PASSWORD, "reader": READER_PW}, acl=_acl(node), tls=True)
    return b, node


def _all_output(logs: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, out: str) -> str:
    return "\n".join([repr(e) for e in logs] + [r.getMessage() for r in caplog.records] + [out])


async def test_link_connects_with_credentials_over_tls_and_never_logs_the_password(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    b, node = secure_broker
    assert b.ca_path is not None
    cfg = lab_config(
        node=node, host="localhost", port=b.tls_port, username="assayd", password=PASSWORD,
        tls_ca=b.ca_path,
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)
    link = _link(cfg, tmp_journal)
    with capture_logs() as logs:
        async with _tls_client(b, "reader", READER_PW) as reader:
            await reader.subscribe(cfg.topic("status"), qos=1)
            async with running(link):
                assert await link.wait_connected(WAIT_S), link.last_error
                async with asyncio.timeout(WAIT_S):
                    message = await anext(aiter(reader.messages))
    assert message.payload == b'{"state": "online"}'
    assert link.last_error is None
    text = _all_output(logs, caplog, capsys.readouterr().out)
    assert "broker connected" in text
    assert PASSWORD not in text
    assert PASSWORD not in b.log_path.read_text()


async def test_wrong_password_is_one_clear_error_and_the_link_keeps_retrying(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    b, node = secure_broker
    cfg = lab_config(node=node, port=b.port, username="assayd", password=WRONG)
    caplog.set_level(logging.DEBUG)
    link = _link(cfg, tmp_journal)
    with capture_logs() as logs:
        async with running(link), asyncio.timeout(WAIT_S):
            while link.connect_attempts < 3:
                await asyncio.sleep(0.02)
            assert not link.connected
    assert link.last_error is not None
    assert "not authorised" in link.last_error
    assert f"127.0.0.1:{b.port}" in link.last_error
    failures = [e for e in logs if e["event"] == "broker connect failed"]
    assert len(failures) == 1, "one clear line, not one per retry"
    assert failures[0]["error"] == link.last_error
    text = _all_output(logs, caplog, capsys.readouterr().out)
    assert WRONG not in text and PASSWORD not in text
    assert "not authorised" in b.log_path.read_text()


async def test_acl_keeps_other_users_off_the_command_topic(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
) -> None:
    b, node = secure_broker
    cfg = lab_config(node=node, port=b.port, username="assayd", password=PASSWORD)
    seen: list[bytes] = []
    got_allowed = asyncio.Event()

    async def on_command(message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        seen.append(message.payload)
        if message.payload == b"from-assayd":
            got_allowed.set()

    link = _link(cfg, tmp_journal, on_command=on_command)
    async with running(link):
        assert await link.wait_connected(WAIT_S), link.last_error
        async with _tls_client(b, "reader", READER_PW) as intruder:
            await intruder.publish(cfg.topic("cmd"), b"from-reader", qos=1)  # denied, silently
        async with _tls_client(b, "assayd", PASSWORD) as allowed:
            await allowed.publish(cfg.topic("cmd"), b"from-assayd", qos=1)
        await asyncio.wait_for(got_allowed.wait(), WAIT_S)
    assert seen == [b"from-assayd"]


async def test_tls_with_an_unknown_ca_is_refused(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    tmp_path: Path,
) -> None:
    b, node = secure_broker
    stranger = certs.make_ca(tmp_path / "other-ca", name="not the broker's CA")
    cfg = lab_config(
        node=node, host="localhost", port=b.tls_port, username="assayd", password=PASSWORD,
        tls_ca=stranger.cert,
    )  # fmt: skip
    link = _link(cfg, tmp_journal)
    async with running(link), asyncio.timeout(WAIT_S):
        while link.connect_attempts < 2:
            await asyncio.sleep(0.02)
    assert not link.connected
    assert link.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in link.last_error


async def test_the_terminal_reaches_the_daemon_over_tls_with_credentials(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
) -> None:
    b, node = secure_broker
    assert b.ca_path is not None
    cfg = lab_config(
        node=node, host="localhost", port=b.tls_port, username="assayd", password=PASSWORD,
        tls_ca=b.ca_path,
    )  # fmt: skip
    kwargs = client_kwargs(cfg.mqtt)
    assert isinstance(kwargs["tls_context"], ssl.SSLContext)
    link: MqttLink

    async def on_command(message: aiomqtt.Message) -> None:  # a minimal daemon: echo
        props = message.properties
        assert props is not None and isinstance(message.payload, bytes)
        verb = json.loads(message.payload)["verb"]
        reply = {"ok": True, "result": {"verb": verb, "node": node}}
        await link.reply(
            props.ResponseTopic, json.dumps(reply).encode(), correlation_data=props.CorrelationData
        )

    link = _link(cfg, tmp_journal, on_command=on_command)
    async with running(link):
        assert await link.wait_connected(WAIT_S), link.last_error
        async with DaemonClient(cfg, timeout_s=WAIT_S) as terminal:
            assert await terminal.request("status") == {"verb": "status", "node": node}
        # The plain aiomqtt path the terminal builds on, with the same kwargs.
        async with aiomqtt.Client(identifier=f"{node}-plain", **client_kwargs(cfg.mqtt)) as c:
            await c.publish(cfg.topic("tls-check"), b"ok", qos=1)


async def test_a_client_certificate_alone_turns_tls_on_in_the_daemon_and_the_terminal(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
    tmp_path: Path,
) -> None:
    b, node = secure_broker
    ca = certs.make_ca(tmp_path / "client-ca")
    client_cert = certs.issue(ca, tmp_path / "client-ca", "assayd", server=False)
    cfg = lab_config(
        node=node, host="localhost", port=b.tls_port, username="assayd", password=PASSWORD,
        tls_cert=client_cert.cert, tls_key=client_cert.key,
    )  # fmt: skip
    assert cfg.mqtt.tls_ca is None
    ctx = tls_context(cfg.mqtt)
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert isinstance(client_kwargs(cfg.mqtt)["tls_context"], ssl.SSLContext)
    assert tls_context(cfg.mqtt.model_copy(update={"tls_cert": None, "tls_key": None})) is None
    # The daemon speaks TLS too (not cleartext with the password): the broker's test CA is
    # not among the system CAs, so the handshake is what fails.
    link = _link(cfg, tmp_journal)
    async with running(link), asyncio.timeout(WAIT_S):
        while link.connect_attempts < 2:
            await asyncio.sleep(0.02)
    assert not link.connected
    assert link.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in link.last_error
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with aiomqtt.Client(identifier=f"{node}-cli", **client_kwargs(cfg.mqtt)):
            pass


@contextlib.contextmanager
def production_logging(stream: io.StringIO) -> Iterator[None]:
    """The daemon's real logging chain into ``stream``; everything restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in _NOISY}
    configure_logging(level="debug", fmt="json", stream=stream)
    # Module-level loggers would keep this configuration forever once cached: other tests
    # capture logs with structlog.testing. Rendering is unchanged by this.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


_NOISY = ("pymodbus", "pyvisa", "paho", "aiomqtt", "asyncio")


async def test_the_production_log_chain_never_carries_the_password(
    secure_broker: tuple[MosquittoBroker, str],
    lab_config: Callable[..., LabConfig],
    tmp_journal: Journal,
) -> None:
    b, node = secure_broker
    assert b.ca_path is not None
    stream = io.StringIO()
    with production_logging(stream):
        for password in (PASSWORD, WRONG):
            cfg = lab_config(
                node=node, host="localhost", port=b.tls_port, username="assayd",
                password=password, tls_ca=b.ca_path,
            )  # fmt: skip
            link = _link(cfg, tmp_journal)
            async with running(link), asyncio.timeout(WAIT_S):
                if password == PASSWORD:
                    assert await link.wait_connected(WAIT_S), link.last_error
                else:
                    while link.connect_attempts < 3:
                        await asyncio.sleep(0.02)
                    assert link.last_error is not None and "not authorised" in link.last_error
            # A daemon-style line naming the secret's key: masked by the chain.
            structlog.get_logger("test").info("config loaded", mqtt_password=password)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    events = [e["event"] for e in lines]
    assert "broker connected" in events and "broker connect failed" in events
    assert all({"timestamp", "level", "logger"} <= e.keys() for e in lines)
    assert PASSWORD not in text and WRONG not in text
    assert structlog.is_configured() is False, "logging restored for the other tests"
