"""Throw-away X.509 material for tests and demos, made with the ``openssl`` CLI.

``make_ca(dir)`` creates a self-signed CA; ``issue(ca, dir, name)`` a leaf certificate
signed by it (server certificates carry ``subjectAltName`` IP:127.0.0.1 and
DNS:localhost, so host-name verification passes on loopback). EC P-256 keys: fast to make.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateAuthority", "KeyPair", "issue", "make_ca"]

_CURVE = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the openssl CLI is missing: apt-get install -y openssl")
    proc = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_ca(directory: Path, name: str = "assay test CA", days: int = 7) -> CertificateAuthority:
    """A self-signed CA certificate and key in ``directory`` (ca.crt, ca.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(cert=directory / "ca.crt", key=directory / "ca.key")
    _openssl(
        "req", "-x509", *_CURVE, "-nodes",
        "-keyout", str(ca.key), "-out", str(ca.cert), "-days", str(days),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=directory,
    )  # fmt: skip
    return ca


def issue(
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    *,
    server: bool = True,
    sans: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost"),
    days: int = 7,
) -> KeyPair:
    """A leaf certificate ``{name}.crt``/``{name}.key`` signed by ``ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "authorityKeyIdentifier=keyid",
        "subjectKeyIdentifier=hash",
    ]
    if server and sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    cn = "localhost" if server else name
    _openssl(
        "req", *_CURVE, "-nodes", "-keyout", str(pair.key), "-out", str(csr),
        "-subj", f"/CN={cn}", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(pair.cert), "-days", str(days),
        "-extfile", str(ext), cwd=directory,
    )  # fmt: skip
    pair.key.chmod(0o644)  # mosquitto may drop privileges before reading it
    return pair
