"""The fleet: config validation, router properties, cluster determinism and energy, the planner's plans."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.fleet import FleetAction, FleetSim, Router, load_fleet
from greenrl.fleet.capacity import node_options
from greenrl.fleet.config import fleets_dir
from greenrl.fleet.planner import assign, solve_plan
from greenrl.fleet.policies import FLEET_POLICIES, make_policy
from greenrl.fleet.rollout import run_policy
from greenrl.workload import Trace, scale_for_rate_rps, servegen_trace

DEFAULT = fleets_dir() / "default.yaml"


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return load_fleet("default")


@pytest.fixture(scope="module")
def trace(fleet) -> Trace:  # type: ignore[no-untyped-def]
    """Ten busy minutes of the fleet's load (day 13, 18:00)."""
    scale = scale_for_rate_rps(fleet.workload.category, fleet.workload.mean_rps)
    return servegen_trace(fleet.workload.category, 13 * 86400 + 18 * 3600, 600.0, scale=scale, seed=0)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT.read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new))


# ------------------------------------------------------------------------------------------------ config


def test_default_fleet_loads(fleet) -> None:  # type: ignore[no-untyped-def]
    assert fleet.nodes == 4 and fleet.scenario.name == "day"
    assert [p.name for p in fleet.pools] == ["short", "long"]
    assert fleet.pool_bounds_tokens == (2048.0, float("inf"))
    assert fleet.control.steps_per_decision == 10
    assert sum(p.nodes for p in fleet.pools) == fleet.nodes


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("nodes: 4\n", "nodes: 100\n", "nodes"),  # more nodes than the router addresses
        ("max_nodes: 64", "max_nodes: 1000", "router.max_nodes"),
        ("{name: long, nodes: 2}", "{name: long, max_input_tokens: 1024, nodes: 2}", "pools[1].max_input_tokens"),
        ("max_input_tokens: 2048, nodes: 2}", "max_input_tokens: 2048, nodes: 1}", "pools.nodes"),
        ("policy: least-work", "policy: random", "router.policy"),
        ("fleet_interval_s: 300.0", "fleet_interval_s: 45.0", "control.fleet_interval_s"),
        ("mean_rps: 8.0", "mean_rps: -1.0", "workload.mean_rps"),
        ("scenario: day", "scenario: nowhere", "scenario"),
        ("scenario: day", "scenario: tiny", "scenario"),  # no ServeGen days to evaluate
        ("category: language/m-large", "category: language/nope", "workload.category"),
        ("nodes: 4\n", "nodes: 4\nnode_count: 3\n", "node_count"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_categories: language/m-small}", "workload.train_categories"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_categories: [language/nope]}", "workload.train_categories"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_categories: [reason/deepseek-r1]}", "workload.train_categories"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_output_scale: [9, 1]}", "workload.train_output_scale"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_output_scale: [0, 9]}", "workload.train_output_scale"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_output_scale: 9}", "workload.train_output_scale"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_output_scale: [1, 2, 3]}", "workload.train_output_scale"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_output_rate_exponent: 1.5}", "workload.train_output_rate_exponent"),
        ("mean_rps: 8.0}", "mean_rps: 8.0, train_output_rate_exponent: .nan}", "workload.train_output_rate_exponent"),
        (
            "fleet_interval_s: 300.0}",
            "fleet_interval_s: 300.0, guard_rebalance_queue: -1}",
            "control.guard_rebalance_queue",
        ),
        (
            "fleet_interval_s: 300.0}",
            "fleet_interval_s: 300.0, guard_rebalance_queue: 2.5}",
            "control.guard_rebalance_queue",
        ),
    ],
)
def test_bad_fleet_is_one_clear_input_error(tmp_path: Path, old: str, new: str, field: str) -> None:
    path = _variant(tmp_path, old, new)
    with pytest.raises(InputError) as err:
        load_fleet(str(path))
    assert err.value.where == str(path) and err.value.field == field and err.value.fix


