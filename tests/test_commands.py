"""Command payload validation (no broker: the parsing layer alone)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acquisition.commands import MAX_COMMAND_BYTES, RunStartArgs, parse_command
from acquisition.errors import CommandError


def cmd(verb: str, **args: object) -> bytes:
    return json.dumps({"schema": "assay.command/1", "verb": verb, "args": args}).encode()


def test_valid_run_start_gets_defaults() -> None:
    verb, args = parse_command(cmd("run.start", count_time_s=30, wells=["A1", "H12"]))
    assert verb == "run.start"
    assert isinstance(args, RunStartArgs)
    assert args.instrument == "counter" and args.wells == ["A1", "H12"]


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"nope", "bad_json", "not JSON"),
        (b'"a string"', "bad_json", "JSON object"),
        (cmd("fly"), "unknown_verb", "unknown verb 'fly'"),
        (cmd("run.start", count_time_s=-1), "bad_request", "args.count_time_s"),
        (cmd("run.start", wells=["A13"]), "bad_request", "args.wells.0"),
        (cmd("run.start", colour="red"), "bad_request", "args.colour: unexpected field"),
        (
            json.dumps({"schema": "assay.command/9", "verb": "status"}).encode(),
            "bad_request",
            "schema",
        ),
        (json.dumps({"args": {}}).encode(), "bad_request", "verb"),
        (b"{" + b" " * MAX_COMMAND_BYTES + b"}", "too_large", "exceeds"),
    ],
)
def test_bad_commands_name_what_is_wrong(payload: bytes, code: str, words: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(payload)
    assert info.value.code == code
    assert words in info.value.message


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_command_or_a_command_error(payload: bytes) -> None:
    with contextlib.suppress(CommandError):
        parse_command(payload)


def test_deeply_nested_json_is_bad_json_not_a_crash() -> None:
    with pytest.raises(CommandError) as info:
        parse_command(b"[" * 50_000)
    assert info.value.code == "bad_json"


def test_a_well_listed_twice_is_refused_up_front() -> None:
    with pytest.raises(CommandError, match="repeated: A1"):
        parse_command(cmd("run.start", wells=["A1", "B2", "A1"]))
