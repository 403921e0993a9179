"""aiomqtt connection arguments from :class:`~acquisition.config.MqttConfig`.

Shared by the daemon's link and the bench terminal, so TLS and credentials are set up in
exactly one place.
"""

from __future__ import annotations

import ssl
from typing import Any

from acquisition.config import MqttConfig

__all__ = ["client_kwargs"]


def client_kwargs(cfg: MqttConfig) -> dict[str, Any]:
    """Keyword arguments for :class:`aiomqtt.Client` (hostname, port, auth, TLS)."""
    import aiomqtt

    kwargs: dict[str, Any] = {
        "hostname": cfg.host,
        "port": cfg.port,
        "keepalive": cfg.keepalive_s,
        "protocol": aiomqtt.ProtocolVersion.V5,
    }
    if cfg.username is not None:
        kwargs["username"] = cfg.username
        kwargs["password"] = cfg.password.get_secret_value() if cfg.password else None
    if cfg.tls_ca is not None or cfg.tls_cert is not None:
        kwargs["tls_params"] = aiomqtt.TLSParameters(
            ca_certs=str(cfg.tls_ca) if cfg.tls_ca else None,
            certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
            keyfile=str(cfg.tls_key) if cfg.tls_key else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        kwargs["tls_insecure"] = cfg.tls_insecure
    return kwargs
