"""Seeded synthetic request streams: a diurnal, optionally bursty arrival process times real length pairs.

Arrivals follow a 24-hour rate profile

    rate(t) = mean_rps * (1 + a * cos(2 * pi * (clock_s(t) - peak_s) / 86400)),
    a = (peak_to_trough - 1) / (peak_to_trough + 1),

where ``clock_s(t) = start_hour * 3600 + t`` is the time of day and ``peak_s = peak_hour * 3600``,
so the rate swings between ``mean_rps * (1 + a)`` at the peak and ``mean_rps * (1 - a)`` twelve
hours later (ratio ``peak_to_trough``), and averages ``mean_rps`` over whole days. The process is
built by time rescaling: a stationary renewal process of unit rate with gamma inter-arrival times
(coefficient of variation ``burstiness_cv``; 1 = Poisson) is mapped through the inverse of the
cumulative rate ``Lambda(t)``. Each request's (input, output) length pair is one row of a real trace
drawn uniformly with replacement, so the joint length distribution is the trace's.

Defaults and their basis are in ``docs/workloads.md``.

Public names: synthetic_trace, diurnal_rate_rps, DEFAULT_PEAK_TO_TROUGH, DEFAULT_PEAK_HOUR.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from greenrl.errors import InputError
from greenrl.workload.trace import Trace, load_trace

__all__ = ["DEFAULT_PEAK_HOUR", "DEFAULT_PEAK_TO_TROUGH", "diurnal_rate_rps", "synthetic_trace"]

DAY_S = 86400.0
# Weekday hourly peak-to-trough of the Azure LLM conversation service, about 2:1 (see docs/workloads.md).
DEFAULT_PEAK_TO_TROUGH = 2.0
# Assumption: mid-afternoon peak in the users' local time (see docs/workloads.md).
DEFAULT_PEAK_HOUR = 14.0
_BURN_IN = 100.0  # unit-rate renewal time simulated before t = 0, so the stream starts near equilibrium


def _amplitude(peak_to_trough: float) -> float:
    return (peak_to_trough - 1.0) / (peak_to_trough + 1.0)


def diurnal_rate_rps(
    t_s: npt.ArrayLike,
    mean_rps: float,
    *,
    peak_to_trough: float = DEFAULT_PEAK_TO_TROUGH,
    peak_hour: float = DEFAULT_PEAK_HOUR,
    start_hour: float = 0.0,
) -> npt.NDArray[np.float64]:
    """The diurnal arrival rate at times ``t_s`` seconds after the stream starts (requests/s).

    Args:
        t_s: times from the stream start (s).
        mean_rps: daily mean rate (requests/s).
        peak_to_trough: ratio of the highest to the lowest rate of the day (>= 1; 1 = flat).
        peak_hour: hour of day of the highest rate, in [0, 24).
        start_hour: hour of day at ``t_s = 0``, in [0, 24).

    Example:
        >>> float(diurnal_rate_rps(0.0, 10.0, peak_to_trough=3.0, peak_hour=0.0)[()])
        15.0
        >>> float(diurnal_rate_rps(12 * 3600.0, 10.0, peak_to_trough=3.0, peak_hour=0.0)[()])
        5.0
    """
    a = _amplitude(peak_to_trough)
    clock_s = start_hour * 3600.0 + np.asarray(t_s, dtype=np.float64)
    return np.asarray(mean_rps * (1.0 + a * np.cos(2.0 * np.pi * (clock_s - peak_hour * 3600.0) / DAY_S)))


def _cumulative(t_s: npt.NDArray[np.float64], mean_rps: float, a: float, phase0_s: float) -> npt.NDArray[np.float64]:
    """Expected arrivals in ``[0, t_s]``: the integral of the rate (dimensionless)."""
    w = 2.0 * np.pi / DAY_S
    return np.asarray(mean_rps * (t_s + a / w * (np.sin(w * (t_s + phase0_s)) - np.sin(w * phase0_s))))


def _invert_cumulative(
    u: npt.NDArray[np.float64], duration_s: float, mean_rps: float, a: float, phase0_s: float
) -> npt.NDArray[np.float64]:
    """Solve ``Lambda(t) = u`` for t in ``[0, duration_s]``: interpolation on a grid, then Newton steps."""
    if a == 0.0:
        return np.asarray(u / mean_rps)
    grid_s = np.linspace(0.0, duration_s, max(2, math.ceil(duration_s / 60.0) + 1))
    t = np.interp(u, _cumulative(grid_s, mean_rps, a, phase0_s), grid_s)
    w = 2.0 * np.pi / DAY_S
    for _ in range(3):
        rate = mean_rps * (1.0 + a * np.cos(w * (t + phase0_s)))
        t = np.clip(t - (_cumulative(t, mean_rps, a, phase0_s) - u) / rate, 0.0, duration_s)
    return np.asarray(t)


def _unit_renewal(total: float, cv: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Event times in ``[0, total)`` of a unit-rate renewal process with gamma gaps of coefficient of variation cv."""
    start = -_BURN_IN - rng.random()
    expected = total + _BURN_IN + 1.0
    chunk = int(expected + 6.0 * max(cv, 1.0) * math.sqrt(expected) + 16)
    pieces: list[npt.NDArray[np.float64]] = []
    reached = start
    while reached < total:
        if cv == 0.0:
            gaps = np.ones(chunk)
        else:
            shape = 1.0 / (cv * cv)
            gaps = rng.gamma(shape, 1.0 / shape, size=chunk)
        times = reached + np.cumsum(gaps)
        pieces.append(times)
        reached = float(times[-1])
    times = np.concatenate(pieces)
    return times[(times >= 0.0) & (times < total)]


