"""The oracle: one-interval lookahead on the true upcoming requests, by forking the simulated node.

Public names: OracleBaseline, OracleStep, Trial, choose, doomed_requests.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.baselines.base import Baseline
from greenrl.core import Knobs
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError
from greenrl.rollout import play
from greenrl.sim import SimNode
from greenrl.sim import kernel as K

__all__ = ["OracleBaseline", "OracleStep", "Trial", "choose", "doomed_requests"]


@dataclass(frozen=True, slots=True)
class Trial:
    """One configuration the oracle tried for the next interval.

    Attributes:
        knobs: the configuration held for the interval.
        energy_j: GPU energy of the interval plus the recovery tail (J).
        new_missed: requests that missed, or can no longer meet, their SLO by the end of the lookahead,
            minus those already in that state when the oracle decided.
        meets: ``new_missed <= 0``.
    """

    knobs: Knobs
    energy_j: float
    new_missed: int
    meets: bool


@dataclass(frozen=True, slots=True)
class OracleStep:
    """What the oracle tried at one interval and which trial it chose (an index into ``trials``)."""

    step: int
    trials: tuple[Trial, ...]
    chosen: int


def choose(trials: list[Trial] | tuple[Trial, ...]) -> int:
    """The cheapest SLO-meeting trial; if none meets, the fewest new misses, then the least energy.

    Example:
        >>> k = Knobs(8, 1, 256, 1980)
        >>> choose([Trial(k, 5.0, 0, True), Trial(k, 3.0, 2, False), Trial(k, 4.0, 0, True)])
        2
    """
    meeting = [i for i, t in enumerate(trials) if t.meets]
    if meeting:
        return min(meeting, key=lambda i: trials[i].energy_j)
    return min(range(len(trials)), key=lambda i: (trials[i].new_missed, trials[i].energy_j))


def doomed_requests(node: SimNode) -> int:
    """Arrived requests that missed their SLO or can no longer meet it (or are on course to miss it).

    Counted: finished late; rejected; first token later than its TTFT SLO; no first token yet and
    already waiting longer than the TTFT SLO; unfinished with a mean time between tokens so far above
    the TBT SLO (on course to miss; it may still recover).
    """
    rec = node.requests()
    now = node.now_s
    arrived = rec["arrival_s"] < now
    finished = rec["finished_at_s"] >= 0
    ttft, slo = rec["ttft_s"], rec["ttft_slo_s"]
    started = ttft >= 0
    late_first = started & (ttft > slo)
    waiting_too_long = ~started & (now - rec["arrival_s"] > slo)
    slow = ~finished & (rec["generated_tokens"] > 1) & (rec["tbt_mean_s"] > node.config.slo.tbt_mean_s)
    rejected = rec["state"] == K.REJECTED
    missed = (finished & ~rec["slo_met"]) | rejected | late_first | waiting_too_long | slow
    return int(np.count_nonzero(arrived & missed))


def _simulator(env: ServingEnv) -> SimNode:
    """``env``'s node as a ``SimNode`` (``Baseline.bind`` has refused any other node)."""
    node = env.node
    assert isinstance(node, SimNode), "the oracle is bound only to simulated nodes"
    return node


class _Lookahead:
    """A trial's schedule for ``play``: the candidate's action for one interval, then the recovery tail's."""

    def __init__(self, candidate: npt.NDArray[np.int64], tail: npt.NDArray[np.int64]) -> None:
        self.candidate, self.tail = candidate, tail
        self.played = 0

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[npt.NDArray[np.int64], Any]:
        """The candidate's action first, the tail's after."""
        self.played += 1
        return (self.candidate if self.played == 1 else self.tail), state


