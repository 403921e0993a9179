"""How the terminal shows things: rich tables for people, CSV and JSON for programs."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "WELL_COLUMNS",
    "hms",
    "print_instruments",
    "print_runs",
    "print_status",
    "prompt_lines",
    "results_text",
    "run_state_fields",
    "state_style",
    "sweep_text",
]

WELL_COLUMNS = (
    "index",
    "well",
    "detector",
    "counts",
    "count_time_s",
    "cpm",
    "ccpm",
    "sigma2_pct",
    "sqp",
    "flags",
)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or ""
    return str(value)


def print_status(console: Console, status: dict[str, Any], retained: dict[str, Any] | None) -> None:
    table = Table(title=f"daemon {status['node']}", show_header=False, box=None)
    table.add_row("state", "[green]online[/green]")
    table.add_row("version", status["version"])
    table.add_row("pid", str(status["pid"]))
    table.add_row("up since", f"{status['started_at']} ({status['uptime_s']:.0f} s)")
    table.add_row("simulated", "yes" if status["simulated"] else "no")
    table.add_row("broker", "connected" if status["broker"]["connected"] else "disconnected")
    table.add_row("journal", f"{status['journal']['path']} (outbox {status['journal']['outbox']})")
    insts = ", ".join(f"{i['id']}={i['state']}" for i in status["instruments"]) or "none"
    table.add_row("instruments", insts)
    table.add_row("active runs", ", ".join(status["active_runs"]) or "none")
    console.print(table)


def print_instruments(console: Console, instruments: list[dict[str, Any]]) -> None:
    table = Table(title="instruments")
    for col in ("id", "kind", "state", "connected", "model", "address"):
        table.add_column(col)
    for inst in instruments:
        ident = inst.get("identity") or {}
        style = {"idle": "green", "busy": "cyan", "fault": "red"}.get(inst["state"], "yellow")
        state = f"[{style}]{inst['state']}[/{style}]"
        if inst.get("run"):
            state += f" (run {inst['run']})"
        table.add_row(
            inst["id"],
            inst["kind"],
            state,
            "yes" if inst["connected"] else "no",
            str(ident.get("model", "-")),
            inst["address"],
        )
    console.print(table)
    for inst in instruments:
        readings = inst.get("readings") or {}
        if inst.get("fault"):
            console.print(f"  [red]{inst['id']} fault: {inst['fault']}[/red]")
        shown = {k: v for k, v in readings.items() if _worth_showing(k, v)}
        if shown:
            text = "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
            console.print(f"  {inst['id']}: {text}", soft_wrap=True)


_QUIET_WHEN_FALSE = re.compile(r"alarm|break|over_range|latched|shorted|unplugged|fault")


def _worth_showing(key: str, value: Any) -> bool:
    """Hide empty readings and alarm flags that are off; everything else is news."""
    if value is None or value == "":
        return False
    return not (value is False and _QUIET_WHEN_FALSE.search(key))


_STATE_STYLES = {
    "queued": "cyan",
    "running": "cyan",
    "paused": "yellow",
    "awaiting-operator": "bold yellow",
    "awaiting-recovery": "bold red",
    "completed": "green",
    "aborted": "red",
    "failed": "red",
    "interrupted": "magenta",
}


def state_style(state: str) -> str:
    """A run state in its colour (any state not known here is shown plain)."""
    style = _STATE_STYLES.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def print_runs(console: Console, runs: list[dict[str, Any]]) -> None:
    table = Table(title="runs (newest first)")
    table.add_column("run", no_wrap=True)
    table.add_column("protocol")
    table.add_column("state")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("docs", justify="right")
    for run in runs:
        created = run["created_at"][:16].replace("T", " ")
        state = state_style(str(run["state"]))
        table.add_row(run["run"], run["protocol"], state, created, str(run["last_seq"]))
    console.print(table)


# --------------------------------------------------------------------------- a run, live


def hms(seconds: float | None) -> str:
    """``3725`` -> ``1:02:05``; ``None`` -> ``-:--:--``."""
    if seconds is None:
        return "-:--:--"
    h, rest = divmod(max(0, round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def run_state_fields(state: dict[str, Any]) -> dict[str, str]:
    """A run state as the watch shows it: ``description`` (run, step i/N name, state),
    ``amount`` (``12/96 wells`` or ``0:12:00/1:00:00``), ``eta`` and ``latest`` (the newest
    well, or the incubator temperature ``36.8 C -> 37.0 C, stabilising``)."""
    parts = [str(state.get("run", ""))]
    step, index, total = state.get("step"), state.get("step_index"), state.get("steps_total")
    if index is not None and total is not None:
        parts.append(f"step {index}/{total}")
    if step:
        parts.append(str(step))
    parts.append(str(state.get("state", "")))
    prog = state.get("progress") or {}
    amount = ""
    if prog:
        done, whole, unit = prog.get("done", 0), prog.get("total", 0), prog.get("unit", "wells")
        amount = f"{hms(done)}/{hms(whole)}" if unit == "s" else f"{done}/{whole} {unit}"
    eta = prog.get("eta_s") if prog else None
    return {
        "description": " ".join(p for p in parts if p),
        "amount": amount,
        "eta": f"ETA {hms(eta)}" if eta is not None else "",
        "latest": latest_text(state.get("latest")),
    }


def latest_text(latest: dict[str, Any] | None) -> str:
    if not latest:
        return ""
    if "temperature_c" in latest:
        text = f"{latest['temperature_c']:.1f} C"
        if latest.get("setpoint_c") is not None:
            text += f" -> {latest['setpoint_c']:.1f} C"
        if latest.get("phase"):
            text += f", {latest['phase']}"
        return text
    if "well" in latest:
        return f"latest {latest['well']} {latest.get('cpm') or 0:,.0f} CPM"
    if "sweep" in latest:
        return sweep_text(latest)
    if "say" in latest:  # a patch step waiting on the operator's hands
        seal = latest.get("seal_mohm")
        return str(latest["say"]) + (f" (seal {seal:,.1f} MOhm)" if seal is not None else "")
    return ""


def sweep_text(latest: dict[str, Any]) -> str:
    """The newest sweep's summary, as the run state carries it."""
    parts = [f"sweep {latest['sweep']}"]
    for key, label, unit in (("ra_mohm", "Ra", "MOhm"), ("holding_pa", "holding", "pA"),
                             ("inap_pa", "INaP", "pA")):  # fmt: skip
        if latest.get(key) is not None:
            parts.append(f"{label} {latest[key]:g} {unit}")
    text = ", ".join(parts)
    if latest.get("qc"):
        text += f" [QC: {'; '.join(map(str, latest['qc']))}]"
    return text


