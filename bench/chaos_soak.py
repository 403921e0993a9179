"""Chaos soak (a benchmark, not a test): full competition-binding runs back to back on the
simulated bench, with the daemon SIGKILLed at random moments and the broker SIGKILLed
during counts; recoveries answered by a scripted operator; the figures printed.

Everything is a real process on loopback: Mosquitto (no persistence, so a killed broker
loses what it held), ``assay-sim bench``, ``assayd``; this script is the terminal (over
MQTT) and a durable consumer of every run's documents (persistent session, reconnecting).
The virtual operator does the prompts' physical steps; the scripted operator here only
does what a person at the terminal would: resume an interrupted run and answer recovery
prompts (retry where offered, else skip: keep the mat the harvester finished).

Figures, after the last run (and again after replaying every gap from the journal):
documents expected (journal) / received / lost, duplicates (same id) and conflicting
duplicates (same seq, another id), wells counted twice, re-harvests (a plate with more
than one mat), harvests without a mat, runs needing a person for something the virtual
operator could have done, stuck runs, and how the runs ended.

    .venv/bin/python bench/chaos_soak.py [--runs 20] [--daemon-kills 20] [--broker-kills 6]
                                         [--seed 1] [--time-scale 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acquisition.cli.client import DaemonClient
from acquisition.config import LabConfig, load_config
from acquisition.errors import BrokerError, CommandError
from acquisition.protocols import parse_protocol, plan
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, SimBenchProcess, write_lab_config

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = (ROOT / "config/protocols/competition-binding.toml").read_text(encoding="utf-8")
PLATE_MAP = (ROOT / "config/plates/competition-progesterone.toml").read_text(encoding="utf-8")
KINDS = ("counter", "incubator", "harvester")
ENDED = {"completed", "aborted", "failed"}
RUN_TIMEOUT_S = 180.0  # real seconds for one run, kills and recoveries included: else stuck
POLL_S = 0.05


@dataclass
class Receipts:
    """What the consumer got: (run, seq) -> ids, in arrival order."""

    ids: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, doc: dict[str, Any]) -> None:
        self.ids[(str(doc["run"]), int(doc["seq"]))].append(str(doc["id"]))


@dataclass
class Tally:
    answers: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    daemon_kills: int = 0
    missed_kills: int = 0  # the run had ended before the kill: not counted as one
    broker_kills: int = 0
    needed_person: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    kill_points: Counter[str] = field(default_factory=Counter)


async def consume(config: LabConfig, receipts: Receipts, ready: asyncio.Event) -> None:
    """A durable consumer of every run's events: persistent session, reconnects."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    first, ident = True, f"soak-consumer-{uuid.uuid4().hex[:6]}"
    topic = config.topic("runs", "+", "events")
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", config.mqtt.port, identifier=ident, clean_start=first,
                protocol=aiomqtt.ProtocolVersion.V5, properties=props,
            ) as client:  # fmt: skip
                first = False
                await client.subscribe(topic, qos=1)
                ready.set()
                async for msg in client.messages:
                    assert isinstance(msg.payload, bytes | bytearray)
                    receipts.add(json.loads(msg.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path, broker: MosquittoBroker) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.broker = broker
        self.files = write_lab_config(
            workdir, broker_port=broker.port, node=f"soak-{uuid.uuid4().hex[:6]}", kinds=KINDS,
            time_scale=args.time_scale, counter_poll_s=0.5, seed=args.seed,
        )  # fmt: skip
        self.config = load_config(self.files.config_path)
        self.bench = SimBenchProcess(self.files)
        self.daemon = DaemonProcess(self.files)
        self.tally = Tally()
        self.runs: list[tuple[str, str]] = []  # (run, plate_id)
        self._client: DaemonClient | None = None
        self._stack = contextlib.AsyncExitStack()
        protocol, _ = parse_protocol(PROTOCOL, source="competition-binding.toml")
        self.step_s = {s.type: s.duration_s / args.time_scale for s in plan(protocol).steps}
        self.step_s["prompt"] = 0.0  # the virtual operator answers within milliseconds

    # ------------------------------------------------------------------ the terminal

    async def request(self, verb: str, args: dict[str, Any] | None = None) -> Any:
        """One command; the terminal reconnects when the broker was restarted under it."""
        deadline = time.monotonic() + 60
        while True:
            if self._client is None:
                await self._stack.aclose()
                self._stack = contextlib.AsyncExitStack()
                try:
                    self._client = await self._stack.enter_async_context(
                        DaemonClient(self.config, timeout_s=10.0))
                except BrokerError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
                    continue
            try:
                return await self._client.request(verb, args or {})
            except BrokerError:
                self._client = None
                if time.monotonic() > deadline:
                    raise

    async def close(self) -> None:
        await self._stack.aclose()

    # ------------------------------------------------------------------ the daemon

    async def restart_daemon(self) -> None:
        await asyncio.to_thread(self.daemon.kill)
        self.tally.daemon_kills += 1
        await asyncio.to_thread(self.daemon.start)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(CommandError):
                insts = await self.request("instruments")
                if len(insts) == len(KINDS) and all(i["connected"] for i in insts):
                    return
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"instruments not back after a restart:\n{self.daemon.tail()}")

    # ------------------------------------------------------------------ one run

    async def one_run(self, index: int, kills: int, broker_kill: bool) -> int:
        """Run ``index`` to its end; returns how many of its ``kills`` it could not place
        (the run was past the step aimed at), for the next run."""
        plate_id = f"SOAK-{index:02d}-{uuid.uuid4().hex[:4]}"
        reply = await self.request("run.start", {
            "protocol": "competition-binding", "protocol_toml": PROTOCOL,
            "plate_map": "competition-progesterone", "plate_map_toml": PLATE_MAP,
            "plate_id": plate_id,
        })  # fmt: skip
        run = str(reply["run"])
        self.runs.append((run, plate_id))
        start = time.monotonic()
        # Each kill aims at a step (the incubation is most of a run; random moments of the
        # whole run would hardly ever hit a harvest), then a random moment inside it.
        targets = sorted((self.rng.choice(TARGETS) for _ in range(kills)), key=TARGETS.index)
        kill_at: list[float] = []
        missed = 0
        broker_at_wells = self.rng.randint(5, 90) if broker_kill else None
        asked: set[str] = set()
        state: dict[str, Any] = {}
        while True:
            now = time.monotonic()
            if now - start > RUN_TIMEOUT_S:
                self.tally.stuck.append(f"{run}: {state.get('state')} {state.get('message')}")
                with contextlib.suppress(CommandError):
                    await self.request("run.abort", {"run": run})
                return 0
            if kill_at and now >= kill_at[0]:
                kill_at.pop(0)
                where = "?"
                with contextlib.suppress(CommandError):
                    s = await self.request("run.get", {"run": run})
                    where = str(s["step"] or s["state"])
                await self.restart_daemon()
                after = await self.request("run.get", {"run": run})
                if after["state"] == "interrupted":
                    self.tally.kill_points[where] += 1
                else:  # the run had ended in between: aim again (this run or the next)
                    self.tally.missed_kills += 1
                    missed += 1
                continue
            try:
                state = await self.request("run.get", {"run": run})
            except CommandError:
                await asyncio.sleep(POLL_S)
                continue
            kind = state["state"]
            if kind in ENDED:
                return len(targets) + len(kill_at) + missed
            hit = next((i for i, t in enumerate(targets) if _in(state, t)), None)
            if hit is not None and not kill_at:
                # the targets before it were passed by (a prompt answered between two looks):
                # they go on to the next run
                missed += hit
                step_s = self.step_s.get(targets[hit], 1.0)
                del targets[: hit + 1]
                kill_at.append(now + self.rng.uniform(0.0, 0.9) * step_s)
            if "virtual operator could not" in (state["message"] or ""):
                # a precondition or a prompt it should have handled, whatever the state
                self.tally.needed_person.append(f"{run}: {state['message']}")
                await self.request("run.abort", {"run": run})
            elif kind == "interrupted":
                await self.request("run.resume", {"run": run})
                self.tally.resumes += 1
            elif kind == "awaiting-recovery" and state["prompt"]:
                prompt = state["prompt"]
                key = f"{prompt['id']}:{state['last_seq']}"
                if key not in asked:
                    asked.add(key)
                    await asyncio.sleep(0.2)  # a person reads the prompt (the virtual
                    state = await self.request("run.get", {"run": run})  # operator may act)
                    if state["state"] == "awaiting-recovery" and state["prompt"]:
                        options = state["prompt"]["options"]
                        action = "retry" if "retry" in options else "skip"
                        with contextlib.suppress(CommandError):
                            await self.request("run.recover", {"run": run, "action": action})
                            self.tally.answers[f"{action}: {_case(state['message'])}"] += 1
            elif (broker_at_wells is not None and kind == "running" and state["step"] == "count"
                  and (state["progress"] or {}).get("done", 0) >= broker_at_wells):  # fmt: skip
                broker_at_wells = None
                await asyncio.to_thread(self.broker.restart, hard=True)
                self.tally.broker_kills += 1
            await asyncio.sleep(POLL_S)

    # ------------------------------------------------------------------ the figures

    def journal(self) -> dict[str, list[dict[str, Any]]]:
        with contextlib.closing(sqlite3.connect(self.files.journal_path)) as conn:
            rows = conn.execute("SELECT run, payload FROM documents ORDER BY run, seq").fetchall()
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for run, payload in rows:
            out[run].append(json.loads(payload))
        return out


