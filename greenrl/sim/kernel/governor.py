"""The prefill clock and the deadline governor of the compiled core.

With a prefill clock (``cfg[C_PREFILL_CLOCK_FRAC] > 0``) a replica runs at that clock while any of its
requests waits or prefills and at the base clock otherwise (``_replica_clock``). With a TTFT target
(``cfg[C_BOOST_TTFT_S] >= 0``, the deadline governor) each request gets a boost time when it reaches a
replica (``_boost_at``, from ``base_clock_prefill_s``) and the switch up is asked for at the earliest
boost time of the pending requests (``_pending_boost_at``) instead. ``base_clock_prefill_s`` is also
what the live deadline governor (``greenrl.live.deadline``) predicts with.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from greenrl.sim.kernel.layout import (
    C_BOOST_TTFT_S,
    C_CLOCK_FRAC,
    C_MAX_BATCHED,
    C_MAX_SEQS,
    C_PREFILL_CLOCK_FRAC,
    C_SWITCH_S,
    RF_ARRIVAL,
    RF_BOOST_AT,
    RI_CTX,
    RI_GENERATED,
    RI_NEXT,
    RI_PHASE,
    RI_PROMPT,
    SF_BUSY_UNTIL,
    SF_CLOCK_AT,
    SF_CLOCK_NOW,
    SF_CLOCK_TARGET,
    SF_PENDING_SINCE,
    SI_NRUN,
    SI_QHEAD,
    SI_QLEN,
    SI_TP_IDX,
)
from greenrl.sim.kernel.step import step_scalar


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
