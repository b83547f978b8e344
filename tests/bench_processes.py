"""The test bench as a user runs it: ``emulate`` and ``run`` as processes of their own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import IO

from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller", *args]


def wait_for(stream: IO[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Read lines into ``seen`` until one matches ``pattern``."""
    for line in stream:
        seen.append(line)
        found = re.match(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def start_emulate(tmp_path: Path, *, parcels: int, seed: int,
                  extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], Path, Path]:
    """``emulate`` writing into ``tmp_path``: the process, its report and its line config."""
    report, config = tmp_path / "report.json", tmp_path / "line.toml"
    emulator = subprocess.Popen(
        cli("emulate", "--parcels", str(parcels), "--seed", str(seed), "--report", str(report),
            "--write-config", str(config), "--wait-controller", "60", *extra),
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    return emulator, report, config


def start_run(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(cli("run", "--config", str(config), *extra), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(*processes: subprocess.Popen[str] | None) -> None:
    """Kill what still runs and close its pipe (the leak check counts open pipes)."""
    for process in processes:
        if process is None:
            continue
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
