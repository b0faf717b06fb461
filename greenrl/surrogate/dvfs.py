"""How the SM clock changes speed and power: a first-principles model (no public data covers it).

Every measurement in ``greenrl/data/measurements`` was taken at the driver's default clock, so the
surrogate's clock dependence is modelled, not fitted (see docs/surrogate.md, "Clock frequency"):

* compute-bound work (GEMMs, prefill attention) runs at a speed proportional to the SM clock f;
* memory-bound work (weight and KV reads) is set by HBM bandwidth, which the SM clock does not
  change, until the SMs can no longer issue loads fast enough: below ``MEM_SATURATION_CLOCK_FRAC``
  of the top clock, memory-bound speed falls in proportion to f;
* CPU-side overheads (scheduling, sampling, kernel launch gaps) do not depend on f;
* the clock-dependent part of board power is dynamic power, C·V(f)²·f. The voltage curve V(f)
  is linear from ``V_MIN_FRAC`` of the top voltage at the lowest clock to 1 at the top clock,
  the shape of published GPU voltage-frequency tables. HBM power depends on bytes moved, not on f.

Public names: MEM_SATURATION_CLOCK_FRAC, V_MIN_FRAC, compute_speed, memory_speed, dynamic_power_scale.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["MEM_SATURATION_CLOCK_FRAC", "V_MIN_FRAC", "compute_speed", "dynamic_power_scale", "memory_speed"]

MEM_SATURATION_CLOCK_FRAC = 0.5
"""Fraction of the top SM clock below which memory-bound kernels slow down (assumption)."""

V_MIN_FRAC = 0.7
"""Core voltage at the lowest clock as a fraction of the voltage at the top clock (assumption)."""

Array = npt.NDArray[np.float64] | float


def compute_speed(clock_frac: Array) -> Array:
    """Relative speed of compute-bound work at ``clock_frac = f / f_max`` (1 at the top clock).

    Example:
        >>> compute_speed(0.5)
        0.5
    """
    return clock_frac


def memory_speed(clock_frac: Array) -> Array:
    """Relative speed of memory-bound work: flat down to the saturation clock, then proportional to f.

    Example:
        >>> float(memory_speed(0.8)), float(memory_speed(0.25))
        (1.0, 0.5)
    """
    return np.minimum(1.0, np.divide(clock_frac, MEM_SATURATION_CLOCK_FRAC))


def dynamic_power_scale(clock_frac: Array, min_clock_frac: Array) -> Array:
    """Dynamic power at clock f relative to the top clock: (f/f_max)·(V(f)/V_max)².

    Example:
        >>> round(float(dynamic_power_scale(1600 / 1980, 345 / 1980)), 3)
        0.699
    """
    span = np.maximum(1e-9, np.subtract(1.0, min_clock_frac))
    rise = np.clip(np.divide(np.subtract(clock_frac, min_clock_frac), span), 0.0, 1.0)
    volt = V_MIN_FRAC + (1.0 - V_MIN_FRAC) * rise
    return np.multiply(clock_frac, volt * volt)
