"""The admission proxy's server: its loop thread, control API, counters and the life of each request.

``AdmissionProxy`` listens on its own asyncio loop in a background thread (``start()`` returns its URL,
``stop()`` ends it and cuts open requests) and ties the parts together: ``Admission`` (the cap, hold
and drain), ``Upstream`` (forwarding and retries), ``Accounting`` (counters and SLO verdicts) and
``PendingLoad`` (the pending-first-token signal of the prefill-clock governor). See the package
docstring for what it does.

Public names: AdmissionProxy, PendingListener.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from greenrl.errors import InputError
from greenrl.live.http import HttpListener, Request, error_body, respond
from greenrl.live.pending import PendingLoad
from greenrl.live.proxy.accounting import Accounting, Track
from greenrl.live.proxy.admission import Admission, check_cap
from greenrl.live.proxy.forward import Retry, Upstream
from greenrl.slo import SloJudge

if TYPE_CHECKING:
    from greenrl.live.deadline import BoostPredictor

__all__ = ["AdmissionProxy", "PendingListener"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PendingListener = Callable[[int, float], None]
"""``listener(pending_first_token, boost_at_s)``: the count, and the earliest boost time of those requests."""

ADMITTED_PATHS = ("/v1/completions", "/v1/chat/completions")
"""POST paths that go through admission control."""

READ_PATHS = ("/v1/models", "/health", "/metrics", "/version", "/ping")
"""GET (and HEAD) paths passed through as they are; with ``/v1/models/<id>``, the only other paths forwarded.

Nothing else reaches the server: no control path (the twin's ``/greenrl/knobs``, vLLM's ``/sleep``,
``/reset_prefix_cache``, LoRA loading...), so a client of the proxy cannot change what the controller
controls. Other paths are answered 404 in vLLM's error format."""


def forwarded(method: str, path: str) -> bool:
    """Whether the proxy sends ``method path`` on to the server (the serving API and health/metrics reads).

    Example:
        >>> forwarded("POST", "/v1/completions"), forwarded("GET", "/metrics"), forwarded("POST", "/greenrl/knobs")
        (True, True, False)
    """
    if method == "POST":
        return path in ADMITTED_PATHS
    if method in ("GET", "HEAD"):
        return path in READ_PATHS or (path.startswith("/v1/models/") and ".." not in path)
    return False


