"""The fitted surrogate of a vLLM replica: iteration latency and GPU power from batch, TP and SM clock.

Public names: Surrogate, ReplicaModel, StepBatch, load_params, steady_state.
"""

from greenrl.surrogate.model import ReplicaModel, StepBatch, Surrogate, load_params
from greenrl.surrogate.steady import steady_state

__all__ = ["ReplicaModel", "StepBatch", "Surrogate", "load_params", "steady_state"]
