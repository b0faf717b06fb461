"""Centralized fleet policy against one policy shared by every node: validation days, agreement, speed.

For two MaskablePPO models of the default fleet (``--central``: ``FleetEnv``'s per-pool action, e.g. a
``greenrl.train --scenario fleet-default`` run's ``best/model.zip`` right after the warm start; ``--shared``:
a ``--agent maskable_ppo_shared`` run's), prints one JSON object with:

- ``validation``: each played over validation days 10 + 11 through ``run_policy`` with the guard
  (``LearnedFleet``, ``SharedNodeFleet``): energy (kWh), attainment, missed requests and the training score
  (``greenrl.fleet.selection.day_score`` per day, at ``--slo-weight``);
- ``agreement``: on the planner's own trajectory over the same days (the planner drives, no guard), the
  share of fleet decisions where each model's fleet action equals the planner's (every node's on/off, and
  for serving nodes pool, TP, replicas and SM clock), and where its serving nodes per pool do;
  ``planner``: the planner's figures on those days;
- ``speed``: decisions per second of ``FleetEnv.step`` and of ``NodeFleetEnv.step`` + ``node_obs`` (same
  seeds and actions standing for the same fleet action, interleaved in one process), and of each model's
  deterministic ``predict`` per decision.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/fleet_shared_vs_central.py --central C.zip --shared S.zip``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from greenrl.fleet import FleetAction, FleetSim, FleetSnapshot, load_fleet
from greenrl.fleet.days import validation_day, validation_windows_s
from greenrl.fleet.env import FleetCodec, FleetEnv
from greenrl.fleet.learn import LearnedFleet
from greenrl.fleet.policies import make_policy
from greenrl.fleet.rollout import run_policy
from greenrl.fleet.selection import day_score, evaluate_days
from greenrl.fleet.shared import NodeFleetEnv, SharedNodeCodec, SharedNodeFleet


def _serving(a: FleetAction) -> tuple[Any, ...]:
    return tuple(
        (j, a.pool_of_node[j], a.knobs[j].tp, a.knobs[j].replicas, a.knobs[j].sm_clock_mhz)
        for j in range(len(a.on))
        if a.on[j]
    )


def _per_pool(a: FleetAction, pools: int) -> tuple[int, ...]:
    return tuple(sum(1 for j in range(len(a.on)) if a.on[j] and a.pool_of_node[j] == q) for q in range(pools))


class _Probe:
    """The planner as a fleet policy; at each decision, asks both models what they would do in its state."""

    name = "planner"

    def __init__(self, central: Any, shared: Any) -> None:
        self.central, self.shared = central, shared
        self.counts = {"decisions": 0, "central_exact": 0, "shared_exact": 0, "central_pools": 0, "shared_pools": 0}

    def reset(self, sim: FleetSim) -> None:
        self.planner = make_policy("planner")
        self.planner.reset(sim)
        self.codec = FleetCodec(sim.config, sim)
        self.nodes = SharedNodeCodec(self.codec)
        self.snaps: list[FleetSnapshot] = []

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        if snapshot is not None:
            self.snaps.append(snapshot)
        decision = step > 0 and step % sim.config.control.steps_per_decision == 0
        if decision:
            hour = (sim.trace.start_hour or 0.0) if sim.trace is not None else 0.0
            a_c, _ = self.central.predict(self.codec.observe(sim, self.snaps, hour), deterministic=True)
            central = self.codec.to_fleet(sim, a_c)
            a_s, _ = self.shared.predict(self.nodes.observe(sim, self.snaps, hour), deterministic=True)
            shared = self.nodes.to_fleet(sim, a_s, self.snaps[-1])
            self.snaps = []
        action = self.planner.act(sim, snapshot, step)
        if decision:
            wanted = action or sim.action
            p = self.codec.pools
            c = self.counts
            c["decisions"] += 1
            c["central_exact"] += int(_serving(central) == _serving(wanted))
            c["shared_exact"] += int(_serving(shared) == _serving(wanted))
            c["central_pools"] += int(_per_pool(central, p) == _per_pool(wanted, p))
            c["shared_pools"] += int(_per_pool(shared, p) == _per_pool(wanted, p))
        return action


def _speed(fleet: str, decisions: int, seed: int) -> dict[str, float]:
    central = FleetEnv(fleet, "train", slo_weight=30.0, window_s=21600.0)
    nodes = NodeFleetEnv(fleet, "train", slo_weight=30.0, window_s=21600.0)
    central.reset(seed=seed)
    nodes.reset(seed=seed)
    rng = np.random.default_rng(seed)
    spent = {"central": 0.0, "shared": 0.0}
    for _ in range(decisions):
        per_pool = rng.integers(0, central.codec.nvec)
        labels = nodes.nodes_codec.labels(central.action_to_fleet(per_pool))
        t0 = time.perf_counter()
        central.step(per_pool)
        t1 = time.perf_counter()
        nodes.step(labels)
        nodes.node_obs()
        spent["central"] += t1 - t0
        spent["shared"] += time.perf_counter() - t1
    return {f"{k}_decisions_per_s": round(decisions / v, 2) for k, v in spent.items()}


def _predict_s(model: Any, obs: np.ndarray, repeats: int = 200) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.predict(obs, deterministic=True)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    import torch
    from sb3_contrib import MaskablePPO

    torch.set_num_threads(1)  # the predict times on one core, as the simulator's

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--central", required=True, help="the centralized model (.zip)")
    p.add_argument("--shared", required=True, help="the shared node model (.zip)")
    p.add_argument("--fleet", default="default")
    p.add_argument("--slo-weight", type=float, default=30.0)
    p.add_argument("--speed-decisions", type=int, default=60)
    p.add_argument("--skip-validation", action="store_true")
    args = p.parse_args()
    config = load_fleet(args.fleet)
    central = MaskablePPO.load(args.central, device="cpu")
    shared = MaskablePPO.load(args.shared, device="cpu")
    out: dict[str, Any] = {"central": args.central, "shared": args.shared}
    if not args.skip_validation:
        out["validation"] = {}
        for name, policy in (("central", LearnedFleet(central)), ("shared", SharedNodeFleet(shared))):
            row = evaluate_days(config, policy, "val")
            score = day_score(row, config, args.slo_weight)
            out["validation"][name] = {k: row[k] for k in ("energy_kwh", "slo_attainment", "missed")} | {
                "score": round(score, 2)
            }
    probe = _Probe(central, shared)
    sim = FleetSim(config)
    rows = [run_policy(sim, probe, validation_day(config, i)) for i in range(len(validation_windows_s(config)))]
    planner = {k: sum(r[k] for r in rows) for k in ("energy_kwh", "requests", "missed")}
    planner["slo_attainment"] = 1.0 - planner["missed"] / planner["requests"]
    planner["score"] = round(day_score(planner | {"days": rows}, config, args.slo_weight), 2)
    out["planner"] = planner
    c = probe.counts
    out["agreement"] = {k: round(v / c["decisions"], 4) for k, v in c.items() if k != "decisions"}
    out["agreement"]["decisions"] = c["decisions"]
    out["speed"] = _speed(args.fleet, args.speed_decisions, seed=5)
    env = NodeFleetEnv(args.fleet, "train")
    env.reset(seed=5)
    out["speed"]["central_predict_ms"] = round(1e3 * _predict_s(central, env.codec.observe(env.sim, [], 0.0)), 3)
    out["speed"]["shared_predict_ms"] = round(1e3 * _predict_s(shared, env.node_obs()), 3)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
