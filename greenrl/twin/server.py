"""The twin's HTTP server: vLLM's OpenAI-compatible protocol in front of a ``LiveSim``.

``TwinServer`` serves ``GET /health``, ``GET /metrics``, ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` (streaming or not; request checks and response shapes in ``protocol``) and
the twin-only ``POST /greenrl/knobs`` and ``GET /greenrl/state``. A driver task advances the simulation
with the wall clock (times ``time_scale``) and each request's handler sends its tokens when the simulated
request produces them; a request whose client goes away is aborted. Prompt tokens are counted by the live
path's rule (``greenrl.live.tokens``); errors are vLLM's error object (``greenrl.live.http.error_body``).
See ``docs/twin.md``.

Public names: TwinServer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenrl.errors import InputError
from greenrl.live.http import (
    HttpError,
    HttpListener,
    Request,
    end_chunks,
    error_body,
    error_object,
    head,
    json_object,
    respond,
    send,
    sse_event,
    write_chunk,
)
from greenrl.twin.livesim import CapacityError, LiveSim
from greenrl.twin.prometheus import render_metrics
from greenrl.twin.protocol import TOKEN_TEXT, Shapes, parse_ask

__all__ = ["TwinServer"]

logger = logging.getLogger(__name__)

_GENERATE_PATHS = ("/v1/completions", "/v1/chat/completions")
"""POST paths that generate tokens."""


@dataclass(slots=True)
class _Watch:
    """A request being served.

    The driver pushes its new token times (simulated s) to ``queue``, and ``("gone", [])`` once
    ``client_gone()`` tells that its client has closed the connection.
    """

    queue: asyncio.Queue[tuple[str, list[float]]]
    seen: int = 0
    last_t: float = 0.0
    client_gone: Callable[[], bool] | None = None
    gone: bool = False


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
        allow_control: serve ``POST /greenrl/knobs`` (else 403): whoever reaches the twin may then set its knobs.
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
        allow_control: bool = False,
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
        self.allow_control = allow_control
        self._watch: dict[int, _Watch] = {}
        self._listener = HttpListener(self._dispatch, host, port)
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
        self.port = await self._listener.start()
        self._driver = asyncio.create_task(self._drive())

    async def close(self) -> None:
        """Stop listening, end open connections and the driver."""
        await self._listener.close()
        if self._driver is not None:
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)

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
            if not w.gone and w.client_gone is not None and w.client_gone():
                w.gone = True  # its handler aborts the request
                w.queue.put_nowait(("gone", []))
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
            if req.method == "POST" and req.path in _GENERATE_PATHS:
                return await self._generate(req, writer, chat=req.path == "/v1/chat/completions")
            handler = routes.get((req.method, req.path))
            if handler is None:
                known = {p for _, p in routes} | set(_GENERATE_PATHS)
                status = 405 if req.path in known else 404
                raise HttpError(status, f"{req.method} {req.path} is not served by the twin")
            status, body, ctype = handler(req)
        except HttpError as err:
            status, body, ctype = err.status, err.body(), "application/json"
        except InputError as err:
            status, body, ctype = 400, error_body(400, str(err), err.field), "application/json"
        await respond(writer, status, body, ctype, keep)
        return keep

    def _health(self, req: Request) -> tuple[int, bytes, str]:
        if self.failed.is_set():
            return 503, error_body(503, "the simulation driver failed"), "application/json"
        return 200, b"", "text/plain; charset=utf-8"

    def _metrics(self, req: Request) -> tuple[int, bytes, str]:
        return 200, render_metrics(self.sim, self.model_name).encode(), "text/plain; version=0.0.4; charset=utf-8"

    def _models(self, req: Request) -> tuple[int, bytes, str]:
        name = self.model_name
        card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "greenrl-twin"}
        card.update(root=name, parent=None, max_model_len=self.sim.max_model_len_tokens, permission=[])
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
            "finished_total": sim.totals.finished,
            "slo_met_total": sim.totals.slo_met,  # judged in simulated time: honest at any --time-scale
        }
        return 200, json.dumps(out).encode(), "application/json"

    def _knobs(self, req: Request) -> tuple[int, bytes, str]:
        if not self.allow_control:
            msg = "knob changes are off: start the twin with --allow-control (anyone who reaches it may set knobs)"
            return 403, error_body(403, msg), "application/json"
        body = json_object(req.body, "/greenrl/knobs")
        self.step()  # bring the simulation to now, so the change starts now
        requested = self.sim.apply(**body)
        out = {"requested_knobs": dataclasses.asdict(requested), "knobs": dataclasses.asdict(self.sim.knobs)}
        return 200, json.dumps(out).encode(), "application/json"

    async def _generate(self, req: Request, writer: asyncio.StreamWriter, *, chat: bool) -> bool:
        """Serve ``/v1/completions`` or ``/v1/chat/completions``.

        Injects the request, sends its tokens, aborts it if the client goes away first.
        """
        keep = req.keep_alive
        try:
            body = json_object(req.body, req.path)
            ask = parse_ask(body, chat=chat, model_name=self.model_name, max_model_len=self.sim.max_model_len_tokens)
            try:
                rid = self.sim.inject(ask.prompt_tokens, ask.max_tokens, at_s=self.sim_time())
            except CapacityError as err:
                raise HttpError(503, str(err)) from err
        except HttpError as err:
            await respond(writer, err.status, err.body(), "application/json", keep)
            return keep
        except InputError as err:
            await respond(writer, 400, error_body(400, str(err), err.field), "application/json", keep)
            return keep
        watch = _Watch(asyncio.Queue(), client_gone=req.client_gone)
        self._watch[rid] = watch
        done = False
        try:
            done = await self._serve_tokens(req, writer, rid, watch, Shapes(ask, self.model_name))
        finally:
            if not done:
                self._watch.pop(rid, None)
                self.sim.abort(rid)
        return keep

    async def _next_event(self, watch: _Watch) -> tuple[str, list[float]]:
        """The next event of a served request; raises ``ConnectionError`` once its client has gone away."""
        kind, times = await watch.queue.get()
        if kind == "gone":
            raise ConnectionError("the client went away")
        return kind, times

    async def _serve_tokens(
        self, req: Request, writer: asyncio.StreamWriter, rid: int, watch: _Watch, shapes: Shapes
    ) -> bool:
        """Send the tokens of request ``rid`` as the simulation produces them; True once all are sent.

        Raises:
            ConnectionError: the client went away (the caller aborts the request).
        """
        loop = asyncio.get_running_loop()
        ask, keep = shapes.ask, req.keep_alive
        emitted = 0
        started = False

        async def send_chunk(payload: dict[str, Any] | str) -> None:
            await write_chunk(writer, sse_event(payload))

        while emitted < ask.max_tokens:
            kind, times = await self._next_event(watch)
            if kind == "rejected":
                msg = f"the prompt ({ask.prompt_tokens} tokens) plus max_tokens ({ask.max_tokens}) exceed the KV cache"
                if not started:
                    await respond(writer, 400, error_body(400, msg, "max_tokens"), "application/json", keep)
                    return True
                await send_chunk(error_object(400, msg, "max_tokens"))
                break
            for t in times:
                if emitted >= ask.max_tokens:
                    break
                delay = self.wall_time(t) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                emitted += 1
                if not ask.stream:
                    continue
                if not started:
                    headers = [
                        ("Content-Type", "text/event-stream; charset=utf-8"),
                        ("Cache-Control", "no-cache"),
                        ("Transfer-Encoding", "chunked"),
                        ("Connection", "keep-alive" if keep else "close"),
                    ]
                    await send(writer, head(200, headers))
                    started = True
                    if ask.chat:  # vLLM opens a chat stream with the assistant's role, at the first output
                        await send_chunk(shapes.chunk(None, None, role=True))
                finish = "length" if emitted == ask.max_tokens else None
                await send_chunk(shapes.chunk(TOKEN_TEXT, finish))
            if kind == "finished":
                break
        if not ask.stream:
            await respond(writer, 200, json.dumps(shapes.whole(emitted, "length")).encode(), "application/json", keep)
            return True
        if ask.include_usage:
            await send_chunk(shapes.usage_chunk(emitted))
        await send_chunk("[DONE]")
        await end_chunks(writer)
        return True
