"""A camera's login, read from the file or the environment variable its config names.

The line config never holds the secret itself: ``credentials_file`` names a file holding one
line ``user:password``, ``credentials_env`` a variable holding the same. Anything missing or
malformed is a :class:`DriverUnavailable` naming the file or variable, never the secret.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from controller.errors import DriverUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """A user and password for a camera's HTTP login."""

    user: str
    password: str = field(repr=False)


def parse_credentials(text: str, device: str, where: str) -> Credentials:
    """``user:password`` (one line; surrounding whitespace ignored)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise DriverUnavailable(device, f"{where} must hold one line user:password")
    user, colon, password = lines[0].strip().partition(":")
    if not colon or not user or not password:
        raise DriverUnavailable(device, f"{where} must hold user:password (both non-empty)")
    return Credentials(user, password)


def read_credentials(device: str, credentials_file: str | None,
                     credentials_env: str | None) -> Credentials | None:
    """The login the config points at, or None when it names none."""
    if credentials_env is not None:
        value = os.environ.get(credentials_env)
        if not value:
            raise DriverUnavailable(device, f"environment variable {credentials_env} "
                                            "(credentials_env) is not set")
        return parse_credentials(value, device, f"environment variable {credentials_env}")
    if credentials_file is None:
        return None
    path = Path(credentials_file)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DriverUnavailable(device, f"cannot read credentials_file {path}: {reason}") \
            from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: credentials_file %s is readable by others than its owner "
                    "(chmod 600 it)", device, path)
    return parse_credentials(text, device, f"credentials_file {path}")
