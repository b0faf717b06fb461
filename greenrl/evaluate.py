"""``python -m greenrl.evaluate``: policies x scenarios x rate scales x (windows x seeds) -> KPI tables with 95% CIs.

Every policy (baselines by name, exported controller folders, SB3 ``.zip`` models) runs on the same
held-out evaluation windows. A *sample* is one (window, seed) pair. With ``--arrivals resample`` (the
default) each sample replays a Poisson bootstrap of the window's requests (every request appears
Poisson(1) times, extra copies shifted by up to +-5 s), seeded by (seed, window), so deterministic
policies see workload variation and the CIs say how much a result depends on it; with ``exact`` every
sample is the window itself and seeds vary only stochastic policies (``random``). KPIs are computed
per sample and summarized as mean +- the half-width of a t-distribution 95% interval over samples;
``saving_vs_static_max`` and ``slo_delta_vs_static_max`` (attainment minus static-max's) are paired
(same sample), so their intervals exclude the workload variation both policies share.
Generalization: ``--rate-scales`` speeds the arrivals up or slows them down (episodes are lengthened
or shortened to cover the scaled window plus the scenario's drain time), ``--scenarios code diurnal``
evaluates on the other Azure trace and the synthetic day; each (scenario, rate scale) gets its own table.

Outputs (``--out``, default ``runs/eval/<timestamp>/``): ``results.json`` (``--json`` writes a copy
elsewhere), ``results.csv``, ``results.md``, ``pareto_<scenario>_x<rate>.png`` (energy vs SLO
attainment) and ``timeline_<policy>_<scenario>_x<rate>.png`` (load, knobs, power, TTFT/TBT vs SLO).

The tables, files and plots are written by :mod:`greenrl.evaluate_report`; ``markdown_report``,
``write_outputs`` and ``SCHEMA`` are re-exported here.

Public names: main, evaluate, Evaluation, Case, Episode, PolicySpec, Sb3Policy, resolve_policies,
default_policies, build_cases, case_env, run_episode, resample_trace, mean_ci95, markdown_report,
write_outputs, SCHEMA, KPI_NAMES.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from greenrl import __version__
from greenrl.baselines import BASELINES, baseline_names, decode_obs, make_baseline
from greenrl.bundled import checkpoints_dir
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import ServingEnv, build_node
from greenrl.errors import InputError, exit_on_input_error
from greenrl.evaluate_report import SCHEMA, _print_tables, markdown_report, write_outputs
from greenrl.sim import SimNode
from greenrl.workload import Trace

__all__ = [
    "KPI_NAMES",
    "SCHEMA",
    "Case",
    "Episode",
    "Evaluation",
    "PolicySpec",
    "Sb3Policy",
    "build_cases",
    "case_env",
    "default_policies",
    "evaluate",
    "load_policy",
    "main",
    "markdown_report",
    "mean_ci95",
    "resample_trace",
    "resolve_policies",
    "run_episode",
    "write_outputs",
]

logger = logging.getLogger(__name__)

DEFAULT_SEEDS = 5
JITTER_S = 5.0
"""Largest shift of the extra copies of a bootstrapped request (s); the first copy keeps its time."""

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

Arrivals = Literal["resample", "exact"]


# ------------------------------------------------------------------------------------------ policies


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy to evaluate: its table label, kind and source (baseline name or path)."""

    label: str
    kind: Literal["baseline", "controller", "sb3"]
    source: str


def _label_for(path: Path, kind: str) -> str:
    if kind == "controller":
        name = path.parent.name if path.name == "controller" else path.name
        return f"ppo:{name}"
    if path.stem == "model" and path.parent.name in ("best", "checkpoint"):  # runs/<run>/best/model.zip
        return f"sb3:{path.parent.parent.name}/{path.parent.name}"
    return f"sb3:{path.stem}"


