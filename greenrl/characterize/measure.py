"""Measuring the simulated node: one grid point (``measure_point``) and the whole grid (``sweep``).

Each point serves one replica on a fresh ``SimNode`` under a saturating or a Poisson load and reduces
what it served to one CSV row (throughput, latency percentiles, power, energy per token, SLO goodput).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from greenrl.characterize.grid import LENGTH_CLASSES, SweepSpec
from greenrl.core import Knobs
from greenrl.sim import SimConfig, SimNode
from greenrl.slo import Slo
from greenrl.surrogate import Surrogate
from greenrl.surrogate.model import ReplicaModel
from greenrl.surrogate.steady import steady_state
from greenrl.workload import Trace

logger = logging.getLogger(__name__)

_STEPS_PER_GENERATION = 20  # snapshot resolution of the saturating measurement


_OVERDRIVE = 2.0  # saturating load: fill rate / estimated capacity


def _pct(values: npt.NDArray[np.float64], q: float) -> float:
    """Nearest-rank percentile (``inf`` entries allowed); NaN for no values."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q, method="inverted_cdf"))


def _config(spec: SweepSpec, tp: int, clock_mhz: int, batch: int) -> SimConfig:
    knobs = Knobs(tp=tp, replicas=1, max_num_seqs=batch, sm_clock_mhz=clock_mhz)
    return SimConfig(model=spec.model, gpu=spec.gpu, gpus=spec.gpus, initial=knobs, slo=Slo(tbt_mean_s=spec.tbt_slo_s))