def test_pool_that_covers_no_request_is_refused(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "  - {name: short, max_input_tokens: 2048, nodes: 2}",
        "  - {name: short, max_input_tokens: 2048, nodes: 1}\n  - {name: mid, max_input_tokens: 1024, nodes: 1}",
    )
    with pytest.raises(InputError, match="covers no request") as err:
        load_fleet(str(path))
    assert err.value.field == "pools[1].max_input_tokens"


def test_fleet_days_are_labelled_and_never_overlap_training(fleet) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.days import held_out_day_number, validation_windows_s

    w = fleet.scenario.workload
    assert [held_out_day_number(fleet, i) for i in range(len(w.eval_windows_s))] == [12, 13]
    assert [start // 86400 for start, _ in validation_windows_s(fleet)] == [10, 11]
    assert all(start >= w.train_range_s[1] for start, _ in validation_windows_s(fleet))


def test_unknown_fleet_names_the_known_ones() -> None:
    with pytest.raises(InputError, match="default"):
        load_fleet("no-such-fleet")


# ------------------------------------------------------------------------------------------------ router


def test_pools_route_by_length_and_parked_nodes_receive_nothing() -> None:
    router = Router(4, (2048.0, float("inf")), seed=0)
    inputs = np.array([100, 5000, 2048, 2049, 10, 9000] * 50, dtype=np.int64)
    pools = (0, 0, 1, 1)
    nodes, work = router.route(inputs, pools, (True, False, True, True))
    assert not np.any(nodes == 1)  # parked
    assert np.all(nodes[inputs <= 2048] == 0)  # the short pool's only node that is on
    assert set(nodes[inputs > 2048].tolist()) == {2, 3}
    assert np.allclose(work, inputs + 256.0)


def test_least_work_balances_the_ledger_and_completions_leave_it() -> None:
    router = Router(3, (float("inf"),), seed=1)
    nodes, work = router.route(np.full(300, 500, dtype=np.int64), (0, 0, 0), (True, True, True))
    assert np.bincount(nodes, minlength=3).tolist() == [100, 100, 100]
    router.finished(0, float(work[nodes == 0].sum()), 100 * 200.0, 100)
    assert router.ledger_tokens[0] == 0.0
    nodes, _ = router.route(np.full(10, 500, dtype=np.int64), (0, 0, 0), (True, True, True))
    assert np.all(nodes == 0)  # the emptied node takes the next requests


def test_a_pool_with_no_node_on_spills_to_the_others() -> None:
    router = Router(2, (2048.0, float("inf")), seed=0)
    nodes, _ = router.route(np.array([5000, 6000], dtype=np.int64), (0, 1), (True, False))
    assert nodes.tolist() == [0, 0]


def test_routing_is_deterministic_for_a_seed() -> None:
    inputs = np.random.default_rng(0).integers(1, 8000, 500)

    def run(seed: int) -> list[int]:
        router = Router(4, (2048.0, float("inf")), seed=seed)
        return router.route(inputs, (0, 0, 1, 1), (True,) * 4)[0].tolist()

    assert run(3) == run(3)


# ----------------------------------------------------------------------------------------------- cluster


def _play(fleet, trace: Trace, policy: str, seed: int = 0):  # type: ignore[no-untyped-def]
    sim = FleetSim(fleet)
    out = run_policy(sim, make_policy(policy), trace, seed=seed)
    return sim, out


def test_same_seed_same_fleet_day(fleet, trace) -> None:  # type: ignore[no-untyped-def]
    a, ra = _play(fleet, trace, "planner", seed=5)
    b, rb = _play(fleet, trace, "planner", seed=5)
    ra.pop("wall_s"), rb.pop("wall_s")
    assert ra == rb
    assert a.result() == b.result()


def test_fleet_energy_is_the_sum_of_its_nodes_and_parked_nodes_get_nothing(fleet, trace) -> None:  # type: ignore[no-untyped-def]
    sim = FleetSim(fleet)
    sim.reset(trace, seed=0)
    k = sim.initial_knobs
    sim.apply(FleetAction((True, True, True, False), (0, 0, 1, 1), (k,) * 4))
    total = 0.0
    snaps = [sim.advance(30.0) for _ in range(20)]
    for snap in snaps:
        assert snap.energy_j == pytest.approx(sum(s.energy_j for s in snap.nodes))
        assert snap.energy_j == pytest.approx(sum(sum(s.energy_per_gpu_j) for s in snap.nodes))
        total += snap.energy_j
        assert snap.routed[3] == 0
    assert sim.result().energy_kwh == pytest.approx(total / 3.6e6)
    assert snaps[-1].states[3] == "parked"
    parked_w = 8 * fleet.scenario.node.parked_power_w
    assert snaps[-1].nodes[3].energy_j == pytest.approx(parked_w * 30.0)
    arrived = sum(s.arrived for s in snaps)
    assert arrived == sum(sum(s.routed) for s in snaps) == int(np.sum(trace.arrival_s < 600.0))


def test_a_parked_node_comes_back_at_the_reload_cost(fleet, trace) -> None:  # type: ignore[no-untyped-def]
    sim = FleetSim(fleet)
    sim.reset(trace, seed=0)
    k = sim.initial_knobs
    sim.apply(FleetAction((True, True, True, False), (0, 0, 1, 1), (k,) * 4))
    for _ in range(4):
        sim.advance(30.0)
    assert sim.states[3] == "parked"
    sim.apply(FleetAction((True,) * 4, (0, 0, 1, 1), (k,) * 4))
    back = sim.advance(30.0)
    assert back.nodes[3].reconfiguring and back.routed[3] == 0  # reloading (31.8 s): the router waits for it
    later = [sim.advance(30.0) for _ in range(3)]
    assert not later[-1].nodes[3].reconfiguring and sum(s.routed[3] for s in later) > 0


def test_bad_actions_are_refused(fleet, trace) -> None:  # type: ignore[no-untyped-def]
    sim = FleetSim(fleet)
    sim.reset(trace, seed=0)
    k = sim.initial_knobs
    with pytest.raises(InputError, match="pool_of_node"):
        sim.apply(FleetAction((True,) * 4, (0, 0, 1, 7), (k,) * 4))
    with pytest.raises(InputError, match="replicas"):
        sim.apply(FleetAction((True,) * 4, (0, 0, 1, 1), (replace(k, replicas=0),) * 4))
    before = (sim.action, list(sim.states), [node.knobs for node in sim.nodes])
    with pytest.raises(InputError, match="tp"):  # the last node's knobs are bad: no node changes
        sim.apply(FleetAction((False, True, True, True), (0, 0, 1, 1), (k, k, k, replace(k, tp=3))))
    assert (sim.action, list(sim.states), [node.knobs for node in sim.nodes]) == before
    sim.apply(FleetAction((False,) * 4, (0, 0, 1, 1), (k,) * 4))  # all off: one node stays on
    assert sum(s == "on" for s in sim.states) == 1


# ----------------------------------------------------------------------------------------------- planner


def test_planner_returns_a_feasible_plan_that_meets_capacity(fleet) -> None:  # type: ignore[no-untyped-def]
    options = [node_options(fleet.scenario, 600.0, 130.0), node_options(fleet.scenario, 5000.0, 250.0)]
    assert all(options)
    forecast = [12.0, 0.3]
    plan = solve_plan(options, forecast, fleet.nodes, parked_node_w=8 * 71.8)
    assert plan.feasible and 2 <= len(plan.slots) <= fleet.nodes
    for p, rate in enumerate(forecast):
        assert plan.capacity_rps[p] >= rate
        assert any(q == p for q, _ in plan.slots)
    busy = solve_plan(options, [80.0, 0.3], fleet.nodes, parked_node_w=8 * 71.8)
    assert len(busy.slots) > len(plan.slots) or busy.power_w > plan.power_w
    overload = solve_plan(options, [1e4, 1e3], fleet.nodes, parked_node_w=8 * 71.8)
    assert not overload.feasible and len(overload.slots) == fleet.nodes


def test_an_overloaded_fleet_fills_the_pool_that_serves_most_per_node_first() -> None:
    from greenrl.core import Knobs
    from greenrl.fleet.capacity import NodeOption

    k = Knobs(tp=4, replicas=2, max_num_seqs=256, sm_clock_mhz=1980)
    short = NodeOption(k, capacity_rps=17.7, idle_w=1000.0, slope_j=100.0)
    long = NodeOption(k, capacity_rps=0.37, idle_w=1000.0, slope_j=100.0)
    forecast = [30.0, 8.5]  # needs 2 short nodes and 23 long ones: more than 16
    split = {
        mode: solve_plan([[short], [long]], forecast, 16, parked_node_w=500.0, overload_split=mode)
        for mode in ("proportional", "most-served")
    }
    counts = {mode: [sum(1 for q, _ in plan.slots if q == p) for p in (0, 1)] for mode, plan in split.items()}
    assert not any(plan.feasible for plan in split.values())
    assert counts["proportional"] == [1, 15]  # every pool short by the same share: 17.7 of 30 req/s served
    assert counts["most-served"] == [2, 14]  # the short pool whole: 35.4 of 30, the long 5.2 of 8.5
    served = {m: sum(min(f, c) for f, c in zip(forecast, split[m].capacity_rps, strict=True)) for m in split}
    assert served["most-served"] > served["proportional"]
    with pytest.raises(InputError, match="overload_split"):
        solve_plan([[short], [long]], forecast, 16, parked_node_w=500.0, overload_split="most_served")
    # a feasible forecast is planned alike either way
    light = [solve_plan([[short], [long]], [5.0, 0.3], 16, 500.0, overload_split=m).slots for m in split]
    assert light[0] == light[1]


def test_a_pool_that_no_configuration_serves_still_gets_nodes(fleet) -> None:  # type: ignore[no-untyped-def]
    short = node_options(fleet.scenario, 600.0, 130.0)
    assert short and not node_options(fleet.scenario, 10000.0, 300.0, headroom_frac=0.8)
    for split in ("proportional", "most-served"):
        plan = solve_plan([short, []], [5.0, 0.2], fleet.nodes, parked_node_w=8 * 71.8, overload_split=split)
        assert not plan.feasible and len(plan.slots) == fleet.nodes
        assert {p for p, _ in plan.slots} == {0, 1} and plan.capacity_rps[1] == 0.0
    assert solve_plan([[], []], [5.0, 0.2], fleet.nodes, parked_node_w=8 * 71.8).slots == ()


def test_the_planner_serves_a_shape_its_headroom_rules_out(fleet) -> None:  # type: ignore[no-untyped-def]
    sim = FleetSim(fleet)
    strict = make_policy("planner")
    assert isinstance(strict, FLEET_POLICIES["planner"])
    strict.headroom_frac = 0.8
    prompt, output = math.exp(9.2), math.exp(5.7)  # ~9,900 and ~300 tokens: on the cache's 10% grid
    assert not node_options(fleet.scenario, prompt, output, headroom_frac=0.8)
    options = strict.options(sim, prompt, output)
    reserve = node_options(fleet.scenario, prompt, output, headroom_frac=0.6)  # the largest on its ladder
    assert options and [o.knobs for o in options] == [o.knobs for o in reserve]
    assert [o.capacity_rps for o in options] == pytest.approx([o.capacity_rps for o in reserve])
    assert len(strict.options(sim, 600.0, 130.0)) == len(node_options(fleet.scenario, 600.0, 130.0, 0.8))


@pytest.mark.parametrize("headroom_frac", [1.0, 1.5, -0.1])
def test_a_headroom_that_leaves_no_slo_is_refused(fleet, headroom_frac: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="headroom_frac.*use a share in"):
        node_options(fleet.scenario, 600.0, 130.0, headroom_frac=headroom_frac)
    loose, tight = (node_options(fleet.scenario, 600.0, 130.0, headroom_frac=h) for h in (0.0, 0.9))
    assert max(o.capacity_rps for o in tight) < max(o.capacity_rps for o in loose)


def test_assign_keeps_nodes_in_their_pool_and_layout() -> None:
    k4, k8 = Knobs(4, 2, 256, 1980), Knobs(8, 1, 256, 1005)
    from greenrl.fleet.planner import FleetPlan

    plan = FleetPlan(((0, k4), (1, k8)), 0.0, True, (1.0, 1.0))
    on, pools, knobs = assign(plan, (1, 0, 0), (k8, k4, k4), (True, True, False))
    assert on == (True, True, False) and pools == (1, 0, 0) and knobs[:2] == (k8, k4)


@pytest.mark.parametrize("name", sorted(FLEET_POLICIES))
def test_every_baseline_plays_and_keeps_the_slo(fleet, trace, name: str) -> None:  # type: ignore[no-untyped-def]
    _, out = _play(fleet, trace, name)
    assert out["requests"] > 1000
    assert out["slo_attainment"] > 0.95
    assert out["energy_kwh"] > 0


def test_a_router_fed_node_matches_one_given_the_whole_trace(fleet, trace) -> None:  # type: ignore[no-untyped-def]
    from greenrl.sim import SimNode

    sim = FleetSim(fleet)
    config = sim.nodes[0].config
    whole = SimNode(config, trace)
    fed = SimNode(config, sim._empty)
    whole.reset(seed=0)
    fed.reset(seed=0)
    for step in range(10):
        rows = (trace.arrival_s >= 30.0 * step) & (trace.arrival_s < 30.0 * (step + 1))
        first = fed.add_requests(trace.arrival_s[rows], trace.input_tokens[rows], trace.output_tokens[rows])
        assert first == int(np.sum(trace.arrival_s < 30.0 * step))
        a, b = whole.advance(30.0), fed.advance(30.0)
        assert a.energy_j == b.energy_j and a.finished == b.finished and a.slo_met == b.slo_met
    n = int(np.sum(trace.arrival_s < 300.0))
    ra, rb = whole.requests(), fed.requests()
    assert len(rb["arrival_s"]) == n
    assert np.array_equal(ra["finished_at_s"][:n], rb["finished_at_s"]) and np.array_equal(
        ra["slo_met"][:n], rb["slo_met"]
    )
    assert fed.done(0).sum() == int((rb["state"] >= 3).sum())


# ---------------------------------------------------------------------------------------------------- env


def test_fleet_env_is_registered_and_passes_the_checkers() -> None:
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import greenrl  # noqa: F401 - registers greenrl/fleet-default-v1

    env = gym.make("greenrl/fleet-default-v1")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and not terminated
    assert reward == pytest.approx(sum(info["reward_terms"].values()))


def test_the_16_node_fleet_is_registered_and_its_node_counts_reach_every_node() -> None:
    import gymnasium as gym

    import greenrl  # noqa: F401 - registers greenrl/fleet-large-v1

    env = gym.make("greenrl/fleet-large-v1")
    env.reset(seed=0)
    codec = env.unwrapped.codec
    assert codec.nodes == 16 and codec.knob_values()[0] == list(range(1, 17))
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)