def resolve_policies(items: list[str]) -> list[PolicySpec]:
    """Baseline names, controller folders (or run folders holding ``controller/``) and SB3 zips -> specs.

    Raises:
        InputError: for a name that is neither a baseline nor an existing controller folder or zip.
    """
    if not items:
        raise InputError("--policies", "policies", "no policy given", f"name baselines ({', '.join(BASELINES)})")
    specs: list[PolicySpec] = []
    for item in items:
        if item in BASELINES:
            specs.append(PolicySpec(item, "baseline", item))
            continue
        path = Path(item)
        if path.is_dir():
            folder = path if (path / "controller.json").is_file() else path / "controller"
            if not (folder / "controller.json").is_file():
                raise InputError(
                    "--policies",
                    item,
                    "folder has no controller.json (nor controller/controller.json)",
                    "give an exported controller folder, e.g. checkpoints/default/<name>",
                )
            specs.append(PolicySpec(_label_for(folder, "controller"), "controller", str(folder)))
        elif path.is_file() and path.suffix == ".zip":
            specs.append(PolicySpec(_label_for(path, "sb3"), "sb3", str(path)))
        else:
            raise InputError(
                "--policies",
                item,
                "unknown policy: not a baseline name, a controller folder or an SB3 .zip",
                f"use one of {', '.join(BASELINES)}, or a path to a controller folder or .zip",
            )
    seen: Counter[str] = Counter()
    unique = []
    for spec in specs:
        seen[spec.label] += 1
        label = spec.label if seen[spec.label] == 1 else f"{spec.label}#{seen[spec.label]}"
        unique.append(replace(spec, label=label))
    return unique


def default_policies(scenarios: list[str] | None = None) -> list[str]:
    """Controllers in ``checkpoints/<scenario>/*`` for each scenario (default: ``default``), then every baseline."""
    found: list[str] = []
    for scenario in scenarios or ["default"]:
        root = checkpoints_dir() / Path(scenario).stem
        found += sorted(str(p.parent) for p in root.glob("*/controller.json")) if root.is_dir() else []
    return found + baseline_names()


class Sb3Policy:
    """An SB3 PPO/MaskablePPO model behind the evaluator's interface (passes action masks when maskable)."""

    deterministic = True

    def __init__(self, model: Any, maskable: bool) -> None:
        self.model, self.maskable = model, maskable
        self.env: ServingEnv | None = None

    def bind(self, env: ServingEnv) -> None:
        """Remember the env for its action masks."""
        self.env = env

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[Any, Any]:
        """The model's action (masked when the model is a MaskablePPO)."""
        kwargs = {"action_masks": self.env.action_masks()} if self.maskable and self.env is not None else {}
        return self.model.predict(observation, state, episode_start, deterministic, **kwargs)


def _load_sb3(path: Path, env: ServingEnv) -> Sb3Policy:
    where = str(path)
    if not zipfile.is_zipfile(path):
        raise InputError(where, "file", "not a zip file", "give a model saved by SB3's model.save()")
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
    except (KeyError, json.JSONDecodeError):
        raise InputError(where, "data", "no SB3 data entry", "give a model saved by SB3's model.save()") from None
    maskable = "maskable" in str(data.get("policy_class", {}).get("__module__", "")).lower()
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    model = (MaskablePPO if maskable else PPO).load(path, device="cpu")
    obs_shape = tuple(model.observation_space.shape or ())
    nvec = [int(n) for n in getattr(model.action_space, "nvec", [])]
    if obs_shape != env.observation_space.shape or nvec != [int(n) for n in env.action_space.nvec]:
        raise InputError(
            where,
            "spaces",
            f"model has observation {obs_shape} and actions {nvec}; scenario {env.scenario.name} has "
            f"{env.observation_space.shape} and {[int(n) for n in env.action_space.nvec]}",
            "use a model trained on this scenario",
        )
    return Sb3Policy(model, maskable)


def load_policy(spec: PolicySpec, env: ServingEnv, seed: int) -> Any:
    """The policy object of ``spec`` for ``env`` (a baseline still needs ``bind(env)`` after ``reset``)."""
    if spec.kind == "baseline":
        return make_baseline(spec.source, env, seed)
    if spec.kind == "controller":
        from greenrl.policy import load_controller

        return load_controller(spec.source, expect_env=env)
    return _load_sb3(Path(spec.source), env)


# --------------------------------------------------------------------------------------------- cases


