"""Environment and PPO throughput on the default scenario (8 x H100, Llama-2-70B, 30 s interval).

Prints one JSON object: env steps/s on one core (static-max and random actions), and MaskablePPO
timesteps/s with 1 process (8 DummyVecEnv envs) and 2 processes (2 SubprocVecEnv workers).
Run: ``.venv/bin/python benchmarks/bench_env.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from greenrl.env import ServingEnv
from greenrl.rollout import RandomPolicy, StaticPolicy, rollout

PPO_STEPS = 4096


def env_steps_per_s(policy: str, episodes: int = 4) -> float:
    env = ServingEnv("default")
    env.reset(seed=0)
    static = StaticPolicy(env.action_for(env.initial))
    env.step(static.action)  # load compiled code
    steps, t0 = 0, time.perf_counter()
    for seed in range(episodes):
        actions = RandomPolicy(env, seed) if policy == "random" else static
        steps += len(rollout(actions, env, seed=seed).steps)
    return steps / (time.perf_counter() - t0)


def ppo_steps_per_s(processes: int) -> float:
    """1 process: 8 envs in a DummyVecEnv. 2 processes: 2 envs in SubprocVecEnv workers (one per core).

    Both collect 1,024 steps per update (n_steps x envs) with minibatches of 256.
    """
    import torch
    from gymnasium import Env
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
    from torch.distributions import Distribution

    Distribution.set_default_validate_args(False)
    envs = 8 if processes == 1 else processes
    factories: list[Callable[[], Env[Any, Any]]] = [lambda: ServingEnv("default") for _ in range(envs)]
    vec: VecEnv
    if processes == 1:
        vec = DummyVecEnv(factories)
    else:
        torch.set_num_threads(1)
        vec = SubprocVecEnv(factories, start_method="fork")
    vec.seed(0)
    model = MaskablePPO("MlpPolicy", vec, n_steps=1024 // envs, batch_size=256, n_epochs=5, seed=0, device="cpu")
    model.learn(1024)  # warm-up: imports, compiled code, first rollout
    t0 = time.perf_counter()
    model.learn(PPO_STEPS, reset_num_timesteps=False)
    rate = PPO_STEPS / (time.perf_counter() - t0)
    vec.close()
    return rate


def main() -> None:
    print(
        json.dumps(
            {
                "benchmark": "env",
                "scenario": "default",
                "env_steps_per_s_static_max": round(env_steps_per_s("static"), 1),
                "env_steps_per_s_random": round(env_steps_per_s("random"), 1),
                "target_env_steps_per_s": 500,
                "ppo_timesteps_per_s_1_process": round(ppo_steps_per_s(1), 1),
                "ppo_timesteps_per_s_2_processes": round(ppo_steps_per_s(2), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
