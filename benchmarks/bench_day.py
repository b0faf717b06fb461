"""The day scenario's cost: generating a held-out day, simulating it, and playing it through the env.

Three figures per held-out day of ``envs/day.yaml`` (days 12 and 13, exact requests), best of
``--repeats`` warm runs on one core:

- ``generate_s``: the ServeGen day's requests (``greenrl.workload.servegen_trace``);
- ``simulate_s``: a ``SimNode`` at static-max through 2,880 intervals of 30 s;
- ``env_day_s``: ``ServingEnv`` (observation, reward, dwell rule) played for the whole day with the
  static-max action, i.e. what one evaluation episode costs before any policy's own time.

Run: ``.venv/bin/python benchmarks/bench_day.py`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _timing import best_s  # benchmarks/_timing.py: a script's folder is on sys.path

from greenrl.env import ServingEnv
from greenrl.env.scenario import load_scenario
from greenrl.env.serving_env import build_node
from greenrl.rollout import StaticPolicy, rollout
from greenrl.workload import scale_for_rate_rps, servegen_trace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    s = load_scenario("day")
    spec = s.workload.servegen or {}
    scale = scale_for_rate_rps(str(spec["category"]), float(spec["mean_rps"]))
    out: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "days": {}}
    build_node(s, "eval", 0).reset(seed=0)  # compile the kernel once
    for window, (start_s, duration_s) in enumerate(s.workload.eval_windows_s):
        node = build_node(s, "eval", window)

        def simulate(node: Any = node) -> None:
            node.reset(seed=0)
            for _ in range(s.eval_steps):
                node.advance(s.control.interval_s)

        env = ServingEnv(s, "eval", window)
        policy = StaticPolicy(env.action_for(env.initial))
        trace = servegen_trace(str(spec["category"]), start_s, duration_s, scale=scale, seed=10_000 + window)
        out["days"][f"day {int(start_s // 86400)}"] = {  # type: ignore[index]
            "requests": len(trace),
            "generate_s": round(
                best_s(
                    lambda: servegen_trace(str(spec["category"]), start_s, duration_s, scale=scale, seed=0),  # noqa: B023
                    args.repeats,
                ),
                3,
            ),
            "simulate_s": round(best_s(simulate, args.repeats), 3),
            "env_day_s": round(best_s(lambda: rollout(policy, env, seed=0), args.repeats), 3),  # noqa: B023
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
