"""Reactive clock governors that read only the node's own gauges: a KV-usage threshold table and a PID loop.

Both keep static-max's TP and max_num_seqs and set only the SM clock.

Public names: ThresholdBaseline, PidBaseline.
"""

from __future__ import annotations

from greenrl.baselines.base import Baseline, nearest_value
from greenrl.core import Knobs
from greenrl.env.serving_env import ServingEnv

__all__ = ["PidBaseline", "ThresholdBaseline"]


class ThresholdBaseline(Baseline):
    """A table from KV-cache usage to SM clock: the emptier the cache, the lower the clock.

    ``kv_cache_usage_frac < bounds[0]`` selects the low clock, ``< bounds[1]`` the middle one, else the
    top clock. Clocks are given as fractions of the top clock and snapped to the env's allowed values
    (default scenario: 1200, 1605 and 1980 MHz). The first interval, before any gauge has been read,
    runs the initial (static-max) configuration.

    Args:
        env, seed: see ``Baseline``.
        bounds_frac: the two KV-usage thresholds (fractions).
        clock_fracs: low and middle clock as fractions of the GPU's top clock.
    """

    name = "threshold"
    family = "rule-based governor"
    anchor = "KV-cache usage tracks iteration time (throttLL'eM, HPCA 2025); table-driven DVFS governors"

    def __init__(
        self,
        env: ServingEnv,
        seed: int = 0,
        bounds_frac: tuple[float, float] = (0.2, 0.5),
        clock_fracs: tuple[float, float] = (0.6, 0.8),
    ) -> None:
        self.bounds_frac = bounds_frac
        self.clock_fracs = clock_fracs
        super().__init__(env, seed)

    def decide(self, signals: dict[str, float]) -> Knobs:
        """Look the KV-cache usage up in the table (the first interval, unobserved, keeps the initial knobs)."""
        if self.step_index == 0:
            return self.env.initial
        clocks = self.values("sm_clock_mhz")
        top = max(clocks)
        max_mhz = self.env.gpu.max_sm_clock_mhz
        kv = signals["kv_cache_usage_frac"]
        if kv < self.bounds_frac[0]:
            clock = nearest_value(clocks, self.clock_fracs[0] * max_mhz)
        elif kv < self.bounds_frac[1]:
            clock = nearest_value(clocks, self.clock_fracs[1] * max_mhz)
        else:
            clock = top
        return self.with_knobs(self.env.initial, sm_clock_mhz=clock)


class PidBaseline(Baseline):
    """Feedback on latency slack to the SM clock (velocity-form PI(D), so it cannot wind up).

    slack = min((tbt_slo - tbt_mean) / tbt_slo, (ttft_floor - ttft_mean) / ttft_floor), clipped to
    [-1, 1] (an interval without tokens has slack 1); error = slack - target_slack. The clock command u
    (fraction of the top clock) moves by ``-kp·Δerror - ki·error - kd·Δ²error`` each interval, is held
    in [lowest, top] allowed clock, and the applied clock is the lowest allowed one at or above u.

    Args:
        env, seed: see ``Baseline``.
        target_slack: slack to hold (fraction of the SLO).
        kp, ki, kd: gains (fraction of the top clock per unit of slack error).
    """

    name = "pid"
    family = "feedback control"
    anchor = (
        "SLO-slack frequency feedback (VoltanaLLM EcoFreq, arXiv 2509.04827; GreenLLM decode loop, arXiv 2508.16449)"
    )

    def __init__(
        self,
        env: ServingEnv,
        seed: int = 0,
        target_slack: float = 0.3,
        kp: float = 0.2,
        ki: float = 0.15,
        kd: float = 0.0,
    ) -> None:
        self.target_slack, self.kp, self.ki, self.kd = target_slack, kp, ki, kd
        super().__init__(env, seed)

    def reset_state(self) -> None:
        """Start at the top clock with no error history."""
        self.u_frac = 1.0
        self.errors = [0.0, 0.0]

    def decide(self, signals: dict[str, float]) -> Knobs:
        """One PID update from the last interval's TBT and TTFT means."""
        slo = self.env.scenario.slo
        tbt, ttft = signals["tbt_mean_s"], signals["ttft_mean_s"]
        slack_tbt = (slo.tbt_mean_s - tbt) / slo.tbt_mean_s if tbt > 0 else 1.0
        slack_ttft = (slo.ttft_floor_s - ttft) / slo.ttft_floor_s if ttft > 0 else 1.0
        slack = max(-1.0, min(1.0, slack_tbt, slack_ttft))
        error = slack - self.target_slack
        e1, e2 = self.errors
        du = -self.kp * (error - e1) - self.ki * error - self.kd * (error - 2.0 * e1 + e2)
        clocks = sorted(self.values("sm_clock_mhz"))
        top = self.env.gpu.max_sm_clock_mhz
        self.u_frac = min(clocks[-1] / top, max(clocks[0] / top, self.u_frac + du))
        self.errors = [error, e1]
        clock = next((c for c in clocks if c >= self.u_frac * top - 1e-6), clocks[-1])
        return self.with_knobs(self.env.initial, sm_clock_mhz=clock)