def test_fleet_env_action_parks_and_clocks_pools() -> None:
    from greenrl.fleet.env import FleetEnv

    env = FleetEnv("default")
    env.reset(seed=1)
    two = env.codec.layouts.index((4, 2))
    action = env.action_to_fleet(np.array([0, 3, two, two, 0, len(env.clocks) - 1]))  # 1 short, 4 long (3)
    assert sum(action.on) == 4 and sorted(action.pool_of_node[j] for j in range(4) if action.on[j]) == [0, 1, 1, 1]
    short = [action.knobs[j] for j in range(4) if action.pool_of_node[j] == 0 and action.on[j]]
    assert short[0].sm_clock_mhz == env.clocks[0] and short[0].prefill_sm_clock_mhz == env.prefill_top
    env.step(np.array([0, 0, two, two, 0, 0]))  # one node per pool: two drain and park
    assert sum(s == "parked" for s in env.sim.states) == 2


def test_a_node_parked_and_wanted_back_at_once_serves_on(fleet, trace) -> None:  # type: ignore[no-untyped-def]
    sim = FleetSim(fleet)
    sim.reset(trace, seed=0)
    k = sim.initial_knobs
    sim.apply(FleetAction((True, True, True, False), (0, 0, 1, 1), (k,) * 4))
    while sim.states[3] != "parked":
        sim.advance(30.0)
    sim.apply(FleetAction((True,) * 4, (0, 0, 1, 1), (k,) * 4))  # its replicas are still draining: they serve on
    assert not sim.advance(30.0).nodes[3].reconfiguring


