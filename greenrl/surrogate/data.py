"""Measurements the surrogate is fitted to, in one tidy schema (also the schema of user CSVs).

The public datasets shipped in ``greenrl/data/measurements`` (see its LICENSES.md) are converted to
rows of the *measurement schema*; a user's own CSV in the same schema can be fitted too
(``python -m greenrl.fit --data my.csv``), and a future live profiling command will write it.

Measurement schema (one row per measured number):

=================  ========  ==================================================================
column             required  meaning
=================  ========  ==================================================================
model              yes       built-in model name/alias, or a path to a config.json
gpu                yes       built-in GPU name or alias (``h100``, ``a100-80gb``)
tp                 yes       tensor-parallel degree (GPUs of the replica)
batch              yes       running sequences (steady-state metrics: mean running batch)
output_tokens      yes       output tokens per request (tokens)
metric             yes       one of ``METRICS`` below
value              yes       the measured number, in the metric's unit (> 0)
input_tokens       no        prompt tokens per request; blank: fitted per ``workload``
workload           no        label of the request mix; needed where input_tokens is blank
stack              no        serving-stack label (default ``user``); parameters are fitted per stack
weight_dtype       no        ``fp8`` for FP8 checkpoints; blank: the model card's dtype
source             no        free text: where the row came from
=================  ========  ==================================================================

Metrics (all SI; definitions match ``greenrl.surrogate.steady`` and ``model``):
``prefill_s`` one iteration prefilling ``batch`` prompts together; ``decode_step_s`` one decode
iteration of a static batch at context input + output/2; ``median_itl_s`` / ``mixed_step_s`` median /
mean iteration in the steady state; ``power_w``, ``output_tokens_per_s``,
``energy_per_output_token_j`` steady state, all GPUs of the replica; ``run_power_w`` mean power of
a static-batch run (one prefill, then output-1 decode steps), all GPUs.

Public names: METRICS, SCHEMA_COLUMNS, load_public, load_user_csv, load_vidur_kernels, load_allreduce.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from greenrl.catalog import load_gpu, load_model
from greenrl.errors import InputError

__all__ = ["METRICS", "SCHEMA_COLUMNS", "load_allreduce", "load_public", "load_user_csv", "load_vidur_kernels"]

METRICS = (
    "prefill_s",
    "decode_step_s",
    "median_itl_s",
    "mixed_step_s",
    "power_w",
    "output_tokens_per_s",
    "energy_per_output_token_j",
    "run_power_w",
)
REQUIRED_COLUMNS = ("model", "gpu", "tp", "batch", "output_tokens", "metric", "value")
OPTIONAL_COLUMNS = ("input_tokens", "workload", "stack", "weight_dtype", "source")
SCHEMA_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


def measurements_dir() -> Path:
    """Folder of the shipped public measurement files."""
    return Path(str(resources.files("greenrl").joinpath("data/measurements")))


def _known_model(name: str) -> str | None:
    try:
        return load_model(name).name
    except InputError:
        return None


def _tidy(frame: pd.DataFrame, metrics: dict[str, str], scale: dict[str, float]) -> pd.DataFrame:
    """Melt wide measurement rows into the schema; ``metrics`` maps source column -> metric."""
    keep = [c for c in SCHEMA_COLUMNS if c in frame.columns and c not in ("metric", "value")]
    long = frame.melt(id_vars=keep, value_vars=list(metrics), var_name="metric", value_name="value")
    long["value"] = long["value"].astype(float) * long["metric"].map(scale).fillna(1.0)
    long["metric"] = long["metric"].map(metrics)
    return long[long["value"] > 0].reset_index(drop=True)


def _mlenergy_v3(folder: Path) -> pd.DataFrame:
    raw = pd.read_csv(folder / "mlenergy_v3_llm_h100_b200.csv")
    # Dense models on H100 with plain tensor parallelism; MoE rows use expert parallelism (not modelled).
    raw = raw[
        (raw["gpu_model"] == "H100")
        & (raw["architecture"] == "Dense Transformer")
        & (raw["tensor_parallel"] == raw["num_gpus"])
    ].copy()
    raw["model"] = raw["model_id"].map(_known_model)
    raw = raw[raw["model"].notna()].copy()
    frame = pd.DataFrame(
        {
            "model": raw["model"],
            "gpu": "h100-sxm-80gb",
            "tp": raw["tensor_parallel"].astype(int),
            "batch": raw["avg_batch_size"],
            "output_tokens": raw["avg_output_len"],
            "input_tokens": np.nan,
            "workload": "mlenergy-v3/" + raw["task"],
            "stack": "vllm-0.11",
            "weight_dtype": np.where(raw["weight_precision"] == "fp8", "fp8", ""),
            "source": "ML.ENERGY v3",
            "median_itl_ms": raw["median_itl_ms"],
            "output_throughput_tokens_per_sec": raw["output_throughput_tokens_per_sec"],
            "avg_power_watts": raw["avg_power_watts"],
            "energy_per_token_joules": raw["energy_per_token_joules"],
        }
    )
    return _tidy(
        frame,
        {
            "median_itl_ms": "median_itl_s",
            "output_throughput_tokens_per_sec": "output_tokens_per_s",
            "avg_power_watts": "power_w",
            "energy_per_token_joules": "energy_per_output_token_j",
        },
        {"median_itl_ms": 1e-3},
    )


def _mlenergy_v2(folder: Path) -> pd.DataFrame:
    raw = pd.read_csv(folder / "mlenergy_v2_llm_a100_h100.csv")
    raw = raw[raw["PP"] == 1].copy()  # pipeline parallelism is not modelled
    # vLLM 0.5.4 ran prefills as their own iterations, so its per-request TPOT is the decode step
    # (throughput falls below batch/TPOT as prefills take a growing share): TPOT -> decode_step_s.
    raw["model"] = raw["Model"].map(_known_model)
    raw = raw[raw["model"].notna()].copy()
    frame = pd.DataFrame(
        {
            "model": raw["model"],
            "gpu": raw["GPU"].map(lambda g: load_gpu(g).name),
            "tp": raw["TP"].astype(int),
            "batch": raw["Avg BS (reqs)"],
            "output_tokens": raw["Avg Output Tokens"],
            "input_tokens": np.nan,
            "workload": "mlenergy-v2/" + raw["task"],
            "stack": "vllm-0.5.4",
            "weight_dtype": "",
            "source": "ML.ENERGY v2",
            "tpot": raw["Avg TPOT (s)"],
            "tput": raw["Token tput (tok/s)"],
            "power": raw["derived_avg_power_W_all_gpus"],
            "ept": raw["derived_energy_per_token_J"],
        }
    )
    return _tidy(
        frame,
        {
            "tpot": "decode_step_s",
            "tput": "output_tokens_per_s",
            "power": "power_w",
            "ept": "energy_per_output_token_j",
        },
        {},
    )


def _splitwise(folder: Path) -> pd.DataFrame:
    raw = pd.read_csv(folder / "splitwise_perf_model_llama2_70b.csv")
    # h100-80gb-pcap rows are modelled (prefill x 1.3), not measured: left out.
    raw = raw[raw["hardware"].isin(["a100-80gb", "h100-80gb"])]
    keys = ["hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size"]
    med = raw.groupby(keys, as_index=False)[["prompt_time", "token_time", "average_power"]].median()
    # tp=2, batch=64 prefill times collapse to ~1/8 of batch 32's: a recording artefact, not physics.
    artefact = (med["tensor_parallel"] == 2) & (med["batch_size"] == 64)
    med.loc[artefact, "prompt_time"] = 0.0
    # average_power ~0.17 of TDP on every 8,192-token prompt run: a logging artefact (data README).
    med.loc[med["prompt_size"] == 8192, "average_power"] = 0.0
    tdp_w = med["hardware"].map(lambda h: load_gpu(h).tdp_w)
    frame = pd.DataFrame(
        {
            "model": "llama-2-70b",
            "gpu": med["hardware"].map(lambda h: load_gpu(h).name),
            "tp": med["tensor_parallel"].astype(int),
            "batch": med["batch_size"].astype(float),
            "output_tokens": med["token_size"].astype(float),
            "input_tokens": med["prompt_size"].astype(float),
            "workload": "splitwise",
            "stack": "splitwise",
            "weight_dtype": "",
            "source": "Splitwise perf_model",
            "prompt_time": med["prompt_time"],
            "token_time": med["token_time"],
            "run_power": med["average_power"] * tdp_w * med["tensor_parallel"],
        }
    )
    return _tidy(
        frame,
        {"prompt_time": "prefill_s", "token_time": "decode_step_s", "run_power": "run_power_w"},
        {"prompt_time": 1e-3, "token_time": 1e-3},
    )


MAX_BATCH = 512
"""Largest running batch in the fitted domain. Above it ML.ENERGY v2's decode time saturates (KV-cache-
limited scheduling in vLLM 0.5.4) in a way the iteration model does not represent; those rows are left out."""


@cache
def _public(folder: str) -> pd.DataFrame:
    path = Path(folder)
    rows = pd.concat([_mlenergy_v3(path), _mlenergy_v2(path), _splitwise(path)], ignore_index=True)
    return rows[rows["batch"] <= MAX_BATCH].reset_index(drop=True)


def load_public(folder: Path | None = None) -> pd.DataFrame:
    """All shipped serving measurements as schema rows (a copy)."""
    return _public(str(folder or measurements_dir())).copy()


def load_user_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate a user's measurement CSV; every problem names the file, row and column."""
    where = str(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(where, "--data", "file not found", "give the path to a measurement CSV") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise InputError(where, "--data", f"not a readable CSV ({err})", "write a header row and data rows") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            where,
            missing[0],
            f"missing column(s) {', '.join(missing)}",
            f"the header needs {', '.join(REQUIRED_COLUMNS)} (see docs/surrogate.md)",
        )
    if frame.empty:
        raise InputError(where, "rows", "no data rows", "add at least one measurement row")
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan if column == "input_tokens" else ""
    for column in ("stack", "weight_dtype", "workload"):  # text columns: an all-blank one is read as float NaN
        frame[column] = frame[column].astype(object).fillna("")
    frame["stack"] = frame["stack"].replace("", "user")
    for i, row in enumerate(frame.itertuples(index=False), start=2):  # line 1 is the header
        if row.metric not in METRICS:
            raise InputError(
                f"{where}, line {i}", "metric", f"unknown metric {row.metric!r}", f"use one of {', '.join(METRICS)}"
            )
        for column in ("tp", "batch", "output_tokens", "value", "input_tokens"):
            value = getattr(row, column)
            if column == "input_tokens" and (value is None or (isinstance(value, float) and np.isnan(value))):
                if not row.workload:
                    raise InputError(
                        f"{where}, line {i}",
                        "input_tokens",
                        "blank, and no workload given",
                        "give input_tokens, or a workload label to fit it per workload",
                    )
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not np.isfinite(number) or number <= 0:
                raise InputError(
                    f"{where}, line {i}", column, f"must be a positive number, got {value!r}", "fix or remove the row"
                )
        load_model(str(row.model), where=f"{where}, line {i}, column model")
        load_gpu(str(row.gpu), where=f"{where}, line {i}, column gpu")
    frame["gpu"] = frame["gpu"].map(lambda g: load_gpu(str(g)).name)
    frame["tp"] = frame["tp"].astype(int)
    return frame[list(SCHEMA_COLUMNS)]


