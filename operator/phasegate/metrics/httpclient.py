"""A small HTTP/1.1 GET client for scrapes: plain HTTP, keep-alive connections per address.

Why not aiohttp here: a scrape is one GET of a few kilobytes from a pod IP, thousands of
times an interval. aiohttp builds a request object, a response object, a stream reader, a
timer context and a header multidict per read; at a thousand strategies that machinery was
about a tenth of the operator's CPU. This client does only what a scrape needs: write the
request, parse the answer as it arrives (Content-Length, chunked, or until close), keep the
connection for the next read of the same pod. The parser is a pure object (ResponseParser),
tested on its own with the bytes split anywhere.

Not here, on purpose: TLS, redirects, proxies, compression (no Accept-Encoding is sent, so a
conforming server answers uncompressed), pipelining. The Prometheus source, which needs
none of the scale and some of those, keeps aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Optional, cast

MAX_HEAD_BYTES = 64 * 1024


class HttpError(Exception):
    """The peer's answer is not HTTP/1.x this client can read (or exceeds its bounds)."""


class ConnectionClosed(ConnectionError):
    """The connection closed before the response was complete."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        # Nothing of a response arrived: on a reused keep-alive connection that is the peer
        # having closed it while idle, and the GET is sent again on a new one.
        self.before_response = before_response


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    keep_alive: bool

    @property
    def charset(self) -> str:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
        return "utf-8"


class ResponseParser:
    """One response, fed in pieces as they arrive; `feed` returns it once it is complete.

    Bytes after the end of the response are not expected (no pipelining): they make the
    response not keep-alive, so the connection is closed rather than read out of step.
    """

    def __init__(self, *, max_body: int) -> None:
        self._buf = bytearray()
        self._max_body = max_body
        self._status: Optional[tuple[int, str, str]] = None  # (status, reason, version)
        self._headers: dict[str, str] = {}
        self._mode = ""  # "length", "chunked", "close", "none"
        self._remaining = 0  # of a fixed body, or of the current chunk's data
        self._chunk_state = "size"  # "size", "data", "data-end", "trailer"
        self._body = bytearray()
        self._done: Optional[Response] = None
        self.started = False  # any byte of a response received

    def feed(self, data: bytes) -> Optional[Response]:
        if self._done is not None:
            if data:
                self._done = replace(self._done, keep_alive=False)
            return self._done
        if data:
            self.started = True
            self._buf += data
        return self._advance()

    def feed_eof(self) -> Response:
        """The peer closed: the response as complete as it is, or an error."""
        if self._done is not None:
            return replace(self._done, keep_alive=False)
        if self._status is not None and self._mode == "close":
            self._take_all()
            return self._finish(keep_alive=False)
        raise ConnectionClosed(
            "connection closed before the response was complete" if self.started else "connection closed with no response",
            before_response=not self.started,
        )

    def _advance(self) -> Optional[Response]:
        while self._status is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise HttpError(f"response head exceeds {MAX_HEAD_BYTES} bytes")
                return None
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            status = self._read_head(head)
            if status is not None and 100 <= status[0] < 200:
                self._headers = {}  # an interim response (100 Continue): the real one follows
                continue
            self._status = status
            self._choose_framing()
        if self._mode == "length":
            if self._take_remaining() == 0:
                return self._finish(keep_alive=self._keep_alive() and not self._buf)
            return None
        if self._mode == "chunked":
            return self._advance_chunked()
        if self._mode == "close":
            self._take_all()
            return None
        return self._finish(keep_alive=self._keep_alive() and not self._buf)

    def _read_head(self, head: bytes) -> tuple[int, str, str]:
        lines = head.decode("latin-1").split("\r\n")  # latin-1 decodes any byte
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HttpError(f"malformed response header line: {line[:100]!r}")
            key, value = name.lower(), value.strip()
            if key in headers:
                if key == "content-length" and headers[key] != value:
                    raise HttpError("conflicting Content-Length headers")
                if key != "content-length":
                    headers[key] = f"{headers[key]}, {value}"
            else:
                headers[key] = value
        self._headers = headers
        return int(parts[1]), parts[2] if len(parts) > 2 else "", parts[0]

    def _choose_framing(self) -> None:
        assert self._status is not None
        status = self._status[0]
        encoding = self._headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise HttpError(f"unsupported Content-Encoding {encoding!r} (none was asked for)")
        if status in (204, 304):
            self._mode = "none"
            return
        transfer = [t.strip().lower() for t in self._headers.get("transfer-encoding", "").split(",") if t.strip()]
        if transfer:
            if transfer[-1] != "chunked" or len(transfer) > 1:
                raise HttpError(f"unsupported Transfer-Encoding {self._headers['transfer-encoding']!r}")
            self._mode = "chunked"
            return
        length = self._headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HttpError(f"invalid Content-Length {length!r}")
            self._remaining = int(length)
            if self._remaining > self._max_body:
                raise HttpError(f"body of {self._remaining} bytes exceeds {self._max_body} bytes")
            self._mode = "length"
            return
        self._mode = "close"

    def _advance_chunked(self) -> Optional[Response]:
        while True:
            if self._chunk_state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        raise HttpError("chunk size line too long")
                    return None
                line = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                del self._buf[: end + 2]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise HttpError(f"invalid chunk size {line[:20]!r}") from None
                if size < 0:
                    raise HttpError(f"invalid chunk size {line[:20]!r}")
                if size == 0:
                    self._chunk_state = "trailer"
                    continue
                self._remaining = size
                if len(self._body) + size > self._max_body:
                    raise HttpError(f"body exceeds {self._max_body} bytes")
                self._chunk_state = "data"
            elif self._chunk_state == "data":
                if self._take_remaining():
                    return None
                self._chunk_state = "data-end"
            elif self._chunk_state == "data-end":
                if len(self._buf) < 2:
                    return None
                if self._buf[:2] != b"\r\n":
                    raise HttpError("chunk data not followed by CRLF")
                del self._buf[:2]
                self._chunk_state = "size"
            else:  # trailer fields, ended by an empty line
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise HttpError("chunked trailer too long")
                    return None
                del self._buf[: end + 2]
                if end == 0:
                    return self._finish(keep_alive=self._keep_alive() and not self._buf)

    def _take_remaining(self) -> int:
        """Moves what is buffered of the body's (or chunk's) remaining bytes into the body;
        how many are still to come."""
        take = min(self._remaining, len(self._buf))
        if take:
            self._body += self._buf[:take]
            del self._buf[:take]
            self._remaining -= take
        return self._remaining

    def _take_all(self) -> None:
        """A body delimited by the close: everything buffered is body, within the bound."""
        self._body += self._buf
        self._buf.clear()
        if len(self._body) > self._max_body:
            raise HttpError(f"body exceeds {self._max_body} bytes")

    def _keep_alive(self) -> bool:
        assert self._status is not None
        tokens = {t.strip().lower() for t in self._headers.get("connection", "").split(",")}
        if self._status[2] == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def _finish(self, *, keep_alive: bool) -> Response:
        assert self._status is not None
        status, reason, _ = self._status
        self._done = Response(status, reason, self._headers, bytes(self._body), keep_alive)
        return self._done


class _Connection(asyncio.Protocol):
    def __init__(self, max_body: int) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.idle_since = 0.0
        self._max_body = max_body
        self._parser: Optional[ResponseParser] = None
        self._waiter: Optional[asyncio.Future[Response]] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever its class: uvloop's TCPTransport does not subclass
        # asyncio.Transport (an isinstance check here failed every scrape under uvloop).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            response = self._parser.feed(data)
        except Exception as exc:
            self._fail(exc)
            return
        if response is not None:
            self._waiter.set_result(response)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._end(exc)

    def _end(self, exc: Optional[Exception] = None) -> None:
        self.closed = True
        if self._parser is None or self._waiter is None or self._waiter.done():
            return
        try:
            self._waiter.set_result(self._parser.feed_eof())
        except Exception as err:
            if exc is not None and isinstance(err, ConnectionClosed):
                err = ConnectionClosed(f"{err}: {exc}", before_response=err.before_response)
            self._fail(err)

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes) -> Response:
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise ConnectionClosed("connection already closed", before_response=True)
        self._parser = ResponseParser(max_body=self._max_body)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self._waiter
        finally:
            self._parser = None
            self._waiter = None


class HttpClient:
    """GETs over keep-alive connections, kept per (host, port) while idle for `idle_timeout`.

    Bound to the event loop it is first used on (its connections are), like an aiohttp
    session. `close()` closes every idle connection.
    """

    def __init__(self, *, idle_timeout: float = 60.0, max_idle_per_host: int = 4,
                 max_body: int = 8 * 1024 * 1024, user_agent: str = "phasegate") -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle_per_host
        self._max_body = max_body
        self._user_agent = user_agent
        self._swept = time.monotonic()
        self.connections_opened = 0  # for tests and benchmarks: how often keep-alive missed

    async def get(self, host: str, port: int, path: str, headers: Optional[dict[str, str]] = None, *,
                  timeout: float) -> Response:
        request = self._request(host, port, path, headers or {})
        async with asyncio.timeout(timeout):
            key = (host, port)
            conn = self._take(key)
            if conn is not None:
                try:
                    response = await self._exchange(conn, request)
                except ConnectionClosed as exc:
                    if not exc.before_response:
                        raise
                    # The peer closed the idle connection as we reused it: a GET is safe to send again.
                    conn = None
            if conn is None:
                conn = await self._connect(host, port)
                response = await self._exchange(conn, request)
            self._give_back(key, conn, response)
            return response

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def _exchange(self, conn: _Connection, request: bytes) -> Response:
        try:
            return await conn.request(request)
        except BaseException:
            conn.close()  # cancelled or failed mid-response: never reused out of step
            raise

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self._max_body), host, port)
        self.connections_opened += 1
        return conn

    def _take(self, key: tuple[str, int]) -> Optional[_Connection]:
        now = time.monotonic()
        if now - self._swept > self._idle_timeout:
            self._sweep(now)
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    def _give_back(self, key: tuple[str, int], conn: _Connection, response: Response) -> None:
        if not response.keep_alive or conn.closed:
            conn.close()
            return
        conns = self._idle.setdefault(key, [])
        if len(conns) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def _sweep(self, now: float) -> None:
        """Connections to pods that went away are closed within two idle timeouts."""
        self._swept = now
        for key in list(self._idle):
            keep = []
            for conn in self._idle[key]:
                if conn.closed or now - conn.idle_since >= self._idle_timeout:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def _request(self, host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
        if not host or any(c in host for c in "\r\n /[]"):
            raise ValueError(f"invalid request host {host!r}")  # never a default address in its place
        authority = f"[{host}]" if ":" in host else host  # an IPv6 address
        lines = [f"GET {path} HTTP/1.1", f"Host: {authority}:{port}", f"User-Agent: {self._user_agent}"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n") or not name or ":" in name:
                raise ValueError(f"invalid request header {name!r}")
            lines.append(f"{name}: {value}")
        if any(c in path for c in "\r\n "):
            raise ValueError(f"invalid request path {path!r}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
