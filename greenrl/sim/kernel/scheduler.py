"""vLLM V1 scheduling of one replica, compiled: one iteration (or a run of identical decode steps).

``_iterate`` schedules like vLLM V1: running requests first (a decode token each, or the next prefill
chunk), then waiting requests FCFS while a seat, token budget and KV blocks are free; when KV blocks
run out the newest running request is preempted (``_preempt_newest``). It then books the iteration's
time, energy and tokens (``_emit_token``, the latency histograms via ``_hist_add``) and retires
finished requests (``_finish_done``). In ``fast`` mode it jumps over a run of pure-decode iterations
whose batch does not change, summing their time and energy in closed form.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from greenrl.sim.kernel.governor import _pending_boost_at, _replica_clock
from greenrl.sim.kernel.layout import (
    C_BLOCK,
    C_BOOST_TTFT_S,
    C_CLOCK_FRAC,
    C_MAX_BATCHED,
    C_MAX_SEQS,
    C_PREFILL_CLOCK_FRAC,
    C_TBT_SLO,
    DRAINING,
    FINISHED,
    K_BUSY_S,
    K_FINISHED,
    K_FIRST_TOKENS,
    K_ITERATIONS,
    K_PREEMPTIONS,
    K_PREFILL_CLOCK_S,
    K_PREFILL_TOKENS,
    K_REJECTED,
    K_SCHEDULES,
    K_SLO_MET,
    K_TBT_SUM,
    K_TOKENS_OUT,
    K_TTFT_SUM,
    REJECTED,
    RF_ADMIT,
    RF_ARRIVAL,
    RF_FINISH,
    RF_FIRST_TOKEN,
    RF_LAST_TOKEN,
    RF_TBT_MAX,
    RF_TBT_SUM,
    RF_TTFT_SLO,
    RI_BLOCKS,
    RI_CTX,
    RI_GENERATED,
    RI_OUTPUT,
    RI_PHASE,
    RI_PREEMPT,
    RI_PROMPT,
    RI_STATE,
    RUNNING,
    SERVING,
    SF_ACCOUNTED_TO,
    SF_BUSY_S,
    SF_BUSY_UNTIL,
    SF_CLOCK_AT,
    SF_CLOCK_TARGET,
    SF_ENERGY_J,
    SI_FREE_BLOCKS,
    SI_NRUN,
    SI_OUTSTANDING,
    SI_QHEAD,
    SI_QLEN,
    SI_STATUS,
    SI_TP_IDX,
    WAITING,
)
from greenrl.sim.kernel.queues import _pop_front, _push_front
from greenrl.sim.kernel.step import step_scalar


@njit(cache=True)
def _blocks(tokens: int, block: int) -> int:
    return (tokens + block - 1) // block


@njit(cache=True)
def _preempt_newest(s: int, req_i: np.ndarray, slot_i: np.ndarray, run_ids: np.ndarray, cnt: np.ndarray) -> int:
    n = slot_i[s, SI_NRUN]
    victim = run_ids[s, n - 1]
    slot_i[s, SI_NRUN] = n - 1
    slot_i[s, SI_FREE_BLOCKS] += req_i[victim, RI_BLOCKS]
    req_i[victim, RI_BLOCKS] = 0
    req_i[victim, RI_CTX] = 0
    req_i[victim, RI_PHASE] = 0
    req_i[victim, RI_STATE] = WAITING
    req_i[victim, RI_PREEMPT] += 1
    cnt[K_PREEMPTIONS] += 1.0
    _push_front(req_i, slot_i, s, victim)
    return victim


@njit(cache=True)
def _hist_add(hist: np.ndarray, edges: np.ndarray, value: float, count: float) -> None:
    # Prometheus-style buckets: hist[i] counts values <= edges[i]; the last bucket is +Inf.
    i = np.searchsorted(edges, value)
    hist[i] += count


@njit(cache=True)
def _emit_token(
    rid: int,
    t_end: float,
    req_f: np.ndarray,
    req_i: np.ndarray,
    cnt: np.ndarray,
    hist_ttft: np.ndarray,
    ttft_edges: np.ndarray,
    hist_itl: np.ndarray,
    itl_edges: np.ndarray,
) -> None:
    req_i[rid, RI_GENERATED] += 1
    cnt[K_TOKENS_OUT] += 1.0
    if req_i[rid, RI_GENERATED] == 1:
        ttft = t_end - req_f[rid, RF_ARRIVAL]
        req_f[rid, RF_FIRST_TOKEN] = t_end
        cnt[K_TTFT_SUM] += ttft
        cnt[K_FIRST_TOKENS] += 1.0
        _hist_add(hist_ttft, ttft_edges, ttft, 1.0)
    else:
        gap = t_end - req_f[rid, RF_LAST_TOKEN]
        req_f[rid, RF_TBT_SUM] += gap
        req_f[rid, RF_TBT_MAX] = max(req_f[rid, RF_TBT_MAX], gap)
        cnt[K_TBT_SUM] += gap
        _hist_add(hist_itl, itl_edges, gap, 1.0)
    req_f[rid, RF_LAST_TOKEN] = t_end


@njit(cache=True)
def _finish_done(
    s: int,
    t_end: float,
    req_f: np.ndarray,
    req_i: np.ndarray,
    slot_i: np.ndarray,
    run_ids: np.ndarray,
    cfg: np.ndarray,
    cnt: np.ndarray,
) -> None:
    """Remove finished requests from the running list, keeping admission order."""
    n = slot_i[s, SI_NRUN]
    keep = 0
    for j in range(n):
        rid = run_ids[s, j]
        if req_i[rid, RI_GENERATED] >= req_i[rid, RI_OUTPUT]:
            req_i[rid, RI_STATE] = FINISHED
            req_f[rid, RF_FINISH] = t_end
            slot_i[s, SI_FREE_BLOCKS] += req_i[rid, RI_BLOCKS]
            req_i[rid, RI_BLOCKS] = 0
            slot_i[s, SI_OUTSTANDING] -= 1
            cnt[K_FINISHED] += 1.0
            gen = req_i[rid, RI_GENERATED]
            mean_tbt = req_f[rid, RF_TBT_SUM] / (gen - 1) if gen > 1 else 0.0
            if (
                req_f[rid, RF_FIRST_TOKEN] - req_f[rid, RF_ARRIVAL] <= req_f[rid, RF_TTFT_SLO]
                and mean_tbt <= cfg[C_TBT_SLO]
            ):
                cnt[K_SLO_MET] += 1.0
        else:
            run_ids[s, keep] = rid
            keep += 1
    slot_i[s, SI_NRUN] = keep


@njit(cache=True)
def _iterate(
    s: int,
    t0: float,
    t_limit: float,
    t_arrival: float,
    fast: bool,
    req_f: np.ndarray,
    req_i: np.ndarray,
    slot_i: np.ndarray,
    slot_f: np.ndarray,
    run_ids: np.ndarray,
    packed: np.ndarray,
    cfg: np.ndarray,
    cnt: np.ndarray,
    hist_ttft: np.ndarray,
    ttft_edges: np.ndarray,
    hist_itl: np.ndarray,
    itl_edges: np.ndarray,
    chunk: np.ndarray,
) -> None:
    """Schedule and run one iteration (or, in fast mode, a run of identical-batch decode iterations)."""
    block = int(cfg[C_BLOCK])
    budget = int(cfg[C_MAX_BATCHED])
    seats = min(int(cfg[C_MAX_SEQS]), run_ids.shape[1])
    v = packed[slot_i[s, SI_TP_IDX]]
    preempted = False
    # 1. running requests, in admission order
    j = 0
    while j < slot_i[s, SI_NRUN]:
        rid = run_ids[s, j]
        # a decode token, or the rest of the (re)prefill
        want = 1 if req_i[rid, RI_PHASE] == 1 else req_i[rid, RI_PROMPT] + req_i[rid, RI_GENERATED] - req_i[rid, RI_CTX]
        take = min(want, budget)
        chunk[rid] = 0
        if take <= 0:
            j += 1
            continue
        extra = _blocks(req_i[rid, RI_CTX] + take, block) - req_i[rid, RI_BLOCKS]
        while extra > slot_i[s, SI_FREE_BLOCKS]:
            victim = _preempt_newest(s, req_i, slot_i, run_ids, cnt)
            preempted = True
            if victim == rid:
                break
        if req_i[rid, RI_STATE] != RUNNING:
            break  # it preempted itself: everything after it is gone too
        slot_i[s, SI_FREE_BLOCKS] -= extra
        req_i[rid, RI_BLOCKS] += extra
        chunk[rid] = take
        budget -= take
        j += 1
    # 2. waiting requests, FCFS, while a seat, token budget and KV blocks are free
    admitted = False
    blocked_head = False
    # A draining replica's queue holds only its own preempted in-flight requests: it finishes them too.
    if slot_i[s, SI_STATUS] == SERVING or slot_i[s, SI_STATUS] == DRAINING:
        while slot_i[s, SI_QLEN] > 0 and budget > 0 and slot_i[s, SI_NRUN] < seats:
            rid = slot_i[s, SI_QHEAD]
            take = min(req_i[rid, RI_PROMPT] + req_i[rid, RI_GENERATED], budget)
            need = _blocks(take, block)
            if need > slot_i[s, SI_FREE_BLOCKS]:
                blocked_head = True
                break
            _pop_front(req_i, slot_i, s)
            run_ids[s, slot_i[s, SI_NRUN]] = rid
            slot_i[s, SI_NRUN] += 1
            req_i[rid, RI_STATE] = RUNNING
            if req_f[rid, RF_ADMIT] < 0.0:
                req_f[rid, RF_ADMIT] = t0
            slot_i[s, SI_FREE_BLOCKS] -= need
            req_i[rid, RI_BLOCKS] = need
            chunk[rid] = take
            budget -= take
            admitted = True
    # 3. the iteration's work
    prefill = 0.0
    pairs = 0.0
    decodes = 0
    ctx = 0.0
    for j in range(slot_i[s, SI_NRUN]):
        rid = run_ids[s, j]
        c = chunk[rid]
        if c <= 0:
            continue
        if req_i[rid, RI_PHASE] == 1:
            decodes += 1
            ctx += req_i[rid, RI_CTX] + 1.0
        else:
            prefill += c
            pairs += c * (req_i[rid, RI_CTX] + c / 2.0)
    if prefill == 0.0 and decodes == 0:
        # Nothing could be scheduled (a lone request that cannot fit the KV cache): reject it, as vLLM
        # would, so the replica always makes progress.
        if slot_i[s, SI_NRUN] == 0 and slot_i[s, SI_QLEN] > 0:
            rid = _pop_front(req_i, slot_i, s)
            req_i[rid, RI_STATE] = REJECTED
            req_f[rid, RF_FINISH] = t0
            slot_i[s, SI_OUTSTANDING] -= 1
            cnt[K_REJECTED] += 1.0
        return
    pending = prefill > 0.0 or slot_i[s, SI_QLEN] > 0
    boost_at = np.inf
    if pending and cfg[C_BOOST_TTFT_S] >= 0.0 and cfg[C_PREFILL_CLOCK_FRAC] > 0.0:
        boost_at = _pending_boost_at(s, req_f, req_i, slot_i, run_ids)
    clock, want_base = _replica_clock(s, t0, pending, boost_at, slot_f, cfg)
    lat0, pow0 = step_scalar(v, prefill, pairs, float(decodes), ctx, clock)
    high = cfg[C_PREFILL_CLOCK_FRAC]
    high_s = lat0 if high > 0.0 and clock == high and clock != cfg[C_CLOCK_FRAC] else 0.0
    switch_at = slot_f[s, SF_CLOCK_AT]
    if t0 < switch_at < t0 + lat0:
        # The clock changes under the running iteration: the work left after the switch runs at the new clock.
        after = slot_f[s, SF_CLOCK_TARGET]
        lat_new, pow_new = step_scalar(v, prefill, pairs, float(decodes), ctx, after)
        head_s = switch_at - t0
        tail_s = (1.0 - head_s / lat0) * lat_new
        high_s = (head_s if high_s > 0.0 else 0.0) + (tail_s if after == high and after != cfg[C_CLOCK_FRAC] else 0.0)
        pow0 = (head_s * pow0 + tail_s * pow_new) / (head_s + tail_s)
        lat0 = head_s + tail_s
    steps = 1
    total_s = lat0
    energy = lat0 * pow0
    lat_last = lat0
    slope = 0.0
    # no jump while a clock switch is pending: exact steps until it lands (at most C_SWITCH_S)
    can_jump = fast and prefill == 0.0 and decodes > 0 and not admitted and not preempted and not switch_at > t0
    full = blocked_head or slot_i[s, SI_NRUN] >= seats
    if can_jump and slot_i[s, SI_QLEN] > 0 and not full:
        can_jump = False  # a queued request could be admitted next iteration
    # An arrival can change this replica's batch only if it could be admitted; a full replica's batch
    # changes first at a completion. Jumps stop one step before a completion, so the router sees the
    # same outstanding counts as in exact mode.
    bound = t_limit if full else min(t_limit, t_arrival)
    if high > 0.0 and want_base:
        # The clock must hold over a jump: stop at an arrival that could raise it (an arrival queues
        # even at a full replica).
        bound = min(bound, t_arrival)
    if can_jump:
        lat1, _ = step_scalar(v, 0.0, 0.0, float(decodes), ctx + decodes, clock)
        slope = lat1 - lat0
        k_done = 1 << 30
        for j in range(slot_i[s, SI_NRUN]):
            rid = run_ids[s, j]
            k_done = min(k_done, req_i[rid, RI_OUTPUT] - req_i[rid, RI_GENERATED])
        # KV: the largest k whose block growth fits in the free blocks. Each sequence needs at most
        # ceil(k / block) new blocks in k steps: when even that fits, skip the exact binary search.
        lo, hi = 1, k_done
        if decodes * ((k_done + block - 1) // block) <= slot_i[s, SI_FREE_BLOCKS]:
            lo = k_done
        while lo < hi:
            mid = (lo + hi + 1) // 2
            extra = 0
            for j in range(slot_i[s, SI_NRUN]):
                rid = run_ids[s, j]
                extra += _blocks(req_i[rid, RI_CTX] + mid, block) - req_i[rid, RI_BLOCKS]
            if extra <= slot_i[s, SI_FREE_BLOCKS]:
                lo = mid
            else:
                hi = mid - 1
        k_kv = lo
        # time: the first step that ends at or after the bound (as the exact mode would run it)
        k_time = 1
        if bound > t0 + lat0:
            gap = bound - t0
            if slope > 1e-15:
                # k·lat0 + slope·k(k-1)/2 >= gap
                a2 = slope / 2.0
                b2 = lat0 - slope / 2.0
                k_time = int(math.ceil((-b2 + math.sqrt(b2 * b2 + 4.0 * a2 * gap)) / (2.0 * a2)))
            else:
                k_time = int(math.ceil(gap / lat0))
            k_time = max(k_time, 1)
        steps = max(1, min(k_done - 1, k_kv, k_time))
        if steps > 1:
            lat_last, pow_last = step_scalar(v, 0.0, 0.0, float(decodes), ctx + (steps - 1) * decodes, clock)
            total_s = steps * lat0 + slope * steps * (steps - 1) / 2.0
            energy = steps * (lat0 * pow0 + lat_last * pow_last) / 2.0
    # 4. apply: time, energy, tokens
    slot_f[s, SF_ENERGY_J] += energy
    slot_f[s, SF_BUSY_S] += total_s
    slot_f[s, SF_ACCOUNTED_TO] = t0 + total_s
    slot_f[s, SF_BUSY_UNTIL] = t0 + total_s
    cnt[K_ITERATIONS] += steps
    cnt[K_SCHEDULES] += 1.0
    cnt[K_PREFILL_TOKENS] += prefill
    cnt[K_BUSY_S] += total_s
    if high_s > 0.0:
        cnt[K_PREFILL_CLOCK_S] += high_s if steps == 1 else total_s
    for j in range(slot_i[s, SI_NRUN]):
        rid = run_ids[s, j]
        c = chunk[rid]
        if c <= 0:
            continue
        chunk[rid] = 0
        if req_i[rid, RI_PHASE] == 1:
            if steps == 1:
                req_i[rid, RI_CTX] += 1
                _emit_token(rid, t0 + lat0, req_f, req_i, cnt, hist_ttft, ttft_edges, hist_itl, itl_edges)
            else:
                # every running sequence has emitted its first token, so each step adds one gap
                prev = req_f[rid, RF_LAST_TOKEN]
                gaps = t0 + total_s - prev
                req_i[rid, RI_CTX] += steps
                req_i[rid, RI_GENERATED] += steps
                extra = _blocks(req_i[rid, RI_CTX], block) - req_i[rid, RI_BLOCKS]
                req_i[rid, RI_BLOCKS] += extra
                slot_i[s, SI_FREE_BLOCKS] -= extra
                req_f[rid, RF_TBT_SUM] += gaps
                req_f[rid, RF_TBT_MAX] = max(req_f[rid, RF_TBT_MAX], max(t0 + lat0 - prev, lat_last))
                req_f[rid, RF_LAST_TOKEN] = t0 + total_s
                cnt[K_TOKENS_OUT] += steps
                cnt[K_TBT_SUM] += gaps
        else:
            req_i[rid, RI_CTX] += c
            if req_i[rid, RI_CTX] >= req_i[rid, RI_PROMPT] + req_i[rid, RI_GENERATED]:
                req_i[rid, RI_PHASE] = 1
                _emit_token(rid, t0 + lat0, req_f, req_i, cnt, hist_ttft, ttft_edges, hist_itl, itl_edges)
    if steps > 1:
        # one histogram observation per token: each step k adds `decodes` values of its latency
        for k in range(steps):
            _hist_add(hist_itl, itl_edges, lat0 + slope * k, float(decodes))
    _finish_done(s, t0 + total_s, req_f, req_i, slot_i, run_ids, cfg, cnt)
