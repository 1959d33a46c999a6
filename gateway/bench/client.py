"""The command benchmark's HTTP client: HTTP/1.1 with keep-alive on asyncio's streams.

The benchmark shares the machine with what it measures, so its client's CPU counts against
the ingest it compares (issue 17: ingest with commands within 10 % of ingest without). An
app's client runs on a phone, not on the gateway's machine; httpx's ``AsyncClient`` cost
the benchmark about 2 ms of CPU per request here, more than the gateway's broker, ingest
and simulated units together spend on a command (decision 0058). This client sends the
same requests (method, path, ``Host``, the headers given, a JSON body with its
``Content-Length``) over the same kind of keep-alive connections, and reads the answer's
status line, headers and body (``Content-Length`` or chunked), without the rest httpx does
per request (its request and response models, header normalisation, events, decoders).

Not a general client: plain ``http://`` only, no redirects, no compression (the API sends
none), no proxies.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import orjson

__all__ = ["Connection", "KeepAliveClient", "Response"]


class ConnectionDropped(ConnectionError):
    """The server closed the connection before a whole answer came (a keep-alive
    connection it closed just as it was reused): the request may be sent again."""


class Response:
    __slots__ = ("body", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.body = status_code, headers, body

    def json(self) -> object:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class KeepAliveClient:
    """``async with KeepAliveClient(base, headers) as c: await c.post_json(path, body)``:
    idle connections are reused (last in, first out); a request finds one or opens one.

    ``keepalive_expiry``: a connection idle this long is closed, not reused: uvicorn (the
    API's server) closes one idle for 5 s, and one reused just as the server closes it
    fails the request (sent again, but late)."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        timeout: float = 300,
        keepalive_expiry: float = 4.0,
        max_connections: int = 200,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"{base_url}: only http://host:port is supported")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout, self.keepalive_expiry = timeout, keepalive_expiry
        fixed = {"Host": f"{self.host}:{self.port}", "Accept": "*/*", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[Connection] = []
        #: at most this many requests in flight, each on its own connection (httpx's
        #: limit as the benchmark set it); the others wait for one to be free
        self._slots = asyncio.Semaphore(max_connections)

    async def __aenter__(self) -> KeepAliveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def post_json(self, path: str, body: object, headers: dict[str, str]) -> Response:
        """POST ``body`` as JSON; :class:`ConnectionDropped` if a reused connection was
        closed under the request (the caller decides whether to send it again)."""
        data = orjson.dumps(body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\n{self._fixed}{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        async with self._slots:
            conn = await self._connection()
            try:
                async with asyncio.timeout(self.timeout):
                    conn.writer.write(head.encode("latin-1") + data)
                    response, keep = await _read_response(conn.reader)
            except BaseException:
                conn.close()
                raise
            if keep:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
        return response

    async def _connection(self) -> Connection:
        """The idle connection used last, unless the server closed it meanwhile or may be
        about to (its keep-alive timeout), else a new one."""
        oldest = time.monotonic() - self.keepalive_expiry
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_since > oldest and not (conn.reader.at_eof() or conn.writer.is_closing()):
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader, writer)


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    """The answer on ``reader`` and whether the connection may be reused."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ConnectionDropped(f"connection closed before an answer: {exc!r}") from None
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    try:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:  # the body ends with the connection
            return Response(int(status), headers, await reader.read()), False
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ConnectionDropped(f"connection closed within an answer: {exc!r}") from None
    connection = headers.get("connection", "").lower()
    keep = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return Response(int(status), headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
