"""``python -m greenrl.characterize``: sweep the simulated node the way the seed study swept a real one.

Stojkovic et al., *Towards Greener LLMs* (arXiv 2403.20306) served Llama-2-70B with vLLM on a
DGX-H100 and varied tensor parallelism, SM clock, maximum batch and request lengths. This command
runs the same grid on ``SimNode``: one replica of each TP degree (the node's other GPUs idle and not
counted), fixed-length requests of each length class, and a load that either keeps the batch full
(``--load saturating``, the study's maximum-throughput measurement) or arrives as a seeded Poisson
stream (``--load RPS``). It writes one CSV row per grid point, plots, and prints the study's headline
shapes next to the ones computed from the sweep. Definitions are in ``docs/characterization.md``.

Example:
    python -m greenrl.characterize --out runs/characterize
    python -m greenrl.characterize --tp 4 8 --batches 4 8 --clocks 1605 1980 --inputs short --outputs short

Public names: LENGTH_CLASSES, DEFAULT_CLOCKS_MHZ, DEFAULT_BATCHES, STUDY_FINDINGS, SweepSpec, Finding,
measure_point, sweep, compare, write_plots, main.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from greenrl.catalog import load_gpu, load_model
from greenrl.core import Knobs
from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.sim import SimConfig, SimNode, SloSpec
from greenrl.sim.node import MAX_RUNNING
from greenrl.surrogate import Surrogate
from greenrl.surrogate.model import ReplicaModel
from greenrl.surrogate.steady import steady_state
from greenrl.workload import Trace

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_CLOCKS_MHZ",
    "LENGTH_CLASSES",
    "STUDY_FINDINGS",
    "Finding",
    "SweepSpec",
    "compare",
    "main",
    "measure_point",
    "sweep",
    "write_plots",
]

logger = logging.getLogger(__name__)

LENGTH_CLASSES: dict[str, tuple[int, int]] = {"short": (256, 64), "medium": (1024, 256), "long": (4096, 1024)}
"""Length class -> (input tokens, output tokens); inputs and outputs are crossed independently."""
DEFAULT_CLOCKS_MHZ = (1005, 1200, 1395, 1605, 1800, 1980)
"""SM clocks swept by default (MHz), all on the H100 grid (345-1980 MHz in 15 MHz steps)."""
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""max_num_seqs values of the full grid."""
DEFAULT_TPS = (2, 4, 8)
# The default (reduced) grid: every TP, clock and batch; one input class crossed with every output class.
_DEFAULT_INPUTS = ("medium",)
_DEFAULT_OUTPUTS = ("short", "medium", "long")
_STEPS_PER_GENERATION = 20  # snapshot resolution of the saturating measurement
_LOW_CLOCK_MHZ, _HIGH_CLOCK_MHZ = 1605, 1980
_OVERDRIVE = 2.0  # saturating load: fill rate / estimated capacity
# Findings about peak throughput: under a fixed offered load throughput is the load, not the node's.
_NEEDS_SATURATION = frozenset(
    {"tp_2_to_4_throughput_gain", "tp_4_to_8_throughput_gain", "clock_1605_vs_1980_throughput_ratio"}
)


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """What to sweep and how to load the node.

    Attributes:
        model, gpu, gpus: what is served on what (the study: Llama-2-70B on 8 x H100).
        tps: tensor-parallel degrees; one replica each.
        clocks_mhz: SM clocks (MHz), on the GPU's grid.
        batches: max_num_seqs values (running sequences).
        inputs, outputs: length-class names (keys of ``LENGTH_CLASSES``), crossed.
        load_rps: ``None`` for the saturating load, else the Poisson arrival rate (requests/s).
        tbt_slo_s: SLO on each request's mean time between tokens (s).
        generations: saturating load: batches' worth of requests measured after one warm-up batch.
        warmup_s, measure_s: Poisson load: warm-up and measured window (s).
        seed: seed of the Poisson arrivals and of ``SimNode.reset``.
    """

    model: str = "llama-2-70b"
    gpu: str = "h100-sxm-80gb"
    gpus: int = 8
    tps: tuple[int, ...] = DEFAULT_TPS
    clocks_mhz: tuple[int, ...] = DEFAULT_CLOCKS_MHZ
    batches: tuple[int, ...] = DEFAULT_BATCHES
    inputs: tuple[str, ...] = _DEFAULT_INPUTS
    outputs: tuple[str, ...] = _DEFAULT_OUTPUTS
    load_rps: float | None = None
    tbt_slo_s: float = 0.1
    generations: int = 3
    warmup_s: float = 60.0
    measure_s: float = 300.0
    seed: int = 0

    @property
    def points(self) -> int:
        """Number of grid points."""
        return len(self.tps) * len(self.clocks_mhz) * len(self.batches) * len(self.inputs) * len(self.outputs)


