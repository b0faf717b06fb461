"""The serving simulator: a vLLM node of G GPUs driven by the fitted surrogate.

Public names: SimConfig, SimNode, SloSpec (a deprecated alias of ``greenrl.slo.Slo``: import that).
"""

from greenrl.sim.node import SimConfig, SimNode
from greenrl.slo import Slo

SloSpec = Slo
"""Deprecated alias of ``greenrl.slo.Slo``, kept while env/serving_env.py and characterize.py import it."""

__all__ = ["SimConfig", "SimNode", "SloSpec"]
