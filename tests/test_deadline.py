"""The live deadline governor's predictor: parity with the simulator's ``_boost_at``, and its edge cases."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest

from greenrl.catalog import load_gpu
from greenrl.errors import InputError
from greenrl.live.deadline import DEFAULT_MAX_NUM_BATCHED_TOKENS, PrefillDeadline
from greenrl.sim import kernel as K
from greenrl.surrogate import Surrogate
from greenrl.surrogate.model import pack

GPU = "h100-sxm-80gb"
NOW = 1234.5


def _kernel_boost_at(
    v: np.ndarray,
    *,
    queued: list[int],
    decodes: list[tuple[int, int]],
    own: int,
    target_s: float,
    clock_frac: float,
    max_seqs: int = 256,
    max_batched: int = 8192,
) -> float:
    """``kernel._boost_at`` for a request of ``own`` prompt tokens arriving now on one replica that runs
    ``decodes`` (prompt, generated) past their first token, with fresh prompts ``queued`` ahead of it and
    no iteration under way."""
    n = len(decodes) + len(queued) + 1
    req_f = np.zeros((n, K.N_RF))
    req_i = np.zeros((n, K.N_RI), dtype=np.int64)
    slot_i = np.zeros((1, K.N_SI), dtype=np.int64)
    slot_f = np.zeros((1, K.N_SF))
    run_ids = np.full((1, 512), -1, dtype=np.int64)
    slot_i[0, K.SI_QHEAD] = slot_i[0, K.SI_QTAIL] = -1
    slot_f[0, K.SF_BUSY_UNTIL] = NOW - 1.0  # idle since: nothing under way
    rid = 0
    for prompt, generated in decodes:
        req_i[rid, K.RI_PROMPT], req_i[rid, K.RI_GENERATED] = prompt, generated
        req_i[rid, K.RI_CTX], req_i[rid, K.RI_PHASE], req_i[rid, K.RI_STATE] = prompt + generated, 1, K.RUNNING
        run_ids[0, slot_i[0, K.SI_NRUN]] = rid
        slot_i[0, K.SI_NRUN] += 1
        rid += 1
    for prompt in [*queued, own]:
        req_i[rid, K.RI_PROMPT], req_i[rid, K.RI_STATE] = prompt, K.WAITING
        req_f[rid, K.RF_ARRIVAL] = NOW
        K._push_back(req_i, slot_i, 0, rid)
        rid += 1
    cfg = np.zeros(K.N_C)
    cfg[K.C_CLOCK_FRAC], cfg[K.C_MAX_SEQS], cfg[K.C_MAX_BATCHED] = clock_frac, max_seqs, max_batched
    cfg[K.C_BOOST_TTFT_S] = target_s
    return float(K._boost_at(0, n - 1, NOW, req_f, req_i, slot_i, slot_f, run_ids, v[None, :], cfg))


CASES: dict[str, dict[str, Any]] = {
    "lone short prompt": {"queued": [], "decodes": [], "own": 50},
    "decodes and a queue": {"queued": [300, 1200], "decodes": [(500, 20), (100, 300), (2000, 1)], "own": 400},
    "long queue ahead": {"queued": [8000, 8000, 8000], "decodes": [(100, 10)], "own": 30},
    "chunked own prompt": {"queued": [], "decodes": [(700, 50)] * 4, "own": 1500, "max_batched": 512},
    "must wait for a seat": {"queued": [100], "decodes": [(100, 5)] * 3, "own": 100, "max_seqs": 4},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("model", "tp", "base_mhz"), [("llama-3.1-8b", 1, 1005), ("llama-2-70b", 8, 1395)])
def test_boost_time_equals_the_kernels(case: str, model: str, tp: int, base_mhz: int, surrogate: Surrogate) -> None:
    spec = CASES[case]
    queued, decodes, own, max_seqs = spec["queued"], spec["decodes"], spec["own"], spec.get("max_seqs", 256)
    max_batched = spec.get("max_batched", 8192)
    gpu = load_gpu(GPU)
    v = pack(surrogate.replica(model, gpu, tp, None))  # as SimNode packs a replica
    target_s = 0.2
    want = _kernel_boost_at(
        v,
        queued=queued,
        decodes=decodes,
        own=own,
        target_s=target_s,
        clock_frac=base_mhz / gpu.max_sm_clock_mhz,
        max_seqs=max_seqs,
        max_batched=max_batched,
    )
    deadline = PrefillDeadline(model, GPU, target_s, surrogate=surrogate)
    deadline.configure(tp=tp, replicas=1, base_clock_mhz=base_mhz, max_num_batched_tokens=max_batched)
    got = deadline.boost_at(
        NOW,
        own,
        tokens_ahead=sum(queued),
        pairs_ahead=sum(n * n / 2 for n in queued),
        decoding=len(decodes),
        decode_ctx_tokens=sum(p + g for p, g in decodes),
        must_wait=len(decodes) + len(queued) + 1 > max_seqs,
    )
    assert got == pytest.approx(want, rel=0, abs=1e-12)
    if case in ("long queue ahead", "must wait for a seat"):
        assert got == NOW  # at once
    else:
        assert NOW < got < NOW + target_s  # later: its first token comes in time at the base clock until then
    if case == "lone short prompt":
        assert got > NOW + 0.15  # a short prefill: most of the target is slack


def test_the_prediction_is_the_base_clock_prefill_of_the_load() -> None:
    deadline = PrefillDeadline("llama-3.1-8b", GPU, 0.3)
    assert deadline.prefill_s(100, 5000, 0, 0) is None and deadline.serving is None
    deadline.configure(tp=2, replicas=1, base_clock_mhz=1005)
    assert deadline.serving == {"tp": 2, "replicas": 1, "base_clock_mhz": 1005, "max_num_batched_tokens": 8192}
    load = {"tokens_ahead": 3000, "pairs_ahead": 3000**2 / 2, "decoding": 4, "decode_ctx_tokens": 4000}
    work = deadline.prefill_s(3000 + 200, 3000**2 / 2 + 200**2 / 2, 4, 4000)
    assert work is not None and 0 < work < 0.3
    assert deadline.boost_at(10.0, 200, **load, must_wait=False) == pytest.approx(10.0 + 0.3 - work)
    # a faster base clock prefills sooner: the boost comes later
    deadline.configure(tp=2, replicas=1, base_clock_mhz=1980)
    assert deadline.boost_at(10.0, 200, **load, must_wait=False) > 10.0 + 0.3 - work


def test_the_load_ahead_is_shared_among_replicas() -> None:
    deadline = PrefillDeadline("llama-3.1-8b", GPU, 0.5)
    deadline.configure(tp=1, replicas=4, base_clock_mhz=1005)
    node_wide = deadline.boost_at(
        0.0,
        500,
        tokens_ahead=4 * 2000,
        pairs_ahead=4 * 2000**2 / 2,
        decoding=40,
        decode_ctx_tokens=40 * 900,
        must_wait=False,
    )
    deadline.configure(tp=1, replicas=1, base_clock_mhz=1005)
    one_replica = deadline.boost_at(
        0.0, 500, tokens_ahead=2000, pairs_ahead=2000**2 / 2, decoding=10, decode_ctx_tokens=10 * 900, must_wait=False
    )
    assert node_wide == pytest.approx(one_replica, abs=1e-12)
    assert one_replica > deadline.boost_at(
        0.0, 500, tokens_ahead=8000, pairs_ahead=4 * 2000**2 / 2, decoding=40, decode_ctx_tokens=36000, must_wait=False
    )


def test_unconfigured_or_unmodelled_tp_boosts_at_once(caplog: pytest.LogCaptureFixture) -> None:
    deadline = PrefillDeadline("llama-2-70b", GPU, 0.2)
    kw = {"tokens_ahead": 0, "pairs_ahead": 0.0, "decoding": 0, "decode_ctx_tokens": 0, "must_wait": False}
    assert deadline.boost_at(5.0, 10, **kw) == 5.0  # before configure
    assert 1 not in deadline.feasible_tp and 8 in deadline.feasible_tp  # 70B does not fit one H100
    with caplog.at_level(logging.WARNING, logger="greenrl.live.deadline"):
        deadline.configure(tp=1, replicas=8, base_clock_mhz=1005)
        deadline.configure(tp=1, replicas=8, base_clock_mhz=1005)
    assert deadline.boost_at(5.0, 10, **kw) == 5.0 and deadline.serving is None
    assert len([r for r in caplog.records if "tp=1" in r.getMessage()]) == 1  # logged once
    deadline.configure(tp=8, replicas=1, base_clock_mhz=1005)
    assert deadline.boost_at(5.0, 10, **kw) > 5.0


@pytest.mark.parametrize("target", [-0.1, math.nan, math.inf])
def test_a_bad_target_is_refused(target: float) -> None:
    with pytest.raises(InputError, match="ttft_target_s"):
        PrefillDeadline("llama-3.1-8b", GPU, target)


def test_the_default_batch_budget_is_vllms() -> None:
    assert DEFAULT_MAX_NUM_BATCHED_TOKENS == 8192  # what the predictor assumes when the knob is not given
