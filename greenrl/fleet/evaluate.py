"""A day of the fleet under each baseline: energy (kWh), SLO attainment, parked node-hours.

Run: ``python -m greenrl.fleet.evaluate --fleet default --policies static-max autoscaler planner oracle`` (the
node scenario's held-out days, each whole; prints a markdown table and, with ``--json``, one JSON object);
``--checkpoint checkpoints/fleet-default/maskable_ppo_s0`` adds a learned controller, ``--category
language/m-small`` replaces the load with a ServeGen category at the same mean rate.

Public names: fleet_day, validation_day, validation_windows_s, run_policy, plot_timelines, main.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from greenrl.errors import InputError, exit_on_input_error
from greenrl.fleet.cluster import FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.policies import FLEET_POLICIES, FleetPolicy, make_policy
from greenrl.workload import Trace, scale_for_rate_rps, servegen_categories, servegen_trace

__all__ = ["fleet_day", "main", "plot_timelines", "run_policy", "validation_day", "validation_windows_s"]

logger = logging.getLogger(__name__)


def fleet_day(config: FleetConfig, window: int = 0, duration_s: float | None = None) -> Trace:
    """The fleet's load over the node scenario's evaluation window ``window`` (seed 10,000 + window, as the env).

    ``duration_s``: only the window's first seconds (a quick look; the table's figures are whole days).
    """
    start_s, whole_s = config.scenario.workload.eval_windows_s[window]
    duration_s = whole_s if duration_s is None else min(whole_s, duration_s)
    scale = scale_for_rate_rps(config.workload.category, config.workload.mean_rps)
    return servegen_trace(config.workload.category, start_s, duration_s, scale=scale, seed=10_000 + window)


def validation_windows_s(config: FleetConfig) -> list[tuple[float, float]]:
    """Whole days between the end of the training range and the first held-out window (days 10 and 11)."""
    w = config.scenario.workload
    start, stop = w.train_range_s[1], min(t for t, _ in w.eval_windows_s)
    return [(float(t), 86400.0) for t in np.arange(start, stop - 86400.0 + 1.0, 86400.0)]


def validation_day(config: FleetConfig, index: int = 0) -> Trace:
    """The fleet's load on validation day ``index`` (seed 20,000 + index): model and parameter selection."""
    start_s, duration_s = validation_windows_s(config)[index]
    scale = scale_for_rate_rps(config.workload.category, config.workload.mean_rps)
    return servegen_trace(config.workload.category, start_s, duration_s, scale=scale, seed=20_000 + index)