class AdmissionProxy:
    """Admission cap, hold/drain and front-end counters in front of an OpenAI-compatible server.

    Args:
        upstream_url: the server's base URL (``http://127.0.0.1:8000``).
        cap: most requests in flight upstream (``max_num_seqs`` x replicas); None: no cap.
        host, port: where the proxy listens (port 0: any free one; see ``url`` after ``start``).
        slo: the SLO to judge requests against (``SloJudge.from_scenario``; wall seconds as the client
            sees them); None: ``slo_met``/``missed`` stay 0.
        max_retries: most times one request is sent again after an upstream connection failure.
        retry_wait_s: longest time one request waits in all for the upstream to be healthy again (s).
        connect_timeout_s: upstream connect timeout (s).
        read_timeout_s: longest silence from the upstream within a response (s); None: no limit.
        max_wait_s: longest a client waits for the first byte of its answer, queueing, retries and the
            server's time included (s): past it the client gets a 504 in vLLM's error format.
        watch_s: how often a waiting request checks whether its client went away (s); a request whose
            client left is dropped (counted ``cancelled``), its upstream request cancelled.
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
        slo: SloJudge | None = None,
        max_retries: int = 5,
        retry_wait_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float | None = 300.0,
        max_wait_s: float = 300.0,
        watch_s: float = 0.25,
        health_poll_s: float = 0.25,
        on_pending: PendingListener | None = None,
        deadline: BoostPredictor | None = None,
    ) -> None:
        if not upstream_url.startswith(("http://", "https://")):
            raise InputError("AdmissionProxy", "upstream_url", f"{upstream_url!r} is not http(s)", "http://host:port")
        self.upstream_url = upstream_url.rstrip("/")
        self.host, self.port = host, port
        self.max_retries, self.retry_wait_s = max_retries, retry_wait_s
        for name, value in (("max_wait_s", max_wait_s), ("watch_s", watch_s)):
            if not (math.isfinite(value) and value > 0):
                raise InputError("AdmissionProxy", name, f"{value} is not > 0", "e.g. 300")
        self.max_wait_s, self.watch_s = max_wait_s, watch_s
        self._gate = Admission(cap)
        self._upstream = Upstream(self.upstream_url, connect_timeout_s, read_timeout_s, health_poll_s)
        self._acct = Accounting(slo)
        self._load = PendingLoad()  # requests pending their first token, and decoding
        self._on_pending = on_pending
        self._deadline = deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener = HttpListener(self._dispatch, host, port)

    @property
    def slo(self) -> SloJudge | None:
        """The SLO requests are judged against (None: not judged)."""
        return self._acct.slo

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
        logger.info("admission proxy on %s -> %s (cap %s)", self.url, self.upstream_url, self._gate.cap)
        return self.url

    def _run_loop(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _start(self) -> None:
        self._gate.start()
        self._upstream.open()
        self.port = await self._listener.start()

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
        await self._listener.close()
        await self._upstream.close()

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

    @property
    def cap(self) -> int | None:
        """Most requests in flight upstream (None: no cap)."""
        return self._gate.cap

    def set_cap(self, cap: int | None) -> None:
        """Change the admission cap now; waiting requests are admitted if there is room."""
        checked = check_cap(cap)
        self._on_loop(lambda: self._gate.set_cap(checked))

    def pause(self) -> None:
        """Hold new admissions (requests already upstream go on)."""
        self._on_loop(self._gate.pause)

    def resume(self) -> None:
        """Admit again, oldest held request first."""
        self._on_loop(self._gate.resume)

    @property
    def paused(self) -> bool:
        """Whether admissions are held."""
        return self._gate.paused

    def drain(self, timeout_s: float) -> bool:
        """Pause, then wait until nothing is in flight upstream; True if it drained within ``timeout_s``.

        Admissions stay held either way: call ``resume()`` afterwards.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("drain() blocks: call it from another thread than the proxy's loop")
        self.pause()
        loop = self._loop
        if loop is None:
            return self._gate.in_flight == 0
        return asyncio.run_coroutine_threadsafe(self._gate.wait_idle(timeout_s), loop).result(timeout_s + 5.0)

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
        ``finished`` (whole 2xx response delivered, no error event in it), ``slo_met``, ``missed`` (finished
        requests that missed the SLO, plus requests failed by the upstream: a 5xx, a cut stream, an error
        event in a 200 stream or retries used up), ``errors`` (upstream answered >= 400, failed, or sent
        an error event in a 200 stream), ``cancelled`` (the client went away),
        ``retried``, ``output_tokens``, ``max_in_flight`` (high-water mark), ``cap``, ``paused``,
        ``slo_judged`` (an SLO was given), ``pending_first_token`` (see the package docstring), ``decoding``
        (requests upstream past their first token).
        ``arrived = queued + in_flight + finished + errors + cancelled`` at any instant.
        """

        def read() -> dict[str, Any]:
            gate = self._gate
            out: dict[str, Any] = asdict(self._acct.counters)
            out.update(admitted=gate.admitted, max_in_flight=gate.max_in_flight)
            out.update(in_flight=gate.in_flight, queued=gate.waiting, cap=gate.cap, paused=gate.paused)
            out["pending_first_token"] = self._load.count
            out["decoding"] = self._load.decoding
            out["slo_judged"] = self._acct.slo is not None
            return out

        return self._on_loop(read)

    # ------------------------------------------------------------------------------------ pending load

    def _report(self) -> None:
        listener = self._on_pending
        if listener is not None:
            try:
                listener(self._load.count, self._load.earliest_boost_s())
            except Exception:
                logger.exception("the on_pending listener failed")

    def _tokens_sent(self, track: Track, tokens: int, first: bool) -> None:
        if track.load is None:
            return
        if first:
            if self._load.first_token(track.load, track.token_events):
                self._report()
        else:
            self._load.streamed(track.load, tokens)

    # ------------------------------------------------------------------------------------ HTTP

    async def _dispatch(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        if (req.method, req.path) == ("GET", "/greenrl/proxy"):
            await respond(writer, 200, json.dumps(self.stats()).encode(), "application/json", req.keep_alive)
            return req.keep_alive
        if req.method == "POST" and req.path in ADMITTED_PATHS:
            return await self._admitted(req, writer)
        if not forwarded(req.method, req.path):
            msg = f"{req.method} {req.path} is not forwarded by greenrl's admission proxy (only the serving API)"
            await respond(writer, 404, error_body(404, msg), "application/json", req.keep_alive)
            return req.keep_alive
        return await self._upstream.passthrough(req, writer)

    async def _admitted(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        """One admission-controlled request, from arrival to its last byte: wait, send, retry, account.

        While it runs, every ``watch_s`` it checks whether the client went away (then the request and its
        attempt upstream are cancelled, counted ``cancelled``) and, until a byte reached the client,
        whether ``max_wait_s`` passed (then the client gets a 504 in vLLM's error format).
        """
        loop = asyncio.get_running_loop()
        try:
            body: Any = json.loads(req.body or b"{}")
        except ValueError:
            body = None
        track = self._acct.arrive(body, loop.time())
        must_wait = self._gate.must_wait()
        self._gate.enter()
        track.load = self._load.arrive(
            track.arrived_at_s, track.estimated_prompt_tokens, self._deadline, must_wait=must_wait
        )
        self._report()
        task = asyncio.ensure_future(self._settled(req, writer, track))
        deadline_s = track.arrived_at_s + self.max_wait_s
        gone = req.client_gone
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.watch_s)
                if task in done:
                    return task.result()
                if gone is not None and gone():
                    track.abort = "gone"
                    task.cancel()
                elif not track.sent and loop.time() >= deadline_s:
                    track.abort = "timeout"
                    task.cancel()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _settled(self, req: Request, writer: asyncio.StreamWriter, track: Track) -> bool:
        """``_attempts``, then the request's accounting (also when cancelled: client gone, or late)."""
        outcome, status = "error", 0
        try:
            status = await self._attempts(req, writer, track)
            outcome = "finished" if 200 <= status < 300 and track.stream_error is None else "error"
            if track.stream_error is not None:
                logger.warning("the upstream's 200 stream carried an error event: %s", track.stream_error)
        except asyncio.CancelledError:
            if track.abort != "timeout" or track.sent:
                outcome = "cancelled"
                raise
            status = 504  # no byte reached the client yet: tell it the truth
            track.sent = True
            msg = f"no answer from the server within {self.max_wait_s:g} s; try again later"
            await respond(writer, 504, error_body(504, msg), "application/json", req.keep_alive)
        except (ConnectionError, asyncio.IncompleteReadError):
            outcome = "cancelled"
            raise
        except httpx.HTTPError as err:  # the upstream failed after bytes reached the client: the response is cut
            logger.warning("upstream failed mid-response (%s: %s); the response is cut", type(err).__name__, err)
            status = 502
            raise ConnectionError("response cut") from err
        finally:
            if track.load is not None and self._load.end(track.load):
                self._report()
            self._acct.close(track, outcome, status)
        return req.keep_alive

    async def _attempts(self, req: Request, writer: asyncio.StreamWriter, track: Track) -> int:
        """Send the request until an answer reaches the client or retries run out; returns its status."""
        loop = asyncio.get_running_loop()
        first_fail_at_s: float | None = None
        retries = 0
        while True:
            await self._gate.admit(retry=retries > 0)
            try:
                return await self._upstream.relay(req, writer, track, self._tokens_sent)
            except Retry as err:
                first_fail_at_s = loop.time() if first_fail_at_s is None else first_fail_at_s
                waited_s = loop.time() - first_fail_at_s
                if retries >= self.max_retries or waited_s >= self.retry_wait_s:
                    msg = f"upstream unavailable after {retries} retries over {waited_s:.1f} s ({err})"
                    track.sent = True
                    await respond(writer, 503, error_body(503, msg), "application/json", req.keep_alive)
                    return 503
                retries += 1
                self._acct.counters.retried += 1
                logger.info("upstream failed before the response started (%s); retry %d when healthy", err, retries)
            finally:
                self._gate.release()
            self._gate.enter()
            try:
                await self._upstream.wait_healthy(first_fail_at_s + self.retry_wait_s)
            except BaseException:
                self._gate.leave()  # cancelled while waiting for the upstream
                raise
