"""The technician's side of the diagnostics broker: its options, the login they name, the
client, and what ``diag`` and ``diag cmd`` share (docs/diagnostics-protocol.md)."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from controller.config import MqttBrokerConfig, MqttTlsConfig
from controller.errors import SorterError
from drivers.mqtt_client import Login

DEVICE = "diagnostics broker"
EXIT_NO_REPLY = 4
"""``diag cmd`` had no reply in time (or could not reach the broker)."""
EXIT_BAD_ARGUMENTS = 2
REDRAW_S = 0.25
RECONNECT_MAX_S = 5.0
VERB = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LINE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PREFIX = re.compile(r"^[A-Za-z0-9_/-]{1,64}$")


class UsageError(SorterError):
    """A bad argument of ``diag`` or ``diag cmd`` (exit 2)."""


class NoLine(SorterError):
    """No line showed its status, so a command without ``--line`` has nowhere to go."""


def add_login_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    # ``diag --mqtt X cmd …`` and ``diag cmd … --mqtt X`` both work: the sub-form's copies
    # leave a value the main form took alone.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = p.add_argument_group("broker")
    group.add_argument("--mqtt", default=default(None), metavar="HOST:PORT",
                       help="the diagnostics broker (required)")
    group.add_argument("--user", default=default(None), help="broker username")
    group.add_argument("--password-file", type=Path, default=default(None), metavar="FILE",
                       help="file holding the broker password")
    group.add_argument("--tls", action="store_true", default=default(False),
                       help="TLS to the broker (implied by the other TLS options)")
    group.add_argument("--ca-file", type=Path, default=default(None), metavar="FILE",
                       help="CA certificate(s) to verify the broker (default: the system's)")
    group.add_argument("--cert", type=Path, default=default(None), metavar="FILE",
                       help="client certificate")
    group.add_argument("--key", type=Path, default=default(None), metavar="FILE",
                       help="the client certificate's key")
    group.add_argument("--insecure", action="store_true", default=default(False),
                       help="do not verify the broker's certificate or name")
    group.add_argument("--line", default=default(None), metavar="NAME",
                       help="the line (default: the first line whose status is seen)")
    group.add_argument("--prefix", default=default("sorter"),
                       help="the diagnostics topic prefix (default: sorter)")


def broker_config(args: argparse.Namespace) -> MqttBrokerConfig:
    """The broker and login the options name; UsageError for a bad one."""
    if args.mqtt is None:
        raise UsageError("--mqtt HOST:PORT is required")
    host, port = parse_host_port(args.mqtt)
    if not PREFIX.match(args.prefix):
        raise UsageError(f"--prefix: letters, digits, _ - / only, not {args.prefix!r}")
    if args.line is not None and not LINE.match(args.line):
        raise UsageError(f"--line: letters, digits, _ and - only, not {args.line!r}")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    tls = None
    if args.tls or args.insecure or args.ca_file or args.cert:
        tls = MqttTlsConfig(ca_file=_absolute(args.ca_file), certfile=_absolute(args.cert),
                            keyfile=_absolute(args.key), verify=not args.insecure)
    return MqttBrokerConfig(host=host, port=port, username=args.user,
                            password_file=_absolute(args.password_file), tls=tls,
                            topic_prefix=args.prefix)


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--mqtt: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


def parse_fields(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words as a request object: a value is JSON when it parses, else text."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not KEY.match(key):
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        if key in fields:
            raise UsageError(f"{key} given twice")
        try:
            fields[key] = json.loads(text)
        except ValueError:
            fields[key] = text
    return fields


def mqtt_client(where: Login, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(where.hostname, where.port, username=where.username,
                          password=where.password, identifier=identifier,
                          protocol=aiomqtt.ProtocolVersion.V5, tls_context=where.tls_context,
                          keepalive=10, timeout=5.0)


def new_client_id() -> str:
    return f"parcel-sorter-diag-{secrets.token_hex(4)}"


def say(line: str) -> None:
    print(f"parcel-sorter: {line}", file=sys.stderr, flush=True)


def payload_bytes(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()
