"""Warm-starting PPO from a heuristic teacher: demonstrations, behaviour cloning, a critic fitted to them.

PPO started from a near-uniform policy on the default scenario settles on a static clock (docs/training.md):
the SLO penalty is sparse and bursty, and the dynamic policies that beat a static clock are far from
where exploration starts. So training first imitates a baseline that already meets the SLOs (the
``planner``, DynamoLLM-style) and then lets PPO improve on it with the scenario's reward.

* ``collect_demonstrations``: DAgger-style (Ross et al., AISTATS 2011) rollouts on training episodes:
  in round 0 the teacher acts; in later rounds the student acts and the teacher labels the states the
  student visits, so the student learns to recover from its own mistakes.
* ``behaviour_clone``: maximum likelihood of the teacher's actions under the policy's (masked)
  distribution, with Adam.
* ``fit_critic``: the value head regressed on the demonstrations' discounted returns (in the units of
  the reward normalization), so PPO's first advantages are not noise that would undo the cloning.

Public names: Demonstrations, collect_demonstrations, behaviour_clone, fit_critic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.env.scenario import Scenario
from greenrl.env.serving_env import ServingEnv
from greenrl.rollout import rollout

__all__ = ["Demonstrations", "behaviour_clone", "collect_demonstrations", "fit_critic"]


@dataclass
class Demonstrations:
    """Observations, teacher actions, action masks and the rewards of the steps taken.

    Attributes:
        obs: (n, fields) observations.
        actions: (n, knobs) teacher action indices (the labels).
        masks: (n, sum(nvec)) MaskablePPO action masks.
        rewards: (n,) reward of the action really taken in that state.
        episode_end: (n,) True on the last step of an episode.
    """

    obs: npt.NDArray[np.float32]
    actions: npt.NDArray[np.int64]
    masks: npt.NDArray[np.bool_]
    rewards: npt.NDArray[np.float64]
    episode_end: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.obs)

    def __add__(self, other: Demonstrations) -> Demonstrations:
        return Demonstrations(
            np.concatenate([self.obs, other.obs]),
            np.concatenate([self.actions, other.actions]),
            np.concatenate([self.masks, other.masks]),
            np.concatenate([self.rewards, other.rewards]),
            np.concatenate([self.episode_end, other.episode_end]),
        )

    def agreement(self, policy: Any) -> float:
        """Share of states where ``policy`` picks the teacher's action on every knob (deterministic)."""
        actions, _ = policy.predict(self.obs, deterministic=True, action_masks=self.masks)
        return float(np.mean(np.all(np.asarray(actions) == self.actions, axis=1)))


