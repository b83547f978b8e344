"""``parcel-sorter diag``: a technician's live view of a line, and ``diag cmd`` to command it.

Both speak docs/diagnostics-protocol.md over MQTT 5 and nothing else, so they work from any
machine that reaches the broker. The CLI adds them with :func:`add_diag_command`; their
handlers are the parsed arguments' ``tool_handler``. :func:`send_command` is the one request
and reply exchange, also used by ``parcel-sorter trace``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console
from rich.live import Live

from controller.app.diag_login import (
    DEVICE,
    EXIT_BAD_ARGUMENTS,
    EXIT_NO_REPLY,
    RECONNECT_MAX_S,
    REDRAW_S,
    VERB,
    NoLine,
    UsageError,
    add_login_options,
    broker_config,
    mqtt_client,
    new_client_id,
    parse_fields,
    payload_bytes,
    say,
)
from controller.app.diag_view import LineView, render
from controller.config import MqttBrokerConfig
from drivers.mqtt_client import Login, login

__all__ = ["DEVICE", "EXIT_BAD_ARGUMENTS", "EXIT_NO_REPLY", "NoLine", "UsageError",
           "add_diag_command", "broker_config", "discover_line", "parse_fields", "run_diag",
           "run_diag_cmd", "send_command", "snapshot", "watch"]


def add_diag_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``diag`` and ``diag cmd`` to the CLI's subcommands."""
    p = sub.add_parser(
        "diag", help="watch a line live over MQTT (diag cmd: send it a command)",
        description="A live view of a line's status, rates, dispositions, bins, devices and "
                    "latest exceptions, from its diagnostics topics (docs/diagnostics-"
                    "protocol.md). q or Ctrl-C quits. `diag cmd VERB` sends one command.")
    add_login_options(p, suppress=False)
    p.add_argument("--once", action="store_true",
                   help="print one snapshot and exit: 0 when the line's status arrived, 1 if not")
    p.add_argument("--wait", type=float, default=1.0, metavar="SECONDS",
                   help="with --once: how long to collect before printing, unless the status "
                        "and a metrics message arrived sooner (default: %(default)g)")
    p.set_defaults(tool_handler=run_diag)
    actions = p.add_subparsers(dest="diag_command", metavar="cmd")
    cmd = actions.add_parser(
        "cmd", help="send one command and print its reply",
        description="Send one command and print the controller's reply as JSON. Exit 0 when "
                    "it says ok, 1 when it says error, 4 when no reply came in time, 2 for "
                    "bad arguments. Values are JSON when they parse as JSON (on=true, "
                    "parcel=12, code='\"0042\"'), else strings.")
    cmd.add_argument("verb", metavar="VERB",
                     help="pause, resume, maintenance, test-fire, bin-emptied, reload-plan, "
                          "trace, rebirth")
    cmd.add_argument("fields", nargs="*", metavar="KEY=VALUE",
                     help="the request's fields (right after VERB)")
    add_login_options(cmd, suppress=True)
    cmd.add_argument("--by", default=None, metavar="NAME",
                     help="who sends it, for the audit trail (default: your login name)")
    cmd.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                     help="how long to wait for the reply (default: %(default)g)")
    cmd.set_defaults(tool_handler=run_diag_cmd)


# --- diag cmd -----------------------------------------------------------------------------


def run_diag_cmd(args: argparse.Namespace) -> int:
    """Handle ``diag cmd``: send the command, print the reply; its exit status."""
    try:
        broker, request = _command_request(args)
    except UsageError as exc:
        say(str(exc))
        return EXIT_BAD_ARGUMENTS
    request.setdefault("transaction", f"diag-{secrets.token_hex(6)}")
    request.setdefault("by", args.by or _user())
    where = login(broker, DEVICE)
    try:
        reply = asyncio.run(_command_anywhere(where, broker.topic_prefix, args.line,
                                              args.verb, request=request,
                                              timeout_s=args.timeout))
    except aiomqtt.MqttError as exc:
        say(f"cannot reach the broker {where.where}: {exc}")
        return EXIT_NO_REPLY
    except NoLine as exc:
        say(str(exc))
        return EXIT_NO_REPLY
    if reply is None:
        say(f"no reply within {args.timeout:g} s (is this account allowed to command?)")
        return EXIT_NO_REPLY
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0 if reply.get("status") == "ok" else 1


def _command_request(args: argparse.Namespace) -> tuple[MqttBrokerConfig, dict[str, Any]]:
    broker = broker_config(args)
    if not VERB.match(args.verb):
        raise UsageError(f"not a verb: {args.verb!r}")
    if not args.timeout > 0:
        raise UsageError("--timeout must be above 0")
    return broker, parse_fields(args.fields)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