@dataclass(frozen=True, slots=True)
class Finding:
    """One headline shape of the study and the rule that says whether the sweep agrees with it.

    Attributes:
        key: machine-readable name.
        label: what is compared, in words.
        study_value: the study's figure (a gain as a fraction, or a ratio).
        study_text: the study's figure, in words.
        lo, hi: the simulator agrees when its figure lies in ``[lo, hi]``.
        definition: how the simulator's figure is computed from the sweep.
    """

    key: str
    label: str
    study_value: float
    study_text: str
    lo: float
    hi: float
    definition: str = ""


STUDY_FINDINGS: tuple[Finding, ...] = (
    Finding(
        "tp_2_to_4_throughput_gain",
        "TP 2 -> 4 throughput gain",
        0.75,
        "about +75%",
        0.5,
        1.125,
        "median over (length class, max batch) at the top clock of throughput(TP4) / throughput(TP2) - 1",
    ),
    Finding(
        "tp_4_to_8_throughput_gain",
        "TP 4 -> 8 throughput gain",
        0.40,
        "about +40%",
        0.4 / 1.5,
        0.6,
        "median over (length class, max batch) at the top clock of throughput(TP8) / throughput(TP4) - 1",
    ),
    Finding(
        "batch_4_to_8_goodput_ratio",
        "max batch 4 -> 8 goodput (within SLO)",
        7.0,
        "about 7x",
        7.0 / 1.5,
        10.5,
        "median over (TP, length class) at the top clock of goodput(8) / goodput(4), goodput = output tokens/s "
        "of requests meeting both the TTFT and the mean-TBT SLO",
    ),
    Finding(
        "clock_1605_vs_1980_throughput_ratio",
        "1605 vs 1980 MHz throughput",
        1.0,
        "about the same",
        0.9,
        1.1,
        "median over (TP, max batch, length class) of throughput(1605) / throughput(1980)",
    ),
    Finding(
        "clock_1605_vs_1980_energy_ratio",
        "1605 vs 1980 MHz energy/token",
        0.8,
        "under 80%",
        0.0,
        0.8,
        "median over (TP, max batch, length class) of energy per token(1605) / energy per token(1980)",
    ),
)
"""The study's headline shapes. "About X" agrees within a factor 1.5 of X (for a gain: of the gain);
"about the same" within 10%; "under 80%" means at most 0.80."""


# ------------------------------------------------------------------------------------------- measuring


