"""Structured logging for the daemon: JSON lines on stderr, one format for everything.

Only the daemon (and the CLIs' entry points) call :func:`configure_logging`; library code
just asks ``structlog.get_logger()``. Stdlib records from paho, aiomqtt, pyvisa and pymodbus
go through the same processor chain, so every line is the same JSON. The run id and the
instrument id are bound with :func:`structlog.contextvars.bound_contextvars`.
Values of keys that look like secrets are masked, wherever they appear.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "redact_secrets"]

_SECRET_KEYS = ("password", "passwd", "secret", "token", "authorization")


def redact_secrets(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask any value whose key names a secret (structlog processor)."""
    for key in list(event_dict):
        if any(s in key.lower() for s in _SECRET_KEYS) and event_dict[key] is not None:
            event_dict[key] = "**********"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to one handler with one renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers that print raw frames or payloads on errors stay quiet.
    for noisy in ("pymodbus", "pyvisa", "paho", "aiomqtt", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
