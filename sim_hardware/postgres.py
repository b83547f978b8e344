"""A real PostgreSQL server on a free loopback port, for tests and benches.

:class:`Postgres` runs ``initdb`` into a temporary directory (a superuser ``sorter`` whose
password is written to :attr:`Postgres.password_file`; TCP connections need that password,
scram-sha-256), starts ``postgres`` as a child process listening on ``127.0.0.1:<port>``
(its unix socket in the same directory) and waits until it accepts connections.
:meth:`Postgres.stop` ends only the process it started (SIGTERM, fast shutdown; SIGKILL after
a timeout), :meth:`Postgres.restart` brings it back on the **same** port and data, and
:meth:`Postgres.pause`/:meth:`Postgres.resume` SIGSTOP/SIGCONT it: a server that does not
answer.

PostgreSQL refuses to run as root: run as root, the server (and ``initdb``) run as the
``postgres`` user if there is one, else ``nobody``, through ``setpriv``. The binaries are
found on PATH, else in ``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql``
package); without them :class:`~controller.errors.DriverUnavailable` is raised: tests call
:func:`postgres_bin_dir` first and skip.
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
from pathlib import Path
from types import TracebackType

from controller.errors import DriverUnavailable

DEVICE = "postgres"
USER = "sorter"
DATABASE = "postgres"
_DEBIAN_BIN = Path("/usr/lib/postgresql")
_UNPRIVILEGED = ("postgres", "nobody")
_INSTALL_HINT = "PostgreSQL is not installed (Debian: apt-get install postgresql)"


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: PATH's, else Debian's newest."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    versions = sorted((p for p in _DEBIAN_BIN.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def unavailable_reason() -> str | None:
    """Why no test server can run here (for a skip), or None."""
    if postgres_bin_dir() is None:
        return _INSTALL_HINT
    if os.geteuid() == 0 and _run_as() is None:
        return "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "running as root and setpriv (util-linux) is missing to drop to another user"
    return None


def _run_as() -> pwd.struct_passwd | None:
    for name in _UNPRIVILEGED:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Postgres:
    """A PostgreSQL child process on ``127.0.0.1:port`` (a free port unless given)."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, *, start_timeout_s: float = 15.0,
                 stop_timeout_s: float = 5.0, settings: dict[str, str] | None = None) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise DriverUnavailable(DEVICE, reason)
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None
        self.bin_dir = bin_dir
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(self.host)
        self.password = secrets.token_urlsafe(18)
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialised = False
        self.starts = 0

    # --- paths and names -------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="postgres-")
        return Path(self._dir.name)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def password_file(self) -> Path:
        """The superuser's password alone (what ``order_store.password_file`` names)."""
        return self.directory / "password"

    @property
    def dsn(self) -> str:
        """A postgresql:// URL without the password (it is in :attr:`password_file`)."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{DATABASE}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.directory / "postgres.log").read_text(encoding="utf-8",
                                                               errors="replace")
        return ""

    def _as_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        user = _run_as()
        assert user is not None
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--clear-groups", "--", *argv]

    def _initdb(self) -> None:
        directory = self.directory
        self.password_file.write_text(self.password + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)
        pwfile = directory / "initdb.pw"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            user = _run_as()
            assert user is not None
            os.chown(directory, user.pw_uid, user.pw_gid)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        done = subprocess.run(  # our own binary, our own arguments
            self._as_user([str(self.bin_dir / "initdb"), "-D", str(self.data_dir),
                           "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                           "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
                           "--locale=C"]),
            capture_output=True, check=False, cwd=directory)
        pwfile.unlink()
        if done.returncode != 0:
            raise DriverUnavailable(DEVICE, "initdb failed: "
                                            f"{done.stderr.decode(errors='replace')[-1000:]}")
        self._initialised = True

    # --- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (initdb first, once) and wait until it accepts connections."""
        if self.running:
            return
        if not self._initialised:
            self._initdb()
        attempts = 1 if self._fixed_port or self.starts > 0 else 5
        for attempt in range(attempts):
            if attempt:
                self.port = free_port(self.host)
            options = {"listen_addresses": self.host, "port": str(self.port),
                       "unix_socket_directories": str(self.directory), "fsync": "off",
                       "synchronous_commit": "off", "full_page_writes": "off",
                       "max_connections": "50", "shared_buffers": "128MB", **self.settings}
            argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
            for key, value in options.items():
                argv += ["-c", f"{key}={value}"]
            log = self.directory / "postgres.log"
            with log.open("ab") as stderr:
                if os.geteuid() == 0:
                    user = _run_as()
                    assert user is not None
                    os.chown(log, user.pw_uid, user.pw_gid)
                self._proc = subprocess.Popen(  # our own binary and settings
                    self._as_user(argv), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.directory)
            if self._wait_accepting():
                self.starts += 1
                return
            self._reap()
        raise DriverUnavailable(DEVICE, f"postgres did not come up on {self.host}:{self.port}"
                                        f"\n{self.log_text()[-2000:]}")

    def _wait_accepting(self) -> bool:
        """Until the server says it is ready (the port alone opens before it accepts logins)."""
        deadline = time.monotonic() + self.start_timeout_s
        isready = self.bin_dir / "pg_isready"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if isready.exists():
                done = subprocess.run(  # our own binary
                    [str(isready), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"],
                    capture_output=True, check=False)
                if done.returncode == 0:
                    return True
            else:
                with contextlib.suppress(OSError), \
                        socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            time.sleep(0.05)
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

    def pause(self) -> None:
        """SIGSTOP the server (its postmaster and the backends it forked): it stops answering."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT what :meth:`pause` stopped."""
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        pids = [self._proc.pid, *self._children(self._proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    @staticmethod
    def _children(pid: int) -> list[int]:
        found: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                text = (task / "children").read_text(encoding="ascii")
                for child in (int(word) for word in text.split()):
                    found += [child, *Postgres._children(child)]
        return found

    def stop(self, *, hard: bool = False) -> None:
        """End the server this object started: SIGINT (fast shutdown; SIGKILL if ``hard``),
        SIGKILL if it has not exited within ``stop_timeout_s``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.resume()  # a paused server cannot shut down
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if hard else signal.SIGINT)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        self._reap()
        if hard:  # its backends outlive a killed postmaster until they notice
            time.sleep(0.2)

    def restart(self, *, down_s: float = 0.0) -> None:
        """Stop the server, stay down ``down_s`` seconds, start it again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- async forms -----------------------------------------------------------------------

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self, *, down_s: float = 0.0) -> None:
        """:meth:`restart` without blocking the event loop (clients notice the outage)."""
        await asyncio.to_thread(self.stop)
        if down_s > 0:
            await asyncio.sleep(down_s)
        await asyncio.to_thread(self.start)
