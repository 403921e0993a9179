"""The daemon's side of protocol runs: create one from ``run.start``, mark open runs
interrupted after a restart, and resume an interrupted one from its documents."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from acquisition.commands import ProtocolRunArgs, RunStartArgs
from acquisition.engine.launch import setup_from_args, setup_from_resume
from acquisition.engine.recovery import read_run
from acquisition.engine.runner import ProtocolRun, resume_hint
from acquisition.engine.services import RunServices
from acquisition.errors import CommandError, ConfigError
from acquisition.journal import Journal, RunRecord, run_documents
from acquisition.run_recorder import RunRecorder
from acquisition.steps import step_types

__all__ = ["interrupt_open_run", "protocol_run_from_args", "resumed_protocol_run"]

log = structlog.get_logger("acquisition.engine")


async def protocol_run_from_args(
    daemon: RunServices, args: ProtocolRunArgs | RunStartArgs
) -> ProtocolRun:
    """A protocol run (or the shipped count-plate one) created from ``run.start``."""
    setup = await setup_from_args(daemon.config, args, uuid.uuid4().hex)
    if isinstance(args, ProtocolRunArgs):
        params = args.model_dump(mode="json", exclude={"protocol_toml", "plate_map_toml"})
        params["plate_id"] = setup.plate_id
    else:
        params = args.model_dump(mode="json")
    recorder = await RunRecorder.create(
        daemon.config, daemon.journal, daemon.link.notify, setup.protocol.name, params,
        clock=daemon.wall,
    )  # fmt: skip
    return ProtocolRun(
        daemon.config, daemon.journal, daemon.instruments, recorder, setup, daemon.clock,
        daemon.link.notify,
    )  # fmt: skip


async def resumed_protocol_run(daemon: RunServices, run: str) -> ProtocolRun:
    """CommandError unless ``run`` is an interrupted protocol run."""
    record = await daemon.journal.get_run(run)
    if record is None:
        raise CommandError("not_found", f"no run '{run}'")
    if run in daemon.active:
        raise CommandError("conflict", f"run '{run}' is running ({record.state})")
    if record.state != "interrupted":
        raise CommandError(
            "conflict", f"run '{run}' is {record.state}: only an interrupted run can be resumed"
        )
    documents = await run_documents(daemon.journal, run)
    if any(d.kind == "stop" for d in documents):
        raise CommandError("conflict", f"run '{run}' has ended (it has a stop document)")
    try:
        point = read_run(documents)
        setup = setup_from_resume(daemon.config, point)
    except (ValueError, ConfigError, KeyError, TypeError, AttributeError) as exc:
        raise CommandError("conflict", f"run '{run}' cannot be resumed: {exc}") from None
    sim = daemon.config.simulation
    scale = sim.time_scale if sim.enabled else 1.0
    recorder = await RunRecorder.resume(
        daemon.config, daemon.journal, daemon.link.notify, record, clock=daemon.wall
    )
    log.info("resuming run", run=run, step=point.next_index)
    return ProtocolRun(
        daemon.config, daemon.journal, daemon.instruments, recorder, setup, daemon.clock,
        daemon.link.notify, start_index=point.next_index, progress=point.progress,
        resume=(point, scale), fresh=False,
    )  # fmt: skip


async def interrupt_open_run(journal: Journal, recorder: RunRecorder, record: RunRecord) -> None:
    """After a crash: an interruption document saying where the run stood, and the state
    ``interrupted`` (no stop document: the run can be resumed or aborted)."""
    detail: dict[str, Any] = {"previous": record.state, "last_seq": record.last_seq}
    documents = await run_documents(journal, record.run)
    try:
        point = read_run(documents)
    except ValueError:
        await recorder.interruption("daemon restarted", detail)
        if any(d.kind == "start" for d in documents):
            # Started without a protocol definition: a count-plate run of a version before
            # count-plate ran on the engine. It cannot be resumed; it ends as it did then.
            await recorder.stop("interrupted", "the daemon stopped while the run was open",
                                "interrupted")  # fmt: skip
            return
        # It never started (no start document): nothing to resume, the run ends here.
        await recorder.stop("interrupted", "the daemon stopped before the run started", "aborted")
        return
    except (KeyError, TypeError, AttributeError) as exc:
        # Documents this version cannot read back: the run waits, interrupted, for a person
        # (a resume says why it cannot go on; abort ends it). Never the daemon's start.
        detail["unreadable"] = f"{type(exc).__name__}: {exc}"
        await recorder.interruption("daemon restarted; the run's documents cannot be read back",
                                    detail)  # fmt: skip
        await recorder.set_state("interrupted", message=resume_hint(record.run, None, None))
        return
    steps = point.protocol_definition.get("steps", [])
    index = point.next_index
    detail["last_completed_step"] = max(point.completed, default=None)
    detail["step_index"] = index
    recorder.steps_total = len(steps)
    if index <= len(steps):
        recorder.step_index = index
        recorder.step = str(steps[index - 1].get("type"))
        detail["step"] = recorder.step
        prog = point.progress.get(index)
        entry = step_types().get(recorder.step)
        if prog is not None and entry is not None and entry.interrupted is not None:
            told, shown = entry.interrupted(prog)
            detail.update(told)
            recorder.progress = shown
    if recorder.prompt is not None:  # open when the daemon died: asked again on resume
        await recorder.prompt_event(recorder.prompt, "withdrawn")
    await recorder.interruption("daemon restarted", detail)
    await recorder.set_state(
        "interrupted", message=resume_hint(record.run, recorder.step_index, recorder.step)
    )
