"""Request workloads for the serving simulator: real traces, ServeGen production days and synthetic streams.

Public names: Trace, load_trace, trace_names, synthetic_trace, diurnal_rate_rps,
DEFAULT_PEAK_TO_TROUGH, DEFAULT_PEAK_HOUR, servegen_trace, servegen_day, load_servegen,
servegen_categories, scale_for_rate_rps, split_days, over_context, ServeGenData, Split, TRAIN_DAYS,
VALIDATE_DAYS, TEST_DAYS.
"""

from greenrl.workload.servegen import (
    TEST_DAYS,
    TRAIN_DAYS,
    VALIDATE_DAYS,
    ServeGenData,
    Split,
    load_servegen,
    over_context,
    scale_for_rate_rps,
    servegen_categories,
    servegen_day,
    servegen_trace,
    split_days,
)
from greenrl.workload.synthetic import DEFAULT_PEAK_HOUR, DEFAULT_PEAK_TO_TROUGH, diurnal_rate_rps, synthetic_trace
from greenrl.workload.trace import Trace, load_trace, trace_names

__all__ = ["Trace", "load_trace", "trace_names"]
__all__ += ["DEFAULT_PEAK_HOUR", "DEFAULT_PEAK_TO_TROUGH", "diurnal_rate_rps", "synthetic_trace"]
__all__ += ["TEST_DAYS", "TRAIN_DAYS", "VALIDATE_DAYS", "ServeGenData", "Split", "load_servegen", "over_context"]
__all__ += ["scale_for_rate_rps", "servegen_categories", "servegen_day", "servegen_trace", "split_days"]
