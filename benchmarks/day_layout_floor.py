"""How much a layout can save on the day scenario: each (TP, replicas) held all day with phase-dvfs clocks.

For each held-out day of ``envs/day.yaml`` (days 12 and 13, exact requests) this plays static-max and,
for every layout the scenario allows, that layout held for the whole day with ``phase-dvfs``'s clocks
(``greenrl.baselines.day_oracle.HeldLayout``, the policy the day oracle plays inside its lookaheads),
SLO ignored. The fewest GPUs held all day is the least energy any layout schedule can spend with these
clocks: a bound on what parking can give, and the figure behind issue 14's note that 55% is out of reach
at static-max's attainment. Prints one JSON object: per day and policy, energy (kWh), missed requests,
SLO attainment and the saving vs static-max; then the two days together.

Run: ``.venv/bin/python benchmarks/day_layout_floor.py`` (about a minute on one core).
"""

from __future__ import annotations

import json
import os
import platform

os.environ.setdefault("OMP_NUM_THREADS", "1")

from greenrl.baselines import make_baseline
from greenrl.baselines.day_oracle import HeldLayout
from greenrl.evaluate_cases import build_cases, case_env
from greenrl.rollout import rollout


def main() -> None:
    out: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "days": {}}
    totals: dict[str, dict[str, float]] = {}
    for case in build_cases("day", 1.0, 1, "exact"):
        env = case_env(case)
        policies = {"static-max": make_baseline("static-max", env)}
        for tp, replicas in make_baseline("day-oracle", env).layouts():
            held = HeldLayout(env)
            held.layout = (tp, replicas)
            policies[f"TP {tp} x {replicas} all day, phase-dvfs clocks"] = held
        rows: dict[str, dict[str, float]] = {}
        for name, policy in policies.items():
            result = rollout(policy, env, seed=0)
            node = result.env.node
            rows[name] = {
                "energy_kwh": result.energy_j / 3.6e6,
                "missed": float(result.missed),
                "requests": float(node.state_counts()["arrived"]),  # type: ignore[attr-defined]
                "slo_attainment": node.slo_attainment(),  # type: ignore[attr-defined]
            }
            total = totals.setdefault(name, {"energy_kwh": 0.0, "missed": 0.0, "requests": 0.0})
            for key in total:
                total[key] += rows[name][key]
        for row in rows.values():
            row["saving_vs_static_max"] = 1.0 - row["energy_kwh"] / rows["static-max"]["energy_kwh"]
        out["days"][f"window {case.window}"] = rows  # type: ignore[index]
        env.close()
    for total in totals.values():
        total["slo_attainment"] = 1.0 - total["missed"] / max(1.0, total["requests"])
        total["saving_vs_static_max"] = 1.0 - total["energy_kwh"] / totals["static-max"]["energy_kwh"]
    out["both_days"] = totals
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
