"""The technicians' tools: ``diag`` (the live view), ``diag cmd`` and ``trace``.

They are built against docs/diagnostics-protocol.md alone, so a stand-in controller here
publishes and answers exactly as that document says, through a real mosquitto. The view's
model and rendering are tested without a terminal; the live view once in a real one (tmux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.app.cli import main, with_diagnostics
from controller.app.diag import UsageError, parse_fields
from controller.app.diag_view import (
    EVENTS_SHOWN,
    MAX_DEVICES,
    MAX_PAYLOAD,
    LineView,
    render_text,
)
from controller.app.trace_tool import format_trace
from controller.config import DiagnosticsConfig, load_config
from controller.errors import ConfigError
from drivers.lineio.tasks import cancel_and_wait
from sim_hardware.broker import Mosquitto, mosquitto_path

from .conftest import EXAMPLE_CONFIG, ROOT

T = TypeVar("T")
SINCE = "2026-12-02T04:05:06.789Z"


def status(state: str = "running", reason: str = "sorting", line: str = "line1") -> bytes:
    return json.dumps({"state": state, "reason": reason, "since": SINCE, "version": "0.1.0",
                       "line": line}).encode()


def metrics(confirmed: int = 80) -> bytes:
    return json.dumps({
        "at": SINCE, "uptime_s": 812.4, "window_s": 60.0, "parcels_per_minute": 11.0,
        "read_rate": 0.995, "dispositions": {"SORTED": 640, "NO_READ": 3}, "open_parcels": 7,
        "decision_ms": {"p50": 1.2, "p99": 4.8, "n": 660},
        "divert_ms": {"p50": None, "p99": None, "n": 0}, "links": {"serial": "up"},
        "bins": {"B1": {"confirmed": confirmed, "in_flight": 1, "capacity": 400, "full": False},
                 "B7": {"confirmed": 400, "in_flight": 0, "capacity": 400, "full": True}},
        "diagnostics": {"dropped": 0, "queued": 0},
        "overload": {"loop_lag_max_ms": 120.4, "loop_lag_ticks": 3, "event_lag_max_ms": 840.0,
                     "events_late": 12, "frames_ahead_of_events": 0, "missing_deferred": 1}
    }).encode()


def device(device_id: str, state: str) -> bytes:
    return json.dumps({"id": device_id, "kind": device_id.split("-", maxsplit=1)[0], "state": state,
                       "last_seen": SINCE, "errors": {"dropped": 2}}).encode()


def event(kind: str, parcel: int, reason: str) -> bytes:
    return json.dumps({"kind": kind, "at": SINCE, "parcel": parcel, "code": None,
                       "bin": "END", "reason": reason, "order": None}).encode()


def fed_view() -> LineView:
    view = LineView(line="line1")
    assert view.feed("sorter/line1/status", status())
    assert view.feed("sorter/line1/metrics", metrics())
    assert view.feed("sorter/line1/devices/camera-cam1", device("camera-cam1", "streaming"))
    assert view.feed("sorter/line1/devices/node-D3", device("node-D3", "offline"))
    assert view.feed("sorter/line1/events/no_read", event("no_read", 1234, "no acceptable code"))
    return view


# --- the model and its rendering ----------------------------------------------------------


def test_the_view_keeps_what_each_topic_says_and_draws_it() -> None:
    view = fed_view()
    assert view.status is not None
    assert view.status["state"] == "running"
    assert view.metrics is not None
    assert view.metrics["bins"]["B1"]["confirmed"] == 80
    assert set(view.devices) == {"camera-cam1", "node-D3"}
    assert [e["parcel"] for e in view.events] == [1234]
    assert (view.received, view.bad_messages) == (5, 0)
    text = render_text(view, width=120)
    for shown in ("sorter/line1", "RUNNING", "sorting", SINCE, "11.0", "99.5%", "1.2/4.8 ms",
                  "-/- ms", "SORTED 640", "NO_READ 3", "80/400 20%", "FULL",
                  "camera-cam1", "streaming", "node-D3", "offline", "no_read", "1234",
                  "no acceptable code", "bad messages 0", "lag loop/events", "120/840 ms"):
        assert shown in text, shown


def test_hostile_payloads_are_counted_never_raised() -> None:
    view = fed_view()
    hostile: list[tuple[str, bytes]] = [
        ("sorter/line1/status", b"not json"),
        ("sorter/line1/status", b"\xff\xfe\x00"),
        ("sorter/line1/status", b'"running"'),
        ("sorter/line1/status", b"{}"),
        ("sorter/line1/status", json.dumps({"state": 7}).encode()),
        ("sorter/line1/metrics", json.dumps({"read_rate": "high"}).encode()),
        ("sorter/line1/metrics", json.dumps({"bins": {"B1": 3}}).encode()),
        ("sorter/line1/metrics", json.dumps({"parcels_per_minute": 10 ** 400}).encode()),
        ("sorter/line1/devices/camera-cam1", json.dumps({"state": None}).encode()),
        ("sorter/line1/events/no_read", b"[" * 100_000),
        ("sorter/line1/events/no_read", b"{" + b" " * MAX_PAYLOAD + b"}"),
        ("sorter/line1/events/late", json.dumps({"at": 5}).encode()),
    ]
    for topic, payload in hostile:
        assert not view.feed(topic, payload)
    assert view.bad_messages == len(hostile)
    # what was good before stays
    assert view.status is not None
    assert view.status["state"] == "running"
    assert view.metrics is not None
    assert view.metrics["read_rate"] == 0.995
    assert view.devices["camera-cam1"]["state"] == "streaming"
    text = render_text(view)
    assert f"bad messages {len(hostile)}" in text
    assert "last bad: sorter/line1/events/late" in text


def test_a_flood_of_made_up_devices_is_bounded() -> None:
    view = LineView()
    for n in range(MAX_DEVICES + 50):
        view.feed(f"sorter/line1/devices/fake-{n}", device(f"fake-{n}", "up"))
    assert len(view.devices) == MAX_DEVICES
    assert view.bad_messages == 50
    assert view.feed("sorter/line1/devices/fake-0", device("fake-0", "down"))  # known: kept


def test_a_trace_is_printed_without_terminal_escapes() -> None:
    text = format_trace({"parcel": 1, "code": "\x1b[2Jx", "reason": "r\x07", "messages": [
        {"at": SINCE, "direction": "sent", "link": "serial", "kind": "divert",
         "detail": {"d": "\x1b]0;t"}}]})
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "messages (1):" in text


def test_terminal_escapes_and_markup_in_fields_are_shown_inert() -> None:
    view = LineView()
    view.feed("sorter/line1/status", json.dumps(
        {"state": "faulted", "reason": "disk \x1b[2J\x1b]0;owned\x07 [bold red]full"}).encode())
    text = render_text(view)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "FAULTED" in text
    assert "[bold red]full" in text  # rich markup in a field is text, not a style


def test_no_status_yet_and_offline_are_plain_to_see() -> None:
    view = LineView()
    text = render_text(view)
    assert "no status yet" in text
    assert "no metrics yet" in text
    assert "no line seen" in text
    view.feed("sorter/line1/status", json.dumps(
        {"state": "offline", "reason": "connection lost"}).encode())
    text = render_text(view)
    assert "OFFLINE" in text
    assert "connection lost" in text
    assert "no status yet" not in text


def test_the_first_line_seen_is_kept_and_other_topics_are_ignored() -> None:
    view = LineView(prefix="site/a")
    assert not view.feed("other/line9/status", status())
    assert view.feed("site/a/line2/status", status(line="line2"))
    assert view.line == "line2"
    assert not view.feed("site/a/line3/status", status("faulted"))
    for topic in ("site/a/line2/io/heartbeat", "site/a/line2/cmd/pause",
                  "site/a/line2/replies/x", "site/a/line2/status/extra", "site/a/line2/new"):
        assert not view.feed(topic, b"\xff not json")
    assert view.status is not None
    assert view.status["state"] == "running"
    assert view.bad_messages == 0  # unknown topics are not bad messages, only not ours


def test_only_the_latest_exceptions_are_kept_newest_first() -> None:
    view = LineView()
    for parcel in range(25):
        view.feed("sorter/line1/events/late", event("late", parcel, "late"))
    assert [e["parcel"] for e in view.events] == list(range(24, 24 - EVENTS_SHOWN, -1))
    view.feed("sorter/line1/events/bin_full", json.dumps(
        {"kind": "bin_full", "at": SINCE, "device": "B7"}).encode())
    assert view.events[0]["kind"] == "bin_full"
    assert "B7" in render_text(view, width=140)


def test_command_fields_are_json_when_they_parse() -> None:
    assert parse_fields(["on=true", "parcel=12", "code=00123", 'code2="42"', "reason=lunch break",
                         "pulse_ms=1.5", "x="]) == {
        "on": True, "parcel": 12, "code": "00123", "code2": "42", "reason": "lunch break",
        "pulse_ms": 1.5, "x": ""}
    for bad in (["noequals"], ["=1"], ["a=1", "a=2"], ["bad key=1"]):
        with pytest.raises(UsageError):
            parse_fields(bad)


@pytest.mark.parametrize("argv", [
    ["diag", "--once"],
    ["diag", "--mqtt", "nohost", "--once"],
    ["diag", "--mqtt", "h:99999", "--once"],
    ["diag", "--mqtt", "h:1", "--line", "a/b", "--once"],
    ["diag", "--mqtt", "h:1", "--cert", "c.pem", "--once"],
    ["diag", "cmd", "pause", "oops", "--mqtt", "h:1"],
    ["diag", "cmd", "Pause/#", "--mqtt", "h:1"],
    ["diag", "cmd", "pause", "--mqtt", "h:1", "--timeout", "0"],
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("parcel-sorter: "), err


def _namespace(**given: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"mqtt": None, "mqtt_user": None, "mqtt_password_file": None,
                                 **given})


def test_mqtt_option_sets_or_overrides_the_diagnostics_section(tmp_path: Path) -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert config.diagnostics is None
    assert with_diagnostics(config, _namespace()) is config
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    set_ = with_diagnostics(config, _namespace(mqtt=("10.0.0.5", 8883), mqtt_user="controller",
                                               mqtt_password_file=secret))
    assert set_.diagnostics == DiagnosticsConfig(host="10.0.0.5", port=8883,
                                                 username="controller",
                                                 password_file=str(secret.resolve()))
    tuned = config.model_copy(update={"diagnostics": DiagnosticsConfig(
        topic_prefix="site", metrics_every_s=1.0, username="old")})
    moved = with_diagnostics(tuned, _namespace(mqtt=("127.0.0.1", 1999)))
    assert moved.diagnostics is not None
    assert (moved.diagnostics.host, moved.diagnostics.port) == ("127.0.0.1", 1999)
    assert (moved.diagnostics.topic_prefix, moved.diagnostics.metrics_every_s,
            moved.diagnostics.username) == ("site", 1.0, "old")
    with pytest.raises(ConfigError, match="need --mqtt"):
        with_diagnostics(config, _namespace(mqtt_user="x"))
    with pytest.raises(ConfigError, match="no such file"):
        with_diagnostics(config, _namespace(mqtt=("h", 1), mqtt_password_file=tmp_path / "no"))


def test_sim_and_run_refuse_a_bad_mqtt_option(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["sim", "--mqtt", "nohost"], ["run", "--config", "x", "--mqtt", "h:0"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert "expected HOST:PORT" in capsys.readouterr().err
    assert main(["sim", "--parcels", "1", "--mqtt-user", "anna"]) == 2
    assert "need --mqtt" in capsys.readouterr().err


# --- a stand-in controller on a real broker ------------------------------------------------


@dataclass
class StandIn:
    """Publishes a line's diagnostics and answers its commands as the protocol says."""

    broker: Mosquitto
    prefix: str
    line: str = "line1"
    credentials: tuple[str, str] | None = None
    traces: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, Any, str | None]] = field(default_factory=list)
    state: str = "running"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.line}"

    def client(self) -> aiomqtt.Client:
        user, password = self.credentials or (None, None)
        will = aiomqtt.Will(f"{self.base}/status", json.dumps(
            {"state": "offline", "reason": "connection lost", "line": self.line}), 1, True)
        return aiomqtt.Client(self.broker.host, self.broker.port, username=user,
                              password=password, protocol=aiomqtt.ProtocolVersion.V5,
                              will=will, identifier=f"stand-in-{secrets.token_hex(3)}")

    async def serve(self, ready: asyncio.Event) -> None:
        async with self.client() as client:
            await client.publish(f"{self.base}/status", status(line=self.line), 1, True)
            for device_id, state in (("camera-cam1", "streaming"), ("link-serial", "up"),
                                     ("node-D3", "offline")):
                await client.publish(f"{self.base}/devices/{device_id}",
                                     device(device_id, state), 1, True)
            await client.subscribe(f"{self.base}/cmd/+", qos=1)
            ready.set()
            ticker = asyncio.create_task(self._tick(client))
            try:
                async for message in client.messages:
                    await self._answer(client, message)
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker

    async def _tick(self, client: aiomqtt.Client) -> None:
        parcel = 1000
        while True:
            await client.publish(f"{self.base}/events/no_read",
                                 event("no_read", parcel, "no acceptable code read"), 1)
            await client.publish(f"{self.base}/metrics", metrics(), 0)
            parcel += 1
            await asyncio.sleep(0.2)

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        verb = str(message.topic).rsplit("/", 1)[1]
        reply_to = getattr(message.properties, "ResponseTopic", None)
        correlation = getattr(message.properties, "CorrelationData", None)
        try:
            request = json.loads(message.payload)
        except ValueError:
            request = None
        self.requests.append((verb, request, reply_to))
        transaction = request.get("transaction") if isinstance(request, dict) else None
        status_, data, error = self._carry_out(verb, request)
        if status_ == "ok" and verb in ("pause", "resume"):
            await client.publish(f"{self.base}/status",
                                 status(self.state, "by a technician", self.line), 1, True)
        reply = json.dumps({"transaction": transaction, "verb": verb, "status": status_,
                            "data": data, "error": error})
        await client.publish(f"{self.base}/cmd/{verb}/response", reply, 1)
        if isinstance(reply_to, str) and reply_to.startswith(f"{self.base}/replies/"):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation is not None:
                properties.CorrelationData = correlation
            await client.publish(reply_to, reply, 1, properties=properties)

    def _carry_out(self, verb: str, request: object) -> tuple[str, Any, str | None]:
        if not isinstance(request, dict):
            return "error", None, "the request is not a JSON object"
        if verb == "pause":
            self.state = "paused"
            return "ok", {"state": "paused"}, None
        if verb == "resume":
            self.state = "running"
            return "ok", {"state": "running"}, None
        if verb == "bin-emptied":
            if not isinstance(request.get("bin"), str):
                return "error", None, "bin: required, a bin id"
            return "ok", {"bin": request["bin"], "was": 80}, None
        if verb == "trace":
            trace = self.traces.get(request.get("parcel"))  # type: ignore[arg-type]
            if trace is None:
                return "error", None, f"no parcel {request.get('parcel')}"
            return "ok", trace, None
        return "error", None, f"unknown verb {verb!r}"