def resample_trace(trace: Trace, rng: np.random.Generator) -> Trace:
    """A Poisson bootstrap of ``trace``, same horizon.

    Each request appears Poisson(1) times; its first copy keeps its arrival time, further copies are
    shifted by up to +-``JITTER_S`` s (kept in the horizon), so duplicates do not arrive as artificial
    bursts. The rate profile, bursts and the length mix are kept in expectation (measured: static-max's
    SLO attainment on bootstrapped samples matches the exact windows within the sample spread); the
    total count varies by about +-sqrt(n).
    """
    counts = rng.poisson(1.0, len(trace))
    idx = np.repeat(np.arange(len(trace)), counts)
    shift = rng.uniform(-JITTER_S, JITTER_S, len(idx))
    first = np.ones(len(idx), dtype=bool)
    first[1:] = idx[1:] != idx[:-1]
    shift[first] = 0.0
    arrival = np.clip(trace.arrival_s[idx] + shift, 0.0, np.nextafter(trace.duration_s, 0.0))
    order = np.argsort(arrival, kind="stable")
    return Trace(
        f"{trace.name}[bootstrap]",
        arrival[order],
        trace.input_tokens[idx][order],
        trace.output_tokens[idx][order],
        trace.duration_s,
    )


@dataclass(frozen=True, slots=True)
class Case:
    """One evaluation sample: a scenario (its rate scale and episode length applied), window, seed, requests."""

    scenario: Scenario
    name: str
    rate_scale: float
    window: int
    seed: int
    trace: Trace = field(repr=False)


def _exact_trace(scenario: Scenario, window: int) -> Trace:
    node = build_node(scenario, "eval", window)
    node.reset(seed=0)
    assert node.trace is not None
    return node.trace


def _scaled(base: Scenario, window: int, rate_scale: float) -> Scenario:
    """``base`` with the rate scale applied and episodes covering the scaled window plus the drain time."""
    w = base.workload
    scaled = replace(base, workload=replace(w, eval_rate_scale=w.eval_rate_scale * rate_scale))
    if rate_scale == 1.0:
        return scaled
    interval = base.control.interval_s
    drain_s = max(0.0, base.steps * interval - _exact_trace(base, window).duration_s)
    span_s = _exact_trace(scaled, window).duration_s + drain_s
    return replace(scaled, episode=replace(base.episode, steps=max(1, math.ceil(span_s / interval - 1e-9))))


def build_cases(scenario: str, rate_scale: float, seeds: int, arrivals: Arrivals = "resample") -> list[Case]:
    """The samples of one (scenario, rate scale): every evaluation window x seeds 0..seeds-1."""
    if not (math.isfinite(rate_scale) and rate_scale > 0):
        raise InputError(
            "--rate-scales", "rate_scale", f"must be a positive number, got {rate_scale!r}", "e.g. 0.5 1 2"
        )
    if seeds < 1:
        raise InputError("--seeds", "seeds", f"must be at least 1, got {seeds}", "give 1 or more")
    if arrivals not in ("resample", "exact"):
        raise InputError("--arrivals", "arrivals", f"unknown mode {arrivals!r}", "use resample or exact")
    base = load_scenario(scenario)
    if not base.workload.eval_windows_s:
        raise InputError(base.path, "workload.eval_windows_s", "no evaluation windows", "add [[start_s, duration_s]]")
    cases = []
    for window in range(len(base.workload.eval_windows_s)):
        scaled = _scaled(base, window, rate_scale)
        exact = _exact_trace(scaled, window)
        for seed in range(seeds):
            trace = exact if arrivals == "exact" else resample_trace(exact, np.random.default_rng([seed, window]))
            cases.append(Case(scaled, base.name, rate_scale, window, seed, trace))
    return cases


def case_env(case: Case) -> ServingEnv:
    """A fresh evaluation env replaying the case's requests."""
    node = SimNode(build_node(case.scenario, "eval", case.window).config, case.trace)
    return ServingEnv(case.scenario, "eval", case.window, node=node)


