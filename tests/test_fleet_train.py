"""The learned fleet controller: the planner's tie-break, a tiny training run, its export and its evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.fleet import FleetSim, load_fleet
from greenrl.fleet.capacity import NodeOption, node_options
from greenrl.fleet.planner import solve_plan


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return load_fleet("default")


def test_the_planner_breaks_ties_towards_headroom_and_repeats(fleet) -> None:  # type: ignore[no-untyped-def]
    slow, fast = Knobs(4, 2, 256, 1005), Knobs(4, 2, 256, 1200)
    # equal power at 5 requests/s (1,010 W), neither dominates: the tie-break takes the larger capacity
    a = NodeOption(slow, capacity_rps=10.0, idle_w=1000.0, slope_j=2.0)
    b = NodeOption(fast, capacity_rps=12.0, idle_w=1010.0, slope_j=0.0)
    for options in ([a, b], [b, a]):
        plan = solve_plan([options], [5.0], nodes=4, parked_node_w=500.0, tie_tolerance_frac=0.0)
        assert [k for _, k in plan.slots] == [fast] and plan.capacity_rps == (12.0,)
    real = [node_options(fleet.scenario, 600.0, 130.0), node_options(fleet.scenario, 5000.0, 250.0)]
    forecast = [9.0, 0.6]
    plans = [solve_plan(real, forecast, fleet.nodes, parked_node_w=8 * 71.8) for _ in range(2)]
    assert plans[0] == plans[1]
    first = solve_plan(real, forecast, fleet.nodes, parked_node_w=8 * 71.8, tie_tolerance_frac=None)
    assert plans[0].power_w <= first.power_w * 1.01 + 1e-6  # within the tolerance of the least power
    for p, rate in enumerate(forecast):
        assert plans[0].capacity_rps[p] >= rate
    assert (
        min(c / f for c, f in zip(plans[0].capacity_rps, forecast, strict=True))
        >= min(c / f for c, f in zip(first.capacity_rps, forecast, strict=True)) - 1e-9
    )


def test_the_codec_maps_a_plan_to_the_env_action_and_back(fleet) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.env import FleetCodec

    sim = FleetSim(fleet)
    codec = FleetCodec(fleet, sim)
    k = Knobs(4, 1, 256, 1200, sim.initial_knobs.max_num_batched_tokens, 1980)
    action = codec.from_slots(((0, k), (0, k), (1, Knobs(8, 1, 256, 1980))))
    assert action.tolist() == [1, 0, codec.layouts.index((4, 1)), codec.layouts.index((8, 1)), 1, 5]
    assert codec.knobs_for(action[2], action[4]) == k


@pytest.fixture(scope="module")
def controller(tmp_path_factory, train_tiny_fleet) -> Path:  # type: ignore[no-untyped-def]
    """A few hundred steps of the fleet recipe (warm start by the planner, DAgger, PPO), exported."""
    run = train_tiny_fleet("default", tmp_path_factory.mktemp("runs"))
    assert (run / "warm_start.json").is_file() and (run / "summary.json").is_file()
    return run / "controller"


def test_a_tiny_fleet_training_exports_a_controller_that_acts_on_fleet_env(controller: Path) -> None:
    from greenrl.fleet.env import FleetEnv
    from greenrl.fleet.learn import load_learned
    from greenrl.policy import load_controller

    policy = load_controller(controller)
    assert policy.manifest["kind"] == "fleet" and policy.manifest["env_id"] == "greenrl/fleet-default-v1"
    env = FleetEnv("default")
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        action, _ = policy.predict(obs)
        assert env.action_space.contains(action)
        obs, *_ = env.step(action)
    batch, _ = policy.predict(np.stack([obs, obs]))
    assert batch.shape == (2, len(env.action_space.nvec))
    assert load_learned(controller).name == "learned"
    assert load_learned(controller.parent / "checkpoint" / "model.zip").predictor.predict(obs)[0].shape == (6,)


def test_the_evaluator_ranks_a_checkpoint_on_an_unseen_category(controller: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.evaluate import main

    code = main(
        ["--windows", "0", "--duration-s", "1800", "--policies", "static-max", "--checkpoint", str(controller)]
        + ["--category", "language/m-small"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "language/m-small" in out
    assert "| learned |" in out and "| static-max |" in out


def test_the_evaluator_refuses_an_unknown_category(capsys) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.evaluate import main

    with pytest.raises(SystemExit):
        main(["--windows", "0", "--duration-s", "60", "--policies", "static-max", "--category", "nope"])
    assert "nope" in capsys.readouterr().err


def test_a_baseline_with_the_fast_guard_plays_and_the_guard_boosts_a_slow_node(fleet) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from greenrl.fleet.env import FleetCodec
    from greenrl.fleet.learn import GuardedFleet
    from greenrl.fleet.policies import make_policy
    from greenrl.fleet.rollout import run_policy
    from greenrl.workload import scale_for_rate_rps, servegen_trace

    scale = scale_for_rate_rps(fleet.workload.category, fleet.workload.mean_rps)
    trace = servegen_trace(fleet.workload.category, 13 * 86400 + 18 * 3600, 600.0, scale=scale, seed=0)
    sim = FleetSim(fleet)
    out = run_policy(sim, GuardedFleet(make_policy("planner")), trace)
    assert out["policy"] == "planner+guard" and out["slo_attainment"] > 0.95
    sim.reset(trace, seed=0)
    snap = sim.advance(30.0)
    codec = FleetCodec(fleet, sim)
    slow = replace(snap.nodes[0], tbt_mean_s=1.0)  # far above 0.8 x the TBT SLO
    low = sim.action
    sim.apply(type(low)(low.on, low.pool_of_node, tuple(replace(k, sm_clock_mhz=1005) for k in low.knobs)))
    action = codec.guard(sim, replace(snap, nodes=(slow, *snap.nodes[1:])))
    assert action is not None and action.knobs[0].sm_clock_mhz == codec.clocks[-1]
    assert all(k.sm_clock_mhz == 1005 for k in action.knobs[1:])


def test_the_guard_rebalances_an_outgrown_pool_split_only_when_asked(fleet) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from greenrl.fleet.cluster import FleetAction
    from greenrl.fleet.env import FleetCodec
    from greenrl.workload import scale_for_rate_rps, servegen_trace

    scale = scale_for_rate_rps(fleet.workload.category, fleet.workload.mean_rps)
    trace = servegen_trace(fleet.workload.category, 13 * 86400, 600.0, scale=scale, seed=0)
    guarded = fleet.with_guard_rebalance(32)
    sim = FleetSim(guarded)
    sim.reset(trace, seed=0)
    snap = sim.advance(30.0)
    assert sim.action.pool_of_node == (0, 0, 1, 1) and all(s == "on" for s in sim.states)

    def queues(waiting: list[int], running: list[int]):  # type: ignore[no-untyped-def]
        nodes = tuple(
            replace(n, waiting=w, running=r, tbt_mean_s=0.0)
            for n, w, r in zip(snap.nodes, waiting, running, strict=True)
        )
        return replace(snap, nodes=nodes)

    codec = FleetCodec(guarded, sim)
    top = codec.clocks[-1]
    # The short pool queues 40 on each node, the long pool none: its less busy node (3) moves, layout kept.
    action = codec.guard(sim, queues([40, 40, 0, 0], [64, 64, 5, 2]))
    assert action is not None and action.pool_of_node == (0, 0, 1, 0) and all(action.on)
    assert action.knobs[3] == replace(sim.action.knobs[3], sm_clock_mhz=top, prefill_sm_clock_mhz=0)
    # Off (the fleet files' default), under the threshold, or a donor pool that queues: no move.
    assert FleetCodec(fleet, sim).guard(sim, queues([40, 40, 0, 0], [64, 64, 5, 2])) is None
    assert codec.guard(sim, queues([40, 31, 0, 0], [64, 64, 5, 2])) is None
    assert codec.guard(sim, queues([40, 40, 1, 0], [64, 64, 5, 2])) is None

    # A pool of one node is never a donor; a queueing node with parked GPUs serves on all of them instead.
    half = Knobs(4, 1, sim.action.knobs[0].max_num_seqs, 1005)
    sim.apply(FleetAction((True,) * 4, (0, 0, 0, 1), (half, *sim.action.knobs[1:])))
    action = codec.guard(sim, queues([40, 40, 40, 0], [64, 64, 64, 1]))
    assert action is not None and action.pool_of_node == (0, 0, 0, 1)
    assert (action.knobs[0].tp, action.knobs[0].replicas, action.knobs[0].sm_clock_mhz) == (4, 2, top)
    assert action.knobs[1:] == sim.action.knobs[1:]
    assert FleetCodec(fleet, sim).guard(sim, queues([40, 40, 40, 0], [64, 64, 64, 1])) is None


@pytest.mark.parametrize(
    ("energy_kwh", "attainment", "ships", "why"),
    [
        (250.0, 0.9919, True, "not dominated"),  # more energy, but more attainment than the planner
        (200.0, 0.9950, True, "not dominated"),  # better on both
        (200.0, 0.9890, False, "below 99%"),  # cheap, but under the floor
        (230.0, 0.9700, False, "below 99%"),
    ],
)
def test_the_ship_verdict_needs_the_floor_and_no_domination(
    energy_kwh: float, attainment: float, ships: bool, why: str
) -> None:
    from greenrl.fleet.selection import ship_verdict

    planner = {"energy_kwh": 215.0, "slo_attainment": 0.9706}
    ok, reason = ship_verdict({"energy_kwh": energy_kwh, "slo_attainment": attainment}, planner)
    assert ok is ships and why in reason and "planner 215.0 kWh" in reason


def test_a_controller_the_planner_dominates_does_not_ship() -> None:
    from greenrl.fleet.selection import ship_verdict

    ok, reason = ship_verdict(
        {"energy_kwh": 220.0, "slo_attainment": 0.992}, {"energy_kwh": 210.0, "slo_attainment": 0.995}
    )
    assert not ok and "dominated by the planner" in reason


def test_a_run_keeps_the_model_it_selected_and_reports_the_held_out_days(controller: Path) -> None:
    from sb3_contrib import MaskablePPO

    from greenrl.fleet.learn import LearnedFleet
    from greenrl.fleet.selection import day_score, evaluate_days, ship_verdict

    run = controller.parent
    summary = json.loads((run / "summary.json").read_text())
    assert [e["timesteps"] for e in summary["validation"]] == [0, 128]
    assert summary["selected"] == max(summary["validation"], key=lambda e: e["score"])
    assert (summary["shippable"], summary["ship_verdict"]) == ship_verdict(
        summary["selected"], summary["validation_planner"]
    )
    held_out, static_max = summary["held_out"], summary["eval_static_max"]
    assert len(held_out["days"]) == 2 and all(d["requests"] > 0 for d in held_out["days"])
    saving = 1 - held_out["energy_kwh"] / static_max["energy_kwh"]
    assert summary["energy_saving_vs_static_max"] == pytest.approx(saving)
    # best/model.zip is the selected model: replayed on the same validation days, it scores what was recorded
    config = load_fleet("default")
    best = LearnedFleet(MaskablePPO.load(run / "best" / "model.zip", device="cpu"))
    row = evaluate_days(config, best, "val", duration_s=900.0)
    assert day_score(row, config, 30.0) == pytest.approx(summary["selected"]["score"])
    assert row["missed"] == summary["selected"]["missed"]


def test_a_fleet_run_resumes_from_its_checkpoint(controller: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    from greenrl.train import train

    run = tmp_path / controller.parent.name
    shutil.copytree(controller.parent, run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["timesteps"] == 128
    warm = (run / "warm_start.json").read_bytes()
    with pytest.raises(InputError, match="the run used 0"):
        train(resume=run, seed=1)
    assert train(resume=run, total_timesteps=256, progress_bar=False) == run
    assert json.loads((run / "checkpoint" / "state.json").read_text())["timesteps"] == 256
    assert json.loads((run / "summary.json").read_text())["timesteps"] == 256
    assert (run / "warm_start.json").read_bytes() == warm  # the warm start is not repeated
    assert yaml.safe_load((run / "config.yaml").read_text())["hyperparameters"]["total_timesteps"] == 128

    data = bytearray((run / "checkpoint" / "model.zip").read_bytes())
    data[-1] ^= 0xFF
    (run / "checkpoint" / "model.zip").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        train(resume=run, total_timesteps=384, progress_bar=False)
