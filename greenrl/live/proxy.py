"""Admission proxy: an OpenAI-compatible HTTP proxy in front of vLLM that enforces ``max_num_seqs`` and counts.

vLLM fixes ``--max-num-seqs`` at launch. ``AdmissionProxy`` makes it a live knob: at most ``cap`` requests
are in flight upstream, the others wait in the proxy in arrival order (FIFO). Nothing is rejected or
dropped by the proxy's own doing:

* a waiting request is never refused; ``set_cap(n)`` changes the cap at once (requests already upstream
  finish, the next ones wait for room);
* ``pause()`` holds new admissions, ``drain(timeout_s)`` pauses and waits until nothing is in flight
  upstream, ``resume()`` sends what was held (the launcher's TP restart uses these);
* when the upstream connection fails before any byte reached the client (the server is restarting or
  crashed), the request gives its slot back, waits until ``GET /health`` answers 200, and is sent again
  at the head of the queue: at most ``max_retries`` times and ``retry_wait_s`` seconds in all, after
  which the client gets a 503. A failure after bytes reached the client cuts that response (counted in
  ``errors``).

Forwarded: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (admission-controlled; SSE streams
relayed as they come), and any other path as a plain pass-through (``/v1/models``, ``/health``,
``/metrics``). ``GET /greenrl/proxy`` answers the proxy's counters as JSON (``stats()``).

Counters, as the front end sees them: arrivals; prompt tokens (the length of a token-id ``prompt``,
counted on arrival; else the upstream's ``usage.prompt_tokens`` when the response has one; else about one
token per 4 characters of text, both counted at completion); per request, TTFT (arrival at the proxy to
the first token chunk sent on, proxy queueing included) and mean time between tokens; and, given a
``ProxySlo``, whether the request met it.

``pending_first_token`` counts admission-controlled requests from arrival until their first token chunk
is sent on (or they end without one): queued here, or upstream before the first token. A non-streamed
request counts until its whole response, as the proxy cannot see its first token. A listener
(``on_pending``, or ``set_on_pending``) hears ``listener(count, boost_at_s)`` at every change of the
count, from the loop thread (keep it cheap): the signal of the prefill-clock governor
(``greenrl.live.governor``). ``boost_at_s`` is the earliest boost time of the requests pending their
first token (loop time = ``time.monotonic``; ``inf`` when none is pending). Each request gets its boost
time at arrival from a ``BoostPredictor`` (``greenrl.live.deadline.PrefillDeadline``, the deadline
governor) given the load the proxy sees then: the prompt tokens (and attention pairs) of the requests
awaiting their first token, here or upstream; the requests upstream past their first token and their
context (prompt + token events streamed); whether it must wait for room under the cap. Without a
predictor every boost time is ``-inf`` (at once): the prefill clock whenever a request is pending.

The proxy runs on its own asyncio loop in a background thread: ``start()`` returns its URL, ``stop()``
ends it (open requests are cut). It binds 127.0.0.1 by default.

Public names: AdmissionProxy, PendingListener, ProxySlo, approx_prompt_tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from greenrl.errors import InputError
from greenrl.live.http import Request, end_chunks, error_body, head, respond, serve_connection, write_chunk
from greenrl.live.pending import PendingEntry, PendingLoad

if TYPE_CHECKING:
    from greenrl.live.deadline import BoostPredictor

__all__ = ["AdmissionProxy", "PendingListener", "ProxySlo", "approx_prompt_tokens"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PendingListener = Callable[[int, float], None]
"""``listener(pending_first_token, boost_at_s)``: the count, and the earliest boost time of those requests."""

ADMITTED_PATHS = ("/v1/completions", "/v1/chat/completions")
"""POST paths that go through admission control (everything else is passed through)."""

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


@dataclass(frozen=True, slots=True)
class ProxySlo:
    """The per-request SLO the proxy judges, in wall seconds as the client sees them.

    A streamed request meets it when TTFT <= ``ttft_s`` and its mean time between tokens <=
    ``tbt_mean_s``. A non-streamed one has no first-token time at the proxy: it meets it when its whole
    latency <= ``ttft_s + (completion_tokens - 1) x tbt_mean_s``, the bound both would give.

    Attributes:
        ttft_s: time-to-first-token limit (s).
        tbt_mean_s: limit on the mean time between tokens (s).
    """

    ttft_s: float
    tbt_mean_s: float

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tbt_mean_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError("ProxySlo", name, f"must be > 0 s, got {value!r}", "pass e.g. 0.5")


@dataclass(slots=True)
class _Counters:
    arrived: int = 0
    prompt_tokens: int = 0
    admitted: int = 0
    finished: int = 0
    slo_met: int = 0
    missed: int = 0
    errors: int = 0
    cancelled: int = 0
    retried: int = 0
    output_tokens: int = 0
    max_in_flight: int = 0


@dataclass(slots=True)
class _Track:
    """One admission-controlled request, as the proxy measures it (loop times, s)."""

    arrived_at_s: float
    stream: bool
    prompt_tokens: int | None
    first_token_at_s: float | None = None
    last_token_at_s: float | None = None
    token_events: int = 0
    usage: dict[str, Any] | None = None
    sent: bool = False  # a byte reached the client: no retry from here on
    load: PendingEntry | None = None  # its part of the pending load (set at arrival)


class _Retry(Exception):
    """The upstream failed before any byte reached the client: the request may be sent again."""


def approx_prompt_tokens(body: Any) -> int:
    """About one token per 4 characters of the prompt text (completions ``prompt`` or chat ``messages``).

    Example:
        >>> approx_prompt_tokens({"prompt": "x" * 40})
        10
        >>> approx_prompt_tokens({"messages": [{"role": "user", "content": "hello there"}]})
        3
    """
    if not isinstance(body, dict):
        return 1
    texts: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for v in value:
                collect(v)
        elif isinstance(value, dict):
            collect(value.get("content", value.get("text", "")))

    collect(body.get("prompt", ""))
    collect(body.get("messages", []))
    return max(1, round(sum(len(t) for t in texts) / 4))


def _token_ids_length(body: Any) -> int | None:
    """The prompt length when the prompt is a list of token ids (or a batch of one), else None."""
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt)
    return None


class _SseCounter:
    """Counts token events in an SSE byte stream and keeps its last ``usage`` object."""

    def __init__(self) -> None:
        self._buf = b""
        self.usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> int:
        """Add bytes; returns the token events completed by them."""
        self._buf = (self._buf + data).replace(b"\r\n", b"\n")
        *events, self._buf = self._buf.split(b"\n\n")
        tokens = 0
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if not payload or payload == b"[DONE]":
                    continue
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if isinstance(obj.get("usage"), dict):
                    self.usage = obj["usage"]
                if any(_has_token(c) for c in obj.get("choices") or []):
                    tokens += 1
        return tokens


def _has_token(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    if isinstance(choice.get("text"), str) and choice["text"]:
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and isinstance(delta.get("content"), str) and bool(delta["content"])


class AdmissionProxy:
    """Admission cap, hold/drain and front-end counters in front of an OpenAI-compatible server.

    Args:
        upstream_url: the server's base URL (``http://127.0.0.1:8000``).
        cap: most requests in flight upstream (``max_num_seqs`` x replicas); None: no cap.
        host, port: where the proxy listens (port 0: any free one; see ``url`` after ``start``).
        slo: the SLO to judge requests against (wall seconds); None: ``slo_met``/``missed`` stay 0.
        max_retries: most times one request is sent again after an upstream connection failure.
        retry_wait_s: longest time one request waits in all for the upstream to be healthy again (s).
        connect_timeout_s: upstream connect timeout (s).
        read_timeout_s: longest silence from the upstream within a response (s); None: no limit.
        health_poll_s: time between two ``/health`` probes while waiting for the upstream (s).
        on_pending: ``on_pending(pending_first_token, boost_at_s)`` on every change, from the loop thread.
        deadline: predicts each request's boost time at arrival; None: every request at once.

    Raises:
        InputError: on a cap below 1 or a non-http(s) URL.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        cap: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        slo: ProxySlo | None = None,
        max_retries: int = 5,
        retry_wait_s: float = 900.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = 3600.0,
        health_poll_s: float = 0.25,
        on_pending: PendingListener | None = None,
        deadline: BoostPredictor | None = None,
    ) -> None:
        if not upstream_url.startswith(("http://", "https://")):
            raise InputError("AdmissionProxy", "upstream_url", f"{upstream_url!r} is not http(s)", "http://host:port")
        self.upstream_url = upstream_url.rstrip("/")
        self._cap = self._check_cap(cap)
        self.host, self.port = host, port
        self.slo = slo
        self.max_retries, self.retry_wait_s = max_retries, retry_wait_s
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.health_poll_s = health_poll_s
        self._c = _Counters()
        self._in_flight = 0
        self._waiting = 0
        self._load = PendingLoad()  # requests pending their first token, and decoding
        self._on_pending = on_pending
        self._deadline = deadline
        self._paused = False
        self._queue: deque[tuple[asyncio.Future[None], bool]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._idle: asyncio.Event | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The proxy's base URL (its port is known after ``start``)."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the loop thread and listen; returns the proxy's URL."""
        if self._thread is not None:
            return self.url
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, name="greenrl-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout_s)
        logger.info("admission proxy on %s -> %s (cap %s)", self.url, self.upstream_url, self._cap)
        return self.url

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        timeout = httpx.Timeout(self.connect_timeout_s, read=self.read_timeout_s, write=30.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=256 * 1024)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop listening, cut open requests, end the loop thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)

    def __enter__(self) -> AdmissionProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_loop(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run ``fn`` on the proxy's loop (state is only touched there) and return its result."""
        loop = self._loop
        if loop is None or self._thread is None or threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                fut.set_exception(err)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout_s)

    # ------------------------------------------------------------------------------------ control

    @staticmethod
    def _check_cap(cap: int | None) -> int | None:
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise InputError("AdmissionProxy", "cap", f"must be an integer >= 1 or None, got {cap!r}", "e.g. 256")
        return cap

    @property
    def cap(self) -> int | None:
        """Most requests in flight upstream (None: no cap)."""
        return self._cap

    def set_cap(self, cap: int | None) -> None:
        """Change the admission cap now; waiting requests are admitted if there is room."""
        checked = self._check_cap(cap)

        def change() -> None:
            self._cap = checked
            self._wake()

        self._on_loop(change)

    def pause(self) -> None:
        """Hold new admissions (requests already upstream go on)."""

        def hold() -> None:
            self._paused = True

        self._on_loop(hold)

    def resume(self) -> None:
        """Admit again, oldest held request first."""

        def go() -> None:
            self._paused = False
            self._wake()

        self._on_loop(go)

    @property
    def paused(self) -> bool:
        """Whether admissions are held."""
        return self._paused

    def drain(self, timeout_s: float) -> bool:
        """Pause, then wait until nothing is in flight upstream; True if it drained within ``timeout_s``.

        Admissions stay held either way: call ``resume()`` afterwards.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("drain() blocks: call it from another thread than the proxy's loop")
        self.pause()
        loop = self._loop
        if loop is None:
            return self._in_flight == 0

        async def wait() -> bool:
            assert self._idle is not None
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=max(timeout_s, 0.0))
            except TimeoutError:
                return False
            return True

        return asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout_s + 5.0)

    def set_on_pending(self, listener: PendingListener | None, *, deadline: BoostPredictor | None = None) -> None:
        """Call ``listener(pending_first_token, boost_at_s)`` now and on every change (None: no listener).

        ``deadline`` predicts the boost time of each request arriving from now on (None: at once).
        """

        def put() -> None:
            self._on_pending = listener
            self._deadline = deadline
            self._report()

        self._on_loop(put)

    def stats(self) -> dict[str, Any]:
        """Cumulative counters since start, and the admission state now.

        Keys: ``arrived``, ``prompt_tokens``, ``admitted`` (first admissions upstream), ``in_flight``,
        ``queued`` (waiting in the proxy: held, over the cap, or waiting for the upstream to come back),
        ``finished`` (whole 2xx response delivered), ``slo_met``, ``missed`` (finished requests that missed
        the SLO, plus requests failed by the upstream: a 5xx, a cut stream or retries used up),
        ``errors`` (upstream answered >= 400, or failed), ``cancelled`` (the client went away),
        ``retried``, ``output_tokens``, ``max_in_flight`` (high-water mark), ``cap``, ``paused``,
        ``slo_judged`` (an SLO was given), ``pending_first_token`` (see the module docstring), ``decoding``
        (requests upstream past their first token).
        ``arrived = queued + in_flight + finished + errors + cancelled`` at any instant.
        """

        def read() -> dict[str, Any]:
            out: dict[str, Any] = asdict(self._c)
            out.update(in_flight=self._in_flight, queued=self._waiting, cap=self._cap, paused=self._paused)
            out["pending_first_token"] = self._load.count
            out["decoding"] = self._load.decoding
            out["slo_judged"] = self.slo is not None
            return out

        return self._on_loop(read)

    # ------------------------------------------------------------------------------------ admission

    def _room(self) -> bool:
        return not self._paused and (self._cap is None or self._in_flight < self._cap)

    def _take_slot(self, first: bool) -> None:
        self._waiting -= 1
        self._in_flight += 1
        if first:
            self._c.admitted += 1
        self._c.max_in_flight = max(self._c.max_in_flight, self._in_flight)
        if self._idle is not None:
            self._idle.clear()

    def _release(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()
        self._wake()

    def _report(self) -> None:
        listener = self._on_pending
        if listener is not None:
            try:
                listener(self._load.count, self._load.earliest_boost_s())
            except Exception:
                logger.exception("the on_pending listener failed")

    def _wake(self) -> None:
        while self._queue and self._room():
            fut, retry = self._queue.popleft()
            if fut.done():
                continue
            self._take_slot(first=not retry)
            fut.set_result(None)

    async def _admit(self, retry: bool) -> None:
        """Wait for a slot upstream (the caller is counted in ``_waiting``); a retry goes first in line."""
        if not self._queue and self._room():
            self._take_slot(first=not retry)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if retry:
            self._queue.appendleft((fut, retry))
        else:
            self._queue.append((fut, retry))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # admitted just as it was cancelled
            else:
                fut.cancel()
                self._waiting -= 1
            raise

    # ------------------------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await serve_connection(reader, writer, self._dispatch)
        except asyncio.CancelledError:
            pass  # stop(): end the connection task quietly (its writer is already closed)
        finally:
            if task is not None:
                self._conns.discard(task)

    async def _dispatch(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        if (req.method, req.path) == ("GET", "/greenrl/proxy"):
            await respond(writer, 200, json.dumps(self.stats()).encode(), "application/json", req.keep_alive)
            return req.keep_alive
        if req.method == "POST" and req.path in ADMITTED_PATHS:
            return await self._admitted(req, writer)
        return await self._passthrough(req, writer)

    def _target(self, req: Request) -> str:
        return self.upstream_url + req.path + (f"?{req.query}" if req.query else "")

    @staticmethod
    def _headers(req: Request) -> dict[str, str]:
        out = {k: v for k, v in req.headers.items() if k not in _DROP_HEADERS}
        out["accept-encoding"] = "identity"
        return out

    async def _passthrough(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        assert self._client is not None
        try:
            resp = await self._client.request(
                req.method, self._target(req), content=req.body, headers=self._headers(req)
            )
        except httpx.HTTPError as err:
            msg = f"upstream {self.upstream_url} unreachable ({type(err).__name__}: {err})"
            await respond(writer, 502, error_body(502, msg), "application/json", req.keep_alive)
            return req.keep_alive
        ctype = resp.headers.get("content-type", "application/octet-stream")
        await respond(writer, resp.status_code, resp.content, ctype, req.keep_alive)
        return req.keep_alive

    async def _admitted(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        loop = asyncio.get_running_loop()
        try:
            body: Any = json.loads(req.body or b"{}")
        except ValueError:
            body = None
        ids = _token_ids_length(body)
        track = _Track(loop.time(), bool(body.get("stream")) if isinstance(body, dict) else False, ids)
        est_tokens = ids if ids is not None else approx_prompt_tokens(body)
        self._c.arrived += 1
        self._c.prompt_tokens += ids or 0
        must_wait = bool(self._queue) or not self._room()
        self._waiting += 1
        track.load = load = self._load.arrive(track.arrived_at_s, est_tokens, self._deadline, must_wait=must_wait)
        self._report()
        outcome, status = "error", 0
        first_fail_at_s: float | None = None
        retries = 0
        try:
            while True:
                await self._admit(retry=retries > 0)
                try:
                    status = await self._forward(req, writer, track)
                    outcome = "finished" if 200 <= status < 300 else "error"
                    break
                except _Retry as err:
                    first_fail_at_s = loop.time() if first_fail_at_s is None else first_fail_at_s
                    waited_s = loop.time() - first_fail_at_s
                    if retries >= self.max_retries or waited_s >= self.retry_wait_s:
                        msg = f"upstream unavailable after {retries} retries over {waited_s:.1f} s ({err})"
                        await respond(writer, 503, error_body(503, msg), "application/json", req.keep_alive)
                        status = 503
                        break
                    retries += 1
                    self._c.retried += 1
                    logger.info("upstream failed before the response started (%s); retry %d when healthy", err, retries)
                finally:
                    self._release()
                self._waiting += 1
                await self._wait_healthy(first_fail_at_s + self.retry_wait_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            outcome = "cancelled"
            raise
        except httpx.HTTPError as err:  # the upstream failed after bytes reached the client: the response is cut
            logger.warning("upstream failed mid-response (%s: %s); the response is cut", type(err).__name__, err)
            status = 502
            raise ConnectionError("response cut") from err
        finally:
            if self._load.end(load):
                self._report()
            self._account(track, outcome, status, body)
        return req.keep_alive

    async def _wait_healthy(self, deadline_s: float) -> None:
        """Poll the upstream's ``/health`` until 200 or ``deadline_s`` (loop time)."""
        assert self._client is not None
        loop = asyncio.get_running_loop()
        while loop.time() < deadline_s:
            try:
                resp = await self._client.get(f"{self.upstream_url}/health", timeout=2.0)
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.health_poll_s)

    async def _forward(self, req: Request, writer: asyncio.StreamWriter, track: _Track) -> int:
        """Send one attempt upstream and relay the answer; returns the status sent to the client.

        Raises:
            _Retry: the upstream failed before any byte was sent to the client.
            httpx.HTTPError: the upstream failed mid-response (the response is cut).
            ConnectionError: the client went away.
        """
        assert self._client is not None
        loop = asyncio.get_running_loop()
        keep = req.keep_alive
        try:
            async with self._client.stream(
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
                sse = _SseCounter()
                async for data in resp.aiter_bytes():
                    tokens = sse.feed(data)
                    if not track.sent:
                        framing = [("Content-Type", ctype), ("Cache-Control", "no-cache")]
                        framing += [("Transfer-Encoding", "chunked"), ("Connection", "keep-alive" if keep else "close")]
                        writer.write(head(200, framing))
                        track.sent = True
                    await write_chunk(writer, data)
                    if tokens:
                        now = loop.time()
                        first = track.first_token_at_s is None
                        if first:
                            track.first_token_at_s = now
                        track.last_token_at_s = now
                        track.token_events += tokens
                        if track.load is not None:
                            if first:
                                if self._load.first_token(track.load, track.token_events):
                                    self._report()
                            else:
                                self._load.streamed(track.load, tokens)
                track.usage = sse.usage
                await end_chunks(writer)
                return 200
        except httpx.HTTPError as err:
            if track.sent:
                raise
            if isinstance(err, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ConnectTimeout):
                raise _Retry(f"{type(err).__name__}: {err}") from err
            status = 504 if isinstance(err, httpx.TimeoutException) else 502
            msg = f"upstream {self.upstream_url} failed ({type(err).__name__}: {err})"
            await respond(writer, status, error_body(status, msg), "application/json", keep)
            return status

    def _account(self, track: _Track, outcome: str, status: int, body: Any) -> None:
        c = self._c
        usage = track.usage or {}
        if track.prompt_tokens is None:
            prompt = usage.get("prompt_tokens")
            c.prompt_tokens += int(prompt) if isinstance(prompt, int) else approx_prompt_tokens(body)
        if outcome == "cancelled":
            c.cancelled += 1
            return
        if outcome != "finished":
            c.errors += 1
            if self.slo is not None and (status == 0 or status >= 500):
                c.missed += 1
            return
        c.finished += 1
        completion = usage.get("completion_tokens")
        tokens = int(completion) if isinstance(completion, int) else track.token_events
        c.output_tokens += tokens
        if self.slo is None:
            return
        end_s = track.last_token_at_s if track.last_token_at_s is not None else track.arrived_at_s
        if not track.stream or track.first_token_at_s is None:
            met = end_s - track.arrived_at_s <= self.slo.ttft_s + max(tokens - 1, 0) * self.slo.tbt_mean_s
        else:
            ttft_s = track.first_token_at_s - track.arrived_at_s
            tbt_s = (end_s - track.first_token_at_s) / (tokens - 1) if tokens > 1 else 0.0
            met = ttft_s <= self.slo.ttft_s and tbt_s <= self.slo.tbt_mean_s
        if met:
            c.slo_met += 1
        else:
            c.missed += 1


def _usage_of(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None