def test_fleet_env_passes_sb3s_checker_and_repeats_for_a_seed() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check

    from greenrl.fleet.env import FleetEnv

    sb3_check(FleetEnv("default"), warn=True)
    a, b = FleetEnv("default"), FleetEnv("default")
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    assert np.array_equal(oa, ob)
    for action in ([1, 1, 1, 1, 0, 5], [0, 2, 0, 2, 3, 3], [0, 0, 1, 1, 0, 0]):
        ra, rb = a.step(np.array(action)), b.step(np.array(action))
        assert np.array_equal(ra[0], rb[0]) and ra[1] == rb[1]


def test_training_episodes_draw_every_training_category_and_one_category_draws_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from greenrl.fleet import env as fleet_env

    drawn: list[tuple[str, float, float]] = []
    real = fleet_env.servegen_trace

    def spy(category: str, start_s: float, duration_s: float, **kw):  # type: ignore[no-untyped-def]
        drawn.append((category, start_s, kw["scale"]))
        return real(category, start_s, duration_s, **kw)

    monkeypatch.setattr(fleet_env, "servegen_trace", spy)
    mixed = fleet_env.FleetEnv("mixed", window_s=600.0)
    assert mixed.config.workload.training_categories == ("language/m-large", "language/m-small")
    for seed in range(12):
        mixed.reset(seed=seed)
    assert {c for c, _, _ in drawn} == {"language/m-large", "language/m-small"}
    for category, _, scale in drawn:  # each category scaled on its own to the fleet's mean rate
        lo, hi = mixed.config.scenario.workload.rate_scale
        base = scale_for_rate_rps(category, mixed.config.workload.mean_rps)
        assert base * lo <= scale <= base * hi

    drawn.clear()
    single = fleet_env.FleetEnv("default", window_s=600.0)
    single.reset(seed=3)
    rng = np.random.default_rng(3)  # reset(seed=3)'s generator: the start is its first draw, no category draw
    t0, t1 = single.config.scenario.workload.train_range_s
    assert [(c, s) for c, s, _ in drawn] == [("language/m-large", rng.uniform(t0, t1 - 600.0))]


