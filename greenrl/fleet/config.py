"""Fleet files: ``envs/fleets/<name>.yaml`` loaded into frozen dataclasses, every bad value one ``InputError``.

A fleet reuses a node scenario (``envs/<scenario>.yaml``: model, GPUs, power states, reload costs, SLOs,
node knob values) for each of its nodes, and adds how many nodes, the length-aware pools that the router
sends each request type to, the router, the ServeGen load scaled to the fleet, and the two cadences
(fleet decisions, node knobs). The files live in a subfolder so that the scenario registry, which reads
``envs/*.yaml``, never sees them.

Public names: FleetConfig, PoolSpec, RouterSpec, FleetWorkload, FleetControl, load_fleet, fleet_names, fleets_dir.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from greenrl.bundled import scenarios_dir
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.errors import InputError
from greenrl.ioutil import read_yaml
from greenrl.workload import load_servegen, servegen_categories
from greenrl.workload.servegen import DAY_S

__all__ = [
    "MAX_ROUTER_NODES",
    "FleetConfig",
    "FleetControl",
    "FleetWorkload",
    "PoolSpec",
    "RouterSpec",
    "fleet_names",
    "fleets_dir",
    "load_fleet",
]

MAX_ROUTER_NODES = 256
"""Most nodes any router here addresses (its ledger is one row per node; a real front end has a like limit)."""
ROUTER_POLICIES = ("least-work", "round-robin")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A request type and the nodes that serve it.

    Attributes:
        name: label (``short``, ``long``).
        max_input_tokens: the longest prompt of this pool (tokens); None: every longer prompt (the last pool).
        nodes: nodes assigned to the pool at reset (a fleet policy may move them later).
    """

    name: str
    max_input_tokens: int | None
    nodes: int


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """The router in front of the fleet.

    Attributes:
        policy: ``least-work`` (least outstanding work in the router's ledger) or ``round-robin``.
        max_nodes: nodes the router addresses at most (<= ``MAX_ROUTER_NODES``).
        prior_output_tokens: output length the ledger assumes before requests finish (tokens).
    """

    policy: str = "least-work"
    max_nodes: int = 64
    prior_output_tokens: float = 256.0


@dataclass(frozen=True, slots=True)
class FleetWorkload:
    """The fleet's load: one ServeGen category, every client's rate scaled so the training days average ``mean_rps``.

    Attributes:
        category: the category of the held-out days (and of the validation days, with the training ones).
        mean_rps: mean arrival rate over the training days (requests/s); each category is scaled to it.
        train_categories: categories a training episode draws from, uniformly (empty: ``category`` alone).
        train_output_scale: the range a training episode draws an output-length factor ``k`` from,
            log-uniformly: every output x ``k`` (``Trace.scale_outputs``); ``(1, 1)``: the category's own lengths.
            A synthetic spread of the load's shape toward long (reasoning) outputs, not a measurement.
        train_output_rate_exponent: the episode's rate is divided by ``k ** exponent``, so its decode token
            load grows as ``k ** (1 - exponent)`` and stays servable.
    """

    category: str = "language/m-large"
    mean_rps: float = 8.0
    train_categories: tuple[str, ...] = ()
    train_output_scale: tuple[float, float] = (1.0, 1.0)
    train_output_rate_exponent: float = 0.5

    @property
    def training_categories(self) -> tuple[str, ...]:
        """The categories training episodes draw from: ``train_categories``, or ``category`` alone."""
        return self.train_categories or (self.category,)

    @property
    def validation_categories(self) -> tuple[str, ...]:
        """The categories model selection validates on: ``category`` first, then the other training categories."""
        return (self.category, *(c for c in self.train_categories if c != self.category))


