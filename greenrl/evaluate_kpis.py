"""The KPIs of ``python -m greenrl.evaluate``: one episode's per-request KPIs, then means and 95% CIs.

``run_episode`` plays one policy on one sample (``greenrl.rollout``) and scores it from the simulator's
per-request records: energy, SLO attainment, TTFT/TBT percentiles, goodput, reconfigurations, time at
each knob value, plus the per-interval series behind the timeline plots. ``pair_with_reference`` fills
the paired KPIs against static-max on the same sample; ``summarize`` turns a policy's samples into one
record (mean and t-interval half-width per KPI).

Public names: KPI_NAMES, Episode, Evaluation, RequestLog, run_episode, pair_with_reference, summarize,
mean_ci95.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from greenrl.baselines import decode_obs
from greenrl.core import Policy
from greenrl.errors import InputError
from greenrl.evaluate_cases import Case, case_env
from greenrl.evaluate_policies import PolicySpec
from greenrl.rollout import Rollout, rollout

__all__ = [
    "KPI_NAMES",
    "Episode",
    "Evaluation",
    "RequestLog",
    "mean_ci95",
    "pair_with_reference",
    "run_episode",
    "summarize",
]

KPI_NAMES = (
    "energy_j",
    "energy_kwh",
    "energy_per_output_token_j",
    "saving_vs_static_max",
    "slo_attainment",
    "slo_delta_vs_static_max",
    "ttft_p50_s",
    "ttft_p99_s",
    "tbt_p50_s",
    "tbt_p99_s",
    "goodput_rps",
    "reconfigurations",
    "tp_changes",
    "mean_power_w",
    "mean_sm_clock_mhz",
    "prefill_clock_frac",
    "output_tokens",
    "requests",
)
"""Per-sample KPIs, each summarized as ``<name>`` (mean) and ``<name>_ci95`` (half-width) in a record."""

_OBSERVED = ("arrival_rate_rps", "ttft_mean_s", "tbt_mean_s", "waiting", "running", "kv_cache_usage_frac")
"""Timeline series read from the decoded observation after each interval."""


@runtime_checkable
class RequestLog(Protocol):
    """A node that keeps every request's record (the simulator): what the per-request KPIs read."""

    now_s: float

    def requests(self) -> dict[str, np.ndarray]:
        """Per-request records so far (times in s; -1 where an event has not happened)."""
        ...

    def slo_attainment(self) -> float:
        """Share of arrived requests that met their SLO (unfinished ones count as missed)."""
        ...


@dataclass(slots=True)
class Episode:
    """One policy on one case: its KPIs, share of intervals at each knob value, and per-interval series."""

    policy: str
    scenario: str
    rate_scale: float
    window: int
    seed: int
    kpis: dict[str, float]
    knob_time: dict[str, dict[str, float]]
    timeline: dict[str, list[float]]
    wall_s: float


@dataclass(slots=True)
class Evaluation:
    """Records (one per policy x scenario x rate scale), the episodes behind them, and run metadata."""

    records: list[dict[str, Any]]
    episodes: list[Episode]
    meta: dict[str, Any]


# ------------------------------------------------------------------------------------------ one episode


def run_episode(policy: Policy, case: Case, label: str = "") -> Episode:
    """Run ``policy`` on the case's requests (``episode_env``/``bind`` hooks as in ``greenrl.rollout``) and score it.

    Raises:
        InputError: the episode's node keeps no per-request records (not a simulator).
    """
    started = time.perf_counter()
    episode = rollout(policy, case_env(case), seed=case.seed)
    timeline, knob_time, changes = _timeline(episode)
    node = episode.env.node
    if not isinstance(node, RequestLog):
        raise InputError("evaluate", "node", "per-request KPIs need the simulator's records", "use case_env")
    kpis = _kpis(node, episode.energy_j, timeline, changes)
    episode.env.close()
    return Episode(
        label,
        case.name,
        case.rate_scale,
        case.window,
        case.seed,
        kpis,
        knob_time,
        timeline,
        time.perf_counter() - started,
    )


