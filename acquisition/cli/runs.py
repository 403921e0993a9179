"""``assay run ...``: start a run (count-plate or a protocol), follow it, steer it.

The parser half is import-light (``assay --help`` must answer at once); the rest imports what
it needs when a command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_run_parser", "prepare_start", "run_action"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

COUNT_PLATE = "count-plate"
# The defaults of the count-plate options (None in the parser: a protocol run refuses them).
COUNT_PLATE_DEFAULTS: dict[str, Any] = {
    "instrument": "counter",
    "count_time": 60.0,
    "isotope": "H3",
}
COUNT_PLATE_ONLY = ("instrument", "count_time", "precision", "isotope", "wells", "analysis")
PROTOCOL_ONLY = ("plate_map", "plate_id")

# As acquisition.commands checks them (kept here so a typo fails before any broker).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_PLATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
MAX_TOML_CHARS = 32_000


def add_run_parser(sub: Any) -> None:
    """``assay run ACTION ...`` on the top-level subparsers ``sub``."""
    run = sub.add_parser("run", help="start, watch, pause, answer or abort a run")
    run_sub = run.add_subparsers(dest="run_command", required=True, metavar="ACTION")

    start = run_sub.add_parser(
        "start",
        help="start a run: count-plate, or a protocol (a name or a .toml file)",
        description="PROTOCOL is count-plate (count one plate now), a protocol name the daemon "
        "knows (config/protocols/NAME.toml) or a protocol file, which is checked here and sent.",
    )
    start.add_argument("protocol", nargs="?", default=COUNT_PLATE, metavar="PROTOCOL",
                       help="count-plate (default), a protocol name or a .toml file")  # fmt: skip
    protocol = start.add_argument_group("protocol runs")
    protocol.add_argument("--plate-map", metavar="FILE_OR_NAME",
                          help="the plate's layout: a plate map name or a .toml file")  # fmt: skip
    protocol.add_argument("--plate-id", metavar="ID", help="the plate's barcode")
    count = start.add_argument_group("count-plate runs")
    count.add_argument("--instrument", help="default: counter")
    count.add_argument("--count-time", type=float, help="seconds per well (default: 60)")
    count.add_argument("--precision", type=float, help="stop a well early at this %%2-sigma")
    count.add_argument("--isotope", choices=["H3", "C14", "P32", "I125"], help="default: H3")
    count.add_argument("--wells", help="comma-separated wells (default: all 96)")
    count.add_argument(
        "--analysis", metavar="JSON",
        help='analyse the count when it completes, e.g. \'{"competitor": "progesterone", '
        '"constants": {"HotNM": 5, "HotKdNM": 5.13}, "layout": {"competitors": '
        '{"progesterone": "ABC"}}}\'',
    )  # fmt: skip
    start.add_argument("--label", help="free text stored with the run")
    start.add_argument("--watch", action="store_true", help="follow the run once started")

    watch = run_sub.add_parser(
        "watch", help="live progress of a run (asks its prompts when stdin is a terminal)"
    )
    watch.add_argument("run", metavar="RUN")
    pause = run_sub.add_parser("pause", help="pause a run (mid-step where the step allows it)")
    pause.add_argument("run", metavar="RUN")
    pause.add_argument("--after-step", action="store_true",
                       help="let the current step finish first")  # fmt: skip
    for name, text in (("resume", "resume a paused or interrupted run"), ("abort", "abort a run")):
        run_sub.add_parser(name, help=text).add_argument("run", metavar="RUN")
    answer = run_sub.add_parser("answer", help="answer the operator prompt a run waits on")
    answer.add_argument("run", metavar="RUN")
    answer.add_argument("answer", nargs="?", default="done", metavar="ANSWER",
                        help="default: done")  # fmt: skip
    answer.add_argument("--prompt", metavar="ID", help="the prompt answered (as the watch shows)")
    recover = run_sub.add_parser("recover", help="tell a run waiting on recovery what to do")
    recover.add_argument("run", metavar="RUN")
    recover.add_argument("action", choices=["retry", "skip", "abort"])


def _usage_error(message: str) -> int:
    print(f"assay: {message}", file=sys.stderr)
    return EXIT_USAGE


def prepare_start(args: argparse.Namespace) -> int | None:
    """Build ``args.start_args`` (run.start's arguments) before any broker is involved.

    A protocol or plate map given as a file is validated here; a bad one prints the
    loader's one line (``assay: <file>: <location>: <expected>``) and returns exit code 2.
    Returns None when the arguments are good.
    """
    if args.protocol == COUNT_PLATE:
        given = [f"--{o.replace('_', '-')}" for o in PROTOCOL_ONLY if getattr(args, o)]
        if given:
            return _usage_error(f"{', '.join(given)}: for protocol runs, not count-plate")
        args.start_args = _count_plate_args(args)
        return None
    given = [f"--{o.replace('_', '-')}" for o in COUNT_PLATE_ONLY if getattr(args, o) is not None]
    if given:
        return _usage_error(f"{', '.join(given)}: for count-plate runs, not a protocol")
    try:
        start: dict[str, Any] = {}
        start["protocol"], start["protocol_toml"] = _protocol(args.protocol)
        start["plate_map"], start["plate_map_toml"] = (
            _plate_map(args.plate_map) if args.plate_map else (None, None)
        )
    except _LocalError as exc:
        return _usage_error(str(exc))
    if args.plate_id is not None and not _PLATE_ID.match(args.plate_id):
        return _usage_error(
            f"--plate-id: letters, digits, '-' and '_', at most 40 (got {args.plate_id!r})"
        )
    start["plate_id"] = args.plate_id
    start["label"] = args.label
    args.start_args = start
    return None


def _count_plate_args(args: argparse.Namespace) -> dict[str, Any]:
    """Today's count-plate run.start arguments (RunStartArgs)."""
    for name, value in COUNT_PLATE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    start_args: dict[str, Any] = {
        "protocol": COUNT_PLATE,
        "instrument": args.instrument,
        "count_time_s": args.count_time,
        "isotope": args.isotope,
    }
    if args.precision is not None:
        start_args["precision_pct"] = args.precision
    if args.wells:
        start_args["wells"] = [w.strip().upper() for w in args.wells.split(",") if w.strip()]
    if args.label:
        start_args["label"] = args.label
    if args.analysis:
        import json

        try:
            start_args["analysis"] = json.loads(args.analysis)
        except ValueError as exc:
            raise SystemExit(f"assay: --analysis: JSON ({exc})") from None
    return start_args


class _LocalError(Exception):
    """A one-line problem with what was given on the command line."""


def _is_file_argument(value: str) -> bool:
    """A path (not a name): an existing file, or something only a path looks like."""
    return Path(value).is_file() or value.endswith(".toml") or "/" in value or "\\" in value


def _protocol(value: str) -> tuple[str, str | None]:
    """(protocol name, file text or None) for run.start, the file validated first."""
    from acquisition.protocols import load_protocol

    name, text, protocol = _named_or_file(value, "protocol", load_protocol)
    if text is not None and name is None:
        name = protocol.name  # a file whose stem is no valid name: the protocol's own name
    assert name is not None
    return name, text


def _plate_map(value: str) -> tuple[str | None, str | None]:
    """(plate map name, file text) for run.start, the file validated first."""
    from acquisition.plate_maps import load_plate_map

    name, text, _ = _named_or_file(value, "plate map", lambda v: load_plate_map(Path(v)))
    return name, text


def _named_or_file(
    value: str, what: str, load: Callable[[str], Any]
) -> tuple[str | None, str | None, Any]:
    """A name is checked and sent as it is: (name, None, None). A file is validated with
    ``load`` here, so a mistake is one line before any broker: (its stem if that is a valid
    name else None, its text, what ``load`` returned)."""
    if not _is_file_argument(value):
        if not _NAME.match(value):
            raise _LocalError(f"{value}: ({what}): a {what} name or a .toml file")
        return value, None, None
    from acquisition.errors import ConfigError

    try:
        loaded = load(value)
    except ConfigError as exc:
        raise _LocalError(str(exc)) from None
    except Exception as exc:  # never a traceback at the bench
        raise _LocalError(f"{value}: (internal): {type(exc).__name__}: {exc}") from None
    stem = Path(value).stem
    return (stem if _NAME.match(stem) else None), _read(value), loaded


def _read(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _LocalError(f"{path}: (file): a readable UTF-8 text file ({exc})") from None
    if len(text) > MAX_TOML_CHARS:
        raise _LocalError(
            f"{path}: (file): at most {MAX_TOML_CHARS} characters (the daemon's limit)"
        )
    return text


async def run_action(client: Any, console: Any, args: argparse.Namespace) -> int:
    """One ``assay run ACTION``; the shell exit code."""
    from acquisition.cli.render import steer_line
    from acquisition.cli.watch import watch_run

    action = args.run_command
    if action == "start":
        started = await client.request("run.start", args.start_args)
        console.print(f"started run [bold]{started['run']}[/bold]")
        if args.watch:
            return int(await watch_run(client, console, started["run"], stdin_fd=_stdin_fd()))
        return EXIT_OK
    if action == "watch":
        return int(await watch_run(client, console, args.run, stdin_fd=_stdin_fd()))
    verb, request = _steer_request(args)
    reply = await client.request(verb, request)
    console.print(steer_line(reply), markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


def _steer_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    action, run = args.run_command, args.run
    if action == "pause":
        return "run.pause", {"run": run, "when": "after-step" if args.after_step else "now"}
    if action == "answer":
        return "run.answer", {"run": run, "prompt": args.prompt, "answer": args.answer}
    if action == "recover":
        return "run.recover", {"run": run, "action": args.action}
    return f"run.{action}", {"run": run}  # resume, abort


def _stdin_fd() -> int | None:
    """The terminal to ask prompts on, or None (a pipe, a file, a test): then only hints."""
    try:
        return sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    except (OSError, ValueError):
        return None
