"""Structured logs: one JSON object a line, and journald's priority prefix under systemd."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.app.logs import formatter, syslog_priority, under_journald

PRIORITIES = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
PREFIXED = re.compile(r"^<(\d)>(.*)$")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")


def _journal_stream(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _sorter(tmp_path: Path, *options: str, journald: bool) -> list[str]:
    """``parcel-sorter OPTIONS -vv sim`` of a few parcels; the lines it wrote to stderr."""
    err_path = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err_path.open("w") as err:
        if journald:
            env["JOURNAL_STREAM"] = _journal_stream(err_path)
        subprocess.run(
            [sys.executable, "-m", "controller", *options, "-vv", "sim", "--parcels", "4",
             "--seed", "5", "--workdir", str(tmp_path / "shift")],
            check=True, stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=300)
    return err_path.read_text().splitlines()


def _check_entry(entry: dict[str, Any], started: datetime) -> None:
    assert set(entry) >= {"time", "level", "logger", "message"}, entry
    at = datetime.fromisoformat(entry["time"])
    assert at.tzinfo is not None
    assert at.utcoffset() == timedelta(0)
    assert started - timedelta(seconds=5) <= at <= datetime.now(UTC), entry


def test_json_lines_under_journald_carry_their_priority(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    lines = _sorter(tmp_path, "--log-format", "json", journald=True)
    levels = set()
    for line in lines:
        match = PREFIXED.match(line)
        if match is None:  # what the command prints itself (progress), not a log record
            assert not line.lstrip().startswith("{"), line
            continue
        entry = json.loads(match[2])
        _check_entry(entry, started)
        assert int(match[1]) == PRIORITIES[entry["level"]], line
        levels.add(entry["level"])
    assert {"DEBUG", "INFO"} <= levels


def test_json_lines_without_journald_have_no_prefix(tmp_path: Path) -> None:
    started = datetime.now(UTC)
    entries = [json.loads(line) for line in _sorter(tmp_path, "--log-format", "json",
                                                    journald=False) if line.startswith("{")]
    assert entries
    for entry in entries:
        _check_entry(entry, started)


def test_text_stays_the_default(tmp_path: Path) -> None:
    lines = _sorter(tmp_path, journald=False)
    assert any(TEXT_LINE.match(line) for line in lines), lines
    assert not any(line.startswith(("{", "<")) for line in lines), lines


@pytest.fixture
def logger_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              ) -> Iterator[tuple[logging.Logger, Path]]:
    """A logger writing in JSON to a file that JOURNAL_STREAM names as journald's."""
    path = tmp_path / "log"
    stream = path.open("w")
    monkeypatch.setenv("JOURNAL_STREAM", _journal_stream(path))
    assert under_journald(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json", journald=under_journald(stream)))
    logger = logging.getLogger("parcel_sorter.test_logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, path
    finally:
        logger.removeHandler(handler)
        handler.close()
        stream.close()


def test_each_level_and_the_parcel_reach_the_journal(
        logger_to: tuple[logging.Logger, Path]) -> None:
    logger, path = logger_to
    logger.debug("looked at %d", 1)
    logger.info("parcel %d: sorted", 42, extra={"parcel": 42})
    logger.warning("store slow")
    try:
        int("boom\nsecond line")
    except ValueError:
        logger.exception("parcel %d: decision failed", 7, extra={"parcel": 7})
    lines = path.read_text().splitlines()
    assert len(lines) == 4, lines  # the traceback stays inside its JSON line
    got = []
    for line in lines:
        match = PREFIXED.match(line)
        assert match is not None, line
        entry = json.loads(match[2])
        got.append((int(match[1]), entry["level"], entry.get("parcel")))
    assert got == [(7, "DEBUG", None), (6, "INFO", 42), (4, "WARNING", None), (3, "ERROR", 7)]
    last = json.loads(PREFIXED.match(lines[-1])[2])  # type: ignore[index]
    assert last["message"] == "parcel 7: decision failed"
    assert "ValueError: invalid literal for int() with base 10: 'boom\\nsecond line'" \
        in last["exception"]
    assert last["logger"] == "parcel_sorter.test_logs"


def test_a_stream_journald_did_not_open_is_not_journald(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    other.touch()
    with ours.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream(other))
        assert not under_journald(stream)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not under_journald(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not under_journald(stream)


def test_text_under_journald_prefixes_every_line() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "two\nlines", None, None)
    assert formatter("text", journald=True).format(record).split("\n")[1] == "<3>lines"
    assert [syslog_priority(n) for n in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]
