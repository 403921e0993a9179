"""``assay run ...`` for protocol runs: arguments, local checks, rendering, and the watch
against a tiny fake daemon on a real broker (the engine itself is tested end to end elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console

from acquisition.cli.client import DaemonClient
from acquisition.cli.main import _parser
from acquisition.cli.render import hms, print_runs, prompt_lines, run_state_fields
from acquisition.cli.runs import prepare_start, run_action
from acquisition.cli.watch import watch_run
from acquisition.config import LabConfig
from acquisition.errors import CommandError
from acquisition.mqtt_params import client_kwargs
from devtools.mosquitto import MosquittoBroker

ROOT = Path(__file__).resolve().parents[1]
ASSAY = str(Path(sys.executable).parent / "assay")
PROTOCOL_FILE = ROOT / "config/protocols/competition-binding.toml"
PLATE_FILE = ROOT / "config/plates/competition-progesterone.toml"
RUN = "R-0042"


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


def started(*argv: str) -> dict[str, Any]:
    args = parse("run", "start", *argv)
    assert prepare_start(args) is None
    start: dict[str, Any] = args.start_args
    return start


# --------------------------------------------------------------------------- arguments


def test_a_protocol_by_name_is_sent_as_a_name() -> None:
    assert started(
        "competition-binding", "--plate-map", "competition-progesterone",
        "--plate-id", "P-7", "--label", "monday", "--watch",
    ) == {
        "protocol": "competition-binding", "protocol_toml": None,
        "plate_map": "competition-progesterone", "plate_map_toml": None,
        "plate_id": "P-7", "label": "monday",
    }  # fmt: skip


def test_a_protocol_file_is_checked_here_and_sent_with_its_text() -> None:
    start = started(str(PROTOCOL_FILE), "--plate-map", str(PLATE_FILE))
    assert start["protocol"] == "competition-binding"
    assert start["protocol_toml"] == PROTOCOL_FILE.read_text(encoding="utf-8")
    assert start["plate_map"] == "competition-progesterone"
    assert start["plate_map_toml"] == PLATE_FILE.read_text(encoding="utf-8")
    assert start["plate_id"] is None and start["label"] is None


def test_count_plate_keeps_its_options_and_defaults() -> None:
    assert started() == {
        "protocol": "count-plate", "instrument": "counter", "count_time_s": 60.0, "isotope": "H3",
    }  # fmt: skip
    start = started("count-plate", "--count-time", "10", "--wells", "a1, b2", "--label", "x")
    assert start["count_time_s"] == 10.0 and start["wells"] == ["A1", "B2"]
    assert start["label"] == "x"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["count-plate", "--plate-map", "p"], "--plate-map: for protocol runs"),
        (["competition-binding", "--count-time", "5"], "--count-time: for count-plate runs"),
        (["competition-binding", "--plate-id", "no spaces"], "--plate-id:"),
        (["bad name!"], "bad name!: (protocol)"),
    ],
)
def test_options_that_do_not_fit_are_usage_errors(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prepare_start(parse("run", "start", *argv)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_steering_commands_parse() -> None:
    pause = parse("run", "pause", RUN, "--after-step")
    assert (pause.run_command, pause.run, pause.after_step) == ("pause", RUN, True)
    answer = parse("run", "answer", RUN)
    assert (answer.answer, answer.prompt) == ("done", None)
    answer = parse("run", "answer", RUN, "yes", "--prompt", "5")
    assert (answer.answer, answer.prompt) == ("yes", "5")
    assert parse("run", "recover", RUN, "skip").action == "skip"
    with pytest.raises(SystemExit):
        parse("run", "recover", RUN, "later")
    assert parse("run", "resume", RUN).run_command == "resume"


def assay(*args: str) -> subprocess.CompletedProcess[str]:
    # A config whose broker nobody listens on: the checks must not need one.
    return subprocess.run([ASSAY, "--config", "/nonexistent/lab.toml", *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_a_bad_protocol_file_is_one_line_exit_2_without_a_broker(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text('name = "x"\n[[steps]]\ntype = "incubate"\ntemperature = "95 C"\n')
    out = assay("run", "start", str(bad))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"assay: {bad}: steps[0]"), out.stderr
    missing = assay("run", "start", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml: (file)" in missing.stderr


def test_a_bad_plate_map_file_is_one_line_exit_2_without_a_broker(tmp_path: Path) -> None:
    bad = tmp_path / "plate.toml"
    bad.write_text('[wells.Z9]\nrole = "total"\n')
    out = assay("run", "start", "competition-binding", "--plate-map", str(bad))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"assay: {bad}: wells.Z9: "), out.stderr


# --------------------------------------------------------------------------- rendering


def state(name: str = "running", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": "assay.run_state/1", "node": "n", "run": RUN,
        "protocol": "competition-binding", "state": name, "last_seq": 0,
        "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
    }  # fmt: skip
    return base | fields


INCUBATING: dict[str, Any] = {
    "step": "incubate", "step_index": 2, "steps_total": 7,
    "progress": {"done": 720, "total": 3600, "unit": "s", "eta_s": 2880},
    "latest": {"temperature_c": 36.96, "setpoint_c": 37.0, "phase": "timing"},
}  # fmt: skip


def test_an_incubation_shows_step_seconds_and_temperature() -> None:
    assert run_state_fields(state(**INCUBATING)) == {
        "description": f"{RUN} step 2/7 incubate running",
        "amount": "0:12:00/1:00:00",
        "eta": "ETA 0:48:00",
        "latest": "37.0 C -> 37.0 C, timing",
    }
    assert hms(3725.4) == "1:02:05" and hms(None) == "-:--:--"


def test_a_count_shows_wells_and_the_newest_well() -> None:
    fields = run_state_fields(state(
        step="count", step_index=5, steps_total=7,
        progress={"done": 12, "total": 96, "unit": "wells", "eta_s": None},
        latest={"well": "B1", "cpm": 12345.6, "ccpm": 12000.0},
    ))  # fmt: skip
    assert fields["amount"] == "12/96 wells" and fields["eta"] == ""
    assert fields["latest"] == "latest B1 12,346 CPM"


def test_a_prompt_without_a_terminal_says_how_to_answer_it() -> None:
    prompt = {"id": "5", "kind": "operator", "text": "Move the mat to the counter",
              "options": ["done", "abort"]}  # fmt: skip
    lines = prompt_lines(RUN, prompt, interactive=False)
    assert lines[0] == "operator (prompt 5): Move the mat to the counter"
    assert f"`assay run answer {RUN} --prompt 5`" in lines[-1]
    assert len(prompt_lines(RUN, prompt, interactive=True)) == 2  # no hint: asked inline
    recovery = {"id": "6", "kind": "recovery", "text": "Vacuum lost",
                "options": ["retry", "skip", "abort"]}  # fmt: skip
    assert (
        f"`assay run recover {RUN} retry|skip|abort`"
        in prompt_lines(RUN, recovery, interactive=False)[-1]
    )


def test_the_runs_table_shows_the_new_states() -> None:
    console = Console(file=io.StringIO(), width=200)
    names = ("paused", "awaiting-operator", "awaiting-recovery", "interrupted", "queued")
    print_runs(console, [
        {"run": f"R{i}", "protocol": "competition-binding", "state": name,
         "created_at": "2025-01-01T00:00:00Z", "last_seq": i}
        for i, name in enumerate(names)
    ])  # fmt: skip
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert all(name in out for name in names), out


# --------------------------------------------------------------------------- a fake daemon

Handler = Callable[["FakeDaemon", dict[str, Any]], Awaitable[Any]]


class FakeDaemon:
    """Answers commands on ``assay/{node}/cmd`` with ``handlers[verb](daemon, args)`` and
    publishes run documents and states as a handler tells it to."""

    def __init__(self, config: LabConfig, handlers: dict[str, Handler]) -> None:
        self.config = config
        self.handlers = handlers
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.seq = 0
        self._client = aiomqtt.Client(
            identifier=f"fake-{uuid.uuid4().hex[:8]}", **client_kwargs(config.mqtt)
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeDaemon:
        await self._client.__aenter__()
        await self._client.subscribe(self.config.topic("cmd"), qos=1)
        self._task = asyncio.create_task(self._serve(), name="fake-daemon")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._client.__aexit__(None, None, None)

    async def _serve(self) -> None:
        async for msg in self._client.messages:
            assert isinstance(msg.payload, bytes)
            body = json.loads(msg.payload)
            verb, args = body["verb"], body["args"]
            self.received.append((verb, args))
            try:
                reply: dict[str, Any] = {
                    "ok": True, "verb": verb, "result": await self.handlers[verb](self, args),
                }  # fmt: skip
            except CommandError as exc:
                reply = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = msg.properties.CorrelationData  # type: ignore[union-attr]
            topic = msg.properties.ResponseTopic  # type: ignore[union-attr]
            await self._client.publish(
                topic, json.dumps({"schema": "assay.reply/1", **reply}), qos=1, properties=props
            )

    async def doc(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        doc = {"schema": "assay.event/1", "id": uuid.uuid4().hex, "run": RUN,
               "node": self.config.node, "seq": self.seq, "ts": "2025-01-01T00:00:00Z",
               "kind": kind, **fields}  # fmt: skip
        await self._client.publish(self.config.topic("runs", RUN, "events"), json.dumps(doc), qos=1)

    def state(self, name: str, **fields: Any) -> dict[str, Any]:
        return state(name, node=self.config.node, last_seq=self.seq, **fields)

    async def publish_state(self, name: str, **fields: Any) -> None:
        topic = self.config.topic("runs", RUN, "state")
        await self._client.publish(topic, json.dumps(self.state(name, **fields)), qos=1)


PROMPT = {"id": "5", "kind": "operator", "text": "Move the mat to the counter",
          "options": ["done", "abort"], "action": "mat_to_counter"}  # fmt: skip


async def _finish(d: FakeDaemon) -> None:
    await d.doc("stop", exit_status="success", reason="completed")
    await d.publish_state("completed", message="all steps done")


async def watch(
    config: LabConfig, handlers: dict[str, Handler], stdin_fd: int | None = None
) -> tuple[int, str, FakeDaemon]:
    console = Console(file=io.StringIO(), width=200)
    async with FakeDaemon(config, handlers) as daemon, DaemonClient(config) as client:
        async with asyncio.timeout(30):
            code = await watch_run(client, console, RUN, stdin_fd=stdin_fd)
    return code, console.file.getvalue(), daemon  # type: ignore[attr-defined]


async def test_watch_without_a_terminal_prints_pause_prompt_and_how_to_answer(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        reply = d.state("running", **INCUBATING)
        await d.publish_state("paused", message="paused by the operator", **INCUBATING)
        await d.publish_state("paused", message="paused by the operator", **INCUBATING)
        await d.publish_state("running", **INCUBATING)
        await d.doc("step", step="mat_to_counter", phase="started")
        await d.doc("prompt", prompt_id="5", phase="asked", text=PROMPT["text"],
                    options=PROMPT["options"])  # fmt: skip
        await d.publish_state("awaiting-operator", step="mat_to_counter", prompt=PROMPT)
        await d.doc("prompt", prompt_id="5", phase="answered", text=PROMPT["text"],
                    answer="done", by="virtual-operator")  # fmt: skip
        await _finish(d)
        return reply

    code, out, daemon = await watch(lab_config(broker), {"run.get": get})
    assert code == 0, out
    assert out.count("paused: paused by the operator — `assay run resume R-0042`") == 1, out
    assert out.count("operator (prompt 5): Move the mat to the counter") == 1, out
    assert "answer with `assay run answer R-0042 --prompt 5`" in out
    assert "prompt 5 answered by virtual-operator: done" in out
    assert "step mat_to_counter started" in out
    assert "completed all steps done" in out
    assert [verb for verb, _ in daemon.received] == ["run.get"]


async def test_watch_ends_on_interrupted_with_the_resume_hint(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        reply = d.state("running", **INCUBATING)
        await d.doc("interruption", reason="daemon restarted", detail={})
        await d.publish_state("interrupted", message="the daemon restarted")
        return reply

    code, out, _ = await watch(lab_config(broker), {"run.get": get})
    assert code == 1, out
    assert "interruption: daemon restarted" in out
    assert "resume it with `assay run resume R-0042`" in out


async def test_watch_gives_no_resume_hint_for_a_run_that_has_ended(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    """An interrupted run with a stop document (a count-plate run of an earlier version)
    cannot be resumed: the watch does not say it can."""
    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        reply = d.state("running", **INCUBATING)
        await d.doc("interruption", reason="daemon restarted", detail={})
        await d.doc("stop", exit_status="interrupted", reason="the daemon stopped", counts={})
        await d.publish_state("interrupted", message="the daemon stopped while it was open")
        return reply

    code, out, _ = await watch(lab_config(broker), {"run.get": get})
    assert code == 1, out
    assert "interrupted" in out and "resume it with" not in out, out


async def test_watch_says_when_the_daemon_goes_offline_and_comes_back(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        reply = d.state("running", **INCUBATING)
        status = d.config.topic("status")
        for state in ("offline", "offline", "online"):
            body = {"schema": "assay.status/1", "node": d.config.node, "state": state,
                    "version": "0", "ts": "2025-01-01T00:00:00Z", "reason": "connection lost"}
            await d._client.publish(status, json.dumps(body), qos=1)  # fmt: skip
        await d.doc("interruption", reason="daemon restarted", detail={})
        await d.publish_state("interrupted", message="the daemon stopped at step 2 (incubate); "
                              "`assay run resume R-0042` goes on")  # fmt: skip
        return reply

    code, out, _ = await watch(lab_config(broker), {"run.get": get})
    assert code == 1, out
    assert out.count("the daemon is offline (connection lost)") == 1, out
    assert out.count("the daemon is back online") == 1, out
    assert out.count("assay run resume R-0042") == 1, out  # said once, not twice


async def test_watch_on_a_terminal_asks_and_sends_the_answer(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        return d.state("awaiting-operator", step="mat_to_counter", prompt=PROMPT)

    async def answer(d: FakeDaemon, args: dict[str, Any]) -> Any:
        await d.doc("prompt", prompt_id="5", phase="answered", text=PROMPT["text"],
                    answer="done", by="terminal")  # fmt: skip
        await _finish(d)
        return {"run": RUN, "state": "running"}

    main_fd, term_fd = os.openpty()
    try:
        os.write(main_fd, b"\n")  # Enter, typed ahead of the question
        code, out, daemon = await watch(
            lab_config(broker), {"run.get": get, "run.answer": answer}, stdin_fd=term_fd
        )
    finally:
        os.close(main_fd)
        os.close(term_fd)
    assert code == 0, out
    assert "press Enter when done (or type abort)" in out
    assert "answer with" not in out  # asked here, not sent elsewhere
    assert ("run.answer", {"run": RUN, "prompt": "5", "answer": "done"}) in daemon.received
    assert "run R-0042: running" in out


async def test_watch_asks_only_the_recovery_choices_offered(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    prompt = {"id": "recover-4-31", "kind": "recovery", "options": ["retry", "abort"],
              "text": "the harvest had not begun"}  # fmt: skip

    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        return d.state("awaiting-recovery", step="harvest", prompt=prompt)

    async def recover(d: FakeDaemon, args: dict[str, Any]) -> Any:
        await d.doc("prompt", prompt_id=prompt["id"], phase="answered", prompt_kind="recovery",
                    text=prompt["text"], answer=args["action"], by="terminal")  # fmt: skip
        await _finish(d)
        return {"run": RUN, "state": "recovering"}

    main_fd, term_fd = os.openpty()
    try:
        os.write(main_fd, b"skip\nr\n")  # skip is not offered here; r is retry
        code, out, daemon = await watch(
            lab_config(broker), {"run.get": get, "run.recover": recover}, stdin_fd=term_fd
        )
    finally:
        os.close(main_fd)
        os.close(term_fd)
    assert code == 0, out
    assert "retry / abort? " in out and "retry / skip / abort" not in out
    assert "answer retry or abort" in out
    assert [args for verb, args in daemon.received if verb == "run.recover"] == [
        {"run": RUN, "action": "retry"}]


async def test_watch_on_a_terminal_gives_up_a_prompt_answered_elsewhere(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    async def get(d: FakeDaemon, args: dict[str, Any]) -> Any:
        prompt = {"id": "6", "kind": "recovery", "text": "Vacuum lost",
                  "options": ["retry", "skip", "abort"]}  # fmt: skip
        reply = d.state("awaiting-recovery", step="harvest", prompt=prompt)
        await d.doc("prompt", prompt_id="6", phase="answered", prompt_kind="recovery",
                    text="Vacuum lost", answer="retry", by="terminal")  # fmt: skip
        await d.publish_state("running", step="harvest")
        await _finish(d)
        return reply

    main_fd, term_fd = os.openpty()
    try:
        code, out, daemon = await watch(lab_config(broker), {"run.get": get}, stdin_fd=term_fd)
    finally:
        os.close(main_fd)
        os.close(term_fd)
    assert code == 0, out
    assert "needs recovery (prompt 6): Vacuum lost" in out
    assert "answered elsewhere" in out
    assert [verb for verb, _ in daemon.received] == ["run.get"]


async def test_steering_commands_print_one_line(
    broker: MosquittoBroker, lab_config: Callable[..., LabConfig]
) -> None:
    async def pause(d: FakeDaemon, args: dict[str, Any]) -> Any:
        return {"run": args["run"], "state": "pausing", "message": "after the step"}

    async def resume(d: FakeDaemon, args: dict[str, Any]) -> Any:
        raise CommandError("conflict", f"run '{args['run']}' is not paused")

    async def recover(d: FakeDaemon, args: dict[str, Any]) -> Any:
        return {"run": args["run"], "state": "running"}

    config = lab_config(broker)
    console = Console(file=io.StringIO(), width=60)
    handlers: dict[str, Handler] = {
        "run.pause": pause,
        "run.resume": resume,
        "run.recover": recover,
    }
    async with FakeDaemon(config, handlers) as daemon, DaemonClient(config) as client:
        assert await run_action(client, console, parse("run", "pause", RUN, "--after-step")) == 0
        assert await run_action(client, console, parse("run", "recover", RUN, "skip")) == 0
        with pytest.raises(CommandError, match="not paused"):
            await run_action(client, console, parse("run", "resume", RUN))
    assert console.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "run R-0042: pausing after the step",
        "run R-0042: running",
    ]
    assert daemon.received[:2] == [
        ("run.pause", {"run": RUN, "when": "after-step"}),
        ("run.recover", {"run": RUN, "action": "skip"}),
    ]
