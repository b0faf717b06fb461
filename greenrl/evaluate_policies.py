"""Which policies ``python -m greenrl.evaluate`` runs: names and paths -> specs -> policy objects.

A policy is a baseline by name, an exported controller folder (or a run folder holding ``controller/``)
or an SB3 ``.zip`` (PPO or MaskablePPO). An SB3 zip is a pickle, which runs code when loaded: it is
loaded only from a run folder that recorded its hash, or with ``trust_pickle`` (``--trust-pickle``; see
``greenrl.trust``). Labels are unique in a table (``ppo:<name>``, ``sb3:<name>``,
a ``#2`` suffix for repeats).

Public names: PolicySpec, resolve_policies, default_policies, load_policy, is_deterministic.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from greenrl.baselines import BASELINES, baseline_names, make_baseline
from greenrl.bundled import checkpoints_dir
from greenrl.core import Policy
from greenrl.env.scenario import load_scenario
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError

__all__ = ["PolicySpec", "default_policies", "is_deterministic", "load_policy", "resolve_policies"]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy to evaluate: its table label, kind and source (baseline name or path)."""

    label: str
    kind: Literal["baseline", "controller", "sb3"]
    source: str
    trust_pickle: bool = False


def _label_for(path: Path, kind: str) -> str:
    if kind == "controller":
        name = path.parent.name if path.name == "controller" else path.name
        return f"ppo:{name}"
    if path.stem == "model" and path.parent.name in ("best", "checkpoint"):  # runs/<run>/best/model.zip
        return f"sb3:{path.parent.parent.name}/{path.parent.name}"
    return f"sb3:{path.stem}"


def resolve_policies(items: list[str], trust_pickle: bool = False) -> list[PolicySpec]:
    """Baseline names, controller folders (or run folders holding ``controller/``) and SB3 zips -> specs.

    Raises:
        InputError: for a name that is neither a baseline nor an existing controller folder or zip, or a
            zip that no run folder vouches for (unless ``trust_pickle``; ``greenrl.trust.check_pickle``).
    """
    from greenrl.trust import check_pickle

    if not items:
        raise InputError("--policies", "policies", "no policy given", f"name baselines ({', '.join(BASELINES)})")
    specs: list[PolicySpec] = []
    for item in items:
        if item in BASELINES:
            specs.append(PolicySpec(item, "baseline", item))
            continue
        path = Path(item)
        if path.is_dir():
            folder = path if (path / "controller.json").is_file() else path / "controller"
            if not (folder / "controller.json").is_file():
                raise InputError(
                    "--policies",
                    item,
                    "folder has no controller.json (nor controller/controller.json)",
                    "give an exported controller folder, e.g. checkpoints/default/<name>",
                )
            specs.append(PolicySpec(_label_for(folder, "controller"), "controller", str(folder)))
        elif path.is_file() and path.suffix == ".zip":
            check_pickle(path, trust_pickle=trust_pickle)
            specs.append(PolicySpec(_label_for(path, "sb3"), "sb3", str(path), trust_pickle))
        else:
            raise InputError(
                "--policies",
                item,
                "unknown policy: not a baseline name, a controller folder or an SB3 .zip",
                f"use one of {', '.join(BASELINES)}, or a path to a controller folder or .zip",
            )
    seen: Counter[str] = Counter()
    unique = []
    for spec in specs:
        seen[spec.label] += 1
        label = spec.label if seen[spec.label] == 1 else f"{spec.label}#{seen[spec.label]}"
        unique.append(replace(spec, label=label))
    return unique


def default_policies(scenarios: list[str] | None = None) -> list[str]:
    """Controllers in ``checkpoints/<scenario>/*`` for each scenario (default: ``default``), then baselines.

    Only the baselines that apply to one of the scenarios (``Baseline.applies_to``: their knobs exist,
    their cost fits the episode length).
    """
    found: list[str] = []
    loaded = [load_scenario(s) for s in scenarios or ["default"]]
    for scenario in loaded:
        root = checkpoints_dir() / Path(scenario.path).stem
        found += sorted(str(p.parent) for p in root.glob("*/controller.json")) if root.is_dir() else []
    return found + [n for n in baseline_names() if any(BASELINES[n].applies_to(s) for s in loaded)]


def is_deterministic(spec: PolicySpec) -> bool:
    """Whether the policy acts the same on the same requests (every one but a stochastic baseline)."""
    return spec.kind != "baseline" or BASELINES[spec.source].deterministic


def _load_sb3(path: Path, env: ServingEnv) -> Any:
    """The SB3 model in ``path`` (MaskablePPO gets action masks from the rollout, as its ``predict`` takes them)."""
    where = str(path)
    if not zipfile.is_zipfile(path):
        raise InputError(where, "file", "not a zip file", "give a model saved by SB3's model.save()")
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
    except (KeyError, json.JSONDecodeError):
        raise InputError(where, "data", "no SB3 data entry", "give a model saved by SB3's model.save()") from None
    if not isinstance(data, dict) or not isinstance(data.get("policy_class", {}), dict):
        raise InputError(where, "data", "not an SB3 data entry", "give a model saved by SB3's model.save()")
    maskable = "maskable" in str(data.get("policy_class", {}).get("__module__", "")).lower()
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    model = (MaskablePPO if maskable else PPO).load(path, device="cpu")
    obs_shape = tuple(model.observation_space.shape or ())
    nvec = [int(n) for n in getattr(model.action_space, "nvec", [])]
    if obs_shape != env.observation_space.shape or nvec != [int(n) for n in env.action_space.nvec]:
        raise InputError(
            where,
            "spaces",
            f"model has observation {obs_shape} and actions {nvec}; scenario {env.scenario.name} has "
            f"{env.observation_space.shape} and {[int(n) for n in env.action_space.nvec]}",
            "use a model trained on this scenario",
        )
    return model


def load_policy(spec: PolicySpec, env: ServingEnv, seed: int) -> Policy:
    """The policy object of ``spec`` for ``env`` (the rollout binds a baseline to each episode's env)."""
    if spec.kind == "baseline":
        return make_baseline(spec.source, env, seed)
    if spec.kind == "controller":
        from greenrl.policy import load_controller

        return load_controller(spec.source, expect_env=env)
    from greenrl.trust import check_pickle

    check_pickle(spec.source, trust_pickle=spec.trust_pickle)  # again: the file may have changed since
    return _load_sb3(Path(spec.source), env)
