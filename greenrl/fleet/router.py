"""The fleet's router: each arriving request to one node, by request type (pool) and least outstanding work.

A request's type is its prompt length: pool ``p`` takes prompts longer than pool ``p - 1``'s bound and at
most its own (``FleetConfig.pools``). Among the nodes that are on and in that pool, the request goes to the
one with the least outstanding work in the router's own ledger, as a real front end keeps it: the tokens
it has sent to each node and not yet seen finish (prompt tokens plus the output length it expects, the
mean of the requests it has seen finish; it cannot know a request's own output length). A pool with no
node on spills to every node that is on. Parked nodes receive nothing. Ties go to the lowest node index
after a per-batch rotation drawn from the router's seeded Generator, so a run is deterministic for a seed.

Public names: Router, pool_of.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from greenrl.errors import InputError

__all__ = ["Router", "pool_of"]


def pool_of(input_tokens: npt.ArrayLike, bounds_tokens: tuple[float, ...]) -> npt.NDArray[np.int64]:
    """Each request's pool: the first whose bound is at least its prompt length.

    Example:
        >>> pool_of([10, 2048, 2049], (2048.0, float("inf"))).tolist()
        [0, 0, 1]
    """
    return np.searchsorted(np.asarray(bounds_tokens, dtype=float), np.asarray(input_tokens), side="left").astype(
        np.int64
    )


@njit(cache=True)
def _route_least_work(
    work: np.ndarray, pools: np.ndarray, pool_of_node: np.ndarray, on: np.ndarray, ledger: np.ndarray, offset: int
) -> np.ndarray:
    n_nodes = ledger.shape[0]
    out = np.empty(work.shape[0], dtype=np.int64)
    for r in range(work.shape[0]):
        best = -1
        for spill in range(2):
            for k in range(n_nodes):
                j = (k + offset) % n_nodes
                if not on[j] or (spill == 0 and pool_of_node[j] != pools[r]):
                    continue
                if best < 0 or ledger[j] < ledger[best]:
                    best = j
            if best >= 0:
                break
        out[r] = best
        ledger[best] += work[r]
    return out


class Router:
    """Least-outstanding-work (or round-robin) routing over length-aware pools.

    Args:
        n_nodes: nodes the router addresses.
        bounds_tokens: each pool's longest prompt (tokens), increasing, the last inf.
        policy: ``least-work`` or ``round-robin`` (within the pool, ignoring the ledger).
        prior_output_tokens: expected output length before any request finished (tokens).
        seed: seeds the tie-breaking rotation.
    """

    def __init__(
        self,
        n_nodes: int,
        bounds_tokens: tuple[float, ...],
        policy: str = "least-work",
        prior_output_tokens: float = 256.0,
        seed: int | None = None,
    ) -> None:
        if policy not in ("least-work", "round-robin"):
            raise InputError("Router", "policy", f"unknown policy {policy!r}", "use least-work or round-robin")
        self.n_nodes, self.bounds_tokens, self.policy = n_nodes, bounds_tokens, policy
        self.prior_output_tokens = prior_output_tokens
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Empty ledger, no finished request seen, a fresh tie-breaking Generator."""
        self.ledger_tokens = np.zeros(self.n_nodes)
        self._rng = np.random.default_rng(seed)
        self._finished_output_tokens = 0.0
        self._finished = 0
        self._rr = 0

    @property
    def expected_output_tokens(self) -> float:
        """Mean output of the requests seen finish (the prior until 20 have)."""
        return self._finished_output_tokens / self._finished if self._finished >= 20 else self.prior_output_tokens

    def route(
        self, input_tokens: npt.NDArray[np.int64], pool_of_node: npt.ArrayLike, on: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Nodes for a batch of requests in arrival order, and the work (tokens) each adds to the ledger.

        Args:
            input_tokens: each request's prompt length (tokens).
            pool_of_node: each node's pool index.
            on: whether each node is on (serving or coming back); at least one must be.
        """
        on_arr = np.asarray(on, dtype=np.bool_)
        if not on_arr.any():
            raise InputError("Router.route", "on", "no node is on", "keep at least one node on")
        pools = pool_of(input_tokens, self.bounds_tokens)
        work = input_tokens.astype(np.float64) + self.expected_output_tokens
        pon = np.asarray(pool_of_node, dtype=np.int64)
        offset = int(self._rng.integers(self.n_nodes))
        if self.policy == "round-robin":
            nodes = np.empty(len(pools), dtype=np.int64)
            for r, p in enumerate(pools):
                members = np.flatnonzero(on_arr & (pon == p))
                members = members if len(members) else np.flatnonzero(on_arr)
                nodes[r] = members[self._rr % len(members)]
                self._rr += 1
            np.add.at(self.ledger_tokens, nodes, work)
            return nodes, work
        return _route_least_work(work, pools, pon, on_arr, self.ledger_tokens, offset), work

    def finished(self, node: int, work_tokens: float, output_tokens: float, count: int) -> None:
        """Requests sent to ``node`` finished: their work leaves its ledger; their outputs update the expectation."""
        self.ledger_tokens[node] = max(0.0, self.ledger_tokens[node] - work_tokens)
        self._finished_output_tokens += output_tokens
        self._finished += count
