"""``run.pause``, ``run.resume``, ``run.answer``, ``run.recover`` (and ``run.abort`` of an
interrupted run): what each does to a protocol run, and when it is refused (``conflict``)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from acquisition.commands import AnswerArgs, PauseArgs, RecoverArgs, RunRef
from acquisition.engine.recovery import read_run
from acquisition.engine.safety import make_safe
from acquisition.engine.services import RunServices
from acquisition.errors import CommandError
from acquisition.journal import RunRecord, run_documents
from acquisition.run_recorder import RunRecorder
from acquisition.run_states import refuse
from acquisition.steps.labware import BenchView, strays, survey

if TYPE_CHECKING:
    from acquisition.engine.runner import ProtocolRun

__all__ = ["abort_interrupted", "engine_command"]


async def engine_command(daemon: RunServices, verb: str, args: Any) -> dict[str, Any]:
    assert isinstance(args, RunRef)
    if verb == "run.resume" and args.run not in daemon.active:
        recorder = await daemon.resume_run(args.run)
        return {"run": recorder.run, "state": "resuming",
                "message": "from its journal, after the daemon's restart"}  # fmt: skip
    engine = await _engine(daemon, args.run)
    state = engine.recorder.state
    control = engine.control
    match verb:
        case "run.pause":
            assert isinstance(args, PauseArgs)
            if state == "paused" and not control.resume_requested:
                return _reply(engine, "already paused")
            if state == "paused":  # resumed a moment ago, not running yet: pause again
                control.pause(args.when)
                return {"run": args.run, "state": "pausing", "message": "again"}
            if state not in ("running", "queued", "awaiting-operator"):
                raise refuse(args.run, state, "pause")
            when = args.when
            here = _where(engine)
            note = f"now, in {here}"
            if when == "now" and not engine.current_step_pausable:
                note = f"after the current step ({here} cannot stop half-way)"
                when = "after-step"
            elif when == "after-step":
                note = f"after the current step ({here})"
            control.pause(when)
            return {"run": args.run, "state": "pausing", "message": note}
        case "run.resume":
            if state != "paused":
                raise refuse(args.run, state, "resume")
            control.resume()
            return {"run": args.run, "state": "resuming", "message": f"in {_where(engine)}"}
        case "run.answer":
            assert isinstance(args, AnswerArgs)
            prompt = engine.recorder.prompt
            if state != "awaiting-operator" or prompt is None or prompt.kind != "operator":
                raise refuse(args.run, state, "answer a prompt of")
            if args.prompt is not None and args.prompt != prompt.id:
                raise CommandError(
                    "conflict", f"run '{args.run}' asks prompt {prompt.id}, not {args.prompt}"
                )
            if args.answer not in prompt.options:
                raise CommandError(
                    "bad_request",
                    f"args.answer: one of {', '.join(prompt.options)} (got {args.answer!r})",
                )
            control.give_answer(prompt.id, args.answer, "operator")
            return {"run": args.run, "state": "answered",
                    "message": f"prompt {prompt.id}: {args.answer}"}  # fmt: skip
        case "run.recover":
            assert isinstance(args, RecoverArgs)
            if state != "awaiting-recovery":
                raise refuse(args.run, state, "recover")
            offered = engine.recorder.prompt.options if engine.recorder.prompt else []
            if offered and args.action not in offered:
                why = f": {engine.recorder.message}" if engine.recorder.message else ""
                raise CommandError(
                    "conflict",
                    f"run '{args.run}' offers {', '.join(offered)} here, not {args.action}{why}",
                )
            control.recover(args.action)
            return {"run": args.run, "state": "recovering",
                    "message": f"{args.action} {_where(engine)}"}  # fmt: skip
    raise CommandError("unknown_verb", f"unknown verb '{verb}'")  # pragma: no cover


def _where(engine: ProtocolRun) -> str:
    rec = engine.recorder
    return "the queue" if rec.step_index is None else f"step {rec.step_index} ({rec.step})"


def _reply(engine: ProtocolRun, message: str) -> dict[str, Any]:
    return {"run": engine.run_id, "state": engine.recorder.state, "message": message}


async def _engine(daemon: RunServices, run: str) -> ProtocolRun:
    active = daemon.active.get(run)
    if active is None:
        record = await daemon.journal.get_run(run)
        if record is None:
            raise CommandError("not_found", f"no run '{run}'")
        raise CommandError("conflict", f"run '{run}' is not active (it is {record.state})")
    return active.engine


async def abort_interrupted(daemon: RunServices, record: RunRecord) -> dict[str, Any]:
    """End an interrupted protocol run for good: its instruments made safe (those free and
    connected; the reply names any that were not), its stop document, state ``aborted``."""
    if daemon.resuming(record.run):
        raise CommandError("conflict", f"run '{record.run}' is being resumed; try again")
    recorder = await RunRecorder.resume(
        daemon.config, daemon.journal, daemon.link.notify, record, clock=daemon.wall
    )
    if recorder.stopped:  # ended already: a repeated abort, or a run that cannot resume
        if record.state == "aborted":
            return {"run": record.run, "state": record.state}
        raise CommandError("conflict", f"run '{record.run}' has ended (it has a stop document)")
    documents = await run_documents(daemon.journal, record.run)
    problems: list[str] = []
    try:
        point = read_run(documents)
        instruments = point.instruments
        step_names = [str(st.get("type")) for st in point.protocol_definition.get("steps", [])]
    except (ValueError, TypeError):  # no protocol run, or documents it cannot read: it ends
        instruments, step_names = {}, []
    async with contextlib.AsyncExitStack() as stack:
        handles = {}
        for role, iid in instruments.items():
            try:
                handles[role] = await stack.enter_async_context(
                    daemon.instruments.lease(iid, record.run, role=role)
                )
            except CommandError as exc:
                problems.append(f"{iid} not made safe ({exc.message})")
        problems += [f"{p} (not made safe)" for p in await make_safe(step_names, handles, "abort")]
        sim = daemon.config.simulation
        bench = (BenchView(sim.control_host, sim.control_port)
                 if sim.enabled and sim.control_port is not None else None)  # fmt: skip
        # where the labware is, in the stop document (an await between the check below and
        # the stop would let a resume in)
        held = strays(await survey(handles, bench), "") if handles else []
        reason = "aborted by operator while interrupted"
        if problems:
            reason += "; " + "; ".join(problems)
        if held:
            reason += "; labware left: " + "; ".join(held)
        if record.run in daemon.active:  # resumed meanwhile by another command
            raise CommandError("conflict", f"run '{record.run}' was resumed; abort it again")
        await recorder.stop("abort", reason, "aborted")
    result: dict[str, Any] = {"run": record.run, "state": "aborted"}
    if problems:
        result["message"] = "; ".join(problems)
    return result
