"""Camera drivers against the emulator served as MJPEG, video files, image folders and
hostile servers, on the real clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from controller.clock import RealClock
from controller.config import CameraConfig, LineConfig
from controller.errors import ConfigError, DriverUnavailable
from controller.reading import decode_frame_crops
from controller.vision import Camera, CameraState, Frame
from drivers.cameras import Backoff, CameraLink, open_camera
from drivers.cameras.mjpeg import MjpegCamera, jpeg_size
from drivers.cameras.opencv import OpenCVCamera
from drivers.decoders import make_decoder
from sim_hardware.line import PhysicalLine
from sim_hardware.mjpeg import MjpegServer
from sim_hardware.scenario import ScenarioSpec, generate

pytestmark = pytest.mark.wallclock

FAST = Backoff(0.05, 0.2)


@pytest.fixture(autouse=True)
def _no_camera_threads() -> Iterator[None]:
    """Every camera reader thread and encoder thread is joined by the end of a test."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and t.name.startswith(("camera-", "mjpeg-encode"))]
    for t in leaked:
        t.join(timeout=2)
    assert not [t.name for t in leaked if t.is_alive()]


def _config(example: LineConfig, resolution: tuple[int, int] = (1920, 1080),
            speed_mm_s: float = 2000.0, fps: float = 15.0) -> LineConfig:
    camera = example.cameras[0].model_copy(update={"resolution": resolution, "fps": fps})
    belt = example.belt.model_copy(update={"speed_mm_s": speed_mm_s})
    return example.model_copy(update={"cameras": [camera], "belt": belt})


def _spec(parcels: int, gap_mm: tuple[float, float] = (250.0, 400.0)) -> ScenarioSpec:
    return ScenarioSpec(seed=11, parcels=parcels, gap_mm=gap_mm, qr_share=0.0,
                        scuffed_share=0.0, multi_parcel_share=0.0)


@contextlib.asynccontextmanager
async def _running_line(config: LineConfig, spec: ScenarioSpec,
                        ) -> AsyncIterator[tuple[PhysicalLine, dict[int, Frame]]]:
    """The emulated line running on the real clock, and every frame it rendered by count."""
    parcels, _ = generate(spec, config)
    line = PhysicalLine(config, spec, parcels, RealClock())
    truth: dict[int, Frame] = {}
    line.frame_sinks[config.cameras[0].id].append(lambda f: truth.__setitem__(f.enc, f))
    task = asyncio.create_task(line.run())
    try:
        yield line, truth
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _first_frame(line: PhysicalLine) -> None:
    """Wait until the first parcel enters the camera's view: the camera is triggered then."""
    first = line.parcels[0]
    await line.clock.sleep_until(line.belt.time_at(first.offset_mm
                                                   + line.config.cameras[0].view_start_mm))


def _encoder_at(line: PhysicalLine) -> Callable[[float], int]:
    return lambda t: line.belt.enc_at_travel(line.belt.travel(t))


