"""Config files that are wrong as files, or that name files which are wrong: one line naming
the file, the field and what was expected, exit 2, from assayd, assay and assay-sim alike.

The seven configs of issue 9 (plus the empty file) go through the real console scripts; the
rest of the class (symlinks, directories, TLS material, journal paths, any bytes at all)
through the loaders in-process.
"""

from __future__ import annotations

import os
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acquisition.config import load_config
from acquisition.config_checks import check_journal_path, check_tls_files
from acquisition.errors import ConfigError
from devtools.certs import issue, make_ca
from drivers.toml_file import TomlFileError, parse_toml_bytes
from simulators.config import ConfigProblem, load_bench_config

BIN = Path(sys.executable).parent
INCUBATOR_70000 = (
    '[[instruments]]\nid = "incubator"\nkind = "incubator"\n'
    'address = "modbus-tcp://127.0.0.1:70000"\n'
)

Writer = Callable[[Path], bytes]


def _journal_is_a_directory(tmp: Path) -> bytes:
    (tmp / "journal.d").mkdir()
    return f'[journal]\npath = "{tmp / "journal.d"}"\n'.encode()


def _journal_under_a_file(tmp: Path) -> bytes:
    (tmp / "plain").write_text("x")  # unwritable as a directory, for root too
    return f'[journal]\npath = "{tmp / "plain" / "x.db"}"\n'.encode()


# (case, file contents, field named, programs that read that part of the config)
SEVEN: list[tuple[str, Writer, str, tuple[str, ...]]] = [
    ("binary junk", lambda _: bytes(range(256)) * 4, "(encoding)", ("assayd", "assay", "sim")),
    ("UTF-16", lambda _: 'node = "lab1"\n'.encode("utf-16"), "(encoding)",
     ("assayd", "assay", "sim")),
    ("invalid UTF-8 in a string", lambda _: b'node = "lab\xe91"\n', "node",
     ("assayd", "assay", "sim")),
    ("empty host", lambda _: b'[mqtt]\nhost = ""\n', "mqtt.host", ("assayd", "assay")),
    ("journal is a directory", _journal_is_a_directory, "journal.path", ("assayd",)),
    ("journal under a regular file", _journal_under_a_file, "journal.path", ("assayd",)),
    ("modbus port 70000", lambda _: INCUBATOR_70000.encode(), "instruments[0].address",
     ("assayd", "assay", "sim")),
    ("missing tls_ca", lambda t: f'[mqtt]\ntls_ca = "{t / "ca.pem"}"\n'.encode(), "mqtt.tls_ca",
     ("assayd", "assay")),
    ("empty file", lambda _: b"", "(file)", ("assayd", "assay", "sim")),
]  # fmt: skip
COMMANDS = {
    "assayd": lambda cfg: [str(BIN / "assayd"), "--config", cfg],
    "assay": lambda cfg: [str(BIN / "assay"), "--config", cfg, "status"],
    "sim": lambda cfg: [str(BIN / "assay-sim"), "bench", "--config", cfg],
}
MATRIX = [
    pytest.param(writer, field, program, id=f"{program}-{case}")
    for case, writer, field, programs in SEVEN
    for program in programs
]


