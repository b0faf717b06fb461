"""What every baseline shares: SB3's ``predict``, decoding the observation, the knob grid and layouts.

A baseline is bound to one ``ServingEnv`` (``bind(env)``, called by ``greenrl.rollout`` after
``env.reset()`` and before the episode's first ``predict``) and turns what it is entitled to see into a
``Knobs`` choice each interval; ``predict`` maps that choice to the env's ``MultiDiscrete`` action. It
reads the node only through the ``greenrl.core.Node`` protocol; one that needs a simulator says why in
``needs_simulator`` and is refused any other node.

Public names: Baseline, decode_obs, knob_values, nearest_value, feasible_configs.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from greenrl.core import ForkableNode, Knobs, fit_replicas
from greenrl.env.scenario import KNOB_NAMES, Scenario
from greenrl.env.serving_env import OBS_FIELDS, ServingEnv
from greenrl.errors import InputError

__all__ = ["Baseline", "decode_obs", "feasible_configs", "knob_values", "nearest_value"]


def decode_obs(observation: npt.ArrayLike) -> dict[str, float]:
    """The observation in physical units: each ``OBS_FIELDS`` entry times its scale.

    Fields the env clipped at +-10 scales stay clipped (e.g. ``waiting`` above 2560 requests reads 2560).

    Example:
        >>> import numpy as np
        >>> obs = np.zeros(len(OBS_FIELDS), dtype=np.float32)
        >>> obs[9] = 0.5  # tbt_mean_s is scaled by 0.1 s
        >>> round(decode_obs(obs)["tbt_mean_s"], 3)
        0.05
    """
    obs = np.asarray(observation, dtype=np.float64).reshape(-1)
    if obs.shape != (len(OBS_FIELDS),):
        raise InputError(
            "predict", "observation", f"expected {len(OBS_FIELDS)} fields, got shape {obs.shape}", "pass one env obs"
        )
    return {f.name: float(v) * f.scale for f, v in zip(OBS_FIELDS, obs, strict=True)}


def knob_values(env: ServingEnv, name: str) -> list[int]:
    """Values a knob may take in ``env`` (feasible TP degrees only).

    A knob the env does not expose keeps its initial value (``replicas`` then follows TP: GPUs / tp).
    """
    if name not in KNOB_NAMES:
        raise InputError("knob_values", "name", f"unknown knob {name!r}", f"use one of {', '.join(KNOB_NAMES)}")
    if name in env.knob_names:
        values = list(env.knob_values[env.knob_names.index(name)])
        if name == "tp":
            values = [v for v in values if v in env.feasible_tp]
        return values
    return [int(getattr(env.initial, name))]


def nearest_value(values: list[int], target: float) -> int:
    """The element of ``values`` closest to ``target`` (the lower one on a tie).

    Example:
        >>> nearest_value([1005, 1395, 1605, 1980], 1600.0)
        1605
    """
    return min(sorted(values), key=lambda v: abs(v - target))


def feasible_configs(env: ServingEnv) -> list[Knobs]:
    """Every distinct feasible configuration the env's action space can select (masked TP left out)."""
    masks = np.split(env.action_masks(), np.cumsum(env.action_space.nvec)[:-1])
    choices = [np.flatnonzero(m) for m in masks]
    out: dict[Knobs, None] = {}
    for idx in itertools.product(*choices):
        out.setdefault(env.knobs_for(np.array(idx, dtype=np.int64)), None)
    return list(out)


