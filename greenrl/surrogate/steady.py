"""Steady-state serving figures of one replica, defined the way ML.ENERGY measured its data.

``batch`` sequences are always running; each finished request is replaced at once by a new one of
``input_tokens`` prompt and ``output_tokens`` output tokens, whose prefill vLLM mixes into the running
decode iterations (chunked prefill). Per iteration, on average, ``batch / output_tokens`` requests
finish and as many prompts are prefilled, and every running sequence gains one token.

Public names: SteadyState, steady_state, steady_from_consts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greenrl.surrogate.model import (
    KernelParams,
    Num,
    ReplicaConsts,
    ReplicaModel,
    StackParams,
    StepBatch,
    StepResult,
    step,
)

__all__ = ["SteadyState", "steady_from_consts", "steady_state"]


@dataclass(frozen=True, slots=True)
class SteadyState:
    """What ``python -m greenrl.predict`` reports for one configuration (floats or arrays).

    Attributes:
        prefill_s: one iteration that prefills ``batch`` prompts of ``input_tokens`` together (s).
        decode_step_s: one decode iteration of ``batch`` sequences at context input + output/2 (s).
        mixed_step_s: mean iteration of the steady state, prefills mixed in (s).
        median_itl_s: median time between tokens in the steady state (s): the iteration with the median
            (Poisson) number of prefills in it, or, in physics 3, a decode-only iteration (what ML.ENERGY
            v3's medians follow up to 1.5 completions per iteration).
        power_w: mean power of the replica's GPUs in the steady state (W).
        output_tokens_per_s: generated tokens per second (tokens/s).
        energy_per_output_token_j: GPU energy per generated token, prefills included (J).
    """

    prefill_s: Num
    decode_step_s: Num
    mixed_step_s: Num
    median_itl_s: Num
    power_w: Num
    output_tokens_per_s: Num
    energy_per_output_token_j: Num


def _poisson_median(lam: Num) -> Num:
    """Median of a Poisson(lam) count: 0 below ln 2, else floor(lam + 1/3 - 0.02/lam) (Choi 1994)."""
    lam = np.asarray(lam, dtype=float)
    approx = np.floor(lam + 1.0 / 3.0 - 0.02 / np.maximum(lam, 1e-9))
    return np.where(lam < np.log(2.0), 0.0, np.maximum(approx, 0.0))


def steady_from_consts(
    c: ReplicaConsts,
    k: KernelParams,
    s: StackParams,
    batch: Num,
    input_tokens: Num,
    output_tokens: Num,
    clock_frac: Num = 1.0,
    chunked_prefill: bool = True,
    decode_median: bool = False,
) -> SteadyState:
    """Steady state from raw constants (vectorized over rows; used by the fitter).

    With ``chunked_prefill`` (vLLM V1, the default since 0.8) new prompts ride in the decode
    iterations; without it (vLLM <= 0.5) they run as separate prefill iterations between decodes.
    ``decode_median`` (physics 3) makes the median inter-token latency a decode-only iteration.
    """
    ctx = input_tokens + output_tokens / 2.0
    new_per_step = batch / output_tokens  # requests finishing, and prompts entering, per iteration
    if chunked_prefill:
        decoding = np.maximum(batch - new_per_step, 0.0)
        mixed = step(
            c,
            k,
            s,
            StepBatch(new_per_step * input_tokens, new_per_step * input_tokens**2 / 2.0, decoding, decoding * ctx),
            clock_frac,
        )
    else:
        dec = step(c, k, s, StepBatch.decode(batch, ctx), clock_frac)
        pre = step(c, k, s, StepBatch.prefill(new_per_step, input_tokens), clock_frac)
        t = dec.latency_s + pre.latency_s
        mixed = StepResult(
            t,
            (dec.energy_j + pre.energy_j) / t,
            dec.compute_s + pre.compute_s,
            dec.memory_s + pre.memory_s,
            dec.comm_s + pre.comm_s,
            dec.overhead_s + pre.overhead_s,
        )
    k_med = 0.0 if decode_median else _poisson_median(new_per_step)
    median = step(
        c, k, s, StepBatch(k_med * input_tokens, k_med * input_tokens**2 / 2.0, batch, batch * ctx), clock_frac
    )
    prefill = step(c, k, s, StepBatch.prefill(batch, input_tokens), clock_frac)
    decode = step(c, k, s, StepBatch.decode(batch, ctx), clock_frac)
    tokens_per_s = batch / mixed.latency_s
    return SteadyState(
        prefill_s=prefill.latency_s,
        decode_step_s=decode.latency_s,
        mixed_step_s=mixed.latency_s,
        median_itl_s=median.latency_s,
        power_w=mixed.power_w,
        output_tokens_per_s=tokens_per_s,
        energy_per_output_token_j=mixed.power_w / tokens_per_s,
    )


def steady_state(
    replica: ReplicaModel, batch: Num, input_tokens: Num, output_tokens: Num, sm_clock_mhz: Num | None = None
) -> SteadyState:
    """Steady-state figures of ``replica`` at a running batch, request shape and SM clock (default: top clock)."""
    clock_frac = 1.0 if sm_clock_mhz is None else sm_clock_mhz / replica.gpu.max_sm_clock_mhz
    return steady_from_consts(
        replica.consts,
        replica.kernel,
        replica.params,
        batch,
        input_tokens,
        output_tokens,
        clock_frac,
        replica.chunked_prefill,
        replica.physics >= 3,
    )
