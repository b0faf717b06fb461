"""Read a vLLM server's Prometheus ``/metrics``: queue gauges, token counters and latency histograms.

``scrape(url)`` fetches and parses the text with ``prometheus_client``'s parser (the ``[live]`` extra;
imported on first use) into a ``VllmMetrics``; ``diff(prev, cur)`` turns two scrapes into the interval
between them. Metric names changed across vLLM versions, so each quantity has a short alias list
(``ALIASES``). With data-parallel engines vLLM labels each series by ``engine`` (and by ``model_name``);
the per-engine series combine as ``COMBINE`` says: counts, counters and histogram buckets are summed, the
KV-cache usage gauge is the mean over its series (one per engine, weighted equally), and finished
requests leave out the ``abort`` and ``error`` values of ``finished_reason``.

Public names: ALIASES, MAX_REQUESTS, MetricsError, MetricsTimeout, VllmMetrics, diff, parse, scrape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S

__all__ = [
    "ALIASES",
    "COMBINE",
    "NOT_FINISHED_REASONS",
    "MAX_REQUESTS",
    "MetricsError",
    "MetricsTimeout",
    "VllmMetrics",
    "diff",
    "parse",
    "scrape",
]

logger = logging.getLogger(__name__)

ALIASES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage_frac": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prompt_tokens": ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),
    "generation_tokens": ("vllm:generation_tokens_total", "vllm:generation_tokens"),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "requests_finished": ("vllm:request_success_total", "vllm:request_success"),
    "ttft": ("vllm:time_to_first_token_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
}
"""Accepted sample names per quantity, newest vLLM name first (histograms: the base name)."""

COMBINE: dict[str, str] = {"kv_cache_usage_frac": "mean"}
"""How a quantity's series (one per engine and model) combine: ``mean`` (each series weighted equally),
else summed. vLLM's data-parallel engines each hold a KV cache of the same size, so the mean over engines
is the used share of all their blocks (the simulator's ``kv_cache_usage_frac`` over replicas); a sum
would read 1.2 for two engines at 0.6."""

NOT_FINISHED_REASONS = frozenset({"abort", "error"})
"""``finished_reason`` label values of ``vllm:request_success_total`` that are not served requests (a
client gone, an engine error): ``requests_finished`` counts the other values (``stop``, ``length``)."""

_REQUIRED = ("running", "waiting", "generation_tokens")


class MetricsError(RuntimeError):
    """A ``/metrics`` endpoint that cannot be reached, or text that is not vLLM's Prometheus metrics."""


@dataclass(frozen=True, slots=True)
class VllmMetrics:
    """One scrape of a vLLM server (or, from ``diff``, the interval between two scrapes).

    Attributes:
        scraped_at_s: ``time.monotonic()`` when the scrape returned (s).
        running, waiting: requests running / queued at the scrape (gauges, summed over engines).
        kv_cache_usage_frac: used share of the KV cache, 0-1 (vLLM's ``*_perc`` gauges are fractions): the
            mean over data-parallel engines, each weighted equally (``COMBINE``).
        prompt_tokens, generation_tokens: prompt / generated tokens (cumulative counters; deltas after ``diff``).
        preemptions, requests_finished: preemptions and finished requests (counters, summed over engines;
            finished: every ``finished_reason`` but ``abort`` and ``error``).
        ttft_hist, itl_hist: counts per bucket of ``VLLM_TTFT_BUCKETS_S`` / ``VLLM_ITL_BUCKETS_S`` plus
            +Inf (not cumulative), the layout of ``NodeSnapshot``'s histograms.
        ttft_sum_s, itl_sum_s: sums of the observed TTFTs / inter-token gaps (s).
        missing: quantities the server did not expose (reported as 0).
    """

    scraped_at_s: float
    running: float
    waiting: float
    kv_cache_usage_frac: float
    prompt_tokens: float
    generation_tokens: float
    preemptions: float
    requests_finished: float
    ttft_hist: npt.NDArray[np.float64]
    ttft_sum_s: float
    itl_hist: npt.NDArray[np.float64]
    itl_sum_s: float
    missing: tuple[str, ...] = ()

    @property
    def ttft_count(self) -> float:
        """First tokens observed (the TTFT histogram's count)."""
        return float(self.ttft_hist.sum())

    @property
    def itl_count(self) -> float:
        """Inter-token gaps observed (the ITL histogram's count)."""
        return float(self.itl_hist.sum())


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MetricsError("prometheus_client is not installed; install greenrl[live]") from err
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise MetricsError(f"not Prometheus text format: {err}") from err
    return out


def _scalar(
    samples: dict[str, list[tuple[dict[str, str], float]]], names: Sequence[str], how: str = "sum"
) -> float | None:
    """The first of ``names`` present, its series combined: summed, or (``how="mean"``) their mean.

    Samples whose ``finished_reason`` label is in ``NOT_FINISHED_REASONS`` are left out (only
    ``vllm:request_success_total`` has that label).
    """
    for name in names:
        if name in samples:
            values = [
                v
                for labels, v in samples[name]
                if math.isfinite(v) and labels.get("finished_reason") not in NOT_FINISHED_REASONS
            ]
            if how == "mean":
                return float(sum(values) / len(values)) if values else 0.0
            return float(sum(values))
    return None


def _histogram(
    samples: dict[str, list[tuple[dict[str, str], float]]], names: Sequence[str], bounds: Sequence[float]
) -> tuple[npt.NDArray[np.float64], float] | None:
    """Bucket counts aligned to ``bounds`` (+Inf last) and the sum, or None when absent.

    The cumulative count at each of our bounds is the server's at its largest ``le`` not above it: exact
    when the server uses vLLM's bounds (as ``greenrl.core`` does), conservative otherwise.
    """
    for name in names:
        buckets = samples.get(f"{name}_bucket")
        if not buckets:
            continue
        by_le: dict[float, float] = {}
        for labels, value in buckets:
            try:
                le = float(labels["le"])
            except (KeyError, ValueError) as err:
                raise MetricsError(f"{name}_bucket has a sample without a numeric le label") from err
            by_le[le] = by_le.get(le, 0.0) + value
        les = np.array(sorted(by_le))
        cum = np.array([by_le[le] for le in les])
        total = by_le.get(math.inf, float(cum[-1]))
        edges = np.array([*bounds, math.inf])
        idx = np.searchsorted(les, edges, side="right") - 1
        aligned = np.where(idx >= 0, cum[np.maximum(idx, 0)], 0.0)
        aligned[-1] = total
        hist = np.diff(aligned, prepend=0.0)
        if np.any(hist < 0):
            raise MetricsError(f"{name}_bucket counts are not cumulative")
        total_sum = _scalar(samples, [f"{name}_sum"])
        return hist.astype(np.float64), float(total_sum or 0.0)
    return None


def parse(text: str, scraped_at_s: float | None = None) -> VllmMetrics:
    """Parse vLLM's ``/metrics`` text.

    Args:
        text: Prometheus text exposition.
        scraped_at_s: monotonic time of the scrape (s); default now.

    Raises:
        MetricsError: if the text is not Prometheus text format or lacks vLLM's running / waiting gauges
            and generation-token counter.
    """
    samples = _samples(text)
    missing = [key for key in _REQUIRED if _scalar(samples, ALIASES[key]) is None]
    if missing:
        names = ", ".join(ALIASES[k][0] for k in missing)
        raise MetricsError(f"not vLLM metrics: {names} missing ({len(samples)} other series found)")
    absent: list[str] = []

    def scalar(key: str) -> float:
        value = _scalar(samples, ALIASES[key], COMBINE.get(key, "sum"))
        if value is None:
            absent.append(key)
            return 0.0
        return value

    def hist(key: str, bounds: Sequence[float]) -> tuple[npt.NDArray[np.float64], float]:
        got = _histogram(samples, ALIASES[key], bounds)
        if got is None:
            absent.append(key)
            return np.zeros(len(bounds) + 1), 0.0
        return got

    ttft, ttft_sum = hist("ttft", VLLM_TTFT_BUCKETS_S)
    itl, itl_sum = hist("itl", VLLM_ITL_BUCKETS_S)
    out = VllmMetrics(
        scraped_at_s=time.monotonic() if scraped_at_s is None else scraped_at_s,
        running=scalar("running"),
        waiting=scalar("waiting"),
        kv_cache_usage_frac=scalar("kv_cache_usage_frac"),
        prompt_tokens=scalar("prompt_tokens"),
        generation_tokens=scalar("generation_tokens"),
        preemptions=scalar("preemptions"),
        requests_finished=scalar("requests_finished"),
        ttft_hist=ttft,
        ttft_sum_s=ttft_sum,
        itl_hist=itl,
        itl_sum_s=itl_sum,
        missing=tuple(absent),
    )
    _check_bounds(out)
    return out


def _check_bounds(m: VllmMetrics) -> None:
    """Refuse a page that parses but is absurd: negative or huge gauges, KV usage outside 0-1, negative counts."""
    problems = []
    for key in ("running", "waiting"):
        value = getattr(m, key)
        if not 0 <= value <= MAX_REQUESTS:
            problems.append(f"{key} {value:g} is not 0 to {MAX_REQUESTS:g} requests")
    if not 0 <= m.kv_cache_usage_frac <= 1.0 + 1e-6:
        problems.append(f"KV cache usage {m.kv_cache_usage_frac:g} is not a fraction 0-1")
    for key in ("prompt_tokens", "generation_tokens", "preemptions", "requests_finished", "ttft_sum_s", "itl_sum_s"):
        value = getattr(m, key)
        if not 0 <= value < math.inf:
            problems.append(f"{key} {value:g} is not a count >= 0")
    for key in ("ttft_hist", "itl_hist"):
        if not np.all(np.isfinite(getattr(m, key))) or np.any(getattr(m, key) < 0):
            problems.append(f"{key} has negative or non-finite counts")
    if problems:
        raise MetricsError("absurd metrics: " + "; ".join(problems))


MAX_METRICS_BYTES = 8 * 1024 * 1024
"""Largest ``/metrics`` page read (bytes); a longer one is a fault (``metrics_invalid``)."""

MAX_REQUESTS = 1e6
"""Most requests a server can plausibly hold running or waiting; a larger gauge is absurd."""


class MetricsTimeout(MetricsError):
    """The whole ``/metrics`` response did not arrive within its deadline (a slow or frozen server)."""


def _fetch(url: str, timeout_s: float) -> str:
    """GET ``url`` within ``timeout_s`` for the whole response (connect, headers and body).

    Each socket operation waits at most the time left, and a watchdog shuts the socket at the deadline,
    so a server that drips its headers or page byte by byte cannot hold the caller past ``timeout_s``.
    """
    import http.client
    import socket
    import threading
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MetricsError(f"{url}: not an http(s) URL")
    deadline = time.monotonic() + timeout_s
    late = f"{url}: timed out: the whole response took over {timeout_s:g} s"

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MetricsTimeout(late)
        return remaining

    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout_s)
    held: list[socket.socket] = []  # the connection drops its socket once the response is read

    def cut() -> None:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout_s, cut)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            conn.connect()
            if conn.sock is not None:
                held.append(conn.sock)
                conn.sock.settimeout(left())  # the watchdog may have fired before the socket was held
            conn.request("GET", parts.path or "/", headers={"Accept": "text/plain"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise MetricsError(f"{url}: HTTP {resp.status}")
            chunks: list[bytes] = []
            size = 0
            while True:
                for sock in held:
                    sock.settimeout(left())
                chunk = resp.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_METRICS_BYTES:
                    raise MetricsError(f"{url}: the page is over {MAX_METRICS_BYTES} bytes")
                chunks.append(chunk)
            left()  # a page cut short by the watchdog is late, not complete
        except MetricsError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            if time.monotonic() >= deadline or isinstance(err, TimeoutError):
                raise MetricsTimeout(late) from err
            raise MetricsError(f"{url}: unreachable ({err})") from err
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        watchdog.cancel()
        conn.close()


def scrape(url: str, timeout_s: float = 5.0) -> VllmMetrics:
    """Fetch and parse a vLLM server's metrics.

    Args:
        url: the ``/metrics`` URL, or the server's base URL (``http://127.0.0.1:8000``).
        timeout_s: deadline for the whole response: connect, headers and body (s). A server that drips
            its page slower than that is a ``MetricsTimeout``.

    Raises:
        MetricsError: if the server cannot be reached, answers an error status, or the text is not vLLM's
            (``MetricsTimeout``: not within ``timeout_s``).
    """
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    return parse(_fetch(url, timeout_s))


def diff(prev: VllmMetrics, cur: VllmMetrics) -> VllmMetrics:
    """The interval between two scrapes: counter and histogram deltas, gauges as of ``cur``.

    A counter that went down means the server restarted: its delta is then ``cur``'s value (counted
    from zero), as Prometheus' ``increase()`` does. A histogram resets as a whole (count down, or any
    bucket down).

    Example:
        >>> z = np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1); zi = np.zeros(len(VLLM_ITL_BUCKETS_S) + 1)
        >>> a = VllmMetrics(0.0, 1, 0, 0.1, 100, 50, 0, 1, z, 0.0, zi, 0.0)
        >>> b = dataclasses.replace(a, scraped_at_s=5.0, generation_tokens=80, prompt_tokens=30)
        >>> d = diff(a, b)
        >>> d.generation_tokens, d.prompt_tokens
        (30.0, 30.0)
    """

    def counter(p: float, c: float) -> float:
        return float(c - p) if c >= p else float(c)

    def histogram(
        ph: npt.NDArray[np.float64], ps: float, ch: npt.NDArray[np.float64], cs: float
    ) -> tuple[npt.NDArray[np.float64], float]:
        delta = ch - ph
        if np.any(delta < 0) or cs < ps:
            return ch.copy(), float(cs)
        return delta, float(cs - ps)

    ttft, ttft_sum = histogram(prev.ttft_hist, prev.ttft_sum_s, cur.ttft_hist, cur.ttft_sum_s)
    itl, itl_sum = histogram(prev.itl_hist, prev.itl_sum_s, cur.itl_hist, cur.itl_sum_s)
    return dataclasses.replace(
        cur,
        prompt_tokens=counter(prev.prompt_tokens, cur.prompt_tokens),
        generation_tokens=counter(prev.generation_tokens, cur.generation_tokens),
        preemptions=counter(prev.preemptions, cur.preemptions),
        requests_finished=counter(prev.requests_finished, cur.requests_finished),
        ttft_hist=ttft,
        ttft_sum_s=ttft_sum,
        itl_hist=itl,
        itl_sum_s=itl_sum,
    )
