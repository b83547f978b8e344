"""A real mosquitto broker on a free loopback port, for tests and benches.

:class:`Mosquitto` writes its own config into a temporary directory (``listener <port>
127.0.0.1``, anonymous access, ``set_tcp_nodelay true``, no persistence, a log file beside
the config), starts ``mosquitto -c <conf>`` as a child process and waits until the port
accepts connections. :meth:`Mosquitto.stop` ends only the process it started (SIGTERM, then
SIGKILL after a timeout); :meth:`Mosquitto.restart` brings it back on the **same** port, which
is the broker-restart fault the MQTT links must ride through. Usable as a context manager,
sync or async (the async forms run the blocking parts in a thread).

With ``deploy=True`` it runs the production rules instead: deploy/mosquitto.conf's settings,
deploy/mosquitto.acl, no anonymous access, and a password file generated for this broker
(``mosquitto_passwd -b``) with a random password for every user the ACL names
(:attr:`Mosquitto.passwords`; :meth:`Mosquitto.write_secrets` hands them to ``emulate``).
With ``tls=True`` as well it also runs the deploy config's TLS listener, on a second free
loopback port (:attr:`Mosquitto.tls_port`): that block's own settings, with its CA,
certificate and key swapped for ones made for this broker with ``trustme`` (a CA of its own,
:attr:`Mosquitto.ca_path` for the clients, and a server certificate for 127.0.0.1 and
localhost).

Without a mosquitto binary (``apt-get install mosquitto``) it raises
:class:`~controller.errors.DriverUnavailable`; tests call :func:`mosquitto_path` first and
skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from controller.errors import DriverUnavailable
from sim_hardware.broker_conf import (  # noqa: F401 - re-exported for the tests and benches
    DEPLOY,
    DEPLOY_ACL,
    DEPLOY_CONF,
    DEVICE,
    Listener,
    acl_users,
    deploy_settings,
    deploy_tls_listener,
    write_test_certificates,
)

_SBIN_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_path() -> str | None:
    """The mosquitto binary: on PATH, else in the sbin directories Debian installs it to."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _SBIN_CANDIDATES if os.access(p, os.X_OK)), None)


