"""The systemd unit, as deploy/install.sh installs it into a temporary root.

``systemd-analyze verify --root`` resolves the unit's dependencies and ExecStart paths
inside that root, so the host's target units are copied in beside it. Needs no running
systemd; skipped where systemd-analyze is absent (Debian package ``systemd``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_install import Staged, installed_root

ANALYZE = shutil.which("systemd-analyze")
HOST_UNITS = Path("/usr/lib/systemd/system")
UNIT_PATH = "/etc/systemd/system/parcel-sorter.service"
VENV_BIN = "/opt/parcel-sorter/venv/bin/parcel-sorter"
CONFIG = "/etc/parcel-sorter/line.toml"
MAX_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")


def with_targets(root: Path) -> Path:
    """Give ``root`` the host's target units, which every service's default dependencies name."""
    units = root / "usr" / "lib" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    for target in HOST_UNITS.glob("*.target"):
        if not (units / target.name).exists():
            shutil.copy2(target, units / target.name)
    return root


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def unit_settings(path: Path) -> dict[tuple[str, str], list[str]]:
    """Each ``(section, key)`` of a unit file with its values, in order (keys may repeat)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    staged = installed_root(tmp_path_factory)
    with_targets(staged.root)
    return staged


def test_systemd_analyze_verify_accepts_the_installed_unit_without_a_word(
        staged: Staged) -> None:
    done = analyze("verify", "--man=no", f"--root={staged.root}", UNIT_PATH)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # unknown keys and bad values are only warnings: none allowed


def test_verify_fails_when_the_executable_is_not_where_the_unit_says(
        staged: Staged, tmp_path: Path) -> None:
    root = with_targets(tmp_path / "root")
    unit = root / UNIT_PATH.lstrip("/")
    unit.parent.mkdir(parents=True)
    shutil.copy2(staged.unit, unit)
    done = analyze("verify", "--man=no", f"--root={root}", UNIT_PATH)
    assert done.returncode != 0
    assert f"{VENV_BIN} is not executable" in done.stderr


def test_the_unit_runs_the_installed_venv_as_a_notifying_hardened_service(
        staged: Staged) -> None:
    settings = unit_settings(staged.unit)
    expected = {
        ("Unit", "StartLimitIntervalSec"): ["120"],
        ("Unit", "StartLimitBurst"): ["5"],
        ("Service", "Type"): ["notify"],
        ("Service", "NotifyAccess"): ["main"],
        ("Service", "WatchdogSec"): ["10s"],
        ("Service", "User"): ["parcel-sorter"],
        ("Service", "SupplementaryGroups"): ["dialout video"],
        ("Service", "ExecStartPre"): [f"{VENV_BIN} check-config {CONFIG}"],
        ("Service", "ExecStart"): [f"{VENV_BIN} run --config {CONFIG}"],
        ("Service", "Restart"): ["on-failure"],
        ("Service", "RestartSec"): ["2s"],
        ("Service", "KillSignal"): ["SIGTERM"],
        ("Service", "TimeoutStopSec"): ["30s"],
        ("Service", "SyslogIdentifier"): ["parcel-sorter"],
        ("Service", "StateDirectory"): ["parcel-sorter"],
        ("Service", "ReadWritePaths"): ["/var/lib/parcel-sorter"],
        ("Service", "ProtectSystem"): ["strict"],
        ("Service", "ProtectHome"): ["true"],
        ("Service", "PrivateTmp"): ["true"],
        ("Service", "NoNewPrivileges"): ["true"],
        ("Service", "DevicePolicy"): ["closed"],
        ("Service", "DeviceAllow"): ["char-ttyUSB rw", "char-ttyACM rw", "char-ttyS rw",
                                     "char-video4linux rw"],
        ("Service", "RestrictAddressFamilies"): ["AF_UNIX AF_INET AF_INET6"],
        ("Install", "WantedBy"): ["multi-user.target"],
    }
    wrong = {key: settings.get(key) for key, values in expected.items()
             if settings.get(key) != values}
    assert wrong == {}
    assert (staged.root / VENV_BIN.lstrip("/")).is_file()
    assert (staged.root / CONFIG.lstrip("/")).is_file()


def test_systemd_analyze_security_rates_the_unit_ok(staged: Staged) -> None:
    done = analyze("security", "--offline=yes", f"--root={staged.root}", "--no-pager",
                   UNIT_PATH)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for parcel-sorter\.service: ([0-9.]+)",
                      done.stdout)
    assert found, done.stdout[-2000:]
    assert float(found.group(1)) <= MAX_EXPOSURE
