"""The admission proxy's forwarding: send a request upstream and relay the answer to the client.

``Upstream`` holds the HTTP client of one OpenAI-compatible server. ``passthrough`` relays any request
as a whole (``/v1/models``, ``/health``, ``/metrics``); ``relay`` sends one attempt of an
admission-controlled request and relays its answer, an SSE stream chunk by chunk as it comes, counting
its tokens on the way (``greenrl.live.tokens.SseTokenCounter``) into the request's ``Track``. When the
upstream connection fails before any byte reached the client, ``relay`` raises ``Retry`` (the caller
waits with ``wait_healthy`` and sends it again); a failure after that cuts the response. A 200 stream
that carries an error event (vLLM's mid-stream ``data: {"error": {...}}``) is relayed as it is and
noted in ``Track.stream_error``: the request counts as an error, not finished.

Public names: Retry, TokenHook, Upstream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from greenrl.live.http import Request, end_chunks, error_body, head, respond, send, write_chunk
from greenrl.live.proxy.accounting import Track
from greenrl.live.tokens import SseTokenCounter

__all__ = ["Retry", "TokenHook", "Upstream"]

TokenHook = Callable[[Track, int, bool], None]
"""``hook(track, tokens, first)``: ``tokens`` more were sent on for ``track``; ``first``: the first among them."""

_DROP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
}


PASSTHROUGH_READ_S = 30.0
"""Longest silence from the server answering a pass-through read (``/health``, ``/metrics``, ``/v1/models``)."""


class Retry(Exception):
    """The upstream failed before any byte reached the client: the request may be sent again."""


class Upstream:
    """The HTTP client of the server behind the proxy (open and used on the proxy's loop).

    Args:
        url: the server's base URL, without a trailing slash.
        connect_timeout_s: connect timeout (s).
        read_timeout_s: longest silence within a response (s); None: no limit.
        health_poll_s: time between two ``/health`` probes while waiting for the server (s).
    """

    def __init__(self, url: str, connect_timeout_s: float, read_timeout_s: float | None, health_poll_s: float) -> None:
        self.url = url
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.health_poll_s = health_poll_s
        self._client: httpx.AsyncClient | None = None

    def open(self) -> None:
        """Create the client (on the running loop)."""
        timeout = httpx.Timeout(self.connect_timeout_s, read=self.read_timeout_s, write=30.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def close(self) -> None:
        """Close the client."""
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        """The open client."""
        assert self._client is not None, "Upstream.open() first"
        return self._client

    def _target(self, req: Request) -> str:
        return self.url + req.path + (f"?{req.query}" if req.query else "")

    @staticmethod
    def _headers(req: Request) -> dict[str, str]:
        out = {k: v for k, v in req.headers.items() if k not in _DROP_HEADERS}
        out["accept-encoding"] = "identity"
        return out

    async def passthrough(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        """Relay a request and its whole answer (502 when the server is unreachable); keep the connection?"""
        try:
            resp = await self.client.request(
                req.method,
                self._target(req),
                content=req.body,
                headers=self._headers(req),
                timeout=httpx.Timeout(self.connect_timeout_s, read=PASSTHROUGH_READ_S, write=30.0, pool=None),
            )
        except httpx.HTTPError as err:
            msg = f"upstream {self.url} unreachable ({type(err).__name__}: {err})"
            await respond(writer, 502, error_body(502, msg), "application/json", req.keep_alive)
            return req.keep_alive
        ctype = resp.headers.get("content-type", "application/octet-stream")
        await respond(writer, resp.status_code, resp.content, ctype, req.keep_alive)
        return req.keep_alive

    async def wait_healthy(self, deadline_s: float) -> None:
        """Poll the server's ``/health`` until 200 or ``deadline_s`` (loop time)."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline_s:
            try:
                resp = await self.client.get(f"{self.url}/health", timeout=2.0)
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.health_poll_s)

    async def relay(self, req: Request, writer: asyncio.StreamWriter, track: Track, on_tokens: TokenHook) -> int:
        """Send one attempt upstream and relay the answer; returns the status sent to the client.

        Raises:
            Retry: the upstream failed before any byte was sent to the client.
            httpx.HTTPError: the upstream failed mid-response (the response is cut).
            ConnectionError: the client went away.
        """
        loop = asyncio.get_running_loop()
        keep = req.keep_alive
        try:
            async with self.client.stream(
                req.method, self._target(req), content=req.body, headers=self._headers(req)
            ) as resp:
                ctype = resp.headers.get("content-type", "application/json")
                if resp.status_code != 200 or "text/event-stream" not in ctype:
                    data = await resp.aread()
                    track.sent = True
                    if resp.status_code == 200:
                        track.first_token_at_s = track.last_token_at_s = loop.time()
                        track.usage = _usage_of(data)
                    await respond(writer, resp.status_code, data, ctype, keep)
                    return resp.status_code
                sse = SseTokenCounter()
                async for data in resp.aiter_bytes():
                    tokens = sse.feed(data)
                    if not track.sent:
                        framing = [("Content-Type", ctype), ("Cache-Control", "no-cache")]
                        framing += [("Transfer-Encoding", "chunked"), ("Connection", "keep-alive" if keep else "close")]
                        await send(writer, head(200, framing))
                        track.sent = True
                    await write_chunk(writer, data)
                    if tokens:
                        on_tokens(track, tokens, track.tokens_sent(tokens, loop.time()))
                track.usage = sse.usage
                track.stream_error = sse.error
                await end_chunks(writer)
                return 200
        except httpx.HTTPError as err:
            if track.sent:
                raise
            if isinstance(err, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ConnectTimeout):
                raise Retry(f"{type(err).__name__}: {err}") from err
            status = 504 if isinstance(err, httpx.TimeoutException) else 502
            msg = f"upstream {self.url} failed ({type(err).__name__}: {err})"
            await respond(writer, status, error_body(status, msg), "application/json", keep)
            return status


def _usage_of(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None
