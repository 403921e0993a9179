"""The instrument-kind registry: the config accepts exactly the registered kinds (a plug-in
adds its own, with its own settings), the daemon makes each driver through its kind's
entry, and steps ask for a role, so another vendor's instrument of a role plugs in."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from acquisition.config import load_config
from acquisition.errors import ConfigError
from acquisition.instruments import make_driver
from acquisition.kinds import instrument_kinds
from drivers.clock import MonotonicClock
from drivers.counter import CounterDriver
from drivers.roles import Counter, Harvester, Incubator, Perfusion

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
        "'perfusion' (got 'balance')")


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
