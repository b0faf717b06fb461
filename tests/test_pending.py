"""The proxy's pending load: totals a deadline prediction sees, and the earliest boost time."""

from __future__ import annotations

import math

from greenrl.live.pending import PendingLoad


class _Recorder:
    """A BoostPredictor that returns arrival + the prompt length in ms and remembers the load it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def boost_at(self, arrived_at_s: float, prompt_tokens: int, **load: float) -> float:
        self.seen.append(load)
        return arrived_at_s + prompt_tokens / 1000.0


def test_totals_follow_arrivals_first_tokens_streams_and_ends() -> None:
    load, deadline = PendingLoad(), _Recorder()
    a = load.arrive(0.0, 100, deadline, must_wait=False)
    b = load.arrive(0.0, 300, deadline, must_wait=True)
    assert deadline.seen[1] == {
        "tokens_ahead": 100,
        "pairs_ahead": 100 * 100 / 2,
        "decoding": 0,
        "decode_ctx_tokens": 0,
        "must_wait": True,
    }
    assert (load.count, load.earliest_boost_s()) == (2, 0.1)
    assert load.first_token(a, streamed_tokens=1) and not load.first_token(a, streamed_tokens=1)
    load.streamed(a, 4)
    c = load.arrive(1.0, 50, deadline, must_wait=False)
    assert deadline.seen[2]["tokens_ahead"] == 300 and deadline.seen[2]["decode_ctx_tokens"] == 100 + 1 + 4
    assert (load.count, load.decoding, load.earliest_boost_s()) == (2, 1, 0.3)  # a's boost time left with it
    assert not load.end(a)  # ended while decoding: the pending count is unchanged
    assert load.end(b) and load.end(c)
    assert (load.count, load.decoding, load.earliest_boost_s()) == (0, 0, math.inf)
    d = load.arrive(2.0, 10, deadline, must_wait=False)
    assert deadline.seen[3]["tokens_ahead"] == 0 and deadline.seen[3]["decode_ctx_tokens"] == 0
    assert load.end(d)


def test_without_a_predictor_every_request_boosts_at_once_and_a_failing_one_too() -> None:
    load = PendingLoad()
    load.arrive(5.0, 100, None, must_wait=False)
    assert load.earliest_boost_s() == -math.inf

    class Broken:
        def boost_at(self, *args: object, **kw: object) -> float:
            raise RuntimeError("no model")

    other = PendingLoad()
    other.arrive(5.0, 100, Broken(), must_wait=False)  # type: ignore[arg-type]
    assert other.earliest_boost_s() == -math.inf


def test_stale_heap_entries_are_dropped_while_one_request_stays_pending() -> None:
    load, deadline = PendingLoad(), _Recorder()
    held = load.arrive(0.0, 5000, deadline, must_wait=False)  # boost at 5 s: stays at the bottom
    for i in range(500):
        e = load.arrive(float(i), 1, deadline, must_wait=False)
        load.end(e)
    assert load.count == 1 and load.earliest_boost_s() == 5.0
    assert len(load._boosts) <= 2 * load.count + 65
    assert load.end(held) and load.earliest_boost_s() == math.inf
