"""The ValveLink8 codec: round trips for every command and reply, the manual's spellings,
and fuzzing of what production runs on each line the link cuts: the driver's reply parser
and noise check, and the simulator's command parser (they may only return or raise
ProtocolError). The framing itself is the link's :func:`split_line` (tests/test_serial_link.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import ProtocolError
from drivers.perfusion.codec import (
    EOL,
    MAX_LINE,
    VALVES,
    AcknowledgeSpill,
    CloseAll,
    CloseValve,
    Command,
    ErrorCode,
    ErrorReply,
    Identify,
    IdentityReply,
    ModeSpec,
    OkReply,
    OpenAll,
    OpenValve,
    QueryStatus,
    Reply,
    SetModes,
    StatusReply,
    command_from_bytes,
    encode_command,
    format_reply,
    parse_command,
    parse_reply,
)
from drivers.perfusion.driver import PerfusionDriver
from drivers.serial_link import split_line

ALL_COMMANDS: list[Command] = [
    OpenAll(0), CloseAll(9), OpenValve(6, 3), CloseValve(5, 1), OpenValve(0, 8),
    SetModes(3, True, (ModeSpec(2), ModeSpec(4, 7), ModeSpec(5, 3))),
    SetModes(0, False, (ModeSpec(1), ModeSpec(4))), QueryStatus(0), Identify(2),
    AcknowledgeSpill(0),
]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=repr)
def test_every_command_round_trips(command: Command) -> None:
    wire = encode_command(command)
    assert EOL not in wire  # the link adds the terminator
    line, used = split_line(wire + EOL, eol=EOL, max_line=MAX_LINE - len(EOL))  # the pty's
    assert line is not None and used == len(wire) + 1
    assert parse_command(line.decode()) == command
    assert command_from_bytes(wire) == command


def test_command_bytes_follow_the_manual() -> None:
    assert encode_command(OpenValve(6, 3)) == b"AT6V+3"  # "AT6V+3<cr> opens valve 3 on device 6"
    assert encode_command(CloseValve(5, 1)) == b"AT5V-1"
    assert encode_command(OpenAll(0)) == b"AT0O"
    assert encode_command(CloseAll(0)) == b"AT0C"
    assert encode_command(SetModes(3, True, (ModeSpec(2), ModeSpec(4, 7)))) == b"AT3M+2,4/7"
    assert encode_command(QueryStatus(0)) == b"AT0S?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AT3M+2, 4/7, 5/3, 6", SetModes(3, True, (ModeSpec(2), ModeSpec(4, 7), ModeSpec(5, 3),
                                                   ModeSpec(6)))),  # the manual's spacing
        ("at0v+1", OpenValve(0, 1)),
        ("  AT1C  ", CloseAll(1)),
        ("AT0M-4/3", SetModes(0, False, (ModeSpec(4),))),  # a valve with M- is ignored
        ("AT0s?", QueryStatus(0)),
    ],
)
def test_lenient_forms_parse(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("AT0X", ErrorCode.SYNTAX), ("AT0", ErrorCode.SYNTAX), ("AT0V+", ErrorCode.SYNTAX),
        ("AT0V+a", ErrorCode.SYNTAX), ("AT0M+4", ErrorCode.SYNTAX), ("AT0M+1/3", ErrorCode.SYNTAX),
        ("AT0M+0", ErrorCode.SYNTAX), ("AT0M+", ErrorCode.SYNTAX), ("AT0O 1", ErrorCode.SYNTAX),
        ("AT0V+9", ErrorCode.BAD_VALVE), ("AT0V-0", ErrorCode.BAD_VALVE),
        ("AT0M+4/9", ErrorCode.BAD_VALVE), ("AT0M+2,2", ErrorCode.MODE_CONFLICT),
    ],
)
def test_bad_commands_give_error_replies(text: str, code: int) -> None:
    reply = parse_command(text)
    assert reply == ErrorReply(0, code)


@pytest.mark.parametrize("text", ["", "hello", "A T0O", "ATxO", "RT0O", "\x7e"])
def test_lines_for_nobody_are_ignored(text: str) -> None:
    assert parse_command(text) is None


def test_non_printable_lines() -> None:
    assert command_from_bytes(b"AT4V+\xff") == ErrorReply(4, ErrorCode.SYNTAX)
    assert command_from_bytes(b"\x00AT4O") is None
    assert command_from_bytes(b"AT4O\n") == OpenAll(4)  # a stray LF from a CR LF terminal


@pytest.mark.parametrize(
    "build",
    [lambda: OpenValve(0, 0), lambda: OpenValve(0, 9), lambda: CloseAll(10),
     lambda: ModeSpec(0), lambda: ModeSpec(2, 3), lambda: SetModes(0, True, ()),
     lambda: SetModes(0, True, (ModeSpec(4),)),
     lambda: SetModes(0, False, (ModeSpec(4, 2),)), lambda: ErrorReply(0, 0),
     lambda: StatusReply(0, ("open",) * 7), lambda: IdentityReply(0, "a b", "s", "f"),
     lambda: StatusReply(0, ("open",) * 8, (ModeSpec(4, 1), ModeSpec(2)))],
)
def test_invalid_frames_cannot_be_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_reply_bytes() -> None:
    status = StatusReply(0, ("open", "closed", "unplugged", "shorted") + ("closed",) * 4,
                         (ModeSpec(2), ModeSpec(4, 1)), True)
    assert format_reply(status) == b"R0 ST V=10US0000 M=2,4/1 SPILL=1"
    assert format_reply(StatusReply(3, ("closed",) * 8)) == b"R3 ST V=00000000 M=- SPILL=0"
    assert format_reply(OkReply(0)) == b"R0 OK"
    assert format_reply(ErrorReply(7, ErrorCode.SPILL_LATCHED)) == b"R7 ERR 4"
    assert format_reply(IdentityReply(0, "ValveLink8.2-SIM", "VL8-1", "1.0")) == (
        b"R0 ID MODEL=ValveLink8.2-SIM SERIAL=VL8-1 FW=1.0")


valve_states = st.sampled_from(["closed", "open", "unplugged", "shorted"])
mode_sets = st.builds(
    lambda base, pre, master: tuple(
        m for m in (base, None if pre is None else ModeSpec(4, pre),
                    None if master is None else ModeSpec(5, master)) if m is not None),
    st.sampled_from([None, ModeSpec(1), ModeSpec(2), ModeSpec(3)]),
    st.none() | st.integers(1, VALVES), st.none() | st.integers(1, VALVES),
)
replies = st.one_of(
    st.builds(OkReply, st.integers(0, 9)),
    st.builds(ErrorReply, st.integers(0, 9), st.integers(1, 99)),
    st.builds(StatusReply, st.integers(0, 9), st.tuples(*[valve_states] * VALVES), mode_sets,
              st.booleans()),
    st.builds(IdentityReply, st.integers(0, 9), *[st.from_regex(r"[A-Za-z0-9._\-]{1,32}",
                                                               fullmatch=True)] * 3),
)


@given(replies)
def test_every_reply_round_trips(reply: Reply) -> None:
    wire = format_reply(reply)
    assert len(wire) + len(EOL) <= MAX_LINE and EOL not in wire
    assert parse_reply(wire) == reply
    assert parse_reply(wire.decode()) == reply


# ----------------------------------------------------------------------------- fuzzing


printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
reply_like = st.builds(lambda a, b: f"R{a % 10} {b}", st.integers(0, 9), printable)


any_line = st.one_of(
    printable, reply_like, st.binary(max_size=MAX_LINE), st.text(max_size=80),
    replies.map(format_reply),
    replies.map(lambda r: format_reply(r) + b"\xff"),  # a good reply with a bad byte
)


@settings(max_examples=400)
@given(any_line)
def test_parse_reply_only_raises_protocol_error(text: str | bytes) -> None:
    with contextlib.suppress(ProtocolError):
        reply = parse_reply(text)
        assert parse_reply(format_reply(reply)) == reply


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=MAX_LINE), reply_like.map(str.encode),
                 replies.map(format_reply)), st.integers(0, 9))
def test_the_drivers_noise_check_agrees_with_the_parser(raw: bytes, address: int) -> None:
    """What the driver runs on every line (its ``accept`` for the link): never raises, and
    passes exactly the replies from its own device address."""
    driver = PerfusionDriver("unused", device_address=address)
    try:
        ours = parse_reply(raw).address == address
    except ProtocolError:
        ours = False
    assert driver._is_ours(raw) is ours


command_like = st.builds(lambda a, b: f"AT{a}{b}", st.integers(0, 9), printable)


@settings(max_examples=400)
@given(st.one_of(printable, command_like, st.binary(max_size=80), st.text(max_size=40)))
def test_command_parser_always_answers_sendably(data: str | bytes) -> None:
    raw = data if isinstance(data, bytes) else data.encode()
    result = command_from_bytes(raw)
    if result is None:
        return
    if isinstance(result, ErrorReply):
        assert parse_reply(format_reply(result)) == result
    else:
        assert parse_command(encode_command(result).decode()) == result
