"""The amplifier driver against its simulator over TCP, and the codec fuzzed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from drivers.amplifier import AmplifierDriver, AmplifierError
from drivers.amplifier.codec import (
    ErrorReply,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)  # fmt: skip
from drivers.clock import MonotonicClock
from drivers.errors import InstrumentReplyError, InstrumentTimeoutError, LinkError, ProtocolError
from simulators.amplifier import AmplifierSimulator
from simulators.patch_rig import PatchRig, RigSpec


class _FastClock(MonotonicClock):
    """The bench clock at a high time scale: the auto functions take milliseconds."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds / 1000)


@pytest_asyncio.fixture
async def rig_sim() -> AsyncIterator[tuple[PatchRig, AmplifierSimulator]]:
    clock = _FastClock()
    rig = PatchRig(RigSpec(stage="bath"), clock)
    sim = AmplifierSimulator(rig, clock)
    await sim.start()
    yield rig, sim
    await sim.stop()


@pytest_asyncio.fixture
async def amp(rig_sim: tuple[PatchRig, AmplifierSimulator]) -> AsyncIterator[AmplifierDriver]:
    async with AmplifierDriver(rig_sim[1].address, timeout_s=0.5) as driver:
        yield driver


async def test_identity_and_modes_pass_through_i0(amp: AmplifierDriver,
                                                  rig_sim: tuple[PatchRig, AmplifierSimulator]
                                                  ) -> None:  # fmt: skip
    ident = await amp.identify()
    assert (ident.model, ident.channels) == ("700B", 2)
    assert await amp.mode() == "VC"
    await amp.set_mode("IC")
    sent = [r.args[1] for r in rig_sim[1].requests if r.verb == "SetMode"]
    assert sent == ["I0", "IC"]
    assert await amp.mode() == "IC"
    await amp.set_mode("VC")
    assert [r.args[1] for r in rig_sim[1].requests if r.verb == "SetMode"][-2:] == ["I0", "VC"]


async def test_setters_never_rewrite_an_unchanged_value(amp: AmplifierDriver,
                                                        rig_sim: tuple[PatchRig,
                                                                       AmplifierSimulator]
                                                        ) -> None:  # fmt: skip
    await amp.set_holding(-0.060, enable=True)
    await amp.set_gain(5)
    await amp.set_lpf(2_000)
    written = amp.writes
    sets = sum(r.verb.startswith("Set") for r in rig_sim[1].requests)
    await amp.set_holding(-0.060, enable=True)
    await amp.set_gain(5)
    await amp.set_lpf(2_000)
    assert amp.writes == written == 3  # holding, gain, lpf (enable was already on)
    assert sum(r.verb.startswith("Set") for r in rig_sim[1].requests) == sets
    rig_sim[0].channels[1].gain = 10  # someone turned the Commander's knob
    await amp.set_gain(5)
    assert amp.writes == 4 and rig_sim[0].channels[1].gain == 5


async def test_seal_test_meter_and_telegraph(amp: AmplifierDriver,
                                             rig_sim: tuple[PatchRig, AmplifierSimulator]
                                             ) -> None:  # fmt: skip
    rig = rig_sim[0]
    assert (await amp.meter()).resistance_ohm is not None  # an idle rig runs its seal test
    await amp.seal_test(False)
    assert (await amp.meter()).resistance_ohm is None
    await amp.seal_test(True, amplitude_v=0.005, frequency_hz=50)
    bath = (await amp.meter()).resistance_ohm
    assert bath == pytest.approx(rig.spec.pipette_ohm)
    rig.move_to("whole_cell")
    await amp.set_feedback_resistor(500e6)
    cm, rs = await amp.auto_whole_cell_comp()
    assert cm == pytest.approx(33e-12) and rs == pytest.approx(10e6, rel=0.01)
    tele = await amp.telegraph()
    assert tele.mode == "VC" and tele.cm_f == pytest.approx(33e-12)
    assert tele.scale_v_per_unit == pytest.approx(500e6)  # 0.5 mV/pA at gain 1
    assert tele.ext_cmd_sensitivity == pytest.approx(0.020)
    readings = await amp.readings()
    assert readings.state == "idle" and readings.values["mode"] == "VC"
    assert readings.values["resistance_mohm"] == pytest.approx(rig.resistance_ohm() / 1e6,
                                                              rel=0.01)  # fmt: skip


