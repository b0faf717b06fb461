"""Packaging beyond pyproject.toml: the top-level envs/, agents/ and checkpoints/ folders ship in the wheel.

They stay at the top of the repository, where users and the docs look for them, and install as
``greenrl/scenarios``, ``greenrl/agents`` and ``greenrl/checkpoints`` (see ``greenrl/bundled.py``).
"""

from setuptools import find_packages, setup

BUNDLED = {"greenrl.scenarios": "envs", "greenrl.agents": "agents", "greenrl.checkpoints": "checkpoints"}

setup(
    packages=find_packages(include=["greenrl", "greenrl.*"]) + list(BUNDLED),
    package_dir=BUNDLED,
    package_data={"greenrl": ["py.typed", "data/**/*"], **{name: ["**/*"] for name in BUNDLED}},
)
