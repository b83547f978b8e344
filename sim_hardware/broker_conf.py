"""The deploy broker's config, read for a test broker: its global settings, its TLS
listener, the users its ACL names, and certificates for a TLS listener on loopback.

A test broker (:class:`sim_hardware.broker.Mosquitto` with ``deploy=True``) runs these
rules as they are, with its own port, files and log in place of the deploy paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.errors import DriverUnavailable

DEVICE = "mosquitto"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DEPLOY_CONF = DEPLOY / "mosquitto.conf"
DEPLOY_ACL = DEPLOY / "mosquitto.acl"
# the deploy config's lines this launcher sets itself (loopback port, files, log)
_OWN_SETTINGS = frozenset({"listener", "log_dest", "log_type", "persistence",
                           "connection_messages", "password_file", "acl_file",
                           "allow_anonymous", "per_listener_settings", "user"})
# mosquitto's settings that belong to the listener line above them; the others are global
_LISTENER_SETTINGS = frozenset({
    "bind_address", "bind_interface", "http_dir", "max_connections", "max_qos",
    "max_topic_alias", "mount_point", "protocol", "socket_domain", "use_username_as_clientid",
    "websockets_headers_size", "cafile", "capath", "certfile", "keyfile", "ciphers",
    "ciphers_tls1.3", "crlfile", "dhparamfile", "require_certificate", "tls_engine",
    "tls_engine_kpass_sha1", "tls_keyform", "tls_version", "use_identity_as_username",
    "use_subject_as_username", "psk_hint"})
_TLS_FILES = ("cafile", "certfile", "keyfile")


def acl_users(acl: Path = DEPLOY_ACL) -> list[str]:
    """The users an ACL file grants anything to, in its order."""
    users = []
    for line in acl.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            users.append(words[1])
    return users


@dataclass(frozen=True)
class Listener:
    """One ``listener`` line of a mosquitto config and the settings that belong to it."""

    address: str  # the words after ``listener``: port, and the bind address if any
    settings: tuple[str, ...]

    @property
    def tls(self) -> bool:
        return any(line.split()[0] == "certfile" for line in self.settings)

    def with_files(self, files: Mapping[str, Path]) -> list[str]:
        """Its settings, the path of each setting in ``files`` (``cafile``, ...) replaced."""
        lines = []
        for line in self.settings:
            key = line.split()[0]
            lines.append(f"{key} {files[key]}" if key in files else line)
        return lines


def _read_conf(conf: Path) -> tuple[list[str], list[Listener]]:
    """A config's global settings and its listeners, comments and blank lines left out."""
    settings: list[str] = []
    listeners: list[tuple[str, list[str]]] = []
    for line in conf.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, _, rest = text.partition(" ")
        if key == "listener":
            listeners.append((rest.strip(), []))
        elif key in _LISTENER_SETTINGS and listeners:
            listeners[-1][1].append(text)
        else:
            settings.append(text)
    return settings, [Listener(address, tuple(lines)) for address, lines in listeners]


def deploy_settings(conf: Path = DEPLOY_CONF) -> list[str]:
    """The deploy config's global settings but those a test broker sets itself (its
    listeners and their settings are left out: see :func:`deploy_tls_listener`)."""
    settings, _ = _read_conf(conf)
    return [text for text in settings if text.split()[0] not in _OWN_SETTINGS]


def deploy_tls_listener(conf: Path = DEPLOY_CONF) -> Listener:
    """The deploy config's TLS listener (the one with a ``certfile``)."""
    found = [listener for listener in _read_conf(conf)[1] if listener.tls]
    if len(found) != 1:
        raise ValueError(f"{conf} has {len(found)} TLS listeners (a certfile after a "
                         "listener line), not one")
    missing = [key for key in _TLS_FILES
               if not any(line.split()[0] == key for line in found[0].settings)]
    if missing:
        raise ValueError(f"{conf}: its TLS listener has no {', '.join(missing)}")
    return found[0]


def write_test_certificates(directory: Path) -> dict[str, Path]:
    """A CA of its own and a server certificate for 127.0.0.1 and localhost, by ``trustme``
    (a dev dependency): ``{"cafile": ..., "certfile": ..., "keyfile": ...}``."""
    try:
        import trustme
    except ImportError:
        raise DriverUnavailable(DEVICE, "a TLS test broker needs trustme "
                                        "(pip install trustme)") from None
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {"cafile": directory / "ca.crt", "certfile": directory / "broker.crt",
             "keyfile": directory / "broker.key"}
    ca.cert_pem.write_to_path(str(files["cafile"]))
    with files["certfile"].open("wb") as chain:
        for pem in server.cert_chain_pems:
            chain.write(pem.bytes())
    files["keyfile"].touch(mode=0o600)
    server.private_key_pem.write_to_path(str(files["keyfile"]))
    return files
