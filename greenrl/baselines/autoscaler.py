"""A reactive autoscaler, as Kubernetes' HPA scales vLLM replicas, alone or with phase-DVFS clocks.

Public names: AutoscalerBaseline, AutoscalerDvfsBaseline.
"""

from __future__ import annotations

import math
from collections import deque

from greenrl.baselines.base import Baseline
from greenrl.baselines.model_based import PhaseDvfsBaseline
from greenrl.core import Knobs
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError

__all__ = ["AutoscalerBaseline", "AutoscalerDvfsBaseline"]


class AutoscalerBaseline(Baseline):
    """HPA-style replica scaling on the requests in the engine (vLLM's running + waiting gauges).

    The HPA rule: desired = ceil(replicas x metric / target), metric = (running + waiting) / replicas,
    ignored within ``tolerance_frac`` of the target (HPA's 10%). Scale-up is immediate (HPA's default
    scale-up stabilization is 0 s); scale-down takes the highest recommendation of the last
    ``scale_down_window_s`` (HPA's 300-s stabilization window), and never happens within
    ``cooldown_s`` of the previous change. TP, clocks and max_num_seqs stay at the initial (static-max)
    values; GPUs outside a replica are parked. Without a ``replicas`` knob it is static-max.

    Args:
        env, seed: see ``Baseline``.
        target_requests: requests in the engine per replica that the autoscaler aims for.
        tolerance_frac: no change while |metric / target - 1| is within this.
        scale_down_window_s: stabilization window for scale-down (s).
        cooldown_s: least time between two changes (s).
    """

    name = "autoscaler"
    family = "reactive autoscaling"
    needs_knobs = ("replicas",)
    anchor = "Kubernetes HPA (autoscaling/v2 algorithm, default behavior) on vLLM's num_requests_running + waiting"

    def __init__(
        self,
        env: ServingEnv,
        seed: int = 0,
        target_requests: float = 4.0,
        tolerance_frac: float = 0.1,
        scale_down_window_s: float = 300.0,
        cooldown_s: float = 300.0,
    ) -> None:
        if not (target_requests > 0 and 0 <= tolerance_frac < 1 and scale_down_window_s >= 0 and cooldown_s >= 0):
            raise InputError(
                self.name,
                "target_requests",
                "needs target_requests > 0, 0 <= tolerance_frac < 1 and non-negative windows",
                "e.g. AutoscalerBaseline(env, target_requests=24.0)",
            )
        self.target_requests, self.tolerance_frac = target_requests, tolerance_frac
        self.scale_down_window_s, self.cooldown_s = scale_down_window_s, cooldown_s
        super().__init__(env, seed)

    def reset_state(self) -> None:
        """Forget past recommendations and changes."""
        window = max(1, round(self.scale_down_window_s / self.env.scenario.control.interval_s))
        self.recent: deque[int] = deque(maxlen=window)
        self.last_change_s = -math.inf

    def replicas_wanted(self, signals: dict[str, float]) -> int:
        """The HPA recommendation, stabilized and bounded by the replicas the env allows at this TP."""
        tp = self.current.tp
        allowed = [r for r in self.values("replicas") if tp * r <= self.env.scenario.node.gpus]
        current = self.current.replicas
        ratio = (signals["running"] + signals["waiting"]) / current / self.target_requests
        desired = current if abs(ratio - 1.0) <= self.tolerance_frac else math.ceil(current * ratio)
        desired = min(max(desired, min(allowed)), max(allowed))
        self.recent.append(desired)
        now_s = self.step_index * self.env.scenario.control.interval_s
        if now_s - self.last_change_s < self.cooldown_s:
            return current
        wanted = desired if desired > current else max(self.recent)  # scale up at once, down after the window
        wanted = min(r for r in allowed if r >= wanted)
        if wanted != current:
            self.last_change_s = now_s
        return wanted

    def clocks(self, signals: dict[str, float], knobs: Knobs) -> Knobs:
        """The clocks to run with (the initial, top clock here)."""
        return knobs

    def decide(self, signals: dict[str, float]) -> Knobs:
        """Replicas by the HPA rule; the first interval keeps the initial configuration."""
        if self.step_index == 0 or "replicas" not in self.env.knob_names:
            return self.clocks(signals, self.env.initial) if self.step_index else self.env.initial
        knobs = self.with_knobs(self.current, replicas=self.replicas_wanted(signals))
        return self.clocks(signals, knobs)


class AutoscalerDvfsBaseline(AutoscalerBaseline):
    """The autoscaler's replicas with ``phase-dvfs`` clocks: the two heuristics an operator would combine."""

    name = "autoscaler-dvfs"
    family = "reactive autoscaling + model-predictive DVFS"
    anchor = "Kubernetes HPA for replicas; GreenLLM-style per-phase DVFS for clocks"

    def bind(self, env: ServingEnv) -> None:
        """Attach to ``env``, and the phase-DVFS rule with it."""
        self._dvfs = PhaseDvfsBaseline(env)
        super().bind(env)

    def clocks(self, signals: dict[str, float], knobs: Knobs) -> Knobs:
        """phase-dvfs's clocks for the layout just chosen."""
        self._dvfs.current = knobs
        self._dvfs.step_index = self.step_index
        chosen = self._dvfs.decide(signals)
        return self.with_knobs(
            knobs, sm_clock_mhz=chosen.sm_clock_mhz, prefill_sm_clock_mhz=chosen.prefill_sm_clock_mhz
        )