def test_an_output_spread_scales_outputs_and_rates_and_leaves_the_teachers_episodes_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from greenrl.fleet import env as fleet_env

    drawn: list[float] = []
    real = fleet_env.servegen_trace

    def spy(category: str, start_s: float, duration_s: float, **kw):  # type: ignore[no-untyped-def]
        drawn.append(kw["scale"])
        return real(category, start_s, duration_s, **kw)

    monkeypatch.setattr(fleet_env, "servegen_trace", spy)
    spread = fleet_env.FleetEnv("spread", window_s=1800.0)
    workload = spread.config.workload
    assert workload.train_output_scale == (1.0, 9.0) and workload.train_output_rate_exponent == 0.5
    base = scale_for_rate_rps(workload.category, workload.mean_rps)
    lo, hi = spread.config.scenario.workload.rate_scale
    factors = []
    for seed in range(6):
        trace = spread._trace(np.random.default_rng(seed))
        k = float(trace.name.rsplit("[out x", 1)[1].rstrip("]"))
        factors.append(k)
        assert 1.0 <= k <= 9.0
        # The rate divided by sqrt(k): below the rate-scale range's bottom whenever k > (hi / lo) ** 2.
        assert base * lo / k**0.5 <= drawn[-1] <= base * hi / k**0.5
        assert (trace.input_tokens + trace.output_tokens <= spread.config.scenario.node.max_model_len_tokens).all()
    assert max(factors) / min(factors) > 2  # the draw spreads

    # Without the spread (the teacher's demonstrations) the episode is the default fleet's, draw for draw.
    teacher = fleet_env.FleetEnv("spread", window_s=1800.0, output_spread=False)
    default = fleet_env.FleetEnv("default", window_s=1800.0)
    a, b = teacher._trace(np.random.default_rng(4)), default._trace(np.random.default_rng(4))
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.output_tokens, b.output_tokens)


