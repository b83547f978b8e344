"""An asyncio client for MJPEG over HTTP or HTTPS (``multipart/x-mixed-replace``), e.g. an IP
camera, on aiohttp's client: chunked or plain bodies, TLS verified against the system's CAs
or a ``ca_file``, a Digest login (or Basic, when the camera's challenge asks for it) with
:class:`~drivers.cameras.credentials.Credentials`. A refused login is retried only at the
backoff's cap, since cameras lock accounts after a few bad logins.

Each part's headers are read: ``Content-Type``, ``Content-Length`` and, when the server
sends them, ``X-Encoder-Count`` and ``X-Capture-Time`` (seconds on the controller's clock:
``time.monotonic``, which every process on one host shares). Without them a frame is
stamped with its arrival less ``latency_s`` and the encoder count at that moment.

The parser trusts nothing: a wrong boundary, garbage, an oversized or truncated part, a
header that never ends or a server that goes silent is logged, counted and followed by a
reconnect with backoff; every read has a timeout. JPEGs are decoded straight to gray off the
event loop. A reader task keeps only the newest frames (``queue_size``) when the controller
lags, so a slow consumer never works on stale frames.

The HTTP framing (buffered body reads, part headers, the boundary, TLS, login challenge and
failure reasons) is :mod:`drivers.cameras.mjpeg_http`'s; this module is the camera driver.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from urllib.parse import urlsplit

import aiohttp

from controller.clock import Clock
from controller.errors import ConfigError, DriverUnavailable, ImageError, ProtocolError
from controller.vision import EncoderAt, Frame, GrayImage
from drivers.cameras import Backoff, CameraLink
from drivers.cameras.credentials import Credentials
from drivers.cameras.jpeg import decode_gray as decode_gray  # noqa: PLC0414 - re-exported
from drivers.cameras.jpeg import jpeg_size as jpeg_size  # noqa: PLC0414 - re-exported
from drivers.cameras.mjpeg_http import (
    MAX_BOUNDARY_LINE,
    MAX_HEAD,
    MAX_HEADER_LINES,
    Buffered,
    describe_failure,
    login_challenge,
    multipart_boundary,
    parse_headers,
    tls_context,
)

log = logging.getLogger(__name__)

READ_BUFSIZE = 256 * 1024
SOI = b"\xff\xd8"
EOI = b"\xff\xd9"


class _Pixels:
    """A part's pixels, decoded the first time the controller looks at them (in a decoding
    thread): a frame nobody decodes costs only its header. A JPEG that turns out not to decode
    is counted and logged, and raises ImageError."""

    __slots__ = ("_camera", "_jpeg")

    def __init__(self, camera: MjpegCamera, jpeg: bytes) -> None:
        self._camera = camera
        self._jpeg = jpeg

    def __call__(self) -> GrayImage:
        image = decode_gray(self._jpeg)
        if image is None:
            self._camera.undecodable(len(self._jpeg))
            raise ImageError(f"camera {self._camera.camera_id}: a JPEG of {len(self._jpeg)} "
                             "bytes did not decode")
        return image


class LoginRefused(ProtocolError):
    """The camera answered 401: no login configured, or the wrong one."""


class MjpegCamera(CameraLink):
    """An MJPEG-over-HTTP(S) camera with validated parsing, reconnects and drop-oldest frames.

    HTTP itself (the response head, chunked transfer, TLS, Basic and Digest login) is
    aiohttp's; the multipart body is parsed here, with our own limits.
    """

    def __init__(self, camera_id: str, url: str, *, clock: Clock, encoder_at: EncoderAt,
                 latency_s: float = 0.0, queue_size: int = 2, connect_timeout_s: float = 2.0,
                 read_timeout_s: float = 2.0, max_part_bytes: int = 8 * 1024 * 1024,
                 backoff: Backoff | None = None, executor: Executor | None = None,
                 credentials: Credentials | None = None, ca_file: str | None = None,
                 tls_verify: bool = True, resolution: tuple[int, int] | None = None) -> None:
        super().__init__(camera_id, clock=clock, encoder_at=encoder_at, latency_s=latency_s,
                         queue_size=queue_size, resolution=resolution)
        device = f"camera {camera_id}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DriverUnavailable(device, "MJPEG source must be http(s)://HOST[:PORT]/PATH, "
                                            f"got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise DriverUnavailable(device, "no user or password in the URL: use credentials")
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise DriverUnavailable(device, f"bad port in {url!r}") from exc
        self.url = url
        self.host = parts.hostname
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_part_bytes = max_part_bytes
        self.backoff = backoff or Backoff()
        self.credentials = credentials
        self._ssl = tls_context(device, parts.scheme, ca_file, tls_verify)
        self._basic = False  # learnt from the camera's challenge: Basic instead of Digest
        self._executor = executor
        self._task: asyncio.Task[None] | None = None

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until cancelled; the link reconnects by itself.

        Raises ConfigError (and stops) if the camera delivers frames of another size.
        """
        if self._task is not None:
            raise RuntimeError(f"camera {self.camera_id}: frames() is already running")
        self._task = asyncio.create_task(self._run(), name=f"camera-{self.camera_id}")
        try:
            while True:
                frame = await self._queue.get()
                if frame is None:
                    self._ended()
                    return
                yield frame
        finally:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _client(self) -> aiohttp.ClientSession:
        middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = ()
        if self.credentials is not None:
            middlewares = (aiohttp.DigestAuthMiddleware(self.credentials.user,
                                                        self.credentials.password),)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, force_close=True, ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s,
                                          sock_read=self.read_timeout_s),
            middlewares=middlewares, auto_decompress=False, read_bufsize=READ_BUFSIZE,
            max_line_size=MAX_HEAD, max_field_size=MAX_HEAD,
            headers={"Accept": "multipart/x-mixed-replace, image/jpeg",
                     "User-Agent": "parcel-sorter"})

    async def _run(self) -> None:
        """Connect, stream until something fails, back off, again."""
        async with self._client() as client:
            while True:
                delay: float | None = None
                try:
                    await self._session(client)
                except ConfigError as exc:
                    self._end(exc)
                    return
                except LoginRefused as exc:
                    reason = str(exc)
                    # Cameras lock an account out after a few bad logins: try rarely.
                    delay = max(self.backoff.next_delay(), self.backoff.cap)
                except (OSError, ProtocolError, TimeoutError, aiohttp.ClientError) as exc:
                    reason = describe_failure(exc, self.read_timeout_s)
                except Exception as exc:  # a bug must not kill the camera: report, reconnect
                    log.exception("camera %s: unexpected error", self.camera_id)
                    reason = f"unexpected {type(exc).__name__}: {exc}"
                self._mark_failed(reason)
                await self.clock.sleep(self.backoff.next_delay() if delay is None else delay)

    async def _request(self, client: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        headers = {}
        if self._basic and self.credentials is not None:
            login = f"{self.credentials.user}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(login).decode("ascii")
        return await client.get(self.url, headers=headers, allow_redirects=False)

    async def _response(self, client: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        """The response head, within the connect and read timeouts; 401 is LoginRefused."""
        within = self.connect_timeout_s + self.read_timeout_s
        try:
            async with asyncio.timeout(within):
                response = await self._request(client)
                if response.status == 401 and self.credentials is not None \
                        and not self._basic and login_challenge(response) == "basic":
                    response.close()
                    self._basic = True
                    response = await self._request(client)
        except TimeoutError:
            raise ProtocolError(f"no response header within {within:.1f} s") from None
        if response.status == 401:
            response.close()
            asked = login_challenge(response) or "a login"
            if self.credentials is None:
                raise LoginRefused(f"HTTP 401 from {self.url}: the camera asks for {asked}; "
                                   "set credentials_file or credentials_env")
            raise LoginRefused(f"HTTP 401 from {self.url}: login of user "
                               f"{self.credentials.user!r} refused ({asked}): wrong "
                               "credentials?")
        return response

    async def _session(self, client: aiohttp.ClientSession) -> None:
        """One connection: request, response head, then parts until an error."""
        response = await self._response(client)
        try:
            if response.status != 200:
                raise ProtocolError(f"HTTP {response.status} {response.reason or ''} from "
                                    f"{self.url}".replace("  ", " "))
            boundary = multipart_boundary(response.headers.get("Content-Type", ""))
            stream = Buffered(response.content)
            while True:
                await self._part(stream, boundary)
                # Parts already buffered (after the loop was late) would be parsed back to
                # back in one step: let what is ready, a divert to send, go between them.
                await asyncio.sleep(0)
        finally:
            response.close()

    async def _part(self, stream: Buffered, boundary: bytes) -> None:
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
            headers = parse_headers(lines)
            kind = headers.get("content-type", "image/jpeg").lower()
            if not kind.startswith(("image/jpeg", "image/jpg")):
                raise ProtocolError(f"unsupported part type {kind[:60]!r}")
            body = await self._body(stream, headers, delimiter)
        enc, captured_at = self._stamps(headers)
        if not (body.startswith(SOI) and body.rstrip(b"\r\n").endswith(EOI)):
            raise ProtocolError(f"part of {len(body)} bytes is not a whole JPEG "
                                "(truncated, or a wrong Content-Length)")
        size = jpeg_size(body)
        if size is None:
            self.undecodable(len(body))
            return
        refusal = self._size_error(size, "mjpeg+" + self.url)
        if refusal is not None:
            raise refusal
        self.backoff.reset()
        self._offer(self._frame(_Pixels(self, body), arrived_at, enc, captured_at))

    def undecodable(self, size: int) -> None:
        """A part that is no image: counted and logged (from any thread), never raised."""
        self.stats.bad_frames += 1
        self.stats.last_error = "undecodable JPEG"
        log.warning("camera %s: a JPEG of %d bytes did not decode", self.camera_id, size)

    async def _body(self, stream: Buffered, headers: dict[str, str], delimiter: bytes) -> bytes:
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
