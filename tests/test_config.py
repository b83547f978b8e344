"""A line config is validated; a bad one is refused naming the field and the reason."""

from __future__ import annotations

import math
import os
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pydantic import BaseModel

from controller.app.cli import main
from controller.config import LineConfig, load_config, parse_config
from controller.errors import ConfigError
from controller.state_paths import check_paths, require_paths

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
    state = tmp_path / "state"
    path.write_text(EXAMPLE_CONFIG.read_text().replace("/var/lib/parcel-sorter", str(state)))
    assert main(["check-config", "--for", "sim", str(path)]) == 0
    assert "valid line 'line1'" in capsys.readouterr().out
    assert not state.exists()  # checked, not created


def test_check_config_warns_of_an_uncalibrated_ip_camera(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_CONFIG.read_text().replace(
        'decoder = "located-zxing"', 'decoder = "located-zxing"\nsource = "rtsp://10.0.0.5/s1"')
    path = tmp_path / "line.toml"
    path.write_text(text)
    assert main(["check-config", "--for", "sim", str(path)]) == 0
    assert "WARNING camera cam1: its frames carry no encoder count" in capsys.readouterr().out
    path.write_text(text.replace('source = "rtsp', 'latency_ms = 40.0\nsource = "rtsp'))
    assert main(["check-config", "--for", "sim", str(path)]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_relative_store_paths_resolve_beside_the_config(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text().replace(
        'path = "/var/lib/parcel-sorter/orders.sqlite"', 'path = "data/orders.sqlite"')
    path = tmp_path / "line.toml"
    path.write_text(text)
    assert load_config(path).order_store.path == str(tmp_path / "data" / "orders.sqlite")


def test_a_cameras_login_and_ca_files_resolve_beside_the_config(tmp_path: Path) -> None:
    data = _example()
    data["cameras"][0].update(source="mjpeg+https://cam1.line.local/stream",
                              credentials_file="secrets/cam1", ca_file="/etc/ssl/line-ca.pem")
    path = tmp_path / "line.toml"
    path.write_text(tomli_w.dumps(data))
    camera = load_config(path).cameras[0]
    assert camera.credentials_file == str(tmp_path / "secrets" / "cam1")
    assert camera.ca_file == "/etc/ssl/line-ca.pem"


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


# --- NaN and infinity ------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds: X, X | None, list[X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _is_float(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return _is_float(typing.get_args(annotation)[0])
    return annotation is float or any(
        a is float or (typing.get_origin(a) is typing.Annotated and _is_float(a))
        for a in typing.get_args(annotation))


def _float_fields(model: type[BaseModel], prefix: tuple[str | int, ...] = ()
                  ) -> Iterator[tuple[str | int, ...]]:
    """The location of every float field under ``model``; lists are entered at item 0."""
    for name, info in model.model_fields.items():
        loc = (*prefix, name)
        if _is_float(info.annotation):
            yield loc
        is_list = typing.get_origin(info.annotation) is list
        for sub in _models_in(info.annotation):
            yield from _float_fields(sub, (*loc, 0) if is_list else loc)


FLOAT_FIELDS = sorted(set(_float_fields(LineConfig)), key=str)


def _full_example() -> dict[str, Any]:
    """The example with every optional section present, so each float field can be set."""
    data = _example()
    data["archive"] = {"path": "var/archive"}
    data["line_io"] = {"serial": {"port": "/dev/ttyUSB0"}, "mqtt": {}}
    data["diagnostics"] = {}
    data["sort_plan"]["size_classes"] = [{"name": "small", "max_length_mm": 200.0}]
    return data


def test_the_walk_finds_the_float_fields_of_every_section() -> None:
    sections = {loc[0] for loc in FLOAT_FIELDS}
    assert {"belt", "induction", "cameras", "diverters", "bins", "end_of_line", "order_store",
            "decision", "archive", "line_io", "diagnostics"} <= sections
    assert ("diverters", 0, "position_mm") in FLOAT_FIELDS
    assert ("line_io", "serial", "ack_timeout_ms") in FLOAT_FIELDS
    assert ("line_io", "mqtt", "reconnect_max_s") in FLOAT_FIELDS
    assert parse_config(_full_example()).line_io is not None  # every section is valid as set


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("loc", FLOAT_FIELDS, ids=lambda loc: ".".join(map(str, loc)))
def test_nan_and_infinity_are_refused_in_every_float_field(
        loc: tuple[str | int, ...], value: float) -> None:
    data = _full_example()
    target: Any = data
    for part in loc[:-1]:
        target = target[part]
    target[loc[-1]] = value
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    expected = "NaN is not a number" if math.isnan(value) else f"{value} is not a finite number"
    assert _problems(data) == [(path, expected)]


def test_toml_nan_and_inf_are_named_by_field(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE_CONFIG.read_text()
    text = text.replace("position_mm = 4600.0", "position_mm = nan")
    text = text.replace("speed_mm_s = 2000.0", "speed_mm_s = inf")
    text = text.replace("fps = 15.0", "fps = -inf")
    path = tmp_path / "line.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == [
        ("belt.speed_mm_s", "inf is not a finite number"),
        ("cameras[0].fps", "-inf is not a finite number"),
        ("diverters[2].position_mm", "NaN is not a number"),
    ]
    assert main(["check-config", str(path)]) == 2
    assert "diverters[2].position_mm: NaN is not a number" in capsys.readouterr().err


def test_nan_in_an_int_field_or_as_a_string_is_named() -> None:
    data = _example()
    data["bins"][0]["capacity"] = math.nan  # an int field: pydantic says it is not finite
    data["belt"]["speed_mm_s"] = "nan"
    assert sorted(_problems(data)) == [("belt.speed_mm_s", "NaN is not a number"),
                                       ("bins[0].capacity", "NaN is not a number")]


# --- state paths ---------------------------------------------------------------------------


def _with_paths(tmp_path: Path, **paths: str | None) -> LineConfig:
    """The example config with its state under ``tmp_path``, some paths replaced."""
    data = _example()
    data["journal"]["path"] = str(tmp_path / "state" / "journal.sqlite")
    data["order_store"]["path"] = str(tmp_path / "state" / "orders.sqlite")
    data["archive"] = {"path": str(tmp_path / "state" / "archive")}
    for key, value in paths.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return parse_config(data)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_paths_that_can_be_created_are_fine_and_nothing_is_created(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("")
    before = _tree(tmp_path)
    config = _with_paths(tmp_path)
    assert check_paths(config) == []
    require_paths(config)
    assert _tree(tmp_path) == before  # check-only: no folder was made
    assert check_paths(_with_paths(tmp_path, journal__path=":memory:",
                                   order_store__path=":memory:", archive__path=None)) == []


def test_each_bad_path_is_one_line_naming_its_field(tmp_path: Path) -> None:
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "orders").mkdir()
    config = _with_paths(tmp_path, journal__path=str(tmp_path / "a-dir"),
                         order_store__path=str(tmp_path / "a-file" / "sub" / "orders.sqlite"),
                         archive__path=str(tmp_path / "a-file"))
    problems = check_paths(config)
    assert problems == [
        ("journal.path", f"{tmp_path / 'a-dir'} is a directory, not a database file"),
        ("order_store.path", f"folder {tmp_path / 'a-file' / 'sub'} cannot be created: "
                             f"{tmp_path / 'a-file'} is not a directory"),
        ("archive.path", f"{tmp_path / 'a-file'} is not a directory"),
    ]
    assert all("\n" not in reason for _, reason in problems)
    with pytest.raises(ConfigError) as info:
        require_paths(config, "line.toml")
    assert info.value.problems == problems
    assert "journal.path:" in str(info.value)
    config = _with_paths(tmp_path, order_store__path=str(tmp_path / "orders"))
    assert check_paths(config) == [
        ("order_store.path", f"{tmp_path / 'orders'} is a directory, not a database file")]


def test_unwritable_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "orders.sqlite").write_text("")
    (locked / "journal.sqlite").write_text("")
    real_access = os.access

    def access(path: Any, mode: int, **kw: Any) -> bool:  # root passes every mode bit check
        if Path(path).is_relative_to(locked) and mode & os.W_OK:
            return False
        return bool(real_access(path, mode, **kw))

    monkeypatch.setattr(os, "access", access)
    config = _with_paths(tmp_path, journal__path=str(locked / "new" / "journal.sqlite"),
                         order_store__path=str(locked / "orders.sqlite"),
                         archive__path=str(locked))
    assert check_paths(config) == [
        ("journal.path", f"folder {locked / 'new'} cannot be created: {locked} is not writable"),
        ("archive.path", f"folder {locked} is not writable"),
    ]  # the order store is only looked up in: a read-only one is fine
    config = _with_paths(tmp_path, journal__path=str(locked / "journal.sqlite"),
                         order_store__path=str(locked / "absent.sqlite"))
    assert check_paths(config) == [
        ("journal.path", f"{locked / 'journal.sqlite'} is not writable"),
        ("order_store.path", f"folder {locked} is not writable"),
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_refused_for_the_journal(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        config = _with_paths(tmp_path, journal__path=str(locked / "journal.sqlite"))
        assert check_paths(config) == [("journal.path", f"folder {locked} is not writable")]
    finally:
        locked.chmod(0o700)


def test_a_missing_mqtt_password_file_is_refused(tmp_path: Path) -> None:
    data = _example()
    data["journal"]["path"] = data["order_store"]["path"] = ":memory:"
    data["line_io"] = {"sensors": "serial", "diverters": "mqtt", "serial": {"port": "/dev/x"},
                       "mqtt": {"password_file": "mqtt.password"}}
    path = tmp_path / "line.toml"
    path.write_text(tomli_w.dumps(data))
    assert check_paths(load_config(path)) == [
        ("line_io.mqtt.password_file", f"no such file: {tmp_path / 'mqtt.password'}")]
    (tmp_path / "mqtt.password").write_text("secret\n")
    assert check_paths(load_config(path)) == []


def test_relative_paths_are_checked_beside_the_config(tmp_path: Path) -> None:
    data = _example()
    data["journal"]["path"] = "state"
    data["order_store"]["path"] = "db/orders.sqlite"
    path = tmp_path / "line.toml"
    path.write_text(tomli_w.dumps(data))
    (tmp_path / "state").mkdir()
    assert check_paths(load_config(path)) == [
        ("journal.path", f"{tmp_path / 'state'} is a directory, not a database file")]
