"""Measure one grid point's steady state on a live server: closed-loop load at the cap, then one window.

For a point (batch ``B`` per replica, clock, prompt ``I``, output ``O`` tokens):

1. the knobs go through the node's ``KnobBackend``: ``max_num_seqs = B`` (the twin's knob, or the admission
   proxy's cap on a real node) and the SM clock when the point names one;
2. the load generator keeps ``2 x B x replicas`` requests of ``I`` prompt and ``O`` output tokens in flight
   (all arrive at once; its concurrency bound refills a finished slot at once). ``B`` per replica run and as
   many wait behind the cap, so the server (or the proxy) replaces a finished request at once, not after a
   client round trip: ML.ENERGY's steady state, ``B`` always running. The first wave is staggered (its
   ``k``-th of ``n`` requests generates ``O (k + 1) / n`` tokens), so that the requests replacing it finish
   evenly spread in time, as in a steady state, not all together;
3. once the first wave has finished and ``warmup_s`` more server seconds have passed, one window of
   ``window_s`` server seconds between two instants (``greenrl.live.snapshot.read_instant``: a backend
   reading and a ``/metrics`` scrape): generated tokens and the ITL histogram from ``/metrics`` differences,
   energy from the per-GPU energy counters (NVML, or the twin's), the running batch as the time average of
   the ``running`` gauge sampled every ``poll_s``. A window is kept only if that mean agrees with the
   sequences decoding (the window's sum of inter-token gaps over its span); otherwise the node ran short of
   requests in it (a client or server too slow to refill the queue) and another window is measured;
4. the load stops and the server drains before the next point.

Times are server time: the twin's simulated clock, or the wall clock on a real node.

Public names: MeasureError, closed_loop, measure_point.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from greenrl.core import KnobBackend, Knobs
from greenrl.live.loadgen import LoadGenerator
from greenrl.live.metrics import VllmMetrics, diff
from greenrl.live.profile.grid import GridPoint, PointResult
from greenrl.live.snapshot import Instant, read_instant
from greenrl.workload.trace import Trace

__all__ = ["MeasureError", "closed_loop", "measure_point"]

logger = logging.getLogger(__name__)

REQUESTS_PER_POINT = 100_000
"""Requests the closed loop may send at one point; it stops long before on any sane window."""


class MeasureError(RuntimeError):
    """A point could not be measured: the knobs did not take, the load failed or the server did not drain."""


def _wait(pred: Callable[[], bool], timeout_s: float, what: str, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise MeasureError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def closed_loop(point: GridPoint, slots: int, n: int = REQUESTS_PER_POINT) -> Trace:
    """``n`` requests of the point's shape, all arriving at t = 0 (the concurrency bound paces them).

    The first ``slots`` (the first wave) are staggered: the ``k``-th generates ``ceil(O (k + 1) / slots)`` tokens.

    Example:
        >>> closed_loop(GridPoint(4, None, 100, 8), 4, n=6).output_tokens.tolist()
        [2, 4, 6, 8, 8, 8]
    """
    outputs = np.full(n, point.output_tokens, dtype=np.int64)
    first = min(slots, n)
    outputs[:first] = np.ceil(point.output_tokens * np.arange(1, first + 1) / slots).astype(np.int64)
    return Trace(
        f"profile-b{point.batch}-i{point.input_tokens}-o{point.output_tokens}",
        np.zeros(n),
        np.full(n, point.input_tokens, dtype=np.int64),
        outputs,
        1.0,
    )


def measure_point(
    backend: KnobBackend,
    scrape: Callable[[], VllmMetrics],
    url: str,
    point: GridPoint,
    base: Knobs,
    *,
    warmup_s: float,
    window_s: float,
    poll_s: float = 0.05,
    timeout_s: float = 120.0,
    tries: int = 3,
    steady_tol: float = 0.05,
    model: str | None = None,
    seed: int = 0,
) -> PointResult:
    """Set the point's knobs, hold its load, measure one window; see the module docstring.

    Args:
        backend: the node's knobs, clock and energy (``TwinBackend`` or ``GpuBackend``).
        scrape: reads the server's ``/metrics``.
        url: where the load goes: the twin, or the admission proxy in front of vLLM.
        point: the configuration.
        base: the knobs in force (layout, clock when the point leaves it).
        warmup_s: server seconds to let the load settle.
        window_s: server seconds measured.
        poll_s: wall seconds between samples of the running gauge.
        timeout_s: wall seconds any one wait may take.
        tries: windows to measure before giving up on a steady state.
        steady_tol: largest relative gap between the running gauge's mean and the sequences decoding (ITL sum /
            window), past which a window is not a steady state (the node ran short of requests) and is measured
            again.
        model: served model name (default: the server's first).
        seed: seeds the prompt token ids.

    Raises:
        MeasureError: see the class.
    """
    knobs = dataclasses.replace(base, max_num_seqs=point.batch)
    changed = ["max_num_seqs"]
    if point.sm_clock_mhz is not None:
        knobs = dataclasses.replace(knobs, sm_clock_mhz=point.sm_clock_mhz)
        changed.append("sm_clock_mhz")
    backend.apply(knobs, changed)

    def in_force() -> bool:
        k = backend.read().knobs
        return k is None or all(getattr(k, name) == getattr(knobs, name) for name in changed)

    _wait(in_force, timeout_s, f"the knobs {changed} to take effect", poll_s)
    slots = point.batch * base.replicas
    gen = LoadGenerator(
        url,
        closed_loop(point, slots),
        model=model,
        max_concurrency=2 * slots,
        request_timeout_s=timeout_s * 10,
        drain_timeout_s=1.0,
        seed=seed,
    )
    gen.start()
    try:
        _wait(lambda: len(gen.sent()) >= 2 * slots or gen.done, timeout_s, f"{2 * slots} requests in flight", poll_s)
        _wait(lambda: _first_wave_done(gen, slots), timeout_s, "the staggered first wave to finish", poll_s)
        t_wave = backend.read().server_time_s
        _wait(lambda: backend.read().server_time_s >= t_wave + warmup_s, timeout_s, "the warm-up", poll_s)
        for attempt in range(1, tries + 1):
            result = _result(point, *_window(backend, scrape, gen, window_s, poll_s, timeout_s), base.replicas)
            if abs(result.decoding / result.mean_running - 1.0) <= steady_tol:
                break
            problem = (
                f"not a steady state: {result.mean_running:.2f} running by the gauge but {result.decoding:.2f} "
                "decoding by the token gaps (the node ran short of requests: a client or server too slow to refill)"
            )
            if attempt == tries:
                raise MeasureError(f"{problem}, {tries} windows in a row")
            logger.warning("%s; measuring another window", problem)
    finally:
        records = gen.stop()
    failed = [r for r in records if r.status not in ("ok", "cancelled", "incomplete")]
    if failed:
        raise MeasureError(f"{len(failed)} requests failed, e.g. {failed[0].status}: {failed[0].error}")
    _wait(lambda: _idle(scrape()), timeout_s, "the server to drain", poll_s)
    return result


def _window(
    backend: KnobBackend,
    scrape: Callable[[], VllmMetrics],
    gen: LoadGenerator,
    window_s: float,
    poll_s: float,
    timeout_s: float,
) -> tuple[Instant, Instant, list[tuple[float, float]]]:
    """Two instants ``window_s`` server seconds apart and the (server time, running) samples between them."""
    start = now = read_instant(backend, scrape)
    samples = [(start.reading.server_time_s, start.metrics.running)]
    deadline = time.monotonic() + timeout_s
    while now.reading.server_time_s < start.reading.server_time_s + window_s:
        if gen.done or gen.error is not None:
            raise MeasureError(f"the load generator stopped during the window ({gen.error or 'out of requests'})")
        if time.monotonic() > deadline:
            raise MeasureError(f"timed out after {timeout_s:g} s measuring a {window_s:g} s window")
        time.sleep(poll_s)
        now = read_instant(backend, scrape)
        samples.append((now.reading.server_time_s, now.metrics.running))
    return start, now, samples


def _idle(m: VllmMetrics) -> bool:
    return m.running + m.waiting == 0


def _first_wave_done(gen: LoadGenerator, slots: int) -> bool:
    if gen.done:
        return True
    return sum(1 for r in gen.records() if r.index < slots) >= slots


def _result(
    point: GridPoint, start: Instant, end: Instant, samples: list[tuple[float, float]], replicas: int
) -> PointResult:
    span_s = end.reading.server_time_s - start.reading.server_time_s
    if span_s <= 0:
        raise MeasureError("no server time passed in the window")
    interval = diff(start.metrics, end.metrics)
    if interval.generation_tokens <= 0 or interval.itl_count <= 0:
        raise MeasureError("no tokens were generated in the window: is the server serving?")
    energy_j = float(sum(end.reading.energy_per_gpu_j) - sum(start.reading.energy_per_gpu_j))
    if energy_j <= 0:
        raise MeasureError("the GPU energy counters did not advance in the window")
    t = np.array([s[0] for s in samples])
    running = np.array([s[1] for s in samples])
    mean_running = float(np.sum(running[:-1] * np.diff(t)) / (t[-1] - t[0]))  # left Riemann sum of the gauge
    tokens_per_s = interval.generation_tokens / span_s / replicas
    power_w = energy_j / span_s / replicas
    return PointResult(
        point=point,
        mean_running=mean_running / replicas,
        decoding=interval.itl_sum_s / span_s / replicas,
        span_s=span_s,
        output_tokens=interval.generation_tokens,
        energy_j=energy_j,
        mixed_step_s=interval.itl_sum_s / interval.itl_count,
        power_w=power_w,
        output_tokens_per_s=tokens_per_s,
        energy_per_output_token_j=power_w / tokens_per_s,
    )
