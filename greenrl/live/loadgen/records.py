"""The load generator's records: what was sent, and what came back of each request, timed at the client.

``StreamTiming`` follows one streamed response: its tokens (counted by ``greenrl.live.tokens``'s
``SseTokenCounter``: a chunk's cumulative ``usage.completion_tokens`` when it has one, else one token per
chunk that carries text) and when the first and last of them arrived. TTFT is from just before the request
is sent to the first chunk that carries a token; the mean time between tokens is (last token - first
token) / (tokens - 1).

Public names: RequestRecord, SentRequest, Status, StreamTiming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from greenrl.live.tokens import SseTokenCounter

__all__ = ["RequestRecord", "SentRequest", "Status", "StreamTiming"]

Status = Literal["ok", "incomplete", "http_error", "stream_error", "timeout", "error", "cancelled"]


@dataclass(frozen=True, slots=True)
class SentRequest:
    """A request handed to the server.

    Attributes:
        index: its row in the workload.
        arrival_s: its arrival time in the workload (workload s; wall = arrival_s / time_scale).
        sent_at_s: when it was sent (wall s since the generator started).
        prompt_tokens: prompt length (tokens).
    """

    index: int
    arrival_s: float
    sent_at_s: float
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The outcome of one request, measured at the client. Instants and durations are wall seconds.

    Attributes:
        index, arrival_s, sent_at_s, prompt_tokens: as in ``SentRequest``.
        output_tokens: tokens asked for (``max_tokens``).
        received_tokens: tokens received.
        finished_at_s: when the outcome was known (wall s since the generator started).
        ttft_s: time to the first token (s), None without one.
        mean_tbt_s: mean time between tokens (s), None with fewer than 2 tokens.
        e2e_s: from sending to the outcome (s).
        status: ``ok`` (every token received), ``incomplete`` (the stream ended early), ``http_error``
            (non-200 answer), ``stream_error`` (an error object or bad JSON in the stream), ``timeout``,
            ``error`` (transport failure) or ``cancelled`` (the generator was stopped).
        http_status: the HTTP status, None if there was no answer.
        error: what went wrong (empty when ``ok``).
    """

    index: int
    arrival_s: float
    sent_at_s: float
    prompt_tokens: int
    output_tokens: int
    received_tokens: int
    finished_at_s: float
    ttft_s: float | None
    mean_tbt_s: float | None
    e2e_s: float
    status: Status
    http_status: int | None
    error: str


class StreamTiming:
    """Token count and token times of one streamed response (``time.monotonic`` seconds).

    Args:
        t_send: when the request was sent.
    """

    def __init__(self, t_send: float) -> None:
        self.t_send = t_send
        self.sse = SseTokenCounter()
        self.http_status: int | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None

    @property
    def received(self) -> int:
        """Tokens received so far."""
        return self.sse.tokens

    def feed(self, data: bytes, at: float) -> None:
        """Bytes of the stream arrived at ``at``."""
        if self.sse.feed(data):
            self.last_at = at
            if self.first_at is None:
                self.first_at = at

    def ttft_s(self) -> float | None:
        """Time to the first token (s), None without one."""
        return None if self.first_at is None else self.first_at - self.t_send

    def mean_tbt_s(self) -> float | None:
        """Mean time between tokens (s), None with fewer than 2 tokens."""
        if self.first_at is None or self.last_at is None or self.received < 2:
            return None
        return (self.last_at - self.first_at) / (self.received - 1)
