"""Camera drivers, chosen by a camera's ``source`` in the line config.

=============================  ===============================================================
``mjpeg+http://HOST:PORT/P``   our MJPEG client on aiohttp (:mod:`drivers.cameras.mjpeg`); the
``mjpeg+https://…``            encoder count and capture time come from the part headers
                               ``X-Encoder-Count`` / ``X-Capture-Time`` when present; Basic or
                               Digest login from ``credentials_file`` / ``credentials_env``
``http://…``, ``rtsp://…``     OpenCV ``VideoCapture`` on the stream (FFmpeg)
``v4l2:N``, ``/dev/videoN``    OpenCV on a USB/V4L2 device
``file:PATH``                  a video file replayed at its own fps (else the config's fps)
``folder:PATH``                the images of a folder in name order at the config's fps
``file+loop:``/``folder+loop:`` the same, starting over at the end
``emulator``                   not a driver: the simulator wires its own cameras
=============================  ===============================================================

Drivers are imported only when asked for, so OpenCV is never loaded for an MJPEG-only line.
This module also holds what every driver shares: the link state, counters, a drop-oldest
frame hand-over (reconnect backoff is :mod:`drivers.backoff`), and the frame size check: a
frame of another size than the configured ``resolution`` ends ``frames()`` with a
:class:`ConfigError` on ``cameras.<id>.resolution`` and no reconnect, since the camera's mm
per pixel would silently be wrong.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.errors import ConfigError, DriverUnavailable
from controller.vision import Camera, CameraState, EncoderAt, Frame, GrayImage
from drivers.backoff import Backoff

if TYPE_CHECKING:
    from controller.clock import Clock
    from controller.config import CameraConfig

__all__ = ["Backoff", "CameraLink", "CameraStats", "needs_latency", "open_camera",
           "wrong_size"]

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(?:v4l2:(\d+)|/dev/video(\d+))$")


@dataclass
class CameraStats:
    """Counters a camera driver keeps for diagnostics."""

    frames: int = 0
    dropped: int = 0  # frames thrown away because the controller lagged
    reconnects: int = 0  # links re-established after an outage
    outages: int = 0
    errors: int = 0  # failed opens, reads and protocol errors
    bad_frames: int = 0  # frames that arrived but did not decode
    last_error: str | None = None


def wrong_size(source: str, camera_id: str, delivered: tuple[int, int],
               configured: tuple[int, int]) -> ConfigError:
    """The refusal of a camera whose frames are not the configured size."""
    (w, h), (cw, ch) = delivered, configured
    return ConfigError(source, [(f"cameras.{camera_id}.resolution",
                                 f"camera delivers {w}x{h}, configured {cw}x{ch}")])


class CameraLink:
    """State, counters and the drop-oldest hand-over shared by the camera drivers.

    All methods run on the event loop; threads reach them through ``call_soon_threadsafe``.
    """

    def __init__(self, camera_id: str, *, clock: Clock, encoder_at: EncoderAt,
                 latency_s: float = 0.0, queue_size: int = 2,
                 resolution: tuple[int, int] | None = None) -> None:
        self.camera_id = camera_id
        self.resolution = resolution  # (width, height) frames must have; None: any
        self.clock = clock
        self.encoder_at = encoder_at
        self.latency_s = latency_s
        self.stats = CameraStats()
        self._state = CameraState.CONNECTING
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue(max(1, queue_size))
        self._down_since: float | None = None
        self._fatal: ConfigError | None = None
        self._log = logging.getLogger(type(self).__module__)

    @property
    def state(self) -> CameraState:
        """How the link is doing now."""
        return self._state

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    def _offer(self, frame: Frame) -> None:
        """Queue a frame for the controller, dropping the oldest if it lags."""
        if self._state is not CameraState.STREAMING:
            self._mark_streaming()
        if self._queue.full():
            self._queue.get_nowait()
            self.stats.dropped += 1
        self._queue.put_nowait(frame)
        self.stats.frames += 1

    def _mark_streaming(self) -> None:
        """The link delivers frames (again)."""
        if self._state is CameraState.DOWN and self._down_since is not None:
            self.stats.reconnects += 1
            self._log.info("camera %s: streaming again after %.1f s down", self.camera_id,
                           self.clock.now() - self._down_since)
        elif self._state is CameraState.CONNECTING:
            self._log.info("camera %s: streaming", self.camera_id)
        self._down_since = None
        self._state = CameraState.STREAMING

    def _mark_failed(self, reason: str) -> None:
        """An open or a read failed: count it; warn once per outage."""
        self.stats.errors += 1
        self.stats.last_error = reason
        if self._state is CameraState.DOWN:
            self._log.debug("camera %s: still down: %s", self.camera_id, reason)
            return
        self.stats.outages += 1
        self._down_since = self.clock.now()
        self._state = CameraState.DOWN
        self._log.warning("camera %s: down, reconnecting with backoff: %s", self.camera_id,
                          reason)

    def _size_error(self, size: tuple[int, int], source: str) -> ConfigError | None:
        """The refusal if a frame of ``size`` (width, height) is not the configured size."""
        if self.resolution is None:
            return None
        width, height = size
        if (width, height) == tuple(self.resolution):
            return None
        return wrong_size(source, self.camera_id, (width, height), self.resolution)

    def _end(self, fatal: ConfigError | None = None) -> None:
        """End ``frames()``: normally, or raising ``fatal`` (the link is not retried)."""
        if fatal is not None:
            self._fatal = fatal
            self._state = CameraState.DOWN
            self.stats.errors += 1
            self.stats.last_error = str(fatal)
            self._log.error("camera %s: refused, not reconnecting: %s", self.camera_id,
                            "; ".join(reason for _, reason in fatal.problems))
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def _ended(self) -> None:
        """At the end of the queue: raise the refusal if there was one."""
        if self._fatal is not None:
            raise self._fatal

    def _frame(self, image: GrayImage | Callable[[], GrayImage], arrived_at: float,
               enc: int | None = None, captured_at: float | None = None) -> Frame:
        """A frame of ``image``, or of the pixels ``image()`` makes when first looked at;
        capture time and count default to arrival less the link's latency."""
        at = arrived_at - self.latency_s if captured_at is None else captured_at
        count = self.encoder_at(at) if enc is None else enc
        if callable(image):
            return Frame(self.camera_id, None, count, at, render=image)
        return Frame(self.camera_id, image, count, at)