async def _command_anywhere(where: Login, prefix: str, line: str | None, verb: str, *,
                            request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    if line is None:
        try:
            async with asyncio.timeout(timeout_s):
                line = await discover_line(where, prefix)
        except TimeoutError:
            raise NoLine(f"no line's status under {prefix}/ within {timeout_s:g} s: "
                         "give --line") from None
    return await send_command(where, prefix, line, verb, request,
                              timeout_s=max(0.1, deadline - loop.time()))


async def discover_line(where: Login, prefix: str) -> str:
    """The first line whose (retained) status shows under ``prefix``."""
    view = LineView(prefix=prefix)
    async with mqtt_client(where, new_client_id()) as client:
        await client.subscribe(f"{prefix}/+/status", qos=1)
        async for message in client.messages:
            if view.feed(str(message.topic), payload_bytes(message)) and view.line is not None:
                return view.line
    raise aiomqtt.MqttError("the broker closed the connection")


async def send_command(where: Login, prefix: str, line: str, verb: str,
                       request: dict[str, Any], *, timeout_s: float) -> dict[str, Any] | None:
    """Send ``request`` to ``<prefix>/<line>/cmd/<verb>`` and return its reply, or None if
    none came within ``timeout_s``. The reply is the first message on our Response Topic or
    the verb's response topic that carries our Correlation Data or our ``transaction``."""
    client_id = new_client_id()
    reply_topic = f"{prefix}/{line}/replies/{client_id}"
    transaction = request.get("transaction")
    correlation = json.dumps(transaction).encode()
    try:
        async with asyncio.timeout(timeout_s), mqtt_client(where, client_id) as client:
            await client.subscribe(reply_topic, qos=1)
            await client.subscribe(f"{prefix}/{line}/cmd/{verb}/response", qos=1)
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = reply_topic
            properties.CorrelationData = correlation
            await client.publish(f"{prefix}/{line}/cmd/{verb}", json.dumps(request), qos=1,
                                 properties=properties)
            async for message in client.messages:
                reply = _reply(message, correlation, transaction)
                if reply is not None:
                    return reply
    except TimeoutError:
        return None
    return None


def _reply(message: aiomqtt.Message, correlation: bytes, transaction: object
           ) -> dict[str, Any] | None:
    ours = getattr(message.properties, "CorrelationData", None) == correlation
    try:
        data = json.loads(payload_bytes(message))
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        if ours:
            return {"status": "error", "error": "the reply is not a JSON object",
                    "transaction": transaction}
        return None
    if ours or (transaction is not None and data.get("transaction") == transaction
                and type(data.get("transaction")) is type(transaction)):
        return data
    return None


# --- diag (the live view) -----------------------------------------------------------------


def run_diag(args: argparse.Namespace) -> int:
    """Handle ``diag``: the live view (or one snapshot with --once); its exit status."""
    try:
        broker = broker_config(args)
        _check_wait(args)
    except UsageError as exc:
        say(str(exc))
        return EXIT_BAD_ARGUMENTS
    where = login(broker, DEVICE)
    view = LineView(prefix=broker.topic_prefix, line=args.line)
    if args.once:
        try:
            asyncio.run(snapshot(where, view, args.wait))
        except aiomqtt.MqttError as exc:
            say(f"cannot reach the broker {where.where}: {exc}")
            return EXIT_NO_REPLY
        wide = "COLUMNS" in os.environ or sys.stdout.isatty()
        Console(width=None if wide else 120).print(render(view))
        return 0 if view.status is not None else 1
    asyncio.run(watch(where, view))
    return 0


def _check_wait(args: argparse.Namespace) -> None:
    if args.once and not args.wait > 0:
        raise UsageError("--wait must be above 0")


async def snapshot(where: Login, view: LineView, wait_s: float) -> None:
    """Fill ``view`` for ``wait_s`` seconds, or until its status and metrics arrived."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s), mqtt_client(where, new_client_id()) as client:
            view.connection = f"connected to {where.where}"
            await _follow(client, view, until_complete=True)


async def watch(where: Login, view: LineView, console: Console | None = None) -> None:
    """Draw ``view`` live until q, Ctrl-C or SIGTERM, reconnecting to the broker forever."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    feeding = asyncio.create_task(_keep_following(where, view))
    try:
        with _keys(stop), Live(render(view), console=console, screen=True,
                               auto_refresh=False) as live:
            while not stop.is_set():
                live.update(render(view), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), REDRAW_S)
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _keep_following(where: Login, view: LineView) -> None:
    backoff = 0.5
    while True:
        view.connection = f"connecting to {where.where}"
        try:
            async with mqtt_client(where, new_client_id()) as client:
                view.connection, backoff = f"connected to {where.where}", 0.5
                await _follow(client, view, until_complete=False)
        except aiomqtt.MqttError as exc:
            view.connection = f"disconnected from {where.where} ({exc}); retrying"
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, RECONNECT_MAX_S)


async def _follow(client: aiomqtt.Client, view: LineView, *, until_complete: bool) -> None:
    # Only the diagnostics topics: the line I/O traffic under the same line is not wanted.
    subscribed = False

    async def subscribe_line() -> None:
        base = f"{view.prefix}/{view.line}"
        for topic in ("status", "metrics", "events/+", "devices/+", "cmd/+/response"):
            await client.subscribe(f"{base}/{topic}", qos=1)

    if view.line is not None:
        await subscribe_line()
        subscribed = True
    else:
        await client.subscribe(f"{view.prefix}/+/status", qos=1)
    async for message in client.messages:
        view.feed(str(message.topic), payload_bytes(message))
        if not subscribed and view.line is not None:
            await subscribe_line()
            subscribed = True
        if until_complete and view.status is not None and view.metrics is not None:
            return
    raise aiomqtt.MqttError("the broker closed the connection")


@contextlib.contextmanager
def _keys(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when q is typed on a terminal stdin (keys unbuffered meanwhile)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
