"""Physical invariants of the surrogate, checked over random configurations (hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenrl.surrogate import StepBatch, Surrogate

REPLICAS = [
    ("llama-2-70b", "h100", 4),
    ("llama-2-70b", "h100", 8),
    ("llama-3.1-8b", "h100", 1),
    ("mixtral-8x7b", "a100-80gb", 4),
    ("llama-2-7b", "a100-40gb", 2),
]
_SURROGATE = Surrogate()
_MODELS = [_SURROGATE.replica(m, g, tp) for m, g, tp in REPLICAS]

replica = st.sampled_from(_MODELS)
tokens = st.floats(0, 16384)
seqs = st.floats(0, 512)
ctx = st.floats(1, 32768)
clock_mhz = st.integers(345, 1980)


def _batch(p: float, d: float, c: float) -> StepBatch:
    return StepBatch(p, p * p / 2, d, d * c)


@settings(max_examples=300, deadline=None)
@given(replica, tokens, seqs, ctx, st.floats(1, 4096), st.floats(1, 256), st.floats(1, 4096))
def test_latency_never_falls_when_work_grows(r, p, d, c, dp, dd, dc) -> None:
    base = r.step(_batch(p, d, c)).latency_s
    assert r.step(_batch(p + dp, d, c)).latency_s >= base
    assert r.step(_batch(p, d + dd, c)).latency_s >= base
    assert r.step(_batch(p, d, c + dc)).latency_s >= base


@settings(max_examples=300, deadline=None)
@given(replica, tokens, seqs, ctx, clock_mhz, clock_mhz)
def test_clock_up_means_no_slower_and_no_less_power(r, p, d, c, f1, f2) -> None:
    lo, hi = sorted(min(max(f, r.gpu.min_sm_clock_mhz), r.gpu.max_sm_clock_mhz) for f in (f1, f2))
    slow, fast = r.step(_batch(p, d, c), lo), r.step(_batch(p, d, c), hi)
    assert fast.latency_s <= slow.latency_s * (1 + 1e-12)
    assert fast.power_w >= slow.power_w * (1 - 1e-12)


@settings(max_examples=300, deadline=None)
@given(replica, tokens, seqs.filter(lambda x: x >= 1), ctx, clock_mhz)
def test_outputs_finite_positive_and_within_power_limits(r, p, d, c, f) -> None:
    f = min(max(f, r.gpu.min_sm_clock_mhz), r.gpu.max_sm_clock_mhz)
    out = r.step(_batch(p, d, c), f)
    assert math.isfinite(out.latency_s) and out.latency_s > 0
    per_gpu = out.power_w / r.tp
    assert r.gpu.idle_power_w <= per_gpu <= r.gpu.tdp_w


def test_empty_iteration_costs_nothing_and_draws_idle_power() -> None:
    r = _MODELS[0]
    out = r.step(StepBatch())
    assert out.latency_s == 0
    assert out.power_w == r.gpu.idle_power_w * r.tp


def test_vectorized_matches_scalar() -> None:
    r = _MODELS[0]
    rng = np.random.default_rng(0)
    p, d, c = rng.uniform(0, 4096, 50), rng.uniform(1, 256, 50), rng.uniform(100, 8000, 50)
    f = rng.integers(345, 1980, 50).astype(float)
    vec = r.step(StepBatch(p, p * p / 2, d, d * c), f)
    for i in range(50):
        one = r.step(StepBatch(p[i], p[i] ** 2 / 2, d[i], d[i] * c[i]), f[i])
        # SIMD (vector) and scalar paths round differently on some CPUs: equal to 1e-12, not bit for bit.
        assert vec.latency_s[i] == pytest.approx(float(one.latency_s), rel=1e-12, abs=0.0)
        assert vec.power_w[i] == pytest.approx(float(one.power_w), rel=1e-12, abs=0.0)


_P3 = [
    Surrogate(
        _SURROGATE.params
        | {
            "physics": 3,
            "stacks": _SURROGATE.params["stacks"]
            | {"vllm-0.11": {"h100": _SURROGATE.params["stacks"]["vllm-0.11"]["h100"] | {"host_overlap_frac": 0.5}}},
        }
    ).replica(m, "h100", tp)
    for m, tp in (("llama-3.1-8b", 1), ("llama-2-70b", 4))
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_P3),
    tokens,
    seqs,
    ctx,
    st.floats(1, 256),
    st.floats(0, 1),
    st.floats(1e-7, 1e-3),
    clock_mhz,
)
def test_overlap_is_physical(r, p, d, c, dd, frac, seq_s, f) -> None:
    """Physics 3: never below the GPU part or the host part, never above their sum, monotone in batch."""
    f = min(max(f, r.gpu.min_sm_clock_mhz), r.gpu.max_sm_clock_mhz)
    r = dataclasses.replace(r, params=dataclasses.replace(r.params, host_overlap_frac=frac, seq_overhead_s=seq_s))
    gpu_only = dataclasses.replace(r, params=dataclasses.replace(r.params, seq_overhead_s=0.0))
    t = r.step(_batch(p, d, c), f).latency_s
    gpu_s, host_s = gpu_only.step(_batch(p, d, c), f).latency_s, d * seq_s
    assert max(gpu_s, host_s) * (1 - 1e-12) <= t <= (gpu_s + host_s) * (1 + 1e-12)
    assert r.step(_batch(p, d + dd, c), f).latency_s >= t * (1 - 1e-12)
    if frac == 1.0:
        assert t == pytest.approx(max(gpu_s, host_s), rel=1e-12)