@dataclass(frozen=True, slots=True)
class FleetControl:
    """Cadences: node knobs every ``node_interval_s``, fleet decisions every ``fleet_interval_s`` (a multiple).

    ``guard_rebalance_queue``: with N > 0, the fast node guard (``FleetCodec.guard``) also moves a node into a
    pool whose every serving node queues N or more requests, from a pool with two or more serving nodes and
    no queue, when no parked node is left to wake; failing that, a node that queues N or more with GPUs
    parked gets a layout on all of them. 0: off (the recipes shipped so far trained without it).
    """

    node_interval_s: float = 30.0
    fleet_interval_s: float = 300.0
    guard_rebalance_queue: int = 0

    @property
    def steps_per_decision(self) -> int:
        """Node intervals per fleet decision."""
        return round(self.fleet_interval_s / self.node_interval_s)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """A whole fleet file, with the node scenario it names loaded.

    Attributes:
        name, path: file stem and path.
        scenario: the node scenario every node runs (its SLOs and knob values too).
        nodes: nodes in the fleet.
        pools: request types by prompt length, shortest first, the last one open-ended.
        router, workload, control: see their classes.
    """

    name: str
    path: str
    description: str
    scenario: Scenario
    nodes: int
    pools: tuple[PoolSpec, ...]
    router: RouterSpec
    workload: FleetWorkload
    control: FleetControl

    @property
    def pool_bounds_tokens(self) -> tuple[float, ...]:
        """Each pool's longest prompt (tokens; inf for the last)."""
        return tuple(math.inf if p.max_input_tokens is None else float(p.max_input_tokens) for p in self.pools)

    @property
    def initial_pool_of_node(self) -> tuple[int, ...]:
        """The pool index of each node at reset: pool 0's nodes first."""
        return tuple(i for i, p in enumerate(self.pools) for _ in range(p.nodes))

    def with_category(self, category: str, mean_rps: float | None = None) -> FleetConfig:
        """This fleet with ``category`` as the load of its validation and held-out days.

        At the same mean rate, or at ``mean_rps`` (requests/s over the category's training days, > 0). The
        caller checks the name (``greenrl.workload.servegen_categories``) and the rate.
        """
        rate = self.workload.mean_rps if mean_rps is None else float(mean_rps)
        return replace(self, workload=replace(self.workload, category=category, mean_rps=rate))

    def with_guard_rebalance(self, queue: int) -> FleetConfig:
        """This fleet with ``control.guard_rebalance_queue`` set to ``queue`` (>= 0; the caller checks it)."""
        return replace(self, control=replace(self.control, guard_rebalance_queue=int(queue)))


def fleets_dir() -> Path:
    """The folder of fleet files: ``fleets/`` under the scenarios folder."""
    return scenarios_dir() / "fleets"


