"""Load generator: replay a workload against an OpenAI-compatible completions endpoint, streaming.

Each request of a ``Trace`` (arrival time, prompt length, output length; a scenario's trace window or
synthetic workload, see ``greenrl.workload``) is sent at its arrival time divided by ``time_scale``
(wall seconds; use the twin's ``--time-scale``) as ``POST /v1/completions`` with

* ``prompt``: a list of exactly ``input_tokens`` token ids (vLLM and the twin count a list of ids
  exactly; the ids are drawn per request from a seeded generator, so prompts share no prefix that a
  prefix cache could reuse),
* ``max_tokens`` = ``output_tokens`` with ``ignore_eos: true`` (every request generates all of them),
* ``stream: true`` with ``stream_options: {include_usage: true, continuous_usage_stats: true}``.

Client-side timing, per request, in wall seconds: TTFT is from just before the request is sent to the
first chunk that carries a token; the mean time between tokens is (last token - first token) / (tokens
- 1). One SSE chunk may carry more than one token (vLLM can batch its stream): a chunk's token count is
the increase of its cumulative ``usage.completion_tokens`` when the server sends it (vLLM does with
``continuous_usage_stats``), else 1 per chunk with ``choices``; a final usage chunk that reports more
tokens than were counted adds the rest at its arrival. Concurrency is bounded by a semaphore (a
request whose slot is not free waits, so it is sent late; ``sent_at_s`` shows it), and every wait has a
deadline: connect and read timeouts, a per-request limit and a drain limit after the last send.

``LoadGenerator.run()`` is the asyncio core; ``start()`` / ``sent()`` / ``records()`` / ``stop()`` run it
in a background thread with its own event loop, for synchronous callers such as ``LiveNode``.
``python -m greenrl.live.loadgen`` replays a scenario's window and prints a summary.

Public names: LoadGenerator, RequestRecord, RequestSlo, SentRequest, main, scenario_trace, summarize.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.workload import Trace

__all__ = [
    "LoadGenerator",
    "RequestRecord",
    "RequestSlo",
    "SentRequest",
    "main",
    "scenario_trace",
    "summarize",
]

logger = logging.getLogger(__name__)

Status = Literal["ok", "incomplete", "http_error", "stream_error", "timeout", "error", "cancelled"]


@dataclass(frozen=True, slots=True)
class SentRequest:
    """A request handed to the server.

    Attributes:
        index: its row in the workload.
        arrival_s: its arrival time in the workload (workload s; wall = arrival_s / time_scale).
        sent_at_s: when it was sent (wall s since the generator started).
        prompt_tokens: prompt length (tokens).
    """

    index: int
    arrival_s: float
    sent_at_s: float
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The outcome of one request, measured at the client. Instants and durations are wall seconds.

    Attributes:
        index, arrival_s, sent_at_s, prompt_tokens: as in ``SentRequest``.
        output_tokens: tokens asked for (``max_tokens``).
        received_tokens: tokens received.
        finished_at_s: when the outcome was known (wall s since the generator started).
        ttft_s: time to the first token (s), None without one.
        mean_tbt_s: mean time between tokens (s), None with fewer than 2 tokens.
        e2e_s: from sending to the outcome (s).
        status: ``ok`` (every token received), ``incomplete`` (the stream ended early), ``http_error``
            (non-200 answer), ``stream_error`` (an error object or bad JSON in the stream), ``timeout``,
            ``error`` (transport failure) or ``cancelled`` (the generator was stopped).
        http_status: the HTTP status, None if there was no answer.
        error: what went wrong (empty when ``ok``).
    """

    index: int
    arrival_s: float
    sent_at_s: float
    prompt_tokens: int
    output_tokens: int
    received_tokens: int
    finished_at_s: float
    ttft_s: float | None
    mean_tbt_s: float | None
    e2e_s: float
    status: Status
    http_status: int | None
    error: str


