"""The incubator simulator through a plain pymodbus client over real Modbus TCP (and RTU over
TCP): the register map, exceptions, physics on a VirtualClock, faults, the world hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from drivers.clock import VirtualClock
from drivers.incubator.registers import (
    NO_VALUE,
    Reg,
    decode_float,
    decode_scaled,
    decode_status,
    encode_float,
    encode_scaled,
    float_address,
)
from simulators.incubator import (
    IncubatorSimHandle,
    IncubatorSimSpec,
    IncubatorSimulator,
    start_incubator_simulator,
)
from simulators.thermal import ThermalModel, ThermalParams


@dataclass
class FakeWorld:
    incubators: dict[str, tuple[Callable[[], float], Callable[[], bool]]] = field(
        default_factory=dict)

    def register_incubator(self, instrument_id: str, chamber_temperature_c: Callable[[], float],
                           shaking: Callable[[], bool]) -> None:
        self.incubators[instrument_id] = (chamber_temperature_c, shaking)


@dataclass
class Bench:
    handle: IncubatorSimHandle
    clock: VirtualClock
    world: FakeWorld
    client: AsyncModbusTcpClient

    @property
    def sim(self) -> IncubatorSimulator:
        return self.handle.simulator

    async def read(self, address: int, count: int = 1) -> list[int]:
        reply = await self.client.read_holding_registers(address, count=count, device_id=1)
        assert not reply.isError(), reply
        return list(reply.registers)

    async def value(self, address: int) -> float | None:
        return decode_scaled((await self.read(address))[0], 1)

    async def write(self, address: int, word: int) -> int | None:
        """Write; None if accepted, else the exception code."""
        reply = await self.client.write_register(address, word, device_id=1)
        return int(reply.exception_code) if reply.isError() else None

    async def exception_reading(self, address: int, count: int = 1) -> int:
        reply = await self.client.read_holding_registers(address, count=count, device_id=1)
        assert reply.isError()
        return int(reply.exception_code)


def _client(port: int, timeout: float = 2.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0,
                                reconnect_delay=0)


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    clock, world = VirtualClock(), FakeWorld()
    handle = await start_incubator_simulator(IncubatorSimSpec(rtu_port=0), clock, world)
    client = _client(handle.simulator.port)
    try:
        assert await client.connect()
        yield Bench(handle, clock, world, client)
    finally:
        client.close()
        await handle.stop()


async def test_register_map_initial_values(bench: Bench) -> None:
    assert await bench.read(Reg.PV, 5) == [210, 210, 0, 0, 210]
    assert await bench.read(Reg.SP1, 3) == [210, 0, 0]
    assert await bench.read(Reg.OUTPUT_HIGH, 2) == [1000, 0]
    assert await bench.read(Reg.SP_RATE) == [0]
    assert await bench.read(Reg.STATUS) == [0]
    assert await bench.read(Reg.LOOP_BREAK_TIME) == [0]
    assert await bench.read(Reg.SHAKER_ON, 3) == [0, 300, 0]


@pytest.mark.parametrize(("address", "count"), [(10, 1), (0, 1), (1, 6), (76, 1), (303, 1),
                                                (0x8001, 1)])
async def test_unmapped_addresses_answer_exception_02(
    bench: Bench, address: int, count: int
) -> None:
    assert await bench.exception_reading(address, count) == 2


async def test_refused_writes(bench: Bench) -> None:
    assert await bench.write(Reg.PV, 300) == 2  # read-only
    assert await bench.write(Reg.STATUS, 0) == 2
    assert await bench.write(10, 1) == 2  # unmapped
    assert await bench.write(Reg.TARGET_SP, encode_scaled(99.0, 1)) == 3  # above 60 C
    assert await bench.write(Reg.TARGET_SP, NO_VALUE) == 3
    assert await bench.write(Reg.SHAKER_ON, 2) == 3
    assert await bench.write(Reg.SHAKER_RPM_SP, 5) == 3
    assert await bench.write(Reg.OUTPUT_LOW, encode_scaled(150.0, 1)) == 3
    assert bench.sim.writes.total() == 0
    assert await bench.value(Reg.TARGET_SP) == 21.0


async def test_a_multi_register_write_is_all_or_nothing(bench: Bench) -> None:
    async def write(address: int, words: list[int]) -> int | None:
        reply = await bench.client.write_registers(address, words, device_id=1)
        return int(reply.exception_code) if reply.isError() else None

    sp = [encode_scaled(37.0, 1), encode_scaled(30.0, 1)]
    assert await write(Reg.SP1, [*sp, encode_scaled(99.0, 1)]) == 3  # the last is refused
    assert await bench.read(Reg.SP1, 3) == [210, 0, 0]  # ... so none was applied
    assert await write(Reg.OUTPUT_HIGH, [encode_scaled(40.0, 1), encode_scaled(50.0, 1)]) == 3
    assert await bench.read(Reg.OUTPUT_HIGH, 2) == [1000, 0]  # low 50 > the new high 40
    assert bench.sim.writes.total() == 0
    assert await write(Reg.SP1, [*sp, encode_scaled(25.0, 1)]) is None
    assert await bench.read(Reg.SP1, 3) == [370, 300, 250]
    assert await write(Reg.OUTPUT_HIGH, [encode_scaled(60.0, 1), encode_scaled(50.0, 1)]) is None
    assert await bench.read(Reg.OUTPUT_HIGH, 2) == [600, 500]
    assert bench.sim.writes.total() == 5


async def test_setpoint_writes_are_counted_and_mirrored_in_sp1(bench: Bench) -> None:
    for _ in range(2):
        assert await bench.write(Reg.TARGET_SP, 370) is None
    assert bench.sim.writes[Reg.TARGET_SP] == 2
    assert bench.sim.eeprom_writes == 2
    assert await bench.read(Reg.SP1) == [370]
    assert await bench.write(Reg.SHAKER_ON, 1) is None
    assert bench.sim.eeprom_writes == 2  # the shaker is not EEPROM


async def test_float_mirror(bench: Bench) -> None:
    high, low = await bench.read(float_address(Reg.PV), 2)
    assert decode_float(high, low) == pytest.approx(21.0)
    reply = await bench.client.write_registers(float_address(Reg.TARGET_SP),
                                               list(encode_float(36.5)), device_id=1)
    assert not reply.isError()
    assert await bench.value(Reg.TARGET_SP) == 36.5
    half = await bench.client.write_registers(float_address(Reg.TARGET_SP) + 1, [0, 0],
                                              device_id=1)
    assert half.isError() and half.exception_code == 2


async def test_a_90_minute_incubation_is_one_integration(bench: Bench) -> None:
    await bench.write(Reg.TARGET_SP, 370)
    bench.clock.advance(90 * 60)
    pv, _, _, output, wsp = (decode_scaled(w, 1) for w in await bench.read(Reg.PV, 5))
    assert pv == pytest.approx(37.0, abs=0.1)
    assert wsp == 37.0
    assert output == pytest.approx(100 * 16 / 30, abs=1.0)  # heater holds 16 C over ambient
    chamber, _ = bench.world.incubators["incubator"]
    assert chamber() == pytest.approx(37.0, abs=0.05)


async def test_rate_limit_ramps_the_working_setpoint_from_the_pv(bench: Bench) -> None:
    assert await bench.write(Reg.SP_RATE, 10) is None  # 1.0 C/min
    await bench.write(Reg.TARGET_SP, 310)
    bench.clock.advance(60)
    assert await bench.value(Reg.WORKING_SP) == pytest.approx(22.0)
    bench.clock.advance(600)
    assert await bench.value(Reg.WORKING_SP) == 31.0


async def test_door_open_drops_the_temperature_and_closing_recovers(bench: Bench) -> None:
    await bench.write(Reg.TARGET_SP, 370)
    bench.clock.advance(3600)
    bench.sim.inject_fault("door_open")
    bench.clock.advance(60)
    pv = await bench.value(Reg.PV)
    assert pv is not None and pv < 35.0
    bench.sim.close_door()
    bench.clock.advance(3600)
    assert await bench.value(Reg.PV) == pytest.approx(37.0, abs=0.1)


async def test_sensor_break(bench: Bench) -> None:
    await bench.write(Reg.TARGET_SP, 370)
    bench.clock.advance(600)
    bench.sim.inject_fault("sensor_break")
    bench.clock.advance(1)
    pv, _, _, output, _ = await bench.read(Reg.PV, 5)
    assert pv == NO_VALUE and output == 0
    assert decode_status((await bench.read(Reg.STATUS))[0]).sensor_break
    high, low = await bench.read(float_address(Reg.PV), 2)
    assert (high, low) == encode_float(float("nan"))
    bench.sim.inject_fault("clear")
    assert await bench.value(Reg.PV) is not None
    assert not decode_status((await bench.read(Reg.STATUS))[0]).faults


async def test_stuck_heater_raises_the_over_temperature_alarm(bench: Bench) -> None:
    await bench.write(Reg.TARGET_SP, 370)
    bench.clock.advance(3600)
    bench.sim.inject_fault("over_temperature")
    bench.clock.advance(600)
    pv = await bench.value(Reg.PV)
    assert pv is not None and pv > 40.0
    assert decode_status((await bench.read(Reg.STATUS))[0]).alarms == (True, False, False, False)
    bench.sim.inject_fault("clear")
    bench.clock.advance(3600)
    assert not decode_status((await bench.read(Reg.STATUS))[0]).alarms[0]


async def test_loop_break_when_full_output_cannot_move_the_pv(bench: Bench) -> None:
    bench.sim.open_door()
    await bench.write(Reg.TARGET_SP, 600)
    bench.clock.advance(3600)  # door open: the PV settles near 30 C at 100 %
    assert await bench.write(Reg.LOOP_BREAK_TIME, 60) is None
    bench.clock.advance(130)
    assert decode_status((await bench.read(Reg.STATUS))[0]).loop_break


async def test_shaker_follows_its_setpoint(bench: Bench) -> None:
    _, shaking = bench.world.incubators["incubator"]
    assert await bench.write(Reg.SHAKER_RPM_SP, 800) is None
    assert await bench.write(Reg.SHAKER_ON, 1) is None
    bench.clock.advance(0.5)
    assert await bench.read(Reg.SHAKER_RPM) == [250]
    bench.clock.advance(5)
    assert await bench.read(Reg.SHAKER_ON, 3) == [1, 800, 800]
    assert shaking()
    await bench.write(Reg.SHAKER_ON, 0)
    bench.clock.advance(5)
    assert await bench.read(Reg.SHAKER_RPM) == [0]
    assert not shaking()


async def test_stall_answers_nothing_and_applies_nothing(bench: Bench) -> None:
    bench.sim.inject_fault("stall")
    slow = _client(bench.sim.port, timeout=0.3)
    try:
        assert await slow.connect()
        with pytest.raises(ModbusIOException):
            await slow.write_register(Reg.TARGET_SP, 300, device_id=1)
    finally:
        slow.close()
    bench.clock.advance(bench.sim.spec.stall_s)
    assert await bench.value(Reg.TARGET_SP) == 21.0
    assert bench.sim.writes.total() == 0


async def test_disconnect_resets_every_client(bench: Bench) -> None:
    assert bench.sim.snapshot()["connections"] == 1
    bench.sim.inject_fault("disconnect")
    for _ in range(200):
        if not bench.client.connected:
            break
        await asyncio.sleep(0.005)  # the RST reaches the client's protocol
    assert not bench.client.connected
    again = _client(bench.sim.port)
    try:
        assert await again.connect()
        assert (await again.read_holding_registers(Reg.PV, device_id=1)).registers == [210]
    finally:
        again.close()


async def test_rtu_framing_over_tcp(bench: Bench) -> None:
    assert bench.handle.rtu_address == f"modbus-rtu://socket://127.0.0.1:{bench.sim.rtu_port}"
    rtu = AsyncModbusSerialClient(f"socket://127.0.0.1:{bench.sim.rtu_port}",
                                  framer=FramerType.RTU, timeout=2, retries=0, reconnect_delay=0)
    try:
        assert await rtu.connect()
        reply = await rtu.read_holding_registers(Reg.PV, count=5, device_id=1)
        assert reply.registers == [210, 210, 0, 0, 210]
        bad = await rtu.read_holding_registers(10, device_id=1)
        assert bad.isError() and bad.exception_code == 2
    finally:
        rtu.close()


async def test_factory_describes_and_rejects_unknown_faults(bench: Bench) -> None:
    text = bench.handle.describe()
    assert f"127.0.0.1:{bench.sim.port}" in text and "RTU" in text
    assert bench.handle.address == f"modbus-tcp://127.0.0.1:{bench.sim.port}"
    with pytest.raises(ValueError, match="unknown fault"):
        bench.sim.inject_fault("meltdown")  # type: ignore[arg-type]
    assert bench.sim.snapshot()["temperature_c"] == 21.0


# ---------------------------------------------------------------------- pure physics

def test_pi_loop_settles_without_overshoot_or_windup() -> None:
    model = ThermalModel()
    model.set_target(37.0)
    peak = 0.0
    for _ in range(3600):
        model.advance(1.0)
        peak = max(peak, model.temperature_c)
    assert peak < 37.3
    assert model.temperature_c == pytest.approx(37.0, abs=0.01)


def test_output_limits_clamp_the_heater() -> None:
    model = ThermalModel(ThermalParams())
    model.set_output_limits(0.0, 40.0)
    model.set_target(45.0)
    model.advance(7200)
    assert model.output_pct == 40.0
    assert model.temperature_c == pytest.approx(21.0 + 0.4 * 30.0, abs=0.1)
    with pytest.raises(ValueError):
        model.set_output_limits(50.0, 40.0)
    with pytest.raises(ValueError):
        ThermalParams(time_constant_s=0)
