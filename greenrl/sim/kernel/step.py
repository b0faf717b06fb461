"""One iteration's latency and power, compiled: the numba twin of ``greenrl.surrogate.model.step``.

``step_scalar`` reads a replica's packed surrogate parameters (``layout.P_*``); a parity test keeps it
equal to the surrogate's vectorised ``step``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from greenrl.sim.kernel.layout import (
    P_ACT_TOK,
    P_ACT_TRAFFIC,
    P_AR_BW,
    P_AR_LAT,
    P_AR_TOK,
    P_ATTN_PAIR,
    P_ATTN_PEAK,
    P_BUSY_W,
    P_COMP_W,
    P_DENSE_W,
    P_EFF_C,
    P_EFF_M,
    P_EXPERT_W,
    P_EXPERTS,
    P_FLOPS_TOK,
    P_IDLE_W,
    P_ITER_OVH,
    P_KV_TOK,
    P_LAYER_OVH,
    P_LAYERS,
    P_LIN_PEAK,
    P_LMHEAD,
    P_MEM_BW,
    P_MEM_W,
    P_MIN_CLOCK,
    P_OVERLAP,
    P_SEQ_OVH,
    P_SHARP,
    P_TDP_W,
    P_TOPK,
    P_TP,
    P_WORKER_OVH,
)

HBM_J_PER_BYTE = 3.9e-12 * 8
MEM_SAT_FRAC = 0.5
V_MIN_FRAC = 0.7


@njit(cache=True)
def step_scalar(
    v: np.ndarray, prefill_tokens: float, prefill_pairs: float, decode_seqs: float, decode_ctx: float, clock_frac: float
) -> tuple[float, float]:
    """Latency (s) and total power (W) of one iteration; the compiled twin of ``surrogate.model.step``."""
    tokens = prefill_tokens + decode_seqs
    if tokens <= 0.0:
        return 0.0, v[P_IDLE_W] * v[P_TP]
    touched = 1.0 - (1.0 - v[P_TOPK] / v[P_EXPERTS]) ** tokens
    weight_bytes = v[P_DENSE_W] + v[P_EXPERT_W] * touched
    mem_speed = min(1.0, clock_frac / MEM_SAT_FRAC)
    compute = v[P_LIN_PEAK] * v[P_EFF_C] * clock_frac
    attn_compute = v[P_ATTN_PEAK] * v[P_EFF_C] * clock_frac
    memory = v[P_MEM_BW] * v[P_EFF_M] * mem_speed
    lin_c = (tokens * v[P_FLOPS_TOK] + decode_seqs * v[P_LMHEAD]) / compute
    lin_bytes = weight_bytes + tokens * v[P_ACT_TOK] * v[P_ACT_TRAFFIC]
    lin_m = lin_bytes / memory
    attn_c = prefill_pairs * v[P_ATTN_PAIR] / attn_compute
    kv_bytes = decode_ctx * v[P_KV_TOK]
    attn_m = kv_bytes / memory
    comm = 0.0
    if v[P_TP] > 1.0:
        comm = 2.0 * v[P_LAYERS] * (v[P_AR_LAT] + tokens * v[P_AR_TOK] / v[P_AR_BW])
    big = max(lin_c, lin_m)
    small = min(lin_c, lin_m)
    p = v[P_SHARP]
    roof = big * (1.0 + (small / max(big, 1e-30)) ** p) ** (1.0 / p)
    if v[P_OVERLAP] > 0.0:  # physics 3: per-sequence host work overlaps the GPU (surrogate.model.overlap)
        host = decode_seqs * v[P_SEQ_OVH]
        serial = v[P_ITER_OVH] + v[P_LAYERS] * v[P_LAYER_OVH] + (v[P_TP] - 1.0) * v[P_WORKER_OVH]
        gpu = serial + roof + attn_c + attn_m + comm
        latency = gpu + host - v[P_OVERLAP] * min(gpu, host)
    else:  # physics 1 and 2: host time adds (this exact expression: the shipped figures depend on it)
        overhead = v[P_ITER_OVH] + v[P_LAYERS] * v[P_LAYER_OVH] + decode_seqs * v[P_SEQ_OVH]
        overhead += (v[P_TP] - 1.0) * v[P_WORKER_OVH]
        latency = overhead + roof + attn_c + attn_m + comm
    safe_t = max(latency, 1e-30)
    u_c = min(1.0, (lin_c + attn_c) / safe_t)
    u_m = min(1.0, (lin_m + attn_m) / safe_t)
    span = max(1e-9, 1.0 - v[P_MIN_CLOCK])
    rise = min(1.0, max(0.0, (clock_frac - v[P_MIN_CLOCK]) / span))
    volt = V_MIN_FRAC + (1.0 - V_MIN_FRAC) * rise
    scale = clock_frac * volt * volt
    hbm_w = HBM_J_PER_BYTE * (lin_bytes + kv_bytes) / safe_t
    dynamic_w = scale * (v[P_BUSY_W] + v[P_COMP_W] * u_c + v[P_MEM_W] * u_m)
    per_gpu = min(v[P_TDP_W], v[P_IDLE_W] + hbm_w + dynamic_w)
    return latency, per_gpu * v[P_TP]
