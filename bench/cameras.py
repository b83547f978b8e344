"""MJPEG camera links end to end at 1080p: `.venv/bin/python bench/cameras.py [frames] [fps]`
(`--driver-only`: only the MjpegCamera-alone figure).

Emulated 1920x1080 frames with labels go through :class:`sim_hardware.mjpeg.MjpegServer`
(JPEG encode, gray, q85) to :class:`drivers.cameras.mjpeg.MjpegCamera` (decode to gray) and
to :class:`drivers.cameras.opencv.OpenCVCamera` on the same HTTP stream (FFmpeg). Prints the
ms from the frame's capture to its hand-over to the controller, median and p95, and the
process CPU per frame (server and both clients share this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.clock import RealClock
from controller.config import load_config
from controller.vision import Frame
from drivers.cameras import mjpeg as mjpeg_module
from drivers.cameras.mjpeg import MjpegCamera, decode_gray
from drivers.cameras.opencv import OpenCVCamera
from sim_hardware.labels import LabelSpec
from sim_hardware.line import PhysicalLine
from sim_hardware.mjpeg import MjpegServer, encode_part
from sim_hardware.render import FrameRenderer, ParcelTop, PlacedLabel
from sim_hardware.scenario import ScenarioSpec

ROOT = Path(__file__).resolve().parents[1]
BITS = 12  # the frame number, as black/white squares in the top left corner


def stamp(image: np.ndarray, n: int) -> None:
    """Write ``n`` into the image as squares that survive JPEG."""
    for bit in range(BITS):
        image[0:32, bit * 32:(bit + 1) * 32] = 255 if n >> bit & 1 else 0


def read_stamp(image: np.ndarray) -> int:
    """The frame number :func:`stamp` wrote."""
    return sum(1 << bit for bit in range(BITS)
               if image[8:24, bit * 32 + 8:bit * 32 + 24].mean() > 128)


def ms(values: list[float]) -> str:
    if not values:
        return "no frames"
    a = np.array(values) * 1000
    return f"median {np.median(a):6.1f} ms  p95 {np.percentile(a, 95):6.1f} ms  (n={len(a)})"


async def main(n_frames: int, fps: float, driver_only: bool = False) -> None:
    config = load_config(ROOT / "deploy" / "line.example.toml")
    cam = config.cameras[0]
    clock = RealClock()
    spec = ScenarioSpec(parcels=0)
    line = PhysicalLine(config, spec, [], clock)
    renderer = FrameRenderer(*cam.resolution, cam.mm_per_px, seed=1)
    images = []
    for i in range(16):
        top = ParcelTop(cam.position_mm + 100 + 20 * i, 400, 300, 0, 150,
                        (PlacedLabel(LabelSpec(f"0045{i:08d}", seed=i), 0, 0, 23.0 * i),))
        images.append(renderer.render(cam.view_start_mm, [top]))

    if driver_only:
        await driver_alone(clock, images, max(n_frames, 300))
        await driver_alone(clock, images, max(n_frames, 300), decode=False)
        return
    single_thread_costs(images)
    await driver_alone(clock, images, n_frames)
    await driver_alone(clock, images, n_frames, decode=False)
    await through_links(line, clock, images, n_frames, fps)


def single_thread_costs(images: list[np.ndarray]) -> None:
    """Encode and decode, one thread, one after another."""
    enc_t, dec_t = [], []
    jpeg = b""
    for image in images * 3:
        t = time.perf_counter()
        part = encode_part(image, 0, 0.0, 85)
        enc_t.append(time.perf_counter() - t)
        jpeg = part[part.index(b"\r\n\r\n") + 4:-2]
        t = time.perf_counter()
        decode_gray(jpeg)
        dec_t.append(time.perf_counter() - t)
    print(f"JPEG encode 1080p gray q85     {ms(enc_t)}  ({len(jpeg) / 1000:.0f} kB)")
    print(f"JPEG decode 1080p to gray      {ms(dec_t)}")


async def driver_alone(clock: RealClock, images: list[np.ndarray], n_frames: int,
                       decode: bool = True) -> None:
    """MjpegCamera on its own: pre-encoded 1080p parts from a bare loopback server, as fast
    as the driver takes them; process CPU per frame (HTTP + parse + decode to gray, the
    server's writes included) and frames per second. Without ``decode`` the JPEG decode is
    replaced by a constant image: what is left is the driver's own cost."""
    if not decode:
        blank = np.zeros(images[0].shape, np.uint8)
        mjpeg_module.decode_gray = lambda jpeg: blank
    parts = [encode_part(image, n, 0.0, 85) for n, image in enumerate(images)]
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame"
            b"\r\n\r\n")

    handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            for n in range(n_frames + 50):
                writer.write(parts[n % len(parts)])
                await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    camera = MjpegCamera("cam1", f"http://127.0.0.1:{port}/cam1.mjpg", clock=clock,
                         encoder_at=lambda t: 0, queue_size=n_frames + 100)
    got = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    async for _ in camera.frames():
        got += 1
        if got == n_frames:
            break
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    server.close()
    for writer in handlers.values():
        writer.transport.abort()
    await asyncio.wait(handlers, timeout=2)
    await server.wait_closed()
    mjpeg_module.decode_gray = decode_gray
    what = "1080p parts  " if decode else "no decode    "
    print(f"MjpegCamera alone, {what}CPU {cpu / got * 1000:6.2f} ms per frame, "
          f"{got / wall:5.1f} frames/s  (n={got})")