# ------------------------------------------------------------------------------------------ episodes


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


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def run_episode(policy: Any, case: Case, label: str = "") -> Episode:
    """Run ``policy`` (anything with SB3's ``predict``; ``episode_env``/``bind`` hooks used if present)."""
    started = time.perf_counter()
    env = case_env(case)
    if hasattr(policy, "episode_env"):
        env = policy.episode_env(env)
    obs, _ = env.reset(seed=case.seed)
    if hasattr(policy, "bind"):
        policy.bind(env)
    interval = env.scenario.control.interval_s
    series: dict[str, list[float]] = {
        k: []
        for k in (
            "t_end_s",
            "arrival_rate_rps",
            "power_w",
            "prefill_clock_frac",
            "ttft_mean_s",
            "tbt_mean_s",
            "waiting",
            "running",
            "kv_cache_usage_frac",
            *env.knob_names,
        )
    }
    energy_j = 0.0
    previous = env.initial
    reconfigurations = tp_changes = 0
    knob_counts: dict[str, Counter[int]] = {k: Counter() for k in env.knob_names}
    done, step = False, 0
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, _, done, info = env.step(action)
        step += 1
        knobs = info["knobs"]
        energy_j += float(info["energy_j"])
        signals = decode_obs(obs)
        series["t_end_s"].append(step * interval)
        series["power_w"].append(float(info["energy_j"]) / interval)
        series["prefill_clock_frac"].append(float(info.get("prefill_clock_frac", 0.0)))
        for key in ("arrival_rate_rps", "ttft_mean_s", "tbt_mean_s", "waiting", "running", "kv_cache_usage_frac"):
            series[key].append(signals[key])
        for name in env.knob_names:
            series[name].append(float(getattr(knobs, name)))
            knob_counts[name][int(getattr(knobs, name))] += 1
        reconfigurations += int(knobs != previous)
        tp_changes += int(knobs.tp != previous.tp)
        previous = knobs
    node = env.node
    assert isinstance(node, SimNode)
    rec = node.requests()
    now = node.now_s
    arrived = rec["arrival_s"] < now
    ttft = np.where(rec["ttft_s"] >= 0, rec["ttft_s"], now - rec["arrival_s"])[arrived]  # unstarted: lower bound
    tbt = rec["tbt_mean_s"][arrived & (rec["generated_tokens"] > 1)]
    tokens = float(rec["generated_tokens"].sum())
    met = float(np.count_nonzero(rec["slo_met"] & arrived))
    kpis = {
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
        "reconfigurations": float(reconfigurations),
        "tp_changes": float(tp_changes),
        "mean_power_w": energy_j / now if now > 0 else math.nan,
        "mean_sm_clock_mhz": float(np.mean(series["sm_clock_mhz"])) if series.get("sm_clock_mhz") else math.nan,
        "prefill_clock_frac": float(np.mean(series["prefill_clock_frac"])),
        "output_tokens": tokens,
        "requests": float(np.count_nonzero(arrived)),
    }
    knob_time = {name: {str(v): c / step for v, c in sorted(counts.items())} for name, counts in knob_counts.items()}
    env.close()
    return Episode(
        label,
        case.name,
        case.rate_scale,
        case.window,
        case.seed,
        kpis,
        knob_time,
        series,
        time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------------------ statistics


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


def _record(spec: PolicySpec, episodes: list[Episode], arrivals: str) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------ evaluation


@dataclass(slots=True)
class Evaluation:
    """Records (one per policy x scenario x rate scale), the episodes behind them, and run metadata."""

    records: list[dict[str, Any]]
    episodes: list[Episode]
    meta: dict[str, Any]


def evaluate(
    policies: list[str] | None = None,
    scenarios: list[str] | None = None,
    seeds: int = DEFAULT_SEEDS,
    rate_scales: list[float] | None = None,
    arrivals: Arrivals = "resample",
    progress: bool = True,
) -> Evaluation:
    """Evaluate every policy on every (scenario, rate scale) over windows x seeds.

    Args:
        policies: baseline names, controller folders, SB3 zips (default: ``default_policies()``).
        scenarios: scenario names or YAML paths (default: ``["default"]``).
        seeds: seeds per evaluation window.
        rate_scales: arrival-rate multipliers on top of each scenario's own evaluation scale (default: [1]).
        arrivals: ``resample`` (Poisson bootstrap per sample) or ``exact`` (the window itself).
        progress: show a rich progress bar (on stderr).

    Raises:
        InputError: unknown policy or scenario, a controller or model that does not fit a scenario's
            knobs or observation, a scenario without evaluation windows, bad seeds or rate scales.
    """
    started = time.perf_counter()
    specs = resolve_policies(policies if policies is not None else default_policies(scenarios))
    scenario_names = scenarios or ["default"]
    scales = rate_scales or [1.0]
    grid = [(s, r, build_cases(s, r, seeds, arrivals)) for s in scenario_names for r in scales]
    loaded: dict[tuple[str, str], Any] = {}
    for name, _, cases in grid:  # check every controller against every scenario before running anything
        probe = case_env(cases[0])
        for spec in specs:
            if spec.kind != "baseline" and (spec.label, name) not in loaded:
                loaded[(spec.label, name)] = load_policy(spec, probe, 0)
    reference = PolicySpec("static-max", "baseline", "static-max")
    run_specs = specs if any(s.label == "static-max" for s in specs) else [*specs, reference]
    total = sum(len(cases) for _, _, cases in grid) * len(run_specs)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    episodes: list[Episode] = []
    records: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluating", total=total)
        for name, scale, cases in grid:
            by_policy: dict[str, list[Episode]] = {}
            for spec in run_specs:
                bar.update(task, description=f"{spec.label} on {name} x{scale:g}")
                runs: list[Episode] = []
                done_once: dict[int, Episode] = {}
                for case in cases:
                    policy_obj = loaded.get((spec.label, name))
                    deterministic = spec.kind != "baseline" or BASELINES[spec.source].deterministic
                    if arrivals == "exact" and deterministic and case.window in done_once:
                        copy_of = done_once[case.window]  # same requests, same actions: the same episode
                        runs.append(replace(copy_of, seed=case.seed, kpis=dict(copy_of.kpis), wall_s=0.0))
                    else:
                        if policy_obj is None or spec.kind == "baseline":
                            policy_obj = load_policy(spec, case_env(case), case.seed)
                        runs.append(run_episode(policy_obj, case, spec.label))
                        done_once.setdefault(case.window, runs[-1])
                    bar.advance(task)
                by_policy[spec.label] = runs
                timings[f"{spec.label}|{name}|x{scale:g}"] = round(sum(e.wall_s for e in runs), 3)
            ref = {(e.window, e.seed): e.kpis for e in by_policy["static-max"]}
            for spec in specs:
                for e in by_policy[spec.label]:
                    base = ref[(e.window, e.seed)]
                    energy = base["energy_j"]
                    e.kpis["saving_vs_static_max"] = 1.0 - e.kpis["energy_j"] / energy if energy > 0 else math.nan
                    e.kpis["slo_delta_vs_static_max"] = e.kpis["slo_attainment"] - base["slo_attainment"]
                records.append(_record(spec, by_policy[spec.label], arrivals))
                episodes += by_policy[spec.label]
    meta = {
        "schema": SCHEMA,
        "greenrl_version": __version__,
        "command": shlex.join([sys.executable, "-m", "greenrl.evaluate", *sys.argv[1:]]),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - started, 2),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "policies": {s.label: {"kind": s.kind, "source": s.source} for s in specs},
        "scenarios": scenario_names,
        "rate_scales": scales,
        "seeds": seeds,
        "arrivals": arrivals,
        "ci": "mean +- t(0.975, n-1) * sd / sqrt(n) over samples (windows x seeds)",
        "timings_s": timings,
    }
    return Evaluation(records, episodes, meta)


