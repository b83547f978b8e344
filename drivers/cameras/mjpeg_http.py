"""HTTP framing for the MJPEG camera driver (:mod:`drivers.cameras.mjpeg`).

The response body behind a buffer of our own (every read has a size limit), part headers and
the multipart boundary parsed and validated, the TLS context aiohttp gets, the login scheme a
401 asks for, and a one-line reason for each way a connection fails.
"""

from __future__ import annotations

import logging
import ssl

import aiohttp

from controller.errors import DriverUnavailable, ProtocolError

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_HEADER_LINES = 64
MAX_BOUNDARY_LINE = 1024


class Buffered:
    """The response body with our own buffer, so that every read has our own size limit.

    aiohttp has already taken off the transfer coding (chunked or not) and TLS.
    """

    def __init__(self, body: aiohttp.StreamReader) -> None:
        self._body = body
        self._buf = bytearray()

    async def _fill(self) -> None:
        chunk = await self._body.readany()
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
                return self._take(end)
            if len(self._buf) > limit + len(sep):
                break
            start = max(0, len(self._buf) - len(sep) + 1)
            await self._fill()
        raise ProtocolError(f"{what} longer than {limit} bytes")

    async def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        while len(self._buf) < n:
            await self._fill()
        return self._take(n)

    def _take(self, n: int) -> bytes:
        """The first ``n`` bytes, copied once (a bytearray slice would copy them twice)."""
        with memoryview(self._buf) as view:
            data = bytes(view[:n])
        del self._buf[:n]  # cheap from the front: CPython moves the start, not the data
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front."""
        self._buf[:0] = data


def tls_context(device: str, scheme: str, ca_file: str | None,
                verify: bool) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` gets: a verifying context (the CA file's, else the system's),
    False for a camera whose certificate is not checked, True for plain HTTP."""
    if scheme != "https":
        return True
    if not verify:
        log.warning("%s: TLS certificate verification is off (tls_verify = false)", device)
        return False
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DriverUnavailable(device, f"cannot load ca_file {ca_file}: {exc}") from None


def parse_headers(lines: list[bytes]) -> dict[str, str]:
    """A part's header lines by lower-cased name; ProtocolError on a malformed one."""
    headers: dict[str, str] = {}
    for raw in lines:
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise ProtocolError(f"malformed header line {raw[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def multipart_boundary(content_type: str) -> bytes:
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


def describe_failure(exc: BaseException, read_timeout_s: float) -> str:
    """Why a connection failed, in one line for the camera's status."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS failed: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, TimeoutError):
        return f"no data for {read_timeout_s:.1f} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad HTTP response: {' '.join(exc.message.split())[:160]}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"broken response body: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError | aiohttp.ClientError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def login_challenge(response: aiohttp.ClientResponse) -> str:
    """The scheme the server asks for in ``WWW-Authenticate``: ``basic``, ``digest``, ..."""
    return response.headers.get("WWW-Authenticate", "").strip().partition(" ")[0].lower()
