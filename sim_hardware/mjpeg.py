"""The emulator's cameras as MJPEG streams over HTTP, as IP cameras serve them.

Each camera is served at ``/<camera_id>.mjpg`` as ``multipart/x-mixed-replace``; every part
carries ``X-Encoder-Count`` (the emulator's count at capture) and ``X-Capture-Time`` (the
capture moment on the line's clock, ``repr`` of the float so it round-trips exactly). A frame
is JPEG-encoded once, in a thread, and the same bytes go to every client; a client that
cannot keep up loses its oldest frames instead of slowing the emulator. Encoding is skipped
while a camera has no client. Like a real IP camera it can ask for a login (``auth``: Basic,
or Digest with MD5 and ``qop=auth``), speak HTTPS (``ssl``) and send the stream with chunked
transfer encoding (``chunked``, parts split over chunks of ``chunk_size``). Tests get fault
hooks: :meth:`MjpegServer.pause` (connections
stay open, nothing is sent), :meth:`MjpegServer.stop` and :meth:`MjpegServer.restart`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import cv2

from controller.vision import Frame, GrayImage
from sim_hardware.line import PhysicalLine

log = logging.getLogger(__name__)

BOUNDARY = "frame"
REQUEST_TIMEOUT_S = 5.0
MAX_NONCES = 1024


@dataclass
class ServerStats:
    """What the server did, for tests and benchmarks."""

    frames_in: int = 0
    frames_encoded: int = 0
    encode_dropped: int = 0  # frames the encoder thread could not keep up with
    parts_sent: int = 0
    client_dropped: int = 0  # parts a slow client never got
    connections: int = 0
    unauthorized: int = 0  # requests answered 401


class _Client:
    """One connected viewer: a small queue of encoded parts, oldest dropped first."""

    def __init__(self, stats: ServerStats, size: int) -> None:
        self.parts: asyncio.Queue[bytes] = asyncio.Queue(size)
        self._stats = stats

    def offer(self, part: bytes) -> None:
        """Queue a part; an empty one tells the connection to end."""
        if self.parts.full():
            self.parts.get_nowait()
            self._stats.client_dropped += 1
        self.parts.put_nowait(part)


@dataclass(frozen=True)
class ServerAuth:
    """The login the emulated camera asks for."""

    scheme: Literal["basic", "digest"]
    user: str
    password: str = field(repr=False)
    realm: str = "parcel-sorter emulator"


_DIGEST_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _headers(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers (names lower-cased) of a request head."""
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, _, rest = request_line.partition(" ")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, rest.partition(" ")[0], headers


def encode_part(image: GrayImage, enc: int, captured_at: float, quality: int) -> bytes:
    """One multipart part: boundary, headers with the frame's stamps, the JPEG, CRLF."""
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    data = jpeg.tobytes()
    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
            f"X-Encoder-Count: {enc}\r\nX-Capture-Time: {captured_at!r}\r\n\r\n")
    return head.encode("ascii") + data + b"\r\n"