def _check(name: str, value: float, ok: bool, need: str, example: str) -> None:
    if not ok:
        raise InputError("synthetic_trace", name, f"{need}, got {value!r}", f"pass e.g. {name}={example}")


def synthetic_trace(
    duration_s: float,
    mean_rps: float,
    *,
    seed: int | np.random.Generator,
    lengths_from: str | Trace = "azure-conv",
    peak_to_trough: float = DEFAULT_PEAK_TO_TROUGH,
    peak_hour: float = DEFAULT_PEAK_HOUR,
    start_hour: float = 0.0,
    burstiness_cv: float = 1.0,
) -> Trace:
    """Generate a seeded request stream with diurnal, optionally bursty arrivals and real length pairs.

    The same arguments (and an integer seed) give exactly the same trace.

    Args:
        duration_s: horizon of the stream (s), > 0.
        mean_rps: rate averaged over a whole day (requests/s), > 0. Over a horizon that is not a
            whole number of days the realised mean follows the profile (e.g. a 1-hour stream at the
            peak hour runs at about ``mean_rps * 2 * peak_to_trough / (peak_to_trough + 1)``).
        seed: an integer seed, or a ``np.random.Generator`` to draw from (advanced by the call).
        lengths_from: a bundled trace name, a trace file path, or a :class:`Trace` whose
            (input_tokens, output_tokens) rows are resampled with replacement, as pairs.
        peak_to_trough: highest / lowest rate of the day, >= 1 (1 = no diurnal swing).
        peak_hour: hour of day of the highest rate, in [0, 24).
        start_hour: hour of day at the start of the stream, in [0, 24).
        burstiness_cv: coefficient of variation of the inter-arrival times in the rescaled (unit
            rate) time, >= 0: 1 is a Poisson process, > 1 bursty (gamma gaps), < 1 more regular,
            0 evenly spaced.

    Returns:
        A :class:`Trace` named ``synthetic-<lengths>-<mean_rps>rps-s<seed>`` covering
        ``[0, duration_s)``; it may be empty if the expected count is tiny.

    Raises:
        InputError: if an argument is out of range or ``lengths_from`` cannot be loaded.
    """
    _check("duration_s", duration_s, math.isfinite(duration_s) and duration_s > 0, "must be > 0 s", "3600.0")
    _check("mean_rps", mean_rps, math.isfinite(mean_rps) and mean_rps > 0, "must be > 0 requests/s", "5.0")
    _check(
        "peak_to_trough", peak_to_trough, math.isfinite(peak_to_trough) and peak_to_trough >= 1, "must be >= 1", "2.0"
    )
    _check("peak_hour", peak_hour, 0 <= peak_hour < 24, "must be an hour of day in [0, 24)", "14.0")
    _check("start_hour", start_hour, 0 <= start_hour < 24, "must be an hour of day in [0, 24)", "0.0")
    _check("burstiness_cv", burstiness_cv, math.isfinite(burstiness_cv) and burstiness_cv >= 0, "must be >= 0", "1.0")
    source = lengths_from if isinstance(lengths_from, Trace) else load_trace(lengths_from)
    if len(source) == 0:
        raise InputError(
            "synthetic_trace", "lengths_from", f"trace {source.name!r} has no requests", "pass a trace with requests"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    a = _amplitude(peak_to_trough)
    phase0_s = (start_hour - peak_hour) * 3600.0
    total = float(_cumulative(np.array([duration_s]), mean_rps, a, phase0_s)[0])
    u = _unit_renewal(total, burstiness_cv, rng)
    arrival_s = np.clip(_invert_cumulative(u, duration_s, mean_rps, a, phase0_s), 0.0, duration_s)
    arrival_s = np.maximum.accumulate(arrival_s) if len(arrival_s) else arrival_s
    rows = rng.integers(0, len(source), size=len(arrival_s))
    seed_label = "gen" if isinstance(seed, np.random.Generator) else str(seed)
    return Trace(
        name=f"synthetic-{source.name}-{mean_rps:g}rps-s{seed_label}",
        arrival_s=arrival_s,
        input_tokens=source.input_tokens[rows],
        output_tokens=source.output_tokens[rows],
        duration_s=duration_s,
    )
