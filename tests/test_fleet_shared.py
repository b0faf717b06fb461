"""One policy shared by every node: the node view, the node actions <-> fleet action mapping, the VecEnv, training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from greenrl.fleet import FleetAction
from greenrl.fleet.env import FLEET_OBS_FIELDS, FleetEnv
from greenrl.fleet.learn import FleetTeacher, load_learned
from greenrl.fleet.shared import NODE_OBS_FIELDS, NodeFleetEnv, SharedFleetVecEnv, SharedNodeFleet

WINDOW_S = 1800.0  # 6 decisions: short episodes keep the tests fast


def _env(seed: int = 3) -> NodeFleetEnv:
    env = NodeFleetEnv("default", "train", slo_weight=30.0, window_s=WINDOW_S)
    env.reset(seed=seed)
    return env


def _layout_and_clock(action: FleetAction, j: int) -> tuple[int, int, int]:
    k = action.knobs[j]
    return k.tp, k.replicas, k.sm_clock_mhz


def test_a_node_reads_its_own_state_its_pool_and_the_fleet() -> None:
    env = _env()
    codec, sim = env.nodes_codec, env.sim
    parked = replace(sim.action.knobs[3], tp=8, replicas=1, sm_clock_mhz=codec.codec.clocks[0])
    knobs = (*sim.action.knobs[:3], parked)
    sim.apply(FleetAction((True, True, True, False), (0, 0, 1, 1), knobs))
    env.step(env.nodes_codec.labels(sim.action))  # node 3 drains, then parks
    obs = env.node_obs()
    p = codec.pools
    assert obs.shape == (4, len(NODE_OBS_FIELDS) + p + len(FLEET_OBS_FIELDS) + codec.codec.obs_dim)
    assert obs.shape[1] == codec.obs_dim == 36
    assert sim.states[3] in ("draining", "parked")
    assert obs[3, :3].tolist() == ([0.0, 1.0, 0.0] if sim.states[3] == "draining" else [0.0, 0.0, 1.0])
    assert obs[0, :3].tolist() == [1.0, 0.0, 0.0]
    assert obs[0, 3 : 3 + p].tolist() == [1.0, 0.0] and obs[2, 3 : 3 + p].tolist() == [0.0, 1.0]
    own = 3 + p
    assert obs[3, own] == pytest.approx(1.0)  # 8 x 1 GPUs of 8
    assert obs[3, own + 1] == pytest.approx(codec.codec.clocks[0] / codec.codec.clocks[-1])
    assert obs[3, own + 4] == 0.0  # the router sends nothing to a node that is not serving
    assert obs[1, own + 5] == pytest.approx(1 / 4) and obs[0, own + 5] == 0.0  # rank within its state and pool
    fleet = codec.codec.observe(sim, env.snaps, env.start_hour)
    width = len(FLEET_OBS_FIELDS)
    assert np.allclose(obs[:, -codec.codec.obs_dim :], fleet)  # the centralized observation, as it is
    assert np.allclose(obs[2, codec.own_dim : codec.own_dim + width], fleet[width : 2 * width])  # its pool's fields


def test_the_planners_fleet_action_survives_labels_and_mapping_back() -> None:
    env = _env()
    driver = FleetTeacher("planner")
    done, decisions = False, 0
    while not done:
        wanted = driver.decide(env)
        labels = env.nodes_codec.labels(wanted)
        back = env.action_to_fleet(labels)
        assert back.on == wanted.on
        for j in range(env.sim.n_nodes):
            if wanted.on[j]:
                assert back.pool_of_node[j] == wanted.pool_of_node[j]
                assert _layout_and_clock(back, j) == _layout_and_clock(wanted, j)
        _, _, terminated, truncated, _ = env.step(labels)
        done, decisions = terminated or truncated, decisions + 1
    assert decisions == round(WINDOW_S / env.config.control.fleet_interval_s)


def test_a_pool_nobody_asks_for_keeps_its_least_loaded_node() -> None:
    env = _env()
    env.step(env.nodes_codec.labels(env.sim.action))
    everyone_short = np.array([[1, 0, 0]] * 4)
    action = env.action_to_fleet(everyone_short)
    assert sum(action.on) == 4
    assert {action.pool_of_node[j] for j in range(4) if action.on[j]} == {0, 1}
    everyone_parks = np.zeros((4, 3), dtype=np.int64)
    action = env.action_to_fleet(everyone_parks)
    assert sum(action.on) == 2 and {action.pool_of_node[j] for j in range(4) if action.on[j]} == {0, 1}


def test_the_vec_env_gives_every_node_the_fleet_reward_of_fleet_env() -> None:
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    central = FleetEnv("default", "train", slo_weight=30.0, window_s=WINDOW_S)
    central.reset(seed=7)
    # Seeded: the node labels of a fleet action, passed through the rolling rule again, may move a layout
    # change to another node (1 of 12 random action sequences did, at its third decision); then the two
    # fleets diverge and their rewards differ, which is the mapping's documented behaviour, not this check's.
    central.action_space.seed(0)
    vec = SharedFleetVecEnv([NodeFleetEnv("default", "train", slo_weight=30.0, window_s=WINDOW_S) for _ in range(2)])
    assert vec.num_envs == 8 and vec.observation_space.shape == (36,)
    assert vec.action_space.nvec.tolist() == [3, 3, 6]
    vec.seed(7)  # fleet 0: seed 7, as the centralized env
    obs = vec.reset()
    assert obs.shape == (8, 36) and vec.observation_space.contains(obs[0])
    fleet0 = vec.fleets[0]
    for _ in range(3):
        per_pool = central.action_space.sample()
        wanted = central.action_to_fleet(per_pool)
        labels = fleet0.nodes_codec.labels(wanted)
        nodes = np.concatenate([labels, labels])
        _, reward, *_ = central.step(per_pool)
        assert fleet0.action_to_fleet(labels) == wanted  # the same fleet action in both envs
        obs, rewards, dones, infos = vec.step(nodes)
        assert np.allclose(rewards[:4], reward) and len(set(rewards[4:].tolist())) == 1
        assert infos[0]["energy_j"] == pytest.approx(central.snaps and sum(s.energy_j for s in central.snaps))
        assert [i["node"] for i in infos] == [0, 1, 2, 3] * 2 and not dones.any()
    masks = np.stack(vec.env_method("action_masks"))
    assert masks.shape == (8, 12) and masks.all() and vec.has_attr("action_masks")
    wrapped = VecNormalize(VecMonitor(vec), norm_obs=False, norm_reward=True)
    wrapped.seed(1)
    wrapped.reset()
    ends = []
    for _ in range(6):
        _, _, dones, infos = wrapped.step(np.zeros((8, 3), dtype=np.int64))
        ends.append(dones.all())
    assert ends[-1] and "episode" in infos[0] and "terminal_observation" in infos[5]
    assert infos[5]["TimeLimit.truncated"]


def test_the_same_seed_gives_the_same_run() -> None:
    def run() -> tuple[np.ndarray, np.ndarray]:
        vec = SharedFleetVecEnv([NodeFleetEnv("default", "train", slo_weight=30.0, window_s=WINDOW_S)])
        vec.seed(11)
        obs = [vec.reset()]
        rewards = []
        for step in range(3):
            o, r, _, _ = vec.step(np.array([[1 + step % 2, 1, 2], [0, 0, 0], [2, 2, 5], [1, 0, 1]]))
            obs.append(o)
            rewards.append(r)
        return np.array(obs), np.array(rewards)

    a, b = run(), run()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A few hundred node steps of the shared recipe (warm start by the planner, DAgger, PPO)."""
    from greenrl.fleet.shared_learn import train_shared_fleet
    from greenrl.train import agent_config

    cfg = agent_config("maskable_ppo_shared", "fleet-default") | {
        "total_timesteps": 256,
        "n_envs": 2,
        "n_steps": 32,
        "batch_size": 64,
        "warm_start_episodes": 2,
        "warm_start_epochs": 5,
        "val_episodes": 0,  # no whole validation or held-out days in a unit test
        "episode_s": WINDOW_S,
    }
    return train_shared_fleet("default", cfg, out=tmp_path_factory.mktemp("runs"))


