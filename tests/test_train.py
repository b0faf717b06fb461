"""Training on the tiny scenario: learning beats random, export/load parity, resume, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from greenrl import train as train_cli
from greenrl.env import ServingEnv, load_scenario
from greenrl.errors import InputError
from greenrl.policy import load_controller
from greenrl.rollout import RandomPolicy, StaticPolicy
from greenrl.train import evaluate_policy_on, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return train("tiny", "maskable_ppo", seed=0, total_timesteps=8192, out=out, progress_bar=False)


def test_run_folder_contents(tiny_run: Path) -> None:
    for name in (
        "config.yaml",
        "command.txt",
        "versions.json",
        "eval.csv",
        "summary.json",
        "best/model.zip",
        "checkpoint/model.zip",
        "controller/controller.json",
        "controller/policy.npz",
    ):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "tb").rglob("events.out.tfevents.*"))
    versions = json.loads((tiny_run / "versions.json").read_text())
    assert {"greenrl", "stable_baselines3", "torch", "gymnasium", "git_commit"} <= set(versions)


def test_trained_policy_beats_random_and_its_starting_point(tiny_run: Path) -> None:
    scenario = load_scenario("tiny")
    trained = evaluate_policy_on(load_controller(tiny_run / "controller"), scenario)
    env = ServingEnv(scenario, "eval")
    start = evaluate_policy_on(StaticPolicy(env.action_for(env.initial)), scenario)  # the untrained argmax
    randoms = [evaluate_policy_on(RandomPolicy(ServingEnv(scenario), s), scenario)["return"] for s in range(3)]
    # Training starts biased towards static-max, so a learner that never updates acts exactly like it;
    # on tiny a lower clock is nearly free, so a working learner must beat it clearly (and random).
    assert trained["return"] > start["return"] + 0.25 * abs(start["return"])
    assert trained["return"] > max(randoms)
    assert trained["slo_attainment"] >= start["slo_attainment"] - 0.005


def test_exported_controller_acts_like_the_model(tiny_run: Path) -> None:
    import torch
    from sb3_contrib import MaskablePPO

    model = MaskablePPO.load(tiny_run / "best" / "model.zip", device="cpu")
    env = ServingEnv("tiny")
    controller = load_controller(tiny_run / "controller", expect_env=env)
    obs = np.random.default_rng(0).uniform(-3, 3, (500, env.observation_space.shape[0])).astype(np.float32)
    masks = np.tile(env.action_masks(), (500, 1))
    want, _ = model.predict(obs, deterministic=True, action_masks=masks)
    got, _ = controller.predict(obs)
    # numpy and torch round differently: the argmax may differ only where two logits tie within 1e-4
    with torch.no_grad():
        dist = model.policy.get_distribution(torch.as_tensor(obs), action_masks=masks)
    top2 = [torch.topk(d.logits, 2, dim=1).values.numpy() for d in dist.distributions]
    clear = np.all([t[:, 0] - t[:, 1] > 1e-4 for t in top2], axis=0)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], want[clear])
    one, _ = controller.predict(obs[0])
    np.testing.assert_array_equal(one, got[0])


def test_tampered_or_foreign_controllers_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "ctl"
    shutil.copytree(tiny_run / "controller", bad)
    manifest = json.loads((bad / "controller.json").read_text())
    manifest["observation"][0]["scale"] = 99.0
    (bad / "controller.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="observation"):
        load_controller(bad)
    shutil.copy(tiny_run / "controller" / "controller.json", bad / "controller.json")
    with pytest.raises(InputError, match="knobs"):
        load_controller(bad, expect_env=ServingEnv("default"))
    data = bytearray((bad / "policy.npz").read_bytes())
    data[-40] ^= 0xFF
    (bad / "policy.npz").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_controller(bad)


def test_resume_continues_a_run(tiny_run: Path) -> None:
    run = train("tiny", "maskable_ppo", seed=0, total_timesteps=8192 + 1024, resume=tiny_run, progress_bar=False)
    assert run == tiny_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] >= 8192 + 1024


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--scenario", "nope"], "unknown scenario"),
        (["--scenario", "tiny", "--total-timesteps", "0"], "at least 1"),
        (["--scenario", "tiny", "--resume", "/nonexistent"], "no checkpoint"),
    ],
)
def test_train_bad_input_exits_2(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        train_cli.main(argv)
    assert ended.value.code == 2
    assert expected in capsys.readouterr().err


def test_behaviour_cloning_reproduces_a_dynamic_teacher() -> None:
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from greenrl.imitation import behaviour_clone, collect_demonstrations

    scenario = load_scenario("tiny")
    demos = collect_demonstrations(scenario, "threshold", 10, seed=0)
    clock = ServingEnv(scenario).knob_names.index("sm_clock_mhz")
    assert len(np.unique(demos.actions[:, clock])) > 1  # the teacher really switches clocks
    model = MaskablePPO("MlpPolicy", DummyVecEnv([lambda: ServingEnv(scenario)]), seed=0, device="cpu")
    before = demos.agreement(model)
    behaviour_clone(model.policy, demos, epochs=60, seed=0)
    unseen = collect_demonstrations(scenario, "threshold", 4, seed=500)
    assert before < 0.5
    assert unseen.agreement(model) >= 0.9


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("warm")
    overrides = {
        "warm_start": "fixed-clock",
        "warm_start_episodes": 4,
        "warm_start_epochs": 60,
        "dagger_rounds": 1,
        "val_episodes": 2,
        "slo_reference": "static-max",
    }
    return train("tiny", "maskable_ppo", seed=0, total_timesteps=512, out=out, progress_bar=False, overrides=overrides)


def test_warm_start_clones_the_teacher_before_ppo(warm_run: Path) -> None:
    from greenrl.baselines import make_baseline

    report = json.loads((warm_run / "warm_start.json").read_text())
    assert report["teacher"] == "fixed-clock" and report["agreement"] == 1.0
    rows = (warm_run / "eval.csv").read_text().splitlines()
    header, first = rows[0].split(","), dict(zip(rows[0].split(","), map(float, rows[1].split(",")), strict=True))
    assert "val_missed" in header and first["timesteps"] == 0
    scenario = load_scenario("tiny")
    env = ServingEnv(scenario, "eval")
    teacher = StaticPolicy(env.action_for(make_baseline("fixed-clock", env).decide({})))  # a constant action
    expected = evaluate_policy_on(teacher, scenario)
    assert first["energy_kwh"] == pytest.approx(expected["energy_kwh"], rel=1e-5)
    assert first["missed"] == expected["missed"]


def test_the_agent_file_can_train_against_the_static_max_reference(warm_run: Path) -> None:
    import yaml

    config = yaml.safe_load((warm_run / "config.yaml").read_text())
    assert config["hyperparameters"]["slo_reference"] == "static-max"
    assert config["scenario_config"]["reward"]["slo_reference"] == "static-max"
    assert load_scenario("tiny").reward.slo_reference == "none"  # the scenario itself is unchanged
    with pytest.raises(InputError, match="slo_reference"):
        train("tiny", total_timesteps=64, out=warm_run / "x", progress_bar=False, overrides={"slo_reference": "oracle"})


def test_every_scenario_knob_is_logged_and_evaluations_print_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = {"warm_start": "none", "val_episodes": 1, "eval_every_steps": 256, "n_envs": 2, "n_steps": 64}
    run = train(
        "tiny", "maskable_ppo", seed=0, total_timesteps=256, out=tmp_path, progress_bar=False, overrides=overrides
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval at ")]
    rows = (run / "eval.csv").read_text().splitlines()[1:]
    assert len(lines) == len(rows) >= 2  # the starting policy, each eval_every_steps and the final one
    assert lines[0].startswith("eval at 0 timesteps: val return ")
    assert "kWh" in lines[-1] and "SLO attainment" in lines[-1]
    tags: set[str] = set()
    for events in (run / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {f"knobs/{k}" for k in load_scenario("tiny").control.knobs} <= tags
    assert "knobs/prefill_sm_clock_mhz" in tags


def test_model_selection_uses_validation_not_held_out(warm_run: Path) -> None:
    lines = (warm_run / "eval.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, map(float, line.split(",")), strict=True)) for line in lines[1:]]
    assert len(rows) >= 2
    best = json.loads((warm_run / "best" / "eval.json").read_text())
    assert best["timesteps"] == max(rows, key=lambda r: r["val_return"])["timesteps"]
    scenario = load_scenario("tiny")
    env = ServingEnv(scenario, "train")
    direct = evaluate_policy_on(StaticPolicy(env.action_for(env.initial)), scenario, val_episodes=2)
    held_out = evaluate_policy_on(StaticPolicy(env.action_for(env.initial)), scenario)
    assert direct["energy_kwh"] != pytest.approx(held_out["energy_kwh"])  # validation is other data


def test_the_rl_zoo_file_reads_as_rl_zoo_reads_it() -> None:
    """agents/rl_zoo3/ppo.yml: what rl_zoo3.train does with --conf-file, without rl_zoo3 installed.

    The zoo looks the entry up by the Gymnasium env id, reads ``n_timesteps`` and ``n_envs``, evaluates
    ``normalize`` and ``policy_kwargs`` strings (with ``torch.nn`` as ``nn``) and passes the other keys to
    the algorithm's constructor; its schedules take a number or ``lin_<x>``.
    """
    import gymnasium as gym
    import torch
    import yaml
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    import greenrl  # noqa: F401 - registers greenrl/<scenario>-v0 (--gym-packages greenrl)
    from greenrl.bundled import agents_dir
    from greenrl.train import agent_config

    path = agents_dir() / "rl_zoo3" / "ppo.yml"
    zoo = yaml.safe_load(path.read_text())
    assert "greenrl/default-v0" in zoo
    for env_id, entry in zoo.items():
        assert env_id in gym.registry, env_id
        hp = dict(entry)
        n_timesteps, n_envs = int(hp.pop("n_timesteps")), int(hp.pop("n_envs", 1))
        normalize = eval(hp.pop("normalize"), {})  # the zoo evals it as Python, so this does too
        policy_kwargs = eval(hp.pop("policy_kwargs"), {"nn": torch.nn})
        policy = hp.pop("policy")
        for key in ("learning_rate", "clip_range"):
            assert isinstance(hp[key], float), f"{env_id}: {key} {hp[key]!r} is not a number"
        ours = agent_config("ppo", env_id.removeprefix("greenrl/").removesuffix("-v0"))
        assert n_timesteps == ours["total_timesteps"] and n_envs == ours["n_envs"]
        assert {k: v for k, v in hp.items() if k in ours} == {k: ours[k] for k in hp}, env_id  # one set of values
        assert policy_kwargs["net_arch"] == ours["net_arch"] and policy_kwargs["activation_fn"] is torch.nn.Tanh
        assert normalize == {"norm_obs": False, "norm_reward": True}
        if env_id == "greenrl/tiny-v0":  # the remaining keys construct the algorithm
            env = make_vec_env(env_id, n_envs=n_envs)
            try:
                model = PPO(policy, env, policy_kwargs=policy_kwargs, **hp)
                assert model.n_steps == hp["n_steps"] and model.gamma == hp["gamma"]
            finally:
                env.close()