def write_password_file(path: Path, passwords: Mapping[str, str]) -> None:
    """A mosquitto password file (salted hashes) for these users, by ``mosquitto_passwd -b``."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise DriverUnavailable(DEVICE, "mosquitto_passwd is not installed "
                                        "(Debian: apt-get install mosquitto)")
    path.touch(mode=0o600)
    for user, password in passwords.items():
        done = subprocess.run([tool, "-b", str(path), user, password],  # our own tool
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise DriverUnavailable(DEVICE, f"mosquitto_passwd failed for {user}: "
                                            f"{done.stderr.decode(errors='replace')[:200]}")


def read_secrets(path: Path) -> dict[str, str]:
    """``user:password`` lines (as :meth:`Mosquitto.write_secrets` writes them)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        user, sep, password = line.partition(":")
        if sep and user:
            found[user] = password
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """A mosquitto child process listening on ``host:port`` (a free port unless given)."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, *, executable: str | None = None,
                 allow_anonymous: bool = True, settings: Sequence[str] = (),
                 deploy: bool = False, acl: Path = DEPLOY_ACL, tls: bool = False,
                 tls_port: int | None = None, conf: Path = DEPLOY_CONF,
                 start_timeout_s: float = 5.0, stop_timeout_s: float = 3.0) -> None:
        """``deploy``: the rules of ``conf`` and ``acl``; ``tls`` (with ``deploy``): also the
        TLS listener of ``conf``, on ``tls_port`` (a free one unless given)."""
        exe = executable or mosquitto_path()
        if exe is None:
            raise DriverUnavailable(DEVICE, "mosquitto is not installed "
                                            "(Debian: apt-get install mosquitto)")
        if tls and not deploy:
            raise ValueError("tls=True runs the deploy config's TLS listener: it needs "
                             "deploy=True")
        self.executable = exe
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(self.host)
        self.deploy = deploy
        self.acl = acl
        self.conf = conf
        self.tls = tls
        self._fixed_tls_port = tls_port is not None
        # the TLS listener's port (None without ``tls``)
        self.tls_port = (tls_port if tls_port is not None else free_port(self.host)) if tls \
            else None
        self._tls_listener = deploy_tls_listener(conf) if tls else None
        self._tls_files: dict[str, Path] | None = None
        self.allow_anonymous = allow_anonymous and not deploy
        self.settings = tuple(settings)
        # the deploy rules' users and their passwords (empty without ``deploy``)
        self.passwords = ({u: secrets.token_urlsafe(18) for u in acl_users(acl)} if deploy
                          else {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- paths -----------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-")
        return Path(self._dir.name)

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def passwd_path(self) -> Path:
        return self.directory / "mosquitto.passwd"

    @property
    def ca_path(self) -> Path:
        """The CA certificate that signed the TLS listener's (``tls=True`` only)."""
        if not self.tls:
            raise ValueError("this broker has no TLS listener (tls=False)")
        return self._certificates()["cafile"]

    def _certificates(self) -> dict[str, Path]:
        if self._tls_files is None:
            self._tls_files = write_test_certificates(self.directory)
        return self._tls_files

    def credentials(self, user: str) -> tuple[str, str]:
        """``(username, password)`` of a deploy user, for a client."""
        return user, self.passwords[user]

    def node_credentials(self, line: str) -> dict[str, tuple[str, str]]:
        """Each node of ``line`` (by node id) with its own deploy user, for MqttNodes."""
        prefix = f"{line}-"
        return {u.removeprefix(prefix): (u, pw) for u, pw in self.passwords.items()
                if u.startswith(prefix)}

    def write_secrets(self, path: Path) -> None:
        """The deploy users' plain passwords as ``user:password`` lines (mode 600)."""
        path.touch(mode=0o600)
        path.write_text("".join(f"{u}:{pw}\n" for u, pw in self.passwords.items()),
                        encoding="utf-8")

    def log_text(self) -> str:
        """What the broker logged so far, and its stderr (for a failing test's message)."""
        text = ""
        for path in (self.directory / "stderr.log", self.log_path):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(encoding="utf-8", errors="replace")
        return text

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            # Without it, a QoS 1 round trip stalls ~88 ms (Nagle + delayed ACK).
            "set_tcp_nodelay true",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Run as root (containers, CI), mosquitto would switch to the user "mosquitto",
            # who cannot write our log; as anyone else it ignores this line.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            *self._deploy_lines(),
            *self.settings,
            # last: a listener's own settings follow its listener line
            *self._tls_lines(),
        ]
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _deploy_lines(self) -> list[str]:
        if not self.deploy:
            return []
        if not self.passwd_path.exists():
            write_password_file(self.passwd_path, self.passwords)
        return [*deploy_settings(self.conf), f"password_file {self.passwd_path}",
                f"acl_file {self.acl}"]

    def _tls_lines(self) -> list[str]:
        if self._tls_listener is None:
            return []
        return [f"listener {self.tls_port} {self.host}",
                *self._tls_listener.with_files(self._certificates())]

    # --- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            return
        fixed = self._fixed_port and (self._fixed_tls_port or not self.tls)
        attempts = 1 if fixed or self.starts > 0 else 5
        for attempt in range(attempts):
            if attempt:  # someone took a port we picked: others
                if not self._fixed_port:
                    self.port = free_port(self.host)
                if self.tls and not self._fixed_tls_port:
                    self.tls_port = free_port(self.host)
            self._write_conf()
            with (self.directory / "stderr.log").open("ab") as stderr:
                self._proc = subprocess.Popen(  # our own binary and config
                    [self.executable, "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            if self._wait_accepting():
                self.starts += 1
                return
            self._reap()
        ports = ", ".join(str(p) for p in self._ports())
        raise DriverUnavailable(DEVICE, f"mosquitto did not come up on {self.host}:{ports}"
                                        f"\n{self.log_text()[-2000:]}")

    def _ports(self) -> list[int]:
        return [self.port] + ([self.tls_port] if self.tls_port is not None else [])

    def _wait_accepting(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        waiting = self._ports()
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, waiting[0]), timeout=0.2):
                    waiting.pop(0)
            except OSError:
                time.sleep(0.01)
            if not waiting:
                return True
        return False

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=self.stop_timeout_s)

    def stop(self, *, hard: bool = False) -> None:
        """End the broker process this object started: SIGTERM (SIGKILL if ``hard``), then
        SIGKILL if it has not exited within ``stop_timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        self._reap()

    def restart(self, *, hard: bool = False, down_s: float = 0.0) -> None:
        """Stop the broker, stay down ``down_s`` seconds, start it again on the same port."""
        self.stop(hard=hard)
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop the broker and delete its directory."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- async forms -----------------------------------------------------------------------

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, *, hard: bool = False) -> None:
        await asyncio.to_thread(self.stop, hard=hard)

    async def arestart(self, *, hard: bool = False, down_s: float = 0.0) -> None:
        """:meth:`restart` without blocking the event loop (clients notice the outage)."""
        await asyncio.to_thread(self.stop, hard=hard)
        if down_s > 0:
            await asyncio.sleep(down_s)
        await asyncio.to_thread(self.start)

    async def __aenter__(self) -> Mosquitto:
        await self.astart()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)
