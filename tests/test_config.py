"""The lab config: validation errors are one line naming file, field and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acquisition.config import load_config
from acquisition.errors import ConfigError
from drivers.addresses import AddressError, parse_modbus_address

GOOD = Path(__file__).resolve().parent.parent / "config" / "lab.toml"
BIN = Path(sys.executable).parent

# (what is wrong, file text, field named in the error, words expected in the error)
BAD_CONFIGS = [
    ("TOML syntax", 'node = "lab1\n', "(syntax)", "valid TOML"),
    ("port out of range", "[mqtt]\nport = 70000\n", "mqtt.port", "less than or equal to 65535"),
    ("port not a number", '[mqtt]\nport = "eighteen"\n', "mqtt.port", "valid integer"),
    ("misspelt setting", '[mqtt]\nhots = "x"\n', "mqtt.hots", "no such setting"),
    ("unknown section", "[mqqt]\nport = 1\n", "mqqt", "no such setting"),
    ("node with a slash", 'node = "lab/1"\n', "node", "letters, digits"),
    (
        "instrument of unknown kind",
        '[[instruments]]\nid = "x"\nkind = "toaster"\naddress = "a"\n',
        "instruments[0].kind",
        "one of 'counter', 'incubator', 'harvester', 'perfusion', 'amplifier', 'digitizer' "
        "(got 'toaster')",
    ),
    (
        "counter address not a VISA socket",
        '[[instruments]]\nid = "c"\nkind = "counter"\naddress = "COM3"\n',
        "instruments[0].address",
        "TCPIP::127.0.0.1::5025::SOCKET",
    ),
    (
        "instrument id missing",
        '[[instruments]]\nkind = "counter"\naddress = "TCPIP::h::1::SOCKET"\n',
        "instruments[0].id",
        "required",
    ),
    (
        "duplicate instrument ids",
        '[[instruments]]\nid = "c"\nkind = "counter"\naddress = "TCPIP::h::1::SOCKET"\n'
        '[[instruments]]\nid = "c"\nkind = "counter"\naddress = "TCPIP::h::2::SOCKET"\n',
        "instruments",
        "unique instrument ids",
    ),
    (
        "negative time scale",
        "[simulation]\ntime_scale = -1\n",
        "simulation.time_scale",
        "greater than 0",
    ),
    (
        "wildcard in topic prefix",
        '[mqtt]\ntopic_prefix = "assay/#"\n',
        "mqtt.topic_prefix",
        "wildcards",
    ),
    (
        "incubator address not Modbus",
        '[[instruments]]\nid = "i"\nkind = "incubator"\naddress = "tcp://a"\n',
        "instruments[0].address",
        "modbus-tcp://host:port",
    ),
    (
        "harvester address not a device",
        '[[instruments]]\nid = "h"\nkind = "harvester"\naddress = "COM1"\n',
        "instruments[0].address",
        "serial device path",
    ),
    (
        "perfusion address switch out of range",
        '[[instruments]]\nid = "p"\nkind = "perfusion"\naddress = "/dev/ttyS0"\n'
        "device_address = 12\n",
        "instruments[0].device_address",
        "less than or equal to 9",
    ),
    ("plug-in not importable", 'plugins = ["no_such_lab.steps"]\n', "plugins[0]",
     "an importable module (ModuleNotFoundError"),
    ("plug-in not a module name", 'plugins = ["lab steps"]\n', "plugins",
     "Python module names"),
    ("empty broker host", '[mqtt]\nhost = ""\n', "mqtt.host", "got an empty host"),
    ("broker host with a space", '[mqtt]\nhost = "lab pc"\n', "mqtt.host", "'lab pc'"),
    ("broker host not an IPv4", '[mqtt]\nhost = "300.1.1.1"\n', "mqtt.host", "IP address"),
    (
        "tls_key without tls_cert",
        '[mqtt]\ntls_key = "client.key"\n',
        "mqtt.tls_key",
        "tls_key only together with tls_cert",
    ),
    (
        "simulation control host empty",
        '[simulation]\ncontrol_host = ""\n',
        "simulation.control_host",
        "host name",
    ),
    (
        "counter port out of range",
        '[[instruments]]\nid = "c"\nkind = "counter"\naddress = "TCPIP::h::70000::SOCKET"\n',
        "instruments[0].address",
        "a port 1-65535 (got '70000')",
    ),
    (
        "counter port 0",
        '[[instruments]]\nid = "c"\nkind = "counter"\naddress = "TCPIP::h::0::SOCKET"\n',
        "instruments[0].address",
        "a port 1-65535 (got '0')",
    ),
    (
        "counter host empty",
        '[[instruments]]\nid = "c"\nkind = "counter"\naddress = "TCPIP::::5025::SOCKET"\n',
        "instruments[0].address",
        "got an empty host",
    ),
    (
        "modbus port out of range",
        '[[instruments]]\nid = "i"\nkind = "incubator"\n'
        'address = "modbus-tcp://127.0.0.1:70000"\n',
        "instruments[0].address",
        "modbus-tcp://host:port with a port 1-65535 (got '70000')",
    ),
    (
        "modbus host invalid",
        '[[instruments]]\nid = "i"\nkind = "incubator"\naddress = "modbus-tcp://a..b:502"\n',
        "instruments[0].address",
        "host name or IP address (got 'a..b')",
    ),
    (
        "modbus RTU option unknown",
        '[[instruments]]\nid = "i"\nkind = "incubator"\n'
        'address = "modbus-rtu:///dev/ttyS0?speed=9600"\n',
        "instruments[0].address",
        "serial options baud",
    ),
    (
        "modbus RTU parity",
        '[[instruments]]\nid = "i"\nkind = "incubator"\n'
        'address = "modbus-rtu:///dev/ttyS0?parity=X"\n',
        "instruments[0].address",
        "parity: one of N, E, O, M, S (got 'X')",
    ),
    (
        "modbus RTU over a socket, port out of range",
        '[[instruments]]\nid = "i"\nkind = "incubator"\n'
        'address = "modbus-rtu://socket://10.0.0.5:65536"\n',
        "instruments[0].address",
        "a port 1-65535 (got '65536')",
    ),
    (
        "serial socket port out of range",
        '[[instruments]]\nid = "h"\nkind = "harvester"\naddress = "socket://ser2net:99999"\n',
        "instruments[0].address",
        "socket://host:port with a port 1-65535 (got '99999')",
    ),
    (
        "serial socket without a port",
        '[[instruments]]\nid = "h"\nkind = "harvester"\naddress = "socket://ser2net"\n',
        "instruments[0].address",
        "socket://host:port",
    ),
    (
        "bad journal mode",
        '[journal]\nsynchronous = "sometimes"\n',
        "journal.synchronous",
        "'normal'",
    ),
]


@pytest.mark.parametrize(
    ("what", "text", "field", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_names_file_field_and_expectation(
    tmp_path: Path, what: str, text: str, field: str, expected: str
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("command", ["assayd", "assay"])
def test_commands_exit_2_with_one_line_on_a_bad_config(tmp_path: Path, command: str) -> None:
    path = tmp_path / "lab.toml"
    path.write_text("[mqtt]\nport = 0\n")
    args = [str(BIN / command), "--config", str(path)]
    if command == "assay":
        args.append("status")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{path}: mqtt.port: " in lines[0]
    assert "Traceback" not in proc.stderr


def test_environment_overrides_deep_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSAY_MQTT__PORT", "1884")
    monkeypatch.setenv("ASSAY_NODE", "bench7")
    cfg = load_config(GOOD)
    assert cfg.mqtt.port == 1884
    assert cfg.node == "bench7"
    assert cfg.mqtt.host == "127.0.0.1"  # the rest of [mqtt] still comes from the file
    assert cfg.topic("status") == "assay/bench7/status"


def test_bad_environment_override_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSAY_MQTT__PORT", "x")
    with pytest.raises(ConfigError, match=r"mqtt\.port: .*valid integer"):
        load_config(GOOD)


def test_password_is_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[mqtt]\nusername = "u"\npassword = "hunter2"\n')
    cfg = load_config(path)
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(cfg.redacted())


def test_shipped_config_is_valid() -> None:
    cfg = load_config(GOOD)
    assert [i.kind for i in cfg.instruments] == ["counter", "incubator", "harvester", "perfusion",
                                                 "amplifier", "digitizer"]  # fmt: skip


def test_errors_never_echo_a_password(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text("[mqtt]\npassword = 123456789\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "mqtt.password" in str(info.value)
    assert "123456789" not in str(info.value)


@settings(max_examples=300)
@given(st.from_regex(r"modbus-(tcp|rtu)://[a-z0-9.:\[\]/?=&_-]{0,30}", fullmatch=True))
def test_every_modbus_address_the_config_accepts_the_driver_accepts(address: str) -> None:
    from drivers.incubator.link import parse_address

    try:
        parse_modbus_address(address)
    except AddressError:
        return
    parse_address(address)  # a ValueError here would be a traceback when the daemon starts