@contextlib.asynccontextmanager
async def standing_in(stand_in: StandIn) -> AsyncIterator[StandIn]:
    ready = asyncio.Event()
    task = asyncio.create_task(stand_in.serve(ready))
    try:
        async with asyncio.timeout(5):
            await asyncio.wait({task, asyncio.create_task(ready.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield stand_in
    finally:
        # cancelled again until it ends: aiomqtt's publish can swallow a cancellation
        assert await cancel_and_wait([task]), "the stand-in did not stop"
        if not task.cancelled():
            task.result()


def _prefix() -> str:
    """A topic prefix of this test's own: the session's broker keeps retained topics."""
    return f"t{secrets.token_hex(4)}"


def _mqtt(broker: Mosquitto) -> list[str]:
    return ["--mqtt", f"{broker.host}:{broker.port}"]


async def _main(argv: Sequence[str]) -> int:
    # In a thread: the tool runs its own event loop, the stand-in runs on this one.
    async with asyncio.timeout(20):
        return await asyncio.to_thread(main, list(argv))


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_once_shows_the_line_as_its_controller_publishes_it(
        mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Piped, ``--once`` renders 120 columns wide; a COLUMNS inherited by the test (an xdist
    # worker has one) would narrow it and wrap the reasons this test looks for.
    monkeypatch.delenv("COLUMNS", raising=False)
    prefix = _prefix()
    async with standing_in(StandIn(mosquitto, prefix)):
        started = time.monotonic()
        code = await _main(["diag", *_mqtt(mosquitto), "--prefix", prefix, "--once",
                            "--wait", "3"])
        took = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0, out
    assert took < 2.5  # status and metrics both came: no need to wait out --wait
    for shown in (f"{prefix}/line1", "RUNNING", "sorting", "B1", "80/400 20%", "FULL",
                  "camera-cam1", "streaming", "link-serial", "node-D3", "offline",
                  "no_read", "no acceptable code read", "SORTED 640", "bad messages 0"):
        assert shown in out, shown


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_once_without_a_controller_says_no_status_and_exits_1(
        mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    code = await _main(["diag", *_mqtt(mosquitto), "--prefix", _prefix(), "--once",
                        "--wait", "0.5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "no status yet" in out
    assert "no line seen yet" in out


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_once_shows_a_dead_controllers_will_as_offline(
        own_broker: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    _mosquitto_clients()
    prefix = _prefix()
    # a client holding the controller's Will, killed: the broker publishes the Will
    holder = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", own_broker.host, "-p", str(own_broker.port), "-V", "mqttv5",
        "-t", "x", "--will-topic", f"{prefix}/east/status", "--will-retain", "--will-qos", "1",
        "--will-payload", json.dumps({"state": "offline", "reason": "connection lost"}),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(0.5)
    holder.kill()
    await holder.wait()
    await asyncio.sleep(0.3)
    code = await _main(["diag", *_mqtt(own_broker), "--prefix", prefix, "--once", "--wait", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "OFFLINE" in out
    assert "connection lost" in out
    assert f"{prefix}/east" in out


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_cmd_pause_gets_the_controllers_reply(
        mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = _prefix()
    async with standing_in(StandIn(mosquitto, prefix)) as stand_in:
        code = await _main(["diag", "cmd", "pause", "reason=lunch", *_mqtt(mosquitto),
                            "--prefix", prefix, "--line", "line1", "--by", "anna"])
        out = capsys.readouterr().out
        assert code == 0, out
        reply = json.loads(out)
        assert (reply["verb"], reply["status"], reply["data"]) == ("pause", "ok",
                                                                   {"state": "paused"})
        [(verb, request, reply_to)] = stand_in.requests
        assert verb == "pause"
        assert request["reason"] == "lunch"
        assert request["by"] == "anna"
        assert reply["transaction"] == request["transaction"]
        assert reply_to is not None
        assert reply_to.startswith(f"{prefix}/line1/replies/")
        # the line's status now says so, as the next snapshot shows
        assert await _main(["diag", *_mqtt(mosquitto), "--prefix", prefix, "--once"]) == 0
        assert "PAUSED" in capsys.readouterr().out


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_cmd_error_reply_exits_1_and_without_line_finds_the_line(
        mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = _prefix()
    async with standing_in(StandIn(mosquitto, prefix, line="west")) as stand_in:
        code = await _main(["diag", "cmd", "bin-emptied", *_mqtt(mosquitto), "--prefix", prefix])
        out = capsys.readouterr().out
        assert code == 1, out
        reply = json.loads(out)
        assert reply["status"] == "error"
        assert "bin" in reply["error"]
        assert await _main(["diag", "cmd", "bin-emptied", "bin=B3", *_mqtt(mosquitto),
                            "--prefix", prefix]) == 0
        assert json.loads(capsys.readouterr().out)["data"] == {"bin": "B3", "was": 80}
        assert [verb for verb, _, _ in stand_in.requests] == ["bin-emptied", "bin-emptied"]


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_cmd_with_no_responder_exits_4_quickly(
        mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = await _main(["diag", "cmd", "pause", *_mqtt(mosquitto), "--prefix", _prefix(),
                        "--line", "line1", "--timeout", "1"])
    took = time.monotonic() - started
    assert code == 4
    assert took < 2.5
    assert "no reply within 1 s (is this account allowed to command?)" in capsys.readouterr().err


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_diag_cmd_to_an_unreachable_broker_exits_4(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = await _main(["diag", "cmd", "pause", "--mqtt", f"127.0.0.1:{_closed_port()}",
                        "--line", "line1", "--timeout", "1"])
    assert code == 4
    assert "cannot reach the broker" in capsys.readouterr().err


def _closed_port() -> int:
    from sim_hardware.broker import free_port

    return free_port()


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_the_deploy_technician_account_watches_but_cannot_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed")
    async with Mosquitto(deploy=True) as broker:
        stand_in = StandIn(broker, "sorter", line=f"l{secrets.token_hex(3)}",
                           credentials=broker.credentials("controller"))
        password = tmp_path / "technician.pw"
        password.write_text(broker.passwords["technician"] + "\n")
        login = [*_mqtt(broker), "--user", "technician", "--password-file", str(password),
                 "--line", stand_in.line]
        async with standing_in(stand_in):
            assert await _main(["diag", *login, "--once"]) == 0
            out = capsys.readouterr().out
            assert "RUNNING" in out
            assert "camera-cam1" in out
            assert await _main(["diag", "cmd", "pause", *login, "--timeout", "1"]) == 4
            assert "is this account allowed to command?" in capsys.readouterr().err
            assert stand_in.requests == []  # the broker dropped it: nothing reached the line
        wrong = tmp_path / "wrong.pw"
        wrong.write_text("not-the-password\n")
        bad_login = [*_mqtt(broker), "--user", "technician", "--password-file", str(wrong)]
        assert await _main(["diag", *bad_login, "--once"]) == 4
        assert "cannot reach the broker" in capsys.readouterr().err


# --- the broker's own clients, as a technician without our tool -----------------------------


def _mosquitto_clients() -> None:
    if not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")):
        pytest.skip("mosquitto-clients are not installed")


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_mosquitto_clients_read_the_status_and_pair_a_command_by_transaction(
        mosquitto: Mosquitto) -> None:
    """What the stand-in does is the protocol a plain MQTT client can use, so the tests of
    our tool against it test the tool against the protocol."""
    _mosquitto_clients()
    prefix = _prefix()
    where = ["-h", mosquitto.host, "-p", str(mosquitto.port)]
    async with standing_in(StandIn(mosquitto, prefix)) as stand_in:
        retained = await _run(["mosquitto_sub", *where, "-v", "-C", "1", "-W", "5",
                               "-t", f"{prefix}/line1/status"])
        topic, _, payload = retained.partition(" ")
        assert topic == f"{prefix}/line1/status"
        assert json.loads(payload)["state"] == "running"

        response = f"{prefix}/line1/cmd/pause/response"
        sub = await asyncio.create_subprocess_exec(  # stdbuf: its SUBACK line at once
            "stdbuf", "-oL", "mosquitto_sub", *where, "-d", "-C", "1", "-W", "5", "-t", response,
            stdout=asyncio.subprocess.PIPE)
        assert sub.stdout is not None
        async with asyncio.timeout(5):  # subscribed before the command goes out
            while b"SUBACK" not in await sub.stdout.readline():
                pass
        await _run(["mosquitto_pub", *where, "-q", "1", "-t", f"{prefix}/line1/cmd/pause",
                    "-m", json.dumps({"transaction": "t-17", "by": "anna"})])
        async with asyncio.timeout(5):
            lines = (await sub.stdout.read()).decode().splitlines()
            await sub.wait()
        reply = json.loads(next(line for line in lines if line.startswith("{")))
        assert reply == {"transaction": "t-17", "verb": "pause", "status": "ok",
                         "data": {"state": "paused"}, "error": None}
        assert stand_in.requests[0][2] is None  # MQTT 3.1.1: no response topic, paired by id


async def _run(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, argv
    return out.decode().strip()


# --- the live view in a real terminal -----------------------------------------------------


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_the_live_view_in_a_terminal_shows_the_line_and_quits_on_q(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed")
    prefix = _prefix()
    socket = f"diag-test-{os.getpid()}-{secrets.token_hex(3)}"  # a tmux server of our own
    done = tmp_path / "exit-status"
    command = (f"{sys.executable} -m controller diag --mqtt {mosquitto.host}:{mosquitto.port} "
               f"--prefix {prefix}; echo $? > {done}")

    async def tmux_(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            tmux, "-L", socket, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return out.decode(errors="replace")

    async def exit_status() -> str:
        return await asyncio.to_thread(lambda: done.read_text() if done.exists() else "")

    async with standing_in(StandIn(mosquitto, prefix)) as stand_in:
        await tmux_("-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", command)
        try:
            shown = (f"{prefix}/line1", "RUNNING", "camera-cam1", "no_read", "FULL",
                     "bad messages 0")
            await _until(lambda: tmux_("capture-pane", "-p"),
                         lambda screen: all(s in screen for s in shown))
            # a command from elsewhere shows up in the live view
            await _main(["diag", "cmd", "pause", *_mqtt(mosquitto), "--prefix", prefix,
                         "--line", "line1"])
            await _until(lambda: tmux_("capture-pane", "-p"), lambda screen: "PAUSED" in screen)
            assert stand_in.state == "paused"
            await tmux_("send-keys", "q")
            assert (await _until(exit_status, bool)).strip() == "0"
        finally:
            await tmux_("kill-server")


async def _until(probe: Callable[[], Awaitable[T]], good: Callable[[T], bool],
                 timeout_s: float = 10.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if good(value):
            return value
        assert time.monotonic() < deadline, f"never came: last {value!r}"
        await asyncio.sleep(0.1)


# --- trace --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shift(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A short simulated shift's journal, with the emulator's truth of every parcel."""
    workdir = tmp_path_factory.mktemp("trace-shift")
    report = workdir / "report.json"
    assert main(["sim", "--parcels", "12", "--seed", "4", "--workdir", str(workdir),
                 "--report", str(report)]) == 0
    return workdir / "journal.sqlite", json.loads(report.read_text())["parcels"]


def _line_config(tmp_path: Path, journal: Path, diagnostics: str = "") -> Path:
    text = EXAMPLE_CONFIG.read_text().replace(
        'path = "/var/lib/parcel-sorter/journal.sqlite"', f'path = "{journal}"')
    config = tmp_path / "line.toml"
    config.write_text(text + diagnostics)
    return config


def test_trace_prints_the_journals_record_of_a_parcel_and_of_a_code(
        tmp_path: Path, shift: tuple[Path, list[dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    journal, truth = shift
    config = _line_config(tmp_path, journal)
    for parcel in truth:
        assert main(["trace", str(parcel["parcel_id"]), "--config", str(config), "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["parcel"] == parcel["parcel_id"]
        assert record["disposition"] == parcel["disposition"]
        assert record["bin"] == parcel["actual_bin"]
        assert record["messages"] is None
    coded = next(p for p in truth if p["code"])  # digits, and no parcel has that id
    assert main(["trace", coded["code"], "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"code {coded['code']}" in out
    assert f"parcel {coded['parcel_id']}" in out
    assert coded["disposition"] in out


def test_trace_of_an_unknown_parcel_exits_1_with_one_line(
        tmp_path: Path, shift: tuple[Path, list[dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _line_config(tmp_path, shift[0])
    assert main(["trace", "987654", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no parcel '987654'" in err[0]
    missing = _line_config(tmp_path, tmp_path / "none.sqlite")
    assert main(["trace", "1", "--config", str(missing)]) == 1
    assert "no journal at" in capsys.readouterr().err


@pytest.mark.wallclock
@pytest.mark.asyncio
async def test_trace_adds_the_live_controllers_message_log(
        tmp_path: Path, mosquitto: Mosquitto, shift: tuple[Path, list[dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    journal, truth = shift
    prefix = _prefix()
    config = _line_config(tmp_path, journal, f'\n[diagnostics]\nhost = "{mosquitto.host}"\n'
                                             f'port = {mosquitto.port}\n'
                                             f'topic_prefix = "{prefix}"\n')
    parcel = truth[0]
    live = {"parcel": parcel["parcel_id"], "code": parcel["code"], "order": None,
            "disposition": parcel["disposition"], "bin": parcel["actual_bin"], "reason": "r",
            "inducted_at": SINCE, "final_at": SINCE, "messages": [
                {"at": SINCE, "direction": "sent", "link": "serial", "kind": "divert",
                 "detail": {"command": 77, "diverter": "D2"}},
                {"at": SINCE, "direction": "received", "link": "serial",
                 "kind": "divert_answer", "detail": {"command": 77, "accepted": True},
                 "latency_ms": 1.4}]}
    async with standing_in(StandIn(mosquitto, prefix, traces={parcel["parcel_id"]: live})):
        assert await _main(["trace", str(parcel["parcel_id"]), "--config", str(config),
                            "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == live
        assert await _main(["trace", str(parcel["parcel_id"]), "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "messages (2):" in out
        assert "divert_answer" in out
        assert "1.4 ms" in out
        # a parcel the live log does not answer for: the journal alone, and a note why
        other = truth[1]
        assert await _main(["trace", str(other["parcel_id"]), "--config", str(config),
                            "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["disposition"] == other["disposition"]
        assert "the live controller answered: no parcel" in captured.err
    started = time.monotonic()
    assert await _main(["trace", str(parcel["parcel_id"]), "--config", str(config),
                        "--timeout", "0.5"]) == 0
    assert time.monotonic() - started < 2.5
    captured = capsys.readouterr()
    assert "no answer from the live controller within 0.5 s" in captured.err
    assert "messages: unknown" in captured.out