@contextlib.asynccontextmanager
async def _consuming(camera: Camera) -> AsyncIterator[list[Frame]]:
    """Iterate the camera's frames in a task, collecting them; cancel it at the end."""
    frames: list[Frame] = []

    async def consume() -> None:
        async for frame in camera.frames():
            frames.append(frame)  # noqa: PERF401 - the test watches the list grow

    task = asyncio.create_task(consume())
    try:
        yield frames
    finally:
        task.cancel()
        async with asyncio.timeout(5):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``check`` until true; return how long it took."""
    clock = RealClock()
    start = clock.now()
    while not check():
        if clock.now() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await clock.sleep(0.01)
    return clock.now() - start


def _camera_config(config: LineConfig, source: str, fps: float | None = None,
                   resolution: tuple[int, int] | None = None) -> CameraConfig:
    update: dict[str, object] = {"source": source}
    if resolution is not None:
        update["resolution"] = resolution
    if fps is not None:
        update["fps"] = fps
    return config.cameras[0].model_copy(update=update)


# --- the emulator served as MJPEG ----------------------------------------------------------


@pytest.mark.asyncio
async def test_mjpeg_frames_carry_the_emulators_count_and_decode_to_the_label(
        example_config: LineConfig) -> None:
    config = _config(example_config)
    spec = _spec(3)
    async with _running_line(config, spec) as (line, truth), MjpegServer(line) as server:
        # A frame rendered before the camera has connected is sent to no one (a loaded
        # machine may connect after the first parcel came into view).
        unwatched: list[int] = []
        line.frame_sinks["cam1"].append(
            lambda f: None if server.clients("cam1") else unwatched.append(f.enc))
        camera = open_camera(_camera_config(config, "mjpeg+" + server.url("cam1")),
                             clock=line.clock, encoder_at=lambda t: -1)
        assert isinstance(camera, MjpegCamera)
        async with _consuming(camera) as frames:
            last = line.parcels[-1]
            gone = line.belt.time_at(last.offset_mm + config.cameras[0].view_end_mm
                                     + last.length_mm) + 0.3
            await line.clock.sleep_until(gone)
            # Frames still in flight on a loaded machine: the last ones arrive a bit later.
            def accounted() -> int:
                return (camera.stats.frames + server.stats.encode_dropped
                        + server.stats.client_dropped + len(unwatched))

            await _until(lambda: accounted() >= len(truth), 3, "every frame sent")
        assert camera.state is CameraState.STREAMING
    assert len(truth) >= 9  # three parcels, each in view for at least three frames
    assert accounted() == len(truth)  # each frame received, or dropped and counted
    assert len(frames) >= 0.8 * len(truth)
    decoder = make_decoder("located-zxing")
    reads: dict[str, int] = {}
    for frame in frames:
        sent = truth[frame.enc]  # the count is the emulator's own, not interpolated
        assert frame.captured_at == sent.captured_at
        assert frame.image.dtype == np.uint8
        assert frame.image.shape == sent.image.shape == (1080, 1920)
        assert float(np.mean(cv2.absdiff(frame.image, sent.image))) < 3.0
        for symbol in await line.clock.offload(None, decoder.decode, frame.image):
            reads[symbol.text] = reads.get(symbol.text, 0) + 1
    codes = {p.code for p in line.parcels}
    assert set(reads) == codes
    assert min(reads.values()) >= 2
    assert camera.stats.frames == len(frames) + camera.stats.dropped
    assert camera.stats.errors == 0


@pytest.mark.asyncio
async def test_opencv_reads_the_http_stream(example_config: LineConfig) -> None:
    config = _config(example_config, (640, 360), speed_mm_s=1000.0, fps=20.0)
    async with _running_line(config, _spec(12, (50.0, 80.0))) as (line, truth), \
            MjpegServer(line) as server:
        await _first_frame(line)
        encoder_at = _encoder_at(line)
        camera = open_camera(_camera_config(config, server.url("cam1")), clock=line.clock,
                             encoder_at=encoder_at)
        assert isinstance(camera, OpenCVCamera)
        async with _consuming(camera) as frames:
            await _until(lambda: len(frames) >= 12, 10, "12 frames through VideoCapture")
            assert camera.state is CameraState.STREAMING
    lags = []
    for frame in frames:
        assert frame.image.dtype == np.uint8
        assert frame.image.shape == (360, 640)
        assert frame.enc == encoder_at(frame.captured_at)
        # Which emulated frame was it? The closest image; its capture time gives the lag.
        sent = min(truth.values(), key=lambda f: float(np.mean(cv2.absdiff(f.image,
                                                                          frame.image))))
        assert float(np.mean(cv2.absdiff(frame.image, sent.image))) < 3.0
        lags.append(frame.captured_at - sent.captured_at)
    assert [f.captured_at for f in frames] == sorted(f.captured_at for f in frames)
    assert min(lags) >= 0.0
    assert float(np.median(lags)) < 0.5, lags


# --- replay ----------------------------------------------------------------------------------


def _numbered(i: int) -> np.ndarray:
    image = np.full((240, 320), 20 + 20 * i, np.uint8)
    cv2.putText(image, str(i), (100, 160), cv2.FONT_HERSHEY_SIMPLEX, 4, 255, 8)
    return image


def _level(frame: Frame) -> int:
    return round((float(np.median(frame.image)) - 20) / 20)


@pytest.mark.asyncio
async def test_video_file_is_replayed_at_its_own_fps(example_config: LineConfig,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "belt.avi"
    _write_video(path, 10)
    clock = RealClock()
    camera = open_camera(_camera_config(example_config, f"file:{path}", fps=100.0,
                                        resolution=(320, 240)),
                         clock=clock, encoder_at=lambda t: round(t * 1000))
    async with asyncio.timeout(5):
        frames = [f async for f in camera.frames()]
    assert [_level(f) for f in frames] == list(range(10))
    assert all(f.image.shape == (240, 320) and f.image.ndim == 2 for f in frames)
    assert all(f.enc == round(f.captured_at * 1000) for f in frames)
    span = frames[-1].captured_at - frames[0].captured_at
    assert 0.35 < span < 0.7, span  # 9 periods of 1/20 s, not of the config's 1/100 s


@pytest.mark.asyncio
async def test_folder_is_replayed_in_name_order_and_loops(example_config: LineConfig,
                                                         tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{chr(ord('e') - i)}-{i}.png"), _numbered(4 - i))
    (tmp_path / "notes.txt").write_text("not an image")
    clock = RealClock()
    once = open_camera(_camera_config(example_config, f"folder:{tmp_path}", fps=50.0,
                                      resolution=(320, 240)),
                       clock=clock, encoder_at=lambda t: 0)
    async with asyncio.timeout(5):
        frames = [f async for f in once.frames()]
    assert [_level(f) for f in frames] == [0, 1, 2, 3, 4]
    span = frames[-1].captured_at - frames[0].captured_at
    assert 0.06 < span < 0.3, span

    looping = open_camera(_camera_config(example_config, f"folder+loop:{tmp_path}", fps=100.0,
                                         resolution=(320, 240)),
                          clock=clock, encoder_at=lambda t: 0)
    async with _consuming(looping) as frames:
        await _until(lambda: len(frames) >= 12, 5, "a looping replay")
    assert [_level(f) for f in frames[:12]] == [0, 1, 2, 3, 4] * 2 + [0, 1]


def _write_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 20.0, (320, 240))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.cvtColor(_numbered(i), cv2.COLOR_GRAY2BGR))
    writer.release()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["file", "folder+loop"])
async def test_a_replay_of_another_size_is_refused_not_retried(
        example_config: LineConfig, tmp_path: Path, kind: str) -> None:
    if kind == "file":
        source = tmp_path / "belt.avi"
        _write_video(source, 5)
    else:
        source = tmp_path
        for i in range(3):
            cv2.imwrite(str(tmp_path / f"{i}.png"), _numbered(i))
    camera = open_camera(_camera_config(example_config, f"{kind}:{source}", fps=50.0,
                                        resolution=(640, 480)),
                         clock=RealClock(), encoder_at=lambda t: 0)
    assert isinstance(camera, OpenCVCamera)
    frames: list[Frame] = []
    with pytest.raises(ConfigError) as refusal:
        await _collect(camera, frames)
    assert frames == []
    assert refusal.value.problems == [(f"cameras.{example_config.cameras[0].id}.resolution",
                                       "camera delivers 320x240, configured 640x480")]
    assert refusal.value.source == f"{kind}:{source}"
    assert camera.state is CameraState.DOWN
    assert camera.stats.outages == 0  # refused, not an outage to reconnect from


async def _collect(camera: Camera, frames: list[Frame]) -> None:
    async with asyncio.timeout(5):
        async for frame in camera.frames():
            frames.append(frame)  # noqa: PERF401 - the test reads what came before the error


# --- outages -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("driver", ["mjpeg", "opencv"])
async def test_camera_goes_down_and_comes_back(example_config: LineConfig, driver: str) -> None:
    config = _config(example_config, (320, 180), speed_mm_s=1000.0, fps=20.0)
    async with _running_line(config, _spec(30, (30.0, 60.0))) as (line, _), \
            MjpegServer(line) as server:
        # The emulated camera is triggered: it sends frames only while a parcel is in view.
        await _first_frame(line)
        camera: MjpegCamera | OpenCVCamera
        if driver == "mjpeg":
            camera = MjpegCamera("cam1", server.url("cam1"), clock=line.clock,
                                 encoder_at=_encoder_at(line), read_timeout_s=0.4,
                                 backoff=FAST)
        else:
            camera = OpenCVCamera("cam1", server.url("cam1"), kind="stream", clock=line.clock,
                                  encoder_at=_encoder_at(line), read_timeout_s=0.4,
                                  open_timeout_s=1.0, backoff=FAST)
        async with _consuming(camera) as frames:
            await _until(lambda: camera.state is CameraState.STREAMING, 5, "streaming")
            # Silent but connected: the read timeout notices.
            server.pause()
            took = await _until(lambda: camera.state is CameraState.DOWN, 2.5, "down on pause")
            assert took < 1.5
            assert camera.stats.outages == 1
            server.resume()
            await _until(lambda: camera.state is CameraState.STREAMING, 5, "back after pause")
            assert camera.stats.reconnects == 1
            # Gone altogether: connection refused until it is back.
            await server.stop()
            await _until(lambda: camera.state is CameraState.DOWN, 2.5, "down on stop")
            errors = camera.stats.errors
            await _until(lambda: camera.stats.errors >= errors + 2, 3, "retries while down")
            await server.restart()
            n = len(frames)
            await _until(lambda: camera.state is CameraState.STREAMING and len(frames) > n + 2,
                         5, "back after restart")
        assert camera.stats.reconnects == 2
        assert camera.stats.outages == 2
        assert frames == sorted(frames, key=lambda f: f.captured_at)


# --- hostile servers -----------------------------------------------------------------------------

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n"
        b"\r\n")
JPEG = cv2.imencode(".jpg", _numbered(1))[1].tobytes()


def _part(body: bytes, length: int | None = None, boundary: bytes = b"frame") -> bytes:
    size = len(body) if length is None else length
    return (b"--" + boundary + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
            + str(size).encode() + b"\r\n\r\n" + body + b"\r\n")


async def _endless(writer: asyncio.StreamWriter, chunk: bytes, first: bytes = b"") -> None:
    clock = RealClock()
    writer.write(first)
    while not writer.transport.is_closing():
        writer.write(chunk)
        await writer.drain()
        await clock.sleep(0.005)


async def _dribble(writer: asyncio.StreamWriter) -> None:
    await _endless(writer, b"X", b"HTTP/1.1 200 OK\r\n")


HOSTILE: dict[str, tuple[Callable[[asyncio.StreamWriter], Awaitable[None]], str]] = {
    "garbage": (lambda w: _endless(w, bytes(range(256)) * 64),
                "bad HTTP response: Bad status line"),
    "endless-response-header": (lambda w: _endless(w, b"X-Junk: " + b"a" * 4096,
                                                   b"HTTP/1.1 200 OK\r\n"),
                                "bad HTTP response: Got more than"),
    "not-http": (lambda w: _endless(w, b"SSH-2.0-OpenSSH\r\n\r\n"),
                 "bad HTTP response: Bad status line"),
    "not-multipart": (lambda w: _endless(
        w, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>"), "not an MJPEG stream"),
    "bad-boundary": (lambda w: _endless(w, HEAD + _part(JPEG, boundary=b"other") * 50),
                     "expected boundary"),
    "garbage-after-head": (lambda w: _endless(w, HEAD + b"\x00\xff" * 4000), "boundary line"),
    "lying-length": (lambda w: _endless(w, HEAD + _part(JPEG, len(JPEG) + 700) * 5),
                     "not a whole JPEG"),
    "truncated-jpeg": (lambda w: _endless(w, HEAD + _part(JPEG[: len(JPEG) // 2]) * 5),
                       "not a whole JPEG"),
    "oversized": (lambda w: _endless(w, HEAD + _part(JPEG, 100_000_000)), "byte limit"),
    "endless-header": (lambda w: _endless(w, b"a" * 4096, HEAD + b"--frame\r\nX-Junk: "),
                       "part header longer"),
    "silent-dribble": (_dribble, "no response header within 0.6 s"),
    "silent-after-head": (lambda w: _endless(w, b"", HEAD), "no data for 0.3 s"),
    "bad-chunking": (lambda w: _endless(w, b"zz\r\n" + _part(JPEG) + b"\r\n",
                                        HEAD[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"),
                     "bad HTTP response: Invalid character in chunk size"),
    "http-error": (lambda w: _endless(w, b"HTTP/1.1 503 Busy\r\n\r\n"), "HTTP 503"),
    "bad-stamp": (lambda w: _endless(w, HEAD + b"--frame\r\nContent-Length: 4\r\n"
                                     b"X-Encoder-Count: lots\r\n\r\n"), "X-Encoder-Count"),
}


@contextlib.asynccontextmanager
async def _hostile_server(send: Callable[[asyncio.StreamWriter], Awaitable[None]],
                          ) -> AsyncIterator[int]:
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            await send(writer)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        pending = [t for t in handlers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2)
        await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_stream_is_an_error_not_a_crash_or_a_hang(case: str) -> None:
    send, expected = HOSTILE[case]
    async with _hostile_server(send) as port:
        camera = MjpegCamera("cam9", f"http://127.0.0.1:{port}/cam9.mjpg", clock=RealClock(),
                             encoder_at=lambda t: 0, read_timeout_s=0.3, connect_timeout_s=0.3,
                             backoff=FAST)
        async with _consuming(camera) as frames:
            await _until(lambda: camera.stats.errors >= 2, 3, f"{case}: two failed sessions")
        assert frames == []
        assert camera.state is CameraState.DOWN
        assert camera.stats.outages == 1
        assert expected in (camera.stats.last_error or ""), camera.stats.last_error


@pytest.mark.asyncio
async def test_undecodable_jpeg_in_good_framing_is_skipped_and_counted() -> None:
    bad = b"\xff\xd8" + bytes(300) + b"\xff\xd9"

    async def send(writer: asyncio.StreamWriter) -> None:
        await _endless(writer, _part(bad) + _part(JPEG) + _part(JPEG), HEAD)

    async with _hostile_server(send) as port:
        clock = RealClock()
        camera = MjpegCamera("cam9", f"http://127.0.0.1:{port}/x.mjpg", clock=clock,
                             encoder_at=lambda t: round(t * 1000), latency_s=0.25,
                             read_timeout_s=0.5, backoff=FAST)
        async with _consuming(camera) as frames:
            await _until(lambda: len(frames) >= 4, 3, "good frames after a bad one")
        assert camera.stats.bad_frames >= 1
        assert camera.stats.errors == 0
        # No stamps in the headers: arrival less the latency, and the count at that moment.
        assert frames[0].captured_at < clock.now() - 0.25
        assert frames[0].enc == round(frames[0].captured_at * 1000)
        assert _level(frames[0]) == 1


class _TickedCamera(MjpegCamera):
    """Notes the event loop's tick at each frame it hands over."""

    ticks: list[int]
    tick: Callable[[], int]

    def _offer(self, frame: Frame) -> None:
        self.ticks.append(self.tick())
        super()._offer(frame)


