"""The fleet's load days: held-out days (the node scenario's evaluation windows) and validation days 10-11.

One home for which requests a fleet day holds, shared by the env, training and evaluation.

Public names: fleet_day, held_out_day_number, validation_day, validation_windows_s, fleet_load_on_day.
"""

from __future__ import annotations

import numpy as np

from greenrl.fleet.config import FleetConfig
from greenrl.workload import Trace, scale_for_rate_rps, servegen_trace
from greenrl.workload.servegen import DAY_S

__all__ = ["fleet_day", "fleet_load_on_day", "held_out_day_number", "validation_day", "validation_windows_s"]


def fleet_day(config: FleetConfig, window: int = 0, duration_s: float | None = None) -> Trace:
    """The fleet's load over the node scenario's evaluation window ``window`` (seed 10,000 + window, as the env).

    ``duration_s``: only the window's first seconds (a quick look; the table's figures are whole days).
    """
    start_s, whole_s = config.scenario.workload.eval_windows_s[window]
    duration_s = whole_s if duration_s is None else min(whole_s, duration_s)
    scale = scale_for_rate_rps(config.workload.category, config.workload.mean_rps)
    return servegen_trace(config.workload.category, start_s, duration_s, scale=scale, seed=10_000 + window)


def held_out_day_number(config: FleetConfig, window: int) -> int:
    """The ServeGen day (0-13) that evaluation window ``window`` starts on: the label results carry (12, 13)."""
    return int(config.scenario.workload.eval_windows_s[window][0] // DAY_S)


def validation_windows_s(config: FleetConfig) -> list[tuple[float, float]]:
    """Whole days between the end of the training range and the first held-out window (days 10 and 11)."""
    w = config.scenario.workload
    start, stop = w.train_range_s[1], min(t for t, _ in w.eval_windows_s)
    return [(float(t), 86400.0) for t in np.arange(start, stop - 86400.0 + 1.0, 86400.0)]


def validation_day(config: FleetConfig, index: int = 0, duration_s: float | None = None) -> Trace:
    """The fleet's load on validation day ``index`` (seed 20,000 + index): model and parameter selection.

    ``duration_s``: only the day's first seconds (a smoke test).
    """
    start_s, whole_s = validation_windows_s(config)[index]
    duration_s = whole_s if duration_s is None else min(whole_s, duration_s)
    scale = scale_for_rate_rps(config.workload.category, config.workload.mean_rps)
    return servegen_trace(config.workload.category, start_s, duration_s, scale=scale, seed=20_000 + index)


def fleet_load_on_day(config: FleetConfig, day: int, duration_s: float | None = None) -> Trace:
    """The fleet's load on ServeGen day ``day`` (0-13), whole: the one trace every caller plays for that day.

    A held-out day is ``fleet_day``'s and a validation day ``validation_day``'s (same seeds, so a figure
    matches the run's); any other day is drawn with seed 30,000 + ``day``. A day beyond the category's
    data is refused by ``servegen_trace`` (``reason/deepseek-r1`` has day 0 only).
    """
    held_out = [i for i in range(len(config.scenario.workload.eval_windows_s)) if held_out_day_number(config, i) == day]
    if held_out:
        return fleet_day(config, held_out[0], duration_s)
    validation = [i for i, (t, _) in enumerate(validation_windows_s(config)) if int(t // DAY_S) == day]
    if validation:
        return validation_day(config, validation[0], duration_s)
    duration_s = DAY_S if duration_s is None else min(DAY_S, duration_s)
    scale = scale_for_rate_rps(config.workload.category, config.workload.mean_rps)
    return servegen_trace(config.workload.category, day * DAY_S, duration_s, scale=scale, seed=30_000 + day)