def _pct(values: npt.NDArray[np.float64], q: float) -> float:
    """Nearest-rank percentile (``inf`` entries allowed); NaN for no values."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q, method="inverted_cdf"))


def _config(spec: SweepSpec, tp: int, clock_mhz: int, batch: int) -> SimConfig:
    knobs = Knobs(tp=tp, replicas=1, max_num_seqs=batch, sm_clock_mhz=clock_mhz)
    return SimConfig(
        model=spec.model, gpu=spec.gpu, gpus=spec.gpus, initial=knobs, slo=SloSpec(tbt_mean_s=spec.tbt_slo_s)
    )


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


# ------------------------------------------------------------------------------------------ comparing


def _median_ratio(
    df: pd.DataFrame, by: str, num: int, den: int, keys: list[str], metric: str
) -> tuple[float, float, float, int]:
    """Median, min and max over ``keys`` of metric(by=num) / metric(by=den), and how many pairs.

    A pair whose denominator is 0 and numerator positive counts as an infinite ratio; 0 / 0 pairs and
    non-finite values are left out.
    """
    a = df[df[by] == num].set_index(keys)[metric]
    b = df[df[by] == den].set_index(keys)[metric]
    joined = pd.concat([a.rename("num"), b.rename("den")], axis=1, join="inner")
    finite = np.isfinite(joined["den"]) & np.isfinite(joined["num"])
    joined = joined[finite & ((joined["den"] > 0) | (joined["num"] > 0))]
    if joined.empty:
        return math.nan, math.nan, math.nan, 0
    with np.errstate(divide="ignore"):
        r = (joined["num"] / joined["den"]).to_numpy(dtype=float)
    return float(np.median(r)), float(r.min()), float(r.max()), len(r)


def compare(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The study's headline shapes next to the sweep's (see ``STUDY_FINDINGS`` for each definition).

    Returns:
        One dict per finding: key, label, definition, sim (median; ``"inf"`` when a goodput ratio has a
        zero denominator), sim_min, sim_max, pairs, study,
        study_text, agree_range and verdict (``agrees``, ``disagrees``, or ``not measured`` when the
        sweep lacks the points). TP rows also carry ``sim_same_batch``: the median over the batches
        that both TPs' KV caches hold in full (a diagnostic; the verdict uses ``sim``).
    """
    out: list[dict[str, Any]] = []
    top = math.nan if df.empty else float(df["sm_clock_mhz"].max())
    fixed_load = not df.empty and bool((df["load"] != "saturating").any())
    at_top = df[df["sm_clock_mhz"] == top] if not df.empty else df
    cls = ["input_class", "output_class"]
    for f in STUDY_FINDINGS:
        same_batch: float | None = None
        if f.key.startswith("tp_"):
            lo, hi = (2, 4) if "2_to_4" in f.key else (4, 8)
            keys = [*cls, "max_num_seqs"]
            med, mn, mx, n = _median_ratio(at_top, "tp", hi, lo, keys, "throughput_tokens_per_s")
            med, mn, mx = med - 1.0, mn - 1.0, mx - 1.0
            # Diagnostic: only batches both TPs' KV caches hold in full, so both run the same batch.
            uncapped = at_top[at_top["max_num_seqs"] <= at_top["kv_batch_limit"]]
            same, _, _, n_same = _median_ratio(uncapped, "tp", hi, lo, keys, "throughput_tokens_per_s")
            same_batch = round(same - 1.0, 4) if n_same else None
        elif f.key.startswith("batch_"):
            med, mn, mx, n = _median_ratio(at_top, "max_num_seqs", 8, 4, [*cls, "tp"], "goodput_tokens_per_s")
        else:
            metric = "throughput_tokens_per_s" if "throughput" in f.key else "energy_per_output_token_j"
            keys = [*cls, "tp", "max_num_seqs"]
            med, mn, mx, n = (
                _median_ratio(df, "sm_clock_mhz", _LOW_CLOCK_MHZ, _HIGH_CLOCK_MHZ, keys, metric)
                if not df.empty
                else (math.nan, math.nan, math.nan, 0)
            )
        if n == 0:
            verdict = "not measured"
        elif fixed_load and f.key in _NEEDS_SATURATION:
            verdict = "not comparable"
        else:
            verdict = "agrees" if f.lo <= med <= f.hi else "disagrees"
        out.append(
            {
                "key": f.key,
                "label": f.label,
                "definition": f.definition,
                "sim": _json_num(med, n),
                "sim_min": _json_num(mn, n),
                "sim_max": _json_num(mx, n),
                "pairs": n,
                "sim_same_batch": same_batch,
                "study": f.study_value,
                "study_text": f.study_text,
                "agree_range": [round(f.lo, 4), round(f.hi, 4)],
                "verdict": verdict,
            }
        )
    return out


def _json_num(value: float, pairs: int) -> float | str | None:
    """A figure for JSON: None when nothing was measured, the string "inf" for an infinite ratio."""
    if pairs == 0 or math.isnan(value):
        return None
    return round(value, 4) if math.isfinite(value) else "inf"


