"""The instrument-kind registry: the config accepts exactly the registered kinds (a plug-in
adds its own, with its own settings), the daemon makes each driver through its kind's
entry, and steps ask for a role, so another vendor's instrument of a role plugs in."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from acquisition.cli.client import DaemonClient
from acquisition.config import load_config
from acquisition.errors import CommandError, ConfigError
from acquisition.instruments import make_driver
from acquisition.kinds import instrument_kinds
from devtools.mosquitto import MosquittoBroker
from devtools.stack import DaemonProcess, SimBenchProcess, write_lab_config
from drivers.clock import MonotonicClock
from drivers.counter import CounterDriver
from drivers.roles import Counter, Harvester, Incubator, Perfusion
from tests.e2e import wait_connected

REPO = str(Path(__file__).resolve().parents[1])
BALANCE = '[[instruments]]\nid = "b1"\nkind = "balance"\naddress = "tcp://10.0.0.5:4001"\n'


def test_the_shipped_kinds_and_their_roles() -> None:
    kinds = instrument_kinds()
    assert list(kinds)[:4] == ["counter", "incubator", "harvester", "perfusion"]
    assert [kinds[k].role for k in ("counter", "incubator", "harvester", "perfusion")] == [
        Counter, Incubator, Harvester, Perfusion]


def test_a_plug_in_kind_is_accepted_with_its_own_settings(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('plugins = ["tests.plugin_kinds"]\n' + BALANCE + "resolution_mg = 0.01\n")
    importlib.reload(importlib.import_module("tests.plugin_kinds"))  # registered anew
    config = load_config(path)
    (balance,) = config.instruments
    assert (balance.kind, balance.resolution_mg) == ("balance", 0.01)  # type: ignore[union-attr]
    driver: Any = make_driver(balance, MonotonicClock())
    assert type(driver).__name__ == "BalanceDriver" and driver.instrument_id == "b1"
    path.write_text('plugins = ["tests.plugin_kinds"]\n' + BALANCE + "resolution_mg = -1\n")
    with pytest.raises(ConfigError, match=r"instruments\[0\]\.resolution_mg"):
        load_config(path)


def test_without_its_plug_in_the_kind_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(BALANCE)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: instruments[0].kind: one of 'counter', 'incubator', 'harvester', "
        "'perfusion', 'amplifier', 'digitizer' (got 'balance')")


class _OtherVendorsCounter:
    """A second vendor's counter: its own class, nothing inherited, the role's methods."""

    instrument_id = "c2"
    connected = True

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def identify(self) -> object: ...
    async def readings(self) -> Any: ...
    async def status(self) -> Any: ...
    def count_plate(self, **kwargs: Any) -> Any: ...
    async def abort(self) -> None: ...
    async def clear_fault(self) -> None: ...


def test_a_second_vendors_counter_plays_the_counter_role() -> None:
    assert isinstance(_OtherVendorsCounter(), Counter)
    assert not isinstance(_OtherVendorsCounter(), Harvester)  # no mat, no harvest
    # the shipped driver plays it too (mypy checks all four statically, drivers/roles.py)
    driver = CounterDriver("TCPIP::127.0.0.1::1::SOCKET")
    assert isinstance(driver, Counter) and not isinstance(driver, Incubator)


def test_a_plug_in_named_in_the_environment_registers_its_kind_before_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(BALANCE)
    monkeypatch.setenv("ASSAY_PLUGINS", '["tests.plugin_kinds"]')
    importlib.reload(importlib.import_module("tests.plugin_kinds"))
    assert [i.kind for i in load_config(path).instruments] == ["balance"]


def test_a_plug_in_that_fails_to_import_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken_lab_plugin.py").write_text("raise RuntimeError('first\\nsecond')\n")
    path = tmp_path / "lab.toml"
    path.write_text('plugins = ["broken_lab_plugin"]\n')
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError) as err:
            load_config(path)
    finally:
        sys.path.remove(str(tmp_path))
    assert str(err.value) == (
        f"{path}: plugins[0]: an importable module (RuntimeError: first)")


@pytest.mark.slow
async def test_a_kind_of_another_name_playing_the_counter_role_runs_the_count_step(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """No step edited: the lab's only counter is an ``acme-counter`` (tests/plugin_counter),
    the count-plate protocol's count step finds it by its role and counts on it."""
    lab = write_lab_config(tmp_path, broker_port=broker.port, time_scale=2000.0)
    daemon_cfg = tmp_path / "lab-acme.toml"
    text = lab.config_path.read_text(encoding="utf-8")
    assert text.count('kind = "counter"') == 1
    daemon_cfg.write_text('plugins = ["tests.plugin_counter"]\n'
                          + text.replace('kind = "counter"', 'kind = "acme-counter"'))  # fmt: skip
    # the daemon imports the plug-in from this checkout (tests is not an installed package)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    acme = replace(lab, config_path=daemon_cfg, env={**lab.env, **env})
    with SimBenchProcess(lab), DaemonProcess(acme):
        async with DaemonClient(load_config(daemon_cfg)) as client:
            await wait_connected(client)
            (inst,) = await client.request("instruments")
            assert inst["kind"] == "acme-counter", inst
            run = (await client.request("run.start", {"count_time_s": 5}))["run"]
            async with asyncio.timeout(60):
                while (res := await client.request("results", {"run": run}))["stop"] is None:
                    await asyncio.sleep(0.05)
    assert res["state"] == "completed" and len(res["wells"]) == 96
    docs = [json.loads(p) for p in _documents(lab.journal_path, run)]
    (entry,) = docs[0]["instruments"].values()
    assert (entry["kind"], entry["role"]) == ("acme-counter", "counter")
    assert entry["identity"]["vendor"] == "Acme"


def _documents(journal: Path, run: str) -> list[bytes]:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT payload FROM documents WHERE run = ? ORDER BY seq", (run,))
        return [bytes(r[0]) for r in rows.fetchall()]


def test_a_step_refuses_an_instrument_that_does_not_play_its_role(tmp_path: Path) -> None:
    from acquisition.commands import ProtocolRunArgs, RunStartArgs
    from acquisition.engine.launch import setup_from_args

    path = tmp_path / "lab.toml"
    path.write_text('plugins = ["tests.plugin_kinds", "tests.plugin_counter"]\n' + BALANCE
                    + '[[instruments]]\nid = "c9"\nkind = "acme-counter"\n'
                    'address = "TCPIP::127.0.0.1::5025::SOCKET"\n')  # fmt: skip
    importlib.reload(importlib.import_module("tests.plugin_kinds"))
    importlib.reload(importlib.import_module("tests.plugin_counter"))
    config = load_config(path)
    setup = asyncio.run(setup_from_args(config, RunStartArgs(instrument="c9"), "x" * 8))
    assert setup.instruments == {"counter": "c9"}
    with pytest.raises(CommandError, match=r"args.instrument: 'b1' is a balance, not a counter"):
        asyncio.run(setup_from_args(config, RunStartArgs(instrument="b1"), "x" * 8))
    protocol = ('name = "p"\n[[steps]]\ntype = "count"\ninstrument = "b1"\n'
                'isotope = "H3"\ncount_time = "1 s"\n')  # fmt: skip
    with pytest.raises(CommandError, match=r"steps\[0\]\.instrument: a counter of the lab "
                                           r"config \(c9\), got 'b1'"):  # fmt: skip
        asyncio.run(setup_from_args(config, ProtocolRunArgs(protocol="p", protocol_toml=protocol),
                                    "x" * 8))  # fmt: skip
