"""The count-plate run: one step that streams every counted well as a run document.

start (config, plate, instrument snapshot) -> step started -> one data document per well
the moment it is counted -> step finished -> stop. A fault mid-count records what was
counted, an interruption document naming the fault, and a failed stop; nothing is invented
to fill the gap. Cancelling the run (abort, daemon shutdown) stops the counter first.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from acquisition.commands import RunStartArgs
from acquisition.config import LabConfig
from acquisition.instruments import InstrumentHandle
from acquisition.payloads import Progress, WellReading
from acquisition.run_recorder import RunRecorder, utcnow
from drivers.clock import Clock
from drivers.counter import CounterDriver, WellCount
from drivers.errors import InstrumentError, InstrumentFaultError, InstrumentReplyError
from labware import wells

__all__ = ["CountOutcome", "run_count_plate"]

log = structlog.get_logger("acquisition.count_run")
ALL_WELLS = wells(96)
STEP = "count"


@dataclass(frozen=True)
class CountOutcome:
    exit_status: str
    wells: int


class _Eta:
    """Seconds left, from the pace of the wells counted so far on the injected clock."""

    def __init__(self, clock: Clock, total: int) -> None:
        self._clock = clock
        self._t0 = clock.monotonic()
        self._total = total

    def estimate(self, done: int) -> float | None:
        if done == 0:
            return None
        elapsed = self._clock.monotonic() - self._t0
        return max(0.0, elapsed / done * (self._total - done))


def _reading(count: WellCount, plate_id: str | None) -> WellReading:
    return WellReading(
        index=count.index,
        well=count.well,
        plate_id=plate_id,
        detector=count.detector,
        counts=count.counts,
        count_time_s=count.count_time_s,
        cpm=count.cpm,
        ccpm=count.ccpm,
        sigma2_pct=count.sigma2_pct,
        sqp=count.sqp,
        flags=list(count.flags),
        counted_at=utcnow(),
    )


@dataclass
class _Tally:
    done: int = 0
    total: int = 0


async def run_count_plate(
    config: LabConfig,
    recorder: RunRecorder,
    handle: InstrumentHandle,
    args: RunStartArgs,
    clock: Clock,
    *,
    abort_requested: asyncio.Event,
) -> CountOutcome:
    """Count one plate on a leased counter; the caller owns the lease and the recorder.

    Whatever happens from the first write on, the run ends with exactly one stop document:
    success, a fault (after every well already counted), an operator abort, or an
    interruption when the daemon stops (the cancellation is then re-raised).
    """
    tally = _Tally(total=len(args.wells) if args.wells else len(ALL_WELLS))
    try:
        await _count(config, recorder, handle, args, clock=clock, tally=tally)
    except InstrumentFaultError as exc:
        return await _failed(recorder, "instrument fault", exc, tally)
    except InstrumentReplyError as exc:
        return await _failed(recorder, "instrument refused", exc, tally)
    except InstrumentError as exc:
        return await _failed(recorder, "instrument lost", exc, tally)
    except asyncio.CancelledError:
        # Either the operator aborted (abort_requested is set) or the daemon is stopping.
        await _stop_counter(handle)
        if recorder.stopped:  # cancelled while the stop document itself was being written
            raise
        if not abort_requested.is_set():
            await recorder.interruption(
                "daemon shutting down", {"wells_done": tally.done, "wells_total": tally.total}
            )
            reason = f"daemon stopped after {tally.done} of {tally.total} wells"
            await recorder.stop("interrupted", reason, "interrupted")
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        await recorder.stop("abort", f"aborted by operator after {_wells(tally.done)}", "aborted")
        return CountOutcome("abort", tally.done)
    return CountOutcome("success", tally.done)


async def _count(
    config: LabConfig,
    recorder: RunRecorder,
    handle: InstrumentHandle,
    args: RunStartArgs,
    *,
    clock: Clock,
    tally: _Tally,
) -> None:
    driver = handle.driver
    assert isinstance(driver, CounterDriver), "start_count_run leases counters only"
    wells = list(args.wells) if args.wells else list(ALL_WELLS)
    status = await driver.status()
    plate = {"plate_id": status.plate_id, "format": 96, "wells": wells}
    await recorder.start(
        protocol={
            "name": args.protocol,
            "label": args.label,
            "steps": [
                {
                    "name": STEP,
                    "instrument": handle.config.id,
                    "count_time_s": args.count_time_s,
                    "precision_pct": args.precision_pct,
                    "isotope": args.isotope,
                }
            ],
        },
        plate=plate,
        instruments={
            handle.config.id: {
                "kind": handle.config.kind,
                "address": handle.config.address,
                "identity": handle.identity,
            }
        },
        simulated=config.simulation.enabled,
    )
    await recorder.step_phase(STEP, "started", {"wells": len(wells)})
    eta = _Eta(clock, len(wells))
    async for count in driver.count_plate(
        count_time_s=args.count_time_s,
        precision_pct=args.precision_pct,
        isotope=args.isotope,
        wells=wells,
    ):
        tally.done += 1
        progress = Progress(done=tally.done, total=tally.total, eta_s=eta.estimate(tally.done))
        await recorder.data(_reading(count, status.plate_id), progress,
                            latest={"well": count.well, "cpm": count.cpm, "ccpm": count.ccpm})
    await recorder.step_phase(STEP, "finished", {"wells": tally.done})
    await recorder.stop("success", f"counted {_wells(tally.done)}", "completed")


def _wells(n: int) -> str:
    return f"{n} well" if n == 1 else f"{n} wells"


async def _failed(
    recorder: RunRecorder, what: str, exc: InstrumentError, tally: _Tally
) -> CountOutcome:
    done, total = tally.done, tally.total
    fault = getattr(exc, "fault", "") or type(exc).__name__
    log.warning("count failed", error=str(exc), wells_done=done)
    await recorder.interruption(
        f"{what}: {exc}", {"fault": fault, "wells_done": done, "wells_total": total}
    )
    await recorder.stop("fail", f"{what} after {done} of {total} wells: {exc}", "failed")
    return CountOutcome("fail", done)


async def _stop_counter(handle: InstrumentHandle) -> None:
    """Leave the counter safe: stop counting. Never raises."""
    driver = handle.driver
    if isinstance(driver, CounterDriver):
        with contextlib.suppress(InstrumentError, OSError):
            await asyncio.shield(driver.abort())
