"""Baseline controllers with SB3's ``predict``, ranked against learned controllers by ``greenrl.evaluate``.

| name | family | what it does |
|---|---|---|
| static-max | static | the scenario's initial knobs (largest TP, every GPU, top clock, 256 seqs): the reference |
| static-best | static (hindsight) | best fixed configuration for the evaluated window, by sweeping every one |
| fixed-clock | static | static-max with the SM clock locked near 1.6 GHz |
| threshold | rule-based | KV-cache usage -> SM clock table |
| pid | feedback | TBT/TTFT slack -> SM clock, velocity-form PI |
| predictive-dvfs | model-predictive | lowest clock the surrogate predicts meets the SLOs at the projected batch |
| phase-dvfs | model-predictive | the same per phase: decode clock from TBT, prefill clock from TTFT (GreenLLM-style) |
| planner | forecast + model | DynamoLLM-style: forecast, least-power (tp, replicas, seqs, clock), hysteresis |
| autoscaler | reactive | Kubernetes HPA on requests in the engine: up at once, down after 5 min; spare GPUs park |
| autoscaler-dvfs | reactive + model | the autoscaler's replicas with phase-dvfs clocks |
| day-oracle | hindsight layout | each layout decision tries every (tp, replicas) on the true next 20 min |
| oracle | hindsight lookahead | forks the node, tries configurations on the true next requests, keeps the cheapest |
| random | floor | seeded uniform feasible actions |

Public names: BASELINES, Baseline, baseline_names, make_baseline, decode_obs, plus each baseline class.
"""

from __future__ import annotations

from greenrl.baselines.autoscaler import AutoscalerBaseline, AutoscalerDvfsBaseline
from greenrl.baselines.base import Baseline, decode_obs
from greenrl.baselines.day_oracle import DayOracleBaseline
from greenrl.baselines.feedback import PidBaseline, ThresholdBaseline
from greenrl.baselines.model_based import PhaseDvfsBaseline, PlannerBaseline, PredictiveDvfsBaseline
from greenrl.baselines.oracle import OracleBaseline
from greenrl.baselines.static import FixedClock, RandomBaseline, StaticBest, StaticMax
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError

__all__ = [
    "BASELINES",
    "AutoscalerBaseline",
    "AutoscalerDvfsBaseline",
    "Baseline",
    "DayOracleBaseline",
    "FixedClock",
    "OracleBaseline",
    "PhaseDvfsBaseline",
    "PidBaseline",
    "PlannerBaseline",
    "PredictiveDvfsBaseline",
    "RandomBaseline",
    "StaticBest",
    "StaticMax",
    "ThresholdBaseline",
    "baseline_names",
    "decode_obs",
    "make_baseline",
]

BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (
        StaticMax,
        StaticBest,
        FixedClock,
        ThresholdBaseline,
        PidBaseline,
        PredictiveDvfsBaseline,
        PhaseDvfsBaseline,
        PlannerBaseline,
        AutoscalerBaseline,
        AutoscalerDvfsBaseline,
        DayOracleBaseline,
        OracleBaseline,
        RandomBaseline,
    )
}


def baseline_names() -> list[str]:
    """Registered baseline names, in table order.

    Example:
        >>> baseline_names()[:3]
        ['static-max', 'static-best', 'fixed-clock']
    """
    return list(BASELINES)


def make_baseline(name: str, env: ServingEnv, seed: int = 0) -> Baseline:
    """A baseline by name, bound to ``env``; ``seed`` feeds any randomness it has.

    Raises:
        InputError: for an unknown name (the message lists the valid ones).
    """
    cls = BASELINES.get(name)
    if cls is None:
        raise InputError("--policies", "policy", f"unknown baseline {name!r}", f"use one of {', '.join(BASELINES)}")
    return cls(env, seed)
