"""``assayd --config PATH``: the daemon in the foreground (systemd-friendly).

SIGTERM and SIGINT stop it gracefully. A bad config prints one line and exits 2.
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from acquisition.config import load_config
    from acquisition.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"assayd: {exc}", file=sys.stderr)
        return 2
    from acquisition.logs import configure_logging

    configure_logging(
        args.log_level or config.logging.level, args.log_format or config.logging.format
    )
    return asyncio.run(_serve(config))


async def _serve(config: object) -> int:
    from acquisition.config import LabConfig
    from acquisition.daemon import Daemon

    assert isinstance(config, LabConfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Daemon(config).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
