"""The container image (deploy/Dockerfile) and the bench (deploy/compose.yaml).

Building and running the image needs a docker daemon, and checking compose.yaml needs
``docker compose`` or a YAML parser already on the machine: each test says which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
BENCH = DEPLOY / "bench.sh"
BENCH_IN_IMAGE = "/opt/parcel-sorter/bench.sh"
DOCKER = shutil.which("docker")
BUILD_TIMEOUT_S = 1800
BENCH_PARCELS = 8


def docker_works(*args: str) -> bool:
    if DOCKER is None:
        return False
    try:
        done = subprocess.run([DOCKER, *args], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def yaml_parser() -> list[str] | None:
    """A Python that can import yaml, this one or the system's (no dependency is added)."""
    for python in (sys.executable, "/usr/bin/python3"):
        if Path(python).exists() and subprocess.run(
                [python, "-c", "import yaml"], capture_output=True, check=False).returncode == 0:
            return [python]
    return None


def load_compose() -> dict[str, Any]:
    parser = yaml_parser()
    if parser is None:
        pytest.skip("neither docker compose nor a YAML parser is installed")
    done = subprocess.run(
        [*parser, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=COMPOSE.read_text(), capture_output=True, text=True, check=True, timeout=60)
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_the_image_runs_as_its_own_user_from_the_installed_package() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "the image runs as root"
    assert users[-1] == "parcel-sorter"
    assert lines[-1].startswith("CMD ")
    assert 'ENTRYPOINT ["parcel-sorter"]' in lines
    assert any("libzbar0" in line for line in lines)
    # the example line is package data: of deploy/ the image takes the bench script alone
    copied = [line.split()[-2] for line in lines if line.startswith("COPY") and "deploy" in line]
    assert copied == ["deploy/bench.sh"]
    assert f"COPY --chmod=0755 deploy/bench.sh {BENCH_IN_IMAGE}" in lines


@pytest.mark.skipif(not docker_works("compose", "version"), reason="docker compose is missing")
def test_docker_compose_accepts_the_bench() -> None:
    assert DOCKER is not None
    done = subprocess.run([DOCKER, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_the_bench_wires_broker_and_line_with_their_files_and_a_named_state_volume() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"broker-init", "mosquitto", "bench"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["mosquitto"]["depends_on"]["broker-init"]["condition"] == (
        "service_completed_successfully")
    assert services["bench"]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert "state:/var/lib/parcel-sorter" in services["bench"]["volumes"]
    assert set(compose["volumes"]) == {"state", "broker-auth"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
    mounted = {v.split(":")[1] for v in services["mosquitto"]["volumes"]}
    conf = (DEPLOY / "mosquitto.conf").read_text()
    assert "acl_file /etc/mosquitto/parcel-sorter.acl" in conf
    assert "/etc/mosquitto/parcel-sorter.acl" in mounted
    bench = services["bench"]
    assert bench["entrypoint"] == [BENCH_IN_IMAGE]
    assert bench["environment"]["MQTT"] == "mosquitto:1883"
    assert bench["environment"]["SECRETS"] == "/auth/bench.secrets"
    assert "broker-auth:/auth:ro" in bench["volumes"]
    assert "broker-auth:/auth" in services["broker-init"]["volumes"]


@pytest.mark.wallclock
@pytest.mark.slow
@pytest.mark.skipif(not docker_works("info"), reason="no docker daemon (docker info fails)")
def test_the_image_runs_a_shift_on_the_packaged_example_line() -> None:
    assert DOCKER is not None
    tag = f"parcel-sorter-test:{os.getpid()}"
    built = subprocess.run([DOCKER, "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        shift = subprocess.run([DOCKER, "run", "--rm", tag, "sim", "--parcels", "5"],
                               capture_output=True, text=True, timeout=600, check=False)
        assert shift.returncode == 0, shift.stderr[-4000:]
        assert "parcels                           5" in shift.stdout
        whoami = subprocess.run([DOCKER, "run", "--rm", "--entrypoint", "id", tag, "-un"],
                                capture_output=True, text=True, timeout=120, check=True)
        assert whoami.stdout.strip() == "parcel-sorter"
    finally:
        subprocess.run([DOCKER, "image", "rm", "-f", tag], capture_output=True, timeout=120,
                       check=False)


@pytest.mark.wallclock
def test_the_bench_script_sorts_a_shift_through_a_broker_with_the_deploy_rules(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """deploy/bench.sh as the compose bench runs it, here with the checkout's parcel-sorter."""
    request.getfixturevalue("mosquitto")  # skips where mosquitto is not installed
    from sim_hardware.broker import Mosquitto

    with Mosquitto(deploy=True) as broker:
        secrets = tmp_path / "bench.secrets"
        broker.write_secrets(secrets)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        env = {**os.environ, "PATH": path,
               "PARCELS": str(BENCH_PARCELS), "SEED": "5", "STATE": str(tmp_path),
               "MQTT": f"{broker.host}:{broker.port}", "SECRETS": str(secrets)}
        bench = subprocess.Popen(["sh", str(BENCH)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = bench.communicate(timeout=240)
        finally:
            if bench.poll() is None:
                os.killpg(bench.pid, signal.SIGKILL)
                bench.communicate()
    assert bench.returncode == 0, output
    assert f"parcels                           {BENCH_PARCELS}" in output
    report = json.loads((tmp_path / "report.json").read_text())
    assert [p["disposition"] for p in report["parcels"]] == ["SORTED"] * BENCH_PARCELS
    assert 'username = "controller"' in (tmp_path / "line.toml").read_text()
