"""sd_notify against a real datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app.sd_notify import Notifier
from tests.bench_processes import ENV, cli, start_emulate, stop, wait_for
from tests.conftest import ROOT


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket with an abstract name, and that name as NOTIFY_SOCKET says it."""
    name = f"parcel-sorter-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def received(sock: socket.socket, wait_s: float = 0.0) -> list[tuple[float, str]]:
    """Every datagram waiting (or arriving within ``wait_s``), with when it was taken."""
    got: list[tuple[float, str]] = []
    until = time.monotonic() + wait_s
    while True:
        ready, _, _ = select.select([sock], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            return got
        got.append((time.monotonic(), sock.recv(4096).decode()))


def test_without_notify_socket_everything_is_a_no_op() -> None:
    with Notifier.from_env({}) as notifier:
        assert not notifier.enabled
        notifier.ready("sorting")
        notifier.status("x")
        notifier.watchdog()
        assert notifier.watchdog_interval_s is None


def test_messages_reach_an_abstract_socket_and_a_path(
        notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, address = notify_socket
    with Notifier.from_env({"NOTIFY_SOCKET": address}) as notifier:
        notifier.status("starting: waiting for\ncamera cam1")
        notifier.status("starting: waiting for camera cam1")  # the same again: not resent
        notifier.ready("sorting")
        notifier.stopping()
    assert [m for _, m in received(sock, 0.5)] == [
        "STATUS=starting: waiting for camera cam1", "READY=1\nSTATUS=sorting", "STOPPING=1"]
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as by_path:
        by_path.bind(str(path))
        with Notifier(str(path)) as notifier:
            notifier.watchdog()
        assert [m for _, m in received(by_path, 0.5)] == ["WATCHDOG=1"]


def test_a_send_that_fails_is_logged_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), Notifier(str(tmp_path / "nobody")) as notifier:
        for _ in range(3):
            notifier.ready()
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1


def test_the_watchdog_is_for_the_pid_it_names() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000"}
    with Notifier.from_env(env) as mine:
        assert mine.watchdog_interval_s == 1.5
    with Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}) as mine:
        assert mine.watchdog_interval_s == 1.5
    with Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) as other:
        assert other.watchdog_interval_s is None


@pytest.mark.wallclock
def test_a_stalled_loop_stops_the_watchdog_pings_for_as_long(
        notify_socket: tuple[socket.socket, str]) -> None:
    """Pings every 50 ms from a child's loop; a callback blocking it 0.8 s leaves that gap.

    The pings are timed as they arrive here, in a process the stall does not block.
    """
    sock, address = notify_socket
    code = ("import asyncio, time\n"
            "from controller.app.sd_notify import Notifier\n"
            "async def main():\n"
            "    with Notifier.from_env() as n:\n"
            "        t = asyncio.create_task(n.keep_alive())\n"
            "        await asyncio.sleep(0.5)\n"
            "        asyncio.get_running_loop().call_soon(time.sleep, 0.8)\n"
            "        await asyncio.sleep(0.5)\n"
            "        t.cancel()\n"
            "asyncio.run(main())\n")
    child = subprocess.Popen([cli()[0], "-c", code], cwd=ROOT,
                             env={**ENV, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"})
    try:
        pings = []
        until = time.monotonic() + 15
        while child.poll() is None and time.monotonic() < until:
            pings += received(sock, 0.05)
        pings += received(sock, 0.1)
    finally:
        stop(child)
    times = [t for t, m in pings if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 8
    assert max(gaps) >= 0.7  # the stall: no ping for as long as the loop was blocked
    assert sorted(gaps)[len(gaps) // 2] < 0.2  # otherwise every 50 ms


@pytest.mark.wallclock
def test_run_says_ready_only_once_the_line_is_ready_and_stopping_at_sigterm(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, address = notify_socket
    emulator, _, config = start_emulate(tmp_path, parcels=6, seed=5, extra=("--drain", "1"))
    controller: subprocess.Popen[str] | None = None
    seen: list[str] = []
    try:
        assert emulator.stdout is not None
        wait_for(emulator.stdout, r"^config: ", seen)
        controller = subprocess.Popen(
            cli("run", "--config", str(config)), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**ENV, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000000"})
        wait_for(emulator.stdout, r"^controller ready: the infeed feeds", seen)
        before_feeding = [m for _, m in received(sock)]  # all sent before the infeed fed
        seen += emulator.stdout.readlines()
        assert emulator.wait(timeout=120) == 0, "".join(seen)
        controller.send_signal(signal.SIGTERM)
        output, _ = controller.communicate(timeout=40)
        assert controller.returncode == 0, output
        assert "stopping: induction stopped" in output, output
        after = [m for _, m in received(sock, 0.2)]
    finally:
        stop(emulator, controller)
    messages = [m for m in before_feeding + after if m != "WATCHDOG=1"]
    assert "READY=1\nSTATUS=sorting" in before_feeding
    ready = messages.index("READY=1\nSTATUS=sorting")
    starting = messages[:ready]
    assert starting, messages
    assert all(m.startswith("STATUS=starting") for m in starting), messages
    assert any("camera cam1" in m for m in starting)  # it named what it waited for
    assert starting[-1] != "STATUS=starting: waiting for "
    assert [m for m in messages[ready:] if m.startswith("STOPPING=1")] == [messages[-1]]
    assert "WATCHDOG=1" in before_feeding + after