@pytest.mark.asyncio
async def test_a_burst_of_buffered_parts_is_handed_over_a_part_per_loop_step() -> None:
    """Parts that arrive together (the loop was late) are parsed one per step of the loop,
    so what else is ready, a divert to send, runs between them, not after the burst."""
    burst = 6

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + _part(JPEG) * burst)  # one write: the client reads it at once
        await writer.drain()
        while not writer.transport.is_closing():
            await RealClock().sleep(0.01)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with _hostile_server(send) as port:
        camera = _TickedCamera("cam9", f"http://127.0.0.1:{port}/x.mjpg", clock=RealClock(),
                               encoder_at=lambda t: 0, queue_size=burst, backoff=FAST)
        camera.ticks, camera.tick = [], lambda: ticks
        counting = asyncio.create_task(ticker())
        try:
            async with _consuming(camera) as frames:
                await _until(lambda: len(frames) >= burst, 3, "the burst's frames")
        finally:
            counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counting
    assert len(camera.ticks) == burst
    assert all(b > a for a, b in itertools.pairwise(camera.ticks)), camera.ticks


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("size", [(1920, 1080), (640, 480), (7, 3)])
def test_a_jpegs_size_is_read_from_its_header(size: tuple[int, int], progressive: bool) -> None:
    image = np.random.default_rng(1).integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    for pixels in (image, cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)):
        ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
        assert ok
        assert jpeg_size(jpeg.tobytes()) == size
    assert jpeg_size(b"\xff\xd8" + bytes(300) + b"\xff\xd9") is None
    assert jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None  # data before any frame header
    assert jpeg_size(b"\xff\xd8\xff\xc0\x00") is None  # cut short


