"""The incubator register map and its pure encodings (no I/O), fuzzed with hypothesis; the
byte examples in docs/protocols/incubator.md checked against pymodbus' own framers."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    WriteSingleRegisterRequest,
)

from drivers.errors import ProtocolError
from drivers.incubator.link import ModbusAddress, parse_address
from drivers.incubator.registers import (
    FLOAT_BASE,
    NO_VALUE,
    REGISTERS,
    Reg,
    StatusBits,
    decode_float,
    decode_scaled,
    decode_status,
    decode_switch,
    decode_unsigned,
    encode_float,
    encode_scaled,
    encode_status,
    float_address,
    resolution,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocols" / "incubator.md"
words = st.integers(0, 0xFFFF)
decimals = st.integers(0, 3)


def test_register_map_matches_the_eurotherm_3200_addresses() -> None:
    expected = {1: "process value", 2: "target setpoint", 4: "working output",
                5: "working setpoint", 24: "setpoint 1", 25: "setpoint 2",
                26: "remote setpoint", 30: "output high limit", 31: "output low limit",
                35: "setpoint rate limit", 75: "status", 83: "loop-break time"}
    for address, name in expected.items():
        assert REGISTERS[address].name == name
    assert {a for a, r in REGISTERS.items() if r.eeprom} >= {Reg.TARGET_SP, Reg.SP1, Reg.SP2}
    assert not REGISTERS[Reg.REMOTE_SP].eeprom  # the one meant for frequent writes
    assert not REGISTERS[Reg.PV].writable and not REGISTERS[Reg.STATUS].writable
    assert {Reg.SHAKER_ON, Reg.SHAKER_RPM_SP, Reg.SHAKER_RPM} <= REGISTERS.keys()
    assert float_address(Reg.PV) == 0x8002
    with pytest.raises(ValueError):
        float_address(FLOAT_BASE)


@pytest.mark.parametrize(("value", "dp", "word"), [
    (37.0, 1, 370), (-5.5, 1, 0xFFC9), (0.0, 0, 0), (3276.7, 1, 0x7FFF), (1.234, 3, 1234),
    (36.96, 1, 370),  # rounded to the register's resolution
])
def test_scaled_examples(value: float, dp: int, word: int) -> None:
    assert encode_scaled(value, dp) == word
    assert decode_scaled(word, dp) == round(value, dp)


@pytest.mark.parametrize("value", [math.nan, math.inf, 3276.8, -3276.8, 1e9])
def test_unencodable_values_are_refused_before_sending(value: float) -> None:
    with pytest.raises(ValueError):
        encode_scaled(value, 1)


def test_no_value_marker_and_bad_decimals() -> None:
    assert decode_scaled(NO_VALUE, 1) is None
    with pytest.raises(ValueError):
        encode_scaled(1.0, 4)
    with pytest.raises(ValueError):
        resolution(-1)


@given(st.integers(-0x7FFF, 0x7FFF), decimals)
def test_scaled_round_trip_from_counts(counts: int, dp: int) -> None:
    value = counts / 10**dp
    word = encode_scaled(value, dp)
    assert decode_scaled(word, dp) == pytest.approx(value, abs=resolution(dp) / 2)
    assert encode_scaled(decode_scaled(word, dp) or 0.0, dp) == word


@given(decimals, st.data())
def test_encoding_error_is_at_most_half_a_step(dp: int, data: st.DataObject) -> None:
    limit = 0x7FFF / 10**dp - resolution(dp)
    value = data.draw(st.floats(-limit, limit))
    decoded = decode_scaled(encode_scaled(value, dp), dp)
    assert decoded is not None
    assert abs(decoded - value) <= resolution(dp) / 2 + 1e-9


@given(words, decimals)
def test_any_word_decodes_to_a_value_or_none(word: int, dp: int) -> None:
    value = decode_scaled(word, dp)
    assert (value is None) == (word == NO_VALUE)
    if value is not None:
        assert encode_scaled(value, dp) == word


@given(st.integers())
def test_decoders_raise_only_protocol_error(word: int) -> None:
    for decode in (lambda w: decode_scaled(w, 1), decode_status, decode_switch,
                   lambda w: decode_unsigned(w, maximum=1500)):
        with contextlib.suppress(ProtocolError):
            decode(word)
    if word in (0, 1):
        assert decode_switch(word) is (word == 1)


def test_switch_and_unsigned_name_the_register_in_errors() -> None:
    with pytest.raises(ProtocolError, match=r"register 300.*holds 7"):
        decode_switch(7, name="register 300")
    with pytest.raises(ProtocolError, match=r"rpm.*60000"):
        decode_unsigned(60000, maximum=10000, name="rpm")


@given(words)
def test_status_bits_round_trip_the_named_flags(word: int) -> None:
    status = decode_status(word)
    assert status.raw == word
    named = encode_status(status)
    assert named == word & 0b1000_0100_0110_1111  # bits 0-3, 5, 6, 10, 15
    assert decode_status(named).faults == status.faults


def test_status_faults_are_named() -> None:
    status = StatusBits(alarms=(True, False, False, True), sensor_break=True)
    assert status.faults == ("alarm 1", "alarm 4", "sensor break")
    assert encode_status(status) == 0b10_1001
    assert decode_status(1 << 15).autotune and not decode_status(1 << 15).faults


@given(words, words)
def test_any_float_pair_is_a_finite_float_or_protocol_error(high: int, low: int) -> None:
    try:
        value = decode_float(high, low)
    except ProtocolError:
        return
    assert math.isfinite(value)
    assert encode_float(value) == (high, low) or value == 0.0  # -0.0 decodes to 0.0


@given(st.floats(-1e6, 1e6, allow_nan=False, width=32))
def test_float_round_trip(value: float) -> None:
    assert decode_float(*encode_float(value)) == value


# ---------------------------------------------------------------------- addresses

@pytest.mark.parametrize(("text", "expected"), [
    ("modbus-tcp://127.0.0.1:5020", ModbusAddress("tcp", "127.0.0.1", 5020)),
    ("modbus-tcp://incubator.lab", ModbusAddress("tcp", "incubator.lab", 502)),
    ("modbus-rtu://socket://127.0.0.1:5021", ModbusAddress("rtu", "socket://127.0.0.1:5021")),
    ("modbus-rtu:///dev/ttyUSB0?baud=19200&parity=E",
     ModbusAddress("rtu", "/dev/ttyUSB0", baud=19200, parity="E")),
])
def test_addresses(text: str, expected: ModbusAddress) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", [
    "tcp://x:1", "modbus-tcp://:502", "modbus-tcp://h:99999", "modbus-tcp://h:x",
    "modbus-rtu://", "modbus-rtu:///dev/ttyS0?speed=9600", "modbus-rtu:///dev/ttyS0?baud=fast",
])
def test_bad_addresses_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


@given(st.text())
def test_address_parser_raises_only_value_error(text: str) -> None:
    for candidate in (text, "modbus-tcp://" + text, "modbus-rtu://" + text):
        with contextlib.suppress(ValueError):
            parse_address(candidate)


# ---------------------------------------------------------------------- documented bytes

def _hex(frame: bytes) -> str:
    return " ".join(f"{b:02X}" for b in frame)


def _frames() -> list[tuple[str, ModbusPDU, str, str]]:
    values = [encode_scaled(v, 1) for v in (36.9, 37.0, 0.0, 54.5, 37.0)]
    return [
        ("read PV..WRK.SP", ReadHoldingRegistersRequest(address=1, count=5, dev_id=1,
                                                        transaction_id=1),
         "00 01 00 00 00 06 01 03 00 01 00 05", "01 03 00 01 00 05 D4 09"),
        ("its reply", ReadHoldingRegistersResponse(registers=values, dev_id=1,
                                                   transaction_id=1),
         "00 01 00 00 00 0D 01 03 0A 01 71 01 72 00 00 02 21 01 72",
         "01 03 0A 01 71 01 72 00 00 02 21 01 72 5E ED"),
        ("write TG.SP 37.0", WriteSingleRegisterRequest(address=2, registers=[370], dev_id=1,
                                                        transaction_id=2),
         "00 02 00 00 00 06 01 06 00 02 01 72", "01 06 00 02 01 72 A9 BF"),
        ("read unmapped 10", ReadHoldingRegistersRequest(address=10, count=1, dev_id=1,
                                                         transaction_id=3),
         "00 03 00 00 00 06 01 03 00 0A 00 01", "01 03 00 0A 00 01 A4 08"),
        ("exception 02", ExceptionResponse(3, 2, device_id=1, transaction=3),
         "00 03 00 00 00 03 01 83 02", "01 83 02 C0 F1"),
    ]


@pytest.mark.parametrize(("what", "pdu", "tcp", "rtu"), _frames(), ids=[f[0] for f in _frames()])
def test_documented_frames_are_what_pymodbus_sends(
    what: str, pdu: ModbusPDU, tcp: str, rtu: str
) -> None:
    is_request = not isinstance(pdu, ReadHoldingRegistersResponse | ExceptionResponse)
    assert _hex(FramerSocket(DecodePDU(not is_request)).buildFrame(pdu)) == tcp
    assert _hex(FramerRTU(DecodePDU(not is_request)).buildFrame(pdu)) == rtu
    doc = DOC.read_text(encoding="utf-8")
    assert tcp in doc, f"{what}: MBAP example missing from {DOC.name}"
    assert rtu in doc, f"{what}: RTU example missing from {DOC.name}"
