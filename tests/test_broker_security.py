"""The deploy broker config keeps the line's MQTT to its accounts: a real mosquitto runs
deploy/mosquitto.conf (both listeners, the TLS one with certificates made for the test) and
deploy/mosquitto.acl, with a password made for every account.

Mosquitto drops a publish the ACL forbids without telling the publisher, so the tests look
at the effect: an observer allowed to read everything receives, after the forbidden
publishes, a publish that is allowed. Each client awaits its QoS 1 PUBACK, which the broker
sends once it has routed (or dropped) the message, so anything that got through would have
reached the observer first; no sleep guesses how long "nothing" takes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.clock import RealClock
from controller.config import DiagnosticsConfig, MqttLinkConfig, MqttTlsConfig
from controller.errors import DriverTimeout
from drivers.diagnostics_mqtt import MqttDiagnostics
from drivers.lineio.mqtt import DEVICE, MqttLineIO
from drivers.mqtt_client import close_failed_handshakes, login
from sim_hardware.broker import (
    DEPLOY_CONF,
    Mosquitto,
    deploy_settings,
    deploy_tls_listener,
    mosquitto_path,
)

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None,
                       reason="mosquitto is not installed (apt-get install mosquitto)"),
    pytest.mark.timeout(60),
    pytest.mark.wallclock,
]

WITHIN_S = 3.0  # for a message that must arrive; on loopback it takes a millisecond
_lines = itertools.count(1)


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    """The deploy rules on both listeners; every test uses a line name of its own."""
    with Mosquitto(deploy=True, tls=True) as mosquitto:
        yield mosquitto


@pytest.fixture
def line() -> str:
    return f"sec{next(_lines)}"


def ca_context(broker: Mosquitto) -> ssl.SSLContext:
    return close_failed_handshakes(ssl.create_default_context(cafile=str(broker.ca_path)))


@asynccontextmanager
async def client(broker: Mosquitto, user: str | None = None, *, tls: bool = False,
                 context: ssl.SSLContext | None = None,
                 **login_args: Any) -> AsyncIterator[aiomqtt.Client]:
    """A client of ``user`` (its own password) on the plain or the TLS listener; with TLS
    the broker is verified against the test CA unless ``context`` says otherwise."""
    if user is not None:
        login_args = {"username": user, "password": broker.passwords[user], **login_args}
    port = broker.tls_port if tls else broker.port
    assert port is not None
    if tls and context is None:
        context = ca_context(broker)
    async with aiomqtt.Client(broker.host, port, tls_context=context, timeout=WITHIN_S,
                              **login_args) as connected:
        yield connected


async def received(observer: aiomqtt.Client, n: int, *,
                   as_json: bool = True) -> list[tuple[str, Any]]:
    """The next ``n`` messages: (topic, JSON payload decoded, or the payload's bytes)."""
    got: list[tuple[str, Any]] = []
    async with asyncio.timeout(WITHIN_S):
        async for message in observer.messages:
            payload = bytes(message.payload)
            got.append((message.topic.value, json.loads(payload) if as_json else payload))
            if len(got) == n:
                break
    return got


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def granted(reply: tuple[int, ...] | list[Any]) -> list[int]:
    """A SUBACK's codes as numbers (0-2: the QoS granted, 128 and up: refused)."""
    return [code if isinstance(code, int) else code.value for code in reply]


# --- who may connect ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_anonymous_and_wrong_passwords_are_refused_on_both_listeners(
        broker: Mosquitto, tls: bool) -> None:
    """The broker answers CONNACK "not authorised" (not a network error), and a known
    account with its own password gets in on the same listener."""
    logins: list[dict[str, Any]] = [
        {}, {"username": "controller", "password": "guess"},
        {"username": "technician", "password": broker.passwords["operator"]},
        {"username": "nobody", "password": "x"}]
    for login_args in logins:
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with client(broker, tls=tls, **login_args):
                pass
        # 4, 5 in MQTT 3.1.1; paho-mqtt 2 reports them as the MQTT 5 codes 134, 135
        assert granted([refused.value.rc])[0] in {4, 5, 134, 135}, (login_args, refused.value)
    async with client(broker, "technician", tls=tls):
        pass


# --- who may read and write what --------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_technician_reads_the_controllers_status_and_everything_else(
        broker: Mosquitto, line: str) -> None:
    """The controller's retained status and device, and its metrics, reach a technician who
    subscribed to ``sorter/#``."""
    status = {"state": "running", "reason": "sorting", "line": line}
    device = {"id": "link-mqtt", "kind": "link", "state": "up"}
    async with client(broker, "controller") as controller:
        await controller.publish(f"sorter/{line}/status", body(**status), qos=1, retain=True)
        await controller.publish(f"sorter/{line}/devices/link-mqtt", body(**device), qos=1,
                                 retain=True)
        async with client(broker, "technician") as technician:
            assert granted(await technician.subscribe("sorter/#", qos=1)) == [1]
            retained = await received(technician, 2)
            await controller.publish(f"sorter/{line}/metrics", body(open_parcels=3), qos=1)
            (metrics,) = await received(technician, 1)
    assert sorted(retained) == sorted([(f"sorter/{line}/status", status),
                                       (f"sorter/{line}/devices/link-mqtt", device)])
    assert metrics == (f"sorter/{line}/metrics", {"open_parcels": 3})


