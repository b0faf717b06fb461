"""The planner's history forecast: the training days' daily profile and what planner-history plans for."""

from __future__ import annotations

import numpy as np
import pytest

from greenrl.fleet import FleetSim, load_fleet
from greenrl.fleet.forecast import daily_profile
from greenrl.fleet.policies import HistoryPlannerFleet, PlannerFleet, make_policy
from greenrl.workload import load_servegen, scale_for_rate_rps, servegen_trace
from greenrl.workload.servegen import DAY_S, WINDOW_S


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return load_fleet("default")


def test_the_profile_is_the_training_days_mean_at_the_fleet_rate(fleet) -> None:  # type: ignore[no-untyped-def]
    profile = daily_profile(fleet)
    assert profile.rate_rps.shape == (round(DAY_S / WINDOW_S),)
    # the fleet's traces are scaled so the training days average mean_rps: so does their daily mean
    assert profile.rate_rps.mean() == pytest.approx(fleet.workload.mean_rps, rel=1e-9)
    data = load_servegen(fleet.workload.category)
    rates = data.rate_rps() * scale_for_rate_rps(data, fleet.workload.mean_rps)
    day3 = rates[3 * 144 : 4 * 144]
    assert not np.allclose(profile.rate_rps, day3)  # a mean over days, not one day
    held_out = rates[12 * 144 : 14 * 144].reshape(2, 144).mean(axis=0)
    assert not np.allclose(profile.rate_rps, held_out)
    # windows touched by a range past midnight: the last window of the day and the first
    assert profile.peak_rps(DAY_S - 60.0, DAY_S + 60.0) == max(profile.rate_rps[-1], profile.rate_rps[0])
    assert profile.mean_rps(1200.0, 1800.0) == profile.rate_rps[2]
    small = daily_profile(fleet.with_category("language/m-small"))
    assert not np.allclose(small.rate_rps, profile.rate_rps)


def _planned(policy: PlannerFleet, fleet, t_s: float, reactive: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What ``policy`` plans for at ``t_s`` of day 5 after an interval whose arrivals match the profile."""
    sim = FleetSim(fleet)
    scale = scale_for_rate_rps(fleet.workload.category, fleet.workload.mean_rps)
    sim.reset(servegen_trace(fleet.workload.category, 5 * DAY_S + t_s, 60.0, scale=scale, seed=0))
    policy.reset(sim)
    profile = daily_profile(fleet)
    policy.elapsed_s = 300.0
    past = profile.mean_rps(t_s - 300.0, t_s) * 300.0
    policy.arrived = np.array([0.9, 0.1]) * past
    return policy.expected_rps(sim, reactive)


def test_planner_history_plans_for_a_ramp_before_it_comes_and_never_below_the_planner(fleet) -> None:  # type: ignore[no-untyped-def]
    rate = daily_profile(fleet).rate_rps
    up = int(np.argmax(rate[1:] / rate[:-1])) + 1  # the window that rises most over the one before
    down = int(np.argmin(rate[1:] / rate[:-1])) + 1
    assert rate[up] > rate[up - 1] and rate[down] < rate[down - 1]
    start_up, start_down = up * WINDOW_S, down * WINDOW_S  # a decision at the start of each window
    reactive_up = np.array([0.9, 0.1]) * rate[up - 1]
    history = _planned(HistoryPlannerFleet(), fleet, start_up, reactive_up)
    np.testing.assert_allclose(history, np.array([0.9, 0.1]) * max(rate[up], rate[up - 1]), rtol=1e-9)
    assert np.all(history > reactive_up)
    assert np.array_equal(_planned(PlannerFleet(), fleet, start_up, reactive_up), reactive_up)
    reactive_down = np.array([0.9, 0.1]) * rate[down - 1]
    held = _planned(HistoryPlannerFleet(), fleet, start_down, reactive_down)
    np.testing.assert_allclose(held, reactive_down, rtol=1e-9)  # a quiet hour ahead: the reactive rate stays


def test_planner_history_plays_a_day_start_and_is_deterministic(fleet) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.days import fleet_day
    from greenrl.fleet.rollout import run_policy

    policy = make_policy("planner-history")
    assert isinstance(policy, HistoryPlannerFleet) and policy.name == "planner-history"
    trace = fleet_day(fleet, 0, duration_s=1800.0)
    rows = [run_policy(FleetSim(fleet), make_policy("planner-history"), trace) for _ in range(2)]
    for row in rows:
        row.pop("wall_s")
    assert rows[0] == rows[1] and rows[0]["requests"] == len(trace.arrival_s)
    assert rows[0]["policy"] == "planner-history"