class OracleBaseline(Baseline):
    """Lookahead with perfect knowledge of the next requests (an upper reference, not deployable).

    At each interval the env (node, requests, dwell state) is forked once per candidate; the candidate
    is held for one interval, then a recovery tail of ``tail_steps`` intervals runs at the candidate's
    TP with the top clock and the largest max_num_seqs. The oracle keeps the candidate whose lookahead
    uses the least energy without new SLO misses (``choose``; fallback: fewest new misses).

    Candidates (to stay affordable): every SM clock x max_num_seqs (x max_num_batched_tokens) at the
    current TP and replicas, plus, when the env's dwell rule allows a layout change, each other
    (TP, replicas) layout once, at the top clock and the largest max_num_seqs. A layout change
    reloads weights with no service (55 s for Llama-2-70B at 2.5 GB/s), so it rarely wins.
    Everything tried is kept in ``log`` (one ``OracleStep`` per interval).

    Args:
        env, seed: see ``Baseline``.
        tail_steps: recovery intervals after the candidate interval.
    """

    name = "oracle"
    family = "hindsight lookahead (upper reference)"
    anchor = "clairvoyant one-step lookahead on the simulator (not deployable)"
    needs_simulator = "it forks the node to try every candidate on the true upcoming requests"
    max_eval_steps = 240  # ~100 forks an interval: whole days are day-oracle's

    def __init__(self, env: ServingEnv, seed: int = 0, tail_steps: int = 1) -> None:
        if tail_steps < 0:
            raise InputError("oracle", "tail_steps", f"must be >= 0, got {tail_steps}", "use 0 or more")
        self.tail_steps = tail_steps
        super().__init__(env, seed)

    def reset_state(self) -> None:
        """Empty log; no layout change yet."""
        self.log: list[OracleStep] = []
        self.last_layout_change = -(10**9)

    def candidates(self) -> list[Knobs]:
        """Configurations to try for the next interval (see the class docstring)."""
        cur = self.current
        clocks = sorted(self.values("sm_clock_mhz"))
        seqs = sorted(self.values("max_num_seqs"), reverse=True)
        budgets = sorted(self.values("max_num_batched_tokens"), reverse=True)
        boosts = sorted(self.values("prefill_sm_clock_mhz"))
        out: dict[Knobs, None] = {}
        for clock, mns, budget, boost in itertools.product(clocks, seqs, budgets, boosts):
            if 0 < boost <= clock:
                continue  # a prefill clock at or below the base clock never helps the SLO
            k = self.with_knobs(
                cur, sm_clock_mhz=clock, max_num_seqs=mns, max_num_batched_tokens=budget, prefill_sm_clock_mhz=boost
            )
            out.setdefault(k, None)
        dwell = max(self.env.scenario.control.min_dwell_steps.get(k, 0) for k in ("tp", "replicas"))
        if self.step_index - self.last_layout_change >= dwell:
            for tp, r in self.layouts():
                if (tp, r) == (cur.tp, cur.replicas):
                    continue
                k = self.with_knobs(
                    cur, tp=tp, replicas=r, sm_clock_mhz=clocks[-1], max_num_seqs=seqs[0], prefill_sm_clock_mhz=0
                )
                out.setdefault(k, None)
        return list(out)

    def _try(self, knobs: Knobs, missed_before: int) -> Trial:
        sim = copy.deepcopy(self.env)
        tail = self.with_knobs(
            knobs,
            sm_clock_mhz=max(self.values("sm_clock_mhz")),
            max_num_seqs=max(self.values("max_num_seqs")),
            prefill_sm_clock_mhz=0,
        )
        schedule = _Lookahead(sim.action_for(knobs), sim.action_for(tail))
        energy_j = play(schedule, sim, max_steps=1 + self.tail_steps).energy_j
        new = doomed_requests(_simulator(sim)) - missed_before
        return Trial(knobs, energy_j, new, new <= 0)

    def decide(self, signals: dict[str, float]) -> Knobs:
        """Try every candidate on a fork of the env and keep the cheapest SLO-meeting one."""
        before = doomed_requests(_simulator(self.env))
        trials = tuple(self._try(k, before) for k in self.candidates())
        i = choose(trials)
        chosen = trials[i].knobs
        if (chosen.tp, chosen.replicas) != (self.current.tp, self.current.replicas):
            self.last_layout_change = self.step_index
        self.log.append(OracleStep(self.step_index, trials, i))
        return chosen
