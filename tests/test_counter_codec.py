"""The counter codec: round trips for every command and reply, and fuzzing of the decoder,
the line assembler and every parser (they may only return or raise ProtocolError)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.counter.codec import (
    MAX_LINE,
    Abort,
    Command,
    ErrorCode,
    ErrorReply,
    Fetch,
    Identify,
    IdentityReply,
    Line,
    LineAssembler,
    OkReply,
    QueryCountTime,
    QueryDetectors,
    QueryDoor,
    QueryError,
    QueryIsotope,
    QueryPlate,
    QueryPrecision,
    QueryStatus,
    Reset,
    SetCountTime,
    SetIsotope,
    SetPrecision,
    StartCount,
    StatusReply,
    WellCount,
    decode_line,
    encode_command,
    format_error,
    format_error_entry,
    format_identity,
    format_ok,
    format_records,
    format_status,
    parse_command,
    parse_door,
    parse_error,
    parse_error_entry,
    parse_float,
    parse_identity,
    parse_int,
    parse_ok,
    parse_plate_id,
    parse_records,
    parse_status,
    skip_to_next_line,
)
from drivers.errors import FrameTooLongError, ProtocolError
from labware import wells as plate_wells

ALL_COMMANDS: list[Command] = [
    Identify(), Reset(), QueryError(), QueryDetectors(), QueryDoor(), QueryPlate(),
    SetCountTime(60.0), SetCountTime(0.5), QueryCountTime(), SetPrecision(0.0),
    SetPrecision(2.5), QueryPrecision(), SetIsotope("C14"), QueryIsotope(), StartCount(),
    StartCount(("A1", "A2", "B1", "H12")), QueryStatus(), Fetch(0), Fetch(17), Abort(),
]


def _decode_all(data: bytes) -> Line:
    line, used = decode_line(data)
    assert line is not None and used == len(data)
    return line


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=repr)
def test_every_command_round_trips(command: Command) -> None:
    wire = encode_command(command)
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    assert parse_command(_decode_all(wire)) == command


def test_command_bytes_are_documented_spellings() -> None:
    assert encode_command(Identify()) == b"*IDN?\n"
    assert encode_command(SetCountTime(60)) == b"CONF:TIME 60.0\n"
    assert encode_command(StartCount(("A1", "B1"))) == b"COUN:STAR A1,B1\n"
    assert encode_command(Fetch(16)) == b"COUN:FETC? 16\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("count:start a1,b2", StartCount(("A1", "B2"))),
        ("COUNt:FETCh? 5", Fetch(5)),
        ("CONFigure:ISOTope i125", SetIsotope("I125")),
        ("SYSTem:ERRor?", QueryError()),
    ],
)
def test_long_and_lower_case_scpi_forms_parse(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("FOO:BAR", ErrorCode.UNDEFINED_HEADER),
        ("", ErrorCode.UNDEFINED_HEADER),
        ("CONF:TIME", ErrorCode.MISSING_PARAMETER),
        ("*IDN? 3", ErrorCode.PARAMETER_NOT_ALLOWED),
        ("CONF:TIME -1", ErrorCode.ILLEGAL_PARAMETER),
        ("CONF:TIME abc", ErrorCode.ILLEGAL_PARAMETER),
        ("CONF:ISOT U235", ErrorCode.ILLEGAL_PARAMETER),
        ("COUN:STAR A1,A1", ErrorCode.ILLEGAL_PARAMETER),
        ("COUN:STAR Z9", ErrorCode.ILLEGAL_PARAMETER),
        ("COUN:FETC? -1", ErrorCode.ILLEGAL_PARAMETER),
    ],
)
def test_bad_commands_give_error_replies(text: str, code: int) -> None:
    reply = parse_command(text)
    assert isinstance(reply, ErrorReply) and reply.code == code
    assert parse_error(format_error(reply.code, reply.message)) == reply


@pytest.mark.parametrize(
    "build",
    [lambda: SetCountTime(0), lambda: SetPrecision(-1), lambda: SetIsotope("X"),
     lambda: StartCount(()), lambda: StartCount(("A13",)), lambda: Fetch(-1)],
)
def test_invalid_commands_cannot_be_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_simple_replies_round_trip() -> None:
    ident = IdentityReply("PerkinSim", "MicroBeta2-SIM", "MB2-0001", "2.1.0")
    assert parse_identity(format_identity(ident)) == ident
    assert parse_ok(format_ok()) == OkReply()
    assert parse_ok(format_ok("7", "96")) == OkReply(("7", "96"))
    err = ErrorReply(202, "Door open")
    assert parse_error(format_error(err.code, err.message)) == err
    assert format_error_entry(ErrorReply(0, "No error")) == '0,"No error"'
    assert parse_error_entry('-113,"Undefined header"') == ErrorReply(-113, "Undefined header")
    assert parse_door(Line("OPEN")) is True and parse_door("CLOSED") is False
    assert parse_plate_id("NONE") is None and parse_plate_id("DEMO-0001") == "DEMO-0001"
    assert parse_int("12") == 12 and parse_float("1e-05") == 1e-05


statuses = st.builds(
    StatusReply,
    state=st.sampled_from(["IDLE", "COUNTING", "DONE", "ABORTED", "FAULT"]),
    done=st.integers(0, 96),
    total=st.just(96),
    count_id=st.integers(0, 10**6),
    fault_code=st.sampled_from([0, 202, 210, 220]),
    fault_text=st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"'),
                       max_size=60),
)
finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
well_counts = st.builds(
    WellCount,
    index=st.integers(0, 10**6),
    well=st.sampled_from(plate_wells(96)),
    detector=st.integers(1, 12),
    counts=st.integers(0, 10**9),
    count_time_s=finite, cpm=finite, ccpm=finite, sigma2_pct=finite, sqp=finite,
    flags=st.lists(st.sampled_from("LDQP"), unique=True).map(tuple),
)


@given(statuses)
def test_status_round_trips(status: StatusReply) -> None:
    assert parse_status(_decode_all(encode(format_status(status)))) == status


@given(st.lists(well_counts, max_size=16))
def test_records_round_trip_exactly(records: list[WellCount]) -> None:
    records = [
        WellCount(**{**r.__dict__, "index": (records[0].index + i)}) for i, r in enumerate(records)
    ]
    wire = encode(format_records(records))
    assert len(wire) <= MAX_LINE
    assert parse_records(_decode_all(wire)) == tuple(records)


def encode(text: str) -> bytes:
    return text.encode("ascii") + b"\n"


def test_non_consecutive_records_are_rejected() -> None:
    a = WellCount(0, "A1", 1, 10, 1.0, 600.0, 600.0, 63.25, 760.0)
    b = WellCount(2, "A2", 2, 10, 1.0, 600.0, 600.0, 63.25, 760.0)
    with pytest.raises(ProtocolError):
        parse_records(format_records([a, b]))


# ----------------------------------------------------------------------------- framing


def test_decode_needs_more_then_yields_a_line() -> None:
    assert decode_line(b"OK") == (None, 0)
    assert decode_line(bytearray(b"OK\r\nDONE")) == (Line("OK"), 4)


def test_frame_too_long_and_garbage_raise_protocol_errors() -> None:
    with pytest.raises(FrameTooLongError):
        decode_line(b"x" * MAX_LINE)
    with pytest.raises(ProtocolError):
        decode_line(b"\xff\x00abc\nOK\n")
    assert skip_to_next_line(b"\xff\x00abc\nOK\n") == 6
    assert decode_line(b"x" * (MAX_LINE - 1) + b"\n")[1] == MAX_LINE


@settings(max_examples=300)
@given(st.binary(max_size=3 * MAX_LINE))
def test_decode_line_never_raises_anything_else(data: bytes) -> None:
    try:
        line, used = decode_line(data)
    except ProtocolError:
        return
    assert 0 <= used <= min(len(data), MAX_LINE)
    assert (line is None) == (used == 0)


newline_heavy = st.lists(
    st.one_of(st.binary(max_size=40), st.just(b"\n"), st.just(b"*IDN?\n"),
              st.binary(min_size=MAX_LINE, max_size=MAX_LINE + 50)),
    max_size=12,
).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(newline_heavy)
def test_assembler_whole_and_byte_by_byte_agree_and_stay_bounded(data: bytes) -> None:
    whole = LineAssembler().feed(data)
    assembler, trickled = LineAssembler(), []
    for i in range(len(data)):
        trickled += assembler.feed(data[i : i + 1])
        assert assembler.buffered < MAX_LINE
    assert len(whole) == len(trickled) == data.count(b"\n")  # exactly one item per line
    assert [_key(x) for x in whole] == [_key(x) for x in trickled]


def _key(item: Line | ProtocolError) -> object:
    return item if isinstance(item, Line) else type(item)


printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
PARSERS = [parse_status, parse_records, parse_identity, parse_error, parse_error_entry,
           parse_ok, parse_door, parse_plate_id, parse_int, parse_float]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@settings(max_examples=150)
@given(text=st.one_of(printable, st.builds(lambda a, b: a + ";" + b, printable, printable)))
def test_reply_parsers_only_raise_protocol_error(parser: object, text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parser(Line(text))  # type: ignore[operator]


@settings(max_examples=300)
@given(printable)
def test_parse_command_always_answers(text: str) -> None:
    result = parse_command(Line(text))
    if isinstance(result, ErrorReply):
        format_error(result.code, result.message)  # must be sendable
    else:
        assert parse_command(_decode_all(encode_command(result))) == result
