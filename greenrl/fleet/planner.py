"""DynamoLLM-style fleet planning: how many nodes per pool, at which configuration, as an integer program.

For each pool ``p`` and node configuration ``c`` (``greenrl.fleet.capacity.node_options``: TP, replicas,
SM clock, with capacity ``cap[p, c]`` and power ``idle[c] + slope[p, c] x rate``) the program chooses an
integer node count ``x[p, c]`` and the rate ``y[p, c]`` those nodes serve:

    minimize    sum (idle[c] - parked_node_w) x[p, c] + slope[p, c] y[p, c]
    subject to  sum_c y[p, c] >= forecast[p]          (every pool's load is served)
                y[p, c] <= cap[p, c] x[p, c]          (within the configuration's SLO capacity)
                sum_c x[p, c] >= 1                    (every pool keeps a node)
                sum x <= nodes                        (the rest are parked)

solved by ``scipy.optimize.milp`` (HiGHS). When the forecast exceeds what the fleet can serve, the plan is
every node at its highest-capacity configuration, shared between pools so that the model serves the most
requests (the pools with the most capacity per node get what they need first).
``assign`` then maps the planned (pool, configuration) slots onto nodes, keeping each node's pool and
layout where it can (a layout change drains the node and reloads its weights).

Public names: FleetPlan, solve_plan, assign.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp

from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.fleet.capacity import NodeOption

__all__ = ["FleetPlan", "assign", "solve_plan"]


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """File descriptor 1 to /dev/null while HiGHS runs.

    HiGHS 1.x (scipy 1.17) writes a leftover debug line ("HighsMipSolverData::transformNewIntegerFeasibleSolution
    tmpSolver.run();") straight to the C stdout on some programs, whatever ``disp`` says; a JSON printed by
    a command would then not parse. Python's own ``sys.stdout`` is flushed first and untouched.
    """
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no real stdout (e.g. captured): nothing to silence
        yield
        return
    try:
        sys.stdout.flush()
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        _libc_fflush()  # HiGHS's printf buffer goes to /dev/null, not to the restored stdout
        os.dup2(saved, fd)
        os.close(saved)


def _libc_fflush() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def _milp(*args: Any, **kwargs: Any) -> Any:
    with _native_stdout_silenced():
        return milp(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """A plan: one (pool, knobs) entry per node to keep on, its predicted power, and whether it meets the forecast.

    Attributes:
        slots: (pool index, knobs) of each node to run; the others park.
        power_w: predicted fleet power (W), parked nodes included.
        feasible: whether the forecast fits the fleet's capacity.
        capacity_rps: planned capacity of each pool (requests/s).
    """

    slots: tuple[tuple[int, Knobs], ...]
    power_w: float
    feasible: bool
    capacity_rps: tuple[float, ...]


def solve_plan(
    options: list[list[NodeOption]],
    forecast_rps: list[float],
    nodes: int,
    parked_node_w: float,
    tie_tolerance_frac: float | None = 0.01,
    overload_split: str = "most-served",
) -> FleetPlan:
    """The least-power plan that serves each pool's forecast within its SLO capacity.

    Ties are broken lexicographically: a second program keeps the plans whose power is within
    ``tie_tolerance_frac`` of the least (as a share of the fleet's planned power) and picks the one with the
    most capacity per unit of forecast, summed over pools, so equal-power plans no longer come out as
    HiGHS happens to return them, and the pick is the SLO-safest.

    Args:
        options: per pool, the node configurations with their capacity and power for its request shape.
        forecast_rps: per pool, the rate to serve (requests/s).
        nodes: nodes in the fleet.
        parked_node_w: power of a parked node (W).
        tie_tolerance_frac: power tolerance of the second stage (share of the least plan's fleet power);
            None: no second stage (HiGHS's first optimum).
        overload_split: how every node is shared between pools when no plan serves every forecast
            (``_fallback``): ``most-served``, the split that serves the most requests by the capacity model
            (pools with the most capacity per node filled first), or ``proportional`` to each pool's nodes
            needed (the rule before 2026-12-08, which starved the short pool of a 16-node fleet).

    Example:
        >>> from greenrl.core import Knobs
        >>> k = Knobs(tp=4, replicas=2, max_num_seqs=256, sm_clock_mhz=1980)
        >>> o = NodeOption(k, capacity_rps=10.0, idle_w=1000.0, slope_j=100.0)
        >>> plan = solve_plan([[o], [o]], [15.0, 1.0], nodes=4, parked_node_w=500.0)
        >>> sorted(p for p, _ in plan.slots), plan.feasible
        ([0, 0, 1], True)
    """
    if overload_split not in _SPLITS:
        raise InputError(
            "solve_plan", "overload_split", f"unknown split {overload_split!r}", f"use one of {', '.join(_SPLITS)}"
        )
    pools = len(options)
    options = [_undominated(opts) for opts in options]
    cols = [(p, o) for p in range(pools) for o in options[p]]
    n = len(cols)
    if n == 0 or any(not options[p] for p in range(pools)):
        return _fallback(options, forecast_rps, nodes, parked_node_w, overload_split)
    cost = np.concatenate([[o.idle_w - parked_node_w for _, o in cols], [o.slope_j for _, o in cols]])
    rows, lb, ub = [], [], []
    for p in range(pools):
        served = np.zeros(2 * n)
        count = np.zeros(2 * n)
        for i, (q, _) in enumerate(cols):
            if q == p:
                served[n + i] = 1.0
                count[i] = 1.0
        rows += [served, count]
        lb += [max(0.0, forecast_rps[p]), 1.0]
        ub += [np.inf, np.inf]
    for i, (_, o) in enumerate(cols):
        link = np.zeros(2 * n)
        link[n + i], link[i] = 1.0, -o.capacity_rps
        rows.append(link)
        lb.append(-np.inf)
        ub.append(0.0)
    rows.append(np.concatenate([np.ones(n), np.zeros(n)]))
    lb.append(0.0)
    ub.append(float(nodes))
    # no pool needs more nodes of one configuration than its forecast fills (tight bounds: a small search)
    most = np.array([min(nodes, max(1, math.ceil(forecast_rps[p] / o.capacity_rps))) for p, o in cols], dtype=float)
    res = _milp(
        cost,
        constraints=LinearConstraint(np.array(rows), np.array(lb), np.array(ub)),
        integrality=np.concatenate([np.ones(n), np.zeros(n)]),
        bounds=Bounds(np.zeros(2 * n), np.concatenate([most, [max(0.0, forecast_rps[p]) for p, _ in cols]])),
    )
    if not res.success:
        return _fallback(options, forecast_rps, nodes, parked_node_w, overload_split)
    x = res.x
    if tie_tolerance_frac is not None:
        x = _tie_break(cols, cost, rows, lb, ub, res.x, forecast_rps, nodes, parked_node_w, tie_tolerance_frac)
    counts = np.round(x[:n]).astype(int)
    slots = tuple((p, o.knobs) for (p, o), k in zip(cols, counts, strict=True) for _ in range(k))
    power = float(cost @ x) + nodes * parked_node_w
    capacity = [sum(o.capacity_rps * k for (q, o), k in zip(cols, counts, strict=True) if q == p) for p in range(pools)]
    return FleetPlan(slots, power, True, tuple(capacity))


def _tie_break(
    cols: list[tuple[int, NodeOption]],
    cost: np.ndarray,
    rows: list[np.ndarray],
    lb: list[float],
    ub: list[float],
    first: np.ndarray,
    forecast_rps: list[float],
    nodes: int,
    parked_node_w: float,
    tolerance_frac: float,
) -> np.ndarray:
    """Second stage: among plans within ``tolerance_frac`` of the least fleet power, the most headroom.

    Maximizes the smallest planned capacity / forecast over pools (then, by 1e-3, their mean), so the
    pick among equal-power plans is the SLO-safest and no longer HiGHS's arbitrary one; ``first`` (the
    first stage's solution) is kept if the second program fails.
    """
    n = len(cols)
    pools = len(forecast_rps)
    best = float(cost @ first)
    budget = best + tolerance_frac * (best + nodes * parked_node_w) + 1e-6
    width = 2 * n + 1  # x, y, then t = the smallest capacity / forecast
    a = [np.append(r, 0.0) for r in rows]
    lo, hi = list(lb), list(ub)
    a.append(np.append(cost, 0.0))
    lo.append(-np.inf)
    hi.append(budget)
    objective = np.zeros(width)
    objective[-1] = -1.0
    for p in range(pools):
        row = np.zeros(width)
        for i, (q, o) in enumerate(cols):
            if q == p:
                row[i] = o.capacity_rps / max(forecast_rps[p], 1e-3)
                objective[i] -= 1e-3 * row[i] / pools
        row[-1] = -1.0
        a.append(row)
        lo.append(0.0)
        hi.append(np.inf)
    upper = np.concatenate([np.full(n, float(nodes)), [max(0.0, forecast_rps[p]) for p, _ in cols], [1e3]])
    tied = _milp(
        objective,
        constraints=LinearConstraint(np.array(a), np.array(lo), np.array(hi)),
        integrality=np.concatenate([np.ones(n), np.zeros(n + 1)]),
        bounds=Bounds(np.zeros(width), upper),
    )
    return tied.x[: 2 * n] if tied.success else first


def _undominated(options: list[NodeOption]) -> list[NodeOption]:
    """The options no other beats on idle power, energy per request and capacity at once (a smaller program)."""

    def beats(b: NodeOption, a: NodeOption) -> bool:
        no_worse = b.idle_w <= a.idle_w and b.slope_j <= a.slope_j and b.capacity_rps >= a.capacity_rps
        return no_worse and (b.idle_w, b.slope_j, -b.capacity_rps) != (a.idle_w, a.slope_j, -a.capacity_rps)

    return [a for a in options if not any(beats(b, a) for b in options)]


def _fallback(
    options: list[list[NodeOption]],
    forecast_rps: list[float],
    nodes: int,
    parked_node_w: float,
    split: str,
) -> FleetPlan:
    """Every node at its pool's highest-capacity configuration, shared between the pools by ``split``.

    ``proportional``: nodes in proportion to each pool's nodes needed (forecast / capacity), so every pool
    is short by the same share. ``most-served`` (``_most_served_counts``): the pools with the most
    capacity per node get all the nodes they need first, which serves the most requests by the model.
    A pool with no option of its own (no configuration meets its SLO checks) still gets nodes, at the
    highest-capacity configuration of any pool, with its planned capacity 0: a pool without a node would
    leave its requests to the router's fallback.
    """
    anywhere = [o for opts in options for o in opts]
    if not anywhere:
        return FleetPlan((), nodes * parked_node_w, False, tuple(0.0 for _ in options))
    widest = max(anywhere, key=lambda o: o.capacity_rps)
    best = [max(opts, key=lambda o: o.capacity_rps) if opts else None for opts in options]
    need = np.array([f / (b or widest).capacity_rps for f, b in zip(forecast_rps, best, strict=True)])
    per_node = [b.capacity_rps if b is not None else 0.0 for b in best]
    counts = _SPLITS[split](need, per_node, nodes)
    slots: list[tuple[int, Knobs]] = []
    power = 0.0
    capacity = []
    for p, (k, b) in enumerate(zip(counts, best, strict=True)):
        run = b or widest
        slots += [(p, run.knobs)] * int(k)
        power += int(k) * run.power_w(run.capacity_rps)
        capacity.append(int(k) * b.capacity_rps if b is not None else 0.0)
    return FleetPlan(tuple(slots), power + (nodes - len(slots)) * parked_node_w, False, tuple(capacity))


def assign(
    plan: FleetPlan,
    pool_of_node: tuple[int, ...],
    knobs: tuple[Knobs, ...],
    serving: tuple[bool, ...],
    max_layout_changes: int | None = None,
) -> tuple[tuple[bool, ...], tuple[int, ...], tuple[Knobs, ...]]:
    """Nodes for the plan's slots: (on, pool_of_node, knobs), keeping pools and layouts where it can.

    A slot prefers a serving node already in its pool with its layout, then a serving node with its
    layout, then any serving node, then a parked one; nodes left over park with their knobs unchanged.
    At most ``max_layout_changes`` serving nodes change layout (TP, replicas: a drain and a reload) per call,
    a rolling change; the others keep their layout and take the plan's clocks.

    Example:
        >>> from greenrl.core import Knobs
        >>> k4, k8 = Knobs(4, 2, 256, 1980), Knobs(8, 1, 256, 1980)
        >>> plan = FleetPlan(((1, k8),), 0.0, True, (0.0, 1.0))
        >>> assign(plan, (0, 1), (k4, k8), (True, True))[0]
        (False, True)
    """
    n = len(pool_of_node)
    taken = [False] * n
    budget = 0
    on, pools, new_knobs = [False] * n, list(pool_of_node), list(knobs)

    def score(j: int, pool: int, k: Knobs) -> tuple[int, int, int, int]:
        layout = (knobs[j].tp, knobs[j].replicas) == (k.tp, k.replicas)
        return (int(serving[j]), int(layout and serving[j]), int(pool_of_node[j] == pool), -j)

    for pool, k in sorted(plan.slots, key=lambda s: (s[0], -s[1].tp)):
        j = max((j for j in range(n) if not taken[j]), key=lambda j: score(j, pool, k), default=None)
        if j is None:
            break
        if serving[j] and (knobs[j].tp, knobs[j].replicas) != (k.tp, k.replicas):
            if max_layout_changes is not None and budget >= max_layout_changes:
                k = Knobs(
                    knobs[j].tp,
                    knobs[j].replicas,
                    k.max_num_seqs,
                    k.sm_clock_mhz,
                    k.max_num_batched_tokens,
                    k.prefill_sm_clock_mhz,
                )
            else:
                budget += 1
        taken[j], on[j], pools[j], new_knobs[j] = True, True, pool, k
    return tuple(on), tuple(pools), tuple(new_knobs)


def _proportional_counts(need: npt.NDArray[np.float64], per_node_rps: list[float], nodes: int) -> npt.NDArray[np.int64]:
    """Nodes per pool in proportion to each pool's nodes needed, at least one each (``per_node_rps`` unused)."""
    share = need / need.sum() if need.sum() > 0 else np.full(len(need), 1.0 / len(need))
    counts = np.maximum(1, np.floor(share * nodes)).astype(np.int64)
    while counts.sum() < nodes:
        counts[int(np.argmax(share * nodes - counts))] += 1
    while counts.sum() > nodes:
        counts[int(np.argmax(counts))] -= 1
    return counts


def _most_served_counts(need: npt.NDArray[np.float64], per_node_rps: list[float], nodes: int) -> npt.NDArray[np.int64]:
    """Nodes per pool that serve the most requests when the fleet cannot serve every pool's forecast.

    Every pool keeps one node; then, pools with the most capacity per node first, each gets the nodes it
    needs (``ceil(need)``) while nodes last, the greedy optimum of "maximize the requests served" over the
    capacity model. Nodes left over (only when a pool has no option: ``per_node_rps`` 0) go to the pools
    furthest below their need. With a short and a long pool, the short prompts' pool, which serves many
    requests per node, is no longer starved for the long one (docs/fleet.md, "Sixteen nodes").

    Example:
        >>> _most_served_counts(np.array([2.0, 23.0]), [17.7, 0.37], 16).tolist()
        [2, 14]
    """
    counts = np.ones(len(need), dtype=np.int64)
    left = nodes - len(need)
    for p in sorted(range(len(need)), key=lambda q: -per_node_rps[q]):
        extra = int(min(left, max(0, math.ceil(need[p] - 1e-9) - 1)))
        counts[p] += extra
        left -= extra
    while left > 0:
        counts[int(np.argmax(need - counts))] += 1
        left -= 1
    return counts


_SPLITS = {"most-served": _most_served_counts, "proportional": _proportional_counts}
"""``solve_plan``'s ``overload_split`` values and the node counts each gives."""
