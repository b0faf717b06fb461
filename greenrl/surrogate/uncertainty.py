"""Prediction intervals and validated-domain checks for one query, from the fit's held-out residuals.

The fit (``greenrl.surrogate.validate.summarize``) stores, per stack, chip and quantity, the held-out
log ratios log(predicted / measured) of each validation axis, and the domain the stack was validated
on (weight size, TP degrees, running batch, context). A query gets:

* ``warnings``: one line per way it leaves that domain (larger or smaller model, a TP degree with no
  data, a batch or context outside the measured range);
* ``intervals``: for each predicted quantity, [prediction / exp(q_hi), prediction / exp(q_lo)] with q
  the 5% and 95% quantiles of the held-out log ratios of the nearest validated domain: the query's
  stack on its chip; leave-one-model-out inside the domain, widened to leave-largest-model-out
  residuals for a model larger than any fitted one and to leave-one-TP-out residuals for an unseen TP
  degree; a quantity the stack has no data for (prefill time on ML.ENERGY stacks) borrows another
  stack's residuals on the same chip, and says so.

Public names: COVERAGE, METRIC_QUANTITY, check_domain, intervals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COVERAGE", "METRIC_QUANTITY", "check_domain", "intervals"]

COVERAGE = 0.9
"""Stated coverage of the intervals (the 5%-95% quantiles of held-out log ratios)."""

METRIC_QUANTITY = {
    "prefill_s": "prefill time",
    "decode_step_s": "decode step time",
    "median_itl_s": "decode step time",
    "mixed_step_s": "decode step time",
    "power_w": "power",
    "energy_per_output_token_j": "energy per token",
    "output_tokens_per_s": "throughput",
}


def check_domain(
    params: dict[str, Any], stack: str, chip: str, weight_gb: float, tp: int, batch: float, context_tokens: float
) -> tuple[list[str], set[str]]:
    """Warnings for a query outside the validated domain, and the axes it leaves (size, tp, batch, context)."""
    domain = params.get("domain", {}).get(stack, {}).get(chip)
    if domain is None:
        return [f"stack {stack!r} on {chip} has no validated domain in this parameter file (refit to add it)"], {
            "size",
            "tp",
            "batch",
            "context",
        }
    warnings: list[str] = []
    left: set[str] = set()
    lo, hi = domain["weight_gb"]
    if weight_gb > hi * 1.05 or weight_gb < lo / 1.05:
        left.add("size")
        side = "larger" if weight_gb > hi else "smaller"
        warnings.append(
            f"model weights {weight_gb:.0f} GB are {side} than any validated model on {stack}/{chip} "
            f"({lo:.0f}-{hi:.0f} GB): extrapolation in size"
        )
    if tp not in domain["tp"]:
        left.add("tp")
        warnings.append(f"tp={tp} has no measurements on {stack}/{chip} (validated: {domain['tp']})")
    for axis, value, (a, b) in (
        ("batch", batch, domain["batch"]),
        ("context", context_tokens, domain["context_tokens"]),
    ):
        if not a <= value <= b:
            left.add(axis)
            warnings.append(f"{axis} {value:g} is outside the validated range {a:g}-{b:g} of {stack}/{chip}")
    return warnings, left


def _residual_source(params: dict[str, Any], stack: str, chip: str, quantity: str) -> tuple[str, dict[str, Any]] | None:
    """The query's stack's residuals for a quantity, else another stack's on the same chip."""
    residuals = params.get("residuals", {})
    own = residuals.get(stack, {}).get(chip, {}).get(quantity)
    if own:
        return stack, own
    for other in sorted(residuals):
        found = residuals[other].get(chip, {}).get(quantity)
        if found:
            return other, found
    return None


def intervals(
    params: dict[str, Any], stack: str, chip: str, prediction: dict[str, float], left: set[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Intervals of each predicted metric, and warnings for metrics without one (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for metric, quantity in METRIC_QUANTITY.items():
        if metric not in prediction:
            continue
        source = _residual_source(params, stack, chip, quantity)
        if source is None:
            missing.append(metric)
            continue
        from_stack, by_axis = source
        axes = ["leave-one-model-out"] if "leave-one-model-out" in by_axis else sorted(by_axis)[:1]
        if "size" in left and "leave-largest-model-out" in by_axis:
            axes.append("leave-largest-model-out")
        if "tp" in left and "leave-one-TP-out" in by_axis:
            axes.append("leave-one-TP-out")
        q_lo = min(by_axis[a]["q_lo"] for a in axes)
        q_hi = max(by_axis[a]["q_hi"] for a in axes)
        value = prediction[metric]
        out[metric] = {
            "lo": float(value * np.exp(-q_hi)),
            "hi": float(value * np.exp(-q_lo)),
            "from": f"{from_stack}/{chip} {' + '.join(axes)}",
        }
    warnings = (
        [f"no held-out residuals for {', '.join(missing)} on {chip}: no interval (refit to add them)"]
        if missing
        else []
    )
    return out, warnings
