"""ServingEnv: API conformance, determinism, reward terms, masks, scenario validation."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import greenrl
from greenrl.core import Knobs
from greenrl.env import ServingEnv, load_scenario, scenario_names
from greenrl.env.serving_env import OBS_FIELDS
from greenrl.errors import InputError

SCENARIOS = scenario_names()


def test_shipped_scenarios_register() -> None:
    assert {"default", "code", "diurnal", "tiny"} <= set(SCENARIOS)
    ids = greenrl.register_scenarios()
    assert "greenrl/default-v0" in ids and "greenrl/default-v0" in gym.registry


@pytest.mark.parametrize("name", SCENARIOS)
def test_gymnasium_and_sb3_env_checkers(name: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(gym.make(f"greenrl/{name}-v0").unwrapped, skip_render_check=True)
        sb3_check(ServingEnv(name), warn=True)


def _rollout(env: ServingEnv, seed: int, steps: int = 12) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    observations, rewards = [obs], []
    for _ in range(steps):
        obs, reward, _, truncated, _ = env.step(rng.integers(env.action_space.nvec))
        observations.append(obs)
        rewards.append(reward)
        if truncated:
            break
    return observations, rewards


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_same_seed_same_trajectory(name: str) -> None:
    a, b, c = (_rollout(ServingEnv(name), seed) for seed in (5, 5, 6))
    assert a[1] == b[1]
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[1] != c[1]


def test_reward_terms_sum_and_observations_stay_in_space() -> None:
    env = ServingEnv("tiny")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(env.scenario.steps):
        obs, reward, terminated, truncated, info = env.step(rng.integers(env.action_space.nvec))
        assert set(info["reward_terms"]) == {"energy", "slo", "reconfig"}
        assert sum(info["reward_terms"].values()) == pytest.approx(reward, abs=1e-12)
        assert env.observation_space.contains(obs)
        assert not terminated
    assert truncated


def test_energy_term_matches_node_energy() -> None:
    env = ServingEnv("tiny")
    env.reset(seed=1)
    _, _, _, _, info = env.step(env.action_for(env.initial))
    peak = env.scenario.node.gpus * env.gpu.tdp_w * env.scenario.control.interval_s
    assert info["reward_terms"]["energy"] == pytest.approx(-info["energy_j"] / peak)
    assert len(OBS_FIELDS) == env.observation_space.shape[0]


def test_eval_windows_are_fixed_and_disjoint_from_training() -> None:
    s = load_scenario("default")
    t0, t1 = s.workload.train_range_s
    for start, duration in s.workload.eval_windows_s:
        assert start >= t1 or start + duration <= t0
    e1, e2 = ServingEnv("default", "eval"), ServingEnv("default", "eval")
    assert _rollout(e1, 0, 4)[1] == _rollout(e2, 99, 4)[1]  # the seed does not move the evaluation window


def _write(tmp_path: Path, change: dict, base: str = "tiny") -> Path:
    raw = yaml.safe_load(Path(load_scenario(base).path).read_text())
    for dotted, value in change.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_infeasible_tp_is_masked_and_mapped(tmp_path: Path) -> None:
    path = _write(tmp_path, {"control.knobs.tp": [1, 8]}, base="default")
    env = ServingEnv(str(path))
    mask = env.action_masks()
    assert mask[:2].tolist() == [False, True]  # Llama-2-70B does not fit on one H100
    assert env.knobs_for([0] * len(env.knob_names)).tp == 8  # unmasked infeasible choice -> nearest feasible


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"control.colour": "red"}, "control.colour: unknown key; fix: use one of interval_s, knobs"),
        ({"control.interval_s": "fast"}, "control.interval_s: expected a number"),
        ({"node.gpus": 2.5}, "node.gpus: expected an integer"),
        ({"control.knobs.voltage": [1]}, "control.knobs.voltage: unknown knob"),
        ({"workload.eval_windows_s": [[100.0, 300.0]]}, "overlaps train_range_s"),
        ({"workload.eval_windows_s": []}, "no evaluation windows"),
        ({"control.knobs.sm_clock_mhz": [1000]}, "control.knobs.sm_clock_mhz"),
        ({"control.knobs.prefill_sm_clock_mhz": [0, 1000]}, "control.knobs.prefill_sm_clock_mhz: value 1000"),
        ({"control.knobs.prefill_sm_clock_mhz": [-1]}, "integers >= 0 (0: off)"),
        ({"node.initial.tp": 3}, "node.initial.tp"),
        ({"reward.slo_reference": "oracle"}, "reward.slo_reference: unknown value 'oracle'"),
        ({"control.prefill_clock_ttft_s": 0.6}, "control.prefill_clock_ttft_s: needs 0 <= target < slo.ttft_floor_s"),
        ({"control.prefill_clock_ttft_s": "soon"}, "control.prefill_clock_ttft_s: expected a number"),
    ],
)
def test_bad_scenarios_name_file_key_and_fix(tmp_path: Path, change: dict, expected: str) -> None:
    path = _write(tmp_path, change)
    with pytest.raises(InputError) as err:
        ServingEnv(str(path))
    message = str(err.value)
    assert expected in message and str(path) in message and "fix:" in message


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="use one of .*default"):
        load_scenario("nope")


def test_knob_round_trip() -> None:
    env = ServingEnv("default")
    knobs = Knobs(tp=4, replicas=2, max_num_seqs=64, sm_clock_mhz=1605)
    assert env.knobs_for(env.action_for(knobs)) == knobs
    with pytest.raises(InputError):
        env.knobs_for([9, 0, 0])


def test_static_max_slo_reference_is_a_baseline_not_a_different_task() -> None:
    from dataclasses import replace

    plain = load_scenario("tiny")
    ref = replace(plain, reward=replace(plain.reward, slo_reference="static-max"))
    env, env_plain = ServingEnv(ref), ServingEnv(plain)
    initial = env.action_for(env.initial)
    low_clock = initial.copy()
    low_clock[-1] = 0
    # the initial configuration is its own reference: its SLO term is exactly zero all episode
    env.reset(seed=4)
    terms = [env.step(initial)[4]["reward_terms"]["slo"] for _ in range(plain.steps)]
    assert terms == [0.0] * plain.steps
    # another policy: the same misses as without a reference, and the reference misses are static-max's
    env.reset(seed=4)
    env_plain.reset(seed=4)
    static_missed = 0
    env_static = ServingEnv(plain)
    env_static.reset(seed=4)
    for _ in range(plain.steps):
        info = env.step(low_clock)[4]
        info_plain = env_plain.step(low_clock)[4]
        assert info["missed"] == info_plain["missed"] and info["energy_j"] == info_plain["energy_j"]
        static_missed += info["reference_missed"] - env_static.step(initial)[4]["missed"]
    assert static_missed == 0
