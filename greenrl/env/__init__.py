"""The Gymnasium environment: scenarios, ServingEnv and its registration.

Public names: ServingEnv, Scenario, load_scenario, scenario_names, register_scenarios.
"""

from __future__ import annotations

import gymnasium

from greenrl.env.scenario import Scenario, load_scenario, scenario_names
from greenrl.env.serving_env import ServingEnv

__all__ = ["Scenario", "ServingEnv", "load_scenario", "register_scenarios", "scenario_names"]


def register_scenarios() -> list[str]:
    """Register ``greenrl/<scenario>-v0`` for every scenario file; returns the ids."""
    ids = []
    for name in scenario_names():
        env_id = f"greenrl/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="greenrl.env.serving_env:make_env", kwargs={"scenario": name})
        ids.append(env_id)
    return ids