def test_a_tiny_shared_training_runs_and_its_model_plays_a_fleet(tiny_run: Path) -> None:
    import json

    from sb3_contrib import MaskablePPO

    from greenrl.fleet import FleetSim, load_fleet
    from greenrl.fleet.days import fleet_day
    from greenrl.fleet.rollout import run_policy

    assert tiny_run.parent.name == "fleet-default-shared"
    warm = json.loads((tiny_run / "warm_start.json").read_text())
    assert warm["samples"] == 4 * (2 + 1) * round(WINDOW_S / 300.0)  # per node: 2 episodes + 1 DAgger episode
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["timesteps"] >= 256 and summary["fleet_decisions"] == summary["timesteps"] // 4
    model = MaskablePPO.load(tiny_run / "checkpoint" / "model.zip", device="cpu")
    config = load_fleet("default")
    day = fleet_day(config, 0, duration_s=900.0)
    row = run_policy(FleetSim(config), SharedNodeFleet(model), day)
    assert row["policy"] == "shared-node" and row["requests"] > 0 and row["energy_kwh"] > 0
    # the exported controller (kind fleet-node, plain numpy) plays the same day as the model it came from
    exported = load_learned(tiny_run / "controller")
    assert isinstance(exported, SharedNodeFleet) and exported.predictor.manifest["kind"] == "fleet-node"
    replay = run_policy(FleetSim(config), exported, day)
    assert (replay["energy_kwh"], replay["missed"]) == (row["energy_kwh"], row["missed"])


