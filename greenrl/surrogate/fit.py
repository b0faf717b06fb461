"""Fit the surrogate's parameters to measurements and cross-validate them on models they did not see.

Three fits, each on the data that identifies its parameters:

1. all-reduce latency and bandwidth per interconnect and group size (Vidur collectives), linear;
2. kernel efficiencies per chip (Vidur operator profiles of 5-7 models), soft roofline;
3. per serving stack and chip, the overheads, memory efficiency and power coefficients (ML.ENERGY
   v2 and v3, Splitwise), with one unknown mean prompt length per workload where the data has none.

Residuals are relative (log ratio), so every row counts by its percentage error. Validation is
leave-one-model-out: refit without a model, predict it. Splitwise measured one model only, so it is
validated leave-one-TP-degree-out instead (said so in the report).

Public names: FitResult, fit_allreduce, fit_kernels, fit_stack, predict_rows, ERROR_COLUMNS (``fit_all``,
which fits and validates every stack, is in ``greenrl.surrogate.calibrate``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from greenrl.catalog import load_gpu, load_model
from greenrl.surrogate.model import (
    KernelParams,
    ReplicaConsts,
    StackParams,
    StepBatch,
    act_elements_per_layer,
    replica_consts,
    soft_roofline,
    step,
)
from greenrl.surrogate.steady import steady_from_consts

__all__ = ["ERROR_COLUMNS", "FitResult", "fit_allreduce", "fit_kernels", "fit_stack", "predict_rows"]

logger = logging.getLogger(__name__)

# (lower, upper, initial) of each fitted quantity; the fit runs on log values.
STACK_BOUNDS: dict[str, tuple[float, float, float]] = {
    "eff_compute": (0.05, 1.0, 0.5),
    "eff_memory": (0.1, 1.0, 0.7),
    "iter_overhead_s": (1e-5, 0.1, 2e-3),
    "layer_overhead_s": (1e-7, 1e-3, 2e-5),
    "seq_overhead_s": (1e-8, 1e-3, 1e-5),
    "worker_overhead_s": (1e-7, 1e-2, 1e-4),
    "allreduce_latency_s": (1e-6, 2e-4, 2e-5),
    "power_busy_w": (1.0, 1000.0, 200.0),
    "power_compute_w": (1.0, 1000.0, 200.0),
    "power_memory_w": (1.0, 1000.0, 100.0),
    "host_overlap_frac": (1e-3, 1.0, 0.5),
}
KERNEL_BOUNDS: dict[str, tuple[float, float, float]] = {
    "eff_compute": (0.05, 1.0, 0.6),
    "eff_memory": (0.1, 1.0, 0.7),
    "roofline_sharpness": (1.0, 20.0, 3.0),
    "act_traffic": (0.1, 100.0, 5.0),
    "op_latency_s": (1e-7, 1e-3, 2e-5),
}
INPUT_TOKENS_BOUNDS = (16.0, 8192.0, 400.0)
LATENCY_METRICS = ("prefill_s", "decode_step_s", "median_itl_s", "mixed_step_s")
POWER_METRICS = ("power_w", "run_power_w")
PHYSICS = 3
"""Model version a fresh fit uses (``replica_consts`` and ``step``): 3, chosen by held-out error (docs/surrogate.md)."""
KERNEL_GPU = {"a100": "a100-80gb", "h100": "h100-sxm-80gb"}  # specs used for Vidur's profiles


@dataclass
class FitResult:
    """Fitted parameters plus validation errors (rows: dataset, gpu, metric, validation, n, mape, worst)."""

    params: dict[str, Any]
    errors: pd.DataFrame = field(default_factory=pd.DataFrame)


def _log_fit(
    residual: Callable[[dict[str, float]], np.ndarray],
    bounds: dict[str, tuple[float, float, float]],
    start: dict[str, float] | None = None,
) -> dict[str, float]:
    """Least squares over log-parameters within bounds; returns the fitted values."""
    names = list(bounds)
    lo = np.log([bounds[n][0] for n in names])
    hi = np.log([bounds[n][1] for n in names])
    x0 = np.log([(start or {}).get(n, bounds[n][2]) for n in names])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    sol = least_squares(
        lambda x: residual(dict(zip(names, np.exp(x), strict=True))), x0, bounds=(lo, hi), x_scale=1.0, max_nfev=400
    )
    return dict(zip(names, np.exp(sol.x).tolist(), strict=True))


def _errors(pred: np.ndarray, meas: np.ndarray) -> tuple[float, float]:
    rel = np.abs(pred / meas - 1.0)
    return float(100 * rel.mean()), float(100 * rel.max())


# ------------------------------------------------------------------------------------------ all-reduce


def fit_allreduce(frame: pd.DataFrame) -> tuple[dict[str, dict[str, dict[str, float]]], pd.DataFrame]:
    """Per interconnect and group size: time = latency + bytes / bandwidth (relative least squares)."""
    params: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for (net, workers), g in frame.groupby(["interconnect", "workers"]):
        design = np.stack([np.ones(len(g)), g["bytes"].to_numpy()], axis=1) / g["time_s"].to_numpy()[:, None]
        (lat, inv_bw), *_ = np.linalg.lstsq(design, np.ones(len(g)), rcond=None)
        lat, inv_bw = max(lat, 1e-7), max(inv_bw, 1e-15)
        params.setdefault(str(net), {})[str(workers)] = {"latency_s": float(lat), "bandwidth_bps": float(1 / inv_bw)}
        mape, worst = _errors(lat + g["bytes"].to_numpy() * inv_bw, g["time_s"].to_numpy())
        rows.append(("vidur-collectives", net, f"all_reduce x{workers}", "in-sample", len(g), mape, worst))
    return params, pd.DataFrame(rows, columns=_ERROR_COLUMNS)


ERROR_COLUMNS = ["dataset", "gpu", "metric", "validation", "n", "mape_pct", "worst_pct"]
"""Columns of every error table (in-sample, held-out, per validation axis)."""
_ERROR_COLUMNS = ERROR_COLUMNS

# -------------------------------------------------------------------------------------------- kernels


def _kernel_predict(frame: pd.DataFrame, p: dict[str, float], chip: str, physics: int = 1) -> np.ndarray:
    gpu = load_gpu(KERNEL_GPU[chip])
    hidden, heads, kv = frame["hidden"].to_numpy(), frame["heads"].to_numpy(), frame["kv_heads"].to_numpy()
    head_dim = hidden / heads
    mlp_mats = np.where(frame["gated"].to_numpy(), 3.0, 2.0)
    params = (
        2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + mlp_mats * hidden * frame["mlp_hidden"].to_numpy()
    )
    tp, tokens = frame["tp"].to_numpy(), frame["tokens"].to_numpy()
    compute_s = 2 * tokens * params / tp / (gpu.bf16_flops * p["eff_compute"])
    act = act_elements_per_layer(hidden, heads, kv, head_dim, frame["mlp_hidden"].to_numpy(), mlp_mats, tp, physics)
    memory_s = (params * 2 / tp + tokens * act * 2 * p["act_traffic"]) / (gpu.mem_bandwidth_bps * p["eff_memory"])
    return np.asarray(soft_roofline(compute_s, memory_s, p["roofline_sharpness"]) + p["op_latency_s"])


def _kernel_sample(frame: pd.DataFrame) -> pd.DataFrame:
    """Thin the token grid to ~40 log-spaced points per (model, tp): same information, faster fits."""
    grid = np.unique(np.round(np.geomspace(1, frame["tokens"].max(), 40)))
    return frame[frame["tokens"].isin(grid) | frame["tokens"].isin(grid + 1)]


def fit_kernels(
    frame: pd.DataFrame, cross_validate: bool = True, physics: int = 1
) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Per chip kernel efficiencies from Vidur's per-layer operator times; leave-one-model-out errors."""
    params: dict[str, dict[str, float]] = {}
    rows = []
    frame = _kernel_sample(frame)
    for chip, g in frame.groupby("chip"):
        chip = str(chip)
        meas = g["time_s"].to_numpy()

        def fit_on(sub: pd.DataFrame, start: dict[str, float] | None = None, chip: str = chip) -> dict[str, float]:
            measured = sub["time_s"].to_numpy()

            def residual(params: dict[str, float]) -> np.ndarray:
                return np.log(_kernel_predict(sub, params, chip, physics) / measured)

            return _log_fit(residual, KERNEL_BOUNDS, start)

        best = fit_on(g)
        params[chip] = best
        rows.append(
            (
                "vidur-operators",
                chip,
                "layer_linear_s",
                "in-sample",
                len(g),
                *_errors(_kernel_predict(g, best, chip, physics), meas),
            )
        )
        if cross_validate:
            pred = np.empty(len(g))
            for model in g["model"].unique():
                held = (g["model"] == model).to_numpy()
                p = fit_on(g[~held], best)
                pred[held] = _kernel_predict(g[held], p, chip, physics)
            rows.append(
                ("vidur-operators", chip, "layer_linear_s", "leave-one-model-out", len(g), *_errors(pred, meas))
            )
    return params, pd.DataFrame(rows, columns=_ERROR_COLUMNS)


