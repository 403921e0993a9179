"""``assay run watch RUN``: live progress of a run, healed of any gap by replay.

At a terminal the retained run state drives a live display (step i/N, the progress in
wells or seconds, the ETA, the newest well or the incubator temperature); run documents add
a line each for interruptions, prompts and steps. When the output is not a terminal (a log,
a CI job) there is no live display: :class:`~acquisition.cli.watch_log.RunLog` writes plain
lines, flushed, from the run's first document on (the history is replayed), with progress
milestones. A run waiting on a person is asked inline when stdin is a terminal, else the
watch prints the command that answers it from another terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import aiomqtt
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from acquisition.cli.client import DaemonClient
from acquisition.cli.render import prompt_lines, run_state_fields, steer_line
from acquisition.cli.watch_log import RunLog
from acquisition.config import LabConfig
from acquisition.errors import BrokerError, CommandError
from acquisition.follow import RunFollower
from acquisition.payloads import TERMINAL_STATES

__all__ = ["read_line", "watch_run"]

AWAITING = frozenset({"awaiting-operator", "awaiting-recovery"})
_HELD = frozenset({"paused", "awaiting-recovery", "interrupted"})  # "running" again is news
OPERATOR_QUESTION = "press Enter when done (or type abort): "


def recovery_question(options: list[str]) -> str:
    """``retry / abort? ``: the choices this recovery prompt offers."""
    return " / ".join(options or ["retry", "skip", "abort"]) + "? "


class _Display:
    def __init__(self, console: Console, run: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[latest]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task(
            escape(run), total=None, amount="", eta="", latest=""
        )

    def state(self, state: dict[str, Any]) -> None:
        prog = state.get("progress") or {}
        fields: dict[str, Any] = {k: escape(v) for k, v in run_state_fields(state).items()}
        self.progress.update(
            self.task,
            total=prog.get("total") or None,
            completed=prog.get("done", 0),
            **fields,
        )


async def watch_run(
    client: DaemonClient,
    console: Console,
    run: str,
    *,
    reconnect_s: float = 2.0,
    stdin_fd: int | None = None,
) -> int:
    """Follow ``run`` until it stops; return a shell exit code (0 = completed).

    If the broker goes away, keep the follower (what was seen) and reconnect; once back,
    the retained run state shows what was missed and a replay fills it in. With ``stdin_fd``
    (a terminal) a prompt is answered inline; without, the watch prints how to answer it.
    """
    session = _WatchSession(console, run, client, stdin_fd)
    live = session.display.progress if session.display is not None else contextlib.nullcontext()
    try:
        with live:
            try:
                await _follow_until_stopped(session, client, reconnect_s)
            finally:
                await session.stop_asking()
    finally:
        await session.close()
    final = session.state["state"]
    message = session.state.get("message") or ""
    if session.log is not None:
        session.log.line(f"run {run}: {final} {message}".rstrip(), session.state.get("updated_at"))
    else:
        style = "green" if final == "completed" else "red"
        console.print(f"run {escape(run)}: [{style}]{final}[/{style}] {escape(message)}")
    if (
        final == "interrupted"
        and "assay run resume" not in message  # the daemon's message already says it
        and not (session.follower is not None and session.follower.stopped)  # it has ended
    ):
        session.say(f"resume it with `assay run resume {run}` (or `assay run abort {run}`)")
    return 0 if final == "completed" else 1


async def _follow_until_stopped(
    session: _WatchSession, client: DaemonClient, reconnect_s: float
) -> None:
    while True:
        try:
            if await session.follow(client):
                return
        except BrokerError as exc:
            session.say(f"{exc}; reconnecting", style="yellow")
        while True:
            await asyncio.sleep(reconnect_s)
            try:
                client = await _connect(client.config, client.timeout_s)
                break
            except BrokerError:
                continue
        session.owned.append(client)


async def _connect(config: LabConfig, timeout_s: float) -> DaemonClient:
    client = DaemonClient(config, timeout_s=timeout_s)
    await client.__aenter__()
    return client


async def read_line(fd: int) -> str | None:
    """One line typed on the terminal ``fd`` without blocking the event loop; None at EOF.

    Cancelling it leaves nothing behind: no thread, and what was half typed is discarded.
    """
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not got.done():
            got.set_result(data)

    loop.add_reader(fd, readable)
    try:
        data = await got
    except asyncio.CancelledError:
        _discard_typed(fd)
        raise
    finally:
        loop.remove_reader(fd)
    if not data:
        return None
    return data.decode(errors="replace").splitlines()[0] if data.strip() else ""


def _discard_typed(fd: int) -> None:
    with contextlib.suppress(ImportError, OSError):
        import termios

        termios.tcflush(fd, termios.TCIFLUSH)


class _WatchSession:
    """What a watch has seen, kept across reconnections."""

    def __init__(
        self, console: Console, run: str, client: DaemonClient, stdin_fd: int | None
    ) -> None:
        self.console = console
        self.run = run
        self.client = client  # the current connection (answers go through it)
        self.stdin_fd = stdin_fd
        # Not a terminal (a file, a pipe): plain lines instead of the live display.
        self.log = None if console.is_terminal else RunLog(console.file, run)
        self.display = _Display(console, run) if self.log is None else None
        self.history_until = 0  # log: documents up to this seq happened before the watch
        self._logged_state: str | None = None
        self._pending_state: dict[str, Any] | None = None
        self.follower: RunFollower | None = None
        self.state: dict[str, Any] = {}
        self.owned: list[DaemonClient] = []
        self._paused_shown = False
        self._prompts_shown: set[str] = set()
        self._asked: set[str] = set()
        self._asker: asyncio.Task[None] | None = None
        self._asking: str | None = None  # the prompt id the asker is about
        self._reading = False  # the asker waits on the keyboard
        self._sending = False  # the asker has sent its answer; let it finish
        self._daemon_offline = False
        self._status_topic = ""

    async def close(self) -> None:
        for client in self.owned:
            await client.__aexit__(None, None, None)

    async def follow(self, client: DaemonClient) -> bool:
        """Follow on one connection; True once the run has stopped and all is seen."""
        self.client = client
        cfg = client.config
        events = cfg.topic("runs", self.run, "events")
        state_topic = cfg.topic("runs", self.run, "state")
        self._status_topic = cfg.topic("status")
        async with client.subscription(events, state_topic, self._status_topic) as queue:
            state = await client.request("run.get", {"run": self.run})
            last_seq = int(state["last_seq"])
            if self.follower is None and self.log is None:  # live display: from now on
                self.follower = RunFollower(next_seq=last_seq + 1)
            elif self.follower is None:  # a log: from the run's first document
                self.follower = RunFollower(next_seq=1)
                self.history_until = last_seq
                if last_seq >= 1:
                    await client.request(
                        "replay", {"run": self.run, "from_seq": 1, "to_seq": last_seq}
                    )
                    self.follower.replay_requested(time.monotonic())
            follower = self.follower
            follower.saw_last_seq(last_seq, time.monotonic())
            self._on_state(state)
            while self.state["state"] not in TERMINAL_STATES or not _stop_seen(
                follower, self.state
            ):
                try:
                    msg = await asyncio.wait_for(queue.get(), 0.25)
                except TimeoutError:
                    msg = None
                if client.lost is not None:
                    raise client.lost
                now = time.monotonic()
                if msg is not None:
                    self._take(msg, state_topic, now)
                gap = follower.replay_due(now)
                if gap is not None:
                    self.say(f"gap in documents {gap[0]}-{gap[1]}; asking for a replay",
                             style="yellow")  # fmt: skip
                    await client.request(
                        "replay", {"run": self.run, "from_seq": gap[0], "to_seq": gap[1]}
                    )
        return True

    def _take(self, msg: aiomqtt.Message, state_topic: str, now: float) -> None:
        assert self.follower is not None
        assert isinstance(msg.payload, bytes | bytearray)
        data = json.loads(msg.payload)
        if msg.topic.matches(self._status_topic):
            self._on_daemon_status(data)
            return
        if msg.topic.matches(state_topic):
            self.follower.saw_last_seq(int(data["last_seq"]), now)
            self._on_state(data)
            return
        for doc in self.follower.offer(data, now):
            self._on_document(doc)
        if self.log is not None:
            self._log_state()

    # ------------------------------------------------------------------ what is shown

    def say(self, text: str, *, ts: object = None, style: str | None = None) -> None:
        """One line: timestamped and flushed in a log, else printed (in ``style``)."""
        if self.log is not None:
            self.log.line(text, ts)
        else:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def _say(self, text: str, ts: object = None) -> None:
        self.say(text, ts=ts)

    def _on_daemon_status(self, status: dict[str, Any]) -> None:
        """The daemon going away (its Last Will) or coming back, said once each."""
        offline = status.get("state") == "offline"
        if offline and not self._daemon_offline:
            why = status.get("reason") or "unknown reason"
            self._say(f"the daemon is offline ({why}); the run shows as interrupted once "
                      "it is back, to be resumed")  # fmt: skip
        elif not offline and self._daemon_offline:
            self._say("the daemon is back online")
        self._daemon_offline = offline

    def _on_state(self, state: dict[str, Any]) -> None:
        self.state = state
        name = state["state"]
        prompt = state.get("prompt") if name in AWAITING else None
        if self.display is None:
            self._pending_state = state
            self._log_state()
            self._settle_asker(prompt["id"] if prompt else None)
            if prompt and self.stdin_fd is not None and prompt["id"] not in self._asked:
                self._start_asking(prompt)
            return
        self.display.state(state)
        if name == "paused":
            if not self._paused_shown:
                message = state.get("message") or "paused"
                self._say(f"paused: {message} — `assay run resume {self.run}`")
                self._paused_shown = True
        else:
            self._paused_shown = False
        self._settle_asker(prompt["id"] if prompt else None)
        if prompt:
            self._show_prompt(prompt)
            if self.stdin_fd is not None and prompt["id"] not in self._asked:
                self._start_asking(prompt)

    def _log_state(self) -> None:
        """Log the newest run state once every document it counts has been logged."""
        state, follower = self._pending_state, self.follower
        assert self.log is not None
        if state is None or follower is None or follower.delivered_up_to < state["last_seq"]:
            return
        self._pending_state = None
        name, message, ts = state["state"], state.get("message") or "", state.get("updated_at")
        prompt = state.get("prompt") if name in AWAITING else None
        if name != self._logged_state:
            if name == "paused":
                self._say(f"paused: {message or 'paused'} — `assay run resume {self.run}`", ts)
            elif name == "awaiting-recovery":
                options = ", ".join(str(o) for o in (prompt or {}).get("options") or [])
                self._say(f"awaiting-recovery: {message or 'the run needs a decision'}"
                          f"{'; options: ' + options if options else ''}", ts)  # fmt: skip
            elif name == "queued" or (name == "running" and self._logged_state in _HELD):
                self._say(f"run {self.run}: {name} {message}".rstrip(), ts)
            self._logged_state = name
        if prompt:
            self._show_prompt(prompt, ts)
        self.log.state(state)

    def _on_document(self, doc: dict[str, Any]) -> None:
        kind, ts = doc.get("kind"), doc.get("ts")
        if kind == "interruption":
            detail = doc.get("detail") or {}
            extra = f" ({detail['message']})" if isinstance(detail.get("message"), str) else ""
            if self.log is not None:
                self._say(f"interruption: {doc['reason']}{extra}", ts)
            else:
                self.console.print(
                    f"[red]interruption:[/red] {escape(str(doc['reason']))}{escape(extra)}"
                )
        elif self.log is not None and kind in ("start", "step", "data", "artifact"):
            self.log.document(doc, live=int(doc["seq"]) > self.history_until)
        elif kind == "step":
            self._say(f"step {doc['step']} {doc['phase']}")
        elif kind == "prompt":
            prompt_id = str(doc["prompt_id"])
            phase = doc.get("phase")
            if phase == "asked":
                self._show_prompt(
                    {
                        "id": prompt_id,
                        "kind": doc.get("prompt_kind", "operator"),
                        "text": doc.get("text", ""),
                        "options": doc.get("options") or [],
                    },
                    ts,
                )
            elif phase in ("answered", "timed-out"):
                if prompt_id == self._asking:
                    self._settle_asker(None)
                if phase == "timed-out":
                    self._say(f"prompt {prompt_id} timed out", ts)
                else:
                    by = f" by {doc['by']}" if doc.get("by") else ""
                    answer = doc.get("answer") or "done"
                    self._say(f"prompt {prompt_id} answered{by}: {answer}", ts)
            elif phase == "withdrawn" and self.log is not None:
                self._say(f"prompt {prompt_id} withdrawn (asked again on resume)", ts)

    def _show_prompt(self, prompt: dict[str, Any], ts: object = None) -> None:
        prompt_id = str(prompt["id"])
        if prompt_id in self._prompts_shown:
            return
        self._prompts_shown.add(prompt_id)
        lines = prompt_lines(self.run, prompt, interactive=self.stdin_fd is not None)
        if self.log is not None:  # one line per prompt
            self._say("; ".join(line.strip() for line in lines), ts)
            return
        for line in lines:
            style = "bold" if line[:1] != " " else None
            self.console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ asking inline

    def _settle_asker(self, pending_id: str | None) -> None:
        """The prompt the run waits on is now ``pending_id``: stop asking about another."""
        if self._asker is None or self._asker.done() or self._sending:
            return
        if self._asking == pending_id:
            return
        if self._reading:
            self.console.print()
        self._say("answered elsewhere")
        self._asker.cancel()

    def _start_asking(self, prompt: dict[str, Any]) -> None:
        if self._asker is not None and not self._asker.done() and not self._asker.cancelling():
            return  # still sending the last answer: asked when the state comes again
        self._asked.add(str(prompt["id"]))
        self._asking = str(prompt["id"])
        self._asker = asyncio.create_task(self._ask(prompt), name=f"watch-ask-{self.run}")

    async def stop_asking(self) -> None:
        if self._asker is not None:
            self._asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asker

    async def _ask(self, prompt: dict[str, Any]) -> None:
        assert self.stdin_fd is not None
        prompt_id = str(prompt["id"])
        recovery = prompt.get("kind") == "recovery"
        options = [str(o) for o in prompt.get("options") or []]
        request: tuple[str, dict[str, Any]] | None = None
        self._show_prompt(prompt)  # before its question, even if the log holds it back
        if self.display is not None:
            self.display.progress.stop()  # the live bar would draw over what is typed
        try:
            while request is None:
                self.console.print(
                    recovery_question(options) if recovery else OPERATOR_QUESTION,
                    end="",
                    markup=False,
                    highlight=False,
                )
                self._reading = True
                try:
                    line = await read_line(self.stdin_fd)
                except NotImplementedError:  # this event loop cannot watch the terminal
                    line = None
                finally:
                    self._reading = False
                if line is None:  # end of input: leave it to another terminal
                    for text in prompt_lines(self.run, prompt, interactive=False)[1:]:
                        self._say(text)
                    return
                request = _answer_request(self.run, prompt_id, recovery, options, line)
                if request is None:
                    choices = (" or ".join(options or ["retry", "skip", "abort"]) if recovery
                               else "Enter (done) or abort")  # fmt: skip
                    self._say(f"answer {choices}")
            self._sending = True
        finally:
            if self.display is not None:
                self.display.progress.start()
        try:
            reply = await self.client.request(*request)
            self._say(steer_line(reply))
        except CommandError as exc:  # e.g. answered elsewhere a moment before
            self._say(f"assay: {exc.code}: {exc.message}")
            self._asked.discard(prompt_id)  # asked again if the run still waits on it
        except BrokerError as exc:
            self._say(f"assay: {exc}; the answer may not have arrived")
            self._asked.discard(prompt_id)  # asked again once the watch is back
            self._prompts_shown.discard(prompt_id)
        finally:
            self._sending = False


def _answer_request(
    run: str, prompt_id: str, recovery: bool, options: list[str], line: str
) -> tuple[str, dict[str, Any]] | None:
    """The command a typed answer means, or None if it means nothing here."""
    word = line.strip()
    lowered = word.lower()
    if recovery:
        for action in ("retry", "skip", "abort"):
            if options and action not in options:
                continue
            if lowered and action.startswith(lowered):
                return "run.recover", {"run": run, "action": action}
        return None
    if lowered == "abort" and "abort" not in options:
        return "run.abort", {"run": run}
    if not word:
        word = "done"
    if word == "done" or word in options:
        return "run.answer", {"run": run, "prompt": prompt_id, "answer": word}
    return None


def _stop_seen(follower: RunFollower, state: dict[str, Any]) -> bool:
    # Terminal state is retained; the stop document may already be behind us.
    return follower.stopped or follower.delivered_up_to >= int(state["last_seq"])