async def test_auto_functions_fail_to_converge_with_the_api_code(amp: AmplifierDriver,
                                                                 rig_sim: tuple[PatchRig,
                                                                                AmplifierSimulator]
                                                                 ) -> None:  # fmt: skip
    with pytest.raises(AmplifierError) as caught:
        await amp.auto_whole_cell_comp()  # still in the bath: no cell to compensate
    assert caught.value.code == 6006
    assert await amp.auto_pipette_offset() == pytest.approx(0.008)
    rig_sim[0].move_to("whole_cell")
    with pytest.raises(AmplifierError) as caught:
        await amp.auto_pipette_offset()  # only in the bath
    assert caught.value.code == 6006


async def test_commander_not_open_is_6002_and_a_fault_reading(
    amp: AmplifierDriver, rig_sim: tuple[PatchRig, AmplifierSimulator]
) -> None:
    rig_sim[1].inject_fault("commander_not_open")
    with pytest.raises(AmplifierError) as caught:
        await amp.set_gain(2)
    assert caught.value.code == 6002 and "commander not open" in str(caught.value)
    readings = await amp.readings()
    assert readings.state == "fault" and "6002" in (readings.fault or "")
    rig_sim[1].inject_fault("commander_open")
    assert (await amp.readings()).state == "idle"


async def test_invalid_parameters_are_refused_before_and_by_the_amplifier(
    amp: AmplifierDriver,
) -> None:
    with pytest.raises(ValueError, match="gain"):
        await amp.set_gain(3)
    with pytest.raises(ValueError, match="2-30 kHz"):
        await amp.set_lpf(50_000)
    with pytest.raises(AmplifierError) as caught:
        await amp._call("SetHolding", "5.0")  # beyond the amplifier's range
    assert caught.value.code == 6004


async def test_hostile_wire_stall_split_garbage_close(amp: AmplifierDriver,
                                                      rig_sim: tuple[PatchRig,
                                                                     AmplifierSimulator]
                                                      ) -> None:  # fmt: skip
    sim = rig_sim[1]
    sim.inject_fault("split")
    assert await amp.mode() == "VC"  # a reply a byte at a time is still one reply
    sim.inject_fault("stall")
    with pytest.raises(InstrumentTimeoutError):
        await amp.mode()
    assert await amp.mode() == "VC"  # the next request has its own tag and its own reply
    sim.inject_fault("garbage")
    with pytest.raises(InstrumentReplyError, match="garbled"):
        await amp.mode()
    sim.inject_fault("close")
    with pytest.raises(LinkError):
        await amp.mode()
    assert await amp.mode() == "VC"  # the next request connects again
    assert amp.reconnects == 1


async def test_unreachable_amplifier_is_a_link_error() -> None:
    sim = AmplifierSimulator(PatchRig(RigSpec(), MonotonicClock()), MonotonicClock())
    await sim.start()
    address = sim.address
    await sim.stop()
    with pytest.raises(LinkError, match="cannot connect"):
        await AmplifierDriver(address).open()


_VALUE = st.from_regex(r"[A-Za-z0-9_.+\-]{1,20}", fullmatch=True)


@given(st.integers(1, 999_999), st.from_regex(r"[A-Z][A-Za-z0-9]{1,20}", fullmatch=True),
       st.lists(_VALUE, max_size=4))  # fmt: skip
def test_requests_round_trip(tag: int, verb: str, args: list[str]) -> None:
    request = Request(tag, verb, tuple(args))
    assert decode_request(encode_request(request).rstrip(b"\n")) == request


@given(st.integers(1, 999_999),
       st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), _VALUE,
                       max_size=6))  # fmt: skip
def test_replies_round_trip(tag: int, values: dict[str, str]) -> None:
    assert decode_reply(encode_reply(Reply(tag, values)).rstrip(b"\n")) == Reply(tag, values)
    error = ErrorReply(tag, 6004, "invalid parameter")
    assert decode_reply(encode_reply(error).rstrip(b"\n")) == error


@given(st.binary(max_size=700))
def test_any_bytes_decode_or_raise_a_protocol_error(raw: bytes) -> None:
    for decode in (decode_reply, decode_request):
        with contextlib.suppress(ProtocolError):
            decode(raw)


async def test_the_tail_of_an_over_long_line_is_never_taken_for_a_reply() -> None:
    """A line over the limit is dropped up to its end, even when its tail arrives later
    and starts like a reply ('7 OK ...'): the request with tag 7 gets its real reply."""
    from drivers.amplifier.codec import tag_of
    from drivers.tcp_lines import TaggedLineLink

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"1 OK " + b"x" * 600)  # no terminator yet
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"7 OK value=wrong\n")  # the long line's tail
        writer.write(b"7 OK value=right\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = TaggedLineLink("127.0.0.1", port, tag_of=tag_of, timeout_s=2.0)
    try:
        await link.open()
        reply = await link.request(7, b"7 GetMode 1\n")
        assert reply == b"7 OK value=right" and link.dropped_lines == 1
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
