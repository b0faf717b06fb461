"""FleetEnv: every fleet interval an agent decides each pool's nodes, layout and clock.

``FleetCodec`` holds what the env and a deployed controller share: the observation built from the fleet's
snapshots, and the mapping between the agent's per-pool action and a ``FleetAction`` (and back, to label a
baseline's plans for imitation).

Public names: FleetEnv, FleetCodec, make_fleet_env, FLEET_OBS_FIELDS, GLOBAL_OBS.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from greenrl.catalog import load_gpu
from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.fleet.cluster import FleetAction, FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.days import fleet_day, validation_day
from greenrl.fleet.planner import FleetPlan, assign
from greenrl.workload import Trace, scale_for_rate_rps, servegen_trace

__all__ = ["FLEET_OBS_FIELDS", "GLOBAL_OBS", "FleetCodec", "FleetEnv", "make_fleet_env"]

FLEET_OBS_FIELDS = (
    ("arrival_rate_rps", "requests/s", 10.0),
    ("mean_prompt_tokens", "tokens", 4096.0),
    ("nodes_on_frac", "fraction", 1.0),
    ("engine_requests_per_node", "requests", 64.0),
    ("kv_cache_usage_frac", "fraction", 1.0),
    ("sm_clock_frac", "fraction", 1.0),
    ("replica_gpus_frac", "fraction", 1.0),
)
"""Per pool, in this order: (name, unit, scale); the observation holds value / scale, clipped to [0, 10]."""
GLOBAL_OBS = (
    ("hour_sin", "1", 1.0),
    ("hour_cos", "1", 1.0),
    ("fleet_power_frac", "fraction", 1.0),
    ("missed_frac", "fraction", 1.0),
)
"""After the pools: hour of day (sin, cos, in [-1, 1]), fleet power / all GPUs at TDP, SLO misses / finished."""
LAYOUT_CODE = 100
"""A layout's knob value in an exported controller: tp x 100 + replicas (402: TP 4, 2 replicas)."""


def _serving(sim: FleetSim, pools: list[int], pool: int) -> list[int]:
    """The nodes of ``pool`` (under the assignment ``pools``) that are on."""
    return [j for j in range(sim.n_nodes) if pools[j] == pool and sim.states[j] == "on"]


