"""The load generator's engine: send each request of a workload at its time, stream it, record its outcome.

Each request of a ``Trace`` is sent at its arrival time divided by ``time_scale`` (wall seconds) as
``POST /v1/completions`` with ``prompt`` a list of exactly ``input_tokens`` token ids (drawn per request
from a seeded generator, so prompts share no prefix a prefix cache could reuse), ``max_tokens`` =
``output_tokens`` with ``ignore_eos: true``, and ``stream: true`` with ``stream_options: {include_usage:
true, continuous_usage_stats: true}``. Concurrency is bounded by a semaphore (a request whose slot is not
free waits, so it is sent late; ``sent_at_s`` shows it), and every wait has a deadline: connect and read
timeouts, a per-request limit and a drain limit after the last send.

``LoadGenerator.run()`` is the asyncio core; ``start()`` / ``sent()`` / ``records()`` / ``stop()`` run it
in a background thread with its own event loop, for synchronous callers such as ``LiveNode``.

Public names: LoadGenerator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from typing import Any

import httpx
import numpy as np

from greenrl.errors import InputError
from greenrl.live.loadgen.records import RequestRecord, SentRequest, Status, StreamTiming
from greenrl.workload import Trace

__all__ = ["LoadGenerator"]

logger = logging.getLogger(__name__)


class LoadGenerator:
    """Replays a ``Trace`` against ``{url}/v1/completions``.

    Args:
        url: the server's (or proxy's) base URL, e.g. ``http://127.0.0.1:8000``.
        trace: the requests (arrival s, prompt and output tokens).
        model: model name to send; default: the first of ``GET /v1/models``.
        time_scale: workload seconds per wall second (the twin's ``--time-scale``); arrival ``a`` is sent
            at wall ``a / time_scale``.
        max_concurrency: most requests in flight at once.
        duration_s: send only requests arriving before this (workload s); default: all.
        connect_timeout_s: TCP connect limit (wall s).
        read_timeout_s: longest silence between two reads of one response (wall s); a queued request
            gets no byte before its first token, so this also bounds its queueing.
        request_timeout_s: longest life of one request (wall s).
        drain_timeout_s: after the last send, how long in-flight requests may still run (wall s).
        seed: seeds the prompt token ids.
        vocab_size: token ids are drawn from [100, vocab_size - 1] (any model's vocabulary has 32000).
        extra_body: more request fields (e.g. ``{"temperature": 0.0}``).

    Raises:
        InputError: on a bad URL or a non-positive scale, concurrency or timeout.
    """

    def __init__(
        self,
        url: str,
        trace: Trace,
        *,
        model: str | None = None,
        time_scale: float = 1.0,
        max_concurrency: int = 256,
        duration_s: float | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        request_timeout_s: float = 600.0,
        drain_timeout_s: float = 60.0,
        seed: int = 0,
        vocab_size: int = 32000,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError("--url", "url", f"{url!r} is not an http(s) URL", "pass e.g. http://127.0.0.1:8000")
        for name, value in (
            ("time_scale", time_scale),
            ("connect_timeout_s", connect_timeout_s),
            ("read_timeout_s", read_timeout_s),
            ("request_timeout_s", request_timeout_s),
            ("drain_timeout_s", drain_timeout_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise InputError("LoadGenerator", name, f"must be a positive number, got {value!r}", "pass e.g. 10")
        if max_concurrency < 1:
            raise InputError("--max-concurrency", "max_concurrency", f"must be >= 1, got {max_concurrency}", "e.g. 64")
        if vocab_size < 200:
            raise InputError("LoadGenerator", "vocab_size", f"must be >= 200, got {vocab_size}", "pass 32000")
        self.url = url.rstrip("/")
        self.trace = trace
        self.model = model
        self.time_scale = float(time_scale)
        self.max_concurrency = int(max_concurrency)
        self.duration_s = duration_s
        self.timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=connect_timeout_s, pool=None)
        self.request_timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.seed = seed
        self.vocab_size = vocab_size
        self.extra_body = dict(extra_body or {})
        self.started_at_mono: float | None = None
        self.peak_in_flight = 0
        self.error: BaseException | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._sent: list[SentRequest] = []
        self._done: list[RequestRecord] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()

    # -------------------------------------------------------------------------------- results

    def elapsed_s(self, at_mono: float | None = None) -> float:
        """Wall seconds since the generator started (at ``time.monotonic()`` value ``at_mono``, default now)."""
        if self.started_at_mono is None:
            return 0.0
        return (time.monotonic() if at_mono is None else at_mono) - self.started_at_mono

    def sent(self, since: int = 0) -> list[SentRequest]:
        """Requests sent so far, in sending order, from position ``since``."""
        with self._lock:
            return self._sent[since:]

    def records(self, since: int = 0) -> list[RequestRecord]:
        """Outcomes known so far, in the order they became known, from position ``since``."""
        with self._lock:
            return self._done[since:]

    @property
    def in_flight(self) -> int:
        """Requests sent whose outcome is not known yet."""
        return self._in_flight

    @property
    def done(self) -> bool:
        """Whether the run has ended (all requests settled, or stopped)."""
        return self._finished.is_set()

    # -------------------------------------------------------------------------------- background thread

    def start(self) -> None:
        """Run in a background thread with its own event loop; returns once it has started."""
        if self._thread is not None:
            raise RuntimeError("this LoadGenerator was already started")
        ready = threading.Event()

        def target() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                ready.set()
                await self.run()

            try:
                asyncio.run(main())
            except BaseException as err:  # keep it for the caller; the thread must not die silently
                self.error = err
                logger.exception("load generator failed")
            finally:
                self._finished.set()
                ready.set()

        self._thread = threading.Thread(target=target, name="greenrl-loadgen", daemon=True)
        self._thread.start()
        ready.wait(timeout=10.0)

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` wall seconds for the run to end by itself; True if it has."""
        return self._finished.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> list[RequestRecord]:
        """Stop sending, cancel in-flight requests (recorded as ``cancelled``) and return every outcome."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not self._finished.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                logger.warning("load generator thread still running %.1f s after stop()", timeout_s)
        return self.records()

    # -------------------------------------------------------------------------------- asyncio core

    async def run(self) -> list[RequestRecord]:
        """Send every request at its time, wait for the outcomes (bounded), return them all."""
        if self._stop is None:
            self._stop = asyncio.Event()
        stop = self._stop
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        sem = asyncio.Semaphore(self.max_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, trust_env=False) as client:
            model = self.model or await self._discover_model(client)
            self.started_at_mono = time.monotonic()  # the schedule starts once the server has answered
            trace = self.trace
            for i in range(len(trace)):
                arrival = float(trace.arrival_s[i])
                if self.duration_s is not None and arrival >= self.duration_s:
                    break
                due = self.started_at_mono + arrival / self.time_scale
                if not await _wait_until(stop, due) or not await _acquire(sem, stop):
                    break
                sent = SentRequest(i, arrival, self.elapsed_s(), int(trace.input_tokens[i]))
                with self._lock:
                    self._sent.append(sent)
                    self._in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                task = asyncio.create_task(self._one(client, model, sent, int(trace.output_tokens[i])))
                tasks.add(task)

                def settled(t: asyncio.Task[None]) -> None:
                    tasks.discard(t)
                    sem.release()

                task.add_done_callback(settled)
            await _drain(tasks, stop, self.drain_timeout_s)
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.records()

    async def _discover_model(self, client: httpx.AsyncClient) -> str:
        try:
            resp = await client.get(f"{self.url}/v1/models")
            resp.raise_for_status()
            return str(resp.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
            raise InputError("--url", "model", f"{self.url}/v1/models gave no model ({err})", "pass --model") from err

    def _body(self, model: str, sent: SentRequest, output_tokens: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, sent.index])
        ids = rng.integers(100, self.vocab_size - 1, size=sent.prompt_tokens).tolist()
        return {
            **self.extra_body,
            "model": model,
            "prompt": ids,
            "max_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }

    async def _one(self, client: httpx.AsyncClient, model: str, sent: SentRequest, output_tokens: int) -> None:
        t_send = time.monotonic()
        acc = StreamTiming(t_send)
        status: Status = "error"
        error = ""
        try:
            async with asyncio.timeout(self.request_timeout_s):
                status, error = await self._stream(client, self._body(model, sent, output_tokens), acc)
            if status == "ok" and acc.received < output_tokens:
                status, error = "incomplete", f"stream ended after {acc.received} of {output_tokens} tokens"
        except asyncio.CancelledError:
            self._record(sent, output_tokens, acc, "cancelled", "the load generator was stopped")
            raise
        except (TimeoutError, httpx.TimeoutException) as err:
            status, error = "timeout", f"{type(err).__name__}: {err}"[:300]
        except (httpx.HTTPError, OSError) as err:
            status, error = "error", f"{type(err).__name__}: {err}"[:300]
        self._record(sent, output_tokens, acc, status, error)

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, Any], acc: StreamTiming) -> tuple[Status, str]:
        async with client.stream("POST", f"{self.url}/v1/completions", json=body) as resp:
            acc.http_status = resp.status_code
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return "http_error", f"HTTP {resp.status_code}: {text[:300]}"
            async for data in resp.aiter_bytes():
                acc.feed(data, time.monotonic())
                if acc.sse.error is not None:
                    return "stream_error", acc.sse.error
                if acc.sse.done:
                    return "ok", ""
            return "ok", ""  # the stream ended without [DONE]: judged by the token count

    def _record(self, sent: SentRequest, output_tokens: int, acc: StreamTiming, status: Status, error: str) -> None:
        now = time.monotonic()
        record = RequestRecord(
            index=sent.index,
            arrival_s=sent.arrival_s,
            sent_at_s=sent.sent_at_s,
            prompt_tokens=sent.prompt_tokens,
            output_tokens=output_tokens,
            received_tokens=acc.received,
            finished_at_s=self.elapsed_s(now),
            ttft_s=acc.ttft_s(),
            mean_tbt_s=acc.mean_tbt_s(),
            e2e_s=now - acc.t_send,
            status=status,
            http_status=acc.http_status,
            error=error,
        )
        with self._lock:
            self._done.append(record)
            self._in_flight -= 1


async def _wait_until(stop: asyncio.Event, due_mono: float) -> bool:
    """Sleep until ``due_mono`` (monotonic s); False if ``stop`` was set first."""
    delay = due_mono - time.monotonic()
    if stop.is_set():
        return False
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
    return not stop.is_set()


async def _acquire(sem: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take a concurrency slot; False (no slot held) if ``stop`` was set first."""
    if not sem.locked():
        await sem.acquire()
        return True
    acquire = asyncio.create_task(sem.acquire())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([acquire, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if stop.is_set():
        if acquire.done() and not acquire.cancelled():
            sem.release()
        acquire.cancel()
        return False
    return True


async def _drain(tasks: set[asyncio.Task[None]], stop: asyncio.Event, timeout_s: float) -> None:
    """Wait until every task is done, ``stop`` is set or ``timeout_s`` (wall s) has passed."""
    deadline = time.monotonic() + timeout_s
    waiter = asyncio.create_task(stop.wait())
    try:
        while tasks and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "%d requests still in flight %.0f s after the last send: cancelled", len(tasks), timeout_s
                )
                break
            await asyncio.wait([*tasks, waiter], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
