"""``assay``: the bench-side terminal.

Kept import-light so ``assay --help`` answers at once: rich, aiomqtt and pydantic are only
imported once a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="assay",
        description="Bench terminal for the assay acquisition daemon (talks to it over MQTT).",
    )
    p.add_argument("--config", help="lab config TOML (default: $ASSAY_CONFIG or config/lab.toml)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="is the daemon up, and what is it doing")
    insts = sub.add_parser("instruments", help="instrument states with live readings")
    insts.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for every instrument to be connected (exit 1 if not)",
    )
    runs = sub.add_parser("runs", help="recent runs")
    runs.add_argument("--limit", type=int, default=20)

    from acquisition.cli.runs import add_run_parser

    add_run_parser(sub)

    sim = sub.add_parser(
        "sim",
        help="the virtual operator's hands on a simulated bench (via the daemon)",
        description="Send one operation to the simulated bench's control channel through the "
        "daemon, e.g. `assay sim place_plate plate_id=P1 location=incubator:incubator`, "
        "`assay sim open_incubator_door`, `assay sim world`. Values are JSON where they parse "
        "(numbers, true, lists), else text. Operations: docs/protocols/simulation.md.",
    )
    sim.add_argument("op", help="operation, e.g. world, add_plate, place_plate, place_mat, fault")
    sim.add_argument("args", nargs="*", metavar="KEY=VALUE")

    from acquisition.cli.analyze import add_parser as add_analyze

    add_analyze(sub)

    protocol = sub.add_parser("protocol", help="check a protocol file (no instrument touched)")
    protocol_sub = protocol.add_subparsers(dest="protocol_command", required=True, metavar="ACTION")
    check = protocol_sub.add_parser("check", help="validate FILE and print its plan and duration")
    check.add_argument("file", type=Path)

    plate_map = sub.add_parser("plate-map", help="generate the usual plate layouts")
    plate_sub = plate_map.add_subparsers(dest="plate_map_command", required=True, metavar="LAYOUT")
    comp = plate_sub.add_parser("competition", help="total, NSB and a competitor dilution series")
    comp.add_argument("--competitor", required=True)
    comp.add_argument("--top", type=float, default=1e-5, help="top concentration, M")
    comp.add_argument("--dilution", type=float, default=10**0.5, help="dilution factor")
    comp.add_argument("--points", type=int, default=10)
    comp.add_argument("--replicates", type=int, default=3)
    comp.add_argument("--total-wells", type=int, default=8)
    comp.add_argument("--nsb-wells", type=int, default=8)
    comp.add_argument("--output", "-o", type=Path, help="write here instead of printing")

    results = sub.add_parser("results", help="a run's results (per well; a patch-clamp run's "
                             "effect; several patch-clamp runs: paired across cells)")
    results.add_argument("run", nargs="+", help="a run; several patch-clamp runs, one cell each, "
                         "are pooled (paired statistics)")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.add_argument("--output", "-o", help="write to this file instead of the terminal")
    results.add_argument("--plot", metavar="FILE", help="draw the run's fitted curve (binding) "
                         "or its time course and example traces (patch clamp): .png, .svg, .pdf")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "analyze":  # offline: no config, no broker
        from acquisition.cli.analyze import run_analyze

        return run_analyze(args)
    if args.command == "protocol":
        from acquisition.protocols import check_protocol_command

        _load_plugins_quietly(args.config)  # step types of the lab's own, if it has any
        return check_protocol_command(args.file)
    if args.command == "plate-map":
        from acquisition.plate_maps import plate_map_competition_command

        return plate_map_competition_command(
            top_m=args.top,
            dilution=args.dilution,
            points=args.points,
            replicates=args.replicates,
            competitor=args.competitor,
            total_wells=args.total_wells,
            nsb_wells=args.nsb_wells,
            output=args.output,
        )
    if args.command == "run" and args.run_command == "start":
        from acquisition.cli.runs import prepare_start

        bad = prepare_start(args)  # a protocol or plate map file is checked before any broker
        if bad is not None:
            return bad
    from acquisition.config import load_config
    from acquisition.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"assay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import asyncio

    try:
        return asyncio.run(_run(config, args))
    except KeyboardInterrupt:
        return 130


async def _run(config: Any, args: argparse.Namespace) -> int:
    import asyncio

    from rich.console import Console

    from acquisition.cli import render
    from acquisition.cli.client import DaemonClient, NoReplyError
    from acquisition.cli.runs import run_action
    from acquisition.errors import BrokerError, CommandError

    console = Console()
    err = Console(stderr=True)
    try:
        async with DaemonClient(config, timeout_s=args.timeout) as client:
            match args.command:
                case "status":
                    retained = await client.retained(config.topic("status"))
                    if retained and retained.get("state") == "offline":
                        err.print(
                            f"assay: daemon '{config.node}' is offline since {retained['ts']}"
                            f" ({retained.get('reason') or 'unknown reason'})"
                        )
                        return EXIT_UNREACHABLE
                    render.print_status(console, await client.request("status"), retained)
                case "instruments":
                    instruments = await _instruments(client, args.wait)
                    render.print_instruments(console, instruments)
                    if args.wait and not all(i["connected"] for i in instruments):
                        err.print(f"assay: not every instrument connected within {args.wait:g} s")
                        return EXIT_FAIL
                case "runs":
                    render.print_runs(console, await client.request("runs", {"limit": args.limit}))
                case "results":
                    from acquisition.cli.render_patch import is_patch_run

                    if len(args.run) > 1 or is_patch_run(
                            res := await client.request("results", {"run": args.run[0]})):
                        return await _patch_results(client, console, err, args)
                    if args.plot:
                        if not res.get("analysis"):
                            err.print(f"assay: run {args.run[0]} has no analysis to plot")
                            return EXIT_FAIL
                        from acquisition.analysis.run_analysis import RunResult, run_result_plot

                        result = RunResult.model_validate(res["analysis"])
                        await asyncio.to_thread(run_result_plot, result, Path(args.plot))
                        err.print(f"plot: {args.plot}")
                    if args.format == "table" and not args.output:
                        render.print_results(console, res)
                    else:
                        text = render.results_text(res, "json" if args.format == "json" else "csv")
                        if args.output:
                            await asyncio.to_thread(_write_text, args.output, text)
                            err.print(f"wrote {len(res['wells'])} wells to {args.output}")
                        else:
                            sys.stdout.write(text)
                case "run":
                    return await run_action(client, console, args)
                case "sim":
                    reply = await client.request("sim", {"op": args.op, "args": _kv(args.args)})
                    console.print_json(data=reply)
    except NoReplyError as exc:
        err.print(f"assay: {exc.message}")
        return EXIT_UNREACHABLE
    except CommandError as exc:
        err.print(f"assay: {exc.code}: {exc.message}")
        return EXIT_FAIL
    except BrokerError as exc:
        err.print(f"assay: {exc}")
        return EXIT_UNREACHABLE
    return EXIT_OK


async def _patch_results(client: Any, console: Any, err: Any, args: argparse.Namespace) -> int:
    """One patch-clamp run's effect, or several runs' paired comparison."""
    import asyncio
    import io
    import json

    from rich.console import Console

    from acquisition.cli import render_patch as rp
    from acquisition.errors import AnalysisError

    twice = sorted({r for r in args.run if args.run.count(r) > 1})
    if twice:
        err.print(f"assay: run {twice[0]} given twice: each run is one cell")
        return EXIT_USAGE
    runs = [await client.request("results", {"run": run}) for run in args.run]
    for res in runs:
        if not rp.is_patch_run(res):
            err.print(f"assay: run {res['run']} has no sweeps: only patch-clamp runs are pooled")
            return EXIT_USAGE
    try:
        effects = [await asyncio.to_thread(rp.effect_of, res) for res in runs]
    except AnalysisError as exc:
        err.print(f"assay: {exc}")
        return EXIT_FAIL
    if len(runs) > 1:
        shapes = {(e.measure, e.baseline, e.last) for e in effects}
        if len(shapes) > 1:
            listed = "; ".join(f"{e.run}: {e.measure}, baseline {e.baseline!r}, last {e.last}"
                               for e in effects)  # fmt: skip
            err.print(f"assay: the runs were not analysed alike ({listed}): pool runs of one "
                      "measure, baseline and window")  # fmt: skip
            return EXIT_USAGE
        wanted = [c.condition for c in effects[0].conditions]
        for e in effects[1:]:
            missing = [c for c in wanted if c not in {x.condition for x in e.conditions}]
            if missing:
                err.print(f"assay: note: run {e.run} has no {', '.join(map(repr, missing))}: "
                          "left out of those comparisons")  # fmt: skip
    if len(runs) == 1:
        text = (json.dumps({**runs[0], "effect": effects[0].model_dump(mode="json",
                                                                        by_alias=True)})
                if args.format == "json" else rp.effect_csv(effects[0]))  # fmt: skip
        if args.format == "table" and not args.output:
            rp.print_effect(console, runs[0], effects[0])
    else:
        rows = rp.print_paired(console if args.format == "table" and not args.output
                               else Console(file=io.StringIO()), effects)  # fmt: skip
        text = (json.dumps({"runs": [e.run for e in effects],
                            "paired": [r.model_dump(mode="json") for r in rows]})
                if args.format == "json" else rp.paired_csv(rows))  # fmt: skip
    if args.plot:
        if len(runs) > 1:
            err.print("assay: --plot draws one run: give one run")
            return EXIT_USAGE
        try:
            await asyncio.to_thread(rp.plot_effect, Path(args.plot), runs[0], effects[0])
        except AnalysisError as exc:
            err.print(f"assay: {exc}")
            return EXIT_USAGE
        except OSError as exc:
            err.print(f"assay: {args.plot}: cannot write it ({exc.strerror or exc})")
            return EXIT_FAIL
        err.print(f"plot: {args.plot}")
    if args.output:
        try:
            await asyncio.to_thread(_write_text, args.output, text)
        except OSError as exc:
            err.print(f"assay: {args.output}: cannot write it ({exc.strerror or exc})")
            return EXIT_FAIL
        err.print(f"wrote {args.output}")
    elif args.format != "table":
        sys.stdout.write(text)
    return EXIT_OK


def _kv(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` words into a dict; values are JSON where they parse, else text."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"assay: sim arguments are KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


async def _instruments(client: Any, wait_s: float) -> list[dict[str, Any]]:
    import asyncio
    import time

    deadline = time.monotonic() + wait_s
    while True:
        instruments: list[dict[str, Any]] = await client.request("instruments")
        if all(i["connected"] for i in instruments) or time.monotonic() >= deadline:
            return instruments
        await asyncio.sleep(0.2)



def _load_plugins_quietly(path: str | None) -> None:
    """Import the lab config's ``plugins`` (they register step types) without needing the
    config otherwise: a protocol is checked even where the config is missing or bad (a
    step type only a plug-in knows is then reported as unknown)."""
    import contextlib

    from acquisition.config import load_config
    from acquisition.errors import ConfigError

    with contextlib.suppress(ConfigError):
        load_config(path)


if __name__ == "__main__":
    sys.exit(main())

