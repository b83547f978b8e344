"""The line config's sections for what the controller reaches over a wire or the network:
the line I/O links (serial board, MQTT broker), the technicians' diagnostics broker and the
metrics endpoint.

:mod:`controller.config` re-exports them.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.config_base import Strict


class SerialLinkConfig(Strict):
    """The line's I/O board on a serial port (docs/serial-protocol.md)."""

    port: str = Field(description="device path, e.g. /dev/serial/by-id/usb-... or /dev/ttyUSB0")
    baudrate: Annotated[int, Field(ge=1200)] = 115200
    heartbeat_ms: Annotated[float, Field(ge=10, le=1000)] = 100.0
    ack_timeout_ms: Annotated[float, Field(ge=1, le=2000)] = 40.0
    max_resends: Annotated[int, Field(ge=1, le=100)] = 8
    reply_timeout_ms: Annotated[float, Field(ge=1, le=5000)] = 150.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class MqttTlsConfig(Strict):
    """TLS to an MQTT broker. Paths are relative to the config file's folder."""

    ca_file: str | None = Field(default=None,
                                description="CA certificate(s) to verify the broker; "
                                            "default: the system's")
    certfile: str | None = Field(default=None, description="client certificate, if the "
                                                           "broker asks for one")
    keyfile: str | None = Field(default=None, description="the client certificate's key")
    verify: bool = Field(default=True, description="verify the broker's certificate and name")

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttTlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        return self


class MqttBrokerConfig(Strict):
    """How to reach and log in to an MQTT broker."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password")
    tls: MqttTlsConfig | None = Field(default=None, description="absent: plain TCP")
    topic_prefix: str = Field(default="sorter", pattern=r"^[A-Za-z0-9_/-]{1,64}$")


class MqttLinkConfig(MqttBrokerConfig):
    """Diverter nodes (and optionally the sensors) behind an MQTT broker."""

    client_id: str | None = Field(default=None, description="default: parcel-sorter-<line>")
    qos: Literal[0, 1] = 1
    keepalive_s: Annotated[int, Field(ge=1, le=600)] = 10
    heartbeat_ms: Annotated[float, Field(ge=10, le=1000)] = 100.0
    reply_timeout_ms: Annotated[float, Field(ge=1, le=5000)] = 150.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class LineIOConfig(Strict):
    """Which links reach the line's sensors and diverters. Absent: no real I/O (``sim`` only)."""

    sensors: Literal["serial", "mqtt"] = Field(
        default="serial", description="the link carrying photo-eyes, encoder and bin sensors")
    diverters: Literal["serial", "mqtt"] = Field(
        default="serial", description="the default link of diverter commands")
    serial: SerialLinkConfig | None = None
    mqtt: MqttLinkConfig | None = None

    @model_validator(mode="after")
    def _links_configured(self) -> LineIOConfig:
        for role, link in (("sensors", self.sensors), ("diverters", self.diverters)):
            if getattr(self, link) is None:
                raise ValueError(f"{role} = {link!r} but there is no [line_io.{link}] section")
        return self


class DiagnosticsConfig(MqttBrokerConfig):
    """The technicians' view and commands over MQTT (docs/diagnostics-protocol.md): off
    unless the config has this section (or ``--mqtt`` names a broker)."""

    client_id: str | None = Field(default=None,
                                  description="default: parcel-sorter-<line>-diag")
    keepalive_s: Annotated[int, Field(ge=1, le=600)] = 5
    metrics_every_s: Annotated[float, Field(ge=0.5, le=3600)] = 5.0
    queue_limit: Annotated[int, Field(ge=10, le=100_000)] = 1000
    trace_messages: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000
    reconnect_max_s: Annotated[float, Field(gt=0, le=60)] = 5.0


class MetricsConfig(Strict):
    """The Prometheus endpoint (``/metrics``) of ``run``: off unless asked for.

    It listens on loopback only (a node exporter or a local Prometheus scrapes it there);
    another address is refused unless ``allow_remote`` says the exposure is meant.
    """

    enabled: bool = False
    listen: str = Field(default="127.0.0.1:9108", description="host:port")
    allow_remote: bool = False

    @model_validator(mode="after")
    def _listen_is_loopback(self) -> MetricsConfig:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen must be host:port, not {self.listen!r}")
        if not self.allow_remote and not _is_loopback(host):
            raise ValueError(f"listen {self.listen!r} is not a loopback address "
                             "(set allow_remote = true to expose the metrics)")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