@pytest.mark.parametrize(("writer", "field", "program"), MATRIX)
def test_the_console_scripts_say_one_line_and_exit_2(
    tmp_path: Path, writer: Writer, field: str, program: str
) -> None:
    path = tmp_path / "lab.toml"
    path.write_bytes(writer(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    # The broker port is closed: if the error were not found before connecting, assayd would
    # retry it until the timeout below fails the test.
    proc = subprocess.run(
        COMMANDS[program](str(path)), capture_output=True, text=True, timeout=20,
        check=False, cwd=tmp_path, env={**env, "ASSAY_MQTT__PORT": "9"},
    )  # fmt: skip
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert f"{path}: {field}: " in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_missing_tls_ca_names_the_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(f'[mqtt]\ntls_ca = "{tmp_path / "ca.pem"}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "mqtt.tls_ca"
    assert f"{tmp_path / 'ca.pem'}: not found" in info.value.expected


def test_a_journal_sqlite_cannot_open_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Found only when SQLite opens it: a regular, writable file that is no database."""
    journal = tmp_path / "journal.sqlite3"
    journal.write_text("not a database\n" * 100)
    path = tmp_path / "lab.toml"
    path.write_text(f'[mqtt]\nport = 9\n[journal]\npath = "{journal}"\n')
    proc = subprocess.run(
        [str(BIN / "assayd"), "--config", str(path)],
        capture_output=True, text=True, timeout=20, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"assayd: {path}: journal.path: a usable SQLite journal ({journal}: cannot initialise:"
        " file is not a database)"
    ]


# -- the file itself ---------------------------------------------------------------------


def _file_cases(tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """case -> (path given, field, words of the expectation)"""
    (tmp / "dir.toml").mkdir()
    (tmp / "loop-a").symlink_to(tmp / "loop-b")
    (tmp / "loop-b").symlink_to(tmp / "loop-a")
    (tmp / "dangling.toml").symlink_to(tmp / "gone.toml")
    (tmp / "plain").write_text("x")
    (tmp / "comments.toml").write_text("# node = 'lab1'\n\n")
    (tmp / "huge.toml").write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    os.mkfifo(tmp / "fifo.toml")
    return {
        "missing": (tmp / "nope.toml", "(file)", "not found"),
        "a directory": (tmp / "dir.toml", "(file)", "this is a directory"),
        "a symlink loop": (tmp / "loop-a", "(file)", "symbolic links"),
        "a broken symlink": (tmp / "dangling.toml", "(file)", "broken symbolic link"),
        "under a regular file": (tmp / "plain" / "lab.toml", "(file)", "Not a directory"),
        "a FIFO (would block)": (tmp / "fifo.toml", "(file)", "not a device, pipe or socket"),
        "only comments": (tmp / "comments.toml", "(file)", "only comments"),
        "over 1 MiB": (tmp / "huge.toml", "(file)", "at most 1048576 bytes"),
    }


CASE_NAMES = [
    "missing", "a directory", "a symlink loop", "a broken symlink", "under a regular file",
    "a FIFO (would block)", "only comments", "over 1 MiB",
]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_bad_file_is_one_line_for_the_daemon_and_the_bench(tmp_path: Path, case: str) -> None:
    path, field, words = _file_cases(tmp_path)[case]
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {field}: ") and words in str(info.value)
    problem = load_bench_config(path)
    assert isinstance(problem, ConfigProblem)
    assert (problem.file, problem.field, problem.expected) == (
        str(path), info.value.field, info.value.expected
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('node = "lab1"\n')
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"\(file\): a readable TOML file \(Permission denied"):
        load_config(path)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (b'[mqtt]\nhost = "caf\xe9"\n', "mqtt.host", "byte 0xe9 at line 2, column 12"),
        (b'[[instruments]]\nid = "c"\n[[instruments]]\nid = "\xff"\n', "instruments[1].id",
         "byte 0xff at line 4"),
        (b"node = lab\xff\n", "(encoding)", "byte 0xff at line 1, column 11"),
        (b"\xfe\xff\x00n", "(encoding)", "the file is UTF-16"),
        (b"\xff\xfe\x00\x00n\x00\x00\x00", "(encoding)", "the file is UTF-32"),
        (b"n\x00o\x00", "(encoding)", "a NUL byte at line 1, column 2"),
        (b"a = " + b"[" * 5000, "(syntax)", "nested less deeply"),
    ],
)  # fmt: skip
def test_what_is_wrong_with_the_bytes_is_located(data: bytes, field: str, words: str) -> None:
    with pytest.raises(TomlFileError) as info:
        parse_toml_bytes(data)
    assert info.value.field == field
    assert words in info.value.expected


def test_a_utf8_byte_order_mark_is_fine() -> None:
    assert parse_toml_bytes(b'\xef\xbb\xbfnode = "lab1"\n') == {"node": "lab1"}


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(alphabet=string.printable, max_size=200).map(
    str.encode))  # fmt: skip
def test_any_bytes_give_a_config_or_a_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "lab.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    assert isinstance(load_bench_config(path), object)  # returns; never raises


# -- what the config names: TLS files and the journal ------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root)
    client = issue(ca, root, "client", server=False)
    other = issue(ca, root, "other", server=False)
    junk = root / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return {"ca": ca.cert, "cert": client.cert, "key": client.key, "other_key": other.key,
            "junk": junk, "dir": root}  # fmt: skip


def _mqtt(**fields: object) -> object:
    from acquisition.config import MqttConfig

    return MqttConfig.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"tls_ca": "ca"}, None, ""),
        ({"tls_cert": "cert", "tls_key": "key"}, None, ""),
        ({"tls_ca": "dir"}, "mqtt.tls_ca", "a directory"),
        ({"tls_ca": "junk"}, "mqtt.tls_ca", "PEM CA certificates"),
        ({"tls_ca": "ca", "tls_cert": "missing"}, "mqtt.tls_cert", "missing: not found"),
        ({"tls_ca": "ca", "tls_cert": "cert", "tls_key": "missing"}, "mqtt.tls_key",
         "missing: not found"),
        ({"tls_ca": "ca", "tls_cert": "cert"}, "mqtt.tls_cert", "or set tls_key"),
        ({"tls_ca": "ca", "tls_cert": "cert", "tls_key": "other_key"}, "mqtt.tls_key",
         "does not match"),
        ({"tls_ca": "ca", "tls_cert": "cert", "tls_key": "ca"}, "mqtt.tls_key",
         "an unencrypted PEM private key"),
        ({"tls_ca": "ca", "tls_cert": "junk", "tls_key": "key"}, "mqtt.tls_cert",
         "a PEM client certificate"),
    ],
)  # fmt: skip
def test_tls_files_are_checked_for_their_role(
    pki: dict[str, Path], fields: dict[str, str], field: str | None, words: str
) -> None:
    paths = {k: pki.get(v, pki["dir"] / v) for k, v in fields.items()}
    problem = check_tls_files(_mqtt(**paths))  # type: ignore[arg-type]
    if field is None:
        assert problem is None
    else:
        assert problem is not None and problem[0] == field and words in problem[1], problem


def test_a_passphrase_protected_key_is_refused_not_prompted_for(pki: dict[str, Path]) -> None:
    encrypted = pki["dir"] / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki["key"]), "-out", str(encrypted), "-aes256",
         "-passout", "pass:secret"], check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    problem = check_tls_files(_mqtt(tls_cert=pki["cert"], tls_key=encrypted))  # type: ignore[arg-type]
    assert problem == ("mqtt.tls_key", f"an unencrypted PEM private key ({encrypted} needs a "
                                       "passphrase)")  # fmt: skip


def test_journal_paths(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert check_journal_path(tmp_path / "new" / "deeper" / "journal.sqlite3") is None
    assert check_journal_path(tmp_path / "plain") is None  # an existing file: SQLite decides
    assert check_journal_path(Path("relative.sqlite3")) is None
    for path, words in [
        (tmp_path / "dir", "is a directory"),
        (tmp_path / "plain" / "x.db", f"{tmp_path / 'plain'} is not a directory"),
        (tmp_path / "plain" / "sub" / "x.db", f"{tmp_path / 'plain'} is not a directory"),
        (tmp_path / "dangling", "broken symbolic link"),
        (tmp_path / "dangling" / "x.db", "broken symbolic link"),
    ]:
        problem = check_journal_path(path)
        assert problem is not None and problem[0] == "journal.path", path
        assert words in problem[1], problem