@pytest.mark.asyncio
async def test_the_operator_commands_and_the_technician_cannot(broker: Mosquitto,
                                                               line: str) -> None:
    """A controller stand-in subscribed to the line's commands receives the operator's two
    requests and neither of the technician's sent before each; it answers on the verb's
    response topic and under replies/, and the operator and the technician both see only
    the answers to the operator's requests."""
    cmd = f"sorter/{line}/cmd"
    async with (client(broker, "controller") as controller,
                client(broker, "operator") as operator,
                client(broker, "technician") as technician):
        await controller.subscribe(f"{cmd}/+", qos=1)
        for watcher in (operator, technician):
            await watcher.subscribe(f"{cmd}/+/response", qos=1)
            await watcher.subscribe(f"sorter/{line}/replies/#", qos=1)
        for n in (1, 2):
            await technician.publish(f"{cmd}/pause", body(transaction=f"tech-{n}"), qos=1)
            await operator.publish(f"{cmd}/pause", body(transaction=f"op-{n}", by="anna"),
                                   qos=1)
        commands = await received(controller, 2)
        assert commands == [(f"{cmd}/pause", {"transaction": "op-1", "by": "anna"}),
                            (f"{cmd}/pause", {"transaction": "op-2", "by": "anna"})]
        for _, request in commands:
            reply = body(transaction=request["transaction"], verb="pause", status="ok",
                         data={"state": "paused"}, error=None)
            await controller.publish(f"{cmd}/pause/response", reply, qos=1)
            await controller.publish(f"sorter/{line}/replies/anna", reply, qos=1)
        for watcher in (operator, technician):
            answers = await received(watcher, 4)
            assert [(topic, a["transaction"]) for topic, a in answers] == [
                (f"{cmd}/pause/response", "op-1"), (f"sorter/{line}/replies/anna", "op-1"),
                (f"{cmd}/pause/response", "op-2"), (f"sorter/{line}/replies/anna", "op-2")]


def forged_topics(line: str) -> list[str]:
    """What only the controller (or a node) may publish."""
    base = f"sorter/{line}"
    return [f"{base}/status", f"{base}/metrics", f"{base}/events/no_read",
            f"{base}/devices/camera-cam1", f"{base}/cmd/pause/response",
            f"{base}/replies/anna", f"{base}/io/divert/D1", f"{base}/io/heartbeat",
            f"{base}/io/controller/status", f"{base}/io/nodes/D1/status"]


@pytest.mark.asyncio
@pytest.mark.parametrize("forger", ["technician", "operator"])
async def test_watchers_cannot_publish_what_the_controller_publishes(
        broker: Mosquitto, line: str, forger: str) -> None:
    """Statuses (retained too), metrics, events, devices, responses, replies and line I/O from
    a technician's account are dropped: an observer reading the whole line sees the
    controller's status first, and a later subscriber finds only its retained status."""
    real = {"state": "running", "reason": "sorting"}
    async with (client(broker, "technician") as observer,
                client(broker, forger) as fake,
                client(broker, "controller") as controller):
        await observer.subscribe(f"sorter/{line}/#", qos=1)
        for topic in forged_topics(line):
            await fake.publish(topic, body(state="offline", forged=True), qos=1, retain=True)
        await controller.publish(f"sorter/{line}/status", body(**real), qos=1, retain=True)
        assert await received(observer, 1) == [(f"sorter/{line}/status", real)]
        async with client(broker, "technician") as later:
            await later.subscribe(f"sorter/{line}/#", qos=1)
            await controller.publish(f"sorter/{line}/metrics", body(marker=True), qos=1)
            # the broker sends the retained messages at the SUBACK, before anything newer
            assert await received(later, 2) == [(f"sorter/{line}/status", real),
                                                (f"sorter/{line}/metrics", {"marker": True})]


# --- TLS --------------------------------------------------------------------------------------


def test_the_tls_listener_is_the_deploy_configs() -> None:
    """What the test broker runs on its TLS port is this block, certificate paths aside."""
    listener = deploy_tls_listener(DEPLOY_CONF)
    assert listener.address == "8883"
    settings = dict(line.split(maxsplit=1) for line in listener.settings)
    assert {k: settings[k] for k in ("cafile", "certfile", "keyfile")} == {
        "cafile": "/etc/mosquitto/certs/ca.crt",
        "certfile": "/etc/mosquitto/certs/broker.crt",
        "keyfile": "/etc/mosquitto/certs/broker.key"}
    assert settings["require_certificate"] == "false"
    assert settings["tls_version"] == "tlsv1.2"
    # a broker without tls=True leaves the block out: its files would fall to its listener
    assert not [line for line in deploy_settings(DEPLOY_CONF)
                if line.split()[0] in {*settings, "listener"}]
    assert "allow_anonymous false" in DEPLOY_CONF.read_text(encoding="utf-8").splitlines()


