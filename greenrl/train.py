"""``python -m greenrl.train``: train a PPO controller on a scenario and export it.

With no arguments: MaskablePPO on the default scenario (8 x H100, Llama-2-70B, Azure conversation
trace), a run folder under ``runs/``, tensorboard logs, periodic evaluation on held-out windows, the
best policy exported as a controller, and a final comparison with the static maximum configuration.

Public names: main, train, train_argv, evaluate_policy_on, agent_config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from greenrl import __version__
from greenrl.agent_config import AGENT_KEYS, AGENTS, agent_config
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import ServingEnv
from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.rollout import StaticPolicy, rollout
from greenrl.train_callbacks import make_callbacks
from greenrl.train_resume import check_checkpoint, is_fleet_run, recorded_run, resume_args, save_model
from greenrl.train_setup import build_model, warm_start

__all__ = ["agent_config", "evaluate_policy_on", "main", "train", "train_argv"]

VAL_SEED = 1_000_000
"""Validation episodes use training-split seeds ``VAL_SEED + i``, never drawn by the training envs' streams."""


def evaluate_policy_on(policy: Any, scenario: Scenario, seeds: int = 1, val_episodes: int = 0) -> dict[str, float]:
    """Run ``policy`` (deterministic, ``greenrl.rollout``) and total energy and SLO outcomes over the episodes.

    By default on every held-out evaluation window (``seeds`` seeds each). With ``val_episodes`` > 0,
    on that many validation episodes instead: training-split windows and rate scales drawn from the
    fixed seeds ``VAL_SEED + i``, which is what model selection uses, so the held-out windows stay unseen.
    """
    if val_episodes > 0:
        runs = [(ServingEnv(scenario, "train"), VAL_SEED + i) for i in range(val_episodes)]
    else:
        runs = [
            (ServingEnv(scenario, "eval", window), seed)
            for window in range(len(scenario.workload.eval_windows_s))
            for seed in range(seeds)
        ]
    energy = missed = finished = slo_met = ret = 0.0
    clocks = []
    for env, seed in runs:
        for step in rollout(policy, env, seed=seed).steps:  # one running total over every episode's steps
            info = step.info
            energy += info["energy_j"]
            missed += info["missed"]
            finished += info["finished"]
            slo_met += info["slo_met"]
            ret += step.reward
            clocks.append(info["knobs"].sm_clock_mhz)
        env.close()
    arrived = slo_met + missed
    return {
        "energy_kwh": energy / 3.6e6,
        "slo_attainment": slo_met / arrived if arrived else 1.0,
        "missed": missed,
        "return": ret,
        "mean_sm_clock_mhz": float(np.mean(clocks)),
    }


def _versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "greenrl": __version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
    }


