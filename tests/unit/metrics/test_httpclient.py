"""The scrape client: its parser on bytes split anywhere, and its connections on real sockets."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegate.controller.main import event_loop_factory
from phasegate.metrics.httpclient import ConnectionClosed, HttpClient, HttpError, ResponseParser


def encode(body: bytes, framing: str, chunks: list[int], extra_headers: str = "") -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n" + extra_headers
    if framing == "length":
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if framing == "close":
        return (head + "Connection: close\r\n\r\n").encode() + body
    out, i = bytearray((head + "Transfer-Encoding: chunked\r\n\r\n").encode()), 0
    for size in chunks:
        piece = body[i:i + size]
        if not piece:
            break
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
        i += len(piece)
    if i < len(body):
        out += f"{len(body) - i:X}\r\n".encode() + body[i:] + b"\r\n"
    return bytes(out + b"0\r\nX-Trailer: t\r\n\r\n")


def feed_split(data: bytes, cuts: list[int], *, max_body: int = 1 << 20, eof: bool = False):
    parser = ResponseParser(max_body=max_body)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    response = None
    for a, b in zip(points, points[1:], strict=False):
        got = parser.feed(data[a:b])
        response = response or got
    if eof:
        response = parser.feed_eof()
    return response


@settings(max_examples=400, deadline=None)
@given(
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "close"]),
    chunks=st.lists(st.integers(1, 700), max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_any_framing_split_anywhere_reads_the_same_body(body, framing, chunks, cuts):
    data = encode(body, framing, chunks)
    response = feed_split(data, cuts, eof=framing == "close")
    assert response is not None
    assert response.status == 200 and response.body == body
    assert response.keep_alive is (framing != "close")
    assert response.charset == "utf-8"


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=2000),
    framing=st.sampled_from(["length", "chunked", "close"]),
    chunks=st.lists(st.integers(1, 300), max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_a_body_over_the_bound_is_refused_in_every_framing(body, framing, chunks, cuts):
    with pytest.raises(HttpError, match="exceeds"):
        feed_split(encode(body, framing, chunks), cuts, max_body=len(body) - 1, eof=framing == "close")


def test_a_body_at_the_bound_is_read():
    assert feed_split(encode(b"x" * 10, "chunked", [3]), [], max_body=10).body == b"x" * 10


def test_an_interim_response_is_skipped():
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + encode(b"abc", "length", [])
    assert feed_split(data, [5, 30]).body == b"abc"


@pytest.mark.parametrize(
    "head, keep_alive",
    [
        ("HTTP/1.1 200 OK\r\nContent-Length: 0", True),
        ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0", False),
        ("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0", False),
        ("HTTP/1.0 200 OK\r\nContent-Length: 0", False),
        ("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0", True),
        ("HTTP/1.1 204 No Content", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(head, keep_alive):
    response = ResponseParser(max_body=10).feed((head + "\r\n\r\n").encode())
    assert response is not None and response.keep_alive is keep_alive


def test_bytes_after_the_response_end_keep_alive():
    response = ResponseParser(max_body=10).feed(encode(b"ab", "length", []) + b"HTTP/1.1 200")
    assert response is not None and response.body == b"ab" and response.keep_alive is False


def test_repeated_headers_are_joined_and_names_lower_cased():
    response = ResponseParser(max_body=10).feed(b"HTTP/1.1 500 Boom\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n")
    assert response is not None and response.status == 500 and response.reason == "Boom"
    assert response.headers["x-a"] == "1, 2"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx", "unsupported Content-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX", "not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000, "response head exceeds"),
    ],
)
def test_what_is_not_readable_http_says_what(data, message):
    with pytest.raises(HttpError, match=message):
        ResponseParser(max_body=1 << 20).feed(data)


def test_eof_before_the_end_is_a_closed_connection():
    parser = ResponseParser(max_body=100)
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") is None
    with pytest.raises(ConnectionClosed) as info:
        parser.feed_eof()
    assert info.value.before_response is False
    with pytest.raises(ConnectionClosed) as info:
        ResponseParser(max_body=100).feed_eof()
    assert info.value.before_response is True


# The client on real sockets: a server written on asyncio streams, so that what it does
# (close an idle connection, stop mid-body, answer until close) is exactly what the test says.
# Each runs on the standard event loop and on uvloop (PHASEGATE_EVENT_LOOP=uvloop:
# its transports are not asyncio's classes, and an isinstance check once failed every scrape).


def pytest_generate_tests(metafunc):
    if "event_loop_kind" in metafunc.fixturenames:
        metafunc.parametrize("event_loop_kind", ["asyncio", "uvloop"], indirect=True)


@pytest.fixture
def event_loop_kind(request, monkeypatch):
    if request.param == "uvloop":
        factory = event_loop_factory("uvloop")

        def run(main, **_):
            with asyncio.Runner(loop_factory=factory) as runner:
                return runner.run(main)

        monkeypatch.setattr(asyncio, "run", run)
    return request.param

async def serve(answer):
    """A server calling answer(request_number, writer) per request; returns (server, port, seen)."""
    seen: list[tuple[int, bytes]] = []
    connections = [0]

    async def on_connect(reader, writer):
        connections[0] += 1
        conn = connections[0]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append((conn, head))
                if not await answer(len(seen), writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def ok(body: bytes = b"m 1\n"):
    async def answer(n, writer):
        writer.write(encode(body, "length", []))
        return True
    return answer


@pytest.mark.usefixtures("event_loop_kind")
def test_a_request_says_what_it_asks_for():
    async def go():
        server, port, seen = await serve(ok())
        async with server:
            client = HttpClient(user_agent="phasegate-test")
            response = await client.get("127.0.0.1", port, "/metrics", {"Accept": "text/plain"}, timeout=2)
            await client.close()
        return response, seen

    response, seen = asyncio.run(go())
    assert response.body == b"m 1\n"
    head = seen[0][1].decode()
    assert head.startswith("GET /metrics HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{head.split(':')[2].split(chr(13))[0]}\r\n" in head
    assert "\r\nUser-Agent: phasegate-test\r\n" in head and "\r\nAccept: text/plain\r\n" in head
    assert "accept-encoding" not in head.lower()


@pytest.mark.usefixtures("event_loop_kind")
def test_an_idle_connection_closed_by_the_server_is_replaced_without_a_failed_read():
    async def answer(n, writer):
        writer.write(encode(b"m %d\n" % n, "length", []))
        return n != 1  # the server closes after its first answer, as an idle timeout would

    async def go():
        server, port, seen = await serve(answer)
        async with server:
            client = HttpClient()
            first = await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
            second = await client.get("127.0.0.1", port, "/metrics", timeout=2)
            third = await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await client.close()
        return first, second, third, client.connections_opened, seen

    first, second, third, opened, seen = asyncio.run(go())
    assert (first.body, second.body, third.body) == (b"m 1\n", b"m 2\n", b"m 3\n")
    assert opened == 2 and [c for c, _ in seen] == [1, 2, 2]


@pytest.mark.usefixtures("event_loop_kind")
def test_a_close_in_the_middle_of_a_body_is_a_failed_read_not_retried():
    async def answer(n, writer):
        if n == 1:
            writer.write(encode(b"m 1\n", "length", []))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    async def go():
        server, port, seen = await serve(answer)
        async with server:
            client = HttpClient()
            await client.get("127.0.0.1", port, "/metrics", timeout=2)
            with pytest.raises(ConnectionClosed) as info:  # on the kept connection
                await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await client.close()
        return info.value, seen

    exc, seen = asyncio.run(go())
    assert exc.before_response is False
    assert len(seen) == 2, "a response that had begun is a failed read, never sent again"


@pytest.mark.usefixtures("event_loop_kind")
def test_a_body_delimited_by_close_is_read_and_the_connection_not_kept():
    async def answer(n, writer):
        writer.write(encode(b"m 1\nm 2\n", "close", []))
        return False

    async def go():
        server, port, _ = await serve(answer)
        async with server:
            client = HttpClient()
            a = await client.get("127.0.0.1", port, "/metrics", timeout=2)
            b = await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await client.close()
        return a, b, client.connections_opened

    a, b, opened = asyncio.run(go())
    assert a.body == b.body == b"m 1\nm 2\n" and opened == 2


@pytest.mark.usefixtures("event_loop_kind")
def test_a_timeout_mid_answer_closes_the_connection():
    async def answer(n, writer):
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            await writer.drain()
            await asyncio.sleep(1)  # the rest never comes in time
            return False
        writer.write(encode(b"fresh", "length", []))
        return True

    async def go():
        server, port, seen = await serve(answer)
        async with server:
            client = HttpClient()
            with pytest.raises(TimeoutError):
                await client.get("127.0.0.1", port, "/metrics", timeout=0.2)
            again = await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await client.close()
        return again, client.connections_opened

    again, opened = asyncio.run(go())
    assert again.body == b"fresh" and opened == 2, "the half-read connection is never reused"


@pytest.mark.usefixtures("event_loop_kind")
def test_idle_connections_past_their_timeout_are_not_reused():
    async def go():
        server, port, seen = await serve(ok())
        async with server:
            client = HttpClient(idle_timeout=0.05)
            await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await asyncio.sleep(0.1)
            await client.get("127.0.0.1", port, "/metrics", timeout=2)
            await client.close()
        return client.connections_opened

    assert asyncio.run(go()) == 2


@pytest.mark.parametrize("host, headers, path", [
    ("127.0.0.1", {"X-A": "1\r\nEvil: 1"}, "/m"), ("127.0.0.1", {"X\r\nA": "1"}, "/m"), ("127.0.0.1", {}, "/m x"),
    ("", {}, "/m"), ("[]", {}, "/m"), ("1.2.3.4/x", {}, "/m"),
])
@pytest.mark.usefixtures("event_loop_kind")
def test_a_host_header_or_path_that_would_split_or_misdirect_the_request_is_refused(host, headers, path):
    with pytest.raises(ValueError, match="invalid request"):
        asyncio.run(HttpClient().get(host, 1, path, headers, timeout=1))


@pytest.mark.usefixtures("event_loop_kind")
def test_a_failed_exchange_closes_its_socket():
    """A connection given up on (here, a timeout mid-answer) is closed at once, not left open
    for the peer or the garbage collector to end: thousands of pods, every interval."""
    async def go():
        closed = asyncio.Event()

        async def on_connect(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            await writer.drain()
            if await reader.read() == b"":  # the client's end closed
                closed.set()
            writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        async with server:
            client = HttpClient()
            with pytest.raises(TimeoutError):
                await client.get("127.0.0.1", server.sockets[0].getsockname()[1], "/metrics", timeout=0.2)
            await asyncio.wait_for(closed.wait(), 2)

    asyncio.run(go())


@pytest.mark.usefixtures("event_loop_kind")
def test_an_ipv6_pod_is_dialled_and_named_in_brackets():
    seen: list[bytes] = []

    async def go():
        async def on_connect(reader, writer):
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(encode(b"m 1\n", "length", []))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(on_connect, "::1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            client = HttpClient()
            response = await client.get("::1", port, "/metrics", timeout=2)
            await client.close()
        return response, port

    response, port = asyncio.run(go())
    assert response.body == b"m 1\n"
    assert f"\r\nHost: [::1]:{port}\r\n".encode() in seen[0]
