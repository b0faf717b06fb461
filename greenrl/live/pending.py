"""The admission proxy's view of its requests that the prefill-clock governor needs: the pending load.

A request is *pending* from its arrival at the proxy until its first token is sent on (or it ends
without one), and *decoding* from then until it ends. ``PendingLoad`` keeps running totals of both, in
O(1) per event, and the boost time of each pending request: the time from which it needs the prefill
clock, predicted at its arrival by a ``BoostPredictor`` (the deadline governor,
``greenrl.live.deadline.PrefillDeadline``) from the totals then, or ``-inf`` (at once) without one. The
earliest boost time of the pending requests is kept in a heap (O(log n) per arrival), so the proxy's
report to the governor stays cheap. Used from the proxy's loop thread only: nothing here locks.

Public names: PendingEntry, PendingLoad.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greenrl.live.deadline import BoostPredictor

__all__ = ["PendingEntry", "PendingLoad"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class PendingEntry:
    """One request's part of the load (identity, not value, is what the heap compares)."""

    prompt_tokens: int  # the prompt length, or about it for a text prompt
    boost_at_s: float = -math.inf  # when it needs the prefill clock (set at arrival; -inf: at once)
    pending: bool = True  # awaiting its first token
    decoding: bool = False  # past its first token, not ended
    context_tokens: int = 0  # while decoding: its prompt plus the tokens streamed so far


class PendingLoad:
    """Requests pending their first token and requests decoding: counts, token totals, earliest boost time."""

    def __init__(self) -> None:
        self.count = 0  # requests pending their first token
        self.decoding = 0  # requests past their first token, not ended
        self._ahead_tokens = 0  # prompt tokens of the pending requests
        self._ahead_sq = 0  # the sum of their squares (twice their attention pairs)
        self._decode_ctx = 0  # context tokens of the decoding requests
        self._boosts: list[tuple[float, int, PendingEntry]] = []  # heap; entries no longer pending are stale
        self._seq = itertools.count()

    def arrive(
        self, arrived_at_s: float, prompt_tokens: int, deadline: BoostPredictor | None, *, must_wait: bool
    ) -> PendingEntry:
        """A request arrived: its boost time (from the load before it), then it joins the pending ones.

        A failing prediction is logged and the request boosts at once.
        """
        entry = PendingEntry(prompt_tokens)
        if deadline is not None:
            try:
                entry.boost_at_s = deadline.boost_at(
                    arrived_at_s,
                    prompt_tokens,
                    tokens_ahead=self._ahead_tokens,
                    pairs_ahead=self._ahead_sq / 2.0,
                    decoding=self.decoding,
                    decode_ctx_tokens=self._decode_ctx,
                    must_wait=must_wait,
                )
            except Exception:
                logger.exception("the boost time prediction failed; the prefill clock at once")
        self._ahead_tokens += prompt_tokens
        self._ahead_sq += prompt_tokens * prompt_tokens
        self.count += 1
        heapq.heappush(self._boosts, (entry.boost_at_s, next(self._seq), entry))
        return entry

    def first_token(self, entry: PendingEntry, streamed_tokens: int) -> bool:
        """Its first token was sent on (``streamed_tokens`` so far): it decodes. True if it was pending."""
        if not entry.pending:
            return False
        self._leave(entry)
        entry.decoding = True
        entry.context_tokens = entry.prompt_tokens + streamed_tokens
        self.decoding += 1
        self._decode_ctx += entry.context_tokens
        return True

    def streamed(self, entry: PendingEntry, tokens: int) -> None:
        """More tokens were sent on for a decoding request: its context grows."""
        if entry.decoding:
            entry.context_tokens += tokens
            self._decode_ctx += tokens

    def end(self, entry: PendingEntry) -> bool:
        """The request ended; True if it was still pending (the pending count changed)."""
        if entry.pending:
            self._leave(entry)
            return True
        if entry.decoding:
            entry.decoding = False
            self.decoding -= 1
            self._decode_ctx -= entry.context_tokens
        return False

    def earliest_boost_s(self) -> float:
        """The earliest boost time of the pending requests (inf: none pending)."""
        heap = self._boosts
        while heap and not heap[0][2].pending:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def _leave(self, entry: PendingEntry) -> None:
        entry.pending = False
        self._ahead_tokens -= entry.prompt_tokens
        self._ahead_sq -= entry.prompt_tokens * entry.prompt_tokens
        self.count -= 1
        if len(self._boosts) > 2 * self.count + 64:  # drop stale entries a long-pending one holds back
            self._boosts = [e for e in self._boosts if e[2].pending]
            heapq.heapify(self._boosts)
