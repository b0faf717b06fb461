"""One policy shared by every node: a per-node view of the fleet (parameter sharing).

Where ``FleetEnv``'s agent decides per pool (nodes, layout, clock) in one action, here every node is an
agent with the same policy: it sees its own state, its pool's and the fleet's figures, and decides its own
role (park, or serve a pool), layout and clock. The nodes' choices become one ``FleetAction`` through the
planner's ``assign`` with the same rolling rule (at most one layout change per decision) and the same
guard between decisions, and every node is rewarded with the fleet's reward, so the two are compared on
the same fleet, days and score.

* ``SharedNodeCodec``: the per-node observation and the node actions <-> ``FleetAction`` mapping.
* ``NodeFleetEnv``: ``FleetEnv`` whose action is every node's (role, layout, clock) (same reward, guard, load).
* ``SharedFleetVecEnv``: K ``NodeFleetEnv`` as K x N SB3 sub-envs, one per node, the fleet's reward to each.
* ``SharedNodeFleet``: a trained model as a ``FleetPolicy`` (all nodes predicted in one batch), with the guard.

Public names: SharedNodeCodec, NodeFleetEnv, SharedFleetVecEnv, SharedNodeFleet, NODE_OBS_FIELDS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from greenrl.fleet.cluster import FleetAction, FleetSim, FleetSnapshot
from greenrl.fleet.env import FLEET_OBS_FIELDS, FleetCodec, FleetEnv
from greenrl.fleet.planner import FleetPlan, assign

__all__ = ["NODE_OBS_FIELDS", "NodeFleetEnv", "SharedFleetVecEnv", "SharedNodeCodec", "SharedNodeFleet"]

NODE_OBS_FIELDS = (
    ("serving", "0/1", 1.0),
    ("draining", "0/1", 1.0),
    ("parked", "0/1", 1.0),
    # then one 0/1 per pool: the node's pool (a parked node keeps the pool it last served)
    ("replica_gpus_frac", "fraction", 1.0),
    ("sm_clock_frac", "fraction", 1.0),
    ("engine_requests", "requests", 64.0),
    ("kv_cache_usage_frac", "fraction", 1.0),
    ("routed_rps", "requests/s", 10.0),
    ("rank_frac", "fraction", 1.0),
)
"""The node's own fields, in this order (the pool one-hot after ``parked``): (name, unit, scale).

