"""How the controller logs in to an MQTT broker: one place for the password file and TLS.

Both of its MQTT connections (the line I/O link and the technicians' diagnostics) are made
from a :class:`~controller.config.MqttBrokerConfig` through :func:`login`, so a site sets
usernames, password files and TLS the same way for each.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from controller.config import MqttBrokerConfig, MqttTlsConfig
from controller.errors import DriverUnavailable

__all__ = ["Login", "close_failed_handshakes", "login", "tls_context"]


@dataclass(frozen=True)
class Login:
    """What aiomqtt.Client needs to reach and log in to a broker."""

    hostname: str
    port: int
    username: str | None
    password: str | None
    tls_context: ssl.SSLContext | None

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.tls_context is not None else "mqtt"
        return f"{scheme}://{self.hostname}:{self.port}"


def login(config: MqttBrokerConfig, device: str) -> Login:
    """Read the password file and build the TLS context now, so a bad file is refused at start
    (DriverUnavailable naming ``device`` and the file), not at the first connect."""
    return Login(config.host, config.port, config.username,
                 _read_password(config.password_file, device),
                 tls_context(config.tls, device) if config.tls is not None else None)


def _read_password(path: str | None, device: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DriverUnavailable(device, f"cannot read the password file {path}: {exc}") from None


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails. paho-mqtt (2.2) drops the
    socket of a failed handshake unclosed: an fd until the collector finds it, and a
    ResourceWarning, on every attempt of a link that reconnects forever."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(tls: MqttTlsConfig, device: str) -> ssl.SSLContext:
    """A client context: the broker verified against ``ca_file`` (or the system's CAs) and
    its name checked, unless ``verify`` is off; a client certificate if one is given."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.certfile is not None:
            context.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise DriverUnavailable(device, f"TLS: {exc}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return close_failed_handshakes(context)


def close_failed_handshakes(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context``, its sockets closed by a failed handshake (for paho-mqtt's clients)."""
    context.sslsocket_class = _ClosingSSLSocket
    return context
