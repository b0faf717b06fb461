"""The training loop both fleet trainers share: run folder, warm start, PPO, validation, checkpoints, resume.

``greenrl.fleet.learn.train_fleet`` (one centralized controller) and
``greenrl.fleet.shared_learn.train_shared_fleet`` (one policy shared by every node) differ only in their
training envs, their demonstrations and how a model plays a fleet (``FleetRecipe``); everything else is
here, once: the run folder (config.yaml with the fleet files' sha256, command.txt), ``VecNormalize`` over
the reward, the warm start (``greenrl.train_setup.warm_start``), validation on whole days every
``eval_every_steps`` with the best model kept (``greenrl.fleet.selection``), a checkpoint at every
validation and on Ctrl-C (what ``greenrl.train --resume`` continues from), every validated model in
``snapshots/<timesteps>/model.zip`` (what ``greenrl.fleet.reselect`` chooses among), the held-out days at the end,
and summary.json.

Public names: FleetPlayer, FleetRecipe, TrainedFleet, train_fleet_loop, export_selection.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from greenrl.fleet.config import FleetConfig
from greenrl.fleet.selection import fleet_files_sha256, held_out_report, validate_policy
from greenrl.imitation import Demonstrations
from greenrl.ioutil import atomic_write_text
from greenrl.train_setup import build_model, warm_start

__all__ = ["FleetPlayer", "FleetRecipe", "TrainedFleet", "export_selection", "train_fleet_loop"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetPlayer:
    """How one agent's models play a fleet, for training and for a finished run (``greenrl.fleet.reselect``).

    Attributes:
        folder: the run folder's parent under ``out``, and the shipped controllers' folder under
            ``checkpoints/`` (``fleet-default``, ``fleet-default-shared``).
        as_policy: a model as a ``FleetPolicy`` that plays the validation and held-out days.
        probe: an evaluation env whose ``controller_manifest`` describes the exported controller.
    """

    folder: str
    as_policy: Callable[[Any], Any]
    probe: Callable[[], Any]


@dataclass(frozen=True)
class FleetRecipe:
    """What a fleet trainer brings to the loop.

    Attributes:
        player: how its models play a fleet (``greenrl.fleet.learn.central_player``, ``shared_player``).
        training_envs: the ``n_envs`` training fleets as one SB3 ``VecEnv`` (the loop adds the monitor and
            the reward normalization).
        collect: ``(episodes, base_seed, student) -> Demonstrations`` labelled by the ``warm_start`` teacher.
        summary_extra: keys added to summary.json, from the trained timesteps.
    """

    player: FleetPlayer
    training_envs: Callable[[int], Any]
    collect: Callable[[int, int, Any], Demonstrations]
    summary_extra: Callable[[int], dict[str, Any]] = field(default=lambda _: {})


@dataclass(frozen=True)
class TrainedFleet:
    """A finished (or interrupted) run: its folder, the selected model, summary.json's content."""

    run: Path
    best_model: Any
    summary: dict[str, Any]
    interrupted: bool = False


def _new_run(
    config: FleetConfig, cfg: dict[str, Any], agent: str, seed: int, folder: Path, argv: list[str] | None
) -> Path:
    run = folder / f"{agent}_s{seed}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True, exist_ok=False)
    recorded = {"scenario": f"fleet-{config.name}", "fleet_file": config.path, "agent": agent, "seed": seed}
    recorded["files_sha256"] = fleet_files_sha256(config)
    atomic_write_text(run / "config.yaml", yaml.safe_dump(recorded | {"hyperparameters": cfg}, sort_keys=False))
    command = [sys.executable, "-m", "greenrl.train", *(sys.argv[1:] if argv is None else argv)]
    atomic_write_text(run / "command.txt", shlex.join(command) + "\n")
    return run


