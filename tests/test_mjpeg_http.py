"""The MJPEG driver against the emulator playing a real IP camera: Basic and Digest logins,
HTTPS with a CA file, chunked transfer, refusals (wrong password, unknown certificate, a
frame of the wrong size), and credentials from a file or the environment. Real sockets on
127.0.0.1, the real clock."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from controller.clock import RealClock
from controller.config import CameraConfig, LineConfig, parse_config
from controller.errors import ConfigError, DriverUnavailable
from controller.vision import Camera, CameraState, Frame
from drivers.cameras import Backoff, open_camera
from drivers.cameras.credentials import Credentials
from drivers.cameras.mjpeg import MjpegCamera
from drivers.cameras.opencv import OpenCVCamera
from sim_hardware.line import PhysicalLine
from sim_hardware.mjpeg import MjpegServer, ServerAuth
from sim_hardware.scenario import ScenarioSpec
from tests.test_cameras import _consuming, _until

pytestmark = pytest.mark.wallclock

FAST = Backoff(0.05, 0.2)
SIZE = (320, 240)
LOGIN = Credentials("operator", "s3cret:with colon")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    return context


def _image(n: int) -> np.ndarray:
    image = np.full((SIZE[1], SIZE[0]), 40 + (n * 37) % 160, np.uint8)
    cv2.putText(image, str(n), (60, 160), cv2.FONT_HERSHEY_SIMPLEX, 4, 255, 8)
    return image


@contextlib.asynccontextmanager
async def _camera_server(example_config: LineConfig, **options: object,
                         ) -> AsyncIterator[tuple[MjpegServer, dict[int, Frame]]]:
    """The emulator's MJPEG server fed 320x240 frames at 50 fps, and the frames by count."""
    line = PhysicalLine(example_config, ScenarioSpec(parcels=0), [], RealClock())
    camera_id = example_config.cameras[0].id
    sent: dict[int, Frame] = {}

    async def feed() -> None:
        for n in range(100_000):
            frame = Frame(camera_id, _image(n), 1000 + n, line.clock.now())
            sent[frame.enc] = frame
            for sink in line.frame_sinks[camera_id]:
                sink(frame)
            await line.clock.sleep(0.02)

    async with MjpegServer(line, **options) as server:  # type: ignore[arg-type]
        task = asyncio.create_task(feed())
        try:
            yield server, sent
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task



def _camera(server: MjpegServer, **options: object) -> MjpegCamera:
    return MjpegCamera("cam1", server.url("cam1"), clock=RealClock(), encoder_at=lambda t: -1,
                       read_timeout_s=0.5, connect_timeout_s=1.0, backoff=FAST,
                       resolution=SIZE, **options)  # type: ignore[arg-type]


async def _streams(camera: MjpegCamera, sent: dict[int, Frame], frames: int = 10) -> None:
    """The camera streams ``frames`` frames that are the ones sent, stamps and all."""
    async with _consuming(camera) as got:
        await _until(lambda: len(got) >= frames, 5, f"{frames} frames")
    assert camera.state is CameraState.STREAMING
    assert camera.stats.errors == 0, camera.stats.last_error
    for frame in got:
        truth = sent[frame.enc]
        assert frame.captured_at == truth.captured_at
        assert frame.image.shape == (SIZE[1], SIZE[0])
        assert float(np.mean(cv2.absdiff(frame.image, truth.image))) < 3.0


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["basic", "digest"])
async def test_frames_through_a_login(example_config: LineConfig, scheme: str) -> None:
    auth = ServerAuth(scheme, LOGIN.user, LOGIN.password)  # type: ignore[arg-type]
    async with _camera_server(example_config, auth=auth) as (server, sent):
        await _streams(_camera(server, credentials=LOGIN), sent)
        # Digest first (no password in the clear); Basic only when the camera asks for it.
        assert server.stats.unauthorized == 1


@pytest.mark.asyncio
async def test_frames_over_https_verified_with_a_ca_file(
        example_config: LineConfig, tls_files: tuple[Path, Path]) -> None:
    async with _camera_server(example_config, ssl=_server_tls(tls_files)) as (server, sent):
        assert server.url("cam1").startswith("https://127.0.0.1:")
        await _streams(_camera(server, ca_file=str(tls_files[0])), sent)


@pytest.mark.asyncio
@pytest.mark.parametrize("chunk_size", [1000, 64 * 1024])
async def test_frames_in_chunked_transfer(example_config: LineConfig, chunk_size: int) -> None:
    async with _camera_server(example_config, chunked=True,
                              chunk_size=chunk_size) as (server, sent):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /cam1.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                first = int(await reader.readuntil(b"\r\n"), 16)
        finally:
            writer.close()
            await writer.wait_closed()
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        assert 0 < first <= chunk_size
        await _streams(_camera(server), sent)


