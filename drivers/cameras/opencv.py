"""A camera on OpenCV: a V4L2 device, an HTTP/RTSP stream, a video file or a folder of images.

``cv2.VideoCapture.read`` blocks, so each camera reads in its own thread ("camera-<id>"),
which stamps every frame with the clock's time right after the grab and hands it to the
event loop; the loop adds the encoder count there (``encoder_at(captured_at)``). The thread
reopens the source with exponential backoff when opening fails or reads stop, and is
stopped and joined when ``frames()`` ends. Network sources get OpenCV's open and read
timeouts (FFmpeg's defaults are 30 s), so a silent stream is noticed within
``read_timeout_s``. The thread and its backoff run on real time: this driver needs the
real clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from controller.clock import Clock
from controller.errors import ConfigError, DriverError
from controller.vision import EncoderAt, Frame, GrayImage
from drivers.cameras import Backoff, CameraLink

log = logging.getLogger(__name__)

SourceKind = Literal["stream", "device", "file", "folder"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".webp"})


def to_gray(image: Any) -> GrayImage:
    """A 2-D contiguous uint8 image from whatever OpenCV returned (BGR, BGRA, 16-bit, gray)."""
    array = np.asarray(image)
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 1:
            array = array[:, :, 0]
        elif channels == 3:
            array = np.asarray(cv2.cvtColor(array, cv2.COLOR_BGR2GRAY))
        elif channels == 4:
            array = np.asarray(cv2.cvtColor(array, cv2.COLOR_BGRA2GRAY))
        else:
            raise ValueError(f"unexpected {channels}-channel image")
    if array.ndim != 2:
        raise ValueError(f"unexpected image shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


class _Reader(Protocol):
    """One opened source."""

    fps: float | None

    def read(self) -> tuple[bool, Any]: ...

    def rewind(self) -> bool: ...

    def release(self) -> None: ...


class _CaptureReader:
    """A ``cv2.VideoCapture`` opened on a device, stream or file."""

    def __init__(self, capture: cv2.VideoCapture) -> None:
        self._capture = capture
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        self.fps: float | None = fps if 0.5 <= fps <= 500 else None

    def read(self) -> tuple[bool, Any]:
        ok, image = self._capture.read()
        return bool(ok) and image is not None, image

    def rewind(self) -> bool:
        return bool(self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def release(self) -> None:
        self._capture.release()


class _FolderReader:
    """The images of a folder, in name order."""

    fps: float | None = None

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder {folder}")
        self._paths = sorted(p for p in folder.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._paths:
            raise FileNotFoundError(f"no images in {folder}")
        self._next = 0

    def read(self) -> tuple[bool, Any]:
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is not None:
                return True, image
            log.warning("skipping unreadable image %s", path)
        return False, None

    def rewind(self) -> bool:
        self._next = 0
        return True

    def release(self) -> None:
        self._next = len(self._paths)


class OpenCVCamera(CameraLink):
    """A camera read through OpenCV in a thread, with reconnects and drop-oldest hand-over."""

    def __init__(self, camera_id: str, source: str | int, *, kind: SourceKind, clock: Clock,
                 encoder_at: EncoderAt, latency_s: float = 0.0, fps: float = 30.0,
                 loop: bool = False, queue_size: int = 2, open_timeout_s: float = 5.0,
                 read_timeout_s: float = 2.0, backoff: Backoff | None = None,
                 resolution: tuple[int, int] | None = None) -> None:
        super().__init__(camera_id, clock=clock, encoder_at=encoder_at, latency_s=latency_s,
                         queue_size=queue_size, resolution=resolution)
        self.source = source
        self.kind = kind
        self.fps = fps
        self.loop = loop
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the event loop side ---------------------------------------------------------------

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until cancelled (or, for a replay that does not loop, until its end).

        Raises ConfigError (and stops) if the source delivers frames of another size.
        """
        if self._thread is not None:
            raise RuntimeError(f"camera {self.camera_id}: frames() is already running")
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.camera_id}",
                                        daemon=True)
        self._thread.start()
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    self._ended()
                    return
                yield frame
        finally:
            await self._stop_thread()

    async def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        timeout = self.open_timeout_s + self.read_timeout_s + 1.0
        try:
            await self.clock.offload(None, thread.join, timeout)
        except asyncio.CancelledError:
            thread.join(timeout)
            raise
        finally:
            if thread.is_alive():
                log.error("camera %s: reader thread did not stop within %.1f s",
                          self.camera_id, timeout)

    def _deliver(self, image: GrayImage, grabbed_at: float) -> None:
        self._offer(self._frame(image, grabbed_at))

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(fn, *args)

    # --- the reader thread -----------------------------------------------------------------

    def _source_text(self) -> str:
        prefix = {"device": "v4l2:", "file": "file:", "folder": "folder:"}.get(self.kind, "")
        if self.loop and self.kind in ("file", "folder"):
            prefix = prefix.replace(":", "+loop:")
        return f"{prefix}{self.source}"

    def _open(self) -> _Reader:
        """Open the source (blocking); raises DriverError if it cannot be opened."""
        device = f"camera {self.camera_id}"
        try:
            if self.kind == "folder":
                return _FolderReader(Path(str(self.source)))
            if self.kind == "device":
                capture = cv2.VideoCapture(int(self.source), cv2.CAP_V4L2)
                if capture.isOpened():
                    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
                    self._ask_format(capture)
            elif self.kind == "stream":
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(self.open_timeout_s * 1000),
                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self.read_timeout_s * 1000)]
                capture = cv2.VideoCapture(str(self.source), cv2.CAP_FFMPEG, params)
            else:
                if not Path(str(self.source)).is_file():
                    raise FileNotFoundError(f"no such file {self.source}")
                capture = cv2.VideoCapture(str(self.source))
        except (OSError, cv2.error, ValueError) as exc:
            raise DriverError(device, f"cannot open {self.source}: {exc}") from exc
        if not capture.isOpened():
            capture.release()
            raise DriverError(device, f"cannot open {self.source}")
        return _CaptureReader(capture)

    def _ask_format(self, capture: cv2.VideoCapture) -> None:
        """Ask a device for the configured size and rate; what it delivers is checked."""
        if self.resolution is not None:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.resolution[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.resolution[1])
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        got = capture.get(cv2.CAP_PROP_FPS)
        if got > 0 and abs(got - self.fps) > 0.5:
            log.warning("camera %s: asked for %g fps, the device gives %g", self.camera_id,
                        self.fps, got)

    def _run(self) -> None:
        """The thread: open, read until it fails, back off, again; until stopped."""
        fatal: ConfigError | None = None
        try:
            while not self._stop.is_set():
                try:
                    reader = self._open()
                except DriverError as exc:
                    self._post(self._mark_failed, str(exc))
                    self._stop.wait(self.backoff.next_delay())
                    continue
                try:
                    reason = self._pump(reader)
                finally:
                    reader.release()
                if isinstance(reason, ConfigError):
                    fatal = reason
                    break
                if reason is None or self._stop.is_set():
                    break
                self._post(self._mark_failed, reason)
                self._stop.wait(self.backoff.next_delay())
        except Exception:  # a bug: say so rather than die silently
            log.exception("camera %s: reader thread failed", self.camera_id)
        finally:
            self._post(self._end, fatal)

    def _pump(self, reader: _Reader) -> str | ConfigError | None:
        """Read frames until stopped or the end of a replay (None), a failure (the reason) or
        a frame of the wrong size (the refusal)."""
        replay = self.kind in ("file", "folder")
        period = 1.0 / (reader.fps or self.fps) if replay else 0.0
        due = self.clock.now()
        while not self._stop.is_set():
            if replay:
                wait = due - self.clock.now()
                if wait > 0 and self._stop.wait(wait):
                    return None
            try:
                ok, image = reader.read()
            except cv2.error as exc:
                return f"read failed: {exc}"
            grabbed_at = self.clock.now()
            if not ok:
                if not replay:
                    return f"no frame from {self.source} (stream ended or silent for " \
                           f"{self.read_timeout_s:.1f} s)"
                if not self.loop:
                    log.info("camera %s: replay of %s finished", self.camera_id, self.source)
                    return None
                if not reader.rewind():
                    return f"cannot rewind {self.source}"
                continue
            try:
                gray = to_gray(image)
            except (ValueError, cv2.error) as exc:
                return f"unusable frame: {exc}"
            refusal = self._size_error((gray.shape[1], gray.shape[0]), self._source_text())
            if refusal is not None:
                return refusal
            self.backoff.reset()
            self._post(self._deliver, gray, grabbed_at)
            if replay:
                due = max(due + period, grabbed_at - period)
        return None