@pytest.mark.asyncio
async def test_a_jpeg_is_decoded_only_when_looked_at_and_a_broken_one_is_no_evidence() -> None:
    """The header gives the size: the pixels are decoded when the controller decodes the
    frame, and a JPEG whose data is broken then gives no reads and is counted."""
    header_only = JPEG[:JPEG.index(b"\xff\xda")] + b"\xff\xda" + bytes(40) + b"\xff\xd9"
    assert jpeg_size(header_only) == jpeg_size(JPEG)

    async def send(writer: asyncio.StreamWriter) -> None:
        await _endless(writer, _part(header_only) + _part(JPEG), HEAD)

    async with _hostile_server(send) as port:
        camera = MjpegCamera("cam9", f"http://127.0.0.1:{port}/x.mjpg", clock=RealClock(),
                             encoder_at=lambda t: 0, read_timeout_s=0.5, backoff=FAST)
        async with _consuming(camera) as frames:
            await _until(lambda: len(frames) >= 2, 3, "two frames")
    assert camera.stats.bad_frames == 0  # nothing decoded yet
    decoder = make_decoder("zxing")
    broken, good = frames[0], frames[1]
    assert decode_frame_crops(decoder, broken, [(0, 8)]) is None
    assert camera.stats.bad_frames == 1
    assert decode_frame_crops(decoder, good, [(0, 8)]) == []
    assert _level(good) == 1


