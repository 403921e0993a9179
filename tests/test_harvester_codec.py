"""The harvester codec: byte examples from docs/protocols/harvester.md, round trips for
every command and reply, and fuzzing of what production runs on each line the link cuts
(:func:`read_reply` and the data parsers on the host, :func:`open_frame` and
:func:`parse_command` in the simulator): they may only return or raise ProtocolError."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import ProtocolError
from drivers.harvester.codec import (
    MAX_LINE,
    WELLS,
    Abort,
    Aspirate,
    ChecksumError,
    Command,
    CommandError,
    Dry,
    ErrorCode,
    ErrorReply,
    Frame,
    Identify,
    Identity,
    MatReport,
    OkReply,
    Prewet,
    QueryAnomalies,
    QueryMat,
    QueryStatus,
    Release,
    Status,
    Wash,
    checksum,
    encode_command,
    error_reply,
    format_anomalies,
    format_identity,
    format_mat,
    format_reply,
    format_status,
    open_frame,
    parse_anomalies,
    parse_command,
    parse_identity,
    parse_mat,
    parse_reply,
    parse_status,
    read_reply,
    seal,
)
from drivers.harvester.driver import _is_reply
from drivers.serial_link import split_line

ALL_COMMANDS: list[Command] = [
    Identify(), QueryStatus(), QueryAnomalies(), QueryMat(), Prewet(10), Prewet(300), Aspirate(),
    Wash(3, 1.0), Wash(10, 0.1), Dry(30), Release(), Abort(),
]
STATUS = Status("BUSY", "WS", 2, 45, -0.64, 87.5, 18.2, True, True, 0)


def test_byte_examples_from_the_protocol_document() -> None:
    assert encode_command(Identify()) == b"ID?*32"
    assert encode_command(Wash(3, 1.0)) == b"WS 3,1.0*14"
    assert encode_command(Prewet(10)) == b"PW 10*26"
    assert checksum(b"ST?") == 0x38
    assert format_reply(OkReply()) == b"OK*04"
    assert format_reply(OkReply(format_status(STATUS))) == (
        b"OK BUSY,WS,2,45,-0.64,87.5,18.2,1,1,00*12")
    assert format_reply(error_reply(ErrorCode.WASTE_FULL)) == b"ER 13 Waste full*72"
    assert encode_command(QueryMat()) == b"MT?*26"
    assert format_reply(OkReply(format_mat(MatReport(True, True, True, 0, False, 4, True)))) == (
        b"OK 1,1,1,0,0,4,1*10")


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=repr)
def test_every_command_round_trips(command: Command) -> None:
    wire = encode_command(command)
    line, used = split_line(wire + b"\r", eol=b"\r", max_line=MAX_LINE)  # the pty's framing
    assert line is not None and used == len(wire) + 1
    assert parse_command(open_frame(line).body) == command


@pytest.mark.parametrize("reply", [
    OkReply(), OkReply("1,A3"), ErrorReply(20, "Busy: step AS running"),
    error_reply(ErrorCode.LOW_VACUUM), error_reply(ErrorCode.BAD_ARGUMENT, "x" * 200),
], ids=repr)
def test_every_reply_round_trips(reply: OkReply | ErrorReply) -> None:
    assert read_reply(format_reply(reply)) == reply


def test_data_round_trips() -> None:
    ident = Identity("BrandelSim", "HARV96-SIM", "H96-0001", "1.4")
    assert parse_identity(format_identity(ident)) == ident
    assert parse_status(format_status(STATUS)) == STATUS
    assert parse_anomalies(format_anomalies(["H12", "A3", "A3"])) == ("A3", "H12")
    assert parse_anomalies(format_anomalies([])) == ()


def test_checksum_and_framing_errors() -> None:
    with pytest.raises(ChecksumError):
        open_frame(b"ID?*33")
    for bad in (b"ID?", b"ID?*3", b"ID?*3G", b"I*D?*32", b"\xffID?*32", b"ID?*32 "):
        with pytest.raises(ProtocolError):
            open_frame(bad)
    assert open_frame(b"ID?*32") == Frame("ID?")
    assert open_frame(b"RL*1e") == Frame("RL")  # lower-case hex is accepted
    with pytest.raises(ProtocolError):
        open_frame(b"OK*04" * 200)  # longer than MAX_LINE
    for mat in ("", "01", "2"):  # the mat and plate fields are exactly 0 or 1
        with pytest.raises(ProtocolError):
            parse_status(f"IDLE,NONE,0,0,0.00,100.0,0.0,{mat},1,00")


@pytest.mark.parametrize(("body", "code"), [
    ("XX", 31), ("ID? 1", 32), ("PW", 32), ("PW 0", 32), ("PW 301", 32), ("PW 1.5", 32),
    ("WS 3", 32), ("WS 11,1.0", 32), ("WS 3,0.05", 32), ("WS 3,1.25", 32), ("DR -1", 32),
    ("AS now", 32),
])
def test_bad_commands_carry_their_error_code(body: str, code: int) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(body)
    assert info.value.code == code


def test_building_an_out_of_range_command_is_a_caller_bug() -> None:
    for build in (lambda: Prewet(0), lambda: Wash(0, 1.0), lambda: Wash(3, 1.25),
                  lambda: Dry(601), lambda: seal("A*B"), lambda: seal("é")):
        with pytest.raises(ValueError):
            build()


# --------------------------------------------------------------------------- fuzzing

PARSERS: list[Callable[[str], object]] = [
    parse_reply, parse_command, parse_status, parse_identity, parse_anomalies, parse_mat,
]
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


def _host_decode(line: bytes, parser: Callable[[str], Any]) -> object:
    """What the driver does with one reply line: accept check, frame, reply, data parser."""
    accepted = _is_reply(line)
    try:
        reply = read_reply(line)
    except ProtocolError:
        assert not accepted
        raise
    assert accepted
    assert read_reply(format_reply(reply)) == reply  # what parses re-encodes to the same
    return reply if isinstance(reply, ErrorReply) else parser(reply.data)


reply_parsers: list[Callable[[str], Any]] = [parse_status, parse_identity, parse_anomalies,
                                             parse_mat, str]
sealed_garbage = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E).filter(
    lambda c: c != "*"), max_size=80).map(lambda body: seal(body[: MAX_LINE - 3]))
reply_frames = st.one_of(
    st.builds(lambda data: seal(f"OK {data}"[: MAX_LINE - 3].replace("*", "#")), printable),
    st.builds(lambda code, text: seal(f"ER {code:02d} {text}".replace("*", "#")),
              st.integers(0, 99), printable),
)
lines = st.one_of(st.binary(max_size=MAX_LINE + 20), sealed_garbage, reply_frames,
                  st.sampled_from([format_reply(OkReply(format_status(STATUS))),
                                   format_reply(OkReply("1,1,1,2,0,17"))]))


@settings(max_examples=400)
@given(lines)
def test_the_host_decode_path_only_raises_protocol_errors(line: bytes) -> None:
    for parser in reply_parsers:
        with contextlib.suppress(ProtocolError):
            _host_decode(line, parser)


@settings(max_examples=400)
@given(st.one_of(lines, st.sampled_from(ALL_COMMANDS).map(encode_command)))
def test_the_simulator_decode_path_only_raises_protocol_errors(line: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        command = parse_command(open_frame(line).body)
        assert parse_command(open_frame(encode_command(command)).body) == command


@given(st.one_of(printable, st.text(max_size=80)))
def test_parsers_raise_only_protocol_errors(text: str) -> None:
    for parser in PARSERS:
        with contextlib.suppress(ProtocolError):
            parser(text)
            assert parser is parse_reply or text.isascii()  # no Unicode digits slip through


@given(st.lists(st.sampled_from(WELLS), max_size=96))
def test_anomalies_round_trip(wells: list[str]) -> None:
    assert set(parse_anomalies(format_anomalies(wells))) == set(wells)


@given(st.builds(
    Status, st.sampled_from(["IDLE", "BUSY", "FAULT"]),
    st.sampled_from(["NONE", "PW", "AS", "WS", "DR", "RL"]), st.integers(0, 10),
    st.integers(0, 100), st.floats(-1.0, 0.0).map(lambda v: round(v, 2)),
    st.floats(0, 100).map(lambda v: round(v, 1)), st.floats(0, 100).map(lambda v: round(v, 1)),
    st.booleans(), st.booleans(), st.integers(0, 32),
))
def test_status_round_trips(status: Status) -> None:
    assert parse_status(open_frame(seal(format_status(status))).body) == status


@given(st.builds(MatReport, st.booleans(), st.booleans(), st.booleans(), st.integers(0, 99),
                 st.booleans(), st.integers(0, 99999), st.booleans()))
def test_mat_report_round_trips(report: MatReport) -> None:
    assert parse_mat(open_frame(seal(format_mat(report))).body) == report


def test_mat_report_bytes_and_meaning() -> None:
    """``MT?*26`` -> ``OK 1,1,1,3,1,4,1``: seated, prewet, aspirated, 3 washes, dried, 4
    made, an aspirate began."""
    assert encode_command(QueryMat()) == b"MT?*26"
    report = parse_mat("1,1,1,3,1,4,1")
    assert report == MatReport(True, True, True, 3, True, 4, True) and report.used
    assert not parse_mat("1,1,0,0,0,4,0").used  # prewet only: no plate on it yet
    cut_short = parse_mat("1,1,0,0,0,4,1")  # an aspirate stopped part-way
    assert cut_short.used and not cut_short.aspirated
    for bad in ("1,1,1,3,1,4", "1,2,1,3,1,4,1", "1,1,1,100,1,4,1", "1,1,1,3,1,123456,1",
                "1,1,1,a,1,4,1", "1,1,1,3,1,4,2"):
        with pytest.raises(ProtocolError):
            parse_mat(bad)
