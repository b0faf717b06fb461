"""Digital twin: a loopback HTTP server that speaks vLLM's OpenAI-compatible protocol, served by the simulator.

``python -m greenrl.twin --port 8000 --scenario tiny --time-scale 10`` serves ``GET /health``,
``GET /metrics`` (vLLM's Prometheus names), ``GET /v1/models``, ``POST /v1/completions`` (streaming
or not) and two twin-only endpoints, ``POST /greenrl/knobs`` and ``GET /greenrl/state``. Every
completion is injected into a ``SimNode`` as a live arrival; its tokens are sent when the simulated
request produces them, mapped to wall time by ``--time-scale`` (simulated seconds per wall second).
See ``docs/twin.md`` for the protocol subset, the injection design and its limits.

The node starts in the scenario's initial knobs, or in those given with ``--tp``, ``--replicas``,
``--max-num-seqs``, ``--sm-clock-mhz`` and ``--prefill-sm-clock-mhz`` (so a launcher can start it like
``vllm serve`` at a given TP).

Only the standard library, numpy, the simulator and ``greenrl.live.http`` are used (no optional dependency).

Public names: CapacityError, LiveSim, RequestProgress, TwinServer, main, prompt_token_count,
render_metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, Knobs, NodeSnapshot
from greenrl.errors import InputError, exit_on_input_error
from greenrl.live.http import (
    HttpError,
    Request,
    end_chunks,
    error_body,
    head,
    json_object,
    respond,
    serve_connection,
    write_chunk,
)
from greenrl.sim import SimConfig, SimNode
from greenrl.sim import kernel as K
from greenrl.surrogate import StepBatch, Surrogate
from greenrl.workload import Trace

__all__ = [
    "CapacityError",
    "LiveSim",
    "RequestProgress",
    "TwinServer",
    "main",
    "prompt_token_count",
    "render_metrics",
]

logger = logging.getLogger(__name__)

FAR_S = 1.0e12
"""Arrival time of a placeholder row (s): far beyond any run, so the kernel never reaches it."""

_STATES = {K.FUTURE: "pending", K.WAITING: "waiting", K.RUNNING: "running", K.FINISHED: "finished"}
_STATES[K.REJECTED] = "rejected"

_TOKEN_TEXT = " tok"


class CapacityError(RuntimeError):
    """Every preallocated request row of a ``LiveSim`` is used (the twin answers HTTP 503)."""


@dataclass(frozen=True, slots=True)
class RequestProgress:
    """Where one injected request stands in simulated time.

    Attributes:
        rid: row of the request in the simulator.
        state: ``pending`` (injected, arrival not yet simulated), ``waiting``, ``running``, ``finished``
            or ``rejected`` (its context can never fit a replica's KV cache).
        arrival_s: simulated arrival time (s).
        prompt_tokens, output_tokens: prompt length and requested output length (tokens).
        generated: output tokens produced so far (tokens).
        first_token_at_s, last_token_at_s, finished_at_s: simulated instants (s), -1 before they happen.
    """

    rid: int
    state: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    generated: int
    first_token_at_s: float
    last_token_at_s: float
    finished_at_s: float


@dataclass(slots=True)
class _Totals:
    """Cumulative counters since the twin started (what Prometheus counters and histograms expose)."""

    arrived: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    finished: int = 0
    rejected: int = 0
    ttft_sum_s: float = 0.0
    itl_sum_s: float = 0.0
    ttft_hist: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1))
    itl_hist: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(len(VLLM_ITL_BUCKETS_S) + 1))


class LiveSim:
    """A ``SimNode`` that accepts requests arriving while it runs.

    ``SimNode`` replays a fixed ``Trace`` given at reset, consuming arrivals in row order through the
    kernel's ``G_NEXT_ARRIVAL`` cursor. ``LiveSim`` resets it on a trace of ``capacity`` placeholder
    rows that arrive at ``FAR_S`` (never reached), and ``inject`` fills the next free row in place
    (arrival time, prompt and output lengths, TTFT SLO) with an arrival time no earlier than the
    simulated now nor the previous injection, so rows stay sorted by arrival and the kernel sees each
    one before it advances past it. Rows are never reused: ``capacity`` bounds the requests over the
    twin's lifetime.

    Args:
        config: the simulated node.
        capacity: request rows to preallocate (about 150 bytes each).
        surrogate: fitted surrogate (default: the packaged parameters).

    Raises:
        InputError: on a capacity below 1 or a configuration the node cannot run.
    """

    def __init__(self, config: SimConfig, capacity: int = 100_000, surrogate: Surrogate | None = None) -> None:
        if capacity < 1:
            raise InputError("LiveSim", "capacity", f"must be >= 1, got {capacity}", "pass e.g. 100000")
        surrogate = surrogate or Surrogate()
        ones = np.ones(capacity, dtype=np.int64)
        placeholders = Trace("live", np.full(capacity, FAR_S), ones, ones, FAR_S)
        self.node = SimNode(config, placeholders, surrogate)
        self.node.reset()
        self.capacity = capacity
        self._fastest = surrogate.replica(config.model, self.node.gpu, self.node.feasible_tp[-1], config.stack)
        self._next = 0
        self._last_arrival_s = 0.0
        self._requested: Knobs = self.node.knobs
        self.totals = _Totals()
        self.energy_per_gpu_j = np.zeros(config.gpus)
        self.last: NodeSnapshot | None = None

    @classmethod
    def from_scenario(cls, scenario: str, capacity: int = 100_000, initial: dict[str, int] | None = None) -> LiveSim:
        """The node of a scenario (a name in ``envs/`` or a YAML path), fed live instead of by its trace.

        Args:
            scenario: scenario name or YAML path.
            capacity: request rows to preallocate.
            initial: knobs to start in instead of the scenario's initial ones (``tp``, ``replicas``,
                ``max_num_seqs``, ``sm_clock_mhz``, ``prefill_sm_clock_mhz``; any subset). A new ``tp``
                without ``replicas`` gets ``gpus // tp`` replicas.

        Raises:
            InputError: naming the flag (``--tp``, ...) when the knobs cannot run on the scenario's node.
        """
        from greenrl.env.scenario import load_scenario
        from greenrl.env.serving_env import build_node

        config = build_node(load_scenario(scenario)).config
        given = {k: v for k, v in (initial or {}).items() if v is not None}
        if given:
            knobs = dataclasses.replace(config.initial, **given)
            if "tp" in given and "replicas" not in given:
                knobs = dataclasses.replace(knobs, replicas=max(1, config.gpus // knobs.tp))
            config = dataclasses.replace(config, initial=knobs)
        try:
            return cls(config, capacity)
        except InputError as err:
            if err.where != "initial":
                raise
            flag = "--" + err.field.replace("_", "-")
            raise InputError(flag, err.field, f"{err.problem} (scenario {scenario})", err.fix) from None

    # ------------------------------------------------------------------------------------ state

    @property
    def now_s(self) -> float:
        """Simulated time (s since the twin started)."""
        return self.node.now_s

    @property
    def knobs(self) -> Knobs:
        """The configuration in force now (a new SM clock shows once its latency has passed)."""
        return self.node.knobs

    @property
    def requested_knobs(self) -> Knobs:
        """The configuration last asked for with ``apply``."""
        return self._requested

    @property
    def injected(self) -> int:
        """Rows used so far (requests injected)."""
        return self._next

    def energy_j(self) -> float:
        """Cumulative GPU energy of the node since the twin started (J)."""
        return float(self.energy_per_gpu_j.sum())

    # ------------------------------------------------------------------------------------ requests

    def inject(self, prompt_tokens: int, output_tokens: int, at_s: float | None = None) -> int:
        """Add a request arriving at ``max(at_s, now, previous arrival)``; returns its request id (row).

        Args:
            prompt_tokens: prompt length (tokens), >= 1.
            output_tokens: tokens to generate (tokens), >= 1; generation never stops early (ignore_eos).
            at_s: wanted simulated arrival time (s); default now.

        Raises:
            InputError: on a token count below 1.
            CapacityError: when every preallocated row is used.
        """
        for name, value in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InputError("LiveSim.inject", name, f"must be an integer >= 1, got {value!r}", "pass >= 1 token")
        if self._next >= self.capacity:
            raise CapacityError(f"all {self.capacity} request rows are used; restart the twin with a larger --capacity")
        t = max(self.node.now_s, self._last_arrival_s, -math.inf if at_s is None else float(at_s))
        rid = self._next
        slo = self.node.config.slo
        alone = float(np.asarray(self._fastest.step(StepBatch.prefill(1.0, float(prompt_tokens))).latency_s))
        f, i = self.node.req_f, self.node.req_i
        f[rid, K.RF_ARRIVAL] = t
        f[rid, K.RF_TTFT_SLO] = max(slo.ttft_floor_s, slo.ttft_prefill_multiple * alone)
        i[rid, K.RI_PROMPT] = int(prompt_tokens)
        i[rid, K.RI_OUTPUT] = int(output_tokens)
        self._next = rid + 1
        self._last_arrival_s = t
        return rid

    def abort(self, rid: int) -> None:
        """Cut a request short (client gone): it finishes after at most one more token (>= 1 in all)."""
        self._check_rid(rid)
        i = self.node.req_i
        if i[rid, K.RI_STATE] in (K.FUTURE, K.WAITING, K.RUNNING):
            i[rid, K.RI_OUTPUT] = max(int(i[rid, K.RI_GENERATED]), 1)

    def progress(self, rid: int) -> RequestProgress:
        """Where request ``rid`` stands now."""
        self._check_rid(rid)
        f, i = self.node.req_f[rid], self.node.req_i[rid]
        state = int(i[K.RI_STATE])
        return RequestProgress(
            rid=rid,
            state=_STATES[state],
            arrival_s=float(f[K.RF_ARRIVAL]),
            prompt_tokens=int(i[K.RI_PROMPT]),
            output_tokens=int(i[K.RI_OUTPUT]),
            generated=int(i[K.RI_GENERATED]),
            first_token_at_s=float(f[K.RF_FIRST_TOKEN]),
            last_token_at_s=float(f[K.RF_LAST_TOKEN]),
            finished_at_s=float(f[K.RF_FINISH]) if state in (K.FINISHED, K.REJECTED) else -1.0,
        )

    def _check_rid(self, rid: int) -> None:
        if not 0 <= rid < self._next:
            raise InputError("LiveSim", "rid", f"no injected request {rid}", f"use 0 to {self._next - 1}")

    # ------------------------------------------------------------------------------------ stepping

    def advance_to(self, t_s: float) -> NodeSnapshot | None:
        """Simulate up to ``t_s`` (s); returns the interval's snapshot, or None if ``t_s`` is not ahead."""
        if not t_s > self.node.now_s:
            return None
        snap = self.node.advance(t_s - self.node.now_s)
        tot = self.totals
        tot.arrived += snap.arrived
        tot.prompt_tokens += snap.prompt_tokens_in
        tot.generation_tokens += snap.output_tokens
        tot.preemptions += snap.preemptions
        tot.finished += snap.finished
        tot.rejected += snap.rejected
        first_tokens = float(snap.ttft_hist.sum())
        tot.ttft_hist += snap.ttft_hist
        tot.itl_hist += snap.itl_hist
        tot.ttft_sum_s += snap.ttft_mean_s * first_tokens
        tot.itl_sum_s += snap.tbt_mean_s * max(snap.output_tokens - first_tokens, 0.0)
        self.energy_per_gpu_j += np.asarray(snap.energy_per_gpu_j)
        self.last = snap
        return snap

    def apply(self, **changes: int) -> Knobs:
        """Change some knobs of the last requested configuration and apply it; returns the new request.

        Raises:
            InputError: on an unknown knob, a non-integer value or a configuration the node cannot run.
        """
        names = [f.name for f in dataclasses.fields(Knobs)]
        for key, value in changes.items():
            if key not in names:
                raise InputError("knobs", key, "unknown knob", f"use {', '.join(names)}")
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError("knobs", key, f"expected an integer, got {value!r}", "pass a whole number")
        knobs = dataclasses.replace(self._requested, **changes)
        self.node.apply(knobs)
        self._requested = knobs
        return knobs


