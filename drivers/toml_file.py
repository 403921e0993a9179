"""Read a TOML config file so that whatever is wrong with it is one line, never a traceback.

``tomllib.load`` lets a ``UnicodeDecodeError`` through for a UTF-16 file or a stray Latin-1
byte, ``Path.is_file`` calls a symlink loop "not found", and an empty file parses to ``{}``.
:func:`read_toml` tells each case apart and raises :class:`TomlFileError` with the field to
blame (``(file)``, ``(encoding)``, ``(syntax)``, or the setting whose string holds the bad
bytes) and what was expected. Shared by the daemon's and the simulated bench's config
loaders, which is why it lives in ``drivers``: the one package both may import.
"""

from __future__ import annotations

import codecs
import stat
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["MAX_CONFIG_BYTES", "TomlFileError", "parse_toml_bytes", "read_toml"]

MAX_CONFIG_BYTES = 1 << 20
"""A lab config is a few kilobytes; a bigger file is the wrong file."""

_UNICODE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class TomlFileError(ValueError):
    """``field``: what to blame; ``expected``: what the file should have been."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: {expected}")
        self.field = field
        self.expected = expected


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML of the regular file at ``path`` (UTF-8, a UTF-8 BOM tolerated)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        why = "a broken symbolic link" if path.is_symlink() else "not found"
        raise TomlFileError("(file)", f"an existing TOML file ({why})") from None
    except OSError as exc:  # a symlink loop, a parent that is a file, a parent we may not enter
        raise TomlFileError("(file)", f"a readable TOML file ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise TomlFileError("(file)", "a TOML file (this is a directory)")
    if not stat.S_ISREG(info.st_mode):
        raise TomlFileError("(file)", "a regular TOML file (not a device, pipe or socket)")
    if info.st_size > MAX_CONFIG_BYTES:
        raise TomlFileError(
            "(file)", f"a TOML file of at most {MAX_CONFIG_BYTES} bytes (it has {info.st_size})"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TomlFileError("(file)", f"a readable TOML file ({exc.strerror})") from None
    return parse_toml_bytes(data)


def parse_toml_bytes(data: bytes) -> dict[str, Any]:
    """Decode (strict UTF-8) and parse; an empty or comment-only document is an error."""
    data = data.removeprefix(codecs.BOM_UTF8)  # what Windows editors write
    for bom, name in _UNICODE_BOMS:
        if data.startswith(bom):
            raise TomlFileError("(encoding)", f"UTF-8 text (the file is {name}: save it as UTF-8)")
    if b"\x00" in data:
        line, column = _position(data, data.index(b"\x00"))
        raise TomlFileError(
            "(encoding)",
            f"UTF-8 text (a NUL byte at line {line}, column {column}: "
            "a binary file, or UTF-16 without a byte-order mark)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position(data, exc.start)
        raise TomlFileError(
            _setting_with_bad_bytes(data) or "(encoding)",
            f"UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column} "
            "is not UTF-8)",
        ) from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError("(syntax)", f"valid TOML ({exc})") from None
    except RecursionError:
        raise TomlFileError("(syntax)", "TOML nested less deeply") from None
    if not parsed:
        why = "the file is empty" if not text.strip() else "the file has only comments"
        raise TomlFileError("(file)", f"a config with at least one setting ({why})")
    return parsed


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of ``offset``."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _setting_with_bad_bytes(data: bytes) -> str | None:
    """The dotted name of the first setting whose string holds non-UTF-8 bytes, if the file
    parses once those bytes are smuggled through as lone surrogates."""
    try:
        parsed = tomllib.loads(data.decode("utf-8", errors="surrogateescape"))
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    return _find_surrogate(parsed, "")


def _find_surrogate(value: object, where: str) -> str | None:
    if isinstance(value, str):
        bad = any(0xDC80 <= ord(ch) <= 0xDCFF for ch in value)
        return (where or "(top level)") if bad else None
    if isinstance(value, dict):
        for key, item in value.items():
            shown = str(key).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            inner = f"{where}.{shown}" if where else shown
            if shown != key:
                return inner
            found = _find_surrogate(item, inner)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None