# Where kills aim, in protocol order; the harvest twice: its recovery is the one in doubt.
TARGETS = ("prompt", "incubate", "harvest", "harvest", "count", "analyze")


def _in(state: dict[str, Any], target: str) -> bool:
    if target == "prompt":
        return bool(state["state"] == "awaiting-operator")
    return bool(state["state"] == "running" and state["step"] == target)


def _case(message: str | None) -> str:
    text = message or ""
    for words, case in (("had not begun", "harvest not begun"),
                        ("partly harvested", "harvest partly done"),
                        ("finished the cycle", "harvest finished by the harvester"),
                        ("(incubate)", "incubation gap"), ("(count)", "count")):  # fmt: skip
        if words in text:
            return case
    return text[:60]


def _lost(expected: set[tuple[str, int]], receipts: Receipts) -> set[tuple[str, int]]:
    return {key for key in expected if not receipts.ids.get(key)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--daemon-kills", type=int, default=20)
    parser.add_argument("--broker-kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=600.0)
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-soak-") as tmp, \
            MosquittoBroker(persistence=False) as broker:  # fmt: skip
        soak = Soak(args, Path(tmp), broker)
        rng = soak.rng
        kills = Counter(rng.randrange(args.runs) for _ in range(args.daemon_kills))
        broker_runs = set(rng.sample(range(args.runs), min(args.broker_kills, args.runs)))
        receipts = Receipts()
        with soak.bench, soak.daemon:
            try:
                ready = asyncio.Event()
                consumer = asyncio.create_task(consume(soak.config, receipts, ready))
                await ready.wait()
                carried, i = 0, 0
                # kills the last runs could not place go on into up to 5 more runs
                while i < args.runs or (carried and i < args.runs + 5):
                    carried = await soak.one_run(i, kills[i] + carried, i in broker_runs)
                    i += 1
                    print(f"run {i}/{args.runs} done ({time.monotonic() - began:.0f} s)",
                          file=sys.stderr, flush=True)
                await asyncio.sleep(1.0)  # the last documents reach the consumer
                journal = soak.journal()
                expected = {(r, int(d["seq"])) for r, docs in journal.items() for d in docs}
                lost_before = _lost(expected, receipts)
                for run in sorted({r for r, _ in lost_before}):
                    seqs = sorted(s for r, s in lost_before if r == run)
                    await soak.request("replay", {"run": run, "from_seq": seqs[0],
                                                  "to_seq": seqs[-1]})  # fmt: skip
                deadline = time.monotonic() + 20
                while _lost(expected, receipts) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                lost_after = _lost(expected, receipts)
                world = (await soak.request("sim", {"op": "world", "args": {}}))["world"]
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            finally:
                await soak.close()
            vo_failures = soak.daemon.log_path.read_text(errors="replace").count(
                "virtual operator could not act")
    _report(args, soak, journal, receipts, expected, lost_before, lost_after, world,
            vo_failures, time.monotonic() - began)
    return 0


def _report(args: argparse.Namespace, soak: Soak, journal: dict[str, list[dict[str, Any]]],
            receipts: Receipts, expected: set[tuple[str, int]],
            lost_before: set[tuple[str, int]], lost_after: set[tuple[str, int]],
            world: dict[str, Any], vo_failures: int, wall_s: float) -> None:  # fmt: skip
    t = soak.tally
    ours = {run for run, _ in soak.runs}
    dupes = sum(len(v) - 1 for k, v in receipts.ids.items() if k[0] in ours and len(v) > 1)
    conflicting = sum(1 for k, v in receipts.ids.items() if k[0] in ours and len(set(v)) > 1)
    twice = 0
    ends: Counter[str] = Counter()
    without_mat: list[str] = []
    incomplete: list[str] = []
    mats_of: Counter[str] = Counter(m["plate_id"] for m in world.get("mats", {}).values())
    for run, plate_id in soak.runs:
        docs = journal.get(run, [])
        wells = Counter(d["reading"]["well"] for d in docs
                        if d["kind"] == "data" and d.get("stream") == "well")  # fmt: skip
        twice += sum(1 for n in wells.values() if n > 1)
        stop = next((d for d in docs if d["kind"] == "stop"), None)
        ends[stop["exit_status"] if stop else "no stop document"] += 1
        harvested = [d for d in docs if d["kind"] == "step" and d["step"] == "harvest"
                     and d["phase"] in ("finished", "skipped")]  # fmt: skip
        if harvested and mats_of[plate_id] == 0:
            without_mat.append(run)
        if stop and stop["exit_status"] == "success" and len(wells) != 96:
            incomplete.append(f"{run}: {len(wells)} wells")
    reharvests = sum(1 for _, p in soak.runs if mats_of[p] > 1)
    rows = [
        ("runs", f"{len(soak.runs)} ({', '.join(f'{k} {v}' for k, v in sorted(ends.items()))})"),
        ("daemon SIGKILLs mid-run", f"{sum(t.kill_points.values())} of {args.daemon_kills} "
         f"asked (at {dict(sorted(t.kill_points.items()))}; {t.missed_kills} more hit "
         "no open run)"),
        ("broker SIGKILLs during counts", str(t.broker_kills)),
        ("resumes / recovery answers", f"{t.resumes} / {dict(sorted(t.answers.items()))}"),
        ("documents expected (journal)", str(len(expected))),
        ("received before replay", str(len(expected) - len(lost_before))),
        ("lost before replay", str(len(lost_before))),
        ("lost after replay", str(len(lost_after))),
        ("duplicates (same id)", str(dupes)),
        ("conflicting duplicates", str(conflicting)),
        ("wells counted twice", str(twice)),
        ("completed runs without 96 wells", str(len(incomplete))),
        ("re-harvests (plates with > 1 mat)", str(reharvests)),
        ("harvests without a mat", str(len(without_mat))),
        ("runs needing a person (virtual operator could not)",
         f"{len(t.needed_person)} (log lines: {vo_failures})"),
        ("stuck runs", str(len(t.stuck))),
        ("wall time", f"{wall_s:.0f} s (time scale x{args.time_scale:g}, seed {args.seed})"),
    ]
    width = max(len(k) for k, _ in rows)
    print("chaos soak: full competition-binding runs, real broker, bench and daemon")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for line in (*t.needed_person, *t.stuck, *incomplete, *without_mat):
        print(f"  ! {line}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(asyncio.run(main()))
