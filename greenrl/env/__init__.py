"""The Gymnasium environment: scenarios and ServingEnv (registered by ``import greenrl``).

Names load on first use, so a light submodule (the scenario parser, the observation builder) can be
imported without the simulator behind ``ServingEnv``.

Public names: ServingEnv, Scenario, load_scenario, scenario_names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenrl.env.scenario import Scenario, load_scenario, scenario_names
    from greenrl.env.serving_env import ServingEnv

__all__ = ["Scenario", "ServingEnv", "load_scenario", "scenario_names"]

_HOMES = {
    "Scenario": "greenrl.env.scenario",
    "load_scenario": "greenrl.env.scenario",
    "scenario_names": "greenrl.env.scenario",
    "ServingEnv": "greenrl.env.serving_env",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'greenrl.env' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