@pytest.mark.asyncio
async def test_chunked_https_digest_all_at_once(example_config: LineConfig,
                                               tls_files: tuple[Path, Path]) -> None:
    auth = ServerAuth("digest", LOGIN.user, LOGIN.password)
    async with _camera_server(example_config, auth=auth, chunked=True, chunk_size=4096,
                              ssl=_server_tls(tls_files)) as (server, sent):
        await _streams(_camera(server, credentials=LOGIN, ca_file=str(tls_files[0])), sent)


@pytest.mark.asyncio
@pytest.mark.parametrize("scheme", ["basic", "digest"])
async def test_a_wrong_password_is_refused_clearly_and_retried_only_slowly(
        example_config: LineConfig, scheme: str) -> None:
    auth = ServerAuth(scheme, LOGIN.user, LOGIN.password)  # type: ignore[arg-type]
    async with _camera_server(example_config, auth=auth) as (server, _):
        camera = _camera(server, credentials=Credentials(LOGIN.user, "wrong"))
        camera.backoff = Backoff(0.01, 0.5)  # doubling from 10 ms would try 6 times a second
        async with _consuming(camera) as frames:
            await _until(lambda: camera.stats.errors >= 1, 3, "the refusal")
            start = server.stats.connections
            await RealClock().sleep(1.0)
            attempts = (server.stats.connections - start) / (2 if scheme == "digest" else 1)
        assert frames == []
        assert camera.state is CameraState.DOWN
        assert f"login of user {LOGIN.user!r} refused ({scheme})" in (
            camera.stats.last_error or ""), camera.stats.last_error
        assert "wrong" not in (camera.stats.last_error or "").replace("wrong credentials", "")
        # At the backoff's cap (0.5 s +-20 %): cameras lock out accounts after bad logins.
        assert 1 <= attempts <= 3, attempts
        assert camera.stats.errors <= 4


@pytest.mark.asyncio
async def test_a_camera_asking_for_a_login_nobody_configured(example_config: LineConfig) -> None:
    auth = ServerAuth("digest", LOGIN.user, LOGIN.password)
    async with _camera_server(example_config, auth=auth) as (server, _):
        camera = _camera(server)
        async with _consuming(camera) as frames:
            await _until(lambda: camera.stats.errors >= 1, 3, "the refusal")
        assert frames == []
        assert "asks for digest; set credentials_file or credentials_env" in (
            camera.stats.last_error or ""), camera.stats.last_error


@pytest.mark.asyncio
async def test_an_unknown_certificate_is_refused(example_config: LineConfig,
                                                 tls_files: tuple[Path, Path]) -> None:
    async with _camera_server(example_config, ssl=_server_tls(tls_files)) as (server, _):
        camera = _camera(server)  # the system's CAs do not know the camera's certificate
        async with _consuming(camera) as frames:
            await _until(lambda: camera.stats.errors >= 2, 3, "two refusals")
        assert frames == []
        assert camera.state is CameraState.DOWN
        assert server.clients("cam1") == 0
        assert "TLS certificate not trusted" in (camera.stats.last_error or ""), \
            camera.stats.last_error
        assert "certificate verify failed" in (camera.stats.last_error or "")