@dataclass(frozen=True, slots=True)
class RequestSlo:
    """A request's SLO, as the simulator defines it (``greenrl.sim.SloSpec``), on server-time latencies.

    A request meets it when it got every token, its TTFT <= max(``ttft_floor_s``, ``ttft_prefill_multiple``
    x its prefill alone at the fastest configuration) and its mean time between tokens <= ``tbt_mean_s``.
    Client-side wall times are multiplied by ``time_scale`` first (server s per wall s).

    Attributes:
        ttft_floor_s, ttft_prefill_multiple, tbt_mean_s: the scenario's ``slo`` section (s, -, s).
        prefill_alone_s: prefill latency of a prompt alone at the fastest configuration (s); None: 0.
    """

    ttft_floor_s: float = 0.5
    ttft_prefill_multiple: float = 5.0
    tbt_mean_s: float = 0.1
    prefill_alone_s: Callable[[int], float] | None = None

    @classmethod
    def from_scenario(cls, scenario: Any) -> RequestSlo:
        """The SLO of a ``Scenario`` (or scenario name), with the surrogate's prefill time at the largest TP."""
        from greenrl.catalog import load_gpu
        from greenrl.env.scenario import Scenario, load_scenario
        from greenrl.surrogate import StepBatch, Surrogate

        s: Scenario = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
        surrogate, gpu = Surrogate(), load_gpu(s.node.gpu)
        replica = None
        for tp in (8, 4, 2, 1):  # the fastest configuration: the largest TP that fits, as SimNode does
            if tp > s.node.gpus:
                continue
            try:
                replica = surrogate.replica(s.node.model, gpu, tp, s.node.stack)
                break
            except InputError:
                continue
        cache: dict[int, float] = {}

        def prefill_alone_s(prompt_tokens: int) -> float:
            if replica is None:
                return 0.0
            if prompt_tokens not in cache:
                batch = StepBatch.prefill(1.0, float(prompt_tokens))
                cache[prompt_tokens] = float(np.asarray(replica.step(batch).latency_s))
            return cache[prompt_tokens]

        slo = s.slo
        return cls(slo.ttft_floor_s, slo.ttft_prefill_multiple, slo.tbt_mean_s, prefill_alone_s)

    def ttft_slo_s(self, prompt_tokens: int) -> float:
        """The TTFT bound of a prompt of ``prompt_tokens`` tokens (server s)."""
        alone = self.prefill_alone_s(prompt_tokens) if self.prefill_alone_s else 0.0
        return max(self.ttft_floor_s, self.ttft_prefill_multiple * alone)

    def met(self, record: RequestRecord, time_scale: float = 1.0) -> bool:
        """Whether a finished request met its SLO (``time_scale``: server s per wall s)."""
        if record.status != "ok" or record.ttft_s is None:
            return False
        if record.ttft_s * time_scale > self.ttft_slo_s(record.prompt_tokens):
            return False
        return record.mean_tbt_s is None or record.mean_tbt_s * time_scale <= self.tbt_mean_s


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
        acc = _Stream(t_send)
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

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, Any], acc: _Stream) -> tuple[Status, str]:
        async with client.stream("POST", f"{self.url}/v1/completions", json=body) as resp:
            acc.http_status = resp.status_code
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return "http_error", f"HTTP {resp.status_code}: {text[:300]}"
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return "ok", ""
                try:
                    chunk = json.loads(data)
                except ValueError:
                    return "stream_error", f"not JSON: {data[:200]}"
                if not isinstance(chunk, dict):
                    return "stream_error", f"not a JSON object: {data[:200]}"
                if chunk.get("object") == "error" or "error" in chunk:
                    return "stream_error", json.dumps(chunk)[:300]
                acc.add(chunk, time.monotonic())
            return "ok", ""  # the stream ended without [DONE]: judged by the token count

    def _record(self, sent: SentRequest, output_tokens: int, acc: _Stream, status: Status, error: str) -> None:
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


