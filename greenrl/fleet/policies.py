"""Fleet baselines with one interface: static-max, a reactive autoscaler, a DynamoLLM-style planner.

The planner forecasts reactively (``planner``) or from the training days' history too (``planner-history``).

A ``FleetPolicy`` is asked every node interval (``act(sim, snapshot, step)``) and answers a ``FleetAction``
or None (no change). Each reads what a fleet operator sees: the snapshots (arrivals per pool, the engines'
running and waiting gauges, energy), the router's view of finished requests, and the nodes' states.

A hindsight oracle (``OracleFleet``) plans with the true coming load.

Public names: FleetPolicy, StaticMaxFleet, AutoscalerFleet, PlannerFleet, HistoryPlannerFleet, OracleFleet,
FLEET_POLICIES, make_policy.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from greenrl.catalog import load_gpu
from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.fleet.capacity import NodeOption, node_options
from greenrl.fleet.cluster import FleetAction, FleetSim, FleetSnapshot
from greenrl.fleet.forecast import daily_profile
from greenrl.fleet.planner import FleetPlan, assign, solve_plan
from greenrl.fleet.router import pool_of

__all__ = [
    "FLEET_POLICIES",
    "AutoscalerFleet",
    "FleetPolicy",
    "HistoryPlannerFleet",
    "OracleFleet",
    "PlannerFleet",
    "StaticMaxFleet",
    "make_policy",
]


class FleetPolicy(Protocol):
    """Decides the fleet's action each node interval (None: keep it)."""

    name: str

    def reset(self, sim: FleetSim) -> None:
        """Forget the last episode."""
        ...

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """The action for interval ``step`` given the last interval's snapshot (None before the first)."""
        ...


class StaticMaxFleet:
    """Every node on, in its configured pool, at the node scenario's static-max knobs, all day."""

    name = "static-max"

    def reset(self, sim: FleetSim) -> None:
        """Nothing to forget."""

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """The initial action once, then no change."""
        return sim.initial_action() if step == 0 else None


def _nodes_action(sim: FleetSim, counts: list[int], knobs: list[Knobs]) -> FleetAction:
    """``counts[p]`` nodes in pool ``p`` at ``knobs[p]``, placed by ``assign``; the rest park."""
    slots = tuple((p, knobs[p]) for p, c in enumerate(counts) for _ in range(c))
    plan = FleetPlan(slots, 0.0, True, (0.0,) * len(counts))
    a = sim.action
    on, pools, node_knobs = assign(plan, a.pool_of_node, a.knobs, tuple(s == "on" for s in sim.states))
    return FleetAction(on, pools, node_knobs)


class AutoscalerFleet:
    """HPA-style node scaling per pool on the requests in the engines, nodes at static-max knobs.

    Every node interval (HPA syncs every 15 s), per pool: metric = mean (running + waiting) per serving node
    at the interval's end; desired = ceil(nodes x metric / target), no change within ``tolerance_frac`` of
    the target. Scale-up is immediate; scale-down takes the highest recommendation of the last
    ``scale_down_window_s`` and waits ``cooldown_s`` after the pool's last change (``greenrl.baselines.
    autoscaler``'s rule, one node per replica). Pools share the fleet: when they want more nodes than it has,
    the largest want gives way.

    Args:
        target_requests: requests in the engine per node aimed for.
        tolerance_frac, scale_down_window_s, cooldown_s: as HPA's.
    """

    name = "autoscaler"

    def __init__(
        self,
        target_requests: float = 32.0,
        tolerance_frac: float = 0.1,
        scale_down_window_s: float = 600.0,
        cooldown_s: float = 600.0,
    ) -> None:
        if not (target_requests > 0 and 0 <= tolerance_frac < 1 and scale_down_window_s >= 0 and cooldown_s >= 0):
            raise InputError(self.name, "target_requests", "needs target > 0 and non-negative windows", "e.g. 32.0")
        self.target_requests, self.tolerance_frac = target_requests, tolerance_frac
        self.scale_down_window_s, self.cooldown_s = scale_down_window_s, cooldown_s

    def reset(self, sim: FleetSim) -> None:
        """Empty gauges and recommendation windows."""
        pools = len(sim.config.pools)
        window = max(1, round(self.scale_down_window_s / sim.config.control.node_interval_s))
        self.recent: list[deque[int]] = [deque(maxlen=window) for _ in range(pools)]
        self.last_change_s = [-math.inf] * pools

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """A scaling decision every node interval from the last snapshot's gauges."""
        pools = len(sim.config.pools)
        if step == 0 or snapshot is None:
            return sim.initial_action()
        load = np.zeros(pools)
        for j, s in enumerate(snapshot.nodes):
            if snapshot.states[j] == "on":
                load[snapshot.pool_of_node[j]] += s.running + s.waiting
        now_s = step * sim.config.control.node_interval_s
        a = sim.action
        current = [
            sum(1 for j, p in enumerate(a.pool_of_node) if p == q and sim.states[j] == "on") for q in range(pools)
        ]
        counts = []
        for p in range(pools):
            n = max(1, current[p])
            ratio = load[p] / n / self.target_requests
            desired = n if abs(ratio - 1.0) <= self.tolerance_frac else max(1, math.ceil(n * ratio))
            self.recent[p].append(desired)
            if desired > n:
                wanted = desired  # scale up at once
            elif now_s - self.last_change_s[p] < self.cooldown_s:
                wanted = n
            else:
                wanted = max(self.recent[p])
            if wanted != current[p]:
                self.last_change_s[p] = now_s
            counts.append(wanted)
        while sum(counts) > sim.n_nodes:
            counts[int(np.argmax(counts))] -= 1
        if counts == current:
            return None
        return _nodes_action(sim, counts, [sim.initial_knobs] * pools)