def run_policy(
    sim: FleetSim, policy: FleetPolicy, trace: Trace, seed: int = 0, timeline: dict[str, list[Any]] | None = None
) -> dict[str, Any]:
    """Play ``policy`` over ``trace`` (every node interval to its end); returns the day's figures.

    With ``timeline`` (a dict), each interval's end (s), arrivals per pool, nodes on and fleet power (W) are
    appended to its lists ``t_end_s``, ``pool_arrivals``, ``nodes_on``, ``power_w``.
    """
    t0 = time.perf_counter()
    sim.reset(trace, seed=seed)
    policy.reset(sim)
    dt = sim.config.control.node_interval_s
    steps = max(1, round(trace.duration_s / dt))
    snap: FleetSnapshot | None = None
    on_nodes = 0.0
    for step in range(steps):
        action = policy.act(sim, snap, step)
        if action is not None:
            sim.apply(action)
        snap = sim.advance(dt)
        on_nodes += sum(1 for s in snap.states if s == "on")
        if timeline is not None:
            timeline.setdefault("t_end_s", []).append(snap.t_end_s)
            timeline.setdefault("pool_arrivals", []).append(snap.pool_arrivals)
            timeline.setdefault("nodes_on", []).append(sum(1 for s in snap.states if s == "on"))
            timeline.setdefault("power_w", []).append(snap.energy_j / (snap.t_end_s - snap.t_start_s))
    r = sim.result()
    return {
        "policy": getattr(policy, "name", type(policy).__name__),
        "energy_kwh": round(r.energy_kwh, 3),
        "slo_attainment": round(r.slo_attainment, 5),
        "requests": r.requests,
        "missed": r.requests - r.slo_met,
        "mean_nodes_on": round(on_nodes / steps, 3),
        "parked_node_hours": round(r.parked_node_hours, 2),
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def plot_timelines(timelines: dict[str, dict[str, list[Any]]], pools: list[str], path: Path, every: int = 10) -> None:
    """One day under each policy: arrivals per pool, nodes on, fleet power; ``every`` intervals averaged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7))
    axes = fig.subplots(3, 1, sharex=True)
    first = next(iter(timelines.values()))
    n = len(first["t_end_s"]) // every * every
    hours = np.array(first["t_end_s"][:n:every]) / 3600.0
    arrivals = np.array(first["pool_arrivals"][:n], dtype=float).reshape(n // every, every, -1).sum(axis=1)
    span_s = every * (first["t_end_s"][1] - first["t_end_s"][0]) if n > 1 else 1.0
    for i, name in enumerate(pools):
        axes[0].step(hours, arrivals[:, i] / span_s, where="pre", label=f"pool {name}")
    axes[0].set_ylabel("arrivals (req/s)")
    axes[0].legend(fontsize=7)
    for policy, t in timelines.items():
        axes[1].step(hours, np.array(t["nodes_on"][:n], dtype=float).reshape(-1, every).mean(axis=1), label=policy)
        axes[2].step(hours, np.array(t["power_w"][:n]).reshape(-1, every).mean(axis=1) / 1000.0, label=policy)
    axes[1].set_ylabel("nodes on")
    axes[1].legend(fontsize=7)
    axes[2].set_ylabel("fleet power (kW)")
    axes[2].set_xlabel("hour of the day")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Evaluate fleet baselines on held-out days; print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleet", default="default")
    p.add_argument(
        "--policies",
        nargs="+",
        default=list(FLEET_POLICIES),
        help=f"{', '.join(FLEET_POLICIES)}; <name>+guard adds the learned controller's fast node rule",
    )
    p.add_argument("--windows", nargs="+", type=int, default=None, help="evaluation window indices (default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeline", type=Path, default=None, help="plot the first window's day per policy to this PNG")
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a learned fleet controller (an exported folder, or an SB3 .zip) to rank with the baselines; repeatable",
    )
    p.add_argument(
        "--category",
        default=None,
        help="replace the fleet's ServeGen category (e.g. language/m-small, never trained on), same mean rate",
    )
    p.add_argument("--duration-s", type=float, default=None, help="only each day's first seconds (default: whole)")
    args = p.parse_args(argv)
    config = load_fleet(args.fleet)
    if args.category is not None:
        categories = servegen_categories()
        if args.category not in categories:
            raise InputError(
                "--category", "category", f"unknown ServeGen category {args.category!r}", f"use one of {categories}"
            )
        config = replace(config, workload=replace(config.workload, category=args.category))
    windows = args.windows if args.windows is not None else list(range(len(config.scenario.workload.eval_windows_s)))
    sim = FleetSim(config)
    policies: list[FleetPolicy] = []
    for name in args.policies:
        if name.endswith("+guard"):  # a baseline with the learned controller's fast node rule
            from greenrl.fleet.learn import GuardedFleet

            policies.append(GuardedFleet(make_policy(name.removesuffix("+guard"))))
        else:
            policies.append(make_policy(name))
    if args.checkpoint:
        from greenrl.fleet.learn import load_learned

        for i, path in enumerate(args.checkpoint):
            policies.append(load_learned(path, "learned" if len(args.checkpoint) == 1 else f"learned-{i}"))
    rows = []
    timelines: dict[str, dict[str, list[Any]]] = {}
    for w in windows:
        trace = fleet_day(config, w, args.duration_s)
        day = int(config.scenario.workload.eval_windows_s[w][0] // 86400)
        for policy in policies:
            timeline = timelines.setdefault(policy.name, {}) if w == windows[0] else None
            row = {"day": day, **run_policy(sim, policy, trace, timeline=timeline)}
            rows.append(row)
            logger.info("%s", row)
    if args.timeline is not None:
        plot_timelines(timelines, [pool.name for pool in config.pools], args.timeline)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    ref = {r["day"]: r["energy_kwh"] for r in rows if r["policy"] == "static-max"}
    print(f"fleet {config.name}, load {config.workload.category} at {config.workload.mean_rps:g} requests/s (mean)")
    print("| day | policy | energy (kWh) | saving vs static-max | SLO attainment | missed | nodes on (mean) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        saving = f"{100 * (1 - r['energy_kwh'] / ref[r['day']]):.1f}%" if r["day"] in ref else "-"
        print(
            f"| {r['day']} | {r['policy']} | {r['energy_kwh']:.1f} | {saving} | {100 * r['slo_attainment']:.2f}% "
            f"| {r['missed']} | {r['mean_nodes_on']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
