"""A learned fleet controller: MaskablePPO on ``FleetEnv``, warm-started by cloning the planner, as a fleet policy.

``python -m greenrl.train --scenario fleet-default`` lands in ``train_fleet``: the agent file's
``fleet-default`` entry, training episodes on the training days (``FleetEnv`` split ``train``), a warm
start that clones a fleet baseline (``FleetTeacher``: the planner's plans as the env's per-pool action,
plus DAgger rounds; ``greenrl.imitation``'s cloning and critic fit), PPO, model selection on the
validation days (10-11) against the planner there, and the held-out days (12-13) evaluated once at the
end (the loop is ``greenrl.fleet.trainer``'s, the selection ``greenrl.fleet.selection``'s).
``LearnedFleet`` plays an exported controller (or an SB3 model) as a ``FleetPolicy``, so
``python -m greenrl.fleet.evaluate`` ranks it with the baselines.

Public names: FleetTeacher, LearnedFleet, GuardedFleet, central_player, collect_fleet_demonstrations, load_learned,
train_fleet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.errors import InputError
from greenrl.fleet.cluster import FleetAction, FleetSim, FleetSnapshot
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.env import FleetCodec, FleetEnv
from greenrl.fleet.policies import FleetPolicy, make_policy
from greenrl.fleet.trainer import FleetPlayer, FleetRecipe, train_fleet_loop
from greenrl.imitation import Demonstrations

__all__ = [
    "FleetTeacher",
    "GuardedFleet",
    "LearnedFleet",
    "central_player",
    "collect_fleet_demonstrations",
    "load_learned",
    "train_fleet",
]


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
    # The teacher plays the categories' own shapes: the planner's capacity model fails on long outputs
    # (docs/fleet.md, "A category never trained on"), so an output spread is for PPO's episodes alone.
    env = FleetEnv(fleet, "train", slo_weight=slo_weight, window_s=window_s, output_spread=False)
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


def load_learned(path: str | Path, name: str | None = None) -> Any:
    """A fleet policy from an exported controller folder (``controller.json``) or an SB3 ``.zip`` (centralized).

    A centralized controller (manifest ``kind: fleet``) plays as ``LearnedFleet``; a policy shared by every
    node (``kind: fleet-node``) as ``greenrl.fleet.shared.SharedNodeFleet``.
    """
    path = Path(path)
    if path.suffix == ".zip":
        from sb3_contrib import MaskablePPO

        return LearnedFleet(MaskablePPO.load(path, device="cpu"), name or "learned")
    from greenrl.policy import load_controller

    controller = load_controller(path)
    kind = controller.manifest.get("kind")
    if kind == "fleet-node":  # one policy every node runs (greenrl.fleet.shared)
        from greenrl.fleet.shared import SharedNodeFleet

        return SharedNodeFleet(controller, name or "learned")
    if kind != "fleet":
        raise InputError(str(path), "kind", "not a fleet controller", "give a controller trained on a fleet")
    return LearnedFleet(controller, name or "learned")


def central_player(config: FleetConfig) -> FleetPlayer:
    """How a centralized model plays ``config``: ``LearnedFleet``, exported against ``FleetEnv``."""
    return FleetPlayer(f"fleet-{config.name}", LearnedFleet, lambda: FleetEnv(config.path, "eval"))


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
        ship: also export to ``checkpoints/fleet-<fleet>/<agent>_s<seed>/`` if ``greenrl.fleet.selection.ship_verdict``
            passes it.
        progress_bar: SB3's progress bar.
        argv: the ``greenrl.train`` command line recorded in command.txt (default: this process's).
        resume: a fleet run folder to continue from its checkpoint (saved at every validation and on
            Ctrl-C; the caller checked its hash and passes the recorded ``cfg``, ``agent`` and ``seed``).
            Its warm start is not repeated; the validations so far and the best model are kept.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    if agent != "maskable_ppo":  # maskable_ppo_shared: greenrl.train sends it to greenrl.fleet.shared_learn
        raise InputError(
            "--agent",
            "agent",
            f"a fleet trains with maskable_ppo or maskable_ppo_shared, not {agent}",
            "leave --agent out",
        )
    config = load_fleet(fleet)
    slo_weight = float(cfg.get("slo_weight", 100.0))
    window_s = float(cfg["episode_s"]) if "episode_s" in cfg else None

    def factory() -> FleetEnv:
        return FleetEnv(config.path, "train", slo_weight=slo_weight, window_s=window_s)

    def collect(episodes: int, base_seed: int, student: Any) -> Demonstrations:
        teacher = str(cfg["warm_start"])
        return collect_fleet_demonstrations(config.path, teacher, episodes, base_seed, student, slo_weight, window_s)

    recipe = FleetRecipe(
        player=central_player(config),
        training_envs=lambda n: DummyVecEnv([factory for _ in range(n)]),
        collect=collect,
    )
    return train_fleet_loop(config, cfg, agent, seed, out, recipe, progress_bar, argv, resume, ship).run