class FleetCodec:
    """The fleet agent's observation and action, for the env and for a deployed controller alike.

    Args:
        config: the fleet.
        sim: a ``FleetSim`` of it (its nodes say which layouts are feasible).
    """

    def __init__(self, config: FleetConfig, sim: FleetSim) -> None:
        self.config = config
        s = config.scenario
        gpu = load_gpu(s.node.gpu)
        self.clocks = sorted(s.control.knobs.get("sm_clock_mhz", [gpu.max_sm_clock_mhz]))
        self.prefill_top = max(s.control.knobs.get("prefill_sm_clock_mhz", [0]))
        base = sim.initial_knobs
        self.base = base
        layouts = []
        for tp in sorted(s.control.knobs.get("tp", [base.tp])):
            for r in sorted(s.control.knobs.get("replicas", [base.replicas])):
                try:
                    sim.nodes[0].check(Knobs(tp, r, base.max_num_seqs, base.sm_clock_mhz), "FleetCodec")
                except InputError:
                    continue
                layouts.append((tp, r))
        if (base.tp, base.replicas) not in layouts:
            layouts.append((base.tp, base.replicas))
        self.layouts: list[tuple[int, int]] = sorted(layouts, key=lambda t: (t[0] * t[1], t[0]))
        self.pools = len(config.pools)
        self.nodes = config.nodes
        self.gpus = s.node.gpus
        self.ref_power_w = config.nodes * s.node.gpus * gpu.tdp_w
        self.nvec = [self.nodes] * self.pools + [len(self.layouts)] * self.pools + [len(self.clocks)] * self.pools

    @property
    def obs_dim(self) -> int:
        """Observation width: per pool fields, then the global ones."""
        return len(FLEET_OBS_FIELDS) * self.pools + len(GLOBAL_OBS)

    def observation_spec(self) -> list[dict[str, Any]]:
        """The observation's fields in order (name, unit, scale, source), as an exported controller records them."""
        names = [p.name for p in self.config.pools]
        spec = [
            {"name": f"{pool}.{n}", "unit": u, "scale": sc, "source": "fleet snapshots of the last fleet interval"}
            for pool in names
            for n, u, sc in FLEET_OBS_FIELDS
        ]
        return spec + [{"name": n, "unit": u, "scale": sc, "source": "fleet"} for n, u, sc in GLOBAL_OBS]

    def knob_names(self) -> list[str]:
        """One name per action entry: ``<pool>.nodes``, ``<pool>.layout``, ``<pool>.sm_clock_mhz``."""
        names = [p.name for p in self.config.pools]
        return [f"{p}.nodes" for p in names] + [f"{p}.layout" for p in names] + [f"{p}.sm_clock_mhz" for p in names]

    def knob_values(self) -> list[list[int]]:
        """Each action entry's values: node counts, layouts as tp x 100 + replicas, clocks (MHz)."""
        p = self.pools
        nodes = [list(range(1, self.nodes + 1))] * p
        layouts = [[tp * LAYOUT_CODE + r for tp, r in self.layouts]] * p
        return nodes + layouts + [list(self.clocks)] * p

    def observe(self, sim: FleetSim, snaps: list[FleetSnapshot], start_hour: float) -> npt.NDArray[np.float32]:
        """The observation after ``snaps`` (the last fleet interval's node intervals; empty at reset)."""
        p, n = self.pools, sim.n_nodes
        per_pool = np.zeros((p, len(FLEET_OBS_FIELDS)))
        span = max(1e-9, sum(s.t_end_s - s.t_start_s for s in snaps))
        arrived = np.zeros(p)
        for s in snaps:
            arrived += s.pool_arrivals
            per_pool[:, 1] += s.pool_prompt_tokens
        per_pool[:, 0] = arrived / span
        per_pool[:, 1] = np.divide(per_pool[:, 1], arrived, out=np.zeros(p), where=arrived > 0)
        serving = [s == "on" for s in sim.states]
        pools = sim.action.pool_of_node
        knobs = sim.action.knobs
        last = snaps[-1].nodes if snaps else ()
        top = float(self.clocks[-1])
        for q in range(p):
            members = [j for j in range(n) if pools[j] == q and serving[j]]
            per_pool[q, 2] = len(members) / n
            if members:
                per_pool[q, 5] = np.mean([knobs[j].sm_clock_mhz for j in members]) / top
                per_pool[q, 6] = np.mean([knobs[j].tp * knobs[j].replicas for j in members]) / self.gpus
            if last and members:
                per_pool[q, 3] = np.mean([last[j].running + last[j].waiting for j in members])
                per_pool[q, 4] = np.mean([last[j].kv_cache_usage_frac for j in members])
        scales = np.array([scale for _, _, scale in FLEET_OBS_FIELDS])
        hour = (start_hour + sim.now_s / 3600.0) % 24.0
        power = sum(s.energy_j for s in snaps) / span / self.ref_power_w if snaps else 0.0
        finished = sum(s.finished + sum(x.rejected for x in s.nodes) for s in snaps)
        missed = finished - sum(s.slo_met for s in snaps)
        extra = [math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24), power, missed / max(1, finished)]
        obs = np.concatenate([np.clip(per_pool / scales, 0.0, 10.0).ravel(), extra])
        return obs.astype(np.float32)

    def knobs_for(self, layout: int, clock: int) -> Knobs:
        """A pool's node knobs for a layout index and a clock index (prompts at the top prefill clock)."""
        tp, r = self.layouts[int(np.clip(layout, 0, len(self.layouts) - 1))]
        mhz = self.clocks[int(np.clip(clock, 0, len(self.clocks) - 1))]
        prefill = self.prefill_top if self.prefill_top > mhz else 0
        b = self.base
        return Knobs(tp, r, b.max_num_seqs, mhz, b.max_num_batched_tokens, prefill)

    def to_fleet(self, sim: FleetSim, action: npt.ArrayLike, max_layout_changes: int | None = 1) -> FleetAction:
        """The fleet action an agent's action stands for (pool node counts clamped to the fleet).

        At most ``max_layout_changes`` serving nodes change layout per decision (a rolling change, as the
        planner's); the others take the pool's clock in their current layout.
        """
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        p = self.pools
        counts = [int(np.clip(c, 0, self.nodes - 1)) + 1 for c in a[:p]]
        while sum(counts) > sim.n_nodes:
            counts[int(np.argmax(counts))] -= 1
        slots = []
        for pool in range(p):
            slots += [(pool, self.knobs_for(int(a[p + pool]), int(a[2 * p + pool])))] * counts[pool]
        plan = FleetPlan(tuple(slots), 0.0, True, (0.0,) * p)
        cur = sim.action
        serving = tuple(s == "on" for s in sim.states)
        on, pools, knobs_of = assign(plan, cur.pool_of_node, cur.knobs, serving, max_layout_changes)
        return FleetAction(on, pools, knobs_of)

    def guard(self, sim: FleetSim, snap: FleetSnapshot) -> FleetAction | None:
        """The fast node rule between fleet decisions (every node interval); None: no change.

        A serving node whose mean time between tokens exceeds 0.8 x the TBT SLO goes to the top SM clock
        until the next fleet decision (a queue alone does not raise it: the trained controllers learned with
        this rule, docs/fleet.md "The learned controller"); a pool whose
        every serving node queues requests takes one parked (or draining) node back, in the pool's
        layout at the top clock (at most one per node interval). The phase-dvfs and HPA scale-up rules,
        at the node cadence, so a 5-minute decision does not leave a burst unserved. With
        ``control.guard_rebalance_queue``, a pool that queues with no parked node left takes a node from an
        idle pool instead (``_rebalance_donor``), and failing that a queueing node with parked GPUs gets a
        layout on all of them (``_grown_layout``).
        """
        a = sim.action
        on, pools, knobs = list(a.on), list(a.pool_of_node), list(a.knobs)
        top = self.clocks[-1]
        tbt_limit_s = 0.8 * self.config.scenario.slo.tbt_mean_s
        changed = False
        for j, node in enumerate(snap.nodes):
            hot = node.tbt_mean_s > tbt_limit_s
            if sim.states[j] == "on" and hot and knobs[j].sm_clock_mhz < top:
                knobs[j] = replace(knobs[j], sm_clock_mhz=top, prefill_sm_clock_mhz=0)
                changed = True
        for q in range(self.pools):
            members = _serving(sim, pools, q)
            if not members or not all(snap.nodes[j].waiting > 0 for j in members):
                continue
            spare = [j for j in range(sim.n_nodes) if sim.states[j] == "draining"]
            spare += [j for j in range(sim.n_nodes) if sim.states[j] == "parked"]
            if spare:
                j = spare[0]
                on[j], pools[j] = True, q
                knobs[j] = replace(knobs[members[0]], sm_clock_mhz=top, prefill_sm_clock_mhz=0)
                changed = True
                break
            donor = self._rebalance_donor(sim, snap, pools, q, members)
            if donor is not None:  # the node keeps its layout: a move costs no reload
                pools[donor] = q
                knobs[donor] = replace(knobs[donor], sm_clock_mhz=top, prefill_sm_clock_mhz=0)
                changed = True
                break
        else:  # no pool took a node: a queueing node with parked GPUs serves on all of them
            grown = self._grown_layout(sim, snap, knobs)
            if grown is not None:
                j, (tp, replicas) = grown
                knobs[j] = replace(knobs[j], tp=tp, replicas=replicas, sm_clock_mhz=top, prefill_sm_clock_mhz=0)
                changed = True
        return FleetAction(tuple(on), tuple(pools), tuple(knobs)) if changed else None

    def _rebalance_donor(
        self, sim: FleetSim, snap: FleetSnapshot, pools: list[int], q: int, members: list[int]
    ) -> int | None:
        """The node to move into pool ``q`` (``control.guard_rebalance_queue``), or None.

        Only when every serving node of ``q`` queues at least the threshold: a pool split the load has outgrown
        (a learned split far from its training load, or a capacity model's on long outputs), not a burst's
        passing queue. The donor is the serving node running the fewest requests among pools with two or more
        serving nodes and no queue, so no pool is left empty or starved.
        """
        threshold = self.config.control.guard_rebalance_queue
        if threshold <= 0 or not all(snap.nodes[j].waiting >= threshold for j in members):
            return None
        candidates: list[int] = []
        for p in range(self.pools):
            serving = _serving(sim, pools, p)
            if p != q and len(serving) >= 2 and all(snap.nodes[j].waiting == 0 for j in serving):
                candidates += serving
        return min(candidates, key=lambda j: snap.nodes[j].running) if candidates else None

    def _grown_layout(
        self, sim: FleetSim, snap: FleetSnapshot, knobs: list[Knobs]
    ) -> tuple[int, tuple[int, int]] | None:
        """A node to grow and its new layout (a make-before-break reload), or None.

        The serving node that queues the most (at least the threshold) among those with GPUs parked, and the
        layout on all of its GPUs (its own TP where one exists).
        """
        threshold = self.config.control.guard_rebalance_queue
        if threshold <= 0:
            return None
        most = max(tp * r for tp, r in self.layouts)
        small = [
            j
            for j in range(sim.n_nodes)
            if sim.states[j] == "on" and knobs[j].tp * knobs[j].replicas < most and snap.nodes[j].waiting >= threshold
        ]
        if not small:
            return None
        j = max(small, key=lambda j: snap.nodes[j].waiting)
        full = [(tp, r) for tp, r in self.layouts if tp * r == most]
        same_tp = [(tp, r) for tp, r in full if tp == knobs[j].tp]
        return j, (same_tp or full)[0]

    def from_slots(self, slots: tuple[tuple[int, Knobs], ...]) -> npt.NDArray[np.int64]:
        """The agent's action nearest to a plan's (pool, knobs) slots.

        Per pool: its node count, the layout of most of its nodes (the larger on a tie), its highest clock.
        """
        p = self.pools
        out = np.zeros(3 * p, dtype=np.int64)
        for pool in range(p):
            mine = [k for q, k in slots if q == pool]
            out[pool] = max(1, min(self.nodes, len(mine))) - 1
            if not mine:
                base = self.base
                mine = [base]
            votes = Counter((k.tp, k.replicas) for k in mine)
            layout = max(votes, key=lambda t: (votes[t], t[0] * t[1], t[0]))
            out[p + pool] = min(
                range(len(self.layouts)),
                key=lambda i: (
                    abs(self.layouts[i][0] * self.layouts[i][1] - layout[0] * layout[1]) + (self.layouts[i] != layout)
                ),
            )
            clock = max(k.sm_clock_mhz for k in mine)
            out[2 * p + pool] = (
                int(np.searchsorted(self.clocks, clock)) if clock <= self.clocks[-1] else len(self.clocks) - 1
            )
        return out

    def from_action(self, action: FleetAction) -> npt.NDArray[np.int64]:
        """The agent's action nearest to a fleet action (its nodes that are asked to serve)."""
        slots = tuple((action.pool_of_node[j], action.knobs[j]) for j in range(len(action.on)) if action.on[j])
        return self.from_slots(slots)