# --- the registry --------------------------------------------------------------------------------


def test_registry_picks_the_driver_by_source(example_config: LineConfig) -> None:
    def opened(source: str) -> Camera:
        return open_camera(_camera_config(example_config, source), clock=RealClock(loop),
                           encoder_at=lambda t: 0)

    loop = asyncio.new_event_loop()
    try:
        assert isinstance(opened("mjpeg+http://127.0.0.1:8080/cam1.mjpg"), MjpegCamera)
        for source, kind, loops in [("http://10.0.0.5/video", "stream", False),
                                    ("rtsp://10.0.0.5:554/main", "stream", False),
                                    ("v4l2:0", "device", False), ("/dev/video2", "device", False),
                                    ("file:/data/belt.avi", "file", False),
                                    ("folder+loop:/data/frames", "folder", True)]:
            camera = opened(source)
            assert isinstance(camera, OpenCVCamera), source
            assert (camera.kind, camera.loop) == (kind, loops), source
        assert opened("/dev/video2").source == 2  # type: ignore[attr-defined]
        for bad in ("emulator", "gopher://x", "mjpeg+http://", "folder:", "camera7"):
            with pytest.raises(DriverUnavailable, match="camera cam1"):
                opened(bad)
    finally:
        loop.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["garbage", "not-multipart", "silent-dribble", "refused"])