def _fmt(key: str, value: float | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if "gain" in key:
        return f"{value:+.0%}"
    if "goodput" in key:
        return f"{value:.2f}x"
    return f"{value:.3f}"


# ------------------------------------------------------------------------------------------- plotting


def _save_png(fig: Any, path: Path) -> None:
    """Save a figure beside ``path`` under a temporary name, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reference(df: pd.DataFrame) -> tuple[str, str, int, float]:
    """The length classes, batch and clock the single-panel plots show."""
    inputs, outputs = list(dict.fromkeys(df["input_class"])), list(dict.fromkeys(df["output_class"]))
    inp = "medium" if "medium" in inputs else inputs[0]
    outp = "medium" if "medium" in outputs else outputs[0]
    batches = sorted(set(df["max_num_seqs"]))
    batch = 64 if 64 in batches else batches[len(batches) // 2]
    return inp, outp, int(batch), float(df["sm_clock_mhz"].max())


def _batch_axis(ax: Any, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches], fontsize=7)
    ax.minorticks_off()


def write_plots(df: pd.DataFrame, folder: Path, tbt_slo_s: float | None = None) -> list[Path]:
    """Write ``characterize_{throughput,latency,clock}.png`` into ``folder``; returns their paths.

    Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend is changed.

    Args:
        df: the sweep (``sweep``'s rows).
        folder: where the PNGs go (created if missing).
        tbt_slo_s: drawn as a line on the TBT panel when given (s).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if df.empty:
        return []
    inp, outp, ref_batch, top = _reference(df)
    tps = sorted(set(df["tp"]))
    batches = sorted(int(b) for b in set(df["max_num_seqs"]))
    colors = {tp: colormaps["viridis"](i / max(len(tps) - 1, 1) * 0.85) for i, tp in enumerate(tps)}
    paths = []

    pairs = sorted(
        {(i, o) for i, o in zip(df["input_class"], df["output_class"], strict=True)},
        key=lambda p: (list(LENGTH_CLASSES).index(p[0]), list(LENGTH_CLASSES).index(p[1])),
    )
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, (i, o) in zip(axes.flat, pairs, strict=False):
        sub = df[(df["input_class"] == i) & (df["output_class"] == o) & (df["sm_clock_mhz"] == top)]
        for tp in tps:
            d = sub[sub["tp"] == tp].sort_values("max_num_seqs")
            ax.plot(d["max_num_seqs"], d["throughput_tokens_per_s"], "-", color=colors[tp], label=f"TP{tp}")
            ok = d[d["within_slo"]]
            bad = d[~d["within_slo"]]
            ax.plot(ok["max_num_seqs"], ok["throughput_tokens_per_s"], "o", color=colors[tp], ms=4)
            ax.plot(bad["max_num_seqs"], bad["throughput_tokens_per_s"], "o", mfc="none", color=colors[tp], ms=4)
        _batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set_title(f"in {LENGTH_CLASSES[i][0]} / out {LENGTH_CLASSES[o][1]} tokens", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(pairs) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("max batch (max_num_seqs)")
    for ax in axes[:, 0]:
        ax.set_ylabel("output tokens/s")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Throughput vs max batch at {top:.0f} MHz (hollow: p99 TBT over the SLO)", fontsize=10)
    fig.tight_layout()
    paths.append(folder / "characterize_throughput.png")
    _save_png(fig, paths[-1])

    sub = df[(df["input_class"] == inp) & (df["output_class"] == outp) & (df["sm_clock_mhz"] == top)]
    fig = Figure(figsize=(9, 3.3))
    axes = fig.subplots(1, 2)
    for ax, metric, name in ((axes[0], "ttft", "TTFT"), (axes[1], "tbt", "mean TBT per request")):
        for tp in tps:
            d = sub[sub["tp"] == tp].sort_values("max_num_seqs")
            ax.plot(d["max_num_seqs"], d[f"{metric}_p50_s"], "o-", color=colors[tp], ms=3, label=f"TP{tp} p50")
            ax.plot(d["max_num_seqs"], d[f"{metric}_p99_s"], "s--", color=colors[tp], ms=3, label=f"TP{tp} p99")
        _batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set_xlabel("max batch (max_num_seqs)")
        ax.set_ylabel(f"{name} (s)")
        ax.grid(alpha=0.3)
    if tbt_slo_s:
        axes[1].axhline(tbt_slo_s, color="red", lw=0.8, ls=":", label="TBT SLO")
    axes[1].legend(fontsize=7, ncol=2)
    in_tok, out_tok = LENGTH_CLASSES[inp][0], LENGTH_CLASSES[outp][1]
    fig.suptitle(f"Latency vs max batch, in {in_tok} / out {out_tok} tokens, {top:.0f} MHz", fontsize=10)
    fig.tight_layout()
    paths.append(folder / "characterize_latency.png")
    _save_png(fig, paths[-1])

    sub = df[(df["input_class"] == inp) & (df["output_class"] == outp) & (df["max_num_seqs"] == ref_batch)]
    fig = Figure(figsize=(9, 3.3))
    axes = fig.subplots(1, 2)
    for ax, metric, name in (
        (axes[0], "power_w", "replica power (W)"),
        (axes[1], "energy_per_output_token_j", "J per output token"),
    ):
        for tp in tps:
            d = sub[sub["tp"] == tp].sort_values("sm_clock_mhz")
            ax.plot(d["sm_clock_mhz"], d[metric], "o-", color=colors[tp], ms=3, label=f"TP{tp}")
        ax.set_xlabel("SM clock (MHz)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Power and energy vs SM clock, max batch {ref_batch}, in {in_tok} / out {out_tok} tokens", fontsize=10
    )
    fig.tight_layout()
    paths.append(folder / "characterize_clock.png")
    _save_png(fig, paths[-1])
    return paths


# ------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.characterize", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-2-70b", help="built-in model name/alias (default: llama-2-70b)")
    p.add_argument("--gpu", default="h100-sxm-80gb", help="GPU name or alias (default: h100-sxm-80gb)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the node (default: 8)")
    p.add_argument("--tp", type=int, nargs="+", default=None, help="TP degrees (default: the feasible of 2 4 8)")
    p.add_argument("--clocks", type=int, nargs="+", default=None, help="SM clocks in MHz (default: 1005 .. 1980)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="max_num_seqs values (default: 1 .. 256)")
    names = "/".join(LENGTH_CLASSES)
    p.add_argument("--inputs", nargs="+", default=None, help=f"input length classes, {names} (default: medium)")
    p.add_argument("--outputs", nargs="+", default=None, help=f"output length classes, {names} (default: all three)")
    p.add_argument("--full", action="store_true", help="all 3 input x 3 output classes (flags above still override)")
    p.add_argument(
        "--load", default="saturating", help="'saturating' (default) or a Poisson arrival rate in requests/s"
    )
    p.add_argument("--tbt-slo-s", type=float, default=0.1, help="SLO on mean time between tokens (s, default 0.1)")
    p.add_argument("--generations", type=int, default=3, help="saturating: batches measured after warm-up (default 3)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="Poisson load: warm-up (s, default 60)")
    p.add_argument("--measure-s", type=float, default=300.0, help="Poisson load: measured window (s, default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of arrivals and the node (default 0)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/characterize"), help="output folder (default runs/characterize)"
    )
    p.add_argument("--plots-dir", type=Path, default=None, help="folder for the PNGs (default: --out)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    return p


def _spec(args: argparse.Namespace) -> SweepSpec:
    """Validate the flags into a SweepSpec; bad values raise InputError naming the flag."""
    load_model(args.model, where="--model")
    gpu = load_gpu(args.gpu, where="--gpu")
    if not 1 <= args.gpus <= 64:
        raise InputError("--gpus", "gpus", f"{args.gpus} is out of range", "use 1 to 64 GPUs")
    surrogate = Surrogate()
    feasible = []
    for tp in (1, 2, 4, 8):
        if tp > args.gpus:
            continue
        try:
            surrogate.replica(args.model, gpu, tp)
        except InputError:
            continue
        feasible.append(tp)
    if args.tp is None:
        tps = [tp for tp in DEFAULT_TPS if tp in feasible]
        if not tps:
            raise InputError(
                "--model",
                "model",
                f"{args.model} fits on no TP of 2, 4, 8 of {args.gpus} x {gpu.name}",
                "use more GPUs",
            )
    else:
        tps = list(dict.fromkeys(args.tp))
        bad = [tp for tp in tps if tp not in feasible]
        if bad:
            raise InputError(
                "--tp",
                "tp",
                f"tp={bad[0]} is infeasible for {args.model} on {args.gpus} x {gpu.name}",
                f"use one of {feasible}",
            )
    grid = gpu.supported_clocks_mhz()
    default_clocks = list(DEFAULT_CLOCKS_MHZ)
    if not set(default_clocks) <= set(grid):  # another GPU: six on its grid, from half to the top clock
        half = [c for c in grid if c >= grid[-1] / 2]
        default_clocks = sorted({half[round(i * (len(half) - 1) / 5)] for i in range(6)})
    clocks = list(dict.fromkeys(args.clocks or default_clocks))
    for c in clocks:
        gpu.check_clock(c, "--clocks")
    batches = sorted(set(args.batches or DEFAULT_BATCHES))
    for b in batches:
        if not 1 <= b <= MAX_RUNNING:
            raise InputError("--batches", "max_num_seqs", f"{b} is out of range", f"use 1 to {MAX_RUNNING}")
    classes: dict[str, list[str]] = {}
    for flag, given, default in (
        ("--inputs", args.inputs, _DEFAULT_INPUTS),
        ("--outputs", args.outputs, _DEFAULT_OUTPUTS),
    ):
        chosen = given or (list(LENGTH_CLASSES) if args.full else list(default))
        for name in chosen:
            if name not in LENGTH_CLASSES:
                raise InputError(flag, "length class", f"unknown class {name!r}", f"use {', '.join(LENGTH_CLASSES)}")
        classes[flag] = list(dict.fromkeys(chosen))
    load_rps: float | None = None
    if args.load != "saturating":
        try:
            load_rps = float(args.load)
        except ValueError:
            load_rps = math.nan
        if not (math.isfinite(load_rps) and load_rps > 0):
            raise InputError(
                "--load", "load", f"{args.load!r} is neither 'saturating' nor a rate > 0", "use e.g. --load 2.5"
            )
    for flag, value, ok, need, example in (
        ("--tbt-slo-s", args.tbt_slo_s, args.tbt_slo_s > 0, "> 0 s", "0.1"),
        ("--generations", args.generations, args.generations >= 1, ">= 1", "3"),
        ("--warmup-s", args.warmup_s, args.warmup_s >= 0, ">= 0 s", "60"),
        ("--measure-s", args.measure_s, args.measure_s > 0, "> 0 s", "300"),
    ):
        if not (ok and math.isfinite(value)):
            raise InputError(
                flag, flag[2:].replace("-", "_"), f"must be {need}, got {value!r}", f"use e.g. {flag} {example}"
            )
    return SweepSpec(
        model=args.model,
        gpu=gpu.name,
        gpus=args.gpus,
        tps=tuple(tps),
        clocks_mhz=tuple(clocks),
        batches=tuple(batches),
        inputs=tuple(classes["--inputs"]),
        outputs=tuple(classes["--outputs"]),
        load_rps=load_rps,
        tbt_slo_s=args.tbt_slo_s,
        generations=args.generations,
        warmup_s=args.warmup_s,
        measure_s=args.measure_s,
        seed=args.seed,
    )


def _print_table(comparison: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Simulator vs the study (Stojkovic et al., arXiv 2403.20306)")
    for col in ("finding", "simulator (median)", "range over pairs", "same running batch", "study", "verdict"):
        table.add_column(col)
    for c in comparison:
        rng = "n/a" if c["sim"] is None else f"{_fmt(c['key'], c['sim_min'])} .. {_fmt(c['key'], c['sim_max'])}"
        same = _fmt(c["key"], c["sim_same_batch"]) if c["key"].startswith("tp_") else ""
        style = {"agrees": "green", "disagrees": "red"}.get(c["verdict"], "yellow")
        verdict = f"[{style}]{c['verdict']}[/{style}]"
        table.add_row(c["label"], _fmt(c["key"], c["sim"]), rng, same, c["study_text"], verdict)
    console = Console(width=max(Console().width, 132))
    console.print(table)
    for c in comparison:
        console.print(f"[dim]{c['label']}: {c['definition']}; {c['pairs']} pairs.[/dim]", soft_wrap=True)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags, sweep, write the CSV and plots, print the comparison."""
    args = _parser().parse_args(argv)
    spec = _spec(args)
    out: Path = args.out
    for flag, folder in (("--out", out), ("--plots-dir", args.plots_dir)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise InputError(flag, flag[2:].replace("-", "_"), f"{folder} is a file", "give a folder")
    started = time.perf_counter()

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"sweeping {spec.points} points", total=spec.points)
        df = sweep(spec, on_point=lambda done, total: progress.update(task, completed=done))
    swept_s = time.perf_counter() - started
    csv_path = out / "characterization.csv"
    atomic_write_text(csv_path, df.to_csv(index=False, float_format="%.6g"))
    plots = [] if args.no_plots else write_plots(df, args.plots_dir or out, spec.tbt_slo_s)
    comparison = compare(df)
    elapsed_s = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "comparison": comparison,
                    "points": len(df),
                    "load": "saturating" if spec.load_rps is None else spec.load_rps,
                    "csv": str(csv_path),
                    "plots": [str(p) for p in plots],
                    "sweep_s": round(swept_s, 2),
                    "elapsed_s": round(elapsed_s, 2),
                }
            )
        )
    else:
        _print_table(comparison)
        print(
            f"{len(df)} points swept in {swept_s:.1f} s ({elapsed_s:.1f} s in all); wrote {csv_path}", file=sys.stderr
        )
        for p in plots:
            print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
