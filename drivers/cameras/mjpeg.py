"""An asyncio client for MJPEG over HTTP (``multipart/x-mixed-replace``), e.g. an IP camera.

Each part's headers are read: ``Content-Type``, ``Content-Length`` and, when the server
sends them, ``X-Encoder-Count`` and ``X-Capture-Time`` (seconds on the controller's clock:
``time.monotonic``, which every process on one host shares). Without them a frame is
stamped with its arrival less ``latency_s`` and the encoder count at that moment.

The parser trusts nothing: a wrong boundary, garbage, an oversized or truncated part, a
header that never ends or a server that goes silent is logged, counted and followed by a
reconnect with backoff; every read has a timeout. JPEGs are decoded straight to gray off the
event loop. A reader task keeps only the newest frames (``queue_size``) when the controller
lags, so a slow consumer never works on stale frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from urllib.parse import urlsplit

import cv2
import numpy as np

from controller.clock import Clock
from controller.errors import DriverUnavailable, ProtocolError
from controller.vision import EncoderAt, Frame, GrayImage
from drivers.cameras import Backoff, CameraLink

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_HEADER_LINES = 64
MAX_BOUNDARY_LINE = 1024
SOI = b"\xff\xd8"
EOI = b"\xff\xd9"


class _Buffered:
    """A StreamReader with our own buffer, so that every read has our own size limit."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()

    async def _fill(self) -> None:
        chunk = await self._reader.read(256 * 1024)
        if not chunk:
            raise ProtocolError("the server closed the connection")
        self._buf += chunk

    async def read_until(self, sep: bytes, limit: int, what: str) -> bytes:
        """Bytes up to and including ``sep``; ProtocolError past ``limit`` bytes."""
        start = 0
        while True:
            at = self._buf.find(sep, start)
            if at >= 0:
                end = at + len(sep)
                if end > limit + len(sep):
                    break
                data = bytes(self._buf[:end])
                del self._buf[:end]
                return data
            if len(self._buf) > limit + len(sep):
                break
            start = max(0, len(self._buf) - len(sep) + 1)
            await self._fill()
        raise ProtocolError(f"{what} longer than {limit} bytes")

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        while len(self._buf) < n:
            await self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front."""
        self._buf[:0] = data


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in lines:
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise ProtocolError(f"malformed header line {raw[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/x-mixed-replace`` content type."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/x-mixed-replace":
        raise ProtocolError(f"not an MJPEG stream: Content-Type {content_type[:80]!r}")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if 0 < len(value) <= 70 and value.isascii() and "\r" not in value \
                    and "\n" not in value:
                return value.encode("ascii")
            raise ProtocolError(f"bad multipart boundary {value[:80]!r}")
    raise ProtocolError("multipart Content-Type without a boundary")


def decode_gray(jpeg: bytes) -> GrayImage | None:
    """A JPEG decoded straight to gray, or None if it does not decode."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None or image.ndim != 2:
        return None
    return np.ascontiguousarray(image, dtype=np.uint8)


def _describe(exc: BaseException, read_timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no data for {read_timeout_s:.1f} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)


