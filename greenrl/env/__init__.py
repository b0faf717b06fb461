"""The Gymnasium environment: scenarios and ServingEnv (registered by ``import greenrl``).

Public names: ServingEnv, Scenario, load_scenario, scenario_names.
"""

from __future__ import annotations

from greenrl.env.scenario import Scenario, load_scenario, scenario_names
from greenrl.env.serving_env import ServingEnv

__all__ = ["Scenario", "ServingEnv", "load_scenario", "scenario_names"]