def render_metrics(sim: LiveSim, model_name: str) -> str:
    """The twin's ``/metrics`` body: Prometheus text format 0.0.4 with vLLM's metric names.

    Gauges come from the last simulated interval; counters and histograms are cumulative since the
    twin started. Histogram bounds are ``VLLM_TTFT_BUCKETS_S`` / ``VLLM_ITL_BUCKETS_S`` plus ``+Inf``.
    """
    label = 'model_name="{}"'.format(model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
    last, tot = sim.last, sim.totals
    lines: list[str] = []

    def scalar(name: str, kind: str, doc: str, value: float) -> None:
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{label}}} {float(value)!r}"])

    def histogram(name: str, doc: str, bounds: Sequence[float], hist: npt.NDArray[np.float64], total: float) -> None:
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} histogram"])
        cumulative = np.cumsum(hist)
        for le, count in zip([*(repr(float(b)) for b in bounds), "+Inf"], cumulative, strict=True):
            lines.append(f'{name}_bucket{{{label},le="{le}"}} {float(count)!r}')
        lines.append(f"{name}_count{{{label}}} {float(cumulative[-1])!r}")
        lines.append(f"{name}_sum{{{label}}} {float(total)!r}")

    scalar(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        last.running if last else 0,
    )
    scalar(
        "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", last.waiting if last else 0
    )
    scalar(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        last.kv_cache_usage_frac if last else 0.0,
    )
    scalar("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", tot.prompt_tokens)
    scalar("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", tot.generation_tokens)
    scalar("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", tot.preemptions)
    scalar("vllm:request_success_total", "counter", "Count of successfully processed requests.", tot.finished)
    histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        VLLM_TTFT_BUCKETS_S,
        tot.ttft_hist,
        tot.ttft_sum_s,
    )
    histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        VLLM_ITL_BUCKETS_S,
        tot.itl_hist,
        tot.itl_sum_s,
    )
    return "\n".join(lines) + "\n"


