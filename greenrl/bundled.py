"""Where the files that ship with greenrl live: scenario YAMLs, agent hyperparameters, exported controllers.

In a source checkout they are the top-level ``envs/``, ``agents/`` and ``checkpoints/`` folders; an
installed wheel carries the same files as ``greenrl/scenarios``, ``greenrl/agents`` and
``greenrl/checkpoints`` (``setup.py`` maps them in). Nothing here reads a file: it only names folders.

Public names: SCENARIOS, scenarios_dir, agents_dir, checkpoints_dir.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SCENARIOS", "agents_dir", "checkpoints_dir", "scenarios_dir"]

SCENARIOS = ("code", "day", "day-deepseek-r1", "day-m-small", "default", "diurnal", "tiny")
"""The scenarios that ship (file stems in ``envs/``); ``import greenrl`` registers these without reading them."""

_PACKAGE = Path(__file__).resolve().parent
_SOURCE_TREE = _PACKAGE.parent


def _bundled(installed: str, source: str) -> Path:
    """The installed copy when this package was installed from a wheel, else the source tree's folder."""
    wheel_copy = _PACKAGE / installed
    return wheel_copy if wheel_copy.is_dir() else _SOURCE_TREE / source


def scenarios_dir() -> Path:
    """``$GREENRL_ENVS`` (a folder of your own scenario YAMLs), else the shipped scenarios."""
    env = os.environ.get("GREENRL_ENVS")
    return Path(env) if env else _bundled("scenarios", "envs")


def agents_dir() -> Path:
    """The shipped hyperparameter YAMLs, one per algorithm."""
    return _bundled("agents", "agents")


def checkpoints_dir() -> Path:
    """The shipped controllers: ``<scenario>/<name>/{controller.json, policy.npz}``."""
    return _bundled("checkpoints", "checkpoints")