async def through_links(line: PhysicalLine, clock: RealClock, images: list[np.ndarray],
                        n_frames: int, fps: float) -> None:
    """Frames through the server to both clients at ``fps``."""

    sent: dict[int, float] = {}
    lag_mjpeg: list[float] = []
    lag_cv: list[float] = []
    async with MjpegServer(line) as server:
        mjpeg = MjpegCamera("cam1", server.url("cam1"), clock=clock, encoder_at=lambda t: 0)
        opencv = OpenCVCamera("cam1", server.url("cam1"), kind="stream", clock=clock,
                              encoder_at=lambda t: 0)

        async def collect_mjpeg() -> None:
            async for frame in mjpeg.frames():
                lag_mjpeg.append(clock.now() - frame.captured_at)  # noqa: PERF401

        async def collect_cv() -> None:
            async for frame in opencv.frames():
                at = sent.get(read_stamp(frame.image))
                if at is not None:
                    lag_cv.append(clock.now() - at)

        tasks = [asyncio.create_task(collect_mjpeg()), asyncio.create_task(collect_cv())]
        while server.clients("cam1") < 2:
            await clock.sleep(0.05)
        await clock.sleep(1.0)  # FFmpeg probes the stream before its first frame
        cpu0, t0 = time.process_time(), clock.now()
        for n in range(n_frames):
            image = images[n % len(images)].copy()
            stamp(image, n)
            sent[n] = clock.now()
            frame = Frame("cam1", image, n, sent[n])
            for sink in line.frame_sinks["cam1"]:
                sink(frame)
            await clock.sleep_until(t0 + (n + 1) / fps)
        await clock.sleep(0.5)
        cpu = time.process_time() - cpu0
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    print(f"capture -> MjpegCamera         {ms(lag_mjpeg)}  dropped {mjpeg.stats.dropped}")
    print(f"capture -> OpenCV VideoCapture {ms(lag_cv)}  dropped {opencv.stats.dropped}")
    print(f"server: {server.stats}")
    print(f"process CPU {cpu / n_frames * 1000:.1f} ms per frame at {fps:g} fps "
          f"(render excluded; encode once + 2 decodes + FFmpeg demux)")



if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--driver-only"]
    frames = int(args[0]) if args else 150
    rate = float(args[1]) if len(args) > 1 else 15.0
    asyncio.run(main(frames, rate, driver_only="--driver-only" in sys.argv))