def prompt_token_count(prompt: Any) -> int:
    """Prompt length in tokens: the list length for token ids, else the whitespace-separated word count.

    There is no tokenizer in the twin: a text prompt counts one token per whitespace-separated word
    (at least 1).

    Example:
        >>> prompt_token_count("the quick brown fox")
        4
        >>> prompt_token_count([1, 2, 3])
        3

    Raises:
        InputError: on an empty token list, a batch of prompts or anything else.
    """
    if isinstance(prompt, str):
        return max(1, len(prompt.split()))
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        return prompt_token_count(prompt[0])  # a batch of one
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return len(prompt)
    raise InputError(
        "/v1/completions",
        "prompt",
        "must be a string or a non-empty list of token ids (batches are not supported)",
        "send one prompt per request",
    )


# ---------------------------------------------------------------------------------------- HTTP


@dataclass(slots=True)
class _Watch:
    """A request being served: the driver pushes its new token times (simulated s) to ``queue``."""

    queue: asyncio.Queue[tuple[str, list[float]]]
    seen: int = 0
    last_t: float = 0.0


class TwinServer:
    """The twin's HTTP server and simulation driver (asyncio, standard library only).

    A driver task advances ``sim`` every ``tick_s`` wall seconds to the simulated time that
    corresponds to now, ``sim_t = sim_t0 + (wall - wall0) x time_scale``, and hands every served
    request its new token times; each request's handler sleeps until a token's mapped wall time and
    writes it. Tokens therefore leave at most about one tick late.

    Args:
        sim: the live simulator.
        model_name: name served in ``/v1/models``, responses and metric labels.
        time_scale: simulated seconds per wall second (10 runs the node 10x faster than real).
        tick_s: wall seconds between driver steps.
        host, port: where to listen (port 0 picks a free one; see ``port`` after ``start``).
    """

    def __init__(
        self,
        sim: LiveSim,
        *,
        model_name: str,
        time_scale: float = 1.0,
        tick_s: float = 0.02,
        host: str = "127.0.0.1",
        port: int = 8000,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise InputError("--time-scale", "time_scale", f"must be > 0, got {time_scale}", "pass e.g. 10")
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise InputError("--tick-ms", "tick_s", f"must be > 0, got {tick_s}", "pass e.g. 20 ms")
        self.sim = sim
        self.model_name = model_name
        self.time_scale = float(time_scale)
        self.tick_s = float(tick_s)
        self.host = host
        self.port = port
        self._watch: dict[int, _Watch] = {}
        self._conns: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wall0 = 0.0
        self._sim_t0 = 0.0
        self.failed = asyncio.Event()

    # ------------------------------------------------------------------------------------ clock

    def sim_time(self) -> float:
        """The simulated time that corresponds to now (s)."""
        return self._sim_t0 + (asyncio.get_running_loop().time() - self._wall0) * self.time_scale

    def wall_time(self, sim_t: float) -> float:
        """The event-loop time at which simulated instant ``sim_t`` happens (s)."""
        return self._wall0 + (sim_t - self._sim_t0) / self.time_scale

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the driver and listen."""
        self._wall0 = asyncio.get_running_loop().time()
        self._sim_t0 = self.sim.now_s
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=256 * 1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._driver = asyncio.create_task(self._drive())

    async def close(self) -> None:
        """Stop listening, end open connections and the driver."""
        if self._server is not None:
            self._server.close()
        tasks = [*self._conns, *([self._driver] if self._driver else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)

    async def _drive(self) -> None:
        try:
            while True:
                self.step()
                await asyncio.sleep(self.tick_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the simulation driver failed; stopping the twin")
            self.failed.set()

    def step(self) -> None:
        """Advance the simulation to now and pass new tokens, finishes and rejections to their handlers."""
        self.sim.advance_to(self.sim_time())
        for rid, w in list(self._watch.items()):
            p = self.sim.progress(rid)
            if p.generated > w.seen:
                g0, g1 = w.seen, p.generated
                if g0 == 0:
                    # the first token at its own time, the rest spread evenly up to the last one
                    times = [float(t) for t in np.linspace(p.first_token_at_s, p.last_token_at_s, g1)]
                else:
                    frac = np.arange(1, g1 - g0 + 1) / (g1 - g0)
                    times = [float(t) for t in w.last_t + (p.last_token_at_s - w.last_t) * frac]
                w.seen, w.last_t = g1, p.last_token_at_s
                w.queue.put_nowait(("tokens", times))
            if p.state in ("finished", "rejected"):
                w.queue.put_nowait((p.state, []))
                del self._watch[rid]

    # ------------------------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await serve_connection(reader, writer, self._dispatch)
        finally:
            if task is not None:
                self._conns.discard(task)

    async def _dispatch(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; returns whether the connection stays open."""
        routes = {
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/v1/models"): self._models,
            ("POST", "/greenrl/knobs"): self._knobs,
            ("GET", "/greenrl/state"): self._state,
        }
        keep = req.keep_alive
        try:
            if (req.method, req.path) == ("POST", "/v1/completions"):
                return await self._completions(req, writer)
            handler = routes.get((req.method, req.path))
            if handler is None:
                known = {p for _, p in routes} | {"/v1/completions"}
                status = 405 if req.path in known else 404
                raise HttpError(status, f"{req.method} {req.path} is not served by the twin")
            status, body, ctype = handler(req)
        except HttpError as err:
            status, body, ctype = err.status, error_body(err.status, str(err)), "application/json"
        except InputError as err:
            status, body, ctype = 400, error_body(400, str(err)), "application/json"
        await respond(writer, status, body, ctype, keep)
        return keep

    def _health(self, req: Request) -> tuple[int, bytes, str]:
        if self.failed.is_set():
            return 503, error_body(503, "the simulation driver failed"), "application/json"
        return 200, b"", "text/plain; charset=utf-8"

    def _metrics(self, req: Request) -> tuple[int, bytes, str]:
        return 200, render_metrics(self.sim, self.model_name).encode(), "text/plain; version=0.0.4; charset=utf-8"

    def _models(self, req: Request) -> tuple[int, bytes, str]:
        card = {"id": self.model_name, "object": "model", "created": int(time.time()), "owned_by": "greenrl-twin"}
        return 200, json.dumps({"object": "list", "data": [card]}).encode(), "application/json"

    def _state(self, req: Request) -> tuple[int, bytes, str]:
        sim = self.sim
        last = sim.last
        out = {
            "sim_time_s": sim.now_s,
            "time_scale": self.time_scale,
            "knobs": dataclasses.asdict(sim.knobs),
            "requested_knobs": dataclasses.asdict(sim.requested_knobs),
            "reconfiguring": bool(last.reconfiguring) if last else False,
            "gpus": len(sim.energy_per_gpu_j),
            "energy_j": sim.energy_j(),
            "energy_per_gpu_j": [float(e) for e in sim.energy_per_gpu_j],
            "power_w": last.mean_power_w if last else 0.0,
            "running": last.running if last else 0,
            "waiting": last.waiting if last else 0,
            "requests": sim.node.state_counts(),
            "capacity": sim.capacity,
            "injected": sim.injected,
        }
        return 200, json.dumps(out).encode(), "application/json"

    def _knobs(self, req: Request) -> tuple[int, bytes, str]:
        body = json_object(req.body, "/greenrl/knobs")
        self.step()  # bring the simulation to now, so the change starts now
        requested = self.sim.apply(**body)
        out = {"requested_knobs": dataclasses.asdict(requested), "knobs": dataclasses.asdict(self.sim.knobs)}
        return 200, json.dumps(out).encode(), "application/json"

    async def _completions(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        keep = req.keep_alive
        try:
            body = json_object(req.body, "/v1/completions")
            model = body.get("model", self.model_name)
            if model != self.model_name:
                raise HttpError(404, f"The model `{model}` does not exist.")
            if body.get("n", 1) != 1 or body.get("best_of", 1) not in (1, None):
                raise InputError("/v1/completions", "n", "only n = 1 is supported", "send n = 1")
            prompt_tokens = prompt_token_count(body.get("prompt"))
            max_tokens = body.get("max_tokens", 16)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
                raise InputError("/v1/completions", "max_tokens", f"must be an integer >= 1, got {max_tokens!r}", "")
            stream = bool(body.get("stream", False))
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage", False)) if isinstance(options, dict) else False
            try:
                rid = self.sim.inject(prompt_tokens, max_tokens, at_s=self.sim_time())
            except CapacityError as err:
                raise HttpError(503, str(err)) from err
        except HttpError as err:
            await respond(writer, err.status, error_body(err.status, str(err)), "application/json", keep)
            return keep
        except InputError as err:
            await respond(writer, 400, error_body(400, str(err)), "application/json", keep)
            return keep
        watch = _Watch(asyncio.Queue())
        self._watch[rid] = watch
        done = False
        try:
            done = await self._serve_tokens(
                writer, rid, watch, prompt_tokens, max_tokens, stream=stream, include_usage=include_usage, keep=keep
            )
        finally:
            if not done:
                self._watch.pop(rid, None)
                self.sim.abort(rid)
        return keep

    async def _serve_tokens(
        self,
        writer: asyncio.StreamWriter,
        rid: int,
        watch: _Watch,
        prompt_tokens: int,
        max_tokens: int,
        *,
        stream: bool,
        include_usage: bool,
        keep: bool,
    ) -> bool:
        """Send the tokens of request ``rid`` as the simulation produces them; True once all are sent."""
        loop = asyncio.get_running_loop()
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        base["model"] = self.model_name
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + max_tokens}
        usage["completion_tokens"] = max_tokens
        emitted = 0
        started = False

        async def send_chunk(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await write_chunk(writer, f"data: {data}\n\n".encode())

        while emitted < max_tokens:
            kind, times = await watch.queue.get()
            if kind == "rejected":
                msg = f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceed the KV cache"
                if not started:
                    await respond(writer, 400, error_body(400, msg), "application/json", keep)
                    return True
                await send_chunk({"object": "error", "message": msg, "code": 400})
                break
            for t in times:
                if emitted >= max_tokens:
                    break
                delay = self.wall_time(t) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                emitted += 1
                if stream:
                    if not started:
                        headers = [
                            ("Content-Type", "text/event-stream; charset=utf-8"),
                            ("Cache-Control", "no-cache"),
                            ("Transfer-Encoding", "chunked"),
                            ("Connection", "keep-alive" if keep else "close"),
                        ]
                        writer.write(head(200, headers))
                        started = True
                    finish = "length" if emitted == max_tokens else None
                    choice = {"index": 0, "text": _TOKEN_TEXT, "logprobs": None, "finish_reason": finish}
                    choice["stop_reason"] = None
                    await send_chunk({**base, "choices": [choice]})
            if kind == "finished":
                break
        if not stream:
            choice = {"index": 0, "text": _TOKEN_TEXT * emitted, "logprobs": None, "finish_reason": "length"}
            choice["stop_reason"] = None
            out = {**base, "choices": [choice], "usage": {**usage, "completion_tokens": emitted}}
            await respond(writer, 200, json.dumps(out).encode(), "application/json", keep)
            return True
        if include_usage:
            await send_chunk({**base, "choices": [], "usage": {**usage, "completion_tokens": emitted}})
        await send_chunk("[DONE]")
        await end_chunks(writer)
        return True


# ---------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.twin", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    p.add_argument("--scenario", default="tiny", help="scenario name in envs/ or a YAML path (default: tiny)")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second (default: 1)")
    p.add_argument("--capacity", type=int, default=100_000, help="requests over the twin's lifetime (default: 1e5)")
    p.add_argument("--tick-ms", type=float, default=20.0, help="wall ms between simulation steps (default: 20)")
    p.add_argument("--model-name", default=None, help="served model name (default: the scenario's model)")
    p.add_argument("--tp", type=int, default=None, help="initial tensor-parallel degree (default: the scenario's)")
    p.add_argument("--replicas", type=int, default=None, help="initial replicas (default: GPUs // tp)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="initial max_num_seqs (default: the scenario's)")
    p.add_argument("--sm-clock-mhz", type=int, default=None, help="initial SM clock, MHz (default: the scenario's)")
    prefill_help = "initial prefill SM clock, MHz (0: none; default: the scenario's)"
    p.add_argument("--prefill-sm-clock-mhz", type=int, default=None, help=prefill_help)
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return p


async def _serve(server: TwinServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"greenrl twin listening on http://{server.host}:{server.port}", flush=True)
    failed = asyncio.create_task(server.failed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([failed, stopped], return_when=asyncio.FIRST_COMPLETED)
    failed.cancel()
    stopped.cancel()
    await server.close()
    if server.failed.is_set():
        raise SystemExit(1)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the twin until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= args.port <= 65535:
        raise InputError("--port", "port", f"{args.port} is out of range", "use 0 to 65535")
    initial = {"tp": args.tp, "replicas": args.replicas, "max_num_seqs": args.max_num_seqs}
    clocks = {"sm_clock_mhz": args.sm_clock_mhz, "prefill_sm_clock_mhz": args.prefill_sm_clock_mhz}
    sim = LiveSim.from_scenario(args.scenario, args.capacity, initial | clocks)
    sim.advance_to(1e-3)  # compile / load the numba kernel before serving
    server = TwinServer(
        sim,
        model_name=args.model_name or sim.node.config.model,
        time_scale=args.time_scale,
        tick_s=args.tick_ms / 1000.0,
        host=args.host,
        port=args.port,
    )
    asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