class FleetEnv(gym.Env[npt.NDArray[np.float32], npt.NDArray[np.int64]]):
    """A fleet of simulated vLLM nodes behind a length-aware router (``greenrl.fleet.FleetSim``).

    ## Description

    Every fleet interval (``control.fleet_interval_s``, 5 minutes by default) the agent chooses, for each
    request pool, how many nodes serve it, their layout (TP x replicas; GPUs outside replicas are parked)
    and their SM clock; max_num_seqs stays the node scenario's. The fast node knob is left to each node:
    prompts run at the top prefill clock under the node scenario's deadline governor (per request, within
    the 30-s node interval). Nodes not chosen drain and park; a parked node that is chosen again, or a node
    changing layout, reloads its weights; at most one serving node changes layout per decision (a rolling
    change). Within the interval the router sends each request to the pool's least-loaded node every 30 s
    (``control.node_interval_s``).

    ## Action Space

    ``MultiDiscrete([N] * P + [L] * P + [C] * P)`` for N nodes, P pools, L layouts and C clocks: per pool,
    nodes on - 1 (every pool keeps a node; when the pools ask for more nodes than exist, the largest ask
    gives way); per pool, the index of its layout in ``FleetCodec.layouts`` (feasible (tp, replicas) of the
    node scenario's values, by GPUs serving: (4, 1), (4, 2), (8, 1) for the default fleet); per pool, the
    index of its SM clock in the node scenario's ``sm_clock_mhz`` values (MHz).

    ## Observation Space

    ``Box(-10, 10, (7 P + 4,), float32)``: per pool, the last interval's arrival rate (/10 requests/s), mean
    prompt (/4,096 tokens), share of the fleet's nodes serving it, requests in the engines per serving node
    (/64), mean KV-cache usage, mean SM clock of its serving nodes / the top clock, and GPUs in replicas
    per serving node / GPUs per node; then the hour of day (sin, cos), fleet power as a share of every GPU
    at TDP, and the share of requests finished in the interval that missed their SLO.

    ## Rewards

    reward = -energy / (N x GPUs x TDP x interval) - slo_weight x missed / max(1, finished), per interval
    (``info["reward_terms"]`` holds both terms).

    ## Starting State

    Every node on at the node scenario's initial knobs, in its configured pool.

    ## Episode End

    Truncated at the end of the window: a random ``window_s`` (default the node scenario's
    ``workload.window_s``) of the training days at a random rate scale, and with the fleet's
    ``workload.train_output_scale``, a random output-length factor (``split="train"``), a whole
    validation day (``split="val"``, days 10-11 for the default fleet) or a whole held-out day
    (``split="eval"``). Never terminated.

    ## Arguments

    ``fleet`` (a name in ``envs/fleets/`` or a path), ``split`` (train / val / eval), ``eval_index`` (which
    validation or held-out day), ``slo_weight``, ``window_s`` (training episode length, s), ``guarded`` (the
    fast node guard between decisions), ``output_spread`` (draw the fleet's ``workload.train_output_scale``
    in training episodes; False: the categories' own output lengths, as a teacher's demonstrations use).

    ## Version History

    * v1: the action adds a layout per pool (rolling: one layout change per decision); the observation adds
      each pool's clock and GPUs in replicas; a ``val`` split; ``action_masks`` (all allowed) for MaskablePPO.
    * v0: first version.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - Gymnasium's class attribute

    def __init__(
        self,
        fleet: str = "default",
        split: str = "train",
        eval_index: int = 0,
        slo_weight: float = 100.0,
        window_s: float | None = None,
        guarded: bool = True,
        output_spread: bool = True,
    ):
        if split not in ("train", "val", "eval"):
            raise InputError("FleetEnv", "split", f"unknown split {split!r}", "use train, val or eval")
        self.config: FleetConfig = load_fleet(fleet)
        self.split, self.eval_index, self.slo_weight = split, eval_index, slo_weight
        self.guarded, self.output_spread = guarded, output_spread
        self.window_s = float(window_s) if window_s is not None else self.config.scenario.workload.window_s
        self.sim = FleetSim(self.config)
        self.codec = FleetCodec(self.config, self.sim)
        self.clocks, self.prefill_top = self.codec.clocks, self.codec.prefill_top
        self.action_space = gym.spaces.MultiDiscrete(self.codec.nvec)
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (self.codec.obs_dim,), dtype=np.float32)
        self.ref_power_w = self.codec.ref_power_w
        workload = self.config.workload
        # Each training category scaled on its own to the fleet's mean rate: a mixed episode changes the load's
        # shape (clients, lengths, daily curve), never its size.
        self._train_scales = {c: scale_for_rate_rps(c, workload.mean_rps) for c in workload.training_categories}
        self.snaps: list[FleetSnapshot] = []
        self.knob_names = self.codec.knob_names()
        self.knob_values = self.codec.knob_values()

    def _trace(self, rng: np.random.Generator) -> Trace:
        w = self.config.scenario.workload
        if self.split == "eval":
            return fleet_day(self.config, self.eval_index % len(w.eval_windows_s))
        if self.split == "val":
            return validation_day(self.config, self.eval_index)
        categories = self.config.workload.training_categories
        # One category draws nothing here, so a single-category fleet's episodes are what they were before.
        category = categories[int(rng.integers(len(categories)))] if len(categories) > 1 else categories[0]
        t0, t1 = w.train_range_s
        start = float(rng.uniform(t0, max(t0, t1 - self.window_s)))
        scale = self._train_scales[category] * float(rng.uniform(w.rate_scale[0], w.rate_scale[1]))
        low, high = self.config.workload.train_output_scale if self.output_spread else (1.0, 1.0)
        # No draw without a spread, so the episodes of a fleet without one are what they were before.
        k = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if low < high else low
        scale /= k**self.config.workload.train_output_rate_exponent  # k = 1: unchanged, exactly
        trace = servegen_trace(category, start, min(self.window_s, t1 - start), scale=scale, seed=rng)
        return trace if k == 1.0 else trace.scale_outputs(k, self.config.scenario.node.max_model_len_tokens)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Draw the episode's load and start every node on at its initial knobs."""
        super().reset(seed=seed)
        trace = self._trace(self.np_random)
        self.start_hour = trace.start_hour or 0.0
        self.sim.reset(trace, seed=int(self.np_random.integers(2**31)))
        self.sim.apply(self.sim.initial_action())
        self.steps = max(1, round(trace.duration_s / self.config.control.fleet_interval_s))
        self.t = 0
        self.snaps = []
        return self.codec.observe(self.sim, [], self.start_hour), {}

    def action_masks(self) -> npt.NDArray[np.bool_]:
        """Every value of every entry is allowed (MaskablePPO's hook; counts above the fleet are clamped)."""
        return np.ones(int(sum(self.codec.nvec)), dtype=bool)

    def action_to_fleet(self, action: npt.ArrayLike) -> FleetAction:
        """The fleet action an agent's action stands for (``FleetCodec.to_fleet``)."""
        return self.codec.to_fleet(self.sim, action)

    def step(self, action: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Apply the fleet action, then run one fleet interval of node intervals."""
        self.sim.apply(self.action_to_fleet(action))
        control = self.config.control
        snaps: list[FleetSnapshot] = []
        for i in range(control.steps_per_decision):
            if i and self.guarded:
                fast = self.codec.guard(self.sim, snaps[-1])
                if fast is not None:
                    self.sim.apply(fast)
            snaps.append(self.sim.advance(control.node_interval_s))
        self.snaps = snaps
        energy = sum(s.energy_j for s in snaps)
        finished = sum(s.finished + sum(n.rejected for n in s.nodes) for s in snaps)
        missed = finished - sum(s.slo_met for s in snaps)
        terms = {
            "energy": -energy / (self.ref_power_w * control.fleet_interval_s),
            "slo": -self.slo_weight * missed / max(1, finished),
        }
        self.t += 1
        info = {"reward_terms": terms, "energy_j": energy, "missed": missed, "finished": finished}
        obs = self.codec.observe(self.sim, snaps, self.start_hour)
        return obs, float(sum(terms.values())), False, self.t >= self.steps, info

    def controller_manifest(self) -> dict[str, Any]:
        """The env's part of an exported controller's manifest (``greenrl.policy.export_controller``)."""
        return {
            "kind": "fleet",
            "fleet": self.config.name,
            "env_id": f"greenrl/fleet-{self.config.name}-v1",
            "scenario": f"fleet-{self.config.name}",
            "env_version": 1,
            "observation": self.codec.observation_spec(),
            "obs_clip": 10.0,
            "normalization": "each field divided by its scale, then clipped to [0, 10] (FleetCodec.observe)",
            "knobs": [{"name": n, "values": v} for n, v in zip(self.knob_names, self.knob_values, strict=True)],
            "action_mask": self.action_masks().astype(int).tolist(),
            "prefill_clock": {"ttft_target_s": self.config.scenario.control.prefill_clock_ttft_s},
        }


def make_fleet_env(fleet: str = "default", split: str = "train", eval_index: int = 0) -> FleetEnv:
    """The entry point of ``greenrl/fleet-<name>-v1``."""
    return FleetEnv(fleet, split, eval_index)
