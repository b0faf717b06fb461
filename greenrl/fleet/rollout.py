"""One fleet policy over one day: the loop shared by evaluation, training's validation and the benchmark.

Public names: run_policy.
"""

from __future__ import annotations

import time
from typing import Any

from greenrl.fleet.cluster import FleetSim, FleetSnapshot
from greenrl.fleet.policies import FleetPolicy
from greenrl.workload import Trace

__all__ = ["run_policy"]


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