def needs_latency(source: str) -> bool:
    """Whether frames from ``source`` reach the controller without an encoder count, so
    their placement on the belt rests on the camera's measured ``latency_ms``."""
    return source.strip() != "emulator" and not source.strip().startswith(
        ("mjpeg+", "file:", "file+loop:", "folder:", "folder+loop:"))


def _file_source(camera: str, rest: str) -> str:
    if not rest:
        raise DriverUnavailable(camera, "empty path in camera source")
    return rest


def open_camera(config: CameraConfig, *, clock: Clock, encoder_at: EncoderAt,
                latency_s: float | None = None) -> Camera:
    """The driver for ``config.source``; raises DriverUnavailable for an unknown source.

    ``latency_s`` (capture to arrival) defaults to the camera's configured ``latency_ms``.
    """
    if latency_s is None:
        latency_s = config.latency_ms / 1000
    source = config.source.strip()
    device = f"camera {config.id}"
    scheme, sep, rest = source.partition(":")
    if source == "emulator":
        raise DriverUnavailable(device, "the emulator's cameras are wired by the simulator "
                                        "(sim_hardware.devices.SimCamera), not opened here")
    if source.startswith(("mjpeg+http://", "mjpeg+https://")):
        from drivers.cameras.credentials import read_credentials
        from drivers.cameras.mjpeg import MjpegCamera
        credentials = read_credentials(device, config.credentials_file, config.credentials_env)
        return MjpegCamera(config.id, source.removeprefix("mjpeg+"), clock=clock,
                           encoder_at=encoder_at, latency_s=latency_s, credentials=credentials,
                           ca_file=config.ca_file, tls_verify=config.tls_verify,
                           resolution=config.resolution)
    match = _DEVICE.match(source)
    if match is None and not (sep and scheme in ("http", "https", "rtsp", "rtsps", "file",
                                                 "file+loop", "folder", "folder+loop")):
        raise DriverUnavailable(device, f"unknown camera source {source!r}; expected "
                                "mjpeg+http://, mjpeg+https://, http://, rtsp://, v4l2:N, "
                                "/dev/videoN, file:PATH, folder:PATH or emulator")
    try:
        from drivers.cameras.opencv import OpenCVCamera
    except ImportError as exc:  # pragma: no cover - OpenCV is a dependency
        raise DriverUnavailable(device, f"OpenCV is not available: {exc}") from exc
    if match is not None:
        index = int(match.group(1) or match.group(2))
        return OpenCVCamera(config.id, index, kind="device", clock=clock, encoder_at=encoder_at,
                            latency_s=latency_s, fps=config.fps, resolution=config.resolution)
    if scheme in ("file", "file+loop", "folder", "folder+loop"):
        return OpenCVCamera(config.id, _file_source(device, rest),
                            kind="file" if scheme.startswith("file") else "folder",
                            clock=clock, encoder_at=encoder_at, latency_s=latency_s,
                            fps=config.fps, loop=scheme.endswith("+loop"),
                            resolution=config.resolution)
    return OpenCVCamera(config.id, source, kind="stream", clock=clock, encoder_at=encoder_at,
                        latency_s=latency_s, fps=config.fps, resolution=config.resolution)