class PlannerFleet:
    """DynamoLLM-style: per pool, forecast the load; an integer program picks nodes and configurations.

    Every fleet interval: forecast[p] = (1 + margin) x max(last fleet interval's rate, its EWMA); the pool's
    request shape is the mean prompt of its arrivals (EWMA) and the mean output of its finished requests as
    the router saw them. ``greenrl.fleet.capacity.node_options`` scores every (TP, replicas, clock) for that
    shape, ``greenrl.fleet.planner.solve_plan`` (scipy's HiGHS MILP) picks the least-power plan, and
    ``assign`` keeps nodes in their pools and layouts where it can. A plan that needs fewer nodes than run
    now is taken only after ``patience`` decisions in a row want fewer (a parked node takes half a minute
    to come back). Between decisions, a pool whose last node interval's arrival rate exceeds its planned
    capacity triggers a new plan at once, forecasting at least that rate (a burst does not wait 5 minutes).

    Args:
        margin_frac, ewma_alpha: forecast margin and smoothing.
        headroom_frac, quantile: the capacity model's SLO headroom and TTFT quantile.
        patience: decisions in a row that must want fewer nodes before nodes park.
        max_layout_changes: nodes that may change layout (a drain and a reload) per decision.
        tie_tolerance_frac: ``solve_plan``'s tie-break: among plans within this share of the least power,
            the one with the most capacity per unit of forecast (None: HiGHS's first optimum).
        overload_split: ``solve_plan``'s split of the nodes when no plan serves every forecast
            (``proportional`` or ``most-served``).
    """

    name = "planner"

    def __init__(
        self,
        margin_frac: float = 0.2,
        ewma_alpha: float = 0.5,
        headroom_frac: float = 0.2,
        quantile: float = 0.99,
        patience: int = 2,
        max_layout_changes: int = 1,
        tie_tolerance_frac: float | None = 0.01,
        overload_split: str = "most-served",
    ) -> None:
        self.max_layout_changes, self.tie_tolerance_frac = max_layout_changes, tie_tolerance_frac
        self.overload_split = overload_split
        self.margin_frac, self.ewma_alpha = margin_frac, ewma_alpha
        self.headroom_frac, self.quantile, self.patience = headroom_frac, quantile, patience
        self._options: dict[tuple[int, int], list[NodeOption]] = {}

    def reset(self, sim: FleetSim) -> None:
        """Empty forecast."""
        pools = len(sim.config.pools)
        self.arrived = np.zeros(pools)
        self.elapsed_s = 0.0
        self.prompt_tokens = np.zeros(pools)
        self.rate_ewma: np.ndarray | None = None
        self.prompt_ewma = np.full(pools, 1024.0)
        self.fewer = 0
        self.plan: FleetPlan | None = None
        n = sim.config.scenario.node
        self.parked_node_w = n.gpus * n.parked_gpu_w(load_gpu(n.gpu).idle_power_w)

    def options(self, sim: FleetSim, prompt_tokens: float, output_tokens: float) -> list[NodeOption]:
        """``node_options`` for a request shape, cached on the shape rounded to 10% (log scale).

        A shape that no configuration serves within the headroom (long prompts at a large reserve) takes the
        largest smaller reserve that some configuration meets (3/4, 1/2, 1/4 of it, then none): the reserve
        is a preference, serving the pool is not. Without this the pool had no option and the plan gave it
        no node (89% attainment on m-large day 13 at headroom 0.8).
        """
        key = (round(math.log(max(prompt_tokens, 1.0)) / 0.1), round(math.log(max(output_tokens, 1.0)) / 0.1))
        if key not in self._options:
            p, o = (math.exp(k * 0.1) for k in key)
            found: list[NodeOption] = []
            for share in (1.0, 0.75, 0.5, 0.25, 0.0):
                found = node_options(sim.config.scenario, p, o, share * self.headroom_frac, self.quantile)
                if found:
                    break
            self._options[key] = found
        return self._options[key]

    def solve(self, sim: FleetSim, options: list[list[NodeOption]], forecast: npt.NDArray[np.float64]) -> FleetPlan:
        """``solve_plan`` for the fleet with this planner's tie-break and overload split."""
        return solve_plan(
            options,
            [float(f) for f in forecast],
            sim.n_nodes,
            self.parked_node_w,
            self.tie_tolerance_frac,
            self.overload_split,
        )

    def expected_rps(self, sim: FleetSim, reactive_rps: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Each pool's rate to plan for, before the margin: here what the last interval saw (or its EWMA)."""
        return reactive_rps

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """Accumulate arrivals every interval; plan every fleet interval."""
        if snapshot is not None:
            self.arrived += snapshot.pool_arrivals
            self.prompt_tokens += snapshot.pool_prompt_tokens
            self.elapsed_s += snapshot.t_end_s - snapshot.t_start_s
            last = np.array(snapshot.pool_arrivals) / (snapshot.t_end_s - snapshot.t_start_s)
        if step == 0:
            return sim.initial_action()
        urgent = self.plan is not None and snapshot is not None and bool(np.any(last > self.plan.capacity_rps))
        if step % sim.config.control.steps_per_decision and not urgent:
            return None
        a = self.ewma_alpha
        rate = self.arrived / max(self.elapsed_s, 1e-9)
        if urgent:
            rate = np.maximum(rate, last)
        self.rate_ewma = rate if self.rate_ewma is None else a * rate + (1.0 - a) * self.rate_ewma
        seen = self.arrived > 0
        mean_prompt = np.divide(self.prompt_tokens, self.arrived, out=self.prompt_ewma.copy(), where=seen)
        self.prompt_ewma = np.where(seen, a * mean_prompt + (1.0 - a) * self.prompt_ewma, self.prompt_ewma)
        forecast = (1.0 + self.margin_frac) * self.expected_rps(sim, np.maximum(rate, self.rate_ewma))
        self.elapsed_s = 0.0
        self.arrived[:] = 0.0
        self.prompt_tokens[:] = 0.0
        done = sim.finished_requests
        outputs = np.where(done >= 20, sim.finished_output_tokens / np.maximum(done, 1), 256.0)
        options = [self.options(sim, float(self.prompt_ewma[p]), float(outputs[p])) for p in range(len(forecast))]
        plan = self.solve(sim, options, forecast)
        running = sum(1 for s in sim.states if s == "on")
        if len(plan.slots) < running and not urgent:
            self.fewer += 1
            if self.fewer < self.patience and self.plan is not None:
                plan = self.plan if len(self.plan.slots) >= len(plan.slots) else plan
        else:
            self.fewer = 0
        self.plan = plan
        serving = tuple(s == "on" for s in sim.states)
        on, pools, knobs = assign(plan, sim.action.pool_of_node, sim.action.knobs, serving, self.max_layout_changes)
        return FleetAction(on, pools, knobs)


class HistoryPlannerFleet(PlannerFleet):
    """The planner with a forecast from history: what the training days say the coming minutes bring.

    Per pool, the rate planned for is the larger of the planner's reactive one and the history's:
    ``greenrl.fleet.forecast.daily_profile``'s highest window over the coming fleet interval and
    ``lead_s`` beyond (a parked node takes half a minute to come back), times today's level (the last
    interval's total rate over the profile's for the same minutes, smoothed as the planner's EWMA), times the
    pool's share of the arrivals (its EWMA). A ramp the history knows is planned for before it arrives; a
    quiet hour the history expects but the load does not follow changes nothing (the reactive rate stays).

    Args:
        lead_s: how far past the coming fleet interval the history's peak is taken (s).
        **planner: ``PlannerFleet``'s arguments.
    """

    name = "planner-history"

    def __init__(self, lead_s: float = 60.0, **planner: Any) -> None:
        super().__init__(**planner)
        self.lead_s = lead_s

    def reset(self, sim: FleetSim) -> None:
        """Empty forecast; the fleet category's daily profile."""
        super().reset(sim)
        self.profile = daily_profile(sim.config)
        self.level: float | None = None
        self.share: npt.NDArray[np.float64] | None = None

    def expected_rps(self, sim: FleetSim, reactive_rps: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The larger of the reactive rate and the history's for the coming minutes, per pool."""
        a, total = self.ewma_alpha, float(self.arrived.sum())
        start_s = 3600.0 * float(sim.trace.start_hour or 0.0) if sim.trace is not None else 0.0
        now_s = start_s + sim.now_s
        if total <= 0 or self.elapsed_s <= 0:
            return reactive_rps
        level = total / self.elapsed_s / max(self.profile.mean_rps(now_s - self.elapsed_s, now_s), 1e-9)
        share = self.arrived / total
        self.level = level if self.level is None else a * level + (1.0 - a) * self.level
        self.share = share if self.share is None else a * share + (1.0 - a) * self.share
        horizon_s = sim.config.control.fleet_interval_s + self.lead_s
        history = self.level * self.profile.peak_rps(now_s, now_s + horizon_s) * self.share
        return np.maximum(reactive_rps, history)


class OracleFleet(PlannerFleet):
    """Hindsight: the planner's program over the true load of each coming fleet interval (not deployable).

    Every fleet interval, per pool, the forecast is the highest 30-s arrival rate in the coming interval and
    ``lookahead_s`` beyond it (so a parked node is back before a burst), and the request shape is the true
    mean prompt and output of those requests; no margin, no patience, one layout change per decision as
    the planner (a bound on outage, not on knowledge).

    Args:
        lookahead_s: how far past the coming interval the peak is taken (s).
        headroom_frac, quantile: the capacity model's SLO headroom and TTFT quantile.
        tie_tolerance_frac, overload_split: as the planner's.
    """

    name = "oracle"

    def __init__(
        self,
        lookahead_s: float = 60.0,
        headroom_frac: float = 0.2,
        quantile: float = 0.99,
        tie_tolerance_frac: float | None = 0.01,
        overload_split: str = "most-served",
    ) -> None:
        super().__init__(
            overload_split=overload_split,
            margin_frac=0.0,
            headroom_frac=headroom_frac,
            quantile=quantile,
            patience=1,
            tie_tolerance_frac=tie_tolerance_frac,
        )
        self.lookahead_s = lookahead_s

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """Plan every fleet interval over the true coming load."""
        control = sim.config.control
        if step % control.steps_per_decision or sim.trace is None:
            return None
        trace = sim.trace
        t0 = sim.now_s
        lo, hi = np.searchsorted(trace.arrival_s, [t0, t0 + control.fleet_interval_s + self.lookahead_s])
        inputs, outputs = trace.input_tokens[lo:hi], trace.output_tokens[lo:hi]
        pools = len(sim.config.pools)
        kind = pool_of(inputs, sim.config.pool_bounds_tokens)
        bins = ((trace.arrival_s[lo:hi] - t0) // control.node_interval_s).astype(np.int64)
        per_bin = np.zeros((pools, int(bins.max()) + 1 if len(bins) else 1))
        np.add.at(per_bin, (kind, bins), 1.0)
        forecast = per_bin.max(axis=1) / control.node_interval_s
        count = np.bincount(kind, minlength=pools)
        prompt = np.bincount(kind, weights=inputs, minlength=pools) / np.maximum(count, 1)
        output = np.bincount(kind, weights=outputs, minlength=pools) / np.maximum(count, 1)
        options = [
            self.options(sim, float(prompt[p]) if count[p] else 1024.0, float(output[p]) if count[p] else 256.0)
            for p in range(pools)
        ]
        self.plan = self.solve(sim, options, forecast)
        serving = tuple(s == "on" for s in sim.states)
        a = sim.action
        on, pool_of_node, knobs = assign(self.plan, a.pool_of_node, a.knobs, serving, self.max_layout_changes)
        return FleetAction(on, pool_of_node, knobs)


FLEET_POLICIES: dict[str, Callable[[], FleetPolicy]] = {
    "static-max": StaticMaxFleet,
    "autoscaler": AutoscalerFleet,
    "planner": PlannerFleet,
    "planner-history": HistoryPlannerFleet,
    "oracle": OracleFleet,
}


def make_policy(name: str) -> FleetPolicy:
    """A fleet baseline by name."""
    if name not in FLEET_POLICIES:
        raise InputError("--policies", "policy", f"unknown fleet policy {name!r}", f"use {', '.join(FLEET_POLICIES)}")
    return FLEET_POLICIES[name]()
