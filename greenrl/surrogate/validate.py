"""Held-out validation of the stack fits along the axes a user moves along, and the intervals it yields.

Axes (each refits the stack without the rows it then predicts, except cross-stack):

* ``leave-one-model-out``: every stack with two or more models; each model predicted by a fit on the others;
* ``leave-largest-model-out``: the largest model (weight bytes) of that same set of folds: extrapolation in size;
* ``leave-one-TP-out``: every stack with two or more TP degrees;
* ``cross-stack``: one vLLM version's parameters predict another version's rows on the same chip (the
  target's scheduling, chunked prefill or not, and the dataset's fitted mean prompt lengths: those
  describe the request mix, not the stack).

The held-out log ratios log(predicted / measured) per (stack, chip, quantity, axis) become the
prediction intervals of ``greenrl.surrogate.uncertainty``, with the domain each stack was validated on.

Public names: AXES, held_out_rows, cross_stack_rows, error_table, summarize.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from greenrl.catalog import load_model
from greenrl.surrogate.fit import CHUNKED_PREFILL, ERROR_COLUMNS, _Rows, fit_stack, predict_rows

__all__ = ["AXES", "cross_stack_rows", "error_table", "held_out_rows", "summarize"]

logger = logging.getLogger(__name__)

AXES = ("leave-one-model-out", "leave-largest-model-out", "leave-one-TP-out", "cross-stack")
INTERVAL_QUANTILES = (0.05, 0.95)
"""The stated coverage of ``greenrl predict``'s intervals: the central 90% of held-out log ratios."""


def family(metric: str) -> str:
    """The reported quantity of a schema metric (several metrics are one quantity)."""
    if metric in ("decode_step_s", "median_itl_s", "mixed_step_s"):
        return "decode step time"
    if metric == "prefill_s":
        return "prefill time"
    if metric in ("power_w", "run_power_w"):
        return "power"
    if metric == "energy_per_output_token_j":
        return "energy per token"
    return "throughput"


def weight_gb(model: str, dtype: str = "") -> float:
    """Weight bytes of a model as served (GB): the size axis of the validated domain."""
    return load_model(model, dtype or None).weight_bytes / 1e9


def _fold_predictions(
    frame: pd.DataFrame, key: str, fitted: dict[str, Any], kernels: dict[str, Any], allreduce: dict[str, Any]
) -> np.ndarray:
    """Refit without each value of ``key`` in turn and predict the held-out rows (NaN where a fold fails)."""
    physics = int(fitted.get("physics", 1))
    pred = np.full(len(frame), np.nan)
    for value in frame[key].unique():
        held = (frame[key] == value).to_numpy()
        try:
            fit = fit_stack(frame[~held], kernels, allreduce, start=fitted, physics=physics)
        except (ValueError, KeyError) as err:  # a fold that cannot identify a needed parameter
            logger.warning("fold %s=%s skipped (%s)", key, value, err)
            continue
        chips = fit["chips"] | {c: p for c, p in fitted["chips"].items() if c not in fit["chips"]}
        rows = _Rows.build(frame[held], allreduce, physics)
        pred[held] = predict_rows(rows, kernels, chips, fitted["inputs"] | fit["inputs"])
    return pred


def held_out_rows(
    frame: pd.DataFrame, fitted: dict[str, Any], kernels: dict[str, Any], allreduce: dict[str, Any]
) -> pd.DataFrame:
    """Every held-out prediction of one stack: its rows plus ``axis`` and ``pred``, one block per axis."""
    frame = frame.reset_index(drop=True)
    out = []
    if frame["model"].nunique() >= 2:
        pred = _fold_predictions(frame, "model", fitted, kernels, allreduce)
        out.append(frame.assign(axis="leave-one-model-out", pred=pred))
        size = {m: weight_gb(m, d) for m, d in frame[["model", "weight_dtype"]].itertuples(index=False)}
        largest = max(size, key=lambda m: size[m])
        pick = (frame["model"] == largest).to_numpy()
        out.append(frame[pick].assign(axis="leave-largest-model-out", pred=pred[pick]))
    if frame["tp"].nunique() >= 2:
        pred = _fold_predictions(frame, "tp", fitted, kernels, allreduce)
        out.append(frame.assign(axis="leave-one-TP-out", pred=pred))
    if not out:
        return pd.DataFrame(columns=[*frame.columns, "axis", "pred"])
    rows = pd.concat(out, ignore_index=True)
    return rows[rows["pred"].notna()].reset_index(drop=True)


