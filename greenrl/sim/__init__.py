"""The serving simulator: a vLLM node of G GPUs driven by the fitted surrogate (its SLO: ``greenrl.slo``).

Public names: SimConfig, SimNode.
"""

from greenrl.sim.node import SimConfig, SimNode

__all__ = ["SimConfig", "SimNode"]