def fleet_names() -> list[str]:
    """Fleet names (file stems) in ``fleets_dir()``."""
    folder = fleets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _section(where: str, raw: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    value = raw.get(key, {}) if isinstance(raw, dict) else {}
    if not isinstance(value, dict):
        raise InputError(where, key, f"expected a mapping, got {value!r}", "write {key: value, ...}")
    for k in value:
        if k not in allowed:
            raise InputError(where, f"{key}.{k}", "unknown key", f"use one of {', '.join(allowed)}")
    return value


def _number(where: str, field: str, value: Any, *, integer: bool = False, positive: bool = True) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    if not ok or not math.isfinite(value) or (positive and value <= 0):
        kind = "a positive whole number" if integer else "a positive number"
        raise InputError(where, field, f"expected {kind}, got {value!r}", f"write {kind}")
    return value if integer else float(value)


def _pools(where: str, raw: Any, nodes: int) -> tuple[PoolSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise InputError(where, "pools", f"expected a non-empty list, got {raw!r}", "e.g. [{name: all, nodes: 4}]")
    pools: list[PoolSpec] = []
    for i, item in enumerate(raw):
        field = f"pools[{i}]"
        if not isinstance(item, dict):
            raise InputError(where, field, f"expected a mapping, got {item!r}", "write {name: ..., nodes: ...}")
        for k in item:
            if k not in ("name", "max_input_tokens", "nodes"):
                raise InputError(where, f"{field}.{k}", "unknown key", "use name, max_input_tokens, nodes")
        name = item.get("name", f"pool{i}")
        if not isinstance(name, str) or not name:
            raise InputError(where, f"{field}.name", f"expected text, got {name!r}", "quote a name")
        bound = item.get("max_input_tokens")
        if bound is not None:
            bound = _number(where, f"{field}.max_input_tokens", bound, integer=True)
        count = _number(where, f"{field}.nodes", item.get("nodes"), integer=True)
        pools.append(PoolSpec(name, bound, count))
    last = pools[-1].max_input_tokens
    if last is not None:
        raise InputError(
            where,
            f"pools[{len(pools) - 1}].max_input_tokens",
            f"prompts longer than {last} tokens belong to no pool",
            "leave max_input_tokens out of the last pool",
        )
    lower = 0
    for i, p in enumerate(pools[:-1]):
        bound = p.max_input_tokens
        if bound is None:
            raise InputError(
                where, f"pools[{i}].max_input_tokens", "only the last pool may be open-ended", "give it a bound"
            )
        if bound <= lower:
            raise InputError(
                where,
                f"pools[{i}].max_input_tokens",
                f"{bound} is not above the previous pool's {lower}: this pool covers no request",
                "list pools by increasing max_input_tokens",
            )
        lower = bound
    if len({p.name for p in pools}) != len(pools):
        raise InputError(where, "pools.name", "two pools share a name", "give each pool its own name")
    total = sum(p.nodes for p in pools)
    if total != nodes:
        raise InputError(
            where, "pools.nodes", f"the pools hold {total} nodes, the fleet has {nodes}", "make them add up to nodes"
        )
    return tuple(pools)


def _train_categories(where: str, raw: object) -> tuple[str, ...]:
    """``workload.train_categories``: a list of distinct category names (checked against the data by the caller)."""
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw) or len(set(raw)) != len(raw):
        raise InputError(
            where,
            "workload.train_categories",
            f"expected a list of distinct category names, got {raw!r}",
            "e.g. train_categories: [language/m-large, language/m-small]",
        )
    return tuple(raw)


def _output_scale(where: str, raw: object) -> tuple[float, float]:
    """``workload.train_output_scale``: ``[low, high]``, 0 < low <= high."""
    values = raw if isinstance(raw, list) else []
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if (
        len(values) != 2
        or len(numbers) != 2
        or not all(math.isfinite(v) and v > 0 for v in numbers)
        or numbers[0] > numbers[1]
    ):
        raise InputError(
            where,
            "workload.train_output_scale",
            f"expected [low, high] with 0 < low <= high, got {raw!r}",
            "e.g. train_output_scale: [1.0, 9.0], or omit it for the category's own output lengths",
        )
    return numbers[0], numbers[1]


def load_fleet(name_or_path: str) -> FleetConfig:
    """A fleet by name (a file in ``fleets_dir()``) or by path to a YAML file.

    Raises:
        InputError: naming the file, the field and the fix, before anything is built.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = fleets_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        names = fleet_names()
        raise InputError("--fleet", "fleet", f"unknown fleet {name_or_path!r}", f"use one of {', '.join(names)}")
    where = str(path)
    raw = read_yaml(path, "fleet")
    if not isinstance(raw, dict):
        raise InputError(where, "file", f"expected a mapping, got {raw!r}", "see envs/fleets/default.yaml")
    top = ("version", "description", "scenario", "nodes", "pools", "router", "workload", "control")
    for key in raw:
        if key not in top:
            raise InputError(where, key, "unknown key", f"use one of {', '.join(top)}")
    scenario_name = raw.get("scenario", "day")
    if not isinstance(scenario_name, str):
        raise InputError(where, "scenario", f"expected a scenario name, got {scenario_name!r}", "e.g. scenario: day")
    try:
        scenario = load_scenario(scenario_name)
    except InputError as err:
        raise InputError(where, "scenario", f"{scenario_name!r}: {err.problem}", err.fix) from None
    if scenario.workload.servegen is None:
        raise InputError(
            where,
            "scenario",
            f"{scenario_name!r} replays no ServeGen days, so the fleet has no day to evaluate",
            "name a ServeGen day scenario such as day or day-m-small",
        )
    nodes = _number(where, "nodes", raw.get("nodes"), integer=True)
    r = _section(where, raw, "router", ("policy", "max_nodes", "prior_output_tokens"))
    router = RouterSpec(
        policy=r.get("policy", "least-work"),
        max_nodes=_number(where, "router.max_nodes", r.get("max_nodes", 64), integer=True),
        prior_output_tokens=_number(where, "router.prior_output_tokens", r.get("prior_output_tokens", 256.0)),
    )
    if router.policy not in ROUTER_POLICIES:
        raise InputError(
            where, "router.policy", f"unknown policy {router.policy!r}", f"use {' or '.join(ROUTER_POLICIES)}"
        )
    if router.max_nodes > MAX_ROUTER_NODES:
        raise InputError(
            where, "router.max_nodes", f"{router.max_nodes} is above {MAX_ROUTER_NODES}", f"use <= {MAX_ROUTER_NODES}"
        )
    if nodes > router.max_nodes:
        raise InputError(
            where,
            "nodes",
            f"{nodes} nodes, but the router addresses at most {router.max_nodes}",
            f"use at most {router.max_nodes} nodes, or split the fleet",
        )
    pools = _pools(where, raw.get("pools"), nodes)
    w = _section(
        where,
        raw,
        "workload",
        ("category", "mean_rps", "train_categories", "train_output_scale", "train_output_rate_exponent"),
    )
    exponent = _number(
        where, "workload.train_output_rate_exponent", w.get("train_output_rate_exponent", 0.5), positive=False
    )
    if not 0.0 <= exponent <= 1.0:
        raise InputError(
            where, "workload.train_output_rate_exponent", f"{exponent:g} is outside [0, 1]", "use e.g. 0.5"
        )
    workload = FleetWorkload(
        category=str(w.get("category", "language/m-large")),
        mean_rps=_number(where, "workload.mean_rps", w.get("mean_rps", 8.0)),
        train_categories=_train_categories(where, w.get("train_categories", [])),
        train_output_scale=_output_scale(where, w.get("train_output_scale", [1.0, 1.0])),
        train_output_rate_exponent=exponent,
    )
    categories = servegen_categories()
    if workload.category not in categories:
        raise InputError(
            where, "workload.category", f"unknown ServeGen category {workload.category!r}", f"use one of {categories}"
        )
    for category in workload.train_categories:
        if category not in categories:
            raise InputError(
                where,
                "workload.train_categories",
                f"unknown ServeGen category {category!r}",
                f"use categories of {categories}",
            )
        # Refused here, not mid-training: an episode may start anywhere in the node scenario's training range.
        span_s = load_servegen(category).span_s
        if span_s < scenario.workload.train_range_s[1]:
            raise InputError(
                where,
                "workload.train_categories",
                f"{category!r} has data for {span_s / DAY_S:g} of the training range's "
                f"{scenario.workload.train_range_s[1] / DAY_S:g} days",
                "train on categories with the training days, e.g. language/m-large and language/m-small",
            )
    c = _section(where, raw, "control", ("node_interval_s", "fleet_interval_s", "guard_rebalance_queue"))
    rebalance = _number(
        where, "control.guard_rebalance_queue", c.get("guard_rebalance_queue", 0), integer=True, positive=False
    )
    if rebalance < 0:
        raise InputError(
            where, "control.guard_rebalance_queue", f"{rebalance} is negative", "use 0 (off) or e.g. 32 requests"
        )
    control = FleetControl(
        node_interval_s=_number(where, "control.node_interval_s", c.get("node_interval_s", 30.0)),
        fleet_interval_s=_number(where, "control.fleet_interval_s", c.get("fleet_interval_s", 300.0)),
        guard_rebalance_queue=rebalance,
    )
    ratio = control.fleet_interval_s / control.node_interval_s
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise InputError(
            where,
            "control.fleet_interval_s",
            f"{control.fleet_interval_s} s is not a multiple of node_interval_s {control.node_interval_s} s",
            "e.g. node_interval_s: 30.0 with fleet_interval_s: 300.0",
        )
    description = raw.get("description", "")
    return FleetConfig(
        name=path.stem,
        path=where,
        description=str(description),
        scenario=scenario,
        nodes=nodes,
        pools=pools,
        router=router,
        workload=workload,
        control=control,
    )
