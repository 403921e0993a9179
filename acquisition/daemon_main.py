"""``assayd --config PATH``: the daemon in the foreground (systemd-friendly).

SIGTERM and SIGINT stop it gracefully. Exit codes: 0 after a stop; 2 (which the systemd
unit does not restart) after one line on stderr for a bad config, a journal that cannot be
used (found before anything connects, :func:`~acquisition.config_checks.check_journal_path`,
or only when SQLite opens or writes it), or another assayd that holds the journal, is
online as the node, or took the node over while this one ran
(:class:`~acquisition.errors.InstanceError`): restarting would fix none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="assayd", description="Assay acquisition daemon (foreground; SIGTERM stops it)."
    )
    parser.add_argument(
        "--config", help="lab config TOML (default: $ASSAY_CONFIG or config/lab.toml)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "console"])
    parser.add_argument(
        "--takeover",
        action="store_true",
        help="start even though the node's retained status says another assayd is online"
        " (a stale status: that daemon died without the broker noticing yet, e.g. a power"
        " cut on its PC); if it is alive after all, it stops",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from acquisition.config import config_path, load_config
    from acquisition.config_checks import check_journal_path
    from acquisition.errors import ConfigError, JournalError

    source = str(config_path(args.config))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    problem = check_journal_path(config.journal.path)
    if problem is not None:
        return _fail(str(ConfigError(source, *problem)))
    from acquisition.logs import configure_logging

    configure_logging(
        args.log_level or config.logging.level, args.log_format or config.logging.format
    )
    try:
        return asyncio.run(_serve(config, takeover=args.takeover))
    except (JournalError, ExceptionGroup) as exc:
        # Opening it (a file that is no SQLite database, a newer schema) or writing it
        # (disk full, file system gone read-only): the operator has to act.
        journal_error = _journal_error(exc)
        if journal_error is None:
            raise
        return _fail(f"{source}: journal.path: a usable SQLite journal ({journal_error})")


def _journal_error(exc: BaseException) -> BaseException | None:
    """``exc`` itself, or the first JournalError in it if it is a (nested) group."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    from acquisition.errors import JournalError

    found: BaseException | None = exc.split(JournalError)[0]
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def _fail(message: str) -> int:
    print(f"assayd: {message}", file=sys.stderr, flush=True)
    return 2


async def _serve(config: object, *, takeover: bool) -> int:
    from acquisition.config import LabConfig
    from acquisition.daemon import Daemon
    from acquisition.errors import InstanceError

    assert isinstance(config, LabConfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Daemon(config, takeover=takeover).run(stop)
    except InstanceError as exc:
        print(f"assayd: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
