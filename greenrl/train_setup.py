"""The model and its warm start, shared by node training and fleet training.

``greenrl.train`` and ``greenrl.fleet.learn`` both turn an agent file's hyperparameters into an SB3 model here,
and warm-start it here by behaviour cloning (teacher demonstrations, DAgger rounds, critic fit, reward
normalization).

Public names: Collect, build_model, warm_start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from greenrl.ioutil import atomic_write_text

__all__ = ["Collect", "build_model", "warm_start"]

Collect = Callable[[int, int, Any], Any]
"""``collect(episodes, base_seed, student)``: the teacher's demonstrations (``greenrl.imitation.Demonstrations``)
over ``episodes`` seeded from ``base_seed``, states visited by ``student`` when it is not None (DAgger)."""


def build_model(algo: Any, env: Any, cfg: dict[str, Any], seed: int, run: Path) -> Any:
    """A fresh ``algo`` (PPO or MaskablePPO) MLP policy on ``env`` with the agent file's hyperparameters ``cfg``."""
    import torch

    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.get("activation", "tanh")]
    return algo(
        "MlpPolicy",
        env,
        seed=seed,
        device="cpu",
        verbose=0,
        tensorboard_log=str(run / "tb"),
        n_steps=int(cfg["n_steps"]),
        batch_size=int(cfg["batch_size"]),
        n_epochs=int(cfg["n_epochs"]),
        learning_rate=float(cfg["learning_rate"]),
        gamma=float(cfg["gamma"]),
        gae_lambda=float(cfg["gae_lambda"]),
        ent_coef=float(cfg["ent_coef"]),
        clip_range=float(cfg["clip_range"]),
        policy_kwargs={"net_arch": list(cfg["net_arch"]), "activation_fn": activation},
    )


def warm_start(
    model: Any, env: Any, collect: Collect, cfg: dict[str, Any], seed: int, run: Path, default_episodes: int
) -> dict[str, Any]:
    """Clone the ``warm_start`` teacher (plus DAgger rounds), fit the critic, seed the reward normalization.

    ``env`` is the ``VecNormalize`` the model trains in; the report is written to ``run/warm_start.json``
    and returned.
    """
    from greenrl.imitation import behaviour_clone, fit_critic, running_return_stats

    started = time.perf_counter()
    episodes = int(cfg.get("warm_start_episodes", default_episodes))
    epochs = int(cfg.get("warm_start_epochs", 100))
    base_seed = 2_000_000 + 10_000 * seed  # away from training and validation seeds
    demos = collect(episodes, base_seed, None)
    loss = behaviour_clone(model.policy, demos, epochs, seed)
    rounds = int(cfg.get("dagger_rounds", 0))
    for r in range(rounds):
        demos = demos + collect(max(1, episodes // 2), base_seed + (r + 1) * episodes, model)
        loss = behaviour_clone(model.policy, demos, max(1, epochs // 2), seed + r + 1)
    gamma = float(cfg["gamma"])
    mean, var, count = running_return_stats(demos.rewards, demos.episode_end, gamma)
    env.ret_rms.mean, env.ret_rms.var, env.ret_rms.count = mean, var, count
    mse = fit_critic(model.policy, demos, gamma, 1.0 / float(np.sqrt(var + env.epsilon)), epochs, seed)
    report = {
        "teacher": str(cfg["warm_start"]),
        "episodes": episodes,
        "dagger_rounds": rounds,
        "samples": len(demos),
        "bc_loss_nats": loss,
        "agreement": demos.agreement(model),
        "critic_mse": mse,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(run / "warm_start.json", json.dumps(report, indent=1) + "\n")
    return report
