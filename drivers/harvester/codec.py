"""Codec of the cell harvester's RS-232 protocol (our own; ``docs/protocols/harvester.md``).

Pure bytes <-> frozen dataclasses, no I/O. Every frame is one CR-terminated line of
printable ASCII, ``<body>*<CK>``, ``CK`` the XOR of the body's bytes in two hex digits.

Lines are cut from the byte stream by the link on both sides
(:func:`drivers.serial_link.split_line`, at most :data:`MAX_LINE` bytes before the CR); this
codec starts from one line. Host side: :func:`encode_command`, :func:`read_reply` (=
:func:`open_frame` + :func:`parse_reply`) and the ``parse_*`` data parsers. Instrument side
(the simulator): :func:`open_frame`, :func:`parse_command` and the ``format_*`` formatters.
Decoding raises only :class:`~drivers.errors.ProtocolError` (its subclasses
:class:`ChecksumError`, :class:`CommandError`); building a command with an out-of-range
argument raises :class:`ValueError` (a caller bug, not a wire fault).
"""

from __future__ import annotations

from drivers.harvester._commands import (
    DRY_S,
    PREWET_S,
    STEP_COMMANDS,
    WASH_CYCLES,
    WASH_VOLUME_ML,
    Abort,
    Aspirate,
    Command,
    CommandError,
    Dry,
    Identify,
    Prewet,
    QueryAnomalies,
    QueryMat,
    QueryStatus,
    Release,
    Wash,
    command_text,
    encode_command,
    parse_command,
)
from drivers.harvester._frames import (
    EOL,
    MAX_LINE,
    ChecksumError,
    Frame,
    checksum,
    open_frame,
    seal,
)
from drivers.harvester._replies import (
    ERROR_TEXT,
    FAULT_NAMES,
    STATES,
    STEPS,
    WELLS,
    ErrorCode,
    ErrorReply,
    Identity,
    MatReport,
    OkReply,
    Reply,
    State,
    Status,
    Step,
    error_reply,
    format_anomalies,
    format_identity,
    format_mat,
    format_reply,
    format_status,
    parse_anomalies,
    parse_identity,
    parse_mat,
    parse_reply,
    parse_status,
    read_reply,
)

__all__ = [
    "DRY_S",
    "EOL",
    "ERROR_TEXT",
    "FAULT_NAMES",
    "MAX_LINE",
    "PREWET_S",
    "STATES",
    "STEPS",
    "STEP_COMMANDS",
    "WASH_CYCLES",
    "WASH_VOLUME_ML",
    "WELLS",
    "Abort",
    "Aspirate",
    "ChecksumError",
    "Command",
    "CommandError",
    "Dry",
    "ErrorCode",
    "ErrorReply",
    "Frame",
    "Identify",
    "Identity",
    "MatReport",
    "OkReply",
    "Prewet",
    "QueryAnomalies",
    "QueryMat",
    "QueryStatus",
    "Release",
    "Reply",
    "State",
    "Status",
    "Step",
    "Wash",
    "checksum",
    "command_text",
    "encode_command",
    "error_reply",
    "format_anomalies",
    "format_identity",
    "format_mat",
    "format_reply",
    "format_status",
    "open_frame",
    "parse_anomalies",
    "parse_command",
    "parse_identity",
    "parse_mat",
    "parse_reply",
    "parse_status",
    "read_reply",
    "seal",
]