class Baseline(ABC):
    """A heuristic controller with SB3's ``predict`` over a ``ServingEnv``'s observation.

    Subclasses implement ``decide(signals)`` (signals: the decoded observation, see ``decode_obs``)
    and may read what the node itself would tell its operator through ``self.env`` (scenario, the node
    through the ``Node`` protocol, surrogate). ``predict`` counts intervals in ``self.step_index`` and
    remembers the last choice in ``self.current``.

    Args:
        env: the environment the baseline controls (re-bound before every episode by the rollout).
        seed: seed of any randomness the baseline uses.

    Raises:
        InputError: a baseline with ``needs_simulator`` bound to an env whose node cannot be forked.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    anchor: ClassVar[str] = ""
    deterministic: ClassVar[bool] = True
    needs_simulator: ClassVar[str | None] = None
    """Why the baseline needs a simulated node (one it can fork), or None: it runs on any node."""
    needs_knobs: ClassVar[tuple[str, ...]] = ()
    """Knobs the scenario must expose for the baseline to differ from static-max (e.g. ``replicas``)."""
    max_eval_steps: ClassVar[int | None] = None
    """Longest evaluation episode (intervals) the baseline is affordable on, or None: any."""

    @classmethod
    def applies_to(cls, scenario: Scenario) -> bool:
        """Whether ``greenrl.evaluate`` runs it on ``scenario`` by default (its knobs exist, its cost fits)."""
        knobs_ok = all(k in scenario.control.knobs for k in cls.needs_knobs)
        return knobs_ok and (cls.max_eval_steps is None or scenario.eval_steps <= cls.max_eval_steps)

    def __init__(self, env: ServingEnv, seed: int = 0) -> None:
        self.seed = seed
        self.bind(env)

    def bind(self, env: ServingEnv) -> None:
        """Attach to ``env`` for a new episode and clear per-episode state."""
        if self.needs_simulator is not None and not isinstance(env.node, ForkableNode):
            raise InputError(
                self.name,
                "node",
                f"needs a simulated node ({self.needs_simulator}), got a {type(env.node).__name__}",
                "run it on a scenario's simulated node; only the other baselines run on a live node",
            )
        self.env = env
        self.step_index = 0
        self.current: Knobs = env.initial
        self.reset_state()

    def reset_state(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Clear per-episode state (override when the baseline keeps any)."""

    def episode_env(self, env: ServingEnv) -> ServingEnv:
        """The env to run the episode in (default ``env``; ``static-best`` starts in its own configuration)."""
        return env

    @abstractmethod
    def decide(self, signals: dict[str, float]) -> Knobs:
        """The configuration for the next interval."""

    def predict(
        self,
        observation: npt.ArrayLike,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[npt.NDArray[np.int64], Any]:
        """SB3's signature: the action for one observation (or a batch of one); ``state`` is passed through."""
        obs = np.asarray(observation, dtype=np.float32)
        batched = obs.ndim == 2
        if batched and obs.shape[0] != 1:
            raise InputError(self.name, "observation", f"batch of {obs.shape[0]}", "baselines control one node")
        knobs = self.decide(decode_obs(obs[0] if batched else obs))
        self.current = knobs
        self.step_index += 1
        action = self.env.action_for(knobs)
        return (action[None, :] if batched else action), state

    # ------------------------------------------------------------------------------------ helpers

    def values(self, name: str) -> list[int]:
        """Allowed values of a knob in the bound env."""
        return knob_values(self.env, name)

    def with_knobs(self, base: Knobs, **changes: int) -> Knobs:
        """``base`` with knobs changed and each snapped to its nearest allowed value (replicas follow TP)."""
        knobs = replace(base, **changes)
        snapped = {n: nearest_value(self.values(n), getattr(knobs, n)) for n in self.env.knob_names}
        knobs = replace(knobs, **snapped)
        if "replicas" not in self.env.knob_names:
            knobs = replace(knobs, replicas=fit_replicas(None, knobs.tp, self.env.scenario.node.gpus))
        return knobs

    def layouts(self) -> list[tuple[int, int]]:
        """(tp, replicas) pairs the env allows that fit the node; without a replicas knob, as many as fit."""
        gpus = self.env.scenario.node.gpus
        out = []
        for tp in self.values("tp"):
            reps = self.values("replicas") if "replicas" in self.env.knob_names else [fit_replicas(None, tp, gpus)]
            out += [(tp, r) for r in reps if r >= 1 and tp * r <= gpus]
        return out
