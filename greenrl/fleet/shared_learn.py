"""Training the shared node policy: planner clone per node, DAgger, MaskablePPO over K x N node agents.

``python -m greenrl.train --scenario fleet-default --agent maskable_ppo_shared`` lands in
``train_shared_fleet``, the twin of ``greenrl.fleet.learn.train_fleet`` with one policy shared by every node
(``greenrl.fleet.shared``): the same warm start (the planner driven by ``FleetTeacher``, its fleet action
as every node's label) and the same loop (``greenrl.fleet.trainer``: validation days, score, model
selection, checkpoints and ``--resume``, the held-out days once at the end). ``n_envs`` counts fleets and
``total_timesteps`` node-agent steps (N per fleet decision), so a budget of N x the centralized recipe's
timesteps is the same simulated fleet time. The selected model is exported as a ``fleet-node`` controller
(every node runs it on its own observation; ``greenrl.fleet.learn.load_learned`` plays it).

Public names: collect_shared_demonstrations, shared_player, train_shared_fleet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.errors import InputError
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.learn import FleetTeacher
from greenrl.fleet.shared import NodeFleetEnv, SharedFleetVecEnv, SharedNodeFleet
from greenrl.fleet.trainer import FleetPlayer, FleetRecipe, train_fleet_loop
from greenrl.imitation import Demonstrations

__all__ = ["collect_shared_demonstrations", "shared_player", "train_shared_fleet"]


def collect_shared_demonstrations(
    fleet: str,
    teacher: str,
    episodes: int,
    seed: int,
    student: Any = None,
    slo_weight: float = 100.0,
    window_s: float | None = None,
) -> Demonstrations:
    """Training episodes (episode i: seed + i) labelled per node by the ``teacher`` fleet baseline.

    Each decision the teacher's fleet action (``FleetTeacher.decide``) becomes every node's label
    (``SharedNodeCodec.labels``); the labels are taken, or the ``student``'s node actions (DAgger). Samples
    are per node, node after node within an episode (so each node's run of decisions is one episode for the
    discounted returns), every node with the fleet's reward.
    """
    # The teacher plays the categories' own shapes, as in greenrl.fleet.learn.collect_fleet_demonstrations.
    env = NodeFleetEnv(fleet, "train", slo_weight=slo_weight, window_s=window_s, output_spread=False)
    driver = FleetTeacher(teacher)
    obs: list[npt.NDArray[np.float32]] = []
    labels: list[npt.NDArray[np.int64]] = []
    rewards: list[float] = []
    ends: list[bool] = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        ep_obs, ep_labels, ep_rewards = [], [], []
        done = False
        while not done:
            wanted = env.nodes_codec.labels(driver.decide(env))
            seen = env.node_obs()
            taken = wanted if student is None else np.asarray(student.predict(seen, deterministic=True)[0])
            _, reward, terminated, truncated, _ = env.step(taken)
            done = terminated or truncated
            ep_obs.append(seen)
            ep_labels.append(wanted)
            ep_rewards.append(reward)
        steps = len(ep_rewards)
        obs += list(np.stack(ep_obs, axis=1))  # (N, steps, obs_dim): node-major
        labels += list(np.stack(ep_labels, axis=1))
        for _ in range(env.sim.n_nodes):
            rewards += ep_rewards
            ends += [False] * (steps - 1) + [True]
    n = int(sum(env.nodes_codec.nvec))
    return Demonstrations(
        np.concatenate(obs).astype(np.float32),
        np.concatenate(labels).astype(np.int64),
        np.ones((len(rewards), n), dtype=bool),
        np.array(rewards),
        np.array(ends, dtype=bool),
    )


def shared_player(config: FleetConfig) -> FleetPlayer:
    """How a shared node model plays ``config``: ``SharedNodeFleet``, exported against ``NodeFleetEnv``."""
    return FleetPlayer(f"fleet-{config.name}-shared", SharedNodeFleet, lambda: NodeFleetEnv(config.path, "eval"))


def train_shared_fleet(
    fleet: str,
    cfg: dict[str, Any],
    agent: str = "maskable_ppo_shared",
    seed: int = 0,
    out: Path = Path("runs"),
    progress_bar: bool = False,
    argv: list[str] | None = None,
    resume: Path | None = None,
    ship: bool = False,
) -> Path:
    """Warm start, PPO over node agents, model selection on the validation days, held-out days; the run folder.

    The run folder is ``out/fleet-<fleet>-shared/<agent>_s<seed>_<stamp>/`` (config.yaml, command.txt,
    warm_start.json, best/ and checkpoint/ models, summary.json, controller/), as ``train_fleet``'s; the loop is
    ``greenrl.fleet.trainer``'s.

    Args:
        fleet: the fleet's name (``envs/fleets/<fleet>.yaml``).
        cfg: the agent file's resolved entry (``greenrl.agent_config.agent_config("maskable_ppo_shared", ...)``);
            ``n_envs`` fleets, ``total_timesteps`` node-agent steps.
        agent: ``maskable_ppo_shared``.
        seed: training seed.
        out: parent of the run folder.
        progress_bar: SB3's progress bar.
        argv: the ``greenrl.train`` command line recorded in command.txt (default: this process's).
        resume: a shared run folder to continue from its checkpoint (the caller checked it, as for
            ``train_fleet``).
        ship: also export to ``checkpoints/fleet-<fleet>-shared/<agent>_s<seed>/`` if the ship verdict passes it.
    """
    if agent != "maskable_ppo_shared":
        raise InputError("--agent", "agent", f"the shared node policy trains with maskable_ppo_shared, not {agent}", "")
    config = load_fleet(fleet)
    slo_weight = float(cfg.get("slo_weight", 100.0))
    window_s = float(cfg["episode_s"]) if "episode_s" in cfg else None

    def fleets(n: int) -> SharedFleetVecEnv:
        return SharedFleetVecEnv(
            [NodeFleetEnv(config.path, "train", slo_weight=slo_weight, window_s=window_s) for _ in range(n)]
        )

    def collect(episodes: int, base_seed: int, student: Any) -> Demonstrations:
        teacher = str(cfg["warm_start"])
        return collect_shared_demonstrations(config.path, teacher, episodes, base_seed, student, slo_weight, window_s)

    recipe = FleetRecipe(
        player=shared_player(config),
        training_envs=fleets,
        collect=collect,
        summary_extra=lambda steps: {"fleet_decisions": steps // config.nodes},
    )
    return train_fleet_loop(config, cfg, agent, seed, out, recipe, progress_bar, argv, resume, ship).run