def train_fleet_loop(
    config: FleetConfig,
    cfg: dict[str, Any],
    agent: str,
    seed: int,
    out: Path,
    recipe: FleetRecipe,
    progress_bar: bool = False,
    argv: list[str] | None = None,
    resume: Path | None = None,
    ship: bool = False,
) -> TrainedFleet:
    """Train (or continue ``resume``, whose files the caller checked) with MaskablePPO; see the module doc.

    The selected model is exported to ``<run>/controller`` (``greenrl.policy.export_controller``) and, with
    ``ship`` and a passing ``ship_verdict``, to ``checkpoints/<player.folder>/<agent>_s<seed>``.

    ``cfg`` keys beyond PPO's: ``slo_weight``, ``warm_start`` (a fleet baseline, or ``none``),
    ``eval_every_steps``, ``val_episodes`` (0: no validation or held-out days, a smoke test) and
    ``val_duration_s`` (only each validation and held-out day's first seconds, a smoke test).
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize
    from torch.distributions import Distribution

    from greenrl.train_resume import save_model

    Distribution.set_default_validate_args(False)
    slo_weight = float(cfg.get("slo_weight", 100.0))
    val_duration_s = float(cfg["val_duration_s"]) if "val_duration_s" in cfg else None
    player = recipe.player
    run = Path(resume) if resume is not None else _new_run(config, cfg, agent, seed, Path(out) / player.folder, argv)
    started = time.perf_counter()
    monitored = VecMonitor(recipe.training_envs(int(cfg["n_envs"])))
    monitored.seed(seed)
    env = VecNormalize(monitored, norm_obs=False, norm_reward=True, gamma=float(cfg["gamma"]))
    evals: list[dict[str, Any]] = []
    if resume is not None:
        model = MaskablePPO.load(run / "checkpoint" / "model.zip", env=env, device="cpu")
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        env.ret_rms.mean, env.ret_rms.var, env.ret_rms.count = (
            state["reward_norm"][k] for k in ("mean", "var", "count")
        )
        evals[:] = state["validation"]
        print(f"resuming {run} at {model.num_timesteps} timesteps", flush=True)
    else:
        model = build_model(MaskablePPO, env, cfg, seed, run)
        teacher = cfg.get("warm_start")
        if teacher and teacher != "none":
            report = warm_start(model, env, recipe.collect, cfg, seed, run, default_episodes=16)
            logger.info("warm start: %s", report)

    def checkpoint() -> None:
        """The model, the reward normalization and the validations so far: what ``--resume`` continues from."""
        save_model(model, run / "checkpoint" / "model.zip")
        norm = {"mean": float(env.ret_rms.mean), "var": float(env.ret_rms.var), "count": float(env.ret_rms.count)}
        state = {"timesteps": int(model.num_timesteps), "reward_norm": norm, "validation": evals}
        atomic_write_text(run / "checkpoint" / "state.json", json.dumps(state, default=float) + "\n")

    def validate(steps: int) -> None:
        entry = {"timesteps": steps} | validate_policy(config, player.as_policy(model), slo_weight, val_duration_s)
        per_category = entry.get("categories", {})
        attainments = ", ".join(f"{c} {100 * f['slo_attainment']:.2f}%" for c, f in per_category.items())
        print(
            f"val at {steps} timesteps: score {entry['score']:.2f}, {entry['energy_kwh']:.1f} kWh, "
            f"attainment {100 * entry['slo_attainment']:.2f}%" + (f" ({attainments})" if attainments else ""),
            flush=True,
        )
        # Every validated model is kept, so a later selection rule can pick among them (greenrl.fleet.reselect).
        save_model(model, run / "snapshots" / str(steps) / "model.zip", run)
        if entry["score"] > max((e["score"] for e in evals), default=-np.inf):
            save_model(model, run / "best" / "model.zip")
        evals.append(entry)
        checkpoint()

    every = int(cfg.get("eval_every_steps", 10_000))

    class Validate(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next = (model.num_timesteps // every + 1) * every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += every
                validate(self.num_timesteps)
            return True

    validating = int(cfg.get("val_episodes", 2)) > 0
    if validating and not evals:
        validate(0)
    t_learn = time.perf_counter()
    remaining = int(cfg["total_timesteps"]) - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(
                remaining,
                callback=Validate() if validating else None,
                progress_bar=progress_bar,
                tb_log_name=agent,
                reset_num_timesteps=resume is None,
            )
    except KeyboardInterrupt:
        checkpoint()
        env.close()
        print(f"interrupted at {model.num_timesteps} timesteps; resume with: python -m greenrl.train --resume {run}")
        return TrainedFleet(run, model, {}, interrupted=True)
    learn_s = time.perf_counter() - t_learn
    if validating and evals[-1]["timesteps"] != model.num_timesteps:
        validate(model.num_timesteps)
    checkpoint()
    env.close()

    summary: dict[str, Any] = {
        "timesteps": int(model.num_timesteps),
        "learn_s": round(learn_s, 1),
        "ppo_steps_per_s": round(model.num_timesteps / max(learn_s, 1e-9), 1),
        "validation": evals,
        **recipe.summary_extra(int(model.num_timesteps)),
    }
    best_model = model
    if validating:
        best_model = MaskablePPO.load(run / "best" / "model.zip", device="cpu")
        selected = max(evals, key=lambda e: e["score"])  # the first of equal scores, as saved
        summary |= held_out_report(config, selected, player.as_policy(best_model), slo_weight, val_duration_s)
    else:
        summary |= {"shippable": False, "ship_verdict": "not validated (val_episodes 0)"}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    ship_to = Path("checkpoints") / player.folder / f"{agent}_s{seed}" if ship else None
    export_selection(best_model, player.probe(), run / "controller", ship_to, summary, cfg, agent, seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "validation"}, indent=1, default=float), flush=True)
    return TrainedFleet(run, best_model, summary)


def export_selection(
    model: Any,
    probe: Any,
    folder: Path,
    ship_to: Path | None,
    summary: dict[str, Any],
    cfg: dict[str, Any],
    agent: str,
    seed: int,
) -> None:
    """Export a run's selected model to ``folder`` and, when ``ship_to`` is given and it may ship, there too."""
    from greenrl.policy import export_controller

    extra = {
        "seed": seed,
        "agent": agent,
        "trained_timesteps": summary["timesteps"],
        "slo_weight": float(cfg.get("slo_weight", 100.0)),
        "validation": {"selected": summary.get("selected", {}), "planner": summary.get("validation_planner", {})},
    }
    export_controller(model, probe, folder, extra)
    if ship_to is not None and summary["shippable"]:
        export_controller(model, probe, ship_to, extra)
    elif ship_to is not None:
        print(f"not shipped: {summary['ship_verdict']}", flush=True)
