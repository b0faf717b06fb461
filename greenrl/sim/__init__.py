"""The serving simulator: a vLLM node of G GPUs driven by the fitted surrogate.

Public names: SimConfig, SimNode, SloSpec.
"""

from greenrl.sim.node import SimConfig, SimNode, SloSpec

__all__ = ["SimConfig", "SimNode", "SloSpec"]
