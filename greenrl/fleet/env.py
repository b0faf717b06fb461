"""FleetEnv: a Gymnasium environment in which an agent decides, every fleet interval, each pool's nodes and clock.

Public names: FleetEnv, make_fleet_env, FLEET_OBS_FIELDS.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from greenrl.catalog import load_gpu
from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.fleet.cluster import FleetAction, FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.evaluate import fleet_day
from greenrl.fleet.planner import FleetPlan, assign
from greenrl.workload import Trace, scale_for_rate_rps, servegen_trace

__all__ = ["FLEET_OBS_FIELDS", "FleetEnv", "make_fleet_env"]

FLEET_OBS_FIELDS = (
    ("arrival_rate_rps", 10.0),
    ("mean_prompt_tokens", 4096.0),
    ("nodes_on_frac", 1.0),
    ("engine_requests_per_node", 64.0),
    ("kv_cache_usage_frac", 1.0),
)
"""Per pool, in this order: (name, scale); the observation holds value / scale, clipped to [0, 10]."""
GLOBAL_OBS = ("hour_sin", "hour_cos", "fleet_power_frac", "missed_frac")
"""After the pools: hour of day (sin, cos, in [-1, 1]), fleet power / all GPUs at TDP, SLO misses / finished."""


class FleetEnv(gym.Env[npt.NDArray[np.float32], npt.NDArray[np.int64]]):
    """A fleet of simulated vLLM nodes behind a length-aware router (``greenrl.fleet.FleetSim``).

    ## Description

    Every fleet interval (``control.fleet_interval_s``, 5 minutes by default) the agent chooses, for each
    request pool, how many nodes serve it and their SM clock; the nodes keep the node scenario's initial
    layout (TP, replicas, max_num_seqs) and run prompts at the top prefill clock. Nodes not chosen drain and
    park; a parked node that is chosen again reloads its weights. Within the interval the router sends each
    request to the pool's least-loaded node every 30 s (``control.node_interval_s``).

    ## Action Space

    ``MultiDiscrete([N] * P + [C] * P)`` for N nodes, P pools and C clocks: first, per pool, nodes on - 1
    (so every pool keeps a node; when the pools ask for more nodes than exist, the largest ask gives way),
    then, per pool, the index of its SM clock in the node scenario's ``sm_clock_mhz`` values (MHz).

    ## Observation Space

    ``Box(-10, 10, (5 P + 4,), float32)``: per pool, the last interval's arrival rate (/10 requests/s), mean
    prompt (/4,096 tokens), share of the fleet's nodes serving it, requests in the engines per serving node
    (/64) and mean KV-cache usage; then the hour of day (sin, cos), fleet power as a share of every GPU at
    TDP, and the share of requests finished in the interval that missed their SLO.

    ## Rewards

    reward = -energy / (N x GPUs x TDP x interval) - slo_weight x missed / max(1, finished), per interval
    (``info["reward_terms"]`` holds both terms).

    ## Starting State

    Every node on at the node scenario's initial knobs, in its configured pool.

    ## Episode End

    Truncated at the end of the window: a random ``workload.window_s`` of the node scenario's training days
    at a random rate scale (``split="train"``), or a whole held-out day (``split="eval"``). Never terminated.

    ## Arguments

    ``fleet`` (a name in ``envs/fleets/`` or a path), ``split`` (train / eval), ``eval_index`` (held-out day),
    ``slo_weight``.

    ## Version History

    * v0: first version.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - Gymnasium's class attribute

    def __init__(self, fleet: str = "default", split: str = "train", eval_index: int = 0, slo_weight: float = 100.0):
        if split not in ("train", "eval"):
            raise InputError("FleetEnv", "split", f"unknown split {split!r}", "use train or eval")
        self.config: FleetConfig = load_fleet(fleet)
        self.split, self.eval_index, self.slo_weight = split, eval_index, slo_weight
        self.sim = FleetSim(self.config)
        s = self.config.scenario
        gpu = load_gpu(s.node.gpu)
        self.clocks = sorted(s.control.knobs.get("sm_clock_mhz", [gpu.max_sm_clock_mhz]))
        self.prefill_top = max(s.control.knobs.get("prefill_sm_clock_mhz", [0]))
        n, p = self.config.nodes, len(self.config.pools)
        self.action_space = gym.spaces.MultiDiscrete([n] * p + [len(self.clocks)] * p)
        dim = len(FLEET_OBS_FIELDS) * p + len(GLOBAL_OBS)
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (dim,), dtype=np.float32)
        self.ref_power_w = n * s.node.gpus * gpu.tdp_w
        self._scale = scale_for_rate_rps(self.config.workload.category, self.config.workload.mean_rps)

    def _trace(self, rng: np.random.Generator) -> Trace:
        w = self.config.scenario.workload
        if self.split == "eval":
            return fleet_day(self.config, self.eval_index % len(w.eval_windows_s))
        t0, t1 = w.train_range_s
        start = float(rng.uniform(t0, max(t0, t1 - w.window_s)))
        scale = self._scale * float(rng.uniform(w.rate_scale[0], w.rate_scale[1]))
        return servegen_trace(self.config.workload.category, start, min(w.window_s, t1 - start), scale=scale, seed=rng)

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
        return self._observe([], 0, 0), {}

    def action_to_fleet(self, action: npt.ArrayLike) -> FleetAction:
        """The fleet action an agent's action stands for (pool node counts clamped to the fleet)."""
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        p = len(self.config.pools)
        counts = [int(c) + 1 for c in a[:p]]
        while sum(counts) > self.sim.n_nodes:
            counts[int(np.argmax(counts))] -= 1
        base = self.sim.initial_knobs
        slots = []
        for pool in range(p):
            clock = self.clocks[int(np.clip(a[p + pool], 0, len(self.clocks) - 1))]
            prefill = self.prefill_top if self.prefill_top > clock else 0
            knobs = Knobs(base.tp, base.replicas, base.max_num_seqs, clock, base.max_num_batched_tokens, prefill)
            slots += [(pool, knobs)] * counts[pool]
        plan = FleetPlan(tuple(slots), 0.0, True, (0.0,) * p)
        cur = self.sim.action
        on, pools, knobs_of = assign(plan, cur.pool_of_node, cur.knobs, tuple(s == "on" for s in self.sim.states))
        return FleetAction(on, pools, knobs_of)

    def step(self, action: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Apply the fleet action, then run one fleet interval of node intervals."""
        self.sim.apply(self.action_to_fleet(action))
        snaps = [
            self.sim.advance(self.config.control.node_interval_s) for _ in range(self.config.control.steps_per_decision)
        ]
        energy = sum(s.energy_j for s in snaps)
        finished = sum(s.finished + sum(n.rejected for n in s.nodes) for s in snaps)
        missed = finished - sum(s.slo_met for s in snaps)
        terms = {
            "energy": -energy / (self.ref_power_w * self.config.control.fleet_interval_s),
            "slo": -self.slo_weight * missed / max(1, finished),
        }
        self.t += 1
        info = {"reward_terms": terms, "energy_j": energy, "missed": missed, "finished": finished}
        return self._observe(snaps, missed, finished), float(sum(terms.values())), False, self.t >= self.steps, info

    def _observe(self, snaps: list[FleetSnapshot], missed: int, finished: int) -> npt.NDArray[np.float32]:
        p, n = len(self.config.pools), self.sim.n_nodes
        per_pool = np.zeros((p, len(FLEET_OBS_FIELDS)))
        span = max(1e-9, sum(s.t_end_s - s.t_start_s for s in snaps))
        for s in snaps:
            per_pool[:, 0] += np.array(s.pool_arrivals) / span
            per_pool[:, 1] += s.pool_prompt_tokens
        arrived = np.array([sum(s.pool_arrivals[q] for s in snaps) for q in range(p)], dtype=float)
        per_pool[:, 1] = np.divide(per_pool[:, 1], arrived, out=np.zeros(p), where=arrived > 0)
        serving = [s == "on" for s in self.sim.states]
        pools = self.sim.action.pool_of_node
        last = snaps[-1].nodes if snaps else ()
        for q in range(p):
            members = [j for j in range(n) if pools[j] == q and serving[j]]
            per_pool[q, 2] = len(members) / n
            if last and members:
                per_pool[q, 3] = np.mean([last[j].running + last[j].waiting for j in members])
                per_pool[q, 4] = np.mean([last[j].kv_cache_usage_frac for j in members])
        scales = np.array([scale for _, scale in FLEET_OBS_FIELDS])
        hour = (self.start_hour + self.sim.now_s / 3600.0) % 24.0
        power = sum(s.energy_j for s in snaps) / span / self.ref_power_w if snaps else 0.0
        extra = [math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24), power, missed / max(1, finished)]
        obs = np.concatenate([np.clip(per_pool / scales, 0.0, 10.0).ravel(), extra])
        return obs.astype(np.float32)


def make_fleet_env(fleet: str = "default", split: str = "train", eval_index: int = 0) -> FleetEnv:
    """The entry point of ``greenrl/fleet-<name>-v0``."""
    return FleetEnv(fleet, split, eval_index)