GPUs in replicas / GPUs per node and SM clock / top clock from its knobs; the last node interval's engine
requests (running + waiting) and KV use; the requests the router sent it per second over the last fleet
interval; its rank among the nodes of its state and pool (0, 1/N, ...), so that nodes in the same state
can break a tie as the planner's ``assign`` does (lowest index first). Then its pool's ``FLEET_OBS_FIELDS``,
then ``FleetCodec.observe`` whole (every pool's fields and ``GLOBAL_OBS``)."""


class SharedNodeCodec:
    """The node agent's observation and action, and the mapping of N node actions to one ``FleetAction``.

    Args:
        codec: the fleet's ``FleetCodec`` (layouts, clocks, per-pool observation).
    """

    def __init__(self, codec: FleetCodec) -> None:
        self.codec = codec
        self.pools, self.nodes = codec.pools, codec.nodes
        self.nvec = [self.pools + 1, len(codec.layouts), len(codec.clocks)]
        self.own_dim = len(NODE_OBS_FIELDS) + self.pools
        self.obs_dim = self.own_dim + len(FLEET_OBS_FIELDS) + codec.obs_dim

    def observe(self, sim: FleetSim, snaps: list[FleetSnapshot], start_hour: float) -> npt.NDArray[np.float32]:
        """(N, obs_dim): every node's observation after ``snaps`` (the last fleet interval; empty at reset)."""
        c, n, p = self.codec, sim.n_nodes, self.pools
        fleet = c.observe(sim, snaps, start_hour)
        per_pool = fleet[: len(FLEET_OBS_FIELDS) * p].reshape(p, len(FLEET_OBS_FIELDS))
        span_s = max(1e-9, sum(s.t_end_s - s.t_start_s for s in snaps))
        routed = np.sum([s.routed for s in snaps], axis=0) if snaps else np.zeros(n)
        last = snaps[-1].nodes if snaps else ()
        a, top = sim.action, float(c.clocks[-1])
        states = ("on", "draining", "parked")
        out = np.zeros((n, self.obs_dim), dtype=np.float32)
        for j in range(n):
            own = np.zeros(self.own_dim)
            own[states.index(sim.states[j])] = 1.0
            own[3 + a.pool_of_node[j]] = 1.0
            k = a.knobs[j]
            rank = sum(1 for i in range(j) if sim.states[i] == sim.states[j] and a.pool_of_node[i] == a.pool_of_node[j])
            engine = (last[j].running + last[j].waiting) / 64.0 if last else 0.0
            kv = last[j].kv_cache_usage_frac if last else 0.0
            own[3 + p :] = (
                k.tp * k.replicas / c.gpus,
                k.sm_clock_mhz / top,
                engine,
                kv,
                routed[j] / span_s / 10.0,
                rank / n,
            )
            own = np.clip(own, 0.0, 10.0)
            out[j] = np.concatenate([own, per_pool[a.pool_of_node[j]], fleet])
        return out

    def observation_spec(self) -> list[dict[str, Any]]:
        """A node's observation fields in order (name, unit, scale, source), as an exported controller records them."""
        pools = [p.name for p in self.codec.config.pools]
        own = [(n, u, sc) for n, u, sc in NODE_OBS_FIELDS[:3]] + [(f"pool_is_{p}", "0/1", 1.0) for p in pools]
        own += list(NODE_OBS_FIELDS[3:])
        spec = [
            {"name": f"node.{n}", "unit": u, "scale": sc, "source": "the node (SharedNodeCodec.observe)"}
            for n, u, sc in own
        ]
        spec += [
            {"name": f"own_pool.{n}", "unit": u, "scale": sc, "source": "the node's pool, last fleet interval"}
            for n, u, sc in FLEET_OBS_FIELDS
        ]
        return spec + self.codec.observation_spec()

    def knob_names(self) -> list[str]:
        """A node's action entries: its role (0 parked, 1 + pool index), layout and SM clock."""
        return ["role", "layout", "sm_clock_mhz"]

    def knob_values(self) -> list[list[int]]:
        """Each entry's values: roles 0..P, layouts as tp x 100 + replicas, clocks (MHz)."""
        fleet = self.codec.knob_values()  # per pool: node counts, then layouts, then clocks
        return [list(range(self.pools + 1)), fleet[self.pools], fleet[2 * self.pools]]

    def layout_index(self, tp: int, replicas: int) -> int:
        """The index of (tp, replicas) in the codec's layouts (else the nearest in GPUs serving)."""
        layouts = self.codec.layouts
        if (tp, replicas) in layouts:
            return layouts.index((tp, replicas))
        return min(range(len(layouts)), key=lambda i: abs(layouts[i][0] * layouts[i][1] - tp * replicas))

    def clock_index(self, mhz: float) -> int:
        """The index of the lowest clock at or above ``mhz`` (the top clock above them all)."""
        return min(int(np.searchsorted(self.codec.clocks, mhz)), len(self.codec.clocks) - 1)

    def labels(self, action: FleetAction) -> npt.NDArray[np.int64]:
        """(N, 3) node actions standing for a fleet action: role (0 park, 1 + pool), layout and clock indices."""
        rows = []
        for j, k in enumerate(action.knobs):
            role = action.pool_of_node[j] + 1 if action.on[j] else 0
            rows.append((role, self.layout_index(k.tp, k.replicas), self.clock_index(k.sm_clock_mhz)))
        return np.array(rows, dtype=np.int64)

    def to_fleet(
        self,
        sim: FleetSim,
        actions: npt.ArrayLike,
        last: FleetSnapshot | None = None,
        max_layout_changes: int | None = 1,
    ) -> FleetAction:
        """The fleet action N node actions stand for.

        Every node whose role is a pool asks for one (pool, knobs) slot; the slots are placed on nodes by the
        planner's ``assign`` (which keeps nodes in their pools and layouts where it can, so a slot may land on
        another node than the one that asked), with at most ``max_layout_changes`` layout changes, as
        ``FleetCodec.to_fleet``. A pool that no node asks for keeps one node: its least-loaded serving node
        (fewest running + waiting requests in ``last``, then the lowest index) stays, at its knobs; with
        none serving, its lowest-index node of any state; the slot taken from the pool with the most slots
        when every node already asks for another pool.
        """
        a = np.asarray(actions, dtype=np.int64).reshape(sim.n_nodes, 3)
        c, cur = self.codec, sim.action
        slots = [(int(r) - 1, c.knobs_for(int(lay), int(clk))) for r, lay, clk in a if 1 <= r <= self.pools]
        for q in range(self.pools):
            if any(pool == q for pool, _ in slots):
                continue
            members = [j for j in range(sim.n_nodes) if cur.pool_of_node[j] == q]
            serving = [j for j in members if sim.states[j] == "on"]
            if serving:
                loads = {j: (last.nodes[j].running + last.nodes[j].waiting) if last else 0 for j in serving}
                j = min(serving, key=lambda i: (loads[i], i))
            else:
                j = members[0] if members else 0
            if len(slots) >= sim.n_nodes:
                counts = np.bincount([pool for pool, _ in slots], minlength=self.pools)
                drop = max(i for i, (pool, _) in enumerate(slots) if pool == int(np.argmax(counts)))
                slots.pop(drop)
            slots.append((q, cur.knobs[j]))
        plan = FleetPlan(tuple(slots), 0.0, True, (0.0,) * self.pools)
        serving_now = tuple(s == "on" for s in sim.states)
        on, pools, knobs = assign(plan, cur.pool_of_node, cur.knobs, serving_now, max_layout_changes)
        return FleetAction(on, pools, knobs)


class NodeFleetEnv(FleetEnv):
    """``FleetEnv`` whose action is every node's (role, layout, clock): ``MultiDiscrete([[P + 1, L, C]] * N)``.

    Same load, reward, guard and episode as ``FleetEnv`` (only ``action_to_fleet`` differs:
    ``SharedNodeCodec.to_fleet``); ``node_obs`` gives the (N, obs_dim) per-node observations of the state.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes_codec = SharedNodeCodec(self.codec)
        n = self.sim.n_nodes
        self.action_space = gym.spaces.MultiDiscrete(np.tile(self.nodes_codec.nvec, (n, 1)))
        self.node_space = gym.spaces.Box(-10.0, 10.0, (self.nodes_codec.obs_dim,), dtype=np.float32)

    def node_obs(self) -> npt.NDArray[np.float32]:
        """(N, obs_dim): every node's observation now (after ``reset`` or ``step``)."""
        return self.nodes_codec.observe(self.sim, self.snaps, self.start_hour)

    def action_to_fleet(self, action: npt.ArrayLike) -> FleetAction:
        """The fleet action the node actions stand for (``SharedNodeCodec.to_fleet``)."""
        return self.nodes_codec.to_fleet(self.sim, action, self.snaps[-1] if self.snaps else None)

    def node_action_masks(self) -> npt.NDArray[np.bool_]:
        """One node's MaskablePPO mask: every value allowed."""
        return np.ones(int(sum(self.nodes_codec.nvec)), dtype=bool)

    def controller_manifest(self) -> dict[str, Any]:
        """The env's part of an exported shared node controller's manifest (``greenrl.policy.export_controller``).

        ``kind`` ``fleet-node``: one policy every node runs on its own observation (``SharedNodeFleet``).
        """
        codec = self.nodes_codec
        return super().controller_manifest() | {
            "kind": "fleet-node",
            "observation": codec.observation_spec(),
            "normalization": "each field divided by its scale, then clipped to [0, 10] (SharedNodeCodec.observe)",
            "knobs": [{"name": n, "values": v} for n, v in zip(codec.knob_names(), codec.knob_values(), strict=True)],
            "action_mask": self.node_action_masks().astype(int).tolist(),
        }


class SharedFleetVecEnv(VecEnv):
    """K fleets as K x N SB3 sub-envs, one per node (sub-env k x N + j: fleet k's node j).

    Every node of a fleet gets the fleet's reward and ends its episode with it (truncated at the window's
    end: ``TimeLimit.truncated`` and ``terminal_observation`` in its info, then the fleet resets). Seeds:
    ``seed(s)`` gives fleet k seed s + k at the next reset (as ``DummyVecEnv`` over K ``FleetEnv``).

    Args:
        fleets: the K ``NodeFleetEnv`` (same fleet).
    """

    def __init__(self, fleets: Sequence[NodeFleetEnv]) -> None:
        self.fleets = list(fleets)
        self.n = self.fleets[0].sim.n_nodes
        codec = self.fleets[0].nodes_codec
        super().__init__(
            len(self.fleets) * self.n,
            gym.spaces.Box(-10.0, 10.0, (codec.obs_dim,), dtype=np.float32),
            gym.spaces.MultiDiscrete(codec.nvec),
        )
        self._fleet_seeds: list[int | None] = [None] * len(self.fleets)
        self._actions = np.zeros((len(self.fleets), self.n, 3), dtype=np.int64)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Fleet k: ``seed + k`` at the next reset; returns the per-sub-env seeds (the fleet's, per node)."""
        base = int(np.random.randint(0, 2**31)) if seed is None else seed
        self._fleet_seeds = [base + k for k in range(len(self.fleets))]
        return [self._fleet_seeds[i // self.n] for i in range(self.num_envs)]

    def reset(self) -> npt.NDArray[np.float32]:
        """Reset every fleet (with its pending seed); the K x N node observations."""
        obs = []
        for k, env in enumerate(self.fleets):
            env.reset(seed=self._fleet_seeds[k])
            self._fleet_seeds[k] = None
            obs.append(env.node_obs())
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return np.concatenate(obs)

    def step_async(self, actions: npt.NDArray[np.int64]) -> None:
        """Hold the K x N node actions."""
        self._actions = np.asarray(actions, dtype=np.int64).reshape(len(self.fleets), self.n, 3)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every fleet one decision; each node's observation, the fleet's reward and end, per-node infos."""
        obs, rewards, dones, infos = [], [], [], []
        for k, env in enumerate(self.fleets):
            _, reward, terminated, truncated, info = env.step(self._actions[k])
            node_obs = env.node_obs()
            done = terminated or truncated
            rows = [dict(info, node=j, **{"TimeLimit.truncated": truncated and not terminated}) for j in range(self.n)]
            if done:
                for j, row in enumerate(rows):
                    row["terminal_observation"] = node_obs[j]
                env.reset(seed=self._fleet_seeds[k])
                self._fleet_seeds[k] = None
                node_obs = env.node_obs()
            obs.append(node_obs)
            rewards += [reward] * self.n
            dones += [done] * self.n
            infos += rows
        return np.concatenate(obs), np.array(rewards, dtype=np.float32), np.array(dones), infos

    def close(self) -> None:
        """Close every fleet."""
        for env in self.fleets:
            env.close()

    def _fleets_of(self, indices: VecEnvIndices) -> list[NodeFleetEnv]:
        return [self.fleets[i // self.n] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Each sub-env's fleet's attribute (``action_masks``: the node mask function)."""
        if attr_name == "action_masks":
            return [env.node_action_masks for env in self._fleets_of(indices)]
        return [getattr(env, attr_name) for env in self._fleets_of(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set the attribute on each sub-env's fleet."""
        for env in self._fleets_of(indices):
            setattr(env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        """Call a method of each sub-env's fleet (``action_masks``: the node's mask, every value allowed)."""
        name = "node_action_masks" if method_name == "action_masks" else method_name
        return [getattr(env, name)(*method_args, **kwargs) for env in self._fleets_of(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No sub-env is wrapped."""
        return [False for _ in self._get_indices(indices)]

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)


class SharedNodeFleet:
    """A shared node policy as a ``FleetPolicy``: every fleet interval all nodes observe and act in one batch.

    Between decisions ``FleetCodec.guard`` (as ``NodeFleetEnv`` trains with it), so validation and held-out
    days are played exactly as for ``greenrl.fleet.learn.LearnedFleet``.

    Args:
        predictor: anything with SB3's ``predict`` over (N, obs_dim) node observations (a MaskablePPO model).
        name: the policy's name in tables.
    """

    def __init__(self, predictor: Any, name: str = "shared-node") -> None:
        self.predictor, self.name = predictor, name

    def reset(self, sim: FleetSim) -> None:
        """Build the codecs for the sim's fleet; forget the last interval."""
        self.codec = SharedNodeCodec(FleetCodec(sim.config, sim))
        self.snaps: list[FleetSnapshot] = []

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """Collect snapshots; the guard between decisions; at each decision, the nodes' actions."""
        if snapshot is not None:
            self.snaps.append(snapshot)
        if step % sim.config.control.steps_per_decision:
            return self.codec.codec.guard(sim, snapshot) if snapshot is not None else None
        start_hour = (sim.trace.start_hour or 0.0) if sim.trace is not None else 0.0
        obs = self.codec.observe(sim, self.snaps, start_hour)
        last = self.snaps[-1] if self.snaps else None
        self.snaps = []
        actions, _ = self.predictor.predict(obs, deterministic=True)
        return self.codec.to_fleet(sim, actions, last)