def load_vidur_kernels(folder: Path | None = None) -> pd.DataFrame:
    """Vidur per-layer time of the non-attention operators vs token count (s), with model shapes."""
    raw = pd.read_parquet((folder or measurements_dir()) / "vidur_mlp_a100_h100.parquet")
    ops = [
        "input_layernorm",
        "attn_pre_proj",
        "attn_rope",
        "attn_post_proj",
        "post_attention_layernorm",
        "mlp_up_proj",
        "mlp_act",
        "mlp_down_proj",
        "add",
    ]
    raw = raw[raw[[f"time_stats.{op}.median" for op in ops]].notna().all(axis=1)]
    per_layer_ms = sum(raw[f"time_stats.{op}.median"] for op in ops)
    return pd.DataFrame(
        {
            "chip": raw["gpu"],
            "model": raw["model"],
            "tp": raw["num_tensor_parallel_workers"].astype(int),
            "tokens": raw["num_tokens"].astype(float),
            "heads": raw["n_head"].astype(float),
            "kv_heads": raw["n_kv_head"].astype(float),
            "hidden": raw["n_embd"].astype(float),
            "mlp_hidden": raw["n_expanded_embd"].astype(float),
            "gated": raw["use_gated_mlp"].astype(bool),
            "time_s": np.asarray(per_layer_ms, dtype=float) * 1e-3,
        }
    ).reset_index(drop=True)


def load_allreduce(folder: Path | None = None) -> pd.DataFrame:
    """Vidur all-reduce times inside one DGX node: interconnect, workers, bytes, median time (s).

    The profiler's ``size`` is read as bytes, as Vidur's own predictor does (2·hidden·tokens).
    """
    raw = pd.read_parquet((folder or measurements_dir()) / "vidur_collectives.parquet")
    raw = raw[
        (raw["collective"] == "all_reduce")
        & raw["network_device"].isin(["a100_dgx", "h100_dgx"])
        & (raw["devices_per_node"] == raw["num_workers"])
    ]
    return pd.DataFrame(
        {
            "interconnect": raw["network_device"],
            "workers": raw["num_workers"].astype(int),
            "bytes": raw["size"].astype(float),
            "time_s": raw["time_stats.median"].astype(float) * 1e-3,
        }
    ).reset_index(drop=True)