# --------------------------------------------------------------------------------------------- stacks


@dataclass
class _Rows:
    """Schema rows with per-row replica constants, ready for vectorized prediction."""

    frame: pd.DataFrame
    consts: ReplicaConsts
    chip: np.ndarray
    workload: np.ndarray
    allreduce_latency_s: np.ndarray  # measured (Vidur) latency of one all-reduce of the row's TP group (s)
    physics: int = 1

    @staticmethod
    def build(frame: pd.DataFrame, allreduce: dict[str, dict[str, dict[str, float]]], physics: int = 1) -> _Rows:
        frame = frame.reset_index(drop=True)
        cache: dict[tuple[str, str, int, str], tuple[ReplicaConsts, str, float]] = {}
        per_row = []
        for model, gpu_name, tp, dtype in frame[["model", "gpu", "tp", "weight_dtype"]].itertuples(index=False):
            key = (str(model), str(gpu_name), int(tp), str(dtype or ""))
            if key not in cache:
                gpu = load_gpu(key[1])
                card = load_model(key[0], key[3] or None)
                ar = allreduce[gpu.interconnect][str(tp)] if tp > 1 else {"bandwidth_bps": 1.0, "latency_s": 0.0}
                consts = replica_consts(card, gpu, key[2], ar["bandwidth_bps"], physics)
                cache[key] = (consts, gpu.chip, ar["latency_s"])
            per_row.append(cache[key])
        names = list(ReplicaConsts.__dataclass_fields__)
        consts = ReplicaConsts(**{n: np.array([getattr(c[0], n) for c in per_row], dtype=float) for n in names})
        return _Rows(
            frame,
            consts,
            np.array([c[1] for c in per_row]),
            frame["workload"].fillna("").to_numpy(dtype=str),
            np.array([c[2] for c in per_row], dtype=float),
            physics,
        )


