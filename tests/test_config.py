"""A line config is validated; a bad one is refused naming the field and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from controller.cli import main
from controller.config import load_config, parse_config
from controller.errors import ConfigError

from .conftest import EXAMPLE_CONFIG


def _example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE_CONFIG.read_text())


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert config.cameras[0].mm_per_px == pytest.approx(0.4)
    assert {d.bin for d in config.diverters} == {b.id for b in config.bins}
    assert config.read_zone_end_mm < min(d.position_mm for d in config.diverters)


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.toml")
    return info.value.problems


def test_missing_section_is_named() -> None:
    data = _example()
    del data["belt"]
    assert ("belt", "Field required") in _problems(data)


def test_wrong_type_names_the_nested_field() -> None:
    data = _example()
    data["diverters"][2]["actuation_ms"] = "fast"
    (path, reason), = _problems(data)
    assert path == "diverters[2].actuation_ms"
    assert "number" in reason


def test_negative_speed_is_refused() -> None:
    data = _example()
    data["belt"]["speed_mm_s"] = -1
    (path, reason), = _problems(data)
    assert path == "belt.speed_mm_s"
    assert "greater than 0" in reason


def test_unknown_field_is_refused() -> None:
    data = _example()
    data["belt"]["sped_mm_s"] = 2
    assert ("belt.sped_mm_s", "Extra inputs are not permitted") in _problems(data)


def test_inconsistent_layout_is_explained() -> None:
    data = _example()
    data["diverters"][0]["bin"] = "B99"
    data["diverters"][1]["position_mm"] = 1500.0
    data["sort_plan"]["rules"][0]["bins"] = ["B1", "B42"]
    ((path, reason),) = _problems(data)
    assert path == "(top level)"
    assert "D1 serves unknown bin 'B99'" in reason
    assert "D2 at 1500.0 mm is not downstream of the cameras" in reason
    assert "names unknown bin 'B42'" in reason


def test_bad_regex_is_refused() -> None:
    data = _example()
    data["decision"]["label_types"][1]["pattern"] = "([0-9"
    (path, reason), = _problems(data)
    assert path == "decision.label_types[1]"
    assert "not a regular expression" in reason


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[belt\nspeed = 1\n")
    with pytest.raises(ConfigError, match=r"\(syntax\)"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_cli_check_config_reports_bad_field(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_CONFIG.read_text().replace("speed_mm_s = 2000.0", "speed_mm_s = 0")
    path = tmp_path / "line.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "belt.speed_mm_s: Input should be greater than 0" in err
    assert main(["check-config", str(EXAMPLE_CONFIG)]) == 0
    assert "valid line 'line1'" in capsys.readouterr().out


def test_check_config_warns_of_an_uncalibrated_ip_camera(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_CONFIG.read_text().replace(
        'decoder = "located-zxing"', 'decoder = "located-zxing"\nsource = "rtsp://10.0.0.5/s1"')
    path = tmp_path / "line.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 0
    assert "WARNING camera cam1: its frames carry no encoder count" in capsys.readouterr().out
    path.write_text(text.replace('source = "rtsp', 'latency_ms = 40.0\nsource = "rtsp'))
    assert main(["check-config", str(path)]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_relative_store_paths_resolve_beside_the_config(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text().replace(
        'path = "/var/lib/parcel-sorter/orders.sqlite"', 'path = "data/orders.sqlite"')
    path = tmp_path / "line.toml"
    path.write_text(text)
    assert load_config(path).order_store.path == str(tmp_path / "data" / "orders.sqlite")


def test_line_io_names_links_per_role_and_diverter(tmp_path: Path) -> None:
    data = _example()
    data["line_io"] = {"sensors": "serial", "diverters": "serial",
                       "serial": {"port": "/dev/ttyUSB0"},
                       "mqtt": {"host": "10.0.0.2", "password_file": "mqtt.password"}}
    data["diverters"][3]["link"] = "mqtt"
    path = tmp_path / "line.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    links = {d.id: config.diverter_link(d) for d in config.diverters}
    assert links["D4"] == "mqtt"
    assert set(links.values()) == {"serial", "mqtt"}
    assert config.line_io is not None
    assert config.line_io.mqtt is not None
    assert config.line_io.mqtt.password_file == str(tmp_path / "mqtt.password")


def test_a_link_used_but_not_configured_is_refused() -> None:
    data = _example()
    data["line_io"] = {"sensors": "serial", "diverters": "mqtt",
                       "serial": {"port": "/dev/ttyUSB0"}}
    problems = _problems(data)
    assert any(path == "line_io" and "no [line_io.mqtt] section" in reason
               for path, reason in problems), problems
    data["line_io"] = {"serial": {"port": "/dev/ttyUSB0"}}
    data["diverters"][0]["link"] = "mqtt"
    problems = _problems(data)
    assert any("D1 is on link 'mqtt'" in reason for _, reason in problems), problems
    data["diverters"][0]["link"] = "serial"
    data["line_io"]["serial"]["baudrate"] = 300
    assert any(path == "line_io.serial.baudrate" for path, _ in _problems(data))
