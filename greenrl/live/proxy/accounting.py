"""The admission proxy's accounting: what the front end saw of each request, its counters and SLO verdicts.

A ``Track`` follows one admission-controlled request (loop times, s): arrival, first and last token
sent on, token count, the upstream's ``usage``. ``Accounting`` counts arrivals and prompt tokens at
arrival and settles each request once it ends (``close``):

* prompt tokens: the length of a token-id ``prompt``, counted on arrival; else the upstream's
  ``usage.prompt_tokens`` when the response has one; else ``greenrl.live.tokens.approx_prompt_tokens``
  of the body (both counted at completion);
* outcome: ``finished`` (whole 2xx response delivered, its stream free of error events), ``error`` (the
  upstream answered >= 400, failed, or sent an error event in a 200 stream: vLLM's mid-stream
  ``data: {"error": {...}}``) or ``cancelled`` (the client went away);
* SLO, given a ``greenrl.slo.SloJudge``: a streamed request meets it when its TTFT (arrival at the proxy
  to the first token sent on, proxy queueing included) is within its TTFT bound (the scenario's
  ``max(floor, multiple x prefill alone)`` for its prompt tokens) and its mean time between tokens
  within ``tbt_mean_s``; a non-streamed one, whose first token the proxy cannot see, when its whole
  latency is within ``Slo.e2e_bound_s``. Times are wall seconds as the client sees them. A request the
  upstream failed (a 5xx, a cut stream, an error event in its stream or retries used up) counts as
  missed; a 4xx is not judged.

Public names: Accounting, Counters, Track.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from greenrl.live.pending import PendingEntry
from greenrl.live.tokens import approx_prompt_tokens, token_ids_length
from greenrl.slo import SloJudge

__all__ = ["Accounting", "Counters", "Track"]


@dataclass(slots=True)
class Counters:
    """Cumulative counters of the admission-controlled requests (see ``AdmissionProxy.stats``)."""

    arrived: int = 0
    """Requests received."""
    prompt_tokens: int = 0
    """Their prompt tokens (see the module docstring)."""
    finished: int = 0
    """Whole 2xx responses delivered."""
    slo_met: int = 0
    """Finished requests that met the SLO."""
    missed: int = 0
    """Finished requests that missed the SLO, and requests the upstream failed."""
    errors: int = 0
    """Requests the upstream answered with a status >= 400, failed, or whose 200 stream carried an error event."""
    cancelled: int = 0
    """Requests whose client went away."""
    retried: int = 0
    """Attempts sent again after an upstream connection failure."""
    output_tokens: int = 0
    """Tokens of the finished responses (their ``usage``, else the tokens counted in the stream)."""


@dataclass(slots=True)
class Track:
    """One admission-controlled request, as the proxy measures it (loop times, s).

    Attributes:
        arrived_at_s: arrival at the proxy.
        stream: whether the client asked for a stream.
        prompt_tokens: the prompt length when it is token ids (exact), else None.
        estimated_prompt_tokens: the prompt length, exact or estimated from the text.
        first_token_at_s, last_token_at_s: when the first / last token was sent on (None before).
        token_events: tokens sent on so far (``greenrl.live.tokens.SseTokenCounter``'s count).
        usage: the upstream's ``usage`` object, when it sent one.
        sent: a byte reached the client (no retry from here on).
        load: its part of the pending load (set at arrival).
        abort: why the proxy cancels it: ``gone`` (the client left), ``timeout`` (no answer within
            ``max_wait_s``), or None.
        stream_error: the first bad event of its 200 stream (an error object, or not JSON), as text
            (``SseTokenCounter.error``); None if none.
    """

    arrived_at_s: float
    stream: bool
    prompt_tokens: int | None
    estimated_prompt_tokens: int
    first_token_at_s: float | None = None
    last_token_at_s: float | None = None
    token_events: int = 0
    usage: dict[str, Any] | None = None
    sent: bool = False
    load: PendingEntry | None = None
    abort: str | None = None
    stream_error: str | None = None

    def tokens_sent(self, tokens: int, now_s: float) -> bool:
        """``tokens`` more tokens were sent on at ``now_s``; True if they include the first one."""
        first = self.first_token_at_s is None
        if first:
            self.first_token_at_s = now_s
        self.last_token_at_s = now_s
        self.token_events += tokens
        return first


class Accounting:
    """Counters and SLO verdicts of the admission-controlled requests (used from the proxy's loop only).

    Args:
        slo: the SLO to judge requests against; None: ``slo_met`` and ``missed`` stay 0.
    """

    def __init__(self, slo: SloJudge | None = None) -> None:
        self.slo = slo
        self.counters = Counters()

    def arrive(self, body: Any, now_s: float) -> Track:
        """A request arrived with this parsed JSON body (None if it was not JSON): count it, track it."""
        ids = token_ids_length(body.get("prompt")) if isinstance(body, dict) else None
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        track = Track(now_s, stream, ids, ids if ids is not None else approx_prompt_tokens(body))
        self.counters.arrived += 1
        self.counters.prompt_tokens += ids or 0
        return track

    def close(self, track: Track, outcome: str, status: int) -> None:
        """Settle a request that ended: ``outcome`` is finished, error or cancelled; ``status`` the HTTP status."""
        c = self.counters
        usage = track.usage or {}
        prompt_tokens = track.prompt_tokens
        if prompt_tokens is None:
            reported = usage.get("prompt_tokens")
            prompt_tokens = int(reported) if isinstance(reported, int) else track.estimated_prompt_tokens
            c.prompt_tokens += prompt_tokens
        if outcome == "cancelled":
            c.cancelled += 1
            return
        if outcome != "finished":
            c.errors += 1
            if self.slo is not None and (status == 0 or status >= 500 or track.stream_error is not None):
                c.missed += 1
            return
        c.finished += 1
        completion = usage.get("completion_tokens")
        tokens = int(completion) if isinstance(completion, int) else track.token_events
        c.output_tokens += tokens
        if self.slo is None:
            return
        if self.met(track, prompt_tokens, tokens):
            c.slo_met += 1
        else:
            c.missed += 1

    def met(self, track: Track, prompt_tokens: int, tokens: int) -> bool:
        """Whether a finished request with ``tokens`` output tokens met the SLO (see the module docstring)."""
        assert self.slo is not None
        end_s = track.last_token_at_s if track.last_token_at_s is not None else track.arrived_at_s
        if not track.stream or track.first_token_at_s is None:
            return self.slo.met_e2e(prompt_tokens, end_s - track.arrived_at_s, tokens)
        ttft_s = track.first_token_at_s - track.arrived_at_s
        tbt_s = (end_s - track.first_token_at_s) / (tokens - 1) if tokens > 1 else 0.0
        return self.slo.met(prompt_tokens, ttft_s, tbt_s)
