"""Run folders that can be resumed safely: the recorded run, and checkpoints saved atomically with a sha256.

An SB3 checkpoint zip is a pickle: loading one runs its code. ``save_model`` writes the zip through a
temp file and ``os.replace`` (never a truncated checkpoint) and records its sha256 in the run's pickle
record (``greenrl.trust``, the one home of pickle trust); ``check_checkpoint`` refuses a zip whose hash is
not the recorded one unless the user trusts it.

Public names: check_checkpoint, check_resume_flags, is_fleet_run, recorded_run, resume_args, save_model.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from greenrl.env.scenario import load_scenario
from greenrl.errors import InputError
from greenrl.trust import check_pickle, record_pickle

__all__ = ["check_checkpoint", "check_resume_flags", "is_fleet_run", "recorded_run", "resume_args", "save_model"]


def recorded_run(run: Path) -> dict[str, Any]:
    """The run folder's config.yaml: the scenario, agent, seed and hyperparameters it was started with."""
    path = run / "config.yaml"
    if not path.is_file():
        raise InputError(
            "--resume",
            "resume",
            f"{run} has no config.yaml and no checkpoint: not a run folder",
            "give a run folder made by greenrl.train",
        )
    try:
        recorded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(str(path), "file", f"not readable ({type(err).__name__})", "start a new run") from None
    keys = ("scenario_file", "agent", "seed", "hyperparameters", "scenario_config")
    if not isinstance(recorded, dict) or any(k not in recorded for k in keys):
        raise InputError(str(path), "file", f"lacks one of {', '.join(keys)}", "start a new run")
    return recorded


def resume_args(
    recorded: dict[str, Any],
    scenario_name: str | None,
    agent: str | None,
    seed: int | None,
    overrides: dict[str, Any] | None,
    slo_weight: float | None,
) -> tuple[str, str, int]:
    """The recorded run's arguments; a given one that differs is an error (a run is one configuration)."""
    if scenario_name is not None and load_scenario(scenario_name).path != recorded["scenario_file"]:
        raise InputError(
            "--scenario",
            "scenario",
            f"the run was trained on {recorded['scenario_file']}, not {scenario_name}",
            "drop --scenario when resuming (the run's own is used)",
        )
    check_resume_flags(recorded, agent, seed, overrides, slo_weight)
    return str(recorded["scenario_file"]), str(recorded["agent"]), int(recorded["seed"])


def check_resume_flags(
    recorded: dict[str, Any],
    agent: str | None,
    seed: int | None,
    overrides: dict[str, Any] | None,
    slo_weight: float | None,
) -> None:
    """A resumed run (node or fleet) keeps its recorded agent, seed and hyperparameters; another flag is an error."""
    for flag, given, key in (("--agent", agent, "agent"), ("--seed", seed, "seed")):
        if given is not None and given != recorded[key]:
            raise InputError(flag, key, f"the run used {recorded[key]!r}, not {given!r}", f"drop {flag} when resuming")
    if overrides or slo_weight is not None:
        raise InputError(
            "--resume",
            "warm_start/slo_weight",
            "hyperparameters and the SLO weight are the run's own when resuming",
            "drop --warm-start and --slo-weight, or start a new run",
        )


def save_model(model: Any, path: Path, run: Path | None = None) -> None:
    """Save to memory, write the zip atomically (never a truncated file), then record its sha256.

    ``path`` is ``<run>/checkpoint/model.zip``, ``<run>/best/model.zip`` or, with ``run`` given, deeper
    (``<run>/snapshots/<timesteps>/model.zip``); the hash goes in the run's pickle record
    (``greenrl.trust``), which ``--resume`` and ``greenrl.evaluate`` check before unpickling.
    """
    buffer = io.BytesIO()
    model.save(buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record_pickle(path.parent.parent if run is None else run, path)


def check_checkpoint(path: Path, trust_pickle: bool) -> None:
    """Refuse a zip this run did not save as it is now (SB3 zips are pickles; ``greenrl.trust.check_pickle``)."""
    check_pickle(path, trust_pickle=trust_pickle, where="--resume")


def is_fleet_run(run: Path) -> bool:
    """Whether ``run`` is a fleet run folder (its config.yaml names a ``fleet-`` scenario)."""
    try:
        recorded = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False  # recorded_run says what is wrong
    return isinstance(recorded, dict) and str(recorded.get("scenario", "")).startswith("fleet-")
