"""The fleet's cost: seconds per simulated day of the default fleet (4 x 8 H100), one process, exact requests.

Per held-out day of ``envs/fleets/default.yaml`` (the day scenario's days 12 and 13 at the fleet's load),
best of ``--repeats`` warm runs:

- ``generate_s``: the day's ServeGen requests for the whole fleet;
- ``<policy>_day_s``: ``FleetSim`` through 2,880 node intervals of 30 s under each ``--policies`` baseline
  (routing, four ``SimNode``s, the policy's own time), every request simulated (no fluid approximation).

Run: ``.venv/bin/python benchmarks/bench_fleet.py`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import platform

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _timing import best_s  # benchmarks/_timing.py: a script's folder is on sys.path

from greenrl.fleet import FleetSim, load_fleet
from greenrl.fleet.days import fleet_day, held_out_day_number
from greenrl.fleet.policies import make_policy
from greenrl.fleet.rollout import run_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleet", default="default")
    p.add_argument("--policies", nargs="+", default=["static-max", "planner"])
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    config = load_fleet(args.fleet)
    sim = FleetSim(config)
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "fleet": f"{config.nodes} nodes x {config.scenario.node.gpus} {config.scenario.node.gpu}",
        "days": {},
    }
    run_policy(sim, make_policy("static-max"), fleet_day(config, 0).window(0.0, 60.0))  # compile / load the kernel
    for window in range(len(config.scenario.workload.eval_windows_s)):
        trace = fleet_day(config, window)
        row: dict[str, object] = {
            "requests": len(trace),
            "generate_s": round(best_s(lambda: fleet_day(config, window), args.repeats), 3),  # noqa: B023
        }
        for name in args.policies:
            row[f"{name}_day_s"] = round(
                best_s(lambda: run_policy(sim, make_policy(name), trace), args.repeats),  # noqa: B023
                2,
            )
        out["days"][f"day {held_out_day_number(config, window)}"] = row  # type: ignore[index]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
