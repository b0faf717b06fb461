"""``python -m greenrl.train --scenario fleet-<name>`` (and ``--resume`` of a fleet run): a fleet's training.

``greenrl.train.train`` hands fleet scenarios here: the agent file's entry with the command line's changes,
then the centralized controller (``greenrl.fleet.learn``, ``--agent maskable_ppo``) or the policy shared by
every node (``greenrl.fleet.shared_learn``, ``--agent maskable_ppo_shared``); a fleet run folder resumes
with its recorded fleet, agent, seed and hyperparameters.

Public names: train_fleet_scenario, recorded_fleet_run, fleet_player.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from greenrl.agent_config import agent_config
from greenrl.errors import InputError
from greenrl.train_resume import check_checkpoint, check_resume_flags

if TYPE_CHECKING:
    from greenrl.fleet.config import FleetConfig
    from greenrl.fleet.trainer import FleetPlayer

__all__ = ["fleet_player", "recorded_fleet_run", "train_fleet_scenario"]

SHARED_AGENT = "maskable_ppo_shared"
"""The agent whose runs train one policy shared by every node (``greenrl.fleet.shared_learn``)."""


def train_fleet_scenario(
    scenario_name: str | None,
    agent: str | None,
    seed: int | None,
    total_timesteps: int | None,
    n_envs: int | None,
    out: Path,
    resume: Path | None,
    ship: bool,
    progress_bar: bool,
    overrides: dict[str, Any] | None,
    slo_weight: float | None,
    trust_pickle: bool,
    torch_threads: int | None,
    argv: list[str] | None,
) -> Path:
    """Train (or resume) a fleet controller; the run folder. Arguments as ``greenrl.train.train``'s."""
    if torch_threads is not None:
        if torch_threads < 1:
            raise InputError("--torch-threads", "torch_threads", f"must be at least 1, got {torch_threads}", "e.g. 1")
        import torch

        torch.set_num_threads(torch_threads)
    if resume is not None:
        given = (scenario_name, agent, seed, total_timesteps, n_envs, overrides, slo_weight)
        return _resume(Path(resume), *given, trust_pickle, ship, progress_bar)
    from greenrl.fleet.learn import train_fleet

    cfg = agent_config(agent or "maskable_ppo", str(scenario_name))
    for key, value in (overrides or {}).items():
        cfg[key] = value
    if total_timesteps is not None:
        cfg["total_timesteps"] = total_timesteps
    if n_envs is not None:
        cfg["n_envs"] = n_envs
    if slo_weight is not None:
        cfg["slo_weight"] = float(slo_weight)
    fleet = str(scenario_name).removeprefix("fleet-")
    if agent == SHARED_AGENT:
        from greenrl.fleet.shared_learn import train_shared_fleet

        return train_shared_fleet(fleet, cfg, agent, seed or 0, out, progress_bar, argv, ship=ship)
    return train_fleet(fleet, cfg, agent or "maskable_ppo", seed or 0, out, ship, progress_bar, argv)


def _resume(
    run: Path,
    scenario_name: str | None,
    agent: str | None,
    seed: int | None,
    total_timesteps: int | None,
    n_envs: int | None,
    overrides: dict[str, Any] | None,
    slo_weight: float | None,
    trust_pickle: bool,
    ship: bool,
    progress_bar: bool,
) -> Path:
    """Continue a fleet run from its checkpoint with its recorded fleet, agent, seed and hyperparameters."""
    from greenrl.fleet.learn import train_fleet

    recorded, config = recorded_fleet_run(run)
    if scenario_name is not None and scenario_name != recorded["scenario"]:
        raise InputError(
            "--scenario",
            "scenario",
            f"the run was trained on {recorded['scenario']}, not {scenario_name}",
            "drop --scenario when resuming (the run's own is used)",
        )
    check_resume_flags(recorded, agent, seed, overrides, slo_weight)
    if not (run / "checkpoint" / "model.zip").is_file():
        raise InputError(
            "--resume",
            "resume",
            f"{run} has no checkpoint: it stopped before its first validation",
            f"start a new run: python -m greenrl.train --scenario {recorded['scenario']}",
        )
    check_checkpoint(run / "checkpoint" / "model.zip", trust_pickle)
    cfg = dict(recorded["hyperparameters"])
    if total_timesteps is not None:
        cfg["total_timesteps"] = total_timesteps
    if n_envs is not None:
        cfg["n_envs"] = n_envs
    fleet, agent_name, seed_value = str(recorded["fleet_file"]), str(recorded["agent"]), int(recorded["seed"])
    if agent_name == SHARED_AGENT:
        from greenrl.fleet.shared_learn import train_shared_fleet

        return train_shared_fleet(fleet, cfg, agent_name, seed_value, run.parent, progress_bar, resume=run, ship=ship)
    return train_fleet(fleet, cfg, agent_name, seed_value, run.parent, ship, progress_bar, resume=run)


def fleet_player(agent: str, config: FleetConfig) -> FleetPlayer:
    """How ``agent``'s models play ``config`` (its trainer module's ``FleetPlayer``)."""
    if agent == SHARED_AGENT:
        from greenrl.fleet.shared_learn import shared_player

        return shared_player(config)
    from greenrl.fleet.learn import central_player

    return central_player(config)


def recorded_fleet_run(run: Path) -> tuple[dict[str, Any], FleetConfig]:
    """A fleet run's config.yaml and its fleet, refused if the fleet or node scenario file changed since.

    What ``--resume`` continues and ``greenrl.fleet.reselect`` scores must be the fleet the run trained on.
    """
    from greenrl.fleet.config import load_fleet
    from greenrl.fleet.selection import fleet_files_sha256

    where = str(run / "config.yaml")
    try:
        recorded = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(where, "file", f"cannot be read as a run's YAML ({exc})", "give a fleet run folder") from None
    keys = ("scenario", "fleet_file", "agent", "seed", "hyperparameters")
    if not isinstance(recorded, dict) or any(k not in recorded for k in keys):
        raise InputError(where, "file", f"lacks one of {', '.join(keys)}", "start a new run")
    config = load_fleet(str(recorded["fleet_file"]))
    if recorded.get("files_sha256") != fleet_files_sha256(config):
        raise InputError(
            where,
            "files_sha256",
            f"the fleet file {config.path} or its node scenario changed since this run started",
            "restore them, or start a new run",
        )
    return recorded, config
