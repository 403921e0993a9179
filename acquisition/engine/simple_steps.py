"""Steps that drive no instrument: wait, and analyze (the fit of the count, stored as the
run's retained result)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog

from acquisition.engine.context import StepContext, StepProgress
from acquisition.errors import AnalysisError
from acquisition.journal import OutboxMessage
from acquisition.payloads import Progress
from acquisition.protocols import AnalyzeStep, WaitStep

__all__ = ["analysis_summary", "run_analyze", "run_wait"]

log = structlog.get_logger("acquisition.engine")
TICK_S = 5.0


async def run_wait(ctx: StepContext, step: WaitStep, progress: StepProgress) -> None:
    """Wait ``duration``; a pause stops the timer, which goes on from there."""
    clock = ctx.clock
    total = round(step.duration_s)
    last = clock.monotonic()
    while True:
        now = clock.monotonic()
        progress.elapsed_s += now - last
        last = now
        done = min(total, round(progress.elapsed_s))
        await ctx.progress(Progress(done=done, total=total, unit="s", eta_s=total - done))
        if progress.elapsed_s >= step.duration_s:
            break
        await clock.sleep(min(TICK_S, step.duration_s - progress.elapsed_s))
    progress.detail = {"elapsed_s": round(progress.elapsed_s, 1)}


async def run_analyze(ctx: StepContext, step: AnalyzeStep, progress: StepProgress) -> None:
    """Fit the counted wells against the plate map; store and publish the result (retained).

    :class:`AnalysisError` when there is nothing to fit (no plate map, no wells); a fit that
    runs but fails its QC is a result like any other (``passed`` false, ``qc`` says why).
    """
    from acquisition.analysis.run_analysis import analyze_count_run

    if ctx.plate_layout is None:
        raise AnalysisError("the analyze step needs the run's plate map (run start --plate-map)")
    if step.competitor not in ctx.plate_layout.competitors:
        raise AnalysisError(
            f"the plate map has no competitor {step.competitor!r} "
            f"(it has {', '.join(ctx.plate_layout.competitors) or 'none'})"
        )
    await ctx.recorder.flush()
    docs = [json.loads(p) for p in await ctx.journal.documents(ctx.recorder.run)]
    result = await asyncio.to_thread(
        analyze_count_run, docs, ctx.plate_layout, model=step.model,
        constants=step.constants, competitor=step.competitor, rate=step.rate,
        background_cpm=None,
    )  # fmt: skip
    payload = result.model_dump_json(by_alias=True).encode()
    topic = ctx.config.topic("runs", ctx.recorder.run, "result")
    await ctx.journal.put_result(
        ctx.recorder.run, payload, outbox=[OutboxMessage(topic, payload, retain=True)]
    )
    ctx.notify()
    progress.detail = analysis_summary(json.loads(payload))
    log.info("analysis stored", passed=result.passed, model=result.model)


def analysis_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a result: each parameter with its CI, and the verdict."""
    out: dict[str, Any] = {"model": result["model"], "passed": result["passed"]}
    for p in (result.get("parameters") or []) + (result.get("derived") or []):
        out[p["name"]] = {k: p.get(k) for k in ("estimate", "ci_low", "ci_high")}
    failed = [q["code"] for q in result.get("qc", []) if not q.get("passed", True)]
    if failed:
        out["qc_failed"] = failed
    return out
