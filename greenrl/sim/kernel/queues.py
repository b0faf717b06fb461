"""Request queues of the compiled core: each replica's FCFS waiting queue and the node-level queue.

Both are singly linked lists threaded through the request table (``RI_NEXT``): a replica's head, tail
and length live in its ``slot_i`` row (``SI_QHEAD``, ``SI_QTAIL``, ``SI_QLEN``), the node queue's in
``g`` (``G_PHEAD``, ``G_PTAIL``, ``G_PLEN``) and holds requests that arrived while no replica served.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from greenrl.sim.kernel.layout import G_PHEAD, G_PLEN, G_PTAIL, RI_NEXT, RI_STATE, SI_QHEAD, SI_QLEN, SI_QTAIL, WAITING


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
