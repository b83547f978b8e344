"""deploy/install.sh staged into a temporary root, and the package it installs run from there.

The install (a wheel built from this checkout, its dependencies, a fresh venv) takes about a
minute, so it is made once (:func:`installed_root`) for every test here, including those of
the systemd unit as installed: ``systemd-analyze verify --root`` resolves the unit's
dependencies and ExecStart paths inside that root, so the host's target units are copied in
beside it. Needs no running systemd; the unit's tests skip where systemd-analyze is absent
(Debian package ``systemd``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "deploy" / "install.sh"
UNIT = ROOT / "deploy" / "parcel-sorter.service"
EXAMPLES = ROOT / "controller" / "app" / "examples"
INSTALL_TIMEOUT_S = 600



@dataclass(frozen=True)
class Staged:
    root: Path
    wheel: Path

    @property
    def venv(self) -> Path:
        return self.root / "opt" / "parcel-sorter" / "venv"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "parcel-sorter" / "line.toml"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "parcel-sorter"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / "parcel-sorter.service"


def clean_env() -> dict[str, str]:
    """This environment without anything that would import the checkout instead."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    return env


def base_python() -> str:
    """The interpreter this venv was made from: a venv of a venv is no venv of the checkout."""
    return str(Path(sys.base_prefix) / "bin" / "python3")


def run_install(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), *map(str, args)], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)


def build_wheel(into: Path) -> Path:
    """A wheel of the checkout, built from a copy (a build leaves build/ where it runs)."""
    source = into / "src"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for package in ("controller", "drivers", "sim_hardware"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source),
                    "-w", str(into)], check=True, capture_output=True, timeout=INSTALL_TIMEOUT_S)
    (wheel,) = into.glob("parcel_sorter-*.whl")
    return wheel


def installed_root(factory: pytest.TempPathFactory) -> Staged:
    """This session's staged install, made from a wheel of the checkout on first use."""
    base = factory.getbasetemp()
    staged = Staged(root=base / "installed-root", wheel=base / "installed-wheel")
    done = base / "installed-root.done"
    if not done.exists():
        staged.root.mkdir(exist_ok=True)
        wheel = build_wheel(staged.wheel)
        done_run = run_install("--root", staged.root, "--python", base_python(), wheel, cwd=base)
        assert done_run.returncode == 0, done_run.stderr
        done.write_text(str(wheel))
    return Staged(root=staged.root, wheel=Path(done.read_text()))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    staged = installed_root(tmp_path_factory)
    with_targets(staged.root)
    # What the unit runs from the system, as Debian's procps installs it (ExecReload)
    kill = staged.root / "usr" / "bin" / "kill"
    kill.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("kill") or "/usr/bin/kill", kill)
    return staged


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_wheel_ships_the_example_line_and_scenario(staged: Staged) -> None:
    with zipfile.ZipFile(staged.wheel) as wheel:
        names = set(wheel.namelist())
        assert "controller/app/examples/line.example.toml" in names
        assert "controller/app/examples/scenario.example.toml" in names
        assert (wheel.read("controller/app/examples/line.example.toml")
                == (EXAMPLES / "line.example.toml").read_bytes())


def test_install_lays_out_venv_config_state_and_unit(staged: Staged) -> None:
    cli = staged.venv / "bin" / "parcel-sorter"
    shown = subprocess.run([str(cli), "--help"], capture_output=True, text=True, env=clean_env(),
                           timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "check-config" in shown.stdout

    assert staged.config.read_bytes() == (EXAMPLES / "line.example.toml").read_bytes()
    assert mode(staged.config) == 0o640
    assert mode(staged.config.parent) == 0o755
    assert staged.state.is_dir()
    assert mode(staged.state) == 0o750
    assert staged.unit.read_bytes() == UNIT.read_bytes()
    assert mode(staged.unit) == 0o644

    sysusers = (staged.root / "usr" / "lib" / "sysusers.d" / "parcel-sorter.conf").read_text()
    entries = [line.split()[:3] for line in sysusers.splitlines()
               if line and not line.startswith("#")]
    assert ["u", "parcel-sorter", "-"] in entries
    assert ["m", "parcel-sorter", "dialout"] in entries
    assert ["m", "parcel-sorter", "video"] in entries


def test_the_installed_package_runs_a_shift_outside_the_checkout(staged: Staged,
                                                                 tmp_path: Path) -> None:
    python = staged.venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import controller.app.example_line as e; "
                            "print(e.EXAMPLE_CONFIG); print(e.EXAMPLE_SCENARIO)"],
        cwd=tmp_path, capture_output=True, text=True, env=clean_env(), timeout=60, check=True)
    config, scenario = (Path(line) for line in where.stdout.split())
    assert config.is_relative_to(staged.venv)
    assert config.is_file()
    assert scenario.is_file()

    shift = subprocess.run([str(staged.venv / "bin" / "parcel-sorter"), "sim", "--parcels", "5",
                            "--report", "report.json"], cwd=tmp_path, capture_output=True,
                           text=True, env=clean_env(), timeout=300, check=False)
    assert shift.returncode == 0, shift.stderr
    assert "parcels                           5" in shift.stdout
    assert (tmp_path / "report.json").is_file()