def test_a_shared_controller_for_another_fleet_observation_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from greenrl.errors import InputError
    from greenrl.policy import MANIFEST_HASH, load_controller, manifest_digest

    folder = tmp_path / "controller"
    shutil.copytree(tiny_run / "controller", folder)
    manifest = json.loads((folder / "controller.json").read_text())
    manifest["observation"] = manifest["observation"][1:]
    manifest[MANIFEST_HASH] = manifest_digest(manifest)
    (folder / "controller.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="observation"):
        load_controller(folder)


def test_a_shared_run_resumes_from_its_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from greenrl.errors import InputError
    from greenrl.train import train

    run = tmp_path / "fleet-default-shared" / tiny_run.name
    shutil.copytree(tiny_run, run)
    warm = (run / "warm_start.json").read_bytes()
    with pytest.raises(InputError, match="the run used 'maskable_ppo_shared'"):
        train(resume=run, agent="maskable_ppo")
    assert train(resume=run, total_timesteps=512, progress_bar=False) == run
    assert json.loads((run / "checkpoint" / "state.json").read_text())["timesteps"] == 512
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] == 512 and summary["fleet_decisions"] == 128
    assert (run / "warm_start.json").read_bytes() == warm  # the warm start is not repeated


def test_a_shared_run_is_reselected_with_its_own_recipe(tiny_run: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from greenrl.fleet.reselect import candidates, reselect
    from greenrl.policy import load_controller

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert list(candidates(run)) == ["checkpoint"]  # no validation: the last model alone
    summary = reselect(run, duration_s=300.0)
    assert summary["selected_candidate"] == "checkpoint" and summary["selected"]["timesteps"] == summary["timesteps"]
    assert load_controller(run / "reselect" / "controller").manifest["kind"] == "fleet-node"
    assert json.loads((run / "reselect" / "summary.json").read_text())["shippable"] == summary["shippable"]
