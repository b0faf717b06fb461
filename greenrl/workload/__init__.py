"""Request workloads for the serving simulator: real traces and seeded synthetic streams.

Public names: Trace, load_trace, trace_names, synthetic_trace, diurnal_rate_rps,
DEFAULT_PEAK_TO_TROUGH, DEFAULT_PEAK_HOUR.
"""

from greenrl.workload.synthetic import DEFAULT_PEAK_HOUR, DEFAULT_PEAK_TO_TROUGH, diurnal_rate_rps, synthetic_trace
from greenrl.workload.trace import Trace, load_trace, trace_names

__all__ = [
    "DEFAULT_PEAK_HOUR",
    "DEFAULT_PEAK_TO_TROUGH",
    "Trace",
    "diurnal_rate_rps",
    "load_trace",
    "synthetic_trace",
    "trace_names",
]