@pytest.mark.asyncio
async def test_verification_off_takes_any_certificate_and_says_so(
        example_config: LineConfig, tls_files: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    async with _camera_server(example_config, ssl=_server_tls(tls_files)) as (server, sent):
        await _streams(_camera(server, tls_verify=False), sent, frames=3)
    assert "TLS certificate verification is off" in caplog.text


@pytest.mark.asyncio
async def test_opencv_on_a_stream_of_another_size_is_refused(example_config: LineConfig) -> None:
    async with _camera_server(example_config) as (server, _):
        camera = OpenCVCamera("cam1", server.url("cam1"), kind="stream", clock=RealClock(),
                              encoder_at=lambda t: 0, backoff=FAST, resolution=(640, 480))
        with pytest.raises(ConfigError) as refusal:
            await _drain(camera, within=15)
        assert server.stats.connections <= 2  # FFmpeg may probe once; no reconnects
    assert refusal.value.problems == [("cameras.cam1.resolution",
                                       "camera delivers 320x240, configured 640x480")]


@pytest.mark.asyncio
async def test_a_stream_of_another_size_is_refused_without_reconnecting(
        example_config: LineConfig) -> None:
    async with _camera_server(example_config) as (server, _):
        camera = MjpegCamera("cam1", server.url("cam1"), clock=RealClock(),
                             encoder_at=lambda t: 0, backoff=FAST, resolution=(640, 480))
        with pytest.raises(ConfigError) as refusal:
            await _drain(camera)
        await RealClock().sleep(0.3)
        assert server.stats.connections == 1
    assert refusal.value.problems == [("cameras.cam1.resolution",
                                       "camera delivers 320x240, configured 640x480")]
    assert refusal.value.source == "mjpeg+" + server.url("cam1")
    assert camera.state is CameraState.DOWN


async def _drain(camera: Camera, within: float = 5) -> None:
    async with asyncio.timeout(within):
        async for _ in camera.frames():
            pytest.fail("a frame of the wrong size was handed over")


def _mjpeg_config(example_config: LineConfig, **update: object) -> CameraConfig:
    return example_config.cameras[0].model_copy(update={"resolution": SIZE, **update})


@pytest.mark.asyncio
async def test_open_camera_reads_the_login_from_a_file_or_the_environment(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "cam1.secret"
    secret.write_text(f"{LOGIN.user}:{LOGIN.password}\n")
    secret.chmod(0o600)
    monkeypatch.setenv("CAM1_CREDENTIALS", f"{LOGIN.user}:{LOGIN.password}")
    auth = ServerAuth("digest", LOGIN.user, LOGIN.password)
    async with _camera_server(example_config, auth=auth) as (server, sent):
        for where in ({"credentials_file": str(secret)},
                      {"credentials_env": "CAM1_CREDENTIALS"}):
            config = _mjpeg_config(example_config, source="mjpeg+" + server.url("cam1"),
                                   **where)
            camera = open_camera(config, clock=RealClock(), encoder_at=lambda t: 0)
            assert isinstance(camera, MjpegCamera)
            assert camera.credentials == LOGIN
            assert LOGIN.password not in repr(camera.credentials)
            camera.backoff = FAST
            await _streams(camera, sent, frames=3)


@pytest.mark.parametrize(("where", "content", "expected"), [
    ("file", None, "cannot read credentials_file"),
    ("file", "operator\n", "must hold user:password"),
    ("file", "a:b\nc:d\n", "must hold one line"),
    ("env", None, "CAM9_CREDENTIALS (credentials_env) is not set"),
    ("env", ":nouser", "must hold user:password"),
])
def test_a_missing_or_malformed_login_is_refused_at_open(
        example_config: LineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
        where: str, content: str | None, expected: str) -> None:
    secret = tmp_path / "cam.secret"
    if where == "file":
        if content is not None:
            secret.write_text(content)
        update: dict[str, object] = {"credentials_file": str(secret)}
    else:
        monkeypatch.delenv("CAM9_CREDENTIALS", raising=False)
        if content is not None:
            monkeypatch.setenv("CAM9_CREDENTIALS", content)
        update = {"credentials_env": "CAM9_CREDENTIALS"}
    config = _mjpeg_config(example_config, source="mjpeg+https://10.0.0.9/video", **update)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(DriverUnavailable, match="camera cam1") as refusal:
            open_camera(config, clock=RealClock(loop), encoder_at=lambda t: 0)
    finally:
        loop.close()
    assert expected in str(refusal.value)
    assert "nouser" not in str(refusal.value)


@pytest.mark.parametrize(("update", "field", "reason"), [
    ({"source": "mjpeg+http://operator:s3cret@10.0.0.9/video"}, "cameras[0].source",
     "must not hold a user or password"),
    ({"source": "rtsp://operator:s3cret@10.0.0.9/main"}, "cameras[0].source",
     "must not hold a user or password"),
    ({"source": "mjpeg+http://10.0.0.9/v", "credentials_file": "a", "credentials_env": "B"},
     "cameras[0]", "not both"),
    ({"source": "v4l2:0", "credentials_env": "CAM1"}, "cameras[0]",
     "only used by mjpeg+http:// and mjpeg+https://"),
    ({"source": "mjpeg+http://10.0.0.9/v", "ca_file": "ca.pem"}, "cameras[0]",
     "ca_file needs an mjpeg+https:// source"),
    ({"source": "mjpeg+https://10.0.0.9/v", "credentials_env": "not a name"},
     "cameras[0].credentials_env", "String should match pattern"),
])
def test_the_config_keeps_secrets_out_and_login_options_where_they_work(
        example_config: LineConfig, update: dict[str, object], field: str,
        reason: str) -> None:
    data = example_config.model_dump()
    data["cameras"][0].update(update)
    with pytest.raises(ConfigError) as refusal:
        parse_config(data)
    [(path, message)] = refusal.value.problems
    assert path == field
    assert reason in message
    assert "s3cret" not in str(refusal.value)


def test_the_config_takes_a_login_by_reference(example_config: LineConfig) -> None:
    data = example_config.model_dump()
    data["cameras"][0].update({"source": "mjpeg+https://10.0.0.9/video",
                               "credentials_file": "/etc/parcel-sorter/cam1.secret",
                               "ca_file": "/etc/parcel-sorter/cam1-ca.pem"})
    camera = parse_config(data).cameras[0]
    assert camera.credentials_file == "/etc/parcel-sorter/cam1.secret"
    assert camera.tls_verify is True
