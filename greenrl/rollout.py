"""The one episode loop: a policy with SB3's ``predict`` acting on a ``ServingEnv``.

Training validation, the evaluator, the imitation warm start, static-best's fixed runs, the oracle's
lookahead and the benchmarks all run episodes here: ``rollout`` resets the env and plays to the end,
``play`` continues from the env's current state for at most ``max_steps`` intervals.

A policy is anything with SB3's ``predict`` (``greenrl.core.Policy``). ``action_masks`` are passed only
where ``predict`` takes them (MaskablePPO). Two optional hooks serve baselines, called after the reset:
``episode_env(env)`` may return another env to play in (static-best starts in its own configuration;
that env is reset with the same seed), and ``bind(env)`` attaches the policy to the env it acts on.

Public names: rollout, play, Rollout, Step, StaticPolicy, RandomPolicy, takes_action_masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from greenrl.core import Policy
from greenrl.env.serving_env import ServingEnv

__all__ = ["RandomPolicy", "Rollout", "StaticPolicy", "Step", "play", "rollout", "takes_action_masks"]


@dataclass(frozen=True, slots=True)
class Step:
    """One control interval: what the policy saw and chose, and what the env returned.

    Attributes:
        obs: the observation the action was chosen on.
        action: the policy's action.
        reward: the env's reward for the interval.
        next_obs: the observation after the interval.
        done: the episode ended with this interval (truncated or terminated).
        info: the env's info (``energy_j``, ``missed``, ``knobs``, ``reward_terms``, ...).
    """

    obs: Any
    action: Any
    reward: float
    next_obs: npt.NDArray[np.float32]
    done: bool
    info: dict[str, Any]


def _running_sum(values: Iterable[float]) -> float:
    # A plain running sum (not math.fsum): totals equal those of a step-by-step `+=` to the last bit.
    total = 0.0
    for value in values:
        total += value
    return total


@dataclass(slots=True)
class Rollout:
    """Steps played in one env (an episode, or a lookahead), with totals over them.

    Attributes:
        env: the env the steps ran in (a policy's ``episode_env`` may have replaced the one given).
        steps: the steps in order.
    """

    env: ServingEnv
    steps: list[Step]

    @property
    def return_(self) -> float:
        """Sum of the rewards."""
        return _running_sum(s.reward for s in self.steps)

    @property
    def energy_j(self) -> float:
        """GPU energy of the node over the steps (J)."""
        return _running_sum(float(s.info["energy_j"]) for s in self.steps)

    @property
    def missed(self) -> float:
        """Requests that missed their SLO (at the episode end, unfinished ones too)."""
        return _running_sum(s.info["missed"] for s in self.steps)


def takes_action_masks(policy: Policy) -> bool:
    """Whether ``policy.predict`` accepts ``action_masks`` (by name or through ``**kwargs``).

    Example:
        >>> takes_action_masks(StaticPolicy(np.zeros(1, dtype=np.int64)))
        False
    """
    params = inspect.signature(policy.predict).parameters.values()
    return any(p.name == "action_masks" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def play(
    policy: Policy,
    env: ServingEnv,
    obs: Any = None,
    *,
    max_steps: int | None = None,
    deterministic: bool = True,
    on_step: Callable[[Step], None] | None = None,
) -> Rollout:
    """Let ``policy`` act on ``env`` from its current state until the episode ends or ``max_steps`` pass.

    Args:
        policy: anything with SB3's ``predict``.
        env: an env that has been reset.
        obs: the current observation (None for a policy that ignores it, e.g. a fixed schedule).
        max_steps: most intervals to play (None: to the episode's end).
        deterministic: passed to ``predict``.
        on_step: called with each step as soon as it is played.
    """
    masked = takes_action_masks(policy)
    steps: list[Step] = []
    done = False
    while not done and (max_steps is None or len(steps) < max_steps):
        kwargs = {"action_masks": env.action_masks()} if masked else {}
        action, _ = policy.predict(obs, deterministic=deterministic, **kwargs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        step = Step(obs, action, float(reward), next_obs, done, info)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        obs = next_obs
    return Rollout(env, steps)


def rollout(
    policy: Policy,
    env: ServingEnv,
    *,
    seed: int | None = None,
    deterministic: bool = True,
    on_step: Callable[[Step], None] | None = None,
) -> Rollout:
    """Run one whole episode of ``policy`` on ``env`` from ``env.reset(seed=seed)``.

    After the reset the policy's optional hooks run: ``episode_env(env)`` may return another env (then
    reset with the same seed and played instead), and ``bind(env)`` attaches the policy to the env it
    acts on. The caller closes the envs.

    Args:
        policy: anything with SB3's ``predict``.
        env: the env to reset and play.
        seed: the reset seed.
        deterministic: passed to ``predict``.
        on_step: called with each step as soon as it is played.
    """
    obs, _ = env.reset(seed=seed)
    episode_env = getattr(policy, "episode_env", None)
    if episode_env is not None:
        chosen = episode_env(env)
        if chosen is not env:
            env = chosen
            obs, _ = env.reset(seed=seed)
    bind = getattr(policy, "bind", None)
    if bind is not None:
        bind(env)
    return play(policy, env, obs, deterministic=deterministic, on_step=on_step)


class StaticPolicy:
    """Always the same action: a fixed configuration (static-max, a swept configuration, a ``fixed:`` run).

    Args:
        action: the action index of each knob (``ServingEnv.action_for(knobs)``).
    """

    def __init__(self, action: npt.NDArray[np.int64]) -> None:
        self.action = action

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[npt.NDArray[np.int64], Any]:
        """The fixed action; ``state`` is passed through."""
        return self.action, state


class RandomPolicy:
    """Seeded uniform actions over the whole action space (an infeasible TP included: the env maps it).

    Args:
        env: the env whose action space to draw from.
        seed: the generator's seed.
    """

    def __init__(self, env: ServingEnv, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nvec = env.action_space.nvec

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[npt.NDArray[np.int64], Any]:
        """A uniform draw per knob; ``state`` is passed through."""
        return self.rng.integers(self.nvec), state
