"""Return on the training objective for controllers, baselines and fixed configurations.

Runs each policy deterministically on the validation episodes that model selection uses (training
split, seeds ``VAL_SEED + i``) with the default scenario's reward against the static-max SLO
reference (what ``greenrl.train`` optimizes), and prints one JSON object per policy: mean return
per episode and its standard error, energy (kWh) and misses per episode. It answers whether a
learned controller optimizes its objective as well as the alternatives do.

Run: ``.venv/bin/python benchmarks/training_objective.py [--episodes 16] [--policies NAME ...]
[--prefill-clock-ttft-s S|none]`` (names: what ``greenrl.evaluate --policies`` takes, or
``fixed:<sm_clock_mhz>/<prefill_sm_clock_mhz>``; the target overrides the scenario's deadline governor,
``none``: the prefill clock whenever a prompt waits). Each line also lists the per-episode returns.
The oracle takes 20-30 s per episode on one core; the rest under a second.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from greenrl.core import Policy
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError, exit_on_input_error
from greenrl.evaluate_policies import load_policy, resolve_policies
from greenrl.rollout import StaticPolicy, rollout
from greenrl.train import VAL_SEED

DEFAULT_POLICIES = [
    "oracle",
    "checkpoints/default/maskable_ppo_s0",
    "checkpoints/default/maskable_ppo_w30_s0",
    "fixed:1005/1980",
    "fixed:1200/1980",
    "phase-dvfs",
    "planner",
    "static-max",
]


def make_policy(name: str, env: ServingEnv) -> Policy:
    """A policy by name for this env (the rollout binds baselines to each episode's env)."""
    if name.startswith("fixed:"):
        clock, prefill = (int(v) for v in name.removeprefix("fixed:").split("/"))
        knobs = replace(env.initial, sm_clock_mhz=clock, prefill_sm_clock_mhz=prefill)
        return StaticPolicy(env.action_for(knobs))
    return load_policy(resolve_policies([name])[0], env, seed=0)


def episode_return(scenario: Scenario, name: str, seed: int) -> tuple[float, float, float]:
    """One validation episode: return, energy (kWh) and misses."""
    env = ServingEnv(scenario, "train")
    episode = rollout(make_policy(name, env), env, seed=seed)
    episode.env.close()
    return episode.return_, episode.energy_j / 3.6e6, episode.missed


def _target_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1e6:
        raise InputError("--prefill-clock-ttft-s", "prefill_clock_ttft_s", f"{text!r} is not a time >= 0 s", "e.g. 0.2")
    return value


@exit_on_input_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES)
    parser.add_argument("--prefill-clock-ttft-s", default=None, help="override the scenario's target (s) or 'none'")
    args = parser.parse_args()
    scenario = load_scenario("default")
    scenario = replace(scenario, reward=replace(scenario.reward, slo_reference="static-max"))
    if args.prefill_clock_ttft_s is not None:
        target = None if args.prefill_clock_ttft_s.lower() == "none" else _target_s(args.prefill_clock_ttft_s)
        scenario = replace(scenario, control=replace(scenario.control, prefill_clock_ttft_s=target))
    for name in args.policies:
        runs = np.array([episode_return(scenario, name, VAL_SEED + i) for i in range(args.episodes)])
        print(
            json.dumps(
                {
                    "policy": name,
                    "episodes": args.episodes,
                    "slo_weight": scenario.reward.slo_weight,
                    "prefill_clock_ttft_s": scenario.control.prefill_clock_ttft_s,
                    "return_mean": round(float(runs[:, 0].mean()), 3),
                    "return_se": round(float(runs[:, 0].std() / np.sqrt(len(runs))), 3),
                    "energy_kwh_mean": round(float(runs[:, 1].mean()), 4),
                    "missed_mean": round(float(runs[:, 2].mean()), 2),
                    "returns": [round(float(r), 3) for r in runs[:, 0]],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
