"""``python -m greenrl.predict``: the surrogate's answer for one configuration.

Example:
    python -m greenrl.predict --model llama-2-70b --gpu h100 --tp 4 --batch 64 \
        --input-tokens 1024 --output-tokens 256 --sm-clock-mhz 1605 --json

Public names: main, predict.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from greenrl.catalog import gpu_names, load_gpu, model_names
from greenrl.errors import InputError, exit_on_input_error
from greenrl.surrogate.model import Surrogate
from greenrl.surrogate.steady import steady_state
from greenrl.surrogate.uncertainty import COVERAGE, check_domain, intervals

__all__ = ["main", "predict"]


def _positive(flag: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            flag, flag.lstrip("-").replace("-", "_"), f"must be positive and finite, got {value:g}", "give a number > 0"
        )


def predict(
    model: str,
    gpu: str,
    tp: int,
    batch: float,
    input_tokens: float,
    output_tokens: float,
    sm_clock_mhz: float | None = None,
    stack: str | None = None,
    dtype: str | None = None,
    params_path: Path | None = None,
) -> dict[str, Any]:
    """The prediction as a JSON-ready dict (see ``greenrl.surrogate.steady.SteadyState`` for definitions).

    ``intervals`` holds, per predicted metric, the range expected to contain the measured value with
    probability ``interval_coverage`` (from held-out residuals, ``greenrl.surrogate.uncertainty``);
    ``domain_warnings`` lists every way the query leaves the validated domain (empty inside it).
    """
    for flag, value in (("--batch", batch), ("--input-tokens", input_tokens), ("--output-tokens", output_tokens)):
        _positive(flag, value)
    spec = load_gpu(gpu)
    if sm_clock_mhz is not None and not math.isfinite(sm_clock_mhz):
        raise InputError("--sm-clock-mhz", "sm_clock_mhz", f"must be finite, got {sm_clock_mhz:g}", "e.g. 1605")
    clock = spec.max_sm_clock_mhz if sm_clock_mhz is None else spec.check_clock(sm_clock_mhz)
    surrogate = Surrogate(path=params_path)
    replica = surrogate.replica(model, spec, tp, stack, dtype)
    capacity = replica.kv_capacity_tokens()
    if batch > capacity:  # not even one token of context per sequence fits: no such steady state
        raise InputError(
            "--batch",
            "batch",
            f"{batch:g} running sequences exceed the KV cache of {capacity} tokens ({replica.card.name}, tp={tp})",
            f"use --batch <= {max(1, capacity // int(input_tokens + output_tokens))}",
        )
    st = steady_state(replica, float(batch), float(input_tokens), float(output_tokens), float(clock))
    values = {
        "prefill_s": float(st.prefill_s),
        "decode_step_s": float(st.decode_step_s),
        "power_w": float(st.power_w),
        "energy_per_output_token_j": float(st.energy_per_output_token_j),
        "output_tokens_per_s": float(st.output_tokens_per_s),
        "median_itl_s": float(st.median_itl_s),
        "mixed_step_s": float(st.mixed_step_s),
    }
    warnings, left = check_domain(
        surrogate.params,
        replica.stack,
        spec.chip,
        replica.card.weight_bytes / 1e9,
        tp,
        float(batch),
        float(input_tokens + output_tokens),
    )
    bands, missing = intervals(surrogate.params, replica.stack, spec.chip, values, left)
    need = float(batch) * float(input_tokens + output_tokens)
    if need > capacity:
        warnings.append(
            f"batch {batch:g} x {input_tokens + output_tokens:g} tokens of context needs {need:.3g} KV tokens, more "
            f"than the {capacity} the KV cache holds: vLLM would run at most "
            f"{max(1, int(capacity // (input_tokens + output_tokens)))} of them at once"
        )
    if clock != spec.max_sm_clock_mhz:
        warnings.append("clock below the top one is modelled from first principles (no measured data), not validated")
    return {
        **values,
        "intervals": bands,
        "interval_coverage": COVERAGE,
        "domain_warnings": warnings + missing,
        "in_validated_domain": not warnings,
        "power_per_gpu_w": float(st.power_w) / tp,
        "kv_capacity_tokens": replica.kv_capacity_tokens(),
        "model": replica.card.name,
        "gpu": spec.name,
        "tp": tp,
        "batch": batch,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "sm_clock_mhz": clock,
        "stack": replica.stack,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="built-in model name/alias or a path to a Hugging Face config.json")
    p.add_argument("--gpu", help=f"one of {', '.join(gpu_names())} (or an alias such as h100)")
    p.add_argument("--tp", type=int, help="tensor-parallel degree")
    p.add_argument("--batch", type=float, help="running sequences (max_num_seqs in steady state)")
    p.add_argument("--input-tokens", type=float, help="prompt tokens per request")
    p.add_argument("--output-tokens", type=float, help="output tokens per request")
    p.add_argument("--sm-clock-mhz", type=float, default=None, help="SM clock (default: the GPU's maximum)")
    p.add_argument("--stack", default=None, help="fitted serving stack (default: the newest for the GPU)")
    p.add_argument("--dtype", default=None, help="serve weights as this dtype (fp8, bfloat16)")
    p.add_argument("--params", type=Path, default=None, help="surrogate parameter file (default: packaged)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list-models", action="store_true", help="list built-in models and exit")
    p.add_argument("--list-gpus", action="store_true", help="list built-in GPUs and exit")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags, predict, print."""
    args = _parser().parse_args(argv)
    if args.list_models or args.list_gpus:
        print("\n".join(model_names() if args.list_models else gpu_names()))
        return 0
    for flag in ("model", "gpu", "tp", "batch", "input_tokens", "output_tokens"):
        if getattr(args, flag) is None:
            name = "--" + flag.replace("_", "-")
            raise InputError(name, flag, "is required", f"add {name} (see --help)")
    out = predict(
        args.model,
        args.gpu,
        args.tp,
        args.batch,
        args.input_tokens,
        args.output_tokens,
        args.sm_clock_mhz,
        args.stack,
        args.dtype,
        args.params,
    )
    if args.json:
        print(json.dumps(out))
        return 0
    width = max(len(k) for k in out)
    for key, value in out.items():
        if key in ("intervals", "domain_warnings"):
            continue
        band = out["intervals"].get(key)
        text = f"{value:.6g}" if isinstance(value, float) else f"{value}"
        if band:
            text += f"  [{band['lo']:.4g}, {band['hi']:.4g}] ({out['interval_coverage']:.0%})"
        print(f"{key:<{width}}  {text}")
    for line in out["domain_warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
