"""A day of the fleet under each baseline: energy (kWh), SLO attainment, parked node-hours.

Run: ``python -m greenrl.fleet.evaluate --fleet default --policies static-max autoscaler planner oracle`` (the
node scenario's held-out days, each whole; prints a markdown table and, with ``--json``, one JSON object).

Public names: fleet_day, run_policy, main.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

from greenrl.errors import exit_on_input_error
from greenrl.fleet.cluster import FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.policies import FLEET_POLICIES, FleetPolicy, make_policy
from greenrl.workload import Trace, scale_for_rate_rps, servegen_trace

__all__ = ["fleet_day", "main", "run_policy"]

logger = logging.getLogger(__name__)


def fleet_day(config: FleetConfig, window: int = 0) -> Trace:
    """The fleet's load over the node scenario's evaluation window ``window`` (seed 10,000 + window, as the env)."""
    start_s, duration_s = config.scenario.workload.eval_windows_s[window]
    scale = scale_for_rate_rps(config.workload.category, config.workload.mean_rps)
    return servegen_trace(config.workload.category, start_s, duration_s, scale=scale, seed=10_000 + window)


def run_policy(sim: FleetSim, policy: FleetPolicy, trace: Trace, seed: int = 0) -> dict[str, Any]:
    """Play ``policy`` over ``trace`` (every node interval to its end); returns the day's figures."""
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


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Evaluate fleet baselines on held-out days; print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleet", default="default")
    p.add_argument("--policies", nargs="+", default=list(FLEET_POLICIES))
    p.add_argument("--windows", nargs="+", type=int, default=None, help="evaluation window indices (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    config = load_fleet(args.fleet)
    windows = args.windows if args.windows is not None else list(range(len(config.scenario.workload.eval_windows_s)))
    sim = FleetSim(config)
    policies = [make_policy(name) for name in args.policies]
    rows = []
    for w in windows:
        trace = fleet_day(config, w)
        day = int(config.scenario.workload.eval_windows_s[w][0] // 86400)
        for policy in policies:
            row = {"day": day, **run_policy(sim, policy, trace)}
            rows.append(row)
            logger.info("%s", row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    ref = {r["day"]: r["energy_kwh"] for r in rows if r["policy"] == "static-max"}
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
