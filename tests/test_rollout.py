"""The one episode loop and what it needs of a node: hooks, masks, totals; any node scored alike."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from greenrl.baselines import make_baseline
from greenrl.core import ForkableNode
from greenrl.env import ServingEnv
from greenrl.errors import InputError
from greenrl.evaluate_cases import build_cases, case_env
from greenrl.rollout import StaticPolicy, play, rollout, takes_action_masks
from greenrl.sim import SimConfig, SimNode


class ProtocolOnlyNode:
    """A simulated node seen only through the ``Node`` protocol (no ``fork``, no request records), as a live one."""

    # what a node shows through the protocol (and ServingEnv's optional hooks); no fork, no records
    SHOWN = ("gpu_memory_utilization", "finished_output_tokens", "feasible_tp", "check", "trace")
    SHOWN += ("reset", "apply", "advance", "close")

    def __init__(self, inner: SimNode) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name not in self.SHOWN:
            raise AttributeError(name)
        return getattr(self._inner, name)


def _loaded_pair(steps: int | None = None) -> tuple[ServingEnv, ServingEnv]:
    """The same loaded tiny sample (8x its rate; ``steps`` intervals) on a simulated and a protocol-only node."""
    case = build_cases("tiny", 8.0, 1, "exact")[0]
    if steps is not None:
        episode = replace(case.scenario.episode, steps=steps, eval_steps=steps)  # an eval env plays eval_steps
        case = replace(case, scenario=replace(case.scenario, episode=episode))
    sim = case_env(case)
    other = ServingEnv(case.scenario, "eval", case.window, node=ProtocolOnlyNode(case_env(case).node))  # type: ignore[arg-type]
    return sim, other


class MaskTaker:
    def __init__(self, env: ServingEnv) -> None:
        self.action = env.action_for(env.initial)
        self.masks: list[np.ndarray] = []
        self.bound: list[ServingEnv] = []

    def bind(self, env: ServingEnv) -> None:
        self.bound.append(env)

    def predict(self, observation, state=None, episode_start=None, deterministic=True, action_masks=None):
        self.masks.append(action_masks)
        return self.action, state


def test_masks_go_only_to_policies_that_take_them_and_bind_follows_the_reset() -> None:
    env = ServingEnv("tiny", "eval", 0)
    taker = MaskTaker(env)
    episode = rollout(taker, env, seed=0)
    assert takes_action_masks(taker) and not takes_action_masks(StaticPolicy(taker.action))
    assert len(taker.masks) == len(episode.steps) == env.scenario.steps
    assert all(np.array_equal(m, env.action_masks()) for m in taker.masks)
    assert taker.bound == [env] and episode.env is env
    assert episode.steps[-1].done and not any(s.done for s in episode.steps[:-1])
    assert episode.energy_j == pytest.approx(sum(s.info["energy_j"] for s in episode.steps))


def test_play_continues_without_a_reset_and_stops_at_max_steps() -> None:
    env = ServingEnv("tiny", "eval", 0)
    whole = rollout(StaticPolicy(env.action_for(env.initial)), env, seed=0)
    obs, _ = env.reset(seed=0)
    first = play(StaticPolicy(env.action_for(env.initial)), env, obs, max_steps=3)
    rest = play(StaticPolicy(env.action_for(env.initial)), env, first.steps[-1].next_obs)
    assert len(first.steps) == 3 and len(first.steps) + len(rest.steps) == len(whole.steps)
    assert [s.reward for s in first.steps + rest.steps] == [s.reward for s in whole.steps]


def test_static_best_episode_env_replaces_the_env_and_is_reset_with_the_seed() -> None:
    env = ServingEnv("tiny", "eval", 1)
    policy = make_baseline("static-best", env)
    episode = rollout(policy, env, seed=0)
    assert episode.env is not env and episode.env.initial == policy.choice.knobs  # type: ignore[attr-defined]
    assert policy.env is episode.env  # bound to the env it acts on
    assert episode.energy_j == pytest.approx(policy.choice.energy_j)  # type: ignore[attr-defined]


def test_unfinished_requests_count_as_missed_on_any_node() -> None:
    sim, other = _loaded_pair(steps=3)  # ends with requests in flight
    assert isinstance(sim.node, ForkableNode) and not isinstance(other.node, ForkableNode)
    runs = [rollout(StaticPolicy(e.action_for(e.initial)), e, seed=0) for e in (sim, other)]
    assert [s.info["missed"] for s in runs[0].steps] == [s.info["missed"] for s in runs[1].steps]
    assert [s.reward for s in runs[0].steps] == [s.reward for s in runs[1].steps]
    counts = sim.node.state_counts()  # type: ignore[attr-defined]
    unfinished = counts["running"] + counts["waiting"]
    assert unfinished > 0 and runs[1].steps[-1].info["missed"] >= unfinished


def test_a_model_based_baseline_acts_alike_through_the_protocol_alone() -> None:
    sim, other = _loaded_pair()
    runs = [rollout(make_baseline("planner", e), e, seed=0) for e in (sim, other)]
    assert [s.info["knobs"] for s in runs[0].steps] == [s.info["knobs"] for s in runs[1].steps]
    assert len({s.info["knobs"].sm_clock_mhz for s in runs[0].steps}) > 1  # it really plans


@pytest.mark.parametrize("name", ["oracle", "static-best"])
def test_baselines_that_need_the_simulator_refuse_other_nodes(name: str) -> None:
    _, other = _loaded_pair()
    with pytest.raises(InputError) as err:
        make_baseline(name, other)
    assert name in str(err.value) and "simulated node" in str(err.value) and "ProtocolOnlyNode" in str(err.value)


def test_live_node_speaks_the_protocol_offline() -> None:
    from greenrl.live.node import LiveNode

    node = LiveNode("tiny", object(), url="http://127.0.0.1:9")  # type: ignore[arg-type]
    assert node.finished_output_tokens() == (0, 0)  # no load generator yet
    assert node.gpu_memory_utilization == SimConfig().gpu_memory_utilization  # vLLM's default
    assert not isinstance(node, ForkableNode)
