"""Checks of the files a valid config names, made before anything connects.

The settings can be well-formed and still unusable: a CA file that is not there, a journal
path that is a directory. Found later, these become a traceback from ``ssl`` or ``sqlite3``
or a link retrying forever; found here, they are one line naming the field. Each check
returns ``(field, what was expected)`` or None, and never raises for a bad path.

Running as root, ``os.access`` says yes to almost anything, so these checks cannot promise
that a path is writable; what they catch (a missing file, a directory, a path under a
regular file, a read-only file system) they catch for every user. Whatever slips through
still ends in one line: the daemon reports a journal it cannot open as a config error.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Protocol


class MqttTls(Protocol):
    """What the TLS check reads of ``[mqtt]`` (acquisition.config.MqttConfig)."""

    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...

__all__ = ["check_journal_path", "check_tls_files"]

Problem = tuple[str, str]


def check_tls_files(mqtt: MqttTls) -> Problem | None:
    """Every TLS file set exists and is a PEM file that OpenSSL accepts for its role."""
    files = (("tls_ca", mqtt.tls_ca), ("tls_cert", mqtt.tls_cert), ("tls_key", mqtt.tls_key))
    for name, path in files:
        if path is not None and (why := _not_a_readable_file(path)) is not None:
            return f"mqtt.{name}", f"a readable PEM file ({path}: {why})"
    if mqtt.tls_ca is None and mqtt.tls_cert is None:
        return None  # TLS is off (a tls_key alone is refused by MqttConfig)
    try:
        ctx = ssl.create_default_context(
            cafile=str(mqtt.tls_ca) if mqtt.tls_ca is not None else None
        )
    except (ssl.SSLError, OSError) as exc:
        return "mqtt.tls_ca", f"PEM CA certificates ({mqtt.tls_ca}: {_reason(exc)})"
    if mqtt.tls_cert is None:
        return None
    try:
        # A passphrase-protected key would make OpenSSL prompt on the terminal (or fail
        # under systemd): refuse it here, whatever the password callback is asked.
        ctx.load_cert_chain(
            str(mqtt.tls_cert),
            str(mqtt.tls_key) if mqtt.tls_key is not None else None,
            password=lambda: b"",
        )
    except (ssl.SSLError, OSError) as exc:
        return _blame_cert_or_key(mqtt, exc)
    return None


def _blame_cert_or_key(mqtt: MqttTls, exc: BaseException) -> Problem:
    reason = _reason(exc)
    key = mqtt.tls_key
    if key is None:
        return "mqtt.tls_cert", (
            f"a PEM certificate followed by its unencrypted private key, or set tls_key "
            f"({mqtt.tls_cert}: {reason})"
        )
    if "KEY_VALUES_MISMATCH" in reason:
        return "mqtt.tls_key", f"the private key of tls_cert ({key} does not match it)"
    pem = _read(key)
    if b"PRIVATE KEY-----" not in pem:
        return "mqtt.tls_key", f"an unencrypted PEM private key ({key}: {reason})"
    if b"ENCRYPTED" in pem:
        return "mqtt.tls_key", f"an unencrypted PEM private key ({key} needs a passphrase)"
    return "mqtt.tls_cert", f"a PEM client certificate ({mqtt.tls_cert}: {reason})"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _not_a_readable_file(path: Path) -> str | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else "not found"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(info.st_mode):
        return "a directory"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def check_journal_path(path: Path) -> Problem | None:
    """``journal.path`` names a file SQLite can create or open, with its -wal and -shm
    files beside it: an existing regular file, or a new one under a directory this user
    may write (missing directories in between are created by the journal)."""
    field = "journal.path"
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return field, f"a journal file ({path} is a broken symbolic link)"
        info = None
    except NotADirectoryError:
        info = None  # a parent is a file: found below, walking up
    except OSError as exc:
        return field, f"a journal file ({path}: {exc.strerror})"
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            return field, f"a journal file, not a directory ({path} is a directory)"
        if not stat.S_ISREG(info.st_mode):
            return field, f"a journal file ({path} is not a regular file)"
        if not os.access(path, os.R_OK | os.W_OK):
            return field, f"a journal file this user may read and write ({path})"
    directory = path.parent
    while True:
        try:
            info = directory.stat()
        except (FileNotFoundError, NotADirectoryError):
            if directory.is_symlink():
                return field, f"a path under a directory ({directory} is a broken symbolic link)"
            directory = directory.parent  # created by the journal: look further up
            continue
        except OSError as exc:
            return field, f"a path under a directory ({directory}: {exc.strerror})"
        break
    if not stat.S_ISDIR(info.st_mode):
        return field, f"a path under a directory ({directory} is not a directory)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return field, f"a path under a directory this user may write ({directory})"
    return None
