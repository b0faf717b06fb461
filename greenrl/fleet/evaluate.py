"""A day of the fleet under each baseline: energy (kWh), SLO attainment, parked node-hours.

Run: ``python -m greenrl.fleet.evaluate --fleet default --policies static-max autoscaler planner oracle`` (the
node scenario's held-out days, each whole; prints a markdown table and, with ``--json``, one JSON object);
``--checkpoint checkpoints/fleet-default/maskable_ppo_s0`` adds a learned controller, ``--category
language/m-small`` replaces the load with a ServeGen category at the same mean rate.

Public names: plot_timelines, main (the days: ``greenrl.fleet.days``; one policy over one day:
``greenrl.fleet.rollout``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from greenrl.errors import InputError, exit_on_input_error
from greenrl.fleet.cluster import FleetSim
from greenrl.fleet.config import load_fleet
from greenrl.fleet.days import fleet_day
from greenrl.fleet.policies import FLEET_POLICIES, FleetPolicy, make_policy
from greenrl.fleet.rollout import run_policy
from greenrl.workload import servegen_categories

__all__ = ["main", "plot_timelines"]

logger = logging.getLogger(__name__)


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