@pytest.mark.asyncio
async def test_a_message_round_trips_over_tls_with_the_generated_ca(broker: Mosquitto,
                                                                    line: str) -> None:
    """Both ends on the TLS listener, the broker's certificate checked against the CA (and
    its name, 127.0.0.1)."""
    async with (client(broker, "technician", tls=True) as technician,
                client(broker, "controller", tls=True) as controller):
        await technician.subscribe(f"sorter/{line}/status", qos=1)
        await controller.publish(f"sorter/{line}/status", body(state="starting"), qos=1)
        assert await received(technician, 1) == [(f"sorter/{line}/status",
                                                  {"state": "starting"})]


@pytest.mark.asyncio
async def test_a_client_that_does_not_trust_the_ca_is_refused(broker: Mosquitto) -> None:
    """The system's CAs never signed the broker's certificate: the handshake fails on it."""
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with client(broker, "technician", tls=True,
                          context=close_failed_handshakes(ssl.create_default_context())):
            pass


def tls_link(broker: Mosquitto, tmp_path: Path, tls: MqttTlsConfig) -> MqttLinkConfig:
    secret = tmp_path / "controller.password"
    secret.write_text(broker.passwords["controller"] + "\n", encoding="utf-8")
    assert broker.tls_port is not None
    return MqttLinkConfig(host=broker.host, port=broker.tls_port, username="controller",
                          password_file=str(secret), tls=tls, reconnect_max_s=0.2)


@pytest.mark.asyncio
async def test_the_controllers_link_connects_over_tls_with_its_ca_file(
        broker: Mosquitto, line: str, tmp_path: Path) -> None:
    """[line_io.mqtt.tls] ca_file: MqttLineIO comes up on the TLS port, and its retained
    ``online`` reaches a technician on that listener."""
    link = tls_link(broker, tmp_path, MqttTlsConfig(ca_file=str(broker.ca_path)))
    assert login(link, DEVICE).where == f"mqtts://{broker.host}:{broker.tls_port}"
    async with (MqttLineIO(link, line=line, clock=RealClock(), diverters=["D1"],
                           sensors=False) as io,
                client(broker, "technician", tls=True) as technician):
        await io.wait_up(WITHIN_S)
        await technician.subscribe(f"sorter/{line}/io/controller/status", qos=1)
        assert await received(technician, 1, as_json=False) == [
            (f"sorter/{line}/io/controller/status", b"online")]


@pytest.mark.asyncio
async def test_the_controllers_link_refuses_a_broker_it_cannot_verify(
        broker: Mosquitto, line: str, tmp_path: Path) -> None:
    """Verify is on by default: without the ca_file (the system's CAs) the link never comes
    up, and says why."""
    link = tls_link(broker, tmp_path, MqttTlsConfig())
    async with MqttLineIO(link, line=line, clock=RealClock(), diverters=["D1"],
                          sensors=False) as io:
        with pytest.raises(DriverTimeout, match="CERTIFICATE_VERIFY_FAILED"):
            await io.wait_up(1.0)


@pytest.mark.asyncio
async def test_the_diagnostics_connect_over_tls_and_a_technician_reads_them(
        broker: Mosquitto, line: str, tmp_path: Path) -> None:
    """[diagnostics.tls] ca_file: the controller's diagnostics come up on the TLS listener
    as the controller's account, and a technician there reads the retained status and the
    broker device they publish."""
    link = tls_link(broker, tmp_path, MqttTlsConfig(ca_file=str(broker.ca_path)))
    settings = DiagnosticsConfig(**link.model_dump(exclude={"client_id", "qos", "keepalive_s",
                                                            "heartbeat_ms",
                                                            "reply_timeout_ms"}))

    async def refuse(verb: str, payload: bytes) -> dict[str, Any]:
        return {"transaction": None, "verb": verb, "status": "error", "data": None,
                "error": "not under test"}

    sink = MqttDiagnostics(settings, line=line, on_command=refuse, on_connect=lambda: None,
                           version="0")
    async with client(broker, "technician", tls=True) as technician, sink:
        await sink.wait_up(WITHIN_S)
        sink.publish("status", {"state": "running", "reason": "sorting"}, retain=True)
        await technician.subscribe(f"sorter/{line}/status", qos=1)
        [(topic, status)] = await received(technician, 1)
        assert (topic, status["state"]) == (f"sorter/{line}/status", "running")
    assert sink.stats.last_error is None
