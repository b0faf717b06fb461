"""Training the shared node policy: planner clone per node, DAgger, MaskablePPO over K x N node agents.

``python -m greenrl.train --scenario fleet-default --agent maskable_ppo_shared`` lands in
``train_shared_fleet``, the twin of ``greenrl.fleet.learn.train_fleet`` with one policy shared by every node
(``greenrl.fleet.shared``): the same warm start (the planner driven by ``FleetTeacher``, its fleet action
as every node's label), the same validation days, score and model selection, the held-out days once at the
end. ``n_envs`` counts fleets and ``total_timesteps`` node-agent steps (N per fleet decision), so a budget
of N x the centralized recipe's timesteps is the same simulated fleet time. No controller is exported
(``greenrl.policy.export_controller`` knows the per-pool action only).

Public names: collect_shared_demonstrations, train_shared_fleet.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from greenrl.errors import InputError
from greenrl.fleet.config import load_fleet
from greenrl.fleet.learn import FleetTeacher, _days, _score, ship_verdict
from greenrl.fleet.policies import make_policy
from greenrl.fleet.shared import NodeFleetEnv, SharedFleetVecEnv, SharedNodeFleet
from greenrl.imitation import Demonstrations
from greenrl.ioutil import atomic_write_text
from greenrl.train_setup import build_model, warm_start

__all__ = ["collect_shared_demonstrations", "train_shared_fleet"]

logger = logging.getLogger(__name__)


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
    env = NodeFleetEnv(fleet, "train", slo_weight=slo_weight, window_s=window_s)
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


def train_shared_fleet(
    fleet: str,
    cfg: dict[str, Any],
    agent: str = "maskable_ppo_shared",
    seed: int = 0,
    out: Path = Path("runs"),
    progress_bar: bool = False,
    argv: list[str] | None = None,
) -> Path:
    """Warm start, PPO over node agents, model selection on the validation days, held-out days; the run folder.

    The run folder is ``out/fleet-<fleet>-shared/<agent>_s<seed>_<stamp>/`` (config.yaml, command.txt,
    warm_start.json, best/ and checkpoint/ models, summary.json), as ``train_fleet``'s.

    Args:
        fleet: the fleet's name (``envs/fleets/<fleet>.yaml``).
        cfg: the agent file's resolved entry (``greenrl.agent_config.agent_config("maskable_ppo_shared", ...)``);
            ``n_envs`` fleets, ``total_timesteps`` node-agent steps.
        agent: ``maskable_ppo_shared``.
        seed: training seed.
        out: parent of the run folder.
        progress_bar: SB3's progress bar.
        argv: the ``greenrl.train`` command line recorded in command.txt (default: this process's).
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize
    from torch.distributions import Distribution

    from greenrl.train_resume import save_model

    if agent != "maskable_ppo_shared":
        raise InputError("--agent", "agent", f"the shared node policy trains with maskable_ppo_shared, not {agent}", "")
    Distribution.set_default_validate_args(False)
    config = load_fleet(fleet)
    scenario = f"fleet-{config.name}"
    slo_weight = float(cfg.get("slo_weight", 100.0))
    window_s = float(cfg["episode_s"]) if "episode_s" in cfg else None
    run = Path(out) / f"{scenario}-shared" / f"{agent}_s{seed}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True, exist_ok=False)
    record = {"scenario": scenario, "fleet_file": config.path, "agent": agent, "seed": seed, "hyperparameters": cfg}
    atomic_write_text(run / "config.yaml", yaml.safe_dump(record, sort_keys=False))
    atomic_write_text(
        run / "command.txt",
        shlex.join([sys.executable, "-m", "greenrl.train", *(sys.argv[1:] if argv is None else argv)]) + "\n",
    )
    started = time.perf_counter()
    fleets = [
        NodeFleetEnv(config.path, "train", slo_weight=slo_weight, window_s=window_s) for _ in range(int(cfg["n_envs"]))
    ]
    monitored = VecMonitor(SharedFleetVecEnv(fleets))
    monitored.seed(seed)
    env = VecNormalize(monitored, norm_obs=False, norm_reward=True, gamma=float(cfg["gamma"]))
    model = build_model(MaskablePPO, env, cfg, seed, run)
    teacher = cfg.get("warm_start")
    if teacher and teacher != "none":

        def collect(episodes: int, base_seed: int, student: Any) -> Any:
            return collect_shared_demonstrations(
                config.path, str(teacher), episodes, base_seed, student, slo_weight, window_s
            )

        report = warm_start(model, env, collect, cfg, seed, run, default_episodes=16)
        logger.info("warm start: %s", report)

    every = int(cfg.get("eval_every_steps", 10_000))
    evals: list[dict[str, Any]] = []
    best = {"score": -np.inf}

    def validate(steps: int) -> None:
        row = _days(config, SharedNodeFleet(model), "val")
        score = _score(row, config, slo_weight) / max(1, len(row["days"]))
        entry = {"timesteps": steps, "score": score, **{k: row[k] for k in ("energy_kwh", "slo_attainment", "missed")}}
        evals.append(entry)
        print(
            f"val at {steps} timesteps: score {score:.2f}, {row['energy_kwh']:.1f} kWh, "
            f"attainment {100 * row['slo_attainment']:.2f}%",
            flush=True,
        )
        if score > best["score"]:
            best["score"] = score
            save_model(model, run / "best" / "model.zip")

    class Validate(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next = every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += every
                validate(self.num_timesteps)
            return True

    validating = int(cfg.get("val_episodes", 2)) > 0  # 0: no validation or held-out days (a smoke test)
    if validating:
        validate(0)
    t_learn = time.perf_counter()
    callback = Validate() if validating else None
    model.learn(int(cfg["total_timesteps"]), callback=callback, progress_bar=progress_bar, tb_log_name=agent)
    learn_s = time.perf_counter() - t_learn
    if validating and evals[-1]["timesteps"] != model.num_timesteps:
        validate(model.num_timesteps)
    save_model(model, run / "checkpoint" / "model.zip")
    env.close()

    summary: dict[str, Any] = {
        "timesteps": int(model.num_timesteps),
        "fleet_decisions": int(model.num_timesteps) // config.nodes,
        "learn_s": round(learn_s, 1),
        "ppo_steps_per_s": round(model.num_timesteps / max(learn_s, 1e-9), 1),
        "validation": evals,
        "controller": "not exported (greenrl.policy.export_controller knows the per-pool action only)",
    }
    if validating:
        best_model = MaskablePPO.load(run / "best" / "model.zip", device="cpu")
        val_planner = _days(config, make_policy("planner"), "val")
        val_best = next(e for e in evals if e["score"] == best["score"])
        shippable, reason = ship_verdict(val_best, val_planner)
        held_out = _days(config, SharedNodeFleet(best_model), "eval")
        summary |= {
            "selected": val_best,
            "validation_planner": {k: v for k, v in val_planner.items() if k != "days"},
            "shippable": shippable,
            "ship_verdict": reason,
            "held_out": held_out,
        }
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "validation"}, indent=1, default=float), flush=True)
    return run
