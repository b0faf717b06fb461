"""Compiled core of the serving simulator: vLLM V1 scheduling on every replica of a node (numba).

State lives in plain numpy arrays (so ``SimNode.fork`` is a copy) indexed by the constants below.
One call of ``run_until`` advances the whole node to ``t_end``:

* arrivals are routed, in time order, to the serving replica with the fewest outstanding requests
  (the router cannot see output lengths); with no replica serving they wait in a node-level queue;
* each replica schedules like vLLM V1: running requests first (a decode token each, or the next
  prefill chunk), then waiting requests FCFS while a seat (``running < max_num_seqs``), token budget
  (``max_num_batched_tokens``) and KV blocks are free; when KV blocks run out the newest running
  request is preempted, its blocks freed, and it is recomputed later from the front of the queue;
* an iteration's latency and power come from ``step_scalar``, the compiled twin of
  ``greenrl.surrogate.model.step`` (a parity test keeps them equal);
* with a prefill clock (``cfg[C_PREFILL_CLOCK_FRAC] > 0``) a replica runs at that clock while any of its
  requests waits or prefills and at the base clock otherwise. A switch up is asked for when the
  first such request reaches the replica (a governor watching the front end sees the arrival), a
  switch down at the first iteration with none; each takes effect ``cfg[C_SWITCH_S]`` later, also in
  the middle of an iteration (the GPU changes clock under a running kernel), whose remaining work then
  runs at the new clock. With a TTFT target (``cfg[C_BOOST_TTFT_S] >= 0``, the deadline governor) each
  request gets a boost time when it reaches the replica (``_boost_at``) and the switch up is asked for
  at the earliest boost time of the pending requests instead;
* ``fast`` mode jumps over runs of pure-decode iterations whose batch does not change (no arrival,
  admission, prefill chunk, completion or KV-block shortage in between): their latency is exactly
  linear in the step index, so time and energy are summed in closed form.

An iteration is accounted when it starts (its tokens carry its end time), so a request can show as
finished up to one iteration before its finish time. Idle replicas draw idle power; loading ones
``reload_power``.

Public names: step_scalar, base_clock_prefill_s, run_until, plus the column constants.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# packed surrogate parameters (greenrl.surrogate.model.PACKED_FIELDS)
P_TP, P_LAYERS, P_FLOPS_TOK, P_LMHEAD, P_DENSE_W, P_EXPERT_W, P_EXPERTS, P_TOPK = 0, 1, 2, 3, 4, 5, 6, 7
P_KV_TOK, P_ATTN_PAIR, P_ACT_TOK, P_AR_TOK, P_LIN_PEAK, P_ATTN_PEAK, P_MEM_BW, P_AR_BW = 8, 9, 10, 11, 12, 13, 14, 15
P_IDLE_W, P_TDP_W, P_MIN_CLOCK, P_SHARP, P_ACT_TRAFFIC = 16, 17, 18, 19, 20
P_EFF_C, P_EFF_M, P_ITER_OVH, P_LAYER_OVH, P_SEQ_OVH, P_WORKER_OVH, P_AR_LAT = 21, 22, 23, 24, 25, 26, 27
P_BUSY_W, P_COMP_W, P_MEM_W = 28, 29, 30
N_PACKED = 31

HBM_J_PER_BYTE = 3.9e-12 * 8
MEM_SAT_FRAC = 0.5
V_MIN_FRAC = 0.7

# request float columns
RF_ARRIVAL, RF_FIRST_TOKEN, RF_FINISH, RF_LAST_TOKEN, RF_TBT_SUM, RF_TBT_MAX, RF_ADMIT, RF_TTFT_SLO = range(8)
RF_BOOST_AT = 8  # deadline governor: when this request needs the prefill clock (s), set when it reaches a replica
N_RF = 9
# request int columns
RI_PROMPT, RI_OUTPUT, RI_STATE, RI_SLOT, RI_CTX, RI_GENERATED, RI_PREEMPT, RI_BLOCKS, RI_NEXT, RI_PHASE = range(10)
N_RI = 10
# request states
FUTURE, WAITING, RUNNING, FINISHED, REJECTED = 0, 1, 2, 3, 4
# slot int columns
SI_STATUS, SI_NRUN, SI_QHEAD, SI_QTAIL, SI_QLEN, SI_OUTSTANDING, SI_FREE_BLOCKS, SI_TOTAL_BLOCKS, SI_TP_IDX = range(9)
N_SI = 9
# slot status
OFF, SERVING, DRAINING, LOADING = 0, 1, 2, 3
# slot float columns
SF_BUSY_UNTIL, SF_ACCOUNTED_TO, SF_READY_AT, SF_ENERGY_J, SF_BUSY_S, SF_RELOAD_W = range(6)
SF_CLOCK_NOW, SF_CLOCK_TARGET, SF_CLOCK_AT = 6, 7, 8  # the replica's clock under a prefill clock (fractions, s)
SF_PENDING_SINCE = 9  # when a request first waited or prefilled since the replica last had none (s; -1: none)
N_SF = 10
# node int state
G_NEXT_ARRIVAL, G_PHEAD, G_PTAIL, G_PLEN = range(4)
N_G = 4
# config
C_CLOCK_FRAC, C_MAX_SEQS, C_MAX_BATCHED, C_BLOCK, C_TBT_SLO, C_PREFILL_CLOCK_FRAC, C_SWITCH_S = range(7)
C_BOOST_TTFT_S = 7  # < 0: the prefill clock whenever a request is pending; else the deadline governor's TTFT target (s)
N_C = 8
# interval counters
K_ARRIVED, K_PROMPT_IN, K_TOKENS_OUT, K_PREFILL_TOKENS, K_FINISHED, K_SLO_MET, K_PREEMPTIONS = range(7)
K_ITERATIONS, K_TTFT_SUM, K_TBT_SUM, K_REJECTED, K_FIRST_TOKENS, K_SCHEDULES = 7, 8, 9, 10, 11, 12
K_PREFILL_CLOCK_S, K_BUSY_S = 13, 14  # busy replica-seconds at the prefill clock, and in all
N_K = 15
# return codes of run_until
DONE, SLOT_DRAINED = 0, 1


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
    overhead = v[P_ITER_OVH] + v[P_LAYERS] * v[P_LAYER_OVH] + decode_seqs * v[P_SEQ_OVH]
    overhead += (v[P_TP] - 1.0) * v[P_WORKER_OVH]
    big = max(lin_c, lin_m)
    small = min(lin_c, lin_m)
    p = v[P_SHARP]
    roof = big * (1.0 + (small / max(big, 1e-30)) ** p) ** (1.0 / p)
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


@njit(cache=True)
def _blocks(tokens: int, block: int) -> int:
    return (tokens + block - 1) // block


@njit(cache=True)
def _push_back(req_i: np.ndarray, slot_i: np.ndarray, s: int, rid: int) -> None:
    req_i[rid, RI_NEXT] = -1
    if slot_i[s, SI_QTAIL] < 0:
        slot_i[s, SI_QHEAD] = rid
    else:
        req_i[slot_i[s, SI_QTAIL], RI_NEXT] = rid
    slot_i[s, SI_QTAIL] = rid
    slot_i[s, SI_QLEN] += 1


@njit(cache=True)
def _push_front(req_i: np.ndarray, slot_i: np.ndarray, s: int, rid: int) -> None:
    req_i[rid, RI_NEXT] = slot_i[s, SI_QHEAD]
    slot_i[s, SI_QHEAD] = rid
    if slot_i[s, SI_QTAIL] < 0:
        slot_i[s, SI_QTAIL] = rid
    slot_i[s, SI_QLEN] += 1


@njit(cache=True)
def _pop_front(req_i: np.ndarray, slot_i: np.ndarray, s: int) -> int:
    rid = slot_i[s, SI_QHEAD]
    slot_i[s, SI_QHEAD] = req_i[rid, RI_NEXT]
    if slot_i[s, SI_QHEAD] < 0:
        slot_i[s, SI_QTAIL] = -1
    slot_i[s, SI_QLEN] -= 1
    req_i[rid, RI_NEXT] = -1
    return rid


@njit(cache=True)
def _route(
    rid: int,
    now: float,
    req_f: np.ndarray,
    req_i: np.ndarray,
    slot_i: np.ndarray,
    slot_f: np.ndarray,
    run_ids: np.ndarray,
    packed: np.ndarray,
    cap_blocks: np.ndarray,
    cfg: np.ndarray,
    cnt: np.ndarray,
) -> bool:
    """Send a request to the serving replica with the fewest outstanding requests; False if none serves."""
    best = -1
    for s in range(slot_i.shape[0]):
        if slot_i[s, SI_STATUS] == SERVING and (best < 0 or slot_i[s, SI_OUTSTANDING] < slot_i[best, SI_OUTSTANDING]):
            best = s
    if best < 0:
        return False
    # A request whose whole context can never fit in this replica's KV cache is rejected, as vLLM does.
    need = _blocks(req_i[rid, RI_PROMPT] + req_i[rid, RI_OUTPUT], int(cfg[C_BLOCK]))
    if need > cap_blocks[slot_i[best, SI_TP_IDX]]:
        req_i[rid, RI_STATE] = REJECTED
        req_f[rid, RF_FINISH] = now
        cnt[K_REJECTED] += 1.0
        return True
    req_i[rid, RI_STATE] = WAITING
    req_i[rid, RI_SLOT] = best
    slot_i[best, SI_OUTSTANDING] += 1
    _push_back(req_i, slot_i, best, rid)
    if cfg[C_BOOST_TTFT_S] >= 0.0:
        req_f[rid, RF_BOOST_AT] = _boost_at(best, rid, now, req_f, req_i, slot_i, slot_f, run_ids, packed, cfg)
    if slot_f[best, SF_PENDING_SINCE] < 0.0:
        slot_f[best, SF_PENDING_SINCE] = now  # what a prefill clock governor reacts to
    if slot_i[best, SI_NRUN] == 0 and slot_i[best, SI_QLEN] == 1 and slot_f[best, SF_BUSY_UNTIL] < now:
        slot_f[best, SF_BUSY_UNTIL] = now  # an idle replica starts when the request arrives
    return True


@njit(cache=True)
def base_clock_prefill_s(
    v: np.ndarray, tokens: float, pairs: float, decodes: float, ctx: float, max_batched: float, clock_frac: float
) -> float:
    """Seconds to prefill ``tokens`` (attention ``pairs``) next to a decode batch at one clock.

    Chunked prefill: ``ceil(tokens / max_batched)`` equal iterations, each with every running decode
    (``decodes`` sequences, ``ctx`` context tokens in all). What the deadline governor predicts, in the
    simulator and (with the same function) on a live node.
    """
    n_iter = max(1.0, math.ceil(tokens / max_batched))
    lat, _ = step_scalar(v, tokens / n_iter, pairs / n_iter, decodes, ctx, clock_frac)
    return n_iter * lat


@njit(cache=True)
def _boost_at(
    s: int,
    rid: int,
    now: float,
    req_f: np.ndarray,
    req_i: np.ndarray,
    slot_i: np.ndarray,
    slot_f: np.ndarray,
    run_ids: np.ndarray,
    packed: np.ndarray,
    cfg: np.ndarray,
) -> float:
    """When the deadline governor asks for the prefill clock for ``rid``, just queued on replica ``s``.

    At the base clock from ``now``, ``rid`` would get its first token after the iteration under way and
    the prefill of everything waiting or prefilling ahead of it and of its own prompt, next to the
    running decodes. It asks for the prefill clock at the latest time (not before ``now``) that leaves
    that first token within ``C_BOOST_TTFT_S`` of its arrival. The target is one for all requests, not
    each one's own TTFT SLO: a long prompt prefilling at the base clock also delays the prompts that
    arrive behind it. A request that must wait for a seat asks at once: its wait depends on completions.
    """
    if slot_i[s, SI_NRUN] + slot_i[s, SI_QLEN] > int(cfg[C_MAX_SEQS]):
        return now
    tokens = 0.0
    pairs = 0.0
    decodes = 0
    ctx = 0.0
    for j in range(slot_i[s, SI_NRUN]):
        r = run_ids[s, j]
        if req_i[r, RI_PHASE] == 1:
            decodes += 1
            ctx += req_i[r, RI_CTX]
        else:
            left = req_i[r, RI_PROMPT] + req_i[r, RI_GENERATED] - req_i[r, RI_CTX]
            tokens += left
            pairs += left * (req_i[r, RI_CTX] + left / 2.0)
    q = slot_i[s, SI_QHEAD]
    while q >= 0:  # rid is the tail
        left = req_i[q, RI_PROMPT] + req_i[q, RI_GENERATED]
        tokens += left
        pairs += left * left / 2.0
        q = req_i[q, RI_NEXT]
    v = packed[slot_i[s, SI_TP_IDX]]
    busy = max(0.0, slot_f[s, SF_BUSY_UNTIL] - now)  # the iteration under way (its tokens are booked)
    work = base_clock_prefill_s(v, tokens, pairs, float(decodes), ctx, cfg[C_MAX_BATCHED], cfg[C_CLOCK_FRAC])
    return max(now, req_f[rid, RF_ARRIVAL] + cfg[C_BOOST_TTFT_S] - busy - work)


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
def _account_idle(s: int, until: float, slot_f: np.ndarray, slot_i: np.ndarray, packed: np.ndarray) -> None:
    gap = until - slot_f[s, SF_ACCOUNTED_TO]
    if gap > 0.0:
        v = packed[slot_i[s, SI_TP_IDX]]
        watts = slot_f[s, SF_RELOAD_W] if slot_i[s, SI_STATUS] == LOADING else v[P_IDLE_W] * v[P_TP]
        slot_f[s, SF_ENERGY_J] += watts * gap
        slot_f[s, SF_ACCOUNTED_TO] = until


@njit(cache=True)
def _pending_boost_at(s: int, req_f: np.ndarray, req_i: np.ndarray, slot_i: np.ndarray, run_ids: np.ndarray) -> float:
    """The earliest ``RF_BOOST_AT`` of the requests waiting or prefilling on replica ``s`` (inf: none)."""
    at = np.inf
    for j in range(slot_i[s, SI_NRUN]):
        r = run_ids[s, j]
        if req_i[r, RI_PHASE] == 0:
            at = min(at, req_f[r, RF_BOOST_AT])
    q = slot_i[s, SI_QHEAD]
    while q >= 0:
        at = min(at, req_f[q, RF_BOOST_AT])
        q = req_i[q, RI_NEXT]
    return at


@njit(cache=True)
def _replica_clock(
    s: int, t0: float, prefill_pending: bool, boost_at: float, slot_f: np.ndarray, cfg: np.ndarray
) -> tuple[float, bool]:
    """The clock of an iteration starting at ``t0``, and whether the replica wants its base clock.

    Without a prefill clock this is the base clock. With one, the replica wants the prefill clock
    while a request waits or prefills (or, under the deadline governor, from ``boost_at``, the
    earliest time a pending request needs it) and the base clock otherwise. A change of what it
    wants takes effect ``C_SWITCH_S`` after it was asked for: a switch up from the arrival that made a
    request pending (``SF_PENDING_SINCE``) or from ``boost_at`` if later, a switch down from ``t0``.
    Until then the previous clock holds; a switch that lands inside the iteration is split there by
    ``_iterate``.
    """
    base = cfg[C_CLOCK_FRAC]
    high = cfg[C_PREFILL_CLOCK_FRAC]
    if high <= 0.0 or slot_f[s, SF_CLOCK_NOW] <= 0.0:  # off, or a fresh replica: at the base clock
        slot_f[s, SF_CLOCK_NOW] = base
        slot_f[s, SF_CLOCK_TARGET] = base
        slot_f[s, SF_CLOCK_AT] = -1.0
        if high <= 0.0:
            return base, True
    if slot_f[s, SF_CLOCK_AT] >= 0.0 and t0 >= slot_f[s, SF_CLOCK_AT]:
        slot_f[s, SF_CLOCK_NOW] = slot_f[s, SF_CLOCK_TARGET]
        slot_f[s, SF_CLOCK_AT] = -1.0
    if not prefill_pending:
        slot_f[s, SF_PENDING_SINCE] = -1.0
    elif slot_f[s, SF_PENDING_SINCE] < 0.0:
        slot_f[s, SF_PENDING_SINCE] = t0  # pending without an arrival: a preempted request queued again
    asked = slot_f[s, SF_PENDING_SINCE]
    if cfg[C_BOOST_TTFT_S] >= 0.0:
        asked = max(asked, boost_at)
    up = prefill_pending and asked < np.inf
    want = high if up else base
    lands = (asked if up else t0) + cfg[C_SWITCH_S]
    if want != slot_f[s, SF_CLOCK_TARGET] or (up and slot_f[s, SF_CLOCK_AT] > lands):
        # a new target, or (deadline governor) a newly routed request needs the pending switch sooner
        slot_f[s, SF_CLOCK_TARGET] = want
        if lands <= t0:
            slot_f[s, SF_CLOCK_NOW] = want
            slot_f[s, SF_CLOCK_AT] = -1.0
        else:
            slot_f[s, SF_CLOCK_AT] = lands
    return slot_f[s, SF_CLOCK_NOW], not up


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


@njit(cache=True)
def run_until(
    t_now: float,
    t_end: float,
    fast: bool,
    req_f: np.ndarray,
    req_i: np.ndarray,
    slot_i: np.ndarray,
    slot_f: np.ndarray,
    run_ids: np.ndarray,
    packed: np.ndarray,
    cap_blocks: np.ndarray,
    cfg: np.ndarray,
    g: np.ndarray,
    cnt: np.ndarray,
    hist_ttft: np.ndarray,
    ttft_edges: np.ndarray,
    hist_itl: np.ndarray,
    itl_edges: np.ndarray,
    chunk: np.ndarray,
) -> int:
    """Advance the node to ``t_end``; returns SLOT_DRAINED early when a draining replica empties."""
    n_req = req_f.shape[0]
    n_slots = slot_i.shape[0]
    inf = np.inf
    _route_pending(t_now, req_f, req_i, slot_i, slot_f, run_ids, packed, cap_blocks, cfg, g, cnt)
    while True:
        # next replica event: an iteration to start, a load to finish
        t_rep = inf
        r = -1
        for s in range(n_slots):
            st = slot_i[s, SI_STATUS]
            if st in (SERVING, DRAINING):
                if slot_i[s, SI_NRUN] + slot_i[s, SI_QLEN] > 0:
                    if slot_f[s, SF_BUSY_UNTIL] < t_rep:
                        t_rep = slot_f[s, SF_BUSY_UNTIL]
                        r = s
                elif st == DRAINING:
                    _account_idle(s, slot_f[s, SF_BUSY_UNTIL], slot_f, slot_i, packed)
                    slot_i[s, SI_STATUS] = OFF
                    slot_f[s, SF_READY_AT] = max(slot_f[s, SF_BUSY_UNTIL], t_now)  # when it drained
                    return SLOT_DRAINED
            elif st == LOADING and slot_f[s, SF_READY_AT] < t_rep:
                t_rep = slot_f[s, SF_READY_AT]
                r = s
        nxt_i = g[G_NEXT_ARRIVAL]
        t_arr = req_f[nxt_i, RF_ARRIVAL] if nxt_i < n_req else inf
        if min(t_arr, t_rep) >= t_end:
            return DONE
        if t_arr <= t_rep:
            cnt[K_ARRIVED] += 1.0
            cnt[K_PROMPT_IN] += req_i[nxt_i, RI_PROMPT]
            g[G_NEXT_ARRIVAL] = nxt_i + 1
            if not _route(nxt_i, t_arr, req_f, req_i, slot_i, slot_f, run_ids, packed, cap_blocks, cfg, cnt):
                push_pending(req_i, g, nxt_i)
            continue
        s = r
        if slot_i[s, SI_STATUS] == LOADING:
            _account_idle(s, t_rep, slot_f, slot_i, packed)
            slot_i[s, SI_STATUS] = SERVING
            slot_f[s, SF_BUSY_UNTIL] = t_rep
            _route_pending(t_rep, req_f, req_i, slot_i, slot_f, run_ids, packed, cap_blocks, cfg, g, cnt)
            continue
        _account_idle(s, t_rep, slot_f, slot_i, packed)
        limit = t_end
        for q in range(n_slots):
            if slot_i[q, SI_STATUS] == LOADING:
                limit = min(limit, slot_f[q, SF_READY_AT])
        _iterate(
            s,
            t_rep,
            limit,
            t_arr,
            fast,
            req_f,
            req_i,
            slot_i,
            slot_f,
            run_ids,
            packed,
            cfg,
            cnt,
            hist_ttft,
            ttft_edges,
            hist_itl,
            itl_edges,
            chunk,
        )


@njit(cache=True)
def push_pending(req_i: np.ndarray, g: np.ndarray, rid: int) -> None:
    """Append a request to the node-level queue (no replica serving it yet)."""
    req_i[rid, RI_STATE] = WAITING
    req_i[rid, RI_NEXT] = -1
    if g[G_PTAIL] >= 0:
        req_i[g[G_PTAIL], RI_NEXT] = rid
    else:
        g[G_PHEAD] = rid
    g[G_PTAIL] = rid
    g[G_PLEN] += 1


@njit(cache=True)
def _route_pending(
    now: float,
    req_f: np.ndarray,
    req_i: np.ndarray,
    slot_i: np.ndarray,
    slot_f: np.ndarray,
    run_ids: np.ndarray,
    packed: np.ndarray,
    cap_blocks: np.ndarray,
    cfg: np.ndarray,
    g: np.ndarray,
    cnt: np.ndarray,
) -> None:
    """Route the node-level queue (requests that arrived while no replica served), oldest first."""
    while g[G_PLEN] > 0:
        rid = g[G_PHEAD]
        nxt = req_i[rid, RI_NEXT]
        if not _route(rid, now, req_f, req_i, slot_i, slot_f, run_ids, packed, cap_blocks, cfg, cnt):
            return
        g[G_PHEAD] = nxt
        g[G_PLEN] -= 1
        if g[G_PLEN] == 0:
            g[G_PTAIL] = -1


@njit(cache=True)
def finish_interval(t_end: float, slot_i: np.ndarray, slot_f: np.ndarray, packed: np.ndarray) -> None:
    """Charge idle and loading power of every replica up to ``t_end``."""
    for s in range(slot_i.shape[0]):
        if slot_f[s, SF_ACCOUNTED_TO] < t_end:
            _account_idle(s, t_end, slot_f, slot_i, packed)
