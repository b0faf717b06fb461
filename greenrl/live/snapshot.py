"""A live interval as a ``NodeSnapshot``: two backend readings, two ``/metrics`` scrapes and the front end's counts.

The one home of that arithmetic: ``LiveNode`` (episodes of ``ServingEnv`` on a live server) and the
serving controller's ``LiveObserver`` both build each interval here, then observe it with the one
``ObservationBuilder``, so the env and the controller see the same interval the same way.

* ``read_instant(backend, scrape)``: a backend reading and a scrape of the same server instant;
* ``interval_snapshot(prev, cur, front, ...)``: the interval between two instants. ``/metrics``
  differences give the gauges, token counters, preemptions and histograms; the energy counters'
  difference per GPU the energy; the backend the knobs, ``reconfiguring``, the proxy's queue (counted as
  waiting) and the share of time at the prefill clock; the front end (``FrontEndCounts``) the arrivals and
  outcomes. Without a front end, requests that got their first token stand in for arrivals and vLLM's
  prompt-token counter for their prompt tokens (no outcome is known: ``slo_attainment`` is then 1.0);
* ``start_snapshot``: the empty interval at an episode's start.

Public names: FrontEndCounts, Instant, ObservationError, interval_snapshot, read_instant, start_snapshot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, BackendReading, KnobBackend, Knobs, NodeSnapshot
from greenrl.live.metrics import VllmMetrics, diff

__all__ = ["FrontEndCounts", "Instant", "ObservationError", "interval_snapshot", "read_instant", "start_snapshot"]


class ObservationError(RuntimeError):
    """The live data cannot make a valid interval (missing series, no time elapsed, an energy counter went back)."""


@dataclass(frozen=True, slots=True)
class Instant:
    """A backend reading and a ``/metrics`` scrape of the same server instant.

    Attributes:
        reading: the backend's clock, energy counters and knobs.
        metrics: the scrape.
        mono_s: ``time.monotonic()`` between the two (s).
    """

    reading: BackendReading
    metrics: VllmMetrics
    mono_s: float


@dataclass(frozen=True, slots=True)
class FrontEndCounts:
    """What the front end saw in an interval.

    Attributes:
        arrived: requests that arrived; ``prompt_tokens_in``: their prompt tokens.
        finished: requests whose outcome was judged; ``slo_met``: those that met the SLO.
        rejected: requests that failed.
    """

    arrived: int = 0
    prompt_tokens_in: int = 0
    finished: int = 0
    slo_met: int = 0
    rejected: int = 0


def read_instant(backend: KnobBackend, scrape: Callable[[], VllmMetrics], tries: int = 3) -> Instant:
    """A reading, a scrape of the same server instant, and the wall time (monotonic s) between them.

    With a stepped clock (the twin) the reading is taken again after the scrape and the pair retried
    (``tries`` in all) until the clock did not move in between; otherwise the scrape may be one tick off the
    reading, which moves that tick's counts to the neighbouring interval (totals are unaffected).
    """
    for attempt in range(tries):
        reading = backend.read()
        mono_s = time.monotonic()
        metrics = scrape()
        if not backend.discrete_time:
            return Instant(reading, metrics, mono_s)
        again = backend.read()
        if again.server_time_s == reading.server_time_s or attempt == tries - 1:
            return Instant(again, metrics, mono_s)
    raise ValueError(f"tries must be >= 1, got {tries}")


def interval_snapshot(
    prev: Instant,
    cur: Instant,
    front: FrontEndCounts | None,
    *,
    origin_s: float,
    knobs: Knobs,
    reconfigurations: int = 0,
) -> NodeSnapshot:
    """The interval between two instants.

    Args:
        prev: the instant at the interval's start.
        cur: the instant at its end.
        front: the front end's counts in the interval (None: stand-ins from vLLM, see the module doc).
        origin_s: server time of t = 0 (the episode's start): ``t_start_s`` and ``t_end_s`` count from it.
        knobs: the knobs to report when the backend cannot tell those in force.
        reconfigurations: knob changes requested in the interval.

    Raises:
        ObservationError: an energy counter went back (a GPU reset).
    """
    r0, r1 = prev.reading, cur.reading
    span_s = r1.server_time_s - r0.server_time_s
    energy = np.subtract(r1.energy_per_gpu_j, r0.energy_per_gpu_j)
    if np.any(energy < -1e-6):
        raise ObservationError(f"an energy counter went back by {-energy.min():.1f} J (GPU reset or restart?)")
    energy = np.maximum(energy, 0.0)
    d = diff(prev.metrics, cur.metrics)
    if front is None:  # vLLM has no arrival counter: first tokens stand in for arrivals
        front = FrontEndCounts(arrived=_count(d.ttft_count), prompt_tokens_in=_count(d.prompt_tokens))
    first_tokens, gaps = d.ttft_count, d.itl_count
    return NodeSnapshot(
        t_start_s=r0.server_time_s - origin_s,
        t_end_s=r1.server_time_s - origin_s,
        energy_j=float(energy.sum()),
        energy_per_gpu_j=tuple(float(e) for e in energy),
        mean_power_w=float(energy.sum()) / span_s if span_s > 0 else 0.0,
        arrived=front.arrived,
        prompt_tokens_in=front.prompt_tokens_in,
        output_tokens=_count(d.generation_tokens),
        prefill_tokens=_count(d.prompt_tokens),
        finished=front.finished,
        slo_met=front.slo_met,
        rejected=front.rejected,
        preemptions=_count(d.preemptions),
        iterations=0,  # vLLM's iteration count is not read (vllm:iteration_tokens_total is not parsed)
        waiting=_count(d.waiting) + r1.queued,
        running=_count(d.running),
        kv_cache_usage_frac=float(d.kv_cache_usage_frac),
        ttft_mean_s=d.ttft_sum_s / first_tokens if first_tokens else 0.0,
        tbt_mean_s=d.itl_sum_s / gaps if gaps else 0.0,
        ttft_hist=d.ttft_hist.copy(),
        itl_hist=d.itl_hist.copy(),
        knobs=r1.knobs or knobs,
        reconfiguring=r1.reconfiguring,
        reconfigurations=reconfigurations,
        prefill_clock_frac=_share(r0.prefill_clock_s, r1.prefill_clock_s, span_s),
    )


def start_snapshot(at: Instant, knobs: Knobs) -> NodeSnapshot:
    """The empty interval at t = 0: nothing counted yet, the gauges and knobs of ``at``."""
    r, m = at.reading, at.metrics
    return NodeSnapshot(
        t_start_s=0.0,
        t_end_s=0.0,
        energy_j=0.0,
        energy_per_gpu_j=tuple(0.0 for _ in r.energy_per_gpu_j),
        mean_power_w=0.0,
        arrived=0,
        prompt_tokens_in=0,
        output_tokens=0,
        prefill_tokens=0,
        finished=0,
        slo_met=0,
        rejected=0,
        preemptions=0,
        iterations=0,
        waiting=int(m.waiting) + r.queued,
        running=int(m.running),
        kv_cache_usage_frac=float(m.kv_cache_usage_frac),
        ttft_mean_s=0.0,
        tbt_mean_s=0.0,
        ttft_hist=np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1),
        itl_hist=np.zeros(len(VLLM_ITL_BUCKETS_S) + 1),
        knobs=r.knobs or knobs,
        reconfiguring=r.reconfiguring,
        reconfigurations=0,
    )


def _count(value: float) -> int:
    return int(round(value)) if math.isfinite(value) else 0


def _share(before_s: float | None, after_s: float | None, span_s: float) -> float:
    """The share of ``span_s`` a cumulative time grew by, in [0, 1]; 0 if unknown.

    Example:
        >>> _share(1.0, 3.0, 4.0), _share(None, 3.0, 4.0)
        (0.5, 0.0)
    """
    if before_s is None or after_s is None or span_s <= 0:
        return 0.0
    return min(max((after_s - before_s) / span_s, 0.0), 1.0)
