"""Small asyncio HTTP/1.1 server helpers shared by the digital twin and the admission proxy.

Standard library only. They cover what an OpenAI-compatible server on loopback needs: requests with a
``Content-Length`` body (no chunked request bodies), keep-alive, plain responses, chunked (SSE) responses,
and vLLM's error object.

Public names: HttpError, HttpListener, Request, end_chunks, error_body, error_object, head, json_object,
read_request, respond, send, serve_connection, sse_event, write_chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from greenrl.errors import InputError

__all__ = [
    "HttpError",
    "HttpListener",
    "Request",
    "end_chunks",
    "error_body",
    "error_object",
    "head",
    "json_object",
    "read_request",
    "respond",
    "send",
    "serve_connection",
    "sse_event",
    "write_chunk",
]

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048
"""Pending connections the listener queues, as uvicorn (vLLM's server) does."""

MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body accepted (bytes)."""

MAX_HEADERS = 100
"""Most request headers accepted."""


class HttpError(Exception):
    """An error answered with ``status`` and vLLM's error object (``error_body``).

    Args:
        status: HTTP status code.
        message: the error text sent to the client.
        param: the request field at fault (vLLM's ``param``), or None.
    """

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param

    def body(self) -> bytes:
        """The error as vLLM's error object (``error_body``)."""
        return error_body(self.status, str(self), self.param)


@dataclass(slots=True)
class Request:
    """One HTTP request.

    Attributes:
        method: upper-case method (``GET``, ``POST``).
        path: the target without its query string.
        headers: header names lower-cased.
        body: the raw body (``Content-Length`` bytes).
        keep_alive: whether the connection stays open after the answer.
        query: the query string without ``?`` (``""`` if none).
        client_gone: ``client_gone()`` tells whether the client has closed its side of the connection
            (set by ``serve_connection``; None: unknown).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    query: str = ""
    client_gone: Callable[[], bool] | None = None


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request with a ``Content-Length`` body; None when the client closed the connection.

    Raises:
        HttpError: on a malformed or oversized request (400, 413, 431) or a chunked body (501).
    """
    try:
        line = await reader.readline()
    except ValueError as err:  # longer than the stream limit
        raise HttpError(431, "request line too long") from err
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    while True:
        try:
            raw = await reader.readline()
        except ValueError as err:
            raise HttpError(431, "header line too long") from err
        if not raw:
            return None
        if raw in (b"\r\n", b"\n"):
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise HttpError(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, "too many headers")
    if "transfer-encoding" in headers:
        raise HttpError(501, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as err:
        raise HttpError(400, "bad Content-Length") from err
    if not 0 <= length <= MAX_BODY_BYTES:
        raise HttpError(413, f"body must be 0 to {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    conn = headers.get("connection", "").lower()
    keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
    path, _, query = target.partition("?")
    return Request(method.upper(), path, headers, body, keep_alive, query)


def head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """The status line and headers of a response, ending with the blank line."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str, keep_alive: bool) -> None:
    """Send a whole response with a ``Content-Length`` body."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "keep-alive" if keep_alive else "close"),
    ]
    await send(writer, head(status, headers) + body)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write ``data`` and wait for the buffer to drain.

    Raises:
        ConnectionResetError: the client is gone. asyncio raises a ``ConnectionError`` from ``drain``; uvloop
            (which some embedding processes install as the loop policy) raises ``RuntimeError`` from
            ``write`` on a closed transport: both become this one error.
    """
    if writer.is_closing():
        raise ConnectionResetError("the client closed the connection")
    try:
        writer.write(data)
    except RuntimeError as err:  # uvloop: "unable to perform operation on <TCPTransport closed=True ...>"
        raise ConnectionResetError(f"the client closed the connection ({err})") from err
    await writer.drain()


async def write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send one chunk of a ``Transfer-Encoding: chunked`` body (empty data sends nothing)."""
    if data:
        await send(writer, f"{len(data):x}\r\n".encode() + data + b"\r\n")


def sse_event(payload: Any) -> bytes:
    """One server-sent event ``data: <payload>``: a string as is (``[DONE]``), anything else as JSON.

    Example:
        >>> sse_event({"a": 1}).decode().strip(), sse_event("[DONE]").decode().strip()
        ('data: {"a": 1}', 'data: [DONE]')
    """
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


async def end_chunks(writer: asyncio.StreamWriter) -> None:
    """End a chunked body."""
    await send(writer, b"0\r\n\r\n")


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


def error_object(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error object of vLLM (``ErrorResponse``): ``{"error": {"message", "type", "param", "code"}}``.

    ``code`` is the HTTP status, ``type`` vLLM's name for it (``BadRequestError``, ``NotFoundError``, ...;
    another 4xx is a ``BadRequestError``, another 5xx the status phrase). The one error format of the twin
    and the admission proxy, answered as a body and sent as an SSE event when a stream fails.

    Example:
        >>> error_object(404, "no such model", "model")["error"]
        {'message': 'no such model', 'type': 'NotFoundError', 'param': 'model', 'code': 404}
    """
    kind = _ERROR_TYPES.get(status) or ("BadRequestError" if status < 500 else HTTPStatus(status).phrase)
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """``error_object`` as a JSON body.

    Example:
        >>> json.loads(error_body(400, "bad"))["error"]["type"]
        'BadRequestError'
    """
    return json.dumps(error_object(status, message, param)).encode()


def json_object(raw: bytes, where: str) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (an empty body is ``{}``).

    Raises:
        InputError: the body is not JSON or not an object.
    """
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(where, "body", f"not valid JSON ({err})", "send a JSON object") from None
    if not isinstance(body, dict):
        raise InputError(where, "body", "expected a JSON object", "send {...}")
    return body


Dispatch = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]
"""Serves one request; returns whether the connection stays open."""


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dispatch: Dispatch) -> None:
    """Serve the requests of one connection until the client closes it or ``dispatch`` returns False.

    A malformed request gets its error status and closes the connection; a dropped connection ends
    quietly; any other exception is logged. The writer is always closed.
    """
    try:
        while True:
            try:
                req = await read_request(reader)
            except HttpError as err:
                await respond(writer, err.status, err.body(), "application/json", False)
                break
            if req is None:
                break
            req.client_gone = lambda: reader.at_eof() or writer.is_closing()
            if not await dispatch(req, writer):
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception:
        logger.exception("error while serving a connection")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class HttpListener:
    """Listens on ``host:port`` and serves every connection with ``serve_connection``; ``close`` cuts them.

    Args:
        dispatch: serves one request (see ``Dispatch``).
        host, port: where to listen (port 0: any free one; ``port`` holds the bound one after ``start``).
    """

    def __init__(self, dispatch: Dispatch, host: str, port: int) -> None:
        self.dispatch = dispatch
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        """Listen (on the running loop); returns the bound port."""
        # uvicorn's (vLLM's) backlog: asyncio's default of 100 drops connects under a 512-stream burst
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=256 * 1024, backlog=LISTEN_BACKLOG
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and end the open connections (their requests are cut)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await serve_connection(reader, writer, self.dispatch)
        except asyncio.CancelledError:
            pass  # close(): end the connection task quietly (its writer is already closed)
        finally:
            if task is not None:
                self._conns.discard(task)
