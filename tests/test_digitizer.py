"""The digitizer: codec fuzzed; the driver against the simulated rig over TCP, with every
way a sweep can lose samples."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from drivers.clock import MonotonicClock
from drivers.digitizer import DigitizerDriver, to_codes
from drivers.digitizer.codec import (
    MAX_PAYLOAD,
    Ack,
    Configure,
    Corrupt,
    Data,
    End,
    Frame,
    FrameDecoder,
    Overrun,
    StartSweep,
    Upload,
    decode_message,
    encode,
)  # fmt: skip
from drivers.errors import (
    DataLossError,
    InstrumentReplyError,
    LinkError,
    ProtocolError,
)
from simulators.digitizer import DigitizerSimulator
from simulators.patch_rig import PatchRig, RigSpec

RATE = 20_000


class _FastClock(MonotonicClock):
    """A bench at time scale 50: a 1 s sweep streams in 20 ms."""

    def __init__(self) -> None:
        self._t0 = super().monotonic()

    def monotonic(self) -> float:
        return self._t0 + (super().monotonic() - self._t0) * 50

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds / 50)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[tuple[PatchRig, DigitizerSimulator, DigitizerDriver]]:
    clock = _FastClock()
    patch = PatchRig(RigSpec(cell="model_cell", ra_drift_per_min=0.0, electrode_offset_v=0.0),
                     clock)  # fmt: skip
    patch.channels[1].holding = -0.070
    patch.channels[1].lpf_hz = None
    patch.channels[1].test_enable = False  # as a recording has it
    sim = DigitizerSimulator(patch, clock)
    await sim.start()
    driver = DigitizerDriver(sim.address, timeout_s=1.0)
    await driver.open()
    await driver.configure(RATE, (0, 1))
    yield patch, sim, driver
    await driver.close()
    await sim.stop()


def _step(n: int = 4000, at: int = 1000, volts: float = 0.5) -> np.ndarray:
    """A command step of ``volts`` at the digitizer (x 20 mV/V: 10 mV at the cell)."""
    cmd = np.zeros(n)
    cmd[at:] = volts
    return cmd


async def test_a_step_on_the_model_cell_gives_the_textbook_transient_and_steady_current(
    rig: tuple[PatchRig, DigitizerSimulator, DigitizerDriver],
) -> None:
    patch, _, driver = rig
    n, at = 4000, 1000
    await driver.upload(_step(n, at))
    sweep = await driver.acquire_sweep(n)
    assert sweep.codes.shape == (n, 2)
    scale = patch.channels[1].scale_v_per_a()
    current = sweep.volts(0) / scale
    base = current[: at - 10].mean()
    steady = current[-500:].mean() - base
    ra, rm, cm = patch.ra_ohm(), patch.cell.rm_ohm, patch.cell.cm_f
    assert steady == pytest.approx(0.010 / (ra + rm), rel=0.02)
    # the decay after the step's peak: a straight line in log(excess)
    excess = current[at + 1 : at + 40] - base - steady
    t = np.arange(len(excess)) / RATE
    usable = excess > 5 * (10 / 32768) / scale
    slope = np.polyfit(t[usable], np.log(excess[usable]), 1)[0]
    assert -1 / slope == pytest.approx(cm * ra * rm / (ra + rm), rel=0.10)
    # the secondary: the command potential x 10 mV/mV
    assert sweep.volts(1)[-1] == pytest.approx((-0.070 + 0.010) * 10, abs=0.002)


@pytest.mark.parametrize("fault", ["drop_frame", "corrupt_frame", "overrun"])
async def test_a_lost_frame_is_a_data_loss_naming_its_samples(
    rig: tuple[PatchRig, DigitizerSimulator, DigitizerDriver], fault: str
) -> None:
    _, sim, driver = rig
    await driver.upload(_step())
    sim.inject_fault(fault)
    with pytest.raises(DataLossError) as caught:
        await driver.acquire_sweep(4000)
    (start, stop), = caught.value.lost
    per_frame = int(RATE * sim.frame_ms / 1000)
    assert stop - start == per_frame and start % per_frame == 0 and 2000 <= start < 4000
    assert f"samples {start}-{stop - 1} lost" in str(caught.value)
    sweep = await driver.acquire_sweep(4000)  # the next sweep is whole again
    assert sweep.codes.shape == (4000, 2)


async def test_frames_split_into_pieces_make_the_same_sweep(
    rig: tuple[PatchRig, DigitizerSimulator, DigitizerDriver],
) -> None:
    _, sim, driver = rig
    await driver.upload(_step(1000, 200))
    sim.inject_fault("split_frames")  # every frame in 7-byte writes
    split = await driver.acquire_sweep(1000)
    assert split.codes.shape == (1000, 2)
    steady = split.volts(0)[-200:].mean() - split.volts(0)[:150].mean()
    assert steady == pytest.approx(0.010 / 510e6 * 500e6, rel=0.05)  # 10 mV / (Ra + Rm), V


async def test_the_socket_closing_mid_sweep_is_a_link_error_then_it_reconnects(
    rig: tuple[PatchRig, DigitizerSimulator, DigitizerDriver],
) -> None:
    _, sim, driver = rig
    await driver.upload(_step())
    sim.inject_fault("close_mid_sweep")
    with pytest.raises(LinkError):
        await driver.acquire_sweep(4000)
    await driver.configure(RATE, (0, 1))  # reconnects
    await driver.upload(_step())
    assert (await driver.acquire_sweep(4000)).codes.shape == (4000, 2)
    assert driver.reconnects == 1


async def test_a_stalled_sweep_is_a_loss_of_its_rest_and_the_digitizer_is_stopped(
    rig: tuple[PatchRig, DigitizerSimulator, DigitizerDriver],
) -> None:
    """Data stopping half-way (no End) names the samples that never came; the driver stops
    the digitizer, so the next sweep starts without a 'busy'."""
    _, sim, driver = rig
    await driver.upload(_step())
    sim.inject_fault("stall_mid_sweep")
    with pytest.raises(DataLossError, match="samples 2000-3999 lost") as caught:
        await driver.acquire_sweep(4000)
    assert caught.value.lost == ((2000, 4000),)
    assert (await driver.acquire_sweep(4000)).codes.shape == (4000, 2)


async def test_bad_settings_are_refused(
    rig: tuple[PatchRig, DigitizerSimulator, DigitizerDriver],
) -> None:
    _, _, driver = rig
    with pytest.raises(ValueError, match="10-100 kHz"):
        await driver.configure(200_000, (0,))
    with pytest.raises(ValueError, match="10 V"):
        await driver.upload(np.array([0.0, 12.0]))
    with pytest.raises(InstrumentReplyError, match="inputs 0-7"):
        await driver.configure(RATE, (0, 9))


async def test_streaming_is_contiguous_and_a_slow_consumer_is_told_what_it_lost() -> None:
    clock = _FastClock()
    patch = PatchRig(RigSpec(cell="model_cell"), clock)
    patch.channels[1].test_enable = False
    sim = DigitizerSimulator(patch, clock, frame_ms=1.0)
    await sim.start()
    try:
        async with DigitizerDriver(sim.address, timeout_s=1.0) as driver:
            await driver.configure(RATE, (0,))
            await driver.upload(_step(2000))
            blocks = []
            async with contextlib.aclosing(driver.stream()) as stream:
                async for block in stream:
                    blocks.append(block)
                    if len(blocks) == 30:
                        break
            assert [b.first_sample for b in blocks] == [i * 20 for i in range(30)]
            assert not (await driver.status()).running  # leaving the loop stopped it
        async with DigitizerDriver(sim.address, timeout_s=1.0, queue_size=4) as slow:
            await slow.configure(RATE, (0,))
            with pytest.raises(DataLossError, match="host queue overrun"):
                async with contextlib.aclosing(slow.stream()) as stream:
                    async for _ in stream:
                        await asyncio.sleep(0.05)  # slower than 1 ms frames at scale 50
            assert slow.host_overruns > 0
    finally:
        await sim.stop()


# ---------------------------------------------------------------------- codec


def test_messages_round_trip() -> None:
    data = Data(3, 7, 600, np.arange(-6, 6, dtype=np.int16).reshape(4, 3))
    for m in (data, End(7, 1200, 2), Overrun(7, 600, 200), Ack(5, 0, ""),
              Configure(1, 20_000, (0, 1), 0), StartSweep(2, 7, 4000),
              Upload(4, to_codes(np.linspace(-10, 10, 11)))):  # fmt: skip
        (frame,) = FrameDecoder().feed(encode(m))
        assert isinstance(frame, Frame) and decode_message(frame) == m


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=60), st.integers(1, 4),
       st.data())  # fmt: skip
def test_frames_cut_the_same_however_the_stream_is_split(values: list[int], ch: int,
                                                         data: st.DataObject) -> None:  # fmt: skip
    n = len(values) // ch or 1
    codes = np.resize(np.array(values, dtype=np.int16), (n, ch))
    stream = b"".join(encode(Data(i, 1, i * n, codes)) for i in range(3))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder, got = FrameDecoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[a:b])
    assert [decode_message(f) for f in got if isinstance(f, Frame)] == \
        [Data(i, 1, i * n, codes) for i in range(3)]  # fmt: skip


@given(st.binary(max_size=2000), st.integers(0, 1999), st.integers(1, 255))
def test_damage_never_raises_and_never_passes_a_bad_frame(noise: bytes, at: int,
                                                           flip: int) -> None:  # fmt: skip
    good = encode(Data(0, 1, 0, np.arange(100, dtype=np.int16).reshape(50, 2)))
    damaged = bytearray(good)
    damaged[at % len(good)] ^= flip
    decoder = FrameDecoder(max_payload=4096)
    # a damaged length may swallow what follows until a maximal frame has passed: then the
    # decoder finds its feet again
    out = decoder.feed(noise + bytes(damaged) + good * (4200 // len(good) + 2))
    frames = [f for f in out if isinstance(f, Frame)]
    (expected,) = FrameDecoder().feed(good)
    assert frames and all(f == expected for f in frames)  # never the damaged one
    assert all(isinstance(o, Frame | Corrupt) for o in out)
    assert decoder.buffered <= 8 + 4096 + 4
    for f in frames:
        with contextlib.suppress(ProtocolError):
            decode_message(f)


def test_a_sync_inside_the_samples_does_not_hold_the_next_frames_back() -> None:
    """Samples 0x5AA5, 0x0090, 0, 0x0010: the bytes a5 5a 90 00 00 00 10 00 look like a
    header claiming a 1 MiB payload; once the real frame fails its checksum the decoder
    looks inside it, and the header check keeps it from waiting there for bytes that never
    come (the End behind it would be held back until the sweep timed out)."""
    samples = np.array([[0x5AA5], [0x0090], [0], [0x0010]], dtype=np.int16)
    bad = bytearray(encode(Data(0, 1, 0, samples)))
    bad[-1] ^= 0xFF  # its checksum fails
    end = encode(End(1, 4, 1))
    out = FrameDecoder().feed(bytes(bad) + end)
    frames = [decode_message(f) for f in out if isinstance(f, Frame)]
    assert frames == [End(1, 4, 1)]


def test_an_impossible_length_does_not_make_the_buffer_grow() -> None:
    decoder = FrameDecoder()
    head = b"\xa5\x5a\x90\x00" + (MAX_PAYLOAD + 1).to_bytes(4, "little")
    out = decoder.feed(head + b"\x00" * 1000)
    assert any(isinstance(o, Corrupt) for o in out) and decoder.buffered < 16


def test_the_byte_examples_of_the_protocol_document_are_frames() -> None:
    """docs/protocols/digitizer.md stays true: each whole example decodes as one frame."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs/protocols/digitizer.md").read_text()
    examples = re.findall(r"`(a5 5a(?: [0-9a-f]{2})+)`", doc)
    whole = [bytes.fromhex(e) for e in examples if len(e.split()) > 12]  # not the cut one
    assert len(whole) >= 9
    for raw in whole:
        (frame,) = FrameDecoder().feed(raw)
        assert isinstance(frame, Frame)
        decode_message(frame)