def test_a_second_install_keeps_an_edited_config(staged: Staged) -> None:
    original = staged.config.read_text()
    edited = original + "\n# edited on the box\n"
    staged.config.write_text(edited)
    had_build = (ROOT / "build").exists()
    try:
        again = run_install("--root", staged.root, "--python", base_python(), ROOT,
                            cwd=staged.root.parent)
        assert again.returncode == 0, again.stderr
        assert had_build or not (ROOT / "build").exists(), "the build ran in the checkout"
        assert "keeping" in again.stdout
        assert staged.config.read_text() == edited
        assert staged.unit.read_bytes() == UNIT.read_bytes()
    finally:
        staged.config.write_text(original)


@pytest.mark.parametrize(("args", "message"), [
    (["--frobnicate"], "unknown option: --frobnicate"),
    (["--root"], "--root needs a directory"),
    (["--root", "{tmp}/absent"], "is not a directory"),
    (["--root", "{tmp}", "{tmp}/parcel-sorter.tar.gz"], "SOURCE must be a .whl file"),
    (["--root", "{tmp}", "{tmp}/missing.whl"], "no such wheel"),
    (["--root", "{tmp}", "{tmp}"], "no pyproject.toml"),
    (["--root", "{tmp}", "--python", "{tmp}/nopython"], "is not a Python 3.11"),
])
def test_a_bad_argument_fails_with_a_clear_message_and_changes_nothing(
        tmp_path: Path, args: list[str], message: str) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    done = run_install(*(a.format(tmp=stage) for a in args), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.count("install.sh: ") == 1
    assert list(stage.iterdir()) == []


# --- a real install, on this machine's own paths, inside a throwaway mount namespace ---------

SANDBOXED = ("etc", "opt", "var", "usr")
NO_OVERLAY = 97
SYSTEM_PYTHON = Path("/usr/bin/python3")

# /etc, /opt, /var and /usr become overlays whose changes land in $1 and vanish with the
# namespace; then install.sh runs for real (user, chown, the unit in /etc/systemd/system) and
# what it made is checked from inside, where it exists.
SANDBOX = r"""
set -euo pipefail
changes=$1 install=$2 python=$3 wheel=$4 source=$5
for d in etc opt var usr; do
    mkdir -p "$changes/$d/upper" "$changes/$d/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$changes/$d/upper,workdir=$changes/$d/work" \
        "/$d" || exit 97
    [ "$(findmnt -n -o FSTYPE "/$d")" = overlay ] || exit 97
done
export PIP_NO_CACHE_DIR=1
"""
REAL_INSTALL = SANDBOX + r"""
bash "$install" --python "$python" "$wheel" >"$changes/first.out" 2>&1
echo "groups=$(id -nG parcel-sorter)"
echo "shell=$(getent passwd parcel-sorter | cut -d: -f7)"
echo "state=$(stat -c '%U:%G %a' /var/lib/parcel-sorter)"
echo "config=$(stat -c '%U:%G %a' /etc/parcel-sorter/line.toml)"
echo "unit=$(stat -c '%U:%G %a' /etc/systemd/system/parcel-sorter.service)"
runuser -u parcel-sorter -- /opt/parcel-sorter/venv/bin/parcel-sorter --help >/dev/null
runuser -u parcel-sorter -- touch /var/lib/parcel-sorter/written
runuser -u parcel-sorter -- cat /etc/parcel-sorter/line.toml >/dev/null
echo "state_writable=yes"
runuser -u parcel-sorter -- touch /etc/parcel-sorter/x 2>/dev/null \
    && echo "etc_writable_by_user=yes" || echo "etc_writable_by_user=no"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify --man=no /etc/systemd/system/parcel-sorter.service \
        >"$changes/verify.out" 2>&1 && echo "verify=ok" || echo "verify=failed"
fi
echo '# edited on the box' >> /etc/parcel-sorter/line.toml
bash "$install" --python "$python" "$source" >"$changes/second.out" 2>&1
echo "kept=$(tail -n 1 /etc/parcel-sorter/line.toml)"
echo "users=$(getent passwd | grep -c '^parcel-sorter:')"
"""


def sandbox_refusal() -> str | None:
    """Why this machine cannot take a real install in a mount namespace; None if it can."""
    if os.geteuid() != 0:
        return "a real install needs root"
    if shutil.which("unshare") is None or shutil.which("runuser") is None:
        return "unshare or runuser (util-linux) is missing"
    if Path("/run/systemd/system").exists():
        return "systemd runs this machine: install.sh would reload it"
    if not SYSTEM_PYTHON.exists() or subprocess.run(
            [SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True,
            check=False).returncode != 0:
        return f"no {SYSTEM_PYTHON} with venv: install.sh would apt-get python3-venv"
    libs = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    if "libzbar.so.0" not in libs:
        return "libzbar0 is missing: install.sh would apt-get it"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if any(point.startswith(f"/{d}/") for d in SANDBOXED):
            return f"{point} is a mount of its own: an overlay would hide it"
    return None


def in_sandbox(script: str, changes: Path, python: str | Path,
               wheel: Path) -> subprocess.CompletedProcess[str]:
    """``script`` after :data:`SANDBOX` in a mount namespace of its own (skips where it can't)."""
    refusal = sandbox_refusal()
    if refusal:
        pytest.skip(refusal)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", script,
         "sandbox", str(changes), str(INSTALL), str(python), str(wheel), str(ROOT)],
        capture_output=True, text=True, env=clean_env(), timeout=INSTALL_TIMEOUT_S, check=False)
    if done.returncode == NO_OVERLAY:
        pytest.skip("overlayfs cannot be mounted here")
    return done