async def test_opencv_on_a_bad_stream_is_down_and_stops_promptly(case: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if case == "refused":
            port = await stack.enter_async_context(_hostile_server(HOSTILE["garbage"][0]))
            await stack.aclose()  # nobody listens there any more
        else:
            port = await stack.enter_async_context(_hostile_server(HOSTILE[case][0]))
        camera = OpenCVCamera("cam9", f"http://127.0.0.1:{port}/cam9.mjpg", kind="stream",
                              clock=RealClock(), encoder_at=lambda t: 0, open_timeout_s=0.5,
                              read_timeout_s=0.5, backoff=FAST)
        async with _consuming(camera) as frames:
            await _until(lambda: camera.stats.errors >= 2, 4, f"{case}: two failed opens")
        assert frames == []
        assert camera.state is CameraState.DOWN
        assert "cannot open" in (camera.stats.last_error or "")


def test_the_configured_latency_reaches_the_driver(example_config: LineConfig,
                                                   tmp_path: Path) -> None:
    """Unstamped frames are only placed right with the camera's measured latency."""
    config = _camera_config(example_config, f"folder:{tmp_path}").model_copy(
        update={"latency_ms": 40.0})
    loop = asyncio.new_event_loop()
    try:
        camera = open_camera(config, clock=RealClock(loop), encoder_at=lambda _t: 0)
        override = open_camera(config, clock=RealClock(loop), encoder_at=lambda _t: 0,
                               latency_s=0.0)
    finally:
        loop.close()
    assert isinstance(camera, CameraLink)
    assert camera.latency_s == 0.04
    assert isinstance(override, CameraLink)
    assert override.latency_s == 0.0