class MjpegServer:
    """Serves every camera of an emulated line as an MJPEG stream on loopback."""

    def __init__(self, line: PhysicalLine, host: str = "127.0.0.1", port: int = 0,
                 quality: int = 85, client_queue: int = 2, *, auth: ServerAuth | None = None,
                 ssl: ssl.SSLContext | None = None, chunked: bool = False,
                 chunk_size: int = 16 * 1024) -> None:
        self.line = line
        self.auth = auth
        self.ssl = ssl
        self.chunked = chunked
        self.chunk_size = chunk_size
        self._nonces: set[str] = set()
        self.host = host
        self.port = port
        self.quality = quality
        self.stats = ServerStats()
        self._client_queue = client_queue
        self._cameras = list(line.frame_sinks)
        self._clients: dict[str, set[_Client]] = {c: set() for c in self._cameras}
        self._pending: dict[str, asyncio.Queue[Frame]] = {}
        self._paused: set[str] = set()
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._encoders: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None

    # --- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> MjpegServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen (again, on the same port after a stop) and take the line's frames."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mjpeg-encode")
            for camera_id in self._cameras:
                self._pending[camera_id] = asyncio.Queue(2)
                self.line.frame_sinks[camera_id].append(self._on_frame)
                self._encoders.append(asyncio.create_task(
                    self._encode_loop(camera_id), name=f"mjpeg.{camera_id}.encode"))
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                      ssl=self.ssl)
            self.port = self._server.sockets[0].getsockname()[1]
            log.info("MJPEG server on %s", self.url("").removesuffix(".mjpg"))

    async def stop(self) -> None:
        """Stop listening and drop every connection (a camera going away)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._handlers.values():
            writer.transport.abort()
        for clients in self._clients.values():
            for client in clients:
                client.offer(b"")
        # Handlers end by themselves now; a cancelled one would make asyncio log an error.
        handlers = list(self._handlers)
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=REQUEST_TIMEOUT_S)
            for task in late:
                task.cancel()
        if server is not None:
            await server.wait_closed()

    async def restart(self) -> None:
        """Listen again on the same port after :meth:`stop`."""
        await self.start()

    async def close(self) -> None:
        """Stop, stop taking frames and join the encoder thread."""
        await self.stop()
        for task in self._encoders:
            task.cancel()
        for task in self._encoders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._encoders.clear()
        for camera_id in self._cameras:
            with contextlib.suppress(ValueError):
                self.line.frame_sinks[camera_id].remove(self._on_frame)
        executor, self._executor = self._executor, None
        if executor is not None:
            await self.line.clock.offload(None, executor.shutdown)

    # --- fault hooks -----------------------------------------------------------------------

    def pause(self, camera_id: str | None = None) -> None:
        """Keep connections open but send nothing (one camera, or all)."""
        self._paused.update(self._cameras if camera_id is None else [camera_id])

    def resume(self, camera_id: str | None = None) -> None:
        """Send frames again after :meth:`pause`."""
        if camera_id is None:
            self._paused.clear()
        else:
            self._paused.discard(camera_id)

    def url(self, camera_id: str) -> str:
        """The stream's address, ``http(s)://HOST:PORT/<camera_id>.mjpg``."""
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/{camera_id}.mjpg"

    def clients(self, camera_id: str) -> int:
        """How many viewers a camera has now."""
        return len(self._clients[camera_id])

    # --- frames ----------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        self.stats.frames_in += 1
        if frame.camera_id in self._paused or not self._clients[frame.camera_id]:
            return
        pending = self._pending[frame.camera_id]
        if pending.full():
            pending.get_nowait()
            self.stats.encode_dropped += 1
        pending.put_nowait(frame)

    async def _encode_loop(self, camera_id: str) -> None:
        pending = self._pending[camera_id]
        while True:
            frame = await pending.get()
            try:
                part = await self.line.clock.offload(self._executor, encode_part, frame.image,
                                                     frame.enc, frame.captured_at, self.quality)
            except (ValueError, cv2.error):
                log.exception("camera %s: cannot encode a frame", camera_id)
                continue
            self.stats.frames_encoded += 1
            if camera_id in self._paused:
                continue
            for client in self._clients[camera_id]:
                client.offer(part)

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        self.stats.connections += 1
        client: _Client | None = None
        camera_id = ""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, headers = _headers(head)
            path = target.partition("?")[0]
            camera_id = path.removeprefix("/").removesuffix(".mjpg")
            if method != "GET" or not path.endswith(".mjpg") or camera_id not in self._clients:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                return
            if not self._authorized(method, target, headers.get("authorization", "")):
                self.stats.unauthorized += 1
                writer.write(f"HTTP/1.1 401 Unauthorized\r\n{self._challenge()}\r\n"
                             "Content-Length: 0\r\nConnection: close\r\n\r\n".encode("ascii"))
                await writer.drain()
                return
            coding = "Transfer-Encoding: chunked\r\n" if self.chunked else ""
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; "
                         f"boundary={BOUNDARY}\r\nCache-Control: no-cache, no-store\r\n"
                         f"Pragma: no-cache\r\n{coding}Connection: close\r\n\r\n"
                         .encode("ascii"))
            await writer.drain()
            client = _Client(self.stats, self._client_queue)
            self._clients[camera_id].add(client)
            while True:
                part = await client.parts.get()
                if not part:
                    if self.chunked:
                        writer.write(b"0\r\n\r\n")
                    return
                self._write(writer, part)
                await writer.drain()
                self.stats.parts_sent += 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, ssl.SSLError) as exc:
            log.debug("MJPEG client of %r gone: %r", camera_id, exc)
        finally:
            if client is not None:
                self._clients[camera_id].discard(client)
            self._handlers.pop(task, None)
            writer.transport.abort()

    def _write(self, writer: asyncio.StreamWriter, part: bytes) -> None:
        if not self.chunked:
            writer.write(part)
            return
        view = memoryview(part)
        for at in range(0, len(part), self.chunk_size):
            chunk = view[at:at + self.chunk_size]
            writer.write(b"%x\r\n" % len(chunk))
            writer.write(chunk)
            writer.write(b"\r\n")

    # --- login -----------------------------------------------------------------------------

    def _challenge(self) -> str:
        auth = self.auth
        assert auth is not None
        if auth.scheme == "basic":
            return f'WWW-Authenticate: Basic realm="{auth.realm}"'
        nonce = secrets.token_hex(16)
        if len(self._nonces) >= MAX_NONCES:
            self._nonces.clear()
        self._nonces.add(nonce)
        return (f'WWW-Authenticate: Digest realm="{auth.realm}", qop="auth", '
                f'algorithm=MD5, nonce="{nonce}"')

    def _authorized(self, method: str, target: str, authorization: str) -> bool:
        auth = self.auth
        if auth is None:
            return True
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != auth.scheme:
            return False
        if auth.scheme == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, f"{auth.user}:{auth.password}".encode())
        params = {m[1].lower(): m[2] or m[3] for m in _DIGEST_PARAM.finditer(value)}
        if params.get("username") != auth.user or params.get("realm") != auth.realm \
                or params.get("nonce") not in self._nonces or params.get("uri") != target \
                or params.get("qop") != "auth":
            return False
        ha1 = _md5(f"{auth.user}:{auth.realm}:{auth.password}")
        ha2 = _md5(f"{method}:{target}")
        expected = _md5(f"{ha1}:{params['nonce']}:{params.get('nc', '')}:"
                        f"{params.get('cnonce', '')}:auth:{ha2}")
        return hmac.compare_digest(expected, params.get("response", ""))
