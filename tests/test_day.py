"""Day-scale serving: GPU power states, reload costs, --max-model-len, the day scenario, autoscaler, day oracle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from greenrl.baselines import AutoscalerBaseline, DayOracleBaseline, PlannerBaseline, make_baseline
from greenrl.catalog import load_gpu
from greenrl.core import Knobs, queue_guard_layout, reload_time_s
from greenrl.env import ServingEnv
from greenrl.env.observation import OBS_FIELDS
from greenrl.env.scenario import load_scenario, scenarios_dir
from greenrl.errors import InputError
from greenrl.rollout import rollout
from greenrl.sim import SimConfig, SimNode
from greenrl.sim import kernel as K
from greenrl.surrogate import Surrogate
from greenrl.workload import Trace

H100 = load_gpu("h100-sxm-80gb")
DAY_NODE = {
    "model": "llama-3.1-70b",
    "idle_power_w": 121.7,
    "parked_power_w": 71.8,
    "host_load_bandwidth_per_gpu_bps": 20e9,
    "engine_start_s": 30.0,
}
EMPTY = Trace("empty", [], [], [], duration_s=600.0)


def _node(trace: Trace = EMPTY, **kw: object) -> SimNode:
    node = SimNode(SimConfig(**(DAY_NODE | kw)), trace)  # type: ignore[arg-type]
    node.reset(seed=0)
    return node


def _weights_bytes(model: str = "llama-3.1-70b", tp: int = 4) -> float:
    return float(Surrogate().replica(model, H100, tp, None).card.weight_bytes)


# ------------------------------------------------------------------------------------ simulator


def test_an_idle_node_draws_loaded_idle_on_serving_gpus_and_parked_on_the_rest() -> None:
    node = _node(initial=Knobs(tp=4, replicas=1, max_num_seqs=256, sm_clock_mhz=1980))
    snap = node.advance(100.0)
    assert snap.energy_j == pytest.approx(100.0 * (4 * 121.7 + 4 * 71.8))
    per_gpu = np.array(snap.energy_per_gpu_j)
    assert per_gpu[:4] == pytest.approx(100.0 * 121.7) and per_gpu[4:] == pytest.approx(100.0 * 71.8)


def test_without_power_states_every_gpu_draws_the_catalog_idle_power() -> None:
    node = SimNode(SimConfig(initial=Knobs(tp=4, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)), EMPTY)
    node.reset(seed=0)
    assert node.advance(100.0).energy_j == pytest.approx(100.0 * 8 * H100.idle_power_w)


def test_a_replica_added_loads_from_host_memory_while_the_other_serves() -> None:
    arrivals = np.arange(0.0, 120.0, 0.5)
    trace = Trace("steady", arrivals, np.full(len(arrivals), 200), np.full(len(arrivals), 20), duration_s=120.0)
    node = _node(trace, initial=Knobs(tp=4, replicas=1, max_num_seqs=256, sm_clock_mhz=1980))
    node.advance(10.0)
    node.apply(replace(node.knobs, replicas=2))
    loading = np.flatnonzero(node.slot_i[:, K.SI_STATUS] == K.LOADING)
    assert len(loading) == 1
    expected_s = reload_time_s(_weights_bytes(), 4, shared_bandwidth_bps=2.5e9, per_gpu_bandwidth_bps=20e9)
    assert node.slot_f[loading[0], K.SF_READY_AT] - 10.0 == pytest.approx(expected_s + 30.0)
    finished_before = node.state_counts()["finished"]
    snap = node.advance(20.0)  # within the load: the first replica keeps serving (make-before-break)
    assert snap.reconfiguring and node.state_counts()["finished"] > finished_before
    node.advance(30.0)
    assert np.count_nonzero(node.slot_i[:, K.SI_STATUS] == K.SERVING) == 2


def test_removing_a_replica_parks_its_gpus_once_drained() -> None:
    node = _node(initial=Knobs(tp=4, replicas=2, max_num_seqs=256, sm_clock_mhz=1980))
    node.advance(10.0)
    node.apply(replace(node.knobs, replicas=1))
    snap = node.advance(100.0)  # nothing runs: the removed replica drains at once
    assert snap.energy_j == pytest.approx(100.0 * (4 * 121.7 + 4 * 71.8))


def test_requests_longer_than_max_model_len_are_rejected_not_served() -> None:
    trace = Trace("mixed", [1.0, 2.0, 3.0], [1000, 30000, 500], [100, 5000, 50], duration_s=60.0)
    node = _node(trace, max_model_len_tokens=32768)
    snap = node.advance(60.0)
    assert snap.rejected == 1 and snap.finished == 2
    rec = node.requests()
    assert rec["state"].tolist() == [K.FINISHED, K.REJECTED, K.FINISHED]
    assert not rec["slo_met"][1]


def test_a_tp_whose_kv_cache_cannot_hold_max_model_len_is_infeasible() -> None:
    # TP 4 holds ~429k tokens of Llama-3.1-70B, TP 8 ~1.3M
    node = _node(max_model_len_tokens=500_000, initial=Knobs(tp=8, replicas=1, max_num_seqs=256, sm_clock_mhz=1980))
    assert node.feasible_tp == [8]
    with pytest.raises(InputError, match="tp"):
        node.check(Knobs(tp=4, replicas=2, max_num_seqs=256, sm_clock_mhz=1980))


# ----------------------------------------------------------------------------------- scenario


def _short_day(tmp_path: Path, **edits: object) -> Path:
    """envs/day.yaml with 1-hour training windows and a 1-hour evaluation window (fast tests)."""
    raw = yaml.safe_load((scenarios_dir() / "day.yaml").read_text())
    raw["workload"]["window_s"] = 3600.0
    raw["workload"]["eval_windows_s"] = [[1036800.0 + 20 * 3600.0, 3600.0]]
    raw["episode"] = {"eval_steps": 120}
    for dotted, value in edits.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path = tmp_path / "short_day.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_day_scenario_trains_on_hours_and_evaluates_whole_days() -> None:
    s = load_scenario("day")
    assert s.steps == 720 and s.eval_steps == 2880
    env = ServingEnv(s, "eval")
    env.reset(seed=0)
    assert env.node.trace is not None and env.node.trace.duration_s == 86400.0
    assert "replicas" in env.knob_names and env.feasible_tp == [4, 8]


def test_servegen_episodes_are_seeded_and_know_their_hour(tmp_path: Path) -> None:
    path = _short_day(tmp_path)
    a, b = ServingEnv(load_scenario(str(path)), "train"), ServingEnv(load_scenario(str(path)), "train")
    obs_a, _ = a.reset(seed=3)
    obs_b, _ = b.reset(seed=3)
    assert np.array_equal(obs_a, obs_b)
    ta, tb = a.node.trace, b.node.trace
    assert ta is not None and tb is not None and np.array_equal(ta.arrival_s, tb.arrival_s)
    assert ta.start_hour is not None
    hour = ta.start_hour + 30.0 / 3600.0
    obs, *_ = a.step(a.action_for(a.initial))
    assert obs[-2] == pytest.approx(np.sin(2 * np.pi * hour / 24.0), abs=1e-5)
    assert obs[-1] == pytest.approx(np.cos(2 * np.pi * hour / 24.0), abs=1e-5)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"workload__servegen": {"category": "language/nope", "mean_rps": 2.0}}, "workload.servegen.category"),
        ({"workload__servegen": {"category": "language/m-large", "mean_rps": 0}}, "workload.servegen.mean_rps"),
        ({"workload__servegen": {"category": "language/m-large"}}, "workload.servegen"),
        ({"workload__eval_windows_s": [[1209000.0, 86400.0]]}, "workload.eval_windows_s[0]"),
        ({"node__parked_power_w": -1.0}, "node.parked_power_w"),
        ({"node__engine_start_s": -5.0}, "node.engine_start_s"),
        ({"node__max_model_len_tokens": 0}, "node.max_model_len_tokens"),
        (
            {"node__initial": {"tp": 4, "replicas": 3, "max_num_seqs": 256, "sm_clock_mhz": 1980}},
            "node.initial.replicas",
        ),
        ({"control__guard_grow_queue": -1}, "control.guard_grow_queue"),
        ({"control__guard_grow_queue": 2.5}, "control.guard_grow_queue"),
    ],
)
def test_bad_day_scenarios_name_the_field(tmp_path: Path, edit: dict[str, object], field: str) -> None:
    path = _short_day(tmp_path, **edit)
    with pytest.raises(InputError) as err:
        load_scenario(str(path))
    assert err.value.field == field and str(path) in str(err.value)


# ---------------------------------------------------------------------------------- baselines


def _signals(env: ServingEnv, running: float, waiting: float = 0.0) -> dict[str, float]:
    from greenrl.baselines import decode_obs

    sig = decode_obs(np.zeros(env.observation_space.shape, dtype=np.float32))
    return sig | {"running": running, "waiting": waiting, "mean_prompt_tokens": 600.0}


def test_autoscaler_scales_up_at_once_and_down_only_after_its_window() -> None:
    env = ServingEnv("day", "eval")
    env.reset(seed=0)
    scaler = AutoscalerBaseline(env, target_requests=8.0, scale_down_window_s=300.0, cooldown_s=0.0)
    scaler.current = replace(env.initial, replicas=1)
    scaler.step_index = 1
    assert scaler.decide(_signals(env, running=30.0)).replicas == 2  # 30 > 8 x 1.1: up now
    scaler.current = replace(env.initial, replicas=2)
    quiet = [scaler.decide(_signals(env, running=1.0)).replicas for _ in range(12)]
    assert quiet[:9] == [2] * 9 and quiet[-1] == 1  # the 300-s window holds the 2 for 10 intervals


def test_planner_charges_parked_power_for_gpus_outside_replicas() -> None:
    env = ServingEnv("day", "eval")
    env.reset(seed=0)
    planner = PlannerBaseline(env)
    options = {(o.knobs.tp, o.knobs.replicas, o.knobs.sm_clock_mhz): o for o in planner.plan(0.5, 600.0, 150.0)}
    one, two = options[(4, 1, 1005)], options[(4, 2, 1005)]
    # one replica at twice the per-replica load vs two: the difference includes 4 parked GPUs, not idle ones
    assert one.power_w < two.power_w
    assert two.power_w - one.power_w > 4 * (121.7 - 71.8)


def test_day_oracle_tries_every_layout_and_is_refused_a_live_node(tmp_path: Path) -> None:
    s = load_scenario(str(_short_day(tmp_path)))
    env = ServingEnv(s, "eval")
    oracle = DayOracleBaseline(env, lookahead_steps=4, decision_steps=20)
    result = rollout(oracle, env, seed=0)
    assert len(result.steps) == 120
    assert [step for step, _ in oracle.log] == [20, 40, 60, 80, 100]
    for _, trials in oracle.log:
        assert {t.layout for t in trials} == {(4, 1), (4, 2), (8, 1)}
        assert all(t.cost_j >= t.energy_j > 0 for t in trials)
    assert make_baseline("day-oracle", env).needs_simulator


def test_day_oracle_miss_cost_is_the_rewards_exchange_rate(tmp_path: Path) -> None:
    s = load_scenario(str(_short_day(tmp_path)))
    env = ServingEnv(s, "eval")
    env.reset(seed=0)
    oracle = DayOracleBaseline(env)
    peak_j = 8 * H100.tdp_w * 30.0
    assert oracle._miss_cost_j() == pytest.approx(s.reward.slo_weight * peak_j / env.expected_requests_per_step)


def test_a_held_replica_count_never_meets_a_tp_it_does_not_fit(tmp_path: Path) -> None:
    env = ServingEnv(load_scenario(str(_short_day(tmp_path))), "eval")
    env.reset(seed=0)
    layouts = [(4, 1)] + [(4, 1)] * 10 + [(4, 2), (4, 2), (8, 1), (8, 1)]  # replicas changed at 0 and 11
    seen = []
    for tp, replicas in layouts:  # the step at 13 asks TP 8 while replicas (changed at 11) is held
        _, _, _, _, info = env.step(env.action_for(replace(env.initial, tp=tp, replicas=replicas)))
        seen.append((info["knobs"].tp, info["knobs"].replicas))
    assert seen[11:] == [(4, 2), (4, 2), (4, 2), (4, 2)]  # the layout moves as one: held whole until t = 21


# -------------------------------------------------------------------------------- queue guard


def test_queue_guard_serves_on_every_gpu_only_with_gpus_parked_and_a_queue() -> None:
    parked = Knobs(tp=4, replicas=1, max_num_seqs=128, sm_clock_mhz=1005, prefill_sm_clock_mhz=1980)
    grown = queue_guard_layout(parked, 32, gpus=8, queue_requests=32)
    assert grown == replace(parked, replicas=2)  # clocks and max_num_seqs as chosen
    assert queue_guard_layout(parked, 31, gpus=8, queue_requests=32) is None
    assert queue_guard_layout(parked, 500, gpus=8, queue_requests=0) is None  # off
    assert queue_guard_layout(replace(parked, replicas=2), 500, gpus=8, queue_requests=32) is None  # none parked
    assert queue_guard_layout(replace(parked, tp=8), 500, gpus=8, queue_requests=32) is None
    two = Knobs(tp=2, replicas=1, max_num_seqs=128, sm_clock_mhz=1005)
    assert queue_guard_layout(two, 40, gpus=8, queue_requests=32, replica_values=[1, 2, 3]).replicas == 3
    assert queue_guard_layout(two, 40, gpus=8, queue_requests=32, replica_values=[1]) is None


def _parked_run(tmp_path: Path, guard: int) -> list[tuple[int, float, bool]]:
    """TP 4 x 1 asked for every interval; (replicas, requests waiting after it, guard fired) per interval."""
    path = _short_day(tmp_path, control__guard_grow_queue=guard, workload__eval_rate_scale=8.0)
    env = ServingEnv(load_scenario(str(path)), "eval")
    env.reset(seed=0)
    parked = env.action_for(replace(env.initial, tp=4, replicas=1, max_num_seqs=64))
    waiting = [f.name for f in OBS_FIELDS].index("waiting")
    out = []
    for _ in range(40):
        obs, _, _, _, info = env.step(parked)
        out.append((info["knobs"].replicas, float(obs[waiting]) * OBS_FIELDS[waiting].scale, info["guard"]))
    return out


def test_the_queue_guard_overrides_the_policy_and_the_dwell_then_starts_a_new_dwell(tmp_path: Path) -> None:
    off = _parked_run(tmp_path, guard=0)
    assert not any(fired for *_, fired in off) and all(r == 1 for r, _, _ in off)
    assert max(w for _, w, _ in off) >= 2  # a queue the guard below acts on
    on = _parked_run(tmp_path, guard=2)
    fired = [t for t, (*_, f) in enumerate(on) if f]
    assert fired and fired[0] < 10  # within the dwell of the change to one replica at t = 0
    for t in range(1, len(on)):  # it fires exactly after an interval that ends with 2+ waiting on one replica
        assert on[t][2] == (on[t - 1][0] == 1 and on[t - 1][1] >= 2)
    first = fired[0]
    # the policy keeps asking for one replica: held for the dwell (10 intervals) the guard's change began
    assert [r for r, _, _ in on[first : first + 10]] == [2] * 10
