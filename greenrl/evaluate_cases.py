"""The samples ``python -m greenrl.evaluate`` runs on: evaluation windows x seeds, exact or bootstrapped.

A *sample* (``Case``) is one (window, seed) pair of a scenario at a rate scale. With ``resample``
arrivals each sample replays a Poisson bootstrap of the window's requests (``resample_trace``), seeded
by (seed, window); with ``exact`` it is the window itself. A rate scale other than 1 lengthens or
shortens the episode to cover the scaled window plus the scenario's drain time.

Public names: Case, Arrivals, JITTER_S, build_cases, case_env, resample_trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import ServingEnv, build_node
from greenrl.errors import InputError
from greenrl.sim import SimNode
from greenrl.workload import Trace

__all__ = ["JITTER_S", "Arrivals", "Case", "build_cases", "case_env", "resample_trace"]

JITTER_S = 5.0
"""Largest shift of the extra copies of a bootstrapped request (s); the first copy keeps its time."""

Arrivals = Literal["resample", "exact"]


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
    drain_s = max(0.0, base.eval_steps * interval - _exact_trace(base, window).duration_s)
    span_s = _exact_trace(scaled, window).duration_s + drain_s
    steps = max(1, math.ceil(span_s / interval - 1e-9))
    return replace(scaled, episode=replace(base.episode, steps=steps, eval_steps=steps))


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