@pytest.mark.parametrize("text", ["", "[1, 2]", "nodes: [unclosed"])
def test_a_fleet_file_that_is_not_a_mapping_names_the_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_fleet(str(path))
    assert err.value.where == str(path) and err.value.field == "file"


def test_a_timeline_plot_of_each_policy(fleet, trace, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.evaluate import plot_timelines

    sim = FleetSim(fleet)
    timelines: dict[str, dict[str, list[object]]] = {}
    for name in ("static-max", "planner"):
        run_policy(sim, make_policy(name), trace, timeline=timelines.setdefault(name, {}))
    assert len(timelines["planner"]["t_end_s"]) == 20
    plot_timelines(timelines, [p.name for p in fleet.pools], tmp_path / "t.png")  # type: ignore[arg-type]
    assert (tmp_path / "t.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------ HiGHS's stray output
_HIGHS_PROGRAM = Path(__file__).parent / "data" / "highs_debug_print.json"
_SOLVE = """
import json, sys
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from greenrl.fleet import planner
d = json.load(open(sys.argv[1]))
solve = planner._milp if sys.argv[2] == "planner" else milp
res = solve(np.array(d["c"]), constraints=LinearConstraint(np.array(d["A"]), d["lb"], d["ub"]),
            integrality=np.array(d["integrality"]), bounds=Bounds(d["bounds_lb"], d["bounds_ub"]))
print("ok", res.success)
"""


def _solve_in_subprocess(solver: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SOLVE, str(_HIGHS_PROGRAM), solver], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_planner_solves_keep_highs_debug_output_off_stdout() -> None:
    """A program on which HiGHS prints a debug line to the C stdout: the planner's solve prints only Python's."""
    plain = _solve_in_subprocess("milp")
    if "HighsMipSolverData" not in plain:
        pytest.skip("this scipy's HiGHS prints nothing on the program: nothing to silence")
    assert _solve_in_subprocess("planner") == "ok True\n"


def test_evaluate_writes_rows_and_a_pareto_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from greenrl.fleet.evaluate import main

    argv = ["--windows", "1", "--duration-s", "900", "--policies", "static-max", "planner"]
    assert main([*argv, "--pareto", str(tmp_path / "p.png"), "--save", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["policy"] for r in rows] == ["static-max", "planner"] and {r["day"] for r in rows} == {13}
    assert all(r["energy_kwh"] > 0 and 0 <= r["slo_attainment"] <= 1 for r in rows)
    assert (tmp_path / "p.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "| 13 | static-max |" in table and "| 0.0% |" in table  # static-max is its own reference
    from greenrl.fleet.evaluate import plot_pareto

    learned = [dict(rows[1], policy=f"learned-{i}", energy_kwh=rows[1]["energy_kwh"] * (1 + i / 10)) for i in range(3)]
    fig = plot_pareto(rows + learned, tmp_path / "q.png")  # the seeds' points share one marker
    assert (tmp_path / "q.png").stat().st_size > 10_000
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("planner frontier")]
    grid = [dict(rows[1], slo_attainment=a, energy_kwh=rows[1]["energy_kwh"] * f) for a, f in ((0.99, 1), (0.999, 2))]
    fig = plot_pareto(rows + learned, tmp_path / "q.png", {13: grid[::-1]})
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("planner frontier")]
    assert list(line.get_xdata()) == pytest.approx([99.0, 99.9])  # sorted by attainment, in percent
    assert line.get_ydata()[1] < line.get_ydata()[0]


def test_the_seed_summary_is_a_t_interval_over_learned_controllers() -> None:
    from greenrl.fleet.evaluate import seed_summary

    rows = [{"day": 12, "policy": "static-max", "energy_kwh": 200.0, "slo_attainment": 0.999}]
    rows += [
        {"day": 12, "policy": f"learned-{i}", "energy_kwh": e, "slo_attainment": a}
        for i, (e, a) in enumerate([(100.0, 0.998), (110.0, 0.999), (90.0, 0.997)])
    ]
    lines = seed_summary(rows)
    # savings 50, 45, 55: mean 50, sd 5, t(0.975, 2) = 4.303 -> half-width 12.4
    assert lines[-1] == "| 12 | 3 (mean +- 95% CI, Student t) | 50.0 +- 12.4% | 99.80 +- 0.25% | 1 of 3 |"
    assert seed_summary(rows[:2]) == []  # one controller: no interval


def test_the_frontier_keeps_undominated_points_and_reads_energy_at_an_attainment() -> None:
    from greenrl.fleet.frontier import energy_at, frontier, versus_planner

    def pt(e: float, a: float) -> dict[str, float]:
        return {"energy_kwh": e, "slo_attainment": a}

    grid = [pt(100, 0.98), pt(120, 0.99), pt(130, 0.985), pt(200, 0.999), pt(200, 0.999), pt(110, 0.98)]
    front = frontier(grid)
    assert front == [pt(100, 0.98), pt(120, 0.99), pt(200, 0.999)]  # dominated and repeated points dropped
    assert energy_at(front, 0.97) == 100.0  # the cheapest point already does better
    assert energy_at(front, 0.995) == pytest.approx(120 + (0.005 / 0.009) * 80)
    assert energy_at(front, 0.9995) is None  # beyond every grid point
    beyond = versus_planner(pt(150, 0.9995), front)
    assert beyond["energy_vs_planner_at_this_attainment"] is None
    assert beyond["planner_closest_below"] == pt(200, 0.999) and beyond["energy_vs_closest_below"] == -0.25


def test_tuning_to_an_attainment_bisects_to_a_real_point_that_reaches_it() -> None:
    from greenrl.fleet.frontier import tune_to_attainment

    calls: list[tuple[float, float]] = []

    def planner(h: float, m: float) -> dict[str, float]:  # more headroom and margin: more energy, more attainment
        calls.append((h, m))
        step = h >= 0.7  # a jump, as a node more makes: no planner point lies on the chord across it
        return {
            "energy_kwh": 100 + 50 * h + 20 * m + 40 * step,
            "slo_attainment": 0.99 + 0.005 * h + 0.004 * m + 0.004 * step,
        }

    grid = [{"headroom_frac": h, "margin_frac": m} | planner(h, m) for h in (0.2, 0.5, 0.8) for m in (0.2, 1.0)]
    points = list(grid)
    calls.clear()
    # cheapest at 0.9968 or above: margin 1.0, headroom 0.56 (148 kWh), below the jump; the grid's best is
    # above it (0.8, 0.2: 184 kWh), and headroom alone from there finds nothing under 179 kWh
    best = tune_to_attainment(planner, points, 0.9968, max_evals=12)
    asked = list(calls)
    assert best is not None and best["slo_attainment"] >= 0.9968
    assert best["margin_frac"] == 1.0 and 0.56 <= best["headroom_frac"] <= 0.56 + 0.0025
    assert 0 < len(asked) <= 12 and [(p["headroom_frac"], p["margin_frac"]) for p in points[len(grid) :]] == asked
    n = len(points)
    assert tune_to_attainment(planner, points, 0.9968, max_evals=0) == best and len(points) == n  # shared points
    assert tune_to_attainment(planner, points, 1.01) is None  # nothing reaches it
    first = tune_to_attainment(planner, list(grid), 0.9968, max_evals=0)
    assert first is not None and (first["headroom_frac"], first["margin_frac"]) == (0.8, 0.2)  # no budget: the grid's


def test_tuning_plays_a_line_on_at_the_next_value_played_elsewhere() -> None:
    from greenrl.fleet.frontier import tune_to_attainment

    def planner(h: float, m: float) -> dict[str, float]:
        return {"energy_kwh": 100 + 50 * h + 20 * m, "slo_attainment": 0.99 + 0.005 * h + 0.004 * m}

    # a headroom seen only at margin 0.2 (as bisection leaves them): its line is played at the next margin seen
    points = [{"headroom_frac": h, "margin_frac": m} | planner(h, m) for h, m in ((0.6, 0.2), (0.9, 1.0))]
    best = tune_to_attainment(planner, points, 0.9965)
    # up its margin: 0.6 / 0.875 reaches 0.9965 at 147.5 kWh, against the grid's 165 (0.9 / 1.0)
    assert best is not None and best["headroom_frac"] == 0.6 and 147.5 <= best["energy_kwh"] <= 147.5 + 20 * 0.1
