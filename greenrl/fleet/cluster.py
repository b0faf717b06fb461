"""FleetSim: N simulated nodes behind one router, stepped together by the node control interval.

Every node is the existing ``SimNode`` (the node scenario's model, power states and reload costs); the
fleet adds what lies between them:

* the router (``greenrl.fleet.router``): each request arriving in an interval goes to a node when the
  interval starts, by its pool and the router's ledger of outstanding work, which learns of completions
  at interval boundaries (30 s by default: within an interval the ledger grows with what it sends);
* node power states: ``on`` (serving; just unparked it reloads its replicas at the node model's cost, and
  the router sends it requests only once it serves, unless no node of any pool serves); ``draining``
  (asked to park: the router sends nothing, the requests it holds finish); ``parked`` (every replica
  slot OFF: each GPU draws the parked power). Coming back from parked loads the replicas again
  (``SimNode``'s reload: weights from host memory, engine start-up, reload power);
* per-node knobs (tp, replicas, max_num_seqs, SM clocks), applied as ``SimNode.apply`` applies them.

Fleet energy is the sum of the nodes' energies, SLO attainment the share of arrived requests that met
their SLO. A run is deterministic for a seed and a trace.

Public names: FleetAction, FleetSnapshot, FleetResult, FleetSim, NodeState.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from greenrl.core import Knobs, NodeSnapshot
from greenrl.env.serving_env import build_node
from greenrl.errors import InputError
from greenrl.fleet.config import FleetConfig
from greenrl.fleet.router import Router, pool_of
from greenrl.sim import SimNode
from greenrl.workload import Trace

__all__ = ["FleetAction", "FleetResult", "FleetSim", "FleetSnapshot", "NodeState"]

NodeState = Literal["on", "draining", "parked"]


@dataclass(frozen=True, slots=True)
class FleetAction:
    """What the fleet runs from now on.

    Attributes:
        on: whether each node should serve (False: drain, then park).
        pool_of_node: each node's pool index.
        knobs: each node's knobs (``replicas`` >= 1; a parked node keeps them for when it comes back).
    """

    on: tuple[bool, ...]
    pool_of_node: tuple[int, ...]
    knobs: tuple[Knobs, ...]


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """One node interval of the whole fleet.

    Attributes:
        t_start_s, t_end_s: interval bounds (s since reset).
        nodes: each node's snapshot; states: each node's power state at ``t_end_s``.
        pool_of_node: each node's pool in the interval.
        routed: requests the router sent to each node in the interval.
        pool_arrivals: requests of each pool that arrived in the interval.
        pool_prompt_tokens: their prompt tokens, per pool.
        energy_j: fleet GPU energy in the interval (J), the sum of the nodes'.
    """

    t_start_s: float
    t_end_s: float
    nodes: tuple[NodeSnapshot, ...]
    states: tuple[NodeState, ...]
    pool_of_node: tuple[int, ...]
    routed: tuple[int, ...]
    pool_arrivals: tuple[int, ...]
    pool_prompt_tokens: tuple[int, ...]
    energy_j: float

    @property
    def arrived(self) -> int:
        """Requests arrived at the fleet in the interval."""
        return sum(self.pool_arrivals)

    @property
    def finished(self) -> int:
        """Requests finished in the interval, all nodes."""
        return sum(s.finished for s in self.nodes)

    @property
    def slo_met(self) -> int:
        """Requests finished in the interval within their SLO, all nodes."""
        return sum(s.slo_met for s in self.nodes)


@dataclass(frozen=True, slots=True)
class FleetResult:
    """A whole run: energy (kWh), requests, and the share that met the SLO (unfinished ones count as missed)."""

    energy_kwh: float
    requests: int
    slo_met: int
    node_energy_kwh: tuple[float, ...]
    parked_node_hours: float

    @property
    def slo_attainment(self) -> float:
        """slo_met / requests (1.0 with none)."""
        return self.slo_met / self.requests if self.requests else 1.0


class _Ledger:
    """The requests sent to one node: per row, the work the router booked, the output it will see, the pool."""

    def __init__(self, pools: int) -> None:
        self.pools = pools
        self.work = np.zeros(0)
        self.output = np.zeros(0)
        self.pool = np.zeros(0, dtype=np.int64)
        self.counted = np.zeros(0, dtype=np.bool_)
        self.lo = 0
        self.n = 0

    def add(self, work: npt.NDArray[np.float64], output: npt.NDArray[np.int64], pool: npt.NDArray[np.int64]) -> None:
        k = len(work)
        if self.n + k > len(self.work):
            size = max(self.n + k, 2 * len(self.work), 1024)
            self.work = np.resize(self.work, size)
            self.output = np.resize(self.output, size)
            self.pool = np.resize(self.pool, size)
            self.counted = np.resize(self.counted, size)
        self.work[self.n : self.n + k] = work
        self.output[self.n : self.n + k] = output
        self.pool[self.n : self.n + k] = pool
        self.counted[self.n : self.n + k] = False
        self.n += k

    def newly_done(self, done: npt.NDArray[np.bool_]) -> tuple[float, np.ndarray, np.ndarray]:
        """Work, and per pool output tokens and count, of the requests done since last asked (``done`` from ``lo``)."""
        rows = slice(self.lo, self.n)
        new = done & ~self.counted[rows]
        self.counted[rows] |= new
        pool = self.pool[rows][new]
        out = np.bincount(pool, weights=self.output[rows][new], minlength=self.pools)
        count = np.bincount(pool, minlength=self.pools)
        work = float(self.work[rows][new].sum())
        pending = np.flatnonzero(~self.counted[rows])
        self.lo = self.lo + (int(pending[0]) if len(pending) else self.n - self.lo)
        return work, out, count


class FleetSim:
    """N ``SimNode``s of the fleet's node scenario behind one ``Router``.

    Args:
        config: the fleet; every node is built from ``config.scenario``.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        base = build_node(config.scenario, "eval", 0)
        node_config = replace(base.config, parkable=True)
        self.initial_knobs = node_config.initial
        self._empty = Trace("fleet-node", np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), duration_s=1.0)
        self.nodes = [SimNode(node_config, self._empty) for _ in range(config.nodes)]
        self.router = Router(
            config.nodes,
            config.pool_bounds_tokens,
            config.router.policy,
            config.router.prior_output_tokens,
        )
        self.trace: Trace | None = None

    @property
    def n_nodes(self) -> int:
        """Nodes in the fleet."""
        return len(self.nodes)

    def initial_action(self) -> FleetAction:
        """Every node on, in its configured pool, at the node scenario's initial (static-max) knobs."""
        n = self.n_nodes
        return FleetAction((True,) * n, self.config.initial_pool_of_node, (self.initial_knobs,) * n)

    def reset(self, trace: Trace, *, seed: int | None = None) -> None:
        """Start at t = 0 with every node on at its initial knobs; ``trace`` is the fleet's whole load."""
        self.trace = trace
        self.now_s = 0.0
        self._cursor = 0
        self.router.reset(seed)
        for node in self.nodes:
            node.reset(seed=seed)
        self.states: list[NodeState] = ["on"] * self.n_nodes
        self.waking = [False] * self.n_nodes
        self.action = self.initial_action()
        self.ledgers = [_Ledger(len(self.config.pools)) for _ in self.nodes]
        self.finished_output_tokens = np.zeros(len(self.config.pools))
        self.finished_requests = np.zeros(len(self.config.pools), dtype=np.int64)
        self.energy_j = np.zeros(self.n_nodes)
        self.parked_s = np.zeros(self.n_nodes)

    def apply(self, action: FleetAction) -> None:
        """Take a fleet action: power states, pools and node knobs (at least one node stays on)."""
        n = self.n_nodes
        if not (len(action.on) == len(action.pool_of_node) == len(action.knobs) == n):
            raise InputError("FleetSim.apply", "action", f"expected {n} entries per field", "one per node")
        if any(not 0 <= p < len(self.config.pools) for p in action.pool_of_node):
            raise InputError("FleetSim.apply", "pool_of_node", "a pool index out of range", "use the fleet's pools")
        for j, node in enumerate(self.nodes):  # every check before any change: a refused action changes nothing
            if action.knobs[j].replicas < 1:
                raise InputError("FleetSim.apply", "knobs.replicas", "must be >= 1", "park a node with on=False")
            node.check(action.knobs[j], "FleetSim.apply")
        on = list(action.on)
        if not any(on):
            keep = next((j for j in range(n) if self.states[j] == "on"), 0)
            on[keep] = True
        self.action = replace(action, on=tuple(on))
        for j, node in enumerate(self.nodes):
            knobs = action.knobs[j]
            if on[j]:
                current = node.knobs
                if self.states[j] == "parked" or (knobs.tp, knobs.replicas) != (current.tp, current.replicas):
                    self.waking[j] = True  # reloading: the router prefers nodes that serve
                self.states[j] = "on"
                node.apply(knobs)
            elif self.states[j] == "on":
                self.states[j] = "draining"
                node.apply(knobs)
            elif self.states[j] == "draining":
                node.apply(knobs)

    def _routable(self) -> npt.NDArray[np.bool_]:
        on = np.array([s == "on" for s in self.states])
        ready = on & ~np.array(self.waking)
        return ready if ready.any() else on

    def advance(self, dt_s: float) -> FleetSnapshot:
        """Route the interval's arrivals, serve for ``dt_s`` on every node, and report the interval."""
        if self.trace is None:
            raise RuntimeError("call reset() before advance()")
        t0, t1 = self.now_s, self.now_s + dt_s
        trace = self.trace
        hi = int(np.searchsorted(trace.arrival_s, t1, side="left"))
        rows = slice(self._cursor, hi)
        self._cursor = hi
        arrival, inputs, outputs = trace.arrival_s[rows], trace.input_tokens[rows], trace.output_tokens[rows]
        pools = np.array(self.action.pool_of_node)
        routed = np.zeros(self.n_nodes, dtype=np.int64)
        n_pools = len(self.config.pools)
        kind = pool_of(inputs, self.config.pool_bounds_tokens)
        pool_counts = np.bincount(kind, minlength=n_pools)
        pool_tokens = np.bincount(kind, weights=inputs, minlength=n_pools)
        if len(arrival):
            targets, work = self.router.route(inputs, pools, self._routable())
            for j, node in enumerate(self.nodes):
                sel = targets == j
                routed[j] = int(sel.sum())
                if routed[j]:
                    node.add_requests(arrival[sel], inputs[sel], outputs[sel])
                    self.ledgers[j].add(work[sel], outputs[sel], kind[sel])
        snaps = []
        for j, node in enumerate(self.nodes):
            snap = node.advance(dt_s)
            snaps.append(snap)
            self.energy_j[j] += snap.energy_j
            if self.states[j] == "parked":
                self.parked_s[j] += dt_s
            ledger = self.ledgers[j]
            work_done, out_done, count = ledger.newly_done(node.done(ledger.lo))
            if count.sum():
                self.router.finished(j, work_done, float(out_done.sum()), int(count.sum()))
                self.finished_output_tokens += out_done
                self.finished_requests += count
            if self.waking[j] and not snap.reconfiguring:
                self.waking[j] = False
            if self.states[j] == "draining" and snap.unfinished == 0:
                node.apply(replace(snap.knobs, replicas=0))
                self.states[j] = "parked"
        self.now_s = t1
        return FleetSnapshot(
            t_start_s=t0,
            t_end_s=t1,
            nodes=tuple(snaps),
            states=tuple(self.states),
            pool_of_node=self.action.pool_of_node,
            routed=tuple(int(r) for r in routed),
            pool_arrivals=tuple(int(c) for c in pool_counts),
            pool_prompt_tokens=tuple(int(c) for c in pool_tokens),
            energy_j=float(sum(s.energy_j for s in snaps)),
        )

    def result(self) -> FleetResult:
        """The run so far: energy, and SLO attainment over every request arrived (unfinished ones missed)."""
        requests = met = 0
        for node in self.nodes:
            rec = node.requests()
            arrived = rec["arrival_s"] < self.now_s
            requests += int(arrived.sum())
            met += int(rec["slo_met"][arrived].sum())
        return FleetResult(
            energy_kwh=float(self.energy_j.sum()) / 3.6e6,
            requests=requests,
            slo_met=met,
            node_energy_kwh=tuple(float(e) / 3.6e6 for e in self.energy_j),
            parked_node_hours=float(self.parked_s.sum()) / 3600.0,
        )
