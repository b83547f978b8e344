"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) on a datagram socket.

A :class:`Notifier` made from the environment sends ``READY=1``, ``STATUS=…``,
``STOPPING=1`` and ``WATCHDOG=1`` to ``$NOTIFY_SOCKET`` (a path, or an abstract name
starting with ``@``); without that variable every call does nothing. Nothing here raises
into the line: a failed send is logged once and the line goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)


class Notifier:
    """Messages to the service manager; a no-op when ``address`` is None."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failed = False
        self._last_status: str | None = None
        if address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """From ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (``os.environ``)."""
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        if pid.isdigit() and int(pid) != os.getpid():
            watchdog = None  # the watchdog is meant for another process
        elif env.get("WATCHDOG_USEC", "").isdigit() and int(env["WATCHDOG_USEC"]) > 0:
            watchdog = int(env["WATCHDOG_USEC"])
        return cls(address, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog's timeout, as sd_watchdog_enabled(3) advises; None if off."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2e6

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields as one datagram."""
        if self._socket is None or self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sd_notify: cannot send to %s: %s (further failures not logged)",
                            self.address, exc)

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> None:
        """``STATUS=<text>`` on one line; the same status again is not resent."""
        line = _one_line(text)
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop every half timeout, until cancelled.

        It sleeps on the loop itself, so a loop that stalls stops the pings and the service
        manager sees it.
        """
        interval = self.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())