CHUNKED_PREFILL = {"vllm-0.5.4": False, "splitwise": False}
"""Stacks that ran prefills as separate iterations; every other stack is vLLM V1 with chunked prefill."""


def predict_rows(
    rows: _Rows,
    kernels: dict[str, dict[str, float]],
    stack_by_chip: dict[str, dict[str, float]],
    input_by_workload: dict[str, float],
    chunked: bool | None = None,
) -> np.ndarray:
    """The model's value for every row's metric (``chunked``: the scheduling mode; default: the rows' stack's)."""
    f = rows.frame
    kern = KernelParams(**{n: np.array([kernels[c][n] for c in rows.chip]) for n in KernelParams.names()})
    names = [n for n in StackParams.names() if n != "host_overlap_frac"]
    values = {n: np.array([stack_by_chip[c][n] for c in rows.chip]) for n in names}
    # absent from files before physics 3: host time adds to GPU time
    values["host_overlap_frac"] = np.array([stack_by_chip[c].get("host_overlap_frac", 0.0) for c in rows.chip])
    if rows.physics >= 2:
        values["allreduce_latency_s"] = values["allreduce_latency_s"] + rows.allreduce_latency_s
    stack = StackParams(**values)
    given = f["input_tokens"].to_numpy(dtype=float)
    fitted = np.array([input_by_workload.get(w, np.nan) for w in rows.workload])
    inp = np.where(np.isnan(given), fitted, given)
    batch, out = f["batch"].to_numpy(dtype=float), f["output_tokens"].to_numpy(dtype=float)
    if chunked is None:
        chunked = CHUNKED_PREFILL.get(str(f["stack"].iloc[0]), True) if len(f) else True
    st = steady_from_consts(
        rows.consts, kern, stack, batch, inp, out, chunked_prefill=chunked, decode_median=rows.physics >= 3
    )
    # Static-batch run (Splitwise): one prefill, then output-1 decode steps at the mean context.
    pre = step(rows.consts, kern, stack, StepBatch.prefill(batch, inp))
    dec = step(rows.consts, kern, stack, StepBatch.decode(batch, inp + out / 2))
    n_dec = np.maximum(out - 1, 0)
    run_power = (pre.energy_j + n_dec * dec.energy_j) / (pre.latency_s + n_dec * dec.latency_s)
    by_metric = {
        "prefill_s": st.prefill_s,
        "decode_step_s": st.decode_step_s,
        "median_itl_s": st.median_itl_s,
        "mixed_step_s": st.mixed_step_s,
        "power_w": st.power_w,
        "output_tokens_per_s": st.output_tokens_per_s,
        "energy_per_output_token_j": st.energy_per_output_token_j,
        "run_power_w": run_power,
    }
    metric = f["metric"].to_numpy()
    out_v = np.full(len(f), np.nan)
    for name, values in by_metric.items():
        mask = metric == name
        out_v[mask] = np.broadcast_to(values, len(f))[mask]
    return out_v


