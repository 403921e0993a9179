"""The address forms that name an instrument's or a broker's endpoint, as pure functions.

A config line like ``TCPIP::10.0.0.7::5025::SOCKET`` or ``modbus-tcp://incubator:502`` is
only checked by the driver when it connects, deep inside pyvisa, pyserial or pymodbus, and a
bad host or a port of 70000 then surfaces as a ``ValueError`` from a third-party library.
The config loaders (the daemon's and the simulated bench's) check every address with these
functions first, so a mistake is reported as one line naming the field. They live in
``drivers`` because the address forms are the transports' grammar, and because it is the
one package both loaders may import.

Every ``parse_*`` returns ``(host, port)`` or raises :class:`AddressError`, whose text is
what was expected. No I/O, no name resolution.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "AddressError",
    "check_host",
    "parse_modbus_address",
    "parse_port",
    "parse_socket_url",
    "parse_tcp_address",
    "parse_visa_socket",
]

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_VISA_SOCKET = re.compile(r"^TCPIP\d*::(.*)::([^:]*)::SOCKET$", re.IGNORECASE)
_SERIAL_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "baud": None,  # any positive integer
    "bytesize": ("5", "6", "7", "8"),
    "parity": ("N", "E", "O", "M", "S"),
    "stopbits": ("1", "2"),
}


class AddressError(ValueError):
    """An address that does not follow its form; ``str()`` says what was expected."""


def check_host(host: str) -> str:
    """A host name (RFC 1123 labels; ``_`` tolerated), an IPv4 or an IPv6 address."""
    if not host:
        raise AddressError("a host name or IP address (got an empty host)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    name = host.removesuffix(".")
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_LABEL.match(label) for label in labels)
        or all(label.isdigit() for label in labels)  # 300.1.1.1 is no IPv4 address
    ):
        raise AddressError(f"a host name or IP address (got {host!r})")
    return host


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A TCP port, 1-65535 (0 too when ``allow_zero``: a listener's "any free port")."""
    low = 0 if allow_zero else 1
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= 65535:
        raise AddressError(f"a port {low}-65535 (got {text!r})")
    return int(text)


def _host_port(rest: str, form: str, *, allow_zero: bool) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; ``form`` is the whole address form for messages."""
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise AddressError(form)
        port_text = tail[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise AddressError(f"{form} (got {host!r} between brackets)") from exc
    else:
        host, sep, port_text = rest.partition(":")
        if not sep or ":" in port_text or "/" in port_text:
            raise AddressError(form)
        try:
            check_host(host)
        except AddressError as exc:
            raise AddressError(f"{form} with {exc}") from exc
    try:
        return host, parse_port(port_text, allow_zero=allow_zero)
    except AddressError as exc:
        raise AddressError(f"{form} with {exc}") from exc


def parse_visa_socket(resource: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``TCPIP::host::port::SOCKET`` (``TCPIP0::`` too; case-insensitive, like VISA)."""
    form = "a VISA socket resource like TCPIP::127.0.0.1::5025::SOCKET"
    match = _VISA_SOCKET.match(resource.strip())
    if match is None:
        raise AddressError(form)
    try:
        host = check_host(match[1])
        return host, parse_port(match[2], allow_zero=allow_zero)
    except AddressError as exc:
        raise AddressError(f"{form} with {exc}") from exc


def parse_socket_url(url: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``socket://host:port`` (a ser2net box or a serial device server)."""
    if not url.startswith("socket://"):
        raise AddressError("socket://host:port")
    return _host_port(url.removeprefix("socket://"), "socket://host:port", allow_zero=allow_zero)


def parse_tcp_address(address: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``tcp://host:port`` (an instrument on a raw TCP socket: the amplifier's bridge, the
    digitizer)."""
    if not address.startswith("tcp://"):
        raise AddressError("tcp://host:port")
    return _host_port(address.removeprefix("tcp://"), "tcp://host:port", allow_zero=allow_zero)


def parse_modbus_address(address: str, *, allow_zero: bool = False) -> tuple[str, int] | None:
    """``modbus-tcp://host:port`` -> ``(host, port)``; ``modbus-rtu://<device or URL>
    [?baud=9600&parity=N&bytesize=8&stopbits=1]`` -> None (checked, no host and port)."""
    if address.startswith("modbus-tcp://"):
        form = "modbus-tcp://host:port"
        return _host_port(address.removeprefix("modbus-tcp://"), form, allow_zero=allow_zero)
    if not address.startswith("modbus-rtu://"):
        raise AddressError("modbus-tcp://host:port or modbus-rtu://<serial device or URL>")
    target, _, query = address.removeprefix("modbus-rtu://").partition("?")
    if target.startswith("socket://"):
        parse_socket_url(target)
    elif not target.startswith("/"):
        raise AddressError("modbus-rtu:// then a serial device path or socket://host:port")
    for pair in query.split("&") if query else ():
        key, sep, value = pair.partition("=")
        if key not in _SERIAL_OPTIONS or not sep:
            raise AddressError(f"serial options baud, bytesize, parity, stopbits (got {pair!r})")
        allowed = _SERIAL_OPTIONS[key]
        if allowed is None and not (value.isascii() and value.isdigit() and int(value) > 0):
            raise AddressError(f"{key}: a positive integer (got {value!r})")
        if allowed is not None and value not in allowed:
            raise AddressError(f"{key}: one of {', '.join(allowed)} (got {value!r})")
    return None