def prompt_lines(run: str, prompt: dict[str, Any], *, interactive: bool) -> list[str]:
    """What the watch prints (plain text) when a run asks a person something.

    Not interactive (stdin is no terminal): also the command that answers it from another one.
    """
    recovery = prompt.get("kind") == "recovery"
    head = "needs recovery" if recovery else "operator"
    lines = [f"{head} (prompt {prompt['id']}): {prompt['text']}"]
    options = [str(o) for o in prompt.get("options") or []]
    if options:
        lines.append(f"  options: {', '.join(options)}")
    if not interactive:
        if recovery:
            choices = "|".join(o for o in options if o in ("retry", "skip", "abort"))
            lines.append(f"  answer with `assay run recover {run} {choices or 'retry|skip|abort'}`")
        else:
            word = "" if set(options) <= {"done", "abort"} else " ANSWER"
            lines.append(
                f"  answer with `assay run answer {run}{word} --prompt {prompt['id']}`"
                f" (or `assay run abort {run}`)"
            )
    return lines


def results_text(results: dict[str, Any], fmt: str) -> str:
    """Results as CSV or JSON text (``table`` is printed by :func:`print_results`).

    With an analysis, the CSV is its per-well table (derived values included)."""
    if fmt == "json":
        return json.dumps(results, indent=2)
    if results.get("analysis"):
        from acquisition.analysis.run_analysis import RunResult, run_result_csv

        return run_result_csv(RunResult.model_validate(results["analysis"]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "plate_id", *WELL_COLUMNS])
    plate_id = _plate_id(results)
    for well in results["wells"]:
        row = [well.get(c) for c in WELL_COLUMNS]
        row[WELL_COLUMNS.index("flags")] = ";".join(well.get("flags") or [])
        writer.writerow([results["run"], plate_id, *row])
    return buf.getvalue()


def print_analysis(console: Console, analysis: dict[str, Any]) -> None:
    """The fit (parameters with 95% CIs) and the QC verdicts of an analysed run."""
    title = f"{analysis['model']}: {analysis.get('competitor')}  (n={analysis.get('n')})"
    table = Table(title=title)
    for col in ("parameter", "estimate", "95% CI (profile)", "95% CI (asymptotic)"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    for p in [*(analysis.get("parameters") or []), *(analysis.get("derived") or [])]:
        table.add_row(
            p["name"],
            _g(p.get("estimate")),
            _ci(p.get("profile_low"), p.get("profile_high")),
            _ci(p.get("ci_low"), p.get("ci_high")),
        )
    console.print(table)
    for v in analysis.get("qc") or []:
        mark = "[green]pass[/green]" if v["passed"] else "[red]FAIL[/red]"
        console.print(f"  {mark}  {v['code']}: {v['message']}")


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _ci(low: Any, high: Any) -> str:
    return "-" if low is None and high is None else f"{_g(low)} to {_g(high)}"


def _plate_id(results: dict[str, Any]) -> str | None:
    """The run's plate: its start document's, else (count-plate: the plate in the counter)
    the one its readings name."""
    held = (results.get("plate") or {}).get("plate_id")
    if held is None:
        held = next((w["plate_id"] for w in results["wells"] if w.get("plate_id")), None)
    return None if held is None else str(held)


def print_results(console: Console, results: dict[str, Any]) -> None:
    title = f"run {results['run']}  plate {_plate_id(results) or '-'}  ({results['state']})"
    table = Table(title=title)
    for col, justify in (
        ("well", "left"),
        ("det", "right"),
        ("counts", "right"),
        ("time s", "right"),
        ("CPM", "right"),
        ("CCPM", "right"),
        ("%2σ", "right"),  # noqa: RUF001 (sigma, as counters print it)
        ("flags", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for w in results["wells"]:
        table.add_row(
            w["well"],
            str(w["detector"]),
            f"{w['counts']:,}",
            _fmt(w["count_time_s"]),
            _fmt(w["cpm"]),
            _fmt(w["ccpm"]),
            _fmt(w.get("sigma2_pct"), 2),
            _fmt(w.get("flags")),
        )
    console.print(table)
    if results.get("analysis"):
        print_analysis(console, results["analysis"])
    stop = results.get("stop")
    if stop:
        console.print(
            f"{len(results['wells'])} wells; stop: {stop['exit_status']} ({stop['reason']})"
        )
    else:
        console.print(f"{len(results['wells'])} wells so far; the run has not stopped")


def steer_line(reply: dict[str, Any]) -> str:
    """``run RUN: <state> <message>``: the one line a steering command prints."""
    line = f"run {reply['run']}: {reply['state']}"
    return f"{line} {reply['message']}" if reply.get("message") else line