class _Labelled:
    """Acts with the student (DAgger) or else the teacher, and records the teacher's label of every state.

    A policy for ``greenrl.rollout``: ``bind`` builds the teacher baseline for the episode's env, seeded
    by ``seed`` (set before each episode). The records run on across episodes.
    """

    def __init__(self, teacher: str, student: Any) -> None:
        self.teacher_name, self.student = teacher, student
        self.seed = 0
        self.obs: list[npt.NDArray[np.float32]] = []
        self.labels: list[npt.NDArray[np.int64]] = []
        self.masks: list[npt.NDArray[np.bool_]] = []

    def bind(self, env: ServingEnv) -> None:
        """The teacher, bound to ``env`` and seeded for this episode."""
        from greenrl.baselines import make_baseline

        self.env = env
        self.teacher = make_baseline(self.teacher_name, env, seed=self.seed)

    def predict(
        self,
        observation: npt.NDArray[np.float32],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        action_masks: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[Any, Any]:
        """The action taken (the student's, else the teacher's); the teacher's is recorded as the label."""
        masks = self.env.action_masks() if action_masks is None else action_masks
        wanted, _ = self.teacher.predict(observation, deterministic=True)
        taken = wanted
        if self.student is not None:
            taken, _ = self.student.predict(observation, deterministic=True, action_masks=masks)
            self.teacher.current = self.env.knobs_for(taken)  # the teacher plans from the knobs really in force
        self.obs.append(observation)
        self.labels.append(np.asarray(wanted, dtype=np.int64))
        self.masks.append(masks)
        return taken, state


def collect_demonstrations(
    scenario: Scenario,
    teacher: str,
    episodes: int,
    seed: int,
    student: Any = None,
) -> Demonstrations:
    """Roll out ``episodes`` training episodes labelled by the ``teacher`` baseline.

    With ``student`` (anything with SB3's ``predict``), the student picks the actions and the teacher
    only labels them (DAgger); otherwise the teacher acts. Episode ``i`` uses seed ``seed + i``.
    """
    env = ServingEnv(scenario, "train")
    labelled = _Labelled(teacher, student)
    rewards: list[float] = []
    ends: list[bool] = []
    for i in range(episodes):
        labelled.seed = seed + i
        for step in rollout(labelled, env, seed=seed + i).steps:
            rewards.append(step.reward)
            ends.append(step.done)
    env.close()
    return Demonstrations(
        np.array(labelled.obs, dtype=np.float32),
        np.array(labelled.labels, dtype=np.int64),
        np.array(labelled.masks, dtype=bool),
        np.array(rewards),
        np.array(ends, dtype=bool),
    )


def behaviour_clone(
    policy: Any, demos: Demonstrations, epochs: int, seed: int, lr: float = 1e-3, batch_size: int = 256
) -> float:
    """Fit the actor of an SB3 (Maskable)PPO ``policy`` to the teacher's actions; returns the final loss (nats).

    Only the actor (shared features, policy MLP, action head) is trained; the critic is left to
    ``fit_critic``.
    """
    import torch

    masked = "action_masks" in policy.get_distribution.__code__.co_varnames
    torch.manual_seed(seed)
    obs = torch.as_tensor(demos.obs)
    actions = torch.as_tensor(demos.actions)
    params = [p for name, p in policy.named_parameters() if not name.startswith(("value_net", "mlp_extractor.value"))]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(demos)
    loss_mean = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            kwargs = {"action_masks": demos.masks[idx.numpy()]} if masked else {}
            dist = policy.get_distribution(obs[idx], **kwargs)
            loss = -dist.log_prob(actions[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        loss_mean = total / n
    return loss_mean


def discounted_returns(
    rewards: npt.NDArray[np.float64], episode_end: npt.NDArray[np.bool_], gamma: float
) -> npt.NDArray[np.float64]:
    """Return-to-go of each step within its episode.

    Example:
        >>> discounted_returns(np.array([1.0, 1.0, 2.0]), np.array([False, True, True]), 0.5).tolist()
        [1.5, 1.0, 2.0]
    """
    out = np.zeros_like(rewards)
    running = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        if episode_end[i]:
            running = 0.0
        running = rewards[i] + gamma * running
        out[i] = running
    return out


def running_return_stats(
    rewards: npt.NDArray[np.float64], episode_end: npt.NDArray[np.bool_], gamma: float
) -> tuple[float, float, int]:
    """Mean, variance and count of the running discounted return, as ``VecNormalize``'s ``ret_rms`` tracks it."""
    running = 0.0
    values = np.empty_like(rewards)
    for i, r in enumerate(rewards):
        running = running * gamma + r
        values[i] = running
        if episode_end[i]:
            running = 0.0
    return float(values.mean()), float(values.var()), len(values)


def fit_critic(
    policy: Any, demos: Demonstrations, gamma: float, reward_scale: float, epochs: int, seed: int, lr: float = 1e-3
) -> float:
    """Regress the value head on the demonstrations' discounted returns times ``reward_scale``; returns the MSE."""
    import torch

    torch.manual_seed(seed)
    obs = torch.as_tensor(demos.obs)
    target = torch.as_tensor(discounted_returns(demos.rewards, demos.episode_end, gamma) * reward_scale).float()
    params = [p for name, p in policy.named_parameters() if name.startswith(("value_net", "mlp_extractor.value"))]
    opt = torch.optim.Adam(params, lr=lr)
    n = len(demos)
    mse = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n)
        total = 0.0
        for start in range(0, n, 256):
            idx = order[start : start + 256]
            loss = torch.nn.functional.mse_loss(policy.predict_values(obs[idx]).squeeze(-1), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        mse = total / n
    return mse
