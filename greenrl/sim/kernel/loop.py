"""The main loop of the compiled core: arrivals, routing, replica events and idle energy.

``run_until`` advances the whole node to ``t_end``: it routes each arrival, in time order, to the
serving replica with the fewest outstanding requests (``_route``; with none serving it waits in the
node-level queue, routed by ``_route_pending`` once one serves), finishes replica loads and runs the
next iteration of the replica whose turn is first (``scheduler._iterate``). Between iterations a serving
replica draws its loaded-idle power, an OFF one its parked power and a loading one ``reload_power``
(``_account_idle``, ``finish_interval``; the watts are per-slot columns the node sets).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from greenrl.sim.kernel.governor import _boost_at
from greenrl.sim.kernel.layout import (
    C_BLOCK,
    C_BOOST_TTFT_S,
    C_MAX_MODEL_LEN,
    DONE,
    DRAINING,
    G_NEXT_ARRIVAL,
    G_PHEAD,
    G_PLEN,
    G_PTAIL,
    K_ARRIVED,
    K_PROMPT_IN,
    K_REJECTED,
    LOADING,
    OFF,
    REJECTED,
    RF_ARRIVAL,
    RF_BOOST_AT,
    RF_FINISH,
    RI_NEXT,
    RI_OUTPUT,
    RI_PROMPT,
    RI_SLOT,
    RI_STATE,
    SERVING,
    SF_ACCOUNTED_TO,
    SF_BUSY_UNTIL,
    SF_ENERGY_J,
    SF_IDLE_W,
    SF_OFF_W,
    SF_PENDING_SINCE,
    SF_READY_AT,
    SF_RELOAD_W,
    SI_NRUN,
    SI_OUTSTANDING,
    SI_QLEN,
    SI_STATUS,
    SI_TP_IDX,
    SLOT_DRAINED,
    WAITING,
)
from greenrl.sim.kernel.queues import _push_back, push_pending
from greenrl.sim.kernel.scheduler import _blocks, _iterate


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
    # A request longer than --max-model-len, or whose whole context can never fit in this replica's KV
    # cache, is rejected, as vLLM does.
    context = req_i[rid, RI_PROMPT] + req_i[rid, RI_OUTPUT]
    need = _blocks(context, int(cfg[C_BLOCK]))
    too_long = cfg[C_MAX_MODEL_LEN] > 0.0 and context > cfg[C_MAX_MODEL_LEN]
    if too_long or need > cap_blocks[slot_i[best, SI_TP_IDX]]:
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
def _account_idle(s: int, until: float, slot_f: np.ndarray, slot_i: np.ndarray) -> None:
    """Charge replica ``s`` its between-iteration power (loaded idle, OFF or reloading) up to ``until``."""
    gap = until - slot_f[s, SF_ACCOUNTED_TO]
    if gap > 0.0:
        status = slot_i[s, SI_STATUS]
        if status == LOADING:
            watts = slot_f[s, SF_RELOAD_W]
        elif status == OFF:
            watts = slot_f[s, SF_OFF_W]
        else:
            watts = slot_f[s, SF_IDLE_W]
        slot_f[s, SF_ENERGY_J] += watts * gap
        slot_f[s, SF_ACCOUNTED_TO] = until


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
                    _account_idle(s, slot_f[s, SF_BUSY_UNTIL], slot_f, slot_i)
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
            _account_idle(s, t_rep, slot_f, slot_i)
            slot_i[s, SI_STATUS] = SERVING
            slot_f[s, SF_BUSY_UNTIL] = t_rep
            _route_pending(t_rep, req_f, req_i, slot_i, slot_f, run_ids, packed, cap_blocks, cfg, g, cnt)
            continue
        _account_idle(s, t_rep, slot_f, slot_i)
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
def finish_interval(t_end: float, slot_i: np.ndarray, slot_f: np.ndarray) -> None:
    """Charge idle and loading power of every replica up to ``t_end``."""
    for s in range(slot_i.shape[0]):
        if slot_f[s, SF_ACCOUNTED_TO] < t_end:
            _account_idle(s, t_end, slot_f, slot_i)
