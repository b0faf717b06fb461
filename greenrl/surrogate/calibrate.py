"""Fit every parameter group of every stack, then validate the fit along the axes a user moves: the parameter file.

Kept apart from ``fit`` (the fitting primitives) so that ``validate`` can use those primitives without an
import cycle.

Public names: fit_all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from greenrl.surrogate.fit import (
    _ERROR_COLUMNS,
    CHUNKED_PREFILL,
    PHYSICS,
    FitResult,
    _errors,
    _Rows,
    fit_allreduce,
    fit_kernels,
    fit_stack,
    predict_rows,
)
from greenrl.surrogate.model import StackParams
from greenrl.surrogate.validate import cross_stack_rows, error_table, family, held_out_rows, summarize

__all__ = ["fit_all"]

logger = logging.getLogger(__name__)


def _stack_errors(rows_frame: pd.DataFrame, pred: np.ndarray, validation: str, dataset: str) -> list[tuple[Any, ...]]:
    out = []
    f = rows_frame.assign(pred=pred, family=rows_frame["metric"].map(family))
    for (gpu, quantity), g in f.groupby(["gpu", "family"]):
        out.append((dataset, gpu, quantity, validation, len(g), *_errors(g["pred"].to_numpy(), g["value"].to_numpy())))
    return out


def fit_all(
    serving: pd.DataFrame,
    vidur: pd.DataFrame,
    collectives: pd.DataFrame,
    cross_validate: bool = True,
    progress: Callable[[str], None] | None = None,
    physics: int = PHYSICS,
) -> FitResult:
    """Fit every parameter group and (optionally) cross-validate; returns the parameter file's content.

    ``physics`` picks the model version (``greenrl.surrogate.model.replica_consts``); 1 is the model of
    the shipped parameter file, 2 adds the per-layer, all-reduce and attention-traffic terms, 3 adds
    the host/GPU overlap of vLLM V1 stacks and the decode-only median inter-token latency.
    """
    say = progress or (lambda _msg: None)
    say("all-reduce")
    allreduce, err_ar = fit_allreduce(collectives)
    say("kernels")
    kernels, err_k = fit_kernels(vidur, cross_validate, physics)
    stacks: dict[str, dict[str, Any]] = {}
    inputs: dict[str, float] = {}
    errors = [err_ar, err_k]
    held: list[pd.DataFrame] = []
    for stack, frame in serving.groupby("stack"):
        say(f"stack {stack}")
        fit = fit_stack(frame, kernels, allreduce, physics=physics)
        stacks[str(stack)] = {
            c: {
                **p,
                "chunked_prefill": CHUNKED_PREFILL.get(str(stack), True),
                "fitted": [n.split(":")[1] for n in fit["fitted"] if n.startswith(c + ":")],
            }
            for c, p in fit["chips"].items()
        }
        inputs |= fit["inputs"]
        rows = _Rows.build(frame, allreduce, physics)
        pred = predict_rows(rows, kernels, fit["chips"], fit["inputs"])
        errors.append(pd.DataFrame(_stack_errors(rows.frame, pred, "in-sample", str(stack)), columns=_ERROR_COLUMNS))
        if cross_validate:
            say(f"stack {stack}: cross-validation")
            held.append(held_out_rows(frame, fit, kernels, allreduce))
    params: dict[str, Any] = {
        "format": "greenrl-surrogate/1",
        "physics": physics,
        "allreduce": allreduce,
        "kernels": kernels,
        "stacks": stacks,
        "workload_input_tokens": inputs,
        "default_stack": _default_stacks(stacks),
    }
    if cross_validate:
        held.append(cross_stack_rows(serving, stacks, inputs, kernels, allreduce, physics))
        held = [h for h in held if len(h)]
        if held:
            rows_out = pd.concat(held, ignore_index=True)
            errors.append(error_table(rows_out))
            params |= summarize(rows_out[rows_out["axis"] != "cross-stack"], serving, inputs)
        else:  # e.g. a user's own node: one model at one TP degree leaves no fold to hold out
            say("cross-validation: nothing to hold out (one model and one TP degree per stack); no intervals")
    _fill_power_gaps(stacks)
    table = pd.concat([e for e in errors if len(e)], ignore_index=True)
    params["validation"] = table.round(3).to_dict(orient="records")
    return FitResult(params, table)


PREFERRED_STACKS = ("user", "vllm-0.11", "vllm-0.5.4", "splitwise")
"""Default stack per chip, first available: a user's own measurements, then the newest vLLM."""


def _default_stacks(stacks: dict[str, dict[str, Any]]) -> dict[str, str]:
    chips = {c for per_chip in stacks.values() for c in per_chip}
    out = {}
    for chip in sorted(chips):
        having = [s for s in stacks if chip in stacks[s]]
        out[chip] = next((s for s in PREFERRED_STACKS if s in having), sorted(having)[0])
    return out


def _fill_power_gaps(stacks: dict[str, dict[str, Any]]) -> None:
    """A chip whose stack data has no power rows borrows the power coefficients of another stack's fit."""
    for chips in stacks.values():
        for chip, p in chips.items():
            if any(n.startswith("power_") for n in p["fitted"]):
                continue
            donors = [
                s for s, c in stacks.items() if chip in c and any(n.startswith("power_") for n in c[chip]["fitted"])
            ]
            if donors:
                donor = "vllm-0.11" if "vllm-0.11" in donors else donors[0]
                p.update({n: stacks[donor][chip][n] for n in StackParams.names() if n.startswith("power_")})
                p["power_from"] = donor