# ------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.evaluate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--policies",
        nargs="+",
        default=None,
        help=f"baselines ({', '.join(BASELINES)}), controller folders or SB3 .zip files "
        "(default: checkpoints/default/* controllers plus every baseline)",
    )
    p.add_argument("--scenarios", nargs="+", default=None, help="scenario names or YAML paths (default: default)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds per evaluation window (default 5)")
    p.add_argument("--rate-scales", nargs="+", type=float, default=None, help="arrival-rate multipliers (default 1)")
    p.add_argument(
        "--arrivals",
        choices=["resample", "exact"],
        default="resample",
        help="resample: Poisson bootstrap of the window per sample (default); exact: the window itself",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/eval/<timestamp>)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results here")
    p.add_argument(
        "--timeline", default=None, help="policy whose timeline to plot (default: first controller, else oracle)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags, evaluate, write the outputs and print the tables."""
    args = _parser().parse_args(argv)
    chosen = args.policies if args.policies is not None else default_policies(args.scenarios)
    labels = [s.label for s in resolve_policies(chosen)]
    timeline = args.timeline
    if timeline is not None and timeline not in labels:
        raise InputError("--timeline", "timeline", f"{timeline!r} is not evaluated", f"use one of {', '.join(labels)}")
    result = evaluate(
        chosen,
        args.scenarios,
        args.seeds,
        args.rate_scales,
        args.arrivals,
        progress=not args.no_progress,
    )
    if timeline is None:
        controllers = [r["policy"] for r in result.records if r["policy_kind"] != "baseline"]
        timeline = controllers[0] if controllers else ("oracle" if "oracle" in labels else labels[0])
    out = args.out or Path("runs") / "eval" / datetime.now().strftime("%Y%m%d-%H%M%S")
    written = write_outputs(result, out, args.json, plots=not args.no_plots, timeline_policy=timeline)
    _print_tables(result.records)
    print(f"wrote {', '.join(str(p) for p in written)} in {result.meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
