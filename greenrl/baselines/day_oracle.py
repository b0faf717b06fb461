"""The day oracle: the layout (TP, replicas, parked GPUs) chosen in hindsight by lookahead over the true load.

Public names: DayOracleBaseline, HeldLayout, LayoutTrial.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.baselines.base import Baseline
from greenrl.baselines.model_based import PhaseDvfsBaseline
from greenrl.baselines.oracle import _simulator, doomed_requests
from greenrl.core import Knobs
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError
from greenrl.rollout import play

__all__ = ["DayOracleBaseline", "HeldLayout", "LayoutTrial"]


@dataclass(frozen=True, slots=True)
class LayoutTrial:
    """One layout the day oracle tried at a decision: lookahead energy (J), new misses, and their sum in J."""

    layout: tuple[int, int]
    energy_j: float
    new_missed: int
    cost_j: float


class HeldLayout(PhaseDvfsBaseline):
    """phase-dvfs clocks with the layout held (the policy the day oracle plays inside each lookahead)."""

    layout: tuple[int, int] = (0, 0)

    def decide(self, signals: dict[str, float]) -> Knobs:
        """phase-dvfs's clocks at the held layout."""
        tp, replicas = self.layout
        self.current = self.with_knobs(self.current, tp=tp, replicas=replicas)
        return self.with_knobs(super().decide(signals), tp=tp, replicas=replicas)


class DayOracleBaseline(Baseline):
    """Hindsight layout over a day: at every layout decision, each layout is tried on the true upcoming load.

    Every ``decision_steps`` intervals (default: the env's layout dwell), the env (node, requests,
    dwell state) is forked once per (TP, replicas) layout and played ``lookahead_steps`` intervals
    with that layout held and ``phase-dvfs`` clocks; the layout whose lookahead costs least, energy
    plus ``miss_cost_j`` per new SLO miss, is kept until the next decision. ``miss_cost_j`` defaults to
    the reward's exchange rate (one miss costs what ``reward.slo_weight`` makes it cost against the
    energy term), so the oracle optimizes the objective the agent is trained on. The clocks between
    decisions are phase-dvfs's: this is the limit of layout decisions made with perfect knowledge of
    the load, not of every knob at once. Trials are kept in ``log``.

    Args:
        env, seed: see ``Baseline``.
        lookahead_steps: intervals each layout is played for (default 40: 20 minutes at 30 s).
        decision_steps: intervals between layout decisions (default: the env's tp/replicas dwell).
        miss_cost_j: energy-equivalent cost of one SLO miss (J); default from the reward.
    """

    name = "day-oracle"
    family = "hindsight layout lookahead (upper reference)"
    anchor = "clairvoyant layout plan over the true load (cf. DynamoLLM's offline oracle); not deployable"
    needs_simulator = "it forks the node to play each layout on the true upcoming requests"
    needs_knobs = ("replicas",)

    def __init__(
        self,
        env: ServingEnv,
        seed: int = 0,
        lookahead_steps: int = 40,
        decision_steps: int | None = None,
        miss_cost_j: float | None = None,
    ) -> None:
        if lookahead_steps < 1 or (decision_steps is not None and decision_steps < 1):
            raise InputError(self.name, "lookahead_steps", "must be >= 1 (and decision_steps too)", "e.g. 40")
        self.lookahead_steps, self.decision_steps, self.miss_cost_j = lookahead_steps, decision_steps, miss_cost_j
        super().__init__(env, seed)

    def bind(self, env: ServingEnv) -> None:
        """Attach to ``env`` with a phase-dvfs rule for the clocks."""
        self._clocks = HeldLayout(env)
        super().bind(env)

    def reset_state(self) -> None:
        """Start at the initial layout with an empty log."""
        self.layout = (self.env.initial.tp, self.env.initial.replicas)
        self.log: list[tuple[int, tuple[LayoutTrial, ...]]] = []

    def _period(self) -> int:
        if self.decision_steps is not None:
            return self.decision_steps
        dwell = self.env.scenario.control.min_dwell_steps
        return max(1, max(dwell.get("tp", 0), dwell.get("replicas", 0)))

    def _miss_cost_j(self) -> float:
        if self.miss_cost_j is not None:
            return self.miss_cost_j
        s = self.env.scenario
        node_peak_j = s.node.gpus * self.env.gpu.tdp_w * s.control.interval_s
        return s.reward.slo_weight * node_peak_j / self.env.expected_requests_per_step

    def _try(self, layout: tuple[int, int], missed_before: int) -> LayoutTrial:
        sim = copy.deepcopy(self.env)
        policy = HeldLayout(sim)
        policy.layout = layout
        policy.current = self.with_knobs(self.current, tp=layout[0], replicas=layout[1])
        policy.step_index = max(1, self.step_index)
        energy_j = play(policy, sim, self._obs, max_steps=self.lookahead_steps).energy_j
        new = doomed_requests(_simulator(sim)) - missed_before
        return LayoutTrial(layout, energy_j, new, energy_j + self._miss_cost_j() * max(new, 0))

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[npt.NDArray[np.int64], Any]:
        """``Baseline.predict``, keeping the observation for the lookaheads to start from."""
        self._obs = np.asarray(observation, dtype=np.float32)
        return super().predict(observation, state, episode_start, deterministic)

    def decide(self, signals: dict[str, float]) -> Knobs:
        """Re-plan the layout at decision points; phase-dvfs clocks for it every interval."""
        if self.step_index == 0:
            return self.env.initial
        if self.step_index % self._period() == 0:
            before = doomed_requests(_simulator(self.env))
            trials = tuple(self._try(layout, before) for layout in self.layouts())
            self.layout = min(trials, key=lambda t: t.cost_j).layout
            self.log.append((self.step_index, trials))
        self._clocks.layout = self.layout
        self._clocks.current = self.with_knobs(self.current, tp=self.layout[0], replicas=self.layout[1])
        self._clocks.step_index = self.step_index
        return self._clocks.decide(signals)