def measure_point(
    spec: SweepSpec,
    tp: int,
    clock_mhz: int,
    batch: int,
    input_class: str,
    output_class: str,
    surrogate: Surrogate | None = None,
) -> dict[str, Any] | None:
    """Serve one grid point on a fresh ``SimNode`` and measure it.

    Saturating load (the study's maximum-throughput measurement): ``k`` is the most requests of this
    length the replica's KV cache holds, at most ``batch``. The first ``k`` requests arrive evenly
    over half the time one request takes with the batch full (so the batch fills staggered, as in
    vLLM's steady state, rather than in lockstep waves of identical requests), and ``k x (g + 1) +
    2 x batch + 8`` more arrive with the last of them, ``g = spec.generations``, so a queue keeps the
    batch full. The window runs from the ``k``-th completion (one batch of warm-up) to the
    ``k x (g + 1)``-th, on a grid of 1/20 of a request's lifetime. TTFT is timed from the request's
    admission into the running batch: the time in the queue in front of a saturated server only
    says how far the load over-drives it (use a Poisson load to see queueing).

    Poisson load: arrivals at ``spec.load_rps`` over ``warmup_s + measure_s``; throughput, power and
    energy over the measured window; latencies of the requests arriving in it (given up to another
    ``max(measure_s, 60)`` s to finish; a request with no first token has infinite TTFT).

    Args:
        spec: the sweep (model, GPU, load, SLO).
        tp: tensor-parallel degree of the one replica (GPUs).
        clock_mhz: SM clock (MHz).
        batch: max_num_seqs (running sequences).
        input_class: key of ``LENGTH_CLASSES`` giving the prompt length.
        output_class: key of ``LENGTH_CLASSES`` giving the output length.
        surrogate: shared surrogate (default: the packaged one).

    Returns:
        The CSV row, or ``None`` when one request does not fit the replica's KV cache.
    """
    surrogate = surrogate or Surrogate()
    input_tokens = LENGTH_CLASSES[input_class][0]
    output_tokens = LENGTH_CLASSES[output_class][1]
    config = _config(spec, tp, clock_mhz, batch)
    replica = surrogate.replica(spec.model, spec.gpu, tp)
    kv_tokens = replica.kv_capacity_tokens(config.gpu_memory_utilization)
    blocks_per_request = -(-(input_tokens + output_tokens) // config.block_tokens)
    kv_batch = kv_tokens // config.block_tokens // blocks_per_request
    if kv_batch < 1:
        logger.warning(
            "skipped tp=%d %s/%s: a %d-token request does not fit the %d-token KV cache",
            tp,
            input_class,
            output_class,
            input_tokens + output_tokens,
            kv_tokens,
        )
        return None
    full = min(batch, int(kv_batch))
    if spec.load_rps is None:
        m = _measure_saturating(spec, config, surrogate, replica, full, input_tokens, output_tokens)
    else:
        m = _measure_poisson(spec, spec.load_rps, config, surrogate, input_tokens, output_tokens)
    window_s = m["window_s"]
    tokens = m["tokens"]
    energy_j = m["energy_j"]
    throughput = tokens / window_s
    tbt_p99 = _pct(m["tbt_s"], 99)
    return {
        "model": spec.model,
        "gpu": spec.gpu,
        "tp": tp,
        "sm_clock_mhz": clock_mhz,
        "max_num_seqs": batch,
        "input_class": input_class,
        "output_class": output_class,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "load": "saturating" if spec.load_rps is None else f"{spec.load_rps:g}rps",
        "kv_batch_limit": int(kv_batch),
        "window_s": window_s,
        "requests_measured": len(m["ttft_s"]),
        "output_tokens_per_iteration": tokens / max(m["iterations"], 1),
        "throughput_tokens_per_s": throughput,
        "ttft_p50_s": _pct(m["ttft_s"], 50),
        "ttft_p99_s": _pct(m["ttft_s"], 99),
        "tbt_p50_s": _pct(m["tbt_s"], 50),
        "tbt_p99_s": tbt_p99,
        "power_w": energy_j / window_s,
        "power_per_gpu_w": energy_j / window_s / tp,
        "energy_per_output_token_j": energy_j / tokens if tokens else math.inf,
        "slo_attainment_frac": m["slo_frac"],
        "goodput_tokens_per_s": m["goodput"],
        "within_slo": bool(tbt_p99 <= spec.tbt_slo_s),
        "preemptions": m["preemptions"],
        "saturated": m["saturated"],
    }


def _measure_saturating(
    spec: SweepSpec,
    config: SimConfig,
    surrogate: Surrogate,
    replica: ReplicaModel,
    full: int,
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    tp, batch, clock = config.initial.tp, config.initial.max_num_seqs, config.initial.sm_clock_mhz
    start_at, stop_at = full, full * (spec.generations + 1)
    n = stop_at + 2 * batch + 8  # over `batch` requests outstanding until the window ends
    steady = steady_state(replica, float(full), float(input_tokens), float(output_tokens), float(clock))
    lifetime_s = full * output_tokens / float(steady.output_tokens_per_s)  # one request, batch full
    # The first `full` requests arrive evenly over half a lifetime, the rest with the last of them: the
    # batch fills staggered, as in vLLM's steady state (a burst of identical requests would run in
    # lockstep waves instead), and then a queue keeps it full.
    arrival = np.minimum(np.arange(n), full - 1) * lifetime_s / (full * _OVERDRIVE)
    trace = Trace(
        name=f"saturating-{n}x{input_tokens}/{output_tokens}",
        arrival_s=arrival,
        input_tokens=np.full(n, input_tokens),
        output_tokens=np.full(n, output_tokens),
        duration_s=float(arrival[-1]) + lifetime_s,
    )
    node = SimNode(config, trace, surrogate)
    node.reset(seed=spec.seed)
    dt_s = lifetime_s / _STEPS_PER_GENERATION
    cum = np.zeros(5)  # finished, tokens, replica energy (J), iterations, preemptions
    mark: tuple[float, np.ndarray] | None = None
    saturated = True
    steps = 0
    while True:
        snap = node.advance(dt_s)
        steps += 1
        cum += (snap.finished, snap.output_tokens, sum(snap.energy_per_gpu_j[:tp]), snap.iterations, snap.preemptions)
        if mark is not None:
            saturated &= snap.waiting > 0
        if mark is None and cum[0] >= start_at:
            mark = (node.now_s, cum.copy())
        if mark is not None and cum[0] >= stop_at:
            break
        if steps % (4 * _STEPS_PER_GENERATION * (spec.generations + 2)) == 0:
            dt_s *= 2.0  # the steady-state estimate was far off: coarser steps, same window rule
        if node.now_s > 1e7:
            raise RuntimeError(f"no steady window after {node.now_s:g} s simulated (tp={tp}, batch={batch})")
    if not saturated:
        logger.warning("tp=%d batch=%d clock=%d: the queue emptied inside the window", tp, batch, clock)
    t_a, at_a = mark
    delta = cum - at_a
    rec = node.requests()
    finish = rec["finished_at_s"]
    in_window = (finish >= t_a) & (finish <= node.now_s)
    ttft = (rec["first_token_at_s"] - rec["admitted_at_s"])[in_window]
    tbt = rec["tbt_mean_s"][in_window]
    met = (ttft <= rec["ttft_slo_s"][in_window]) & (tbt <= spec.tbt_slo_s)
    window_s = node.now_s - t_a
    slo_frac = float(met.mean()) if len(met) else math.nan
    return {
        "window_s": window_s,
        "tokens": float(delta[1]),
        "energy_j": float(delta[2]),
        "iterations": float(delta[3]),
        "preemptions": int(delta[4]),
        "ttft_s": ttft,
        "tbt_s": tbt,
        "slo_frac": slo_frac,
        "goodput": float(delta[1]) / window_s * slo_frac,
        "saturated": bool(saturated),
    }


def _poisson_trace(rate_rps: float, horizon_s: float, seed: int, input_tokens: int, output_tokens: int) -> Trace:
    """Poisson arrivals at ``rate_rps`` over ``[0, horizon_s)``, every request of the same lengths."""
    rng = np.random.default_rng(seed)
    size = int(rate_rps * horizon_s + 10.0 * math.sqrt(rate_rps * horizon_s) + 10)
    arrival = np.cumsum(rng.exponential(1.0 / rate_rps, size))
    arrival = arrival[arrival < horizon_s]
    return Trace(
        name=f"poisson-{rate_rps:g}rps",
        arrival_s=arrival,
        input_tokens=np.full(len(arrival), input_tokens),
        output_tokens=np.full(len(arrival), output_tokens),
        duration_s=horizon_s,
    )


def _measure_poisson(
    spec: SweepSpec, rate_rps: float, config: SimConfig, surrogate: Surrogate, input_tokens: int, output_tokens: int
) -> dict[str, Any]:
    tp = config.initial.tp
    trace = _poisson_trace(rate_rps, spec.warmup_s + spec.measure_s, spec.seed, input_tokens, output_tokens)
    node = SimNode(config, trace, surrogate)
    node.reset(seed=spec.seed)
    if spec.warmup_s > 0:
        node.advance(spec.warmup_s)
    snap = node.advance(spec.measure_s)
    node.advance(max(spec.measure_s, 60.0))  # let the window's requests finish; not measured
    rec = node.requests()
    arrival = rec["arrival_s"]
    in_window = (arrival >= spec.warmup_s) & (arrival < spec.warmup_s + spec.measure_s)
    first = rec["first_token_at_s"][in_window]
    ttft = np.where(first >= 0, rec["ttft_s"][in_window], math.inf)
    started = rec["generated_tokens"][in_window] >= 2
    tbt = rec["tbt_mean_s"][in_window][started]
    met = rec["slo_met"][in_window]
    good_tokens = float(rec["output_tokens"][in_window][met].sum())
    return {
        "window_s": spec.measure_s,
        "tokens": float(snap.output_tokens),
        "energy_j": float(sum(snap.energy_per_gpu_j[:tp])),
        "iterations": float(snap.iterations),
        "preemptions": int(snap.preemptions),
        "ttft_s": ttft,
        "tbt_s": tbt,
        "slo_frac": float(met.mean()) if len(met) else math.nan,
        "goodput": good_tokens / spec.measure_s,
        # could not keep up: served under 95% of the output tokens/s that arrived in the window
        "saturated": bool(snap.output_tokens < 0.95 * snap.arrived * output_tokens),
    }


def sweep(spec: SweepSpec, on_point: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Measure every grid point of ``spec`` (see ``measure_point``); one row each.

    Args:
        spec: the grid and load (``main`` validates flags into one; bad values raise from ``SimNode``).
        on_point: called with (points done, points in all) after each point, for progress.
    """
    surrogate = Surrogate()
    rows: list[dict[str, Any]] = []
    done = 0
    for tp in spec.tps:
        for input_class in spec.inputs:
            for output_class in spec.outputs:
                for batch in spec.batches:
                    for clock in spec.clocks_mhz:
                        row = measure_point(spec, tp, clock, batch, input_class, output_class, surrogate)
                        if row is not None:
                            rows.append(row)
                        done += 1
                        if on_point is not None:
                            on_point(done, spec.points)
    return pd.DataFrame(rows)
