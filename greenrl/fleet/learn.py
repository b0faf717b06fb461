"""A learned fleet controller: MaskablePPO on ``FleetEnv``, warm-started by cloning the planner, as a fleet policy.

``python -m greenrl.train --scenario fleet-default`` lands in ``train_fleet``: the agent file's
``fleet-default`` entry, training episodes on the training days (``FleetEnv`` split ``train``), a warm
start that clones a fleet baseline (``FleetTeacher``: the planner's plans as the env's per-pool action,
plus DAgger rounds; ``greenrl.imitation``'s cloning and critic fit), PPO, model selection on the
validation days (10-11: ``validation_day``) against the planner there, and the held-out days (12-13)
evaluated once at the end. ``LearnedFleet`` plays an exported controller (or an SB3 model) as a
``FleetPolicy``, so ``python -m greenrl.fleet.evaluate`` ranks it with the baselines.

Public names: FleetTeacher, LearnedFleet, GuardedFleet, collect_fleet_demonstrations, load_learned, ship_verdict,
train_fleet, SHIP_MIN_ATTAINMENT.
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
from greenrl.fleet.cluster import FleetAction, FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.days import fleet_day, validation_day, validation_windows_s
from greenrl.fleet.env import FleetCodec, FleetEnv
from greenrl.fleet.policies import FleetPolicy, make_policy
from greenrl.fleet.rollout import run_policy
from greenrl.imitation import Demonstrations
from greenrl.ioutil import atomic_write_text
from greenrl.train_setup import build_model, warm_start

__all__ = [
    "FleetTeacher",
    "GuardedFleet",
    "LearnedFleet",
    "collect_fleet_demonstrations",
    "SHIP_MIN_ATTAINMENT",
    "load_learned",
    "ship_verdict",
    "train_fleet",
]

logger = logging.getLogger(__name__)


class FleetTeacher:
    """A fleet baseline (``planner``, ``oracle``) driven through ``FleetEnv``: its plan as the env's action.

    The baseline sees every node interval's snapshot as in ``run_policy``; at each fleet decision its plan
    (``policy.plan``, else the fleet action it returns) becomes the nearest per-pool action
    (``FleetCodec.from_slots``). With ``student``, the student's action is taken and the teacher only
    labels the state (DAgger).
    """

    def __init__(self, teacher: str, student: Any = None) -> None:
        self.teacher_name, self.student = teacher, student
        self.obs: list[npt.NDArray[np.float32]] = []
        self.labels: list[npt.NDArray[np.int64]] = []

    def decide(self, env: FleetEnv) -> FleetAction:
        """The teacher's fleet action for the env's state (after ``reset`` or ``step``; the sim's when it keeps it)."""
        sim, spd = env.sim, env.config.control.steps_per_decision
        action: FleetAction | None = None
        if env.t == 0:
            self.policy: FleetPolicy = make_policy(self.teacher_name)
            self.policy.reset(sim)
            action = self.policy.act(sim, None, 0)
        else:
            for i, snap in enumerate(env.snaps):
                action = self.policy.act(sim, snap, (env.t - 1) * spd + i + 1) or action
        return action or sim.action

    def label(self, env: FleetEnv) -> npt.NDArray[np.int64]:
        """The teacher's per-pool action for the env's state: its plan's slots, else its fleet action."""
        action = self.decide(env)
        plan = getattr(self.policy, "plan", None)
        if plan is not None:
            return env.codec.from_slots(plan.slots)
        return env.codec.from_action(action)

    def act(self, env: FleetEnv, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        """Label the state, record it, and return the action to take (the student's, else the teacher's)."""
        wanted = self.label(env)
        self.obs.append(obs)
        self.labels.append(wanted)
        if self.student is None:
            return wanted
        taken, _ = self.student.predict(obs, deterministic=True)
        return np.asarray(taken, dtype=np.int64)


def collect_fleet_demonstrations(
    fleet: str,
    teacher: str,
    episodes: int,
    seed: int,
    student: Any = None,
    slo_weight: float = 100.0,
    window_s: float | None = None,
) -> Demonstrations:
    """Roll out ``episodes`` training episodes labelled by the ``teacher`` fleet baseline (episode i: seed + i)."""
    env = FleetEnv(fleet, "train", slo_weight=slo_weight, window_s=window_s)
    labelled = FleetTeacher(teacher, student)
    rewards: list[float] = []
    ends: list[bool] = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action = labelled.act(env, obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            rewards.append(reward)
            ends.append(done)
    n = int(sum(env.codec.nvec))
    return Demonstrations(
        np.array(labelled.obs, dtype=np.float32),
        np.array(labelled.labels, dtype=np.int64),
        np.ones((len(rewards), n), dtype=bool),
        np.array(rewards),
        np.array(ends, dtype=bool),
    )


class LearnedFleet:
    """A trained fleet controller as a ``FleetPolicy``: every fleet interval, observe, predict, act.

    Args:
        predictor: anything with SB3's ``predict`` over ``FleetEnv`` observations (an exported
            ``ControllerPolicy`` or a MaskablePPO model).
        name: the policy's name in tables.
        guarded: apply ``FleetCodec.guard`` between decisions, as ``FleetEnv`` does (trained with it).
    """

    def __init__(self, predictor: Any, name: str = "learned", guarded: bool = True) -> None:
        self.predictor, self.name, self.guarded = predictor, name, guarded

    def reset(self, sim: FleetSim) -> None:
        """Build the codec for the sim's fleet; forget the last interval."""
        self.codec = FleetCodec(sim.config, sim)
        self.snaps: list[FleetSnapshot] = []

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """Collect snapshots; at each fleet decision, the predictor's action."""
        if snapshot is not None:
            self.snaps.append(snapshot)
        if step % sim.config.control.steps_per_decision:
            return self.codec.guard(sim, snapshot) if self.guarded and snapshot is not None else None
        start_hour = (sim.trace.start_hour or 0.0) if sim.trace is not None else 0.0
        obs = self.codec.observe(sim, self.snaps, start_hour)
        self.snaps = []
        action, _ = self.predictor.predict(obs, deterministic=True)
        return self.codec.to_fleet(sim, action)


class GuardedFleet:
    """A fleet baseline with ``FleetCodec.guard`` between its actions: the learned controller's fast rule.

    Every node interval in which the wrapped policy changes nothing, the guard may boost a node's clock or
    take a parked node back (as ``FleetEnv`` does for the agent), so the comparison with a learned
    controller is on the same hierarchy. Named ``<name>+guard``.
    """

    def __init__(self, inner: FleetPolicy) -> None:
        self.inner = inner
        self.name = f"{inner.name}+guard"

    def reset(self, sim: FleetSim) -> None:
        """Reset the wrapped policy; build the codec."""
        self.inner.reset(sim)
        self.codec = FleetCodec(sim.config, sim)

    def act(self, sim: FleetSim, snapshot: FleetSnapshot | None, step: int) -> FleetAction | None:
        """The wrapped policy's action, else the guard's."""
        action = self.inner.act(sim, snapshot, step)
        if action is None and snapshot is not None:
            return self.codec.guard(sim, snapshot)
        return action


def load_learned(path: str | Path, name: str | None = None) -> LearnedFleet:
    """A ``LearnedFleet`` from an exported controller folder (``controller.json``) or an SB3 ``.zip``."""
    path = Path(path)
    if path.suffix == ".zip":
        from sb3_contrib import MaskablePPO

        return LearnedFleet(MaskablePPO.load(path, device="cpu"), name or "learned")
    from greenrl.policy import load_controller

    controller = load_controller(path)
    if controller.manifest.get("kind") != "fleet":
        raise InputError(str(path), "kind", "not a fleet controller", "give a controller trained on a fleet")
    return LearnedFleet(controller, name or "learned")


def _score(row: dict[str, Any], config: FleetConfig, slo_weight: float) -> float:
    """The env's return on a whole day, with each interval's miss share replaced by the day's."""
    s = config.scenario
    from greenrl.catalog import load_gpu

    ref_w = config.nodes * s.node.gpus * load_gpu(s.node.gpu).tdp_w
    steps = 86400.0 / config.control.fleet_interval_s
    energy = row["energy_kwh"] * 3.6e6 / (ref_w * config.control.fleet_interval_s)
    return -energy - slo_weight * steps * row["missed"] / max(1, row["requests"])


SHIP_MIN_ATTAINMENT = 0.99
"""A fleet controller ships only if it meets at least this SLO attainment on the validation days."""


def ship_verdict(selected: dict[str, Any], planner: dict[str, Any]) -> tuple[bool, str]:
    """Whether a selected controller may ship, and why: what an operator would accept on the validation days.

    It must meet ``SHIP_MIN_ATTAINMENT`` and not be dominated by the planner (less energy, or higher
    attainment; the planner alone may sit below the floor). The held-out days never decide it.
    """
    att, energy = selected["slo_attainment"], selected["energy_kwh"]
    figures = f"validation {energy:.1f} kWh at {100 * att:.2f}% (planner {planner['energy_kwh']:.1f} kWh at "
    figures += f"{100 * planner['slo_attainment']:.2f}%)"
    if att < SHIP_MIN_ATTAINMENT:
        return False, f"attainment below {100 * SHIP_MIN_ATTAINMENT:g}%: {figures}"
    if energy >= planner["energy_kwh"] and att <= planner["slo_attainment"]:
        return False, f"dominated by the planner: {figures}"
    return True, f"meets {100 * SHIP_MIN_ATTAINMENT:g}% and is not dominated by the planner: {figures}"


def fleet_files_sha256(config: FleetConfig) -> dict[str, str]:
    """sha256 of the fleet YAML and of its node scenario YAML: a resumed run must train on the same fleet."""
    import hashlib

    paths = (config.path, config.scenario.path)
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _days(config: FleetConfig, policy: Any, split: str) -> dict[str, Any]:
    """Energy, requests, missed and attainment of ``policy`` over the validation or held-out days."""
    sim = FleetSim(config)
    if split == "val":
        traces = [validation_day(config, i) for i in range(len(validation_windows_s(config)))]
    else:
        traces = [fleet_day(config, i) for i in range(len(config.scenario.workload.eval_windows_s))]
    rows = [run_policy(sim, policy, t) for t in traces]
    total = {k: sum(r[k] for r in rows) for k in ("energy_kwh", "requests", "missed")}
    total["slo_attainment"] = 1.0 - total["missed"] / max(1, total["requests"])
    total["days"] = rows
    return total


def train_fleet(
    fleet: str,
    cfg: dict[str, Any],
    agent: str = "maskable_ppo",
    seed: int = 0,
    out: Path = Path("runs"),
    ship: bool = False,
    progress_bar: bool = False,
    argv: list[str] | None = None,
    resume: Path | None = None,
) -> Path:
    """Warm start, PPO, model selection on the validation days, held-out evaluation, export; the run folder.

    Args:
        fleet: the fleet's name (``envs/fleets/<fleet>.yaml``).
        cfg: the agent file's resolved entry (``greenrl.agent_config.agent_config(agent, "fleet-<fleet>")``).
        agent: ``maskable_ppo`` (the only agent for a fleet).
        seed: training seed.
        out: parent of the run folder.
        ship: also export to ``checkpoints/fleet-<fleet>/<agent>_s<seed>/`` if :func:`ship_verdict` passes it.
        progress_bar: SB3's progress bar.
        argv: the ``greenrl.train`` command line recorded in command.txt (default: this process's).
        resume: a fleet run folder to continue from its checkpoint (saved at every validation and on
            Ctrl-C; the caller checked its hash and passes the recorded ``cfg``, ``agent`` and ``seed``).
            Its warm start is not repeated; the validations so far and the best model are kept.
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize
    from torch.distributions import Distribution

    from greenrl.policy import export_controller
    from greenrl.train_resume import save_model

    if agent != "maskable_ppo":  # maskable_ppo_shared: greenrl.train sends it to greenrl.fleet.shared_learn
        raise InputError(
            "--agent",
            "agent",
            f"a fleet trains with maskable_ppo or maskable_ppo_shared, not {agent}",
            "leave --agent out",
        )
    Distribution.set_default_validate_args(False)
    config = load_fleet(fleet)
    scenario = f"fleet-{config.name}"
    slo_weight = float(cfg.get("slo_weight", 100.0))
    window_s = float(cfg["episode_s"]) if "episode_s" in cfg else None
    name = f"{agent}_s{seed}"
    if resume is None:
        run = Path(out) / scenario / f"{name}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run.mkdir(parents=True, exist_ok=False)
        recorded = {"scenario": scenario, "fleet_file": config.path, "agent": agent, "seed": seed}
        recorded["files_sha256"] = fleet_files_sha256(config)
        atomic_write_text(run / "config.yaml", yaml.safe_dump(recorded | {"hyperparameters": cfg}, sort_keys=False))
        atomic_write_text(
            run / "command.txt",
            shlex.join([sys.executable, "-m", "greenrl.train", *(sys.argv[1:] if argv is None else argv)]) + "\n",
        )
    else:
        run = Path(resume)
        recorded = yaml.safe_load((run / "config.yaml").read_text())
        if recorded.get("files_sha256") != fleet_files_sha256(config):
            raise InputError(
                str(run / "config.yaml"),
                "files_sha256",
                f"the fleet file {config.path} or its node scenario changed since this run started",
                "restore them, or start a new run",
            )
    started = time.perf_counter()

    def factory() -> FleetEnv:
        return FleetEnv(config.path, "train", slo_weight=slo_weight, window_s=window_s)

    monitored = VecMonitor(DummyVecEnv([factory for _ in range(int(cfg["n_envs"]))]))
    monitored.seed(seed)
    env = VecNormalize(monitored, norm_obs=False, norm_reward=True, gamma=float(cfg["gamma"]))
    evals: list[dict[str, Any]] = []
    best = {"score": -np.inf}
    if resume is not None:
        model = MaskablePPO.load(run / "checkpoint" / "model.zip", env=env, device="cpu")
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        env.ret_rms.mean, env.ret_rms.var, env.ret_rms.count = (
            state["reward_norm"][k] for k in ("mean", "var", "count")
        )
        evals[:] = state["validation"]
        best["score"] = max((e["score"] for e in evals), default=-np.inf)
        print(f"resuming {run} at {model.num_timesteps} timesteps", flush=True)
    else:
        model = build_model(MaskablePPO, env, cfg, seed, run)

    def checkpoint() -> None:
        """The model, the reward normalization and the validations so far: what ``--resume`` continues from."""
        save_model(model, run / "checkpoint" / "model.zip")
        norm = {"mean": float(env.ret_rms.mean), "var": float(env.ret_rms.var), "count": float(env.ret_rms.count)}
        state = {"timesteps": int(model.num_timesteps), "reward_norm": norm, "validation": evals}
        atomic_write_text(run / "checkpoint" / "state.json", json.dumps(state, default=float) + "\n")

    teacher = cfg.get("warm_start")
    if resume is None and teacher and teacher != "none":

        def collect(episodes: int, base_seed: int, student: Any) -> Any:
            return collect_fleet_demonstrations(
                config.path, str(teacher), episodes, base_seed, student, slo_weight, window_s
            )

        report = warm_start(model, env, collect, cfg, seed, run, default_episodes=16)
        logger.info("warm start: %s", report)

    every = int(cfg.get("eval_every_steps", 10_000))

    def validate(steps: int) -> None:
        row = _days(config, LearnedFleet(model), "val")
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
        checkpoint()

    class Validate(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next = (model.num_timesteps // every + 1) * every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += every
                validate(self.num_timesteps)
            return True

    validating = int(cfg.get("val_episodes", 2)) > 0  # 0: no validation or held-out days (a smoke test)
    if validating and resume is None:
        validate(0)
    t_learn = time.perf_counter()
    callback = Validate() if validating else None
    remaining = int(cfg["total_timesteps"]) - model.num_timesteps
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
        checkpoint()
        env.close()
        print(f"interrupted at {model.num_timesteps} timesteps; resume with: python -m greenrl.train --resume {run}")
        return run
    learn_s = time.perf_counter() - t_learn
    if validating and (not evals or evals[-1]["timesteps"] != model.num_timesteps):
        validate(model.num_timesteps)
    checkpoint()
    env.close()

    if validating:
        best_model = MaskablePPO.load(run / "best" / "model.zip", device="cpu")
        val_planner: dict[str, Any] = _days(config, make_policy("planner"), "val")
        val_best: dict[str, Any] = next(e for e in evals if e["score"] == best["score"])
        shippable, ship_reason = ship_verdict(val_best, val_planner)
        held_out: dict[str, Any] = _days(config, LearnedFleet(best_model), "eval")
        static_max: dict[str, Any] = _days(config, make_policy("static-max"), "eval")
        # the keys of a node run's summary.json, so that greenrl.sweep reports fleets the same way
        versus = {
            "energy_saving_vs_static_max": 1.0 - held_out["energy_kwh"] / static_max["energy_kwh"],
            "slo_attainment_delta": held_out["slo_attainment"] - static_max["slo_attainment"],
            "eval_trained": {k: held_out[k] for k in ("energy_kwh", "slo_attainment", "missed")},
            "eval_static_max": {k: static_max[k] for k in ("energy_kwh", "slo_attainment", "missed")},
        }
    else:
        best_model, val_planner, val_best, held_out, versus = model, {}, {}, {}, {}
        shippable, ship_reason = False, "not validated (val_episodes 0)"
    summary = {
        "timesteps": int(model.num_timesteps),
        "wall_s": round(time.perf_counter() - started, 1),
        "learn_s": round(learn_s, 1),
        "ppo_steps_per_s": round(model.num_timesteps / max(learn_s, 1e-9), 1),
        "validation": evals,
        "selected": val_best,
        "validation_planner": {k: v for k, v in val_planner.items() if k != "days"},
        "shippable": shippable,
        "ship_verdict": ship_reason,
        "held_out": held_out,
        **versus,
    }
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    extra = {
        "seed": seed,
        "agent": agent,
        "trained_timesteps": int(model.num_timesteps),
        "slo_weight": slo_weight,
        "validation": {"selected": val_best, "planner": summary["validation_planner"]},
    }
    probe = FleetEnv(config.path, "eval")
    export_controller(best_model, probe, run / "controller", extra)
    if ship and shippable:
        export_controller(best_model, probe, Path("checkpoints") / scenario / name, extra)
    elif ship:
        print(f"not shipped: {ship_reason}", flush=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "validation"}, indent=1, default=float), flush=True)
    return run