def test_a_real_install_creates_the_user_owns_the_state_and_keeps_the_config(
        staged: Staged, tmp_path: Path) -> None:
    done = in_sandbox(REAL_INSTALL, tmp_path, SYSTEM_PYTHON, staged.wheel)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob("*.out")))
    assert done.returncode == 0, done.stderr + logs
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert set(found["groups"].split()) == {"parcel-sorter", "dialout", "video"}
    assert found["shell"] == "/usr/sbin/nologin"
    assert found["state"] == "parcel-sorter:parcel-sorter 750"
    assert found["config"] == "root:parcel-sorter 640"
    assert found["unit"] == "root:root 644"
    assert found["state_writable"] == "yes"
    assert found["etc_writable_by_user"] == "no"
    if shutil.which("systemd-analyze"):
        assert found["verify"] == "ok", (tmp_path / "verify.out").read_text()
    assert found["kept"] == "# edited on the box"
    assert found["users"] == "1"
    assert "keeping /etc/parcel-sorter/line.toml" in (tmp_path / "second.out").read_text()


def test_a_real_install_refuses_a_python_the_service_user_cannot_run(
        staged: Staged, tmp_path: Path) -> None:
    python = Path(base_python())
    if all(os.stat(p).st_mode & stat.S_IXOTH for p in python.resolve().parents):
        pytest.skip(f"{python} is not in a private folder here")
    script = SANDBOX + r"""
bash "$install" --python "$python" "$wheel" && exit 1
echo "user=$(id -nu parcel-sorter)"
test ! -e /opt/parcel-sorter/venv/bin/parcel-sorter && echo "package=absent"
"""
    done = in_sandbox(script, tmp_path, python, staged.wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parcel-sorter cannot run the venv's interpreter" in done.stderr
    assert "pass --python" in done.stderr
    assert "user=parcel-sorter" in done.stdout
    assert "package=absent" in done.stdout


def test_a_real_install_by_anyone_but_root_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to try as another user")
    done = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(INSTALL)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "needs root (or stage it with --root DIR)" in done.stderr


# --- the systemd unit, as installed -------------------------------------------------------

ANALYZE = shutil.which("systemd-analyze")
HOST_UNITS = Path("/usr/lib/systemd/system")
UNIT_PATH = "/etc/systemd/system/parcel-sorter.service"
VENV_BIN = "/opt/parcel-sorter/venv/bin/parcel-sorter"
CONFIG = "/etc/parcel-sorter/line.toml"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(
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


@needs_analyze
def test_systemd_analyze_verify_accepts_the_installed_unit_without_a_word(
        staged: Staged) -> None:
    done = analyze("verify", "--man=no", f"--root={staged.root}", UNIT_PATH)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # unknown keys and bad values are only warnings: none allowed


@needs_analyze
def test_verify_fails_when_the_executable_is_not_where_the_unit_says(
        staged: Staged, tmp_path: Path) -> None:
    root = with_targets(tmp_path / "root")
    unit = root / UNIT_PATH.lstrip("/")
    unit.parent.mkdir(parents=True)
    shutil.copy2(staged.unit, unit)
    done = analyze("verify", "--man=no", f"--root={root}", UNIT_PATH)
    assert done.returncode != 0
    assert f"{VENV_BIN} is not executable" in done.stderr


@needs_analyze
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
        ("Service", "ExecReload"): ["/usr/bin/kill -HUP $MAINPID"],
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


@needs_analyze
def test_systemd_analyze_security_rates_the_unit_ok(staged: Staged) -> None:
    done = analyze("security", "--offline=yes", f"--root={staged.root}", "--no-pager",
                   UNIT_PATH)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for parcel-sorter\.service: ([0-9.]+)",
                      done.stdout)
    assert found, done.stdout[-2000:]
    assert float(found.group(1)) <= MAX_EXPOSURE
