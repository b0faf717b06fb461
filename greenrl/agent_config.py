"""The agent files (``agents/<agent>.yaml``): which agents exist and their hyperparameters per scenario.

Public names: AGENTS, AGENT_KEYS, agent_config.
"""

from __future__ import annotations

from typing import Any

import yaml

from greenrl.bundled import agents_dir
from greenrl.errors import InputError

__all__ = ["AGENTS", "AGENT_KEYS", "agent_config"]

AGENTS = {"ppo": "PPO", "maskable_ppo": "MaskablePPO", "maskable_ppo_shared": "MaskablePPO"}
"""maskable_ppo_shared: fleets only, one policy shared by every node (``greenrl.fleet.shared_learn``)."""
AGENT_KEYS = {
    "init_bias",
    "total_timesteps",
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "learning_rate",
    "gamma",
    "gae_lambda",
    "ent_coef",
    "clip_range",
    "net_arch",
    "activation",
    "eval_every_steps",
    "vf_coef",
    "warm_start",
    "warm_start_episodes",
    "warm_start_epochs",
    "dagger_rounds",
    "val_episodes",
    "slo_reference",
    "slo_weight",  # fleets only (greenrl.fleet.learn): FleetEnv's slo_weight
    "episode_s",  # fleets only: training episode length (s)
}


def agent_config(agent: str, scenario: str) -> dict[str, Any]:
    """Hyperparameters: the agent file's ``default`` entry updated by the scenario's entry."""
    if agent not in AGENTS:
        raise InputError("--agent", "agent", f"unknown agent {agent!r}", f"use one of {', '.join(AGENTS)}")
    path = agents_dir() / f"{agent}.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(str(path), "agent", "file not found", "restore agents/ from the repository") from None
    config = dict(raw.get("default", {})) | dict(raw.get(scenario, {}))
    for key, value in config.items():
        if key not in AGENT_KEYS:
            raise InputError(str(path), key, "unknown hyperparameter", f"use {', '.join(sorted(AGENT_KEYS))}")
        if key == "learning_rate" and isinstance(value, str):
            raise InputError(str(path), key, f"{value!r} was read as text", "write floats with a dot: 3.0e-4")
    return config