def _timeline(episode: Rollout) -> tuple[dict[str, list[float]], dict[str, dict[str, float]], dict[str, float]]:
    """Per-interval series, the share of intervals at each knob value, and the reconfiguration counts."""
    env = episode.env
    interval = env.scenario.control.interval_s
    keys = ("t_end_s", "arrival_rate_rps", "power_w", "prefill_clock_frac", *_OBSERVED[1:], *env.knob_names)
    series: dict[str, list[float]] = {k: [] for k in keys}
    knob_counts: dict[str, Counter[int]] = {k: Counter() for k in env.knob_names}
    previous = env.initial
    reconfigurations = tp_changes = 0
    for n, step in enumerate(episode.steps, start=1):
        info, knobs = step.info, step.info["knobs"]
        signals = decode_obs(step.next_obs)
        series["t_end_s"].append(n * interval)
        series["power_w"].append(float(info["energy_j"]) / interval)
        series["prefill_clock_frac"].append(float(info.get("prefill_clock_frac", 0.0)))
        for key in _OBSERVED:
            series[key].append(signals[key])
        for name in env.knob_names:
            series[name].append(float(getattr(knobs, name)))
            knob_counts[name][int(getattr(knobs, name))] += 1
        reconfigurations += int(knobs != previous)
        tp_changes += int(knobs.tp != previous.tp)
        previous = knobs
    steps = len(episode.steps)
    knob_time = {name: {str(v): c / steps for v, c in sorted(counts.items())} for name, counts in knob_counts.items()}
    return series, knob_time, {"reconfigurations": float(reconfigurations), "tp_changes": float(tp_changes)}


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _kpis(
    node: RequestLog, energy_j: float, series: dict[str, list[float]], changes: dict[str, float]
) -> dict[str, float]:
    """The episode's KPIs from the node's request records and the per-interval series."""
    rec = node.requests()
    now = node.now_s
    arrived = rec["arrival_s"] < now
    ttft = np.where(rec["ttft_s"] >= 0, rec["ttft_s"], now - rec["arrival_s"])[arrived]  # unstarted: lower bound
    tbt = rec["tbt_mean_s"][arrived & (rec["generated_tokens"] > 1)]
    tokens = float(rec["generated_tokens"].sum())
    met = float(np.count_nonzero(rec["slo_met"] & arrived))
    return {
        "energy_j": energy_j,
        "energy_kwh": energy_j / 3.6e6,
        "energy_per_output_token_j": energy_j / tokens if tokens else math.nan,
        "saving_vs_static_max": math.nan,  # filled in against the static-max run of the same case
        "slo_delta_vs_static_max": math.nan,  # the same: attainment minus static-max's (fraction)
        "slo_attainment": node.slo_attainment(),
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p99_s": _percentile(ttft, 99),
        "tbt_p50_s": _percentile(tbt, 50),
        "tbt_p99_s": _percentile(tbt, 99),
        "goodput_rps": met / now if now > 0 else math.nan,
        "reconfigurations": changes["reconfigurations"],
        "tp_changes": changes["tp_changes"],
        "mean_power_w": energy_j / now if now > 0 else math.nan,
        "mean_sm_clock_mhz": float(np.mean(series["sm_clock_mhz"])) if series.get("sm_clock_mhz") else math.nan,
        "prefill_clock_frac": float(np.mean(series["prefill_clock_frac"])),
        "output_tokens": tokens,
        "requests": float(np.count_nonzero(arrived)),
    }


# ------------------------------------------------------------------------------------------ statistics


def pair_with_reference(episodes: list[Episode], reference: list[Episode]) -> None:
    """Fill each episode's paired KPIs against the reference (static-max) episode of the same sample."""
    ref = {(e.window, e.seed): e.kpis for e in reference}
    for e in episodes:
        base = ref[(e.window, e.seed)]
        energy = base["energy_j"]
        e.kpis["saving_vs_static_max"] = 1.0 - e.kpis["energy_j"] / energy if energy > 0 else math.nan
        e.kpis["slo_delta_vs_static_max"] = e.kpis["slo_attainment"] - base["slo_attainment"]


def mean_ci95(values: list[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (None with fewer than two finite values).

    Example:
        >>> m, h = mean_ci95([1.0, 2.0, 3.0])
        >>> m, round(h, 3)
        (2.0, 2.484)
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, None
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, half


def summarize(spec: PolicySpec, episodes: list[Episode], arrivals: str) -> dict[str, Any]:
    """One record: the policy, its samples, and mean and 95% CI half-width of every KPI over them."""
    first = episodes[0]
    out: dict[str, Any] = {
        "policy": spec.label,
        "policy_kind": spec.kind,
        "policy_source": spec.source,
        "scenario": first.scenario,
        "rate_scale": first.rate_scale,
        "arrivals": arrivals,
        "n_samples": len(episodes),
        "windows": sorted({e.window for e in episodes}),
        "seeds": sorted({e.seed for e in episodes}),
    }
    for name in KPI_NAMES:
        mean, half = mean_ci95([e.kpis[name] for e in episodes])
        out[name] = mean
        out[f"{name}_ci95"] = half
    knob_time: dict[str, dict[str, float]] = {}
    for name in first.knob_time:
        values = sorted({v for e in episodes for v in e.knob_time[name]}, key=float)
        knob_time[name] = {v: float(np.mean([e.knob_time[name].get(v, 0.0) for e in episodes])) for v in values}
    out["time_at_knob_frac"] = knob_time
    out["samples"] = [{"window": e.window, "seed": e.seed, **e.kpis} for e in episodes]
    return out