def train(
    scenario_name: str | None = None,
    agent: str | None = None,
    seed: int | None = None,
    total_timesteps: int | None = None,
    n_envs: int | None = None,
    out: Path = Path("runs"),
    resume: Path | None = None,
    ship: bool = False,
    vec: str = "dummy",
    progress_bar: bool = True,
    overrides: dict[str, Any] | None = None,
    slo_weight: float | None = None,
    trust_pickle: bool = False,
    torch_threads: int | None = None,
    argv: list[str] | None = None,
) -> Path:
    """Train, evaluate against static-max, export the best controller; returns the run folder.

    ``overrides`` replace hyperparameters of the agent file (``--warm-start`` is one); ``slo_weight``
    replaces the scenario's ``reward.slo_weight`` (one point of an energy-SLO Pareto front).
    ``resume`` continues a run folder with its recorded scenario, agent, seed and hyperparameters
    (``total_timesteps`` and ``n_envs`` may be given to change them); its checkpoint must match the
    sha256 recorded when it was saved unless ``trust_pickle`` (an SB3 zip is a pickle: loading runs code).
    A run interrupted before its first checkpoint (during the warm start) starts over when resumed.
    ``torch_threads`` pins torch's intra-op threads (recorded in versions.json): the same seed then gives
    the same policy in any process with that thread count (``greenrl.sweep`` pins 1). ``argv`` is the
    ``greenrl.train`` command line recorded in command.txt (default: this process's).
    """
    if (resume is not None and is_fleet_run(Path(resume))) or str(scenario_name).startswith("fleet-"):
        from greenrl.fleet.train_entry import train_fleet_scenario

        given = (scenario_name, agent, seed, total_timesteps, n_envs, out, resume, ship, progress_bar, overrides)
        return train_fleet_scenario(*given, slo_weight, trust_pickle, torch_threads, argv)
    recorded: dict[str, Any] | None = None
    if resume is not None:
        recorded = recorded_run(Path(resume))
        scenario_name, agent, seed = resume_args(recorded, scenario_name, agent, seed, overrides, slo_weight)
    scenario_name = scenario_name or "default"
    agent = agent or "maskable_ppo"
    if agent == "maskable_ppo_shared":
        raise InputError("--agent", "agent", "maskable_ppo_shared trains fleets only", "use --scenario fleet-<name>")
    seed = 0 if seed is None else seed
    scenario = load_scenario(scenario_name)
    if recorded is not None:  # the run's reward (its --slo-weight, the agent file's slo_reference)
        reward = recorded["scenario_config"].get("reward", {})
        scenario = replace(scenario, reward=replace(scenario.reward, **reward))
    if slo_weight is not None:
        if not (slo_weight >= 0 and np.isfinite(slo_weight)):
            raise InputError("--slo-weight", "slo_weight", f"{slo_weight} is not >= 0", "e.g. 10")
        scenario = replace(scenario, reward=replace(scenario.reward, slo_weight=float(slo_weight)))
    cfg = agent_config(agent, scenario.name) if recorded is None else dict(recorded["hyperparameters"])
    for key, value in (overrides or {}).items():
        if key not in AGENT_KEYS:
            raise InputError("train", key, "unknown hyperparameter", f"use {', '.join(sorted(AGENT_KEYS))}")
        cfg[key] = value
    if "slo_reference" in cfg:
        # a training-time baseline for the SLO term (the scenario's default stays off: it halves env steps/s)
        scenario = replace(scenario, reward=replace(scenario.reward, slo_reference=str(cfg["slo_reference"])))
        if scenario.reward.slo_reference not in ("none", "static-max"):
            raise InputError(
                "agents", "slo_reference", f"unknown value {cfg['slo_reference']!r}", "use none or static-max"
            )
    if cfg.get("warm_start") in ("none", ""):
        cfg["warm_start"] = None
    if cfg.get("warm_start"):
        from greenrl.baselines import BASELINES

        if cfg["warm_start"] not in BASELINES:
            raise InputError(
                "--warm-start",
                "warm_start",
                f"unknown teacher {cfg['warm_start']!r}",
                f"use none or {', '.join(BASELINES)}",
            )
    if total_timesteps is not None:
        cfg["total_timesteps"] = total_timesteps
    if n_envs is not None:
        cfg["n_envs"] = n_envs
    for key in ("total_timesteps", "n_envs"):
        if int(cfg[key]) < 1:
            raise InputError(f"--{key.replace('_', '-')}", key, f"must be at least 1, got {cfg[key]}", "give 1 or more")
    name = f"{agent}_s{seed}" if slo_weight is None else f"{agent}_w{slo_weight:g}_s{seed}"
    if vec not in ("dummy", "subproc"):
        raise InputError("--vec", "vec", f"unknown vector env {vec!r}", "use dummy or subproc")

    import torch
    from torch.distributions import Distribution

    Distribution.set_default_validate_args(False)  # measured: +10-25% PPO throughput on this CPU
    if torch_threads is not None:
        if torch_threads < 1:
            raise InputError("--torch-threads", "torch_threads", f"must be at least 1, got {torch_threads}", "e.g. 1")
        torch.set_num_threads(torch_threads)
    elif vec == "subproc":
        torch.set_num_threads(1)

    if recorded is not None:
        run = Path(str(resume))
        if recorded["scenario_config"] != asdict(scenario):
            raise InputError(
                str(run / "config.yaml"),
                "scenario_config",
                f"the scenario file {scenario.path} changed since this run started",
                "restore it, or start a new run",
            )
        if not (run / "checkpoint" / "model.zip").is_file():  # interrupted before its first checkpoint
            print(f"{run} has no checkpoint yet: starting the run over in it", file=sys.stderr)
            resume = None
        else:
            check_checkpoint(run / "checkpoint" / "model.zip", trust_pickle)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run = Path(out) / scenario.name / f"{name}_{stamp}"
        run.mkdir(parents=True, exist_ok=False)
        resolved = {
            "scenario": scenario.name,
            "scenario_file": scenario.path,
            "agent": agent,
            "seed": seed,
            "hyperparameters": cfg,
            "scenario_config": asdict(scenario),
        }
        atomic_write_text(run / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        atomic_write_text(
            run / "command.txt",
            shlex.join([sys.executable, "-m", "greenrl.train", *(sys.argv[1:] if argv is None else argv)]) + "\n",
        )
        versions = _versions() | {"torch_threads": str(torch.get_num_threads())}
        atomic_write_text(run / "versions.json", json.dumps(versions, indent=1) + "\n")
    try:
        return _train_in(run, scenario, agent, seed, cfg, resume, vec, progress_bar, ship, name, trust_pickle)
    except KeyboardInterrupt:
        if (run / "checkpoint" / "model.zip").is_file():
            print(f"interrupted; resume with: python -m greenrl.train --resume {run}", file=sys.stderr)
        else:
            print(
                f"interrupted before the first checkpoint (during the warm start): nothing trained is kept; "
                f"start it over with: python -m greenrl.train --resume {run}",
                file=sys.stderr,
            )
        return run


def _train_in(
    run: Path,
    scenario: Scenario,
    agent: str,
    seed: int,
    cfg: dict[str, Any],
    resume: Path | None,
    vec: str,
    progress_bar: bool,
    ship: bool,
    name: str,
    trust_pickle: bool,
) -> Path:
    """Build the envs and the model (or load the checkpoint), learn, evaluate and export."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor, VecNormalize

    def factory(i: int) -> Any:
        return lambda: ServingEnv(scenario, "train")

    vec_cls = SubprocVecEnv if vec == "subproc" else DummyVecEnv
    monitored = VecMonitor(vec_cls([factory(i) for i in range(int(cfg["n_envs"]))]))
    monitored.seed(seed)
    # Rewards only: episode returns range over 4x between good and bad policies. Observations keep
    # their fixed scales, so exported controllers need no running statistics.
    env = VecNormalize(monitored, norm_obs=False, norm_reward=True, gamma=float(cfg["gamma"]))
    norm_file = run / "checkpoint" / "reward_norm.json"
    algo = MaskablePPO if agent == "maskable_ppo" else PPO
    if resume is not None:
        model = algo.load(run / "checkpoint" / "model.zip", env=env, device="cpu")
        done_steps = model.num_timesteps
        if norm_file.is_file():
            stats = json.loads(norm_file.read_text())
            env.ret_rms.mean, env.ret_rms.var, env.ret_rms.count = stats["mean"], stats["var"], stats["count"]
    else:
        model = build_model(algo, env, cfg, seed, run)
        done_steps = 0
        if cfg.get("warm_start"):
            _warm_start(model, env, scenario, cfg, seed, run)
        else:
            _bias_towards(model, ServingEnv(scenario, "train"), float(cfg.get("init_bias", 2.0)))
    callback = make_callbacks(
        run, scenario, cfg, evaluate_policy_on, report=not progress_bar or not sys.stdout.isatty()
    )
    remaining = int(cfg["total_timesteps"]) - done_steps
    started = time.perf_counter()
    interrupted = False
    try:
        if remaining > 0:
            model.learn(
                remaining,
                callback=callback,
                progress_bar=progress_bar,
                tb_log_name=agent,
                reset_num_timesteps=resume is None,
            )
    except KeyboardInterrupt:
        interrupted = True
    (run / "checkpoint").mkdir(exist_ok=True)
    save_model(model, run / "checkpoint" / "model.zip")  # resumable with --resume
    stats = {"mean": float(env.ret_rms.mean), "var": float(env.ret_rms.var), "count": float(env.ret_rms.count)}
    atomic_write_text(norm_file, json.dumps(stats))
    env.close()
    if interrupted:
        print(
            f"interrupted at {model.num_timesteps} timesteps; resume with: python -m greenrl.train --resume {run}",
            file=sys.stderr,
        )
        return run
    callback.evaluate()  # the final policy is a candidate too
    wall = time.perf_counter() - started

    check_checkpoint(run / "best" / "model.zip", trust_pickle)
    best_model = algo.load(run / "best" / "model.zip", device="cpu")
    eval_env = ServingEnv(scenario, "eval")
    static = StaticPolicy(eval_env.action_for(eval_env.initial))
    ours = evaluate_policy_on(best_model, scenario)
    base = evaluate_policy_on(static, scenario)
    summary = {
        "timesteps": int(model.num_timesteps),
        "train_wall_s": round(wall, 1),
        "seed": seed,
        "eval_trained": ours,
        "eval_static_max": base,
        "energy_saving_vs_static_max": 1.0 - ours["energy_kwh"] / base["energy_kwh"],
        "slo_attainment_delta": ours["slo_attainment"] - base["slo_attainment"],
    }
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=1) + "\n")

    from greenrl.policy import export_controller

    config_hash = (
        hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest() if (run / "config.yaml").exists() else ""
    )
    extra = {
        "seed": seed,
        "agent": agent,
        "trained_timesteps": int(model.num_timesteps),
        "slo_weight": scenario.reward.slo_weight,
        "config_sha256": config_hash,
        "eval": {
            "trained": ours,
            "static_max": base,
            "energy_saving_vs_static_max": summary["energy_saving_vs_static_max"],
        },
    }
    export_controller(best_model, eval_env, run / "controller", extra)
    if ship:
        export_controller(best_model, eval_env, Path("checkpoints") / scenario.name / name, extra)
    _print_summary(run, summary)
    return run


def _warm_start(model: Any, env: Any, scenario: Scenario, cfg: dict[str, Any], seed: int, run: Path) -> None:
    """Clone the ``warm_start`` teacher over the scenario's training episodes (``greenrl.train_setup.warm_start``)."""
    from greenrl.imitation import collect_demonstrations

    teacher = str(cfg["warm_start"])

    def collect(episodes: int, base_seed: int, student: Any) -> Any:
        return collect_demonstrations(scenario, teacher, episodes, base_seed, student=student)

    warm_start(model, env, collect, cfg, seed, run, default_episodes=200)


def _bias_towards(model: Any, env: ServingEnv, bias: float) -> None:
    """Start exploration near the scenario's initial knobs (the provider default).

    Adds ``bias`` to the initial logit of each knob's initial value, so a fresh policy picks it with
    probability e^b / (e^b + n - 1) (60% for 6 values at b = 2) instead of 1/n. Uniform exploration
    otherwise spends most early steps reloading weights after random TP changes.
    """
    import torch

    index = env.action_for(env.initial)
    offsets = np.concatenate([[0], np.cumsum(env.action_space.nvec)[:-1]])
    with torch.no_grad():
        for offset, i in zip(offsets, index, strict=True):
            model.policy.action_net.bias[int(offset + i)] += bias


def _print_summary(run: Path, s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out evaluation ({run})")
    for col in ("policy", "energy (kWh)", "SLO attainment", "missed", "mean SM clock (MHz)"):
        table.add_column(col)
    for name, k in (("trained", s["eval_trained"]), ("static-max", s["eval_static_max"])):
        table.add_row(
            name,
            f"{k['energy_kwh']:.3f}",
            f"{k['slo_attainment']:.4f}",
            f"{k['missed']:.0f}",
            f"{k['mean_sm_clock_mhz']:.0f}",
        )
    console = Console()
    console.print(table)
    verdict = "beats" if s["energy_saving_vs_static_max"] > 0 and s["slo_attainment_delta"] >= 0 else "does not beat"
    console.print(
        f"energy saving vs static-max: {100 * s['energy_saving_vs_static_max']:.1f}%, SLO attainment "
        f"change: {100 * s['slo_attainment_delta']:+.2f} points: the trained controller {verdict} static-max; "
        f"{s['timesteps']} timesteps in {s['train_wall_s']} s"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.train", description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario",
        default=None,
        help="scenario name (envs/*.yaml) or path (default: default); fleet-<name>: the fleet envs/fleets/<name>.yaml",
    )
    p.add_argument(
        "--agent", default=None, choices=sorted(AGENTS), help="hyperparameters: agents/*.yaml (default: maskable_ppo)"
    )
    p.add_argument("--seed", type=int, default=None, help="(default: 0)")
    p.add_argument("--total-timesteps", type=int, default=None)
    p.add_argument("--n-envs", type=int, default=None, help="parallel environments")
    p.add_argument("--vec", default="dummy", help="dummy (one process; fastest on 2 cores) or subproc")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run folder")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a run folder to continue with its recorded scenario, agent, seed and hyperparameters "
        "(--total-timesteps may extend it); its checkpoint zip must match the sha256 the run recorded",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a --resume checkpoint whose sha256 does not match the run's record (an SB3 zip is a "
        "pickle: loading it runs code; only for files you trust)",
    )
    p.add_argument("--ship", action="store_true", help="also export to checkpoints/<scenario>/<agent>_s<seed>/")
    p.add_argument(
        "--warm-start", default=None, help="baseline to clone before PPO (default: the agent file's; 'none': off)"
    )
    p.add_argument("--slo-weight", type=float, default=None, help="override the scenario's reward.slo_weight")
    p.add_argument(
        "--torch-threads", type=int, default=None, help="pin torch's intra-op threads (greenrl.sweep pins 1)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def train_argv(argv: list[str]) -> Path:
    """Train exactly as ``python -m greenrl.train <argv>`` does (recording ``argv`` in command.txt); the run folder."""
    args = _parser().parse_args(argv)
    return train(
        args.scenario,
        args.agent,
        args.seed,
        args.total_timesteps,
        args.n_envs,
        args.out,
        args.resume,
        args.ship,
        args.vec,
        not args.no_progress,
        {"warm_start": args.warm_start} if args.warm_start is not None else None,
        args.slo_weight,
        args.trust_pickle,
        args.torch_threads,
        list(argv),
    )


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags and train."""
    run = train_argv(sys.argv[1:] if argv is None else list(argv))
    return 0 if (run / "summary.json").is_file() else 130  # 130: interrupted (Ctrl-C), resumable


if __name__ == "__main__":
    raise SystemExit(main())
