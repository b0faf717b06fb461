"""A load forecast from history: the training days' arrival rate at each time of day.

DynamoLLM forecasts each pool's load from its history; the fleet ``planner`` forecasts from the last
interval alone (reactive). ``DailyProfile`` is what an operator's history holds: the fleet's category over
the training days (the node scenario's ``train_range_s``, days 0-9), scaled to the fleet's mean rate, as
the mean aggregate rate of each 600-s ServeGen window of the day. It never reads the validation or
held-out days.

Public names: DailyProfile, daily_profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from greenrl.fleet.config import FleetConfig
from greenrl.workload import load_servegen, scale_for_rate_rps
from greenrl.workload.servegen import DAY_S, WINDOW_S

__all__ = ["DailyProfile", "daily_profile"]


@dataclass(frozen=True, eq=False)
class DailyProfile:
    """Mean arrival rate of each ``window_s`` window of the day (requests/s), over the training days.

    Attributes:
        rate_rps: one value per window, from midnight, shape ``[DAY_S / window_s]``.
        window_s: window length (s).
    """

    rate_rps: npt.NDArray[np.float64]
    window_s: float = WINDOW_S

    def _windows(self, t0_s: float, t1_s: float) -> npt.NDArray[np.int64]:
        """Indices of the windows that ``[t0_s, t1_s)`` (seconds of the day, may pass midnight) touches."""
        first, last = math.floor(t0_s / self.window_s), math.ceil(t1_s / self.window_s)
        return np.arange(first, max(last, first + 1)) % len(self.rate_rps)

    def mean_rps(self, t0_s: float, t1_s: float) -> float:
        """Mean of the windows ``[t0_s, t1_s)`` touches."""
        return float(self.rate_rps[self._windows(t0_s, t1_s)].mean())

    def peak_rps(self, t0_s: float, t1_s: float) -> float:
        """Highest window that ``[t0_s, t1_s)`` touches."""
        return float(self.rate_rps[self._windows(t0_s, t1_s)].max())


def daily_profile(config: FleetConfig) -> DailyProfile:
    """The fleet's category over its training days, scaled to its mean rate, by window of the day."""
    t0, t1 = config.scenario.workload.train_range_s
    return _profile(config.workload.category, config.workload.mean_rps, float(t0), float(t1))


@lru_cache(maxsize=8)
def _profile(category: str, mean_rps: float, t0_s: float, t1_s: float) -> DailyProfile:
    data = load_servegen(category)
    per_day = round(DAY_S / WINDOW_S)
    days = range(math.floor(t0_s / DAY_S), math.floor(min(t1_s, data.span_s) / DAY_S))
    rates = data.rate_rps() * scale_for_rate_rps(data, mean_rps)  # the scale every fleet trace uses
    profile = np.mean([rates[d * per_day : (d + 1) * per_day] for d in days], axis=0)
    profile.setflags(write=False)
    return DailyProfile(profile)
