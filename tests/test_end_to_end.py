"""Daemon + simulated counter + real Mosquitto + consumers, as separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from acquisition.cli.client import DaemonClient
from acquisition.commands import MAX_COMMAND_BYTES
from acquisition.config import load_config
from devtools.mosquitto import MosquittoBroker
from tests.e2e import collect_run, lab_stack, wait_connected

pytestmark = pytest.mark.slow
ALL_WELLS = {f"{r}{c}" for r in "ABCDEFGH" for c in range(1, 13)}


def _check_complete_run(docs: list[dict[str, Any]], *, resumed: bool = False) -> None:
    seqs = [d["seq"] for d in docs]
    assert seqs == list(range(1, len(docs) + 1)), "documents out of order or with gaps"
    assert len({d["id"] for d in docs}) == len(docs)
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert ("interruption" in kinds) == resumed
    wells = [d["reading"]["well"] for d in docs if d["kind"] == "data"]
    assert len(wells) == 96 and set(wells) == ALL_WELLS, "every well exactly once"
    assert docs[-1]["exit_status"] == "success"


async def test_all_96_wells_reach_a_persistent_subscriber_in_seq_order(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=2000.0) as stack:
        config = stack.config
        subscribed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        consumer = asyncio.create_task(collect_run(config, subscribed))
        await subscribed
        async with DaemonClient(config) as client:
            await wait_connected(client)
            started = await client.request("run.start", {"count_time_s": 10})
            got = await consumer
            results = await client.request("results", {"run": started["run"]})
        _check_complete_run(got.documents)
        assert got.documents[0]["run"] == started["run"]
        assert got.documents[0]["simulated"] is True
        assert [w["well"] for w in results["wells"]] == [
            d["reading"]["well"] for d in got.documents if d["kind"] == "data"
        ]
        assert results["stop"]["exit_status"] == "success"


async def test_broker_killed_and_restarted_mid_count_loses_nothing(tmp_path: Path) -> None:
    with (
        MosquittoBroker(persistence=False) as broker,
        lab_stack(tmp_path, broker.port, time_scale=150.0) as stack,
    ):
        config = stack.config
        killed = asyncio.Event()

        async def kill_once(doc: dict[str, Any]) -> None:
            if doc["kind"] == "data" and doc["reading"]["index"] == 20 and not killed.is_set():
                killed.set()
                await asyncio.to_thread(broker.restart, hard=True)  # SIGKILL, same port

        subscribed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        consumer = asyncio.create_task(
            collect_run(config, subscribed, on_document=kill_once, timeout_s=90)
        )
        await subscribed
        async with DaemonClient(config) as client:
            await wait_connected(client)
            await client.request("run.start", {"count_time_s": 30})
        got = await consumer
        assert killed.is_set()
        _check_complete_run(got.documents)
        by_id: dict[str, dict[str, Any]] = {}
        for doc in got.received:  # duplicates are allowed only as the same document
            assert by_id.setdefault(doc["id"], doc) == doc
            assert by_id[doc["id"]]["seq"] == doc["seq"]
        # The restarted broker had no persistence: the daemon re-announced its retained state.
        retained = await _retained(
            broker.port, [config.topic("status"), config.topic("instruments", "counter")]
        )
        assert retained[config.topic("status")]["state"] == "online"
        assert retained[config.topic("instruments", "counter")]["connected"] is True


async def _retained(port: int, topics: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        for topic in topics:
            await sub.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for msg in sub.messages:
                assert isinstance(msg.payload, bytes)
                out[str(msg.topic)] = json.loads(msg.payload)
                if len(out) == len(topics):
                    break
    return out


async def test_malformed_commands_get_error_replies_and_the_daemon_stays_healthy(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=2000.0) as stack:
        config = stack.config
        cases: list[tuple[bytes, str]] = [
            (b"not json at all", "bad_json"),
            (b"[1, 2, 3]", "bad_json"),
            (json.dumps({"verb": "launch.rocket"}).encode(), "unknown_verb"),
            (
                json.dumps({"verb": "run.start", "args": {"count_time_s": "long"}}).encode(),
                "bad_request",
            ),
            (json.dumps({"verb": "runs", "args": {"limit": -4}}).encode(), "bad_request"),
            (json.dumps({"verb": "status", "extra": 1}).encode(), "bad_request"),
            (json.dumps({"verb": "results", "args": {"run": "no-such-run"}}).encode(), "not_found"),
            (b"{" + b" " * (1024 * 1024) + b"}", "too_large"),
            (b"\xff\xfe\x00garbage", "bad_json"),
        ]
        async with DaemonClient(config) as client:
            await wait_connected(client)
            for payload, code in cases:
                reply = await _raw_request(client, payload)
                assert reply["ok"] is False, payload[:40]
                assert reply["error"]["code"] == code, (payload[:40], reply)
            status = await client.request("status")
            assert status["node"] == config.node
        assert stack.daemon.alive()
        assert MAX_COMMAND_BYTES < 1024 * 1024


async def _raw_request(
    client: DaemonClient, payload: bytes, correlation: bytes | None = None
) -> dict[str, Any]:
    reply_topic = client.config.topic("replies", "raw-test")
    correlation = correlation or os.urandom(8)
    async with client.subscription(reply_topic) as queue:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
        await client.client.publish(client.config.topic("cmd"), payload, qos=1, properties=props)
        msg = await asyncio.wait_for(queue.get(), 10)
    assert msg is not None
    assert getattr(msg.properties, "CorrelationData", None) == correlation
    assert isinstance(msg.payload, bytes)
    data: dict[str, Any] = json.loads(msg.payload)
    return data


async def test_sigterm_mid_run_is_graceful(broker: MosquittoBroker, tmp_path: Path) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=100.0) as stack:
        config = stack.config
        async with DaemonClient(config) as client:
            await wait_connected(client)
            started = await client.request("run.start", {"count_time_s": 60})
            run = started["run"]
            async with asyncio.timeout(20):
                while (await client.request("run.get", {"run": run}))["last_seq"] < 6:
                    await asyncio.sleep(0.05)
        code = await asyncio.to_thread(stack.daemon.stop, signal.SIGTERM)
        assert code == 0
        retained = await _retained(
            broker.port, [config.topic("status"), config.topic("runs", run, "state")]
        )
        assert retained[config.topic("status")]["state"] == "offline"
        assert retained[config.topic("status")]["reason"] == "shutdown"
        assert retained[config.topic("runs", run, "state")]["state"] == "interrupted"
        # Restarted, the daemon still has every document of the interrupted run, and the
        # count-plate run (a protocol on the engine) resumes where it stopped.
        stack.daemon.start()
        async with DaemonClient(load_config(stack.lab.config_path)) as client:
            res = await client.request("results", {"run": run})
            assert res["state"] == "interrupted" and res["stop"] is None
            assert len(res["wells"]) >= 5
            await _resume_to_the_end(client, run)
        _check_complete_run(_documents(stack.lab.journal_path, run), resumed=True)


async def test_commands_are_idempotent_and_replies_stay_in_their_place(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=50.0) as stack:
        config = stack.config
        async with DaemonClient(config) as client:
            await wait_connected(client)
            start = json.dumps({"verb": "run.start", "args": {"count_time_s": 60}}).encode()
            # The same command delivered twice (same ResponseTopic + CorrelationData).
            first = await _raw_request(client, start, correlation=b"start-1")
            again = await _raw_request(client, start, correlation=b"start-1")
            assert first["ok"] and again == first
            run = first["result"]["run"]
            assert [r["run"] for r in await client.request("runs")] == [run]
            # Abort twice: both answered, one stop document.
            assert (await client.request("run.abort", {"run": run}))["state"] == "aborting"
            await client.request("run.abort", {"run": run})
            async with asyncio.timeout(15):
                while (res := await client.request("results", {"run": run}))["stop"] is None:
                    await asyncio.sleep(0.05)
            assert res["state"] == "aborted" and res["stop"]["exit_status"] == "abort"
            # A reply must never land outside replies/: this command gets no answer at all.
            events = config.topic("runs", run, "events")
            async with client.subscription(events) as queue:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = events
                props.CorrelationData = b"evil"
                status = json.dumps({"verb": "status"}).encode()
                await client.client.publish(config.topic("cmd"), status, qos=1, properties=props)
                assert (await client.request("status"))["node"] == config.node
                assert queue.empty()
        docs = [d for d in _documents(stack.lab.journal_path, run)]
        assert [d["kind"] for d in docs].count("stop") == 1
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))


def _documents(journal_path: Path, run: str) -> list[dict[str, Any]]:
    import sqlite3

    with sqlite3.connect(journal_path) as conn:
        rows = conn.execute(
            "SELECT payload FROM documents WHERE run = ? ORDER BY seq", (run,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


async def test_daemon_sigkilled_mid_count_keeps_its_data_and_marks_the_run_interrupted(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    with lab_stack(tmp_path, broker.port, time_scale=100.0) as stack:
        config = stack.config
        async with DaemonClient(config) as client:
            await wait_connected(client)
            run = (await client.request("run.start", {"count_time_s": 60}))["run"]
            async with asyncio.timeout(20):
                while (await client.request("run.get", {"run": run}))["last_seq"] < 10:
                    await asyncio.sleep(0.05)
        stack.daemon.kill()  # SIGKILL: no chance to write anything more
        stack.daemon.start()
        async with DaemonClient(config) as client:
            res = await client.request("results", {"run": run})
            assert res["state"] == "interrupted" and res["stop"] is None
            docs = _documents(stack.lab.journal_path, run)
            assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
            wells = [d["reading"]["well"] for d in docs if d["kind"] == "data"]
            assert len(wells) >= 8 and len(set(wells)) == len(wells)
            assert docs[-1]["kind"] == "interruption"
            assert docs[-1]["detail"]["wells_done"] == len(wells)
            # ... and it resumes: the wells not counted yet are counted, each once.
            await _resume_to_the_end(client, run)
        docs = _documents(stack.lab.journal_path, run)
        _check_complete_run(docs, resumed=True)
        counted = [d["reading"]["well"] for d in docs if d["kind"] == "data"]
        assert counted[: len(wells)] == wells, "the wells counted before the kill are kept"
        assert docs[-1]["counts"] == {"data": 96}


async def _resume_to_the_end(client: DaemonClient, run: str) -> None:
    """Resume an interrupted run; wait until its stop document is written."""
    await client.request("run.resume", {"run": run})
    async with asyncio.timeout(60):
        while (res := await client.request("results", {"run": run}))["stop"] is None:
            await asyncio.sleep(0.05)
    assert res["state"] == "completed", res["state"]