class _Stream:
    """Token counts and times of one streamed response."""

    def __init__(self, t_send: float) -> None:
        self.t_send = t_send
        self.received = 0
        self.http_status: int | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, chunk: dict[str, Any], at: float) -> None:
        usage = chunk.get("usage")
        cumulative = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(cumulative, int) and not isinstance(cumulative, bool):
            new = max(cumulative - self.received, 0)
        else:
            new = 1 if chunk.get("choices") else 0
        if new:
            self.received += new
            self.last_at = at
            if self.first_at is None:
                self.first_at = at

    def ttft_s(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.t_send

    def mean_tbt_s(self) -> float | None:
        if self.first_at is None or self.last_at is None or self.received < 2:
            return None
        return (self.last_at - self.first_at) / (self.received - 1)


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


# ---------------------------------------------------------------------------------------- summary


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(
    records: Sequence[RequestRecord], slo: RequestSlo | None = None, time_scale: float = 1.0
) -> dict[str, Any]:
    """Counts, TTFT / TBT percentiles (server s: wall x ``time_scale``) and SLO attainment of a run.

    SLO attainment is the share of the requests sent (every record) that met ``slo``; a request that
    failed or did not finish counts as missed.

    Example:
        >>> r = RequestRecord(0, 0.0, 0.0, 10, 2, 2, 0.3, 0.1, 0.2, 0.3, "ok", 200, "")
        >>> s = summarize([r], RequestSlo(0.5, 0.0, 0.25))
        >>> s["completed"], s["ttft_p50_s"], s["slo_attainment"]
        (1, 0.1, 1.0)
    """
    ok = [r for r in records if r.status == "ok"]
    ttft = [r.ttft_s * time_scale for r in ok if r.ttft_s is not None]
    tbt = [r.mean_tbt_s * time_scale for r in ok if r.mean_tbt_s is not None]
    by_status: dict[str, int] = {}
    for r in records:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    out: dict[str, Any] = {
        "sent": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "by_status": by_status,
        "prompt_tokens_sent": int(sum(r.prompt_tokens for r in records)),
        "output_tokens_received": int(sum(r.received_tokens for r in records)),
        "time_scale": time_scale,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tbt_p50_s": _pct(tbt, 50),
        "tbt_p99_s": _pct(tbt, 99),
    }
    if slo is not None:
        met = sum(slo.met(r, time_scale) for r in records)
        out["slo_met"] = int(met)
        out["slo_attainment"] = met / len(records) if records else 1.0
    return out


# ---------------------------------------------------------------------------------------- CLI


def scenario_trace(scenario: Any, window: str = "eval:0", seed: int = 0) -> Trace:
    """A scenario's request window: ``eval:I`` (the I-th held-out window) or ``train`` (drawn from ``seed``).

    Raises:
        InputError: on an unknown window spec.
    """
    from greenrl.env.scenario import Scenario, load_scenario
    from greenrl.env.serving_env import episode_workload

    s: Scenario = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
    if window == "train":
        trace: Trace = episode_workload(s, "train", 0)(np.random.default_rng(seed))
        return trace
    kind, _, index = window.partition(":")
    if kind != "eval" or not index.isdigit():
        raise InputError("--window", "window", f"unknown window {window!r}", "use eval:0, eval:1, ... or train")
    trace = episode_workload(s, "eval", int(index))(np.random.default_rng(seed))
    return trace


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.live.loadgen", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="server or proxy base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--scenario", default="tiny", help="scenario name in envs/ or a YAML path (default: tiny)")
    p.add_argument("--window", default="eval:0", help="eval:I (held-out window I) or train (default: eval:0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the train window and the prompt ids (default: 0)")
    p.add_argument("--time-scale", type=float, default=1.0, help="workload s per wall s, as the twin's (default: 1)")
    p.add_argument("--duration-s", type=float, default=None, help="send requests arriving before this (workload s)")
    p.add_argument("--max-concurrency", type=int, default=256, help="most requests in flight (default: 256)")
    p.add_argument("--model", default=None, help="model name (default: the server's first in /v1/models)")
    p.add_argument("--request-timeout-s", type=float, default=600.0, help="longest request, wall s (default: 600)")
    p.add_argument("--drain-timeout-s", type=float, default=60.0, help="wait after the last send, wall s (default: 60)")
    p.add_argument("--json", default=None, help="write one JSON line per request here (atomically)")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Replay a scenario's window against a server; print a summary (and per-request JSON lines)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from greenrl.env.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if args.duration_s is not None and not args.duration_s > 0:
        raise InputError("--duration-s", "duration_s", f"must be > 0, got {args.duration_s}", "pass e.g. 60")
    trace = scenario_trace(scenario, args.window, args.seed)
    gen = LoadGenerator(
        args.url,
        trace,
        model=args.model,
        time_scale=args.time_scale,
        max_concurrency=args.max_concurrency,
        duration_s=args.duration_s,
        request_timeout_s=args.request_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
        seed=args.seed,
    )
    interrupted = False
    try:
        asyncio.run(gen.run())
    except KeyboardInterrupt:
        interrupted = True
    records = sorted(gen.records(), key=lambda r: r.index)
    summary = summarize(records, RequestSlo.from_scenario(scenario), args.time_scale)
    summary.update(trace=trace.name, wall_s=round(gen.elapsed_s(), 3), interrupted=interrupted)
    if args.json:
        atomic_write_text(args.json, "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))
        summary["json"] = args.json
    print(json.dumps(summary, indent=1))
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