def _overlaps(stack: str, physics: int) -> bool:
    """Whether a stack's per-sequence host work can overlap its GPU work (physics 3, vLLM V1 stacks).

    vLLM V1 processes outputs (detokenization, streaming) in a front-end process apart from the engine
    core; vLLM 0.5 and Splitwise's stack did it in the one loop that also launches the GPU work.
    """
    return physics >= 3 and CHUNKED_PREFILL.get(stack, True)


def _free_names(frame: pd.DataFrame, physics: int = 1) -> list[str]:
    """Stack parameters the rows of one chip can identify (the host overlap: see ``_overlaps``)."""
    metrics = set(frame["metric"])
    names = [n for n in StackParams.names() if not n.startswith("power_") or metrics & set(POWER_METRICS)]
    if not _overlaps(str(frame["stack"].iloc[0]) if len(frame) else "", physics):
        names.remove("host_overlap_frac")
    if "prefill_s" not in metrics:
        names.remove("eff_compute")  # modern stacks: prefill runs at the kernel efficiency
    if (frame["tp"] == 1).all():
        names.remove("allreduce_latency_s")
        names.remove("worker_overhead_s")
    return names


def fit_stack(
    frame: pd.DataFrame,
    kernels: dict[str, dict[str, float]],
    allreduce: dict[str, dict[str, dict[str, float]]],
    start: dict[str, Any] | None = None,
    physics: int = 1,
) -> dict[str, Any]:
    """Fit one stack's parameters per chip, and unknown mean prompt lengths per workload."""
    rows = _Rows.build(frame, allreduce, physics)
    meas = rows.frame["metric"].to_numpy()
    group = rows.chip.astype(object) + "/" + meas.astype(object)
    counts = pd.Series(group).value_counts()
    weight = 1.0 / np.sqrt(pd.Series(group).map(counts).to_numpy(dtype=float))
    values = rows.frame["value"].to_numpy(dtype=float)

    bounds: dict[str, tuple[float, float, float]] = {}
    for chip in np.unique(rows.chip):
        for name in _free_names(rows.frame[rows.chip == chip], physics):
            bounds[f"{chip}:{name}"] = STACK_BOUNDS[name]
    for w in np.unique(rows.workload[rows.frame["input_tokens"].isna().to_numpy()]):
        bounds[f"input:{w}"] = INPUT_TOKENS_BOUNDS

    def unpack(p: dict[str, float]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        by_chip: dict[str, dict[str, float]] = {}
        for chip in np.unique(rows.chip):
            defaults = {n: STACK_BOUNDS[n][2] for n in StackParams.names()}
            defaults["eff_compute"] = kernels[chip]["eff_compute"]
            defaults["allreduce_latency_s"] = STACK_BOUNDS["allreduce_latency_s"][2]
            defaults["host_overlap_frac"] = 0.0  # additive unless fitted
            by_chip[chip] = {n: p.get(f"{chip}:{n}", defaults[n]) for n in StackParams.names()}
        inputs = {k.split(":", 1)[1]: v for k, v in p.items() if k.startswith("input:")}
        return by_chip, inputs

    def residual(p: dict[str, float]) -> np.ndarray:
        by_chip, inputs = unpack(p)
        pred = predict_rows(rows, kernels, by_chip, inputs)
        return np.asarray(weight * np.log(np.maximum(pred, 1e-30) / values))

    flat_start = None
    if start:
        flat_start = {f"{c}:{n}": v for c, d in start["chips"].items() for n, v in d.items()}
        flat_start |= {f"input:{w}": v for w, v in start["inputs"].items()}
    best = _log_fit(residual, bounds, flat_start)
    by_chip, inputs = unpack(best)
    return {"chips": by_chip, "inputs": inputs, "fitted": sorted(bounds), "physics": physics}