def cross_stack_rows(
    serving: pd.DataFrame,
    stacks: dict[str, dict[str, Any]],
    inputs: dict[str, float],
    kernels: dict[str, Any],
    allreduce: dict[str, Any],
    physics: int = 1,
) -> pd.DataFrame:
    """Each vLLM stack's rows predicted with another vLLM stack's parameters for the same chip."""
    vllm = sorted(s for s in stacks if s.startswith("vllm-"))
    out = []
    for target in vllm:
        for source in vllm:
            if source == target:
                continue
            frame = serving[serving["stack"] == target]
            chips = set(stacks[source])
            frame = frame[[_chip(g) in chips for g in frame["gpu"]]].reset_index(drop=True)
            if frame.empty:
                continue
            rows = _Rows.build(frame, allreduce, physics)
            params = {c: p for c, p in stacks[source].items()}
            pred = predict_rows(rows, kernels, params, inputs, chunked=CHUNKED_PREFILL.get(target, True))
            out.append(frame.assign(axis="cross-stack", pred=pred, source=source))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _chip(gpu: str) -> str:
    from greenrl.catalog import load_gpu

    return load_gpu(gpu).chip


def error_table(rows: pd.DataFrame) -> pd.DataFrame:
    """MAPE and worst row per (dataset, gpu, quantity, axis); cross-stack rows are labelled source -> target."""
    if rows.empty:
        return pd.DataFrame(columns=ERROR_COLUMNS)
    f = rows.assign(family=rows["metric"].map(family), rel=np.abs(rows["pred"] / rows["value"] - 1.0))
    label = f["axis"].to_numpy(dtype=object)
    if "source" in f:
        label = np.where(f["axis"] == "cross-stack", "cross-stack from " + f["source"].fillna("").astype(str), label)
    f = f.assign(validation=label)
    out = []
    for (dataset, gpu, fam, val), g in f.groupby(["stack", "gpu", "family", "validation"], sort=True):
        out.append((dataset, gpu, fam, val, len(g), 100 * g["rel"].mean(), 100 * g["rel"].max()))
    return pd.DataFrame(out, columns=ERROR_COLUMNS)


def summarize(rows: pd.DataFrame, serving: pd.DataFrame, inputs: dict[str, float]) -> dict[str, Any]:
    """Interval residuals and validated domains, as stored in the parameter file.

    ``residuals[stack][chip][quantity][axis]`` holds the held-out log ratios with their model (so a
    test can check the intervals' coverage on models they were not computed from) and the quantiles
    that make the interval; ``domain[stack][chip]`` the weight size, TP, batch and context ranges.
    """
    residuals: dict[str, Any] = {}
    for (stack, gpu, fam, axis), g in rows.assign(family=rows["metric"].map(family)).groupby(
        ["stack", "gpu", "family", "axis"]
    ):
        log_ratio = np.log(g["pred"].to_numpy(float) / g["value"].to_numpy(float))
        lo, hi = np.quantile(log_ratio, INTERVAL_QUANTILES)
        entry = {
            "q_lo": float(lo),
            "q_hi": float(hi),
            "n": len(g),
            "models": g["model"].astype(str).tolist(),
            "log_ratio": np.round(log_ratio, 5).tolist(),
        }
        residuals.setdefault(str(stack), {}).setdefault(_chip(str(gpu)), {}).setdefault(fam, {})[str(axis)] = entry
    domain: dict[str, Any] = {}
    for (stack, gpu), g in serving.groupby(["stack", "gpu"]):
        given = g["input_tokens"].to_numpy(float)
        fitted = g["workload"].map(lambda w: inputs.get(w, np.nan)).to_numpy(float)
        ctx = np.where(np.isnan(given), fitted, given) + g["output_tokens"].to_numpy(float)
        sizes = [weight_gb(m, d) for m, d in g[["model", "weight_dtype"]].drop_duplicates().itertuples(index=False)]
        domain.setdefault(str(stack), {})[_chip(str(gpu))] = {
            "gpu": str(gpu),
            "models": sorted(g["model"].astype(str).unique()),
            "weight_gb": [round(min(sizes), 2), round(max(sizes), 2)],
            "tp": sorted(int(t) for t in g["tp"].unique()),
            "batch": [float(g["batch"].min()), float(g["batch"].max())],
            "context_tokens": [float(np.nanmin(ctx)), float(np.nanmax(ctx))],
        }
    return {"residuals": residuals, "domain": domain}