class MjpegCamera(CameraLink):
    """An MJPEG-over-HTTP camera with validated parsing, reconnects and drop-oldest frames."""

    def __init__(self, camera_id: str, url: str, *, clock: Clock, encoder_at: EncoderAt,
                 latency_s: float = 0.0, queue_size: int = 2, connect_timeout_s: float = 2.0,
                 read_timeout_s: float = 2.0, max_part_bytes: int = 8 * 1024 * 1024,
                 backoff: Backoff | None = None, executor: Executor | None = None) -> None:
        super().__init__(camera_id, clock=clock, encoder_at=encoder_at, latency_s=latency_s,
                         queue_size=queue_size)
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise DriverUnavailable(f"camera {camera_id}",
                                    f"MJPEG source must be http://HOST[:PORT]/PATH, got {url!r}")
        try:
            self.port = parts.port or 80
        except ValueError as exc:
            raise DriverUnavailable(f"camera {camera_id}", f"bad port in {url!r}") from exc
        self.url = url
        self.host = parts.hostname
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_part_bytes = max_part_bytes
        self.backoff = backoff or Backoff()
        self._executor = executor
        self._task: asyncio.Task[None] | None = None

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until cancelled; the link reconnects by itself."""
        if self._task is not None:
            raise RuntimeError(f"camera {self.camera_id}: frames() is already running")
        self._task = asyncio.create_task(self._run(), name=f"camera-{self.camera_id}")
        try:
            while True:
                frame = await self._queue.get()
                if frame is not None:
                    yield frame
        finally:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """Connect, stream until something fails, back off, again."""
        while True:
            try:
                await self._session()
            except (OSError, ProtocolError, TimeoutError) as exc:
                reason = _describe(exc, self.read_timeout_s)
            except Exception as exc:  # a bug must not kill the camera: report, reconnect
                log.exception("camera %s: unexpected error", self.camera_id)
                reason = f"unexpected {type(exc).__name__}: {exc}"
            self._mark_failed(reason)
            await self.clock.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        """One connection: request, response head, then parts until an error."""
        async with asyncio.timeout(self.connect_timeout_s):
            reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            request = (f"GET {self.target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                       "Accept: multipart/x-mixed-replace, image/jpeg\r\n"
                       "User-Agent: parcel-sorter\r\nConnection: close\r\n\r\n")
            writer.write(request.encode("latin-1"))
            stream = _Buffered(reader)
            async with asyncio.timeout(self.read_timeout_s):
                await writer.drain()
                head = await stream.read_until(b"\r\n\r\n", MAX_HEAD, "response header")
            status_line, *lines = head[:-4].split(b"\r\n")
            fields = status_line.split(b" ", 2)
            if len(fields) < 2 or not fields[0].startswith(b"HTTP/1."):
                raise ProtocolError(f"not an HTTP response: {status_line[:60]!r}")
            if fields[1] != b"200":
                raise ProtocolError(f"HTTP {status_line[9:80].decode('latin-1')} from {self.url}")
            headers = _parse_headers(lines)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise ProtocolError("chunked transfer encoding is not supported for MJPEG")
            boundary = _boundary(headers.get("content-type", ""))
            while True:
                await self._part(stream, boundary)
        finally:
            writer.transport.abort()

    async def _part(self, stream: _Buffered, boundary: bytes) -> None:
        """Read one part and hand its frame over; raises ProtocolError on bad framing."""
        delimiter = b"--" + boundary
        async with asyncio.timeout(self.read_timeout_s):
            line = b""
            for _ in range(3):  # the CRLF ending the previous part, maybe a blank line
                line = (await stream.read_until(b"\n", MAX_BOUNDARY_LINE, "boundary line")).strip()
                if line:
                    break
            if line == delimiter + b"--":
                raise ProtocolError("the server ended the stream")
            if line not in (delimiter, boundary):
                raise ProtocolError(f"expected boundary {delimiter!r}, got {line[:60]!r}")
            lines: list[bytes] = []
            while True:
                raw = (await stream.read_until(b"\n", MAX_HEAD, "part header")).rstrip(b"\r\n")
                if not raw:
                    break
                lines.append(raw)
                if len(lines) > MAX_HEADER_LINES:
                    raise ProtocolError(f"part has more than {MAX_HEADER_LINES} header lines")
            arrived_at = self.clock.now()
            headers = _parse_headers(lines)
            kind = headers.get("content-type", "image/jpeg").lower()
            if not kind.startswith(("image/jpeg", "image/jpg")):
                raise ProtocolError(f"unsupported part type {kind[:60]!r}")
            body = await self._body(stream, headers, delimiter)
        enc, captured_at = self._stamps(headers)
        if not (body.startswith(SOI) and body.rstrip(b"\r\n").endswith(EOI)):
            raise ProtocolError(f"part of {len(body)} bytes is not a whole JPEG "
                                "(truncated, or a wrong Content-Length)")
        image = await self.clock.offload(self._executor, decode_gray, body)
        if image is None:
            self.stats.bad_frames += 1
            self.stats.last_error = "undecodable JPEG"
            log.warning("camera %s: a JPEG of %d bytes did not decode", self.camera_id,
                        len(body))
            return
        self.backoff.reset()
        self._offer(self._frame(image, arrived_at, enc, captured_at))

    async def _body(self, stream: _Buffered, headers: dict[str, str], delimiter: bytes) -> bytes:
        length_text = headers.get("content-length")
        if length_text is None:  # no length: the body runs to the next boundary
            data = await stream.read_until(b"\r\n" + delimiter, self.max_part_bytes, "part")
            stream.unread(delimiter)
            return data[:-len(delimiter) - 2]
        if not length_text.isdigit():
            raise ProtocolError(f"bad Content-Length {length_text[:30]!r}")
        length = int(length_text)
        if length > self.max_part_bytes:
            raise ProtocolError(f"part of {length} bytes exceeds the {self.max_part_bytes} "
                                "byte limit")
        return await stream.read_exactly(length)

    def _stamps(self, headers: dict[str, str]) -> tuple[int | None, float | None]:
        """The encoder count and capture time the server sent, if any."""
        enc: int | None = None
        captured_at: float | None = None
        try:
            if "x-encoder-count" in headers:
                enc = int(headers["x-encoder-count"])
            if "x-capture-time" in headers:
                captured_at = float(headers["x-capture-time"])
        except ValueError as exc:
            raise ProtocolError(f"bad X-Encoder-Count or X-Capture-Time: {exc}") from None
        if captured_at is not None and not math.isfinite(captured_at):
            raise ProtocolError(f"bad X-Capture-Time {headers['x-capture-time']!r}")
        if enc is None and captured_at is not None:
            enc = self.encoder_at(captured_at)
        return enc, captured_at
