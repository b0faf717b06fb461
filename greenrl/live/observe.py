"""The serving controller's observation of a live server: one interval's ``NodeSnapshot``, then the env's builder.

``LiveObserver.observe()`` reads the knob backend (clock, energy counters, knobs in force) and scrapes
``/metrics`` at the same instant (``greenrl.live.snapshot.read_instant``), builds the interval since the
previous call as a ``NodeSnapshot`` with the code ``LiveNode`` uses (``interval_snapshot``), and turns it
into the observation vector with the env's ``ObservationBuilder``: the same fields, scales and clipping
as in training. The first call only primes and returns ``None``.

Where the live server cannot give what the simulator gives, the observer says so:

* arrivals: vLLM exposes no arrival counter. With a front end (``front_end=``, the admission proxy's
  ``stats()``), arrivals and prompt tokens are its counters. Without one, requests that got their first
  token in the interval stand in for arrivals, and vLLM's prompt-token counter for their prompt tokens.
* ``slo_attainment``: per-request SLO outcomes need a front end that judges them (the proxy given a
  ``SloJudge``): met / (met + missed) in the interval, 1.0 when none was judged, as in the simulator.
  Without one it is 1.0 and listed in ``Observation.assumed``.

Public names: FrontEndSource, LiveObserver, Observation, ObservationError.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from greenrl.core import KnobBackend, Knobs, NodeSnapshot
from greenrl.env.observation import ObservationBuilder
from greenrl.live.metrics import VllmMetrics, scrape
from greenrl.live.snapshot import FrontEndCounts, Instant, ObservationError, interval_snapshot, read_instant

__all__ = ["FrontEndSource", "LiveObserver", "Observation", "ObservationError"]

logger = logging.getLogger(__name__)

REQUIRED_METRICS: tuple[str, ...] = ("prompt_tokens", "ttft", "itl")
"""Quantities that ``parse`` reports as 0 when absent, but that the observation cannot do without."""


class FrontEndSource(Protocol):
    """Cumulative front-end counters, e.g. ``AdmissionProxy``.

    ``stats()`` has ``arrived``, ``prompt_tokens``, ``slo_met``, ``missed`` and ``slo_judged`` (whether the
    SLO counters are measured).
    """

    def stats(self) -> Mapping[str, Any]:
        """The counters now (cumulative; only differences are used)."""
        ...


@dataclass(frozen=True, slots=True)
class Observation:
    """One interval's observation.

    Attributes:
        vector: ``OBS_FIELDS`` values divided by their scales and clipped to +-``OBS_CLIP`` (float32).
        values: the raw (unscaled) value of each field, by name, in its unit.
        snapshot: the interval it was built from.
        assumed: fields that were not measured but assumed (``slo_attainment``).
        requested: the configuration the backend is moving to (None if it cannot tell).
    """

    vector: npt.NDArray[np.float32]
    values: dict[str, float]
    snapshot: NodeSnapshot
    assumed: tuple[str, ...] = field(default=())
    requested: Knobs | None = None

    @property
    def interval_s(self) -> float:
        """Server time between the two readings (s)."""
        return self.snapshot.t_end_s - self.snapshot.t_start_s

    @property
    def energy_j(self) -> float:
        """GPU energy used in the interval (J)."""
        return self.snapshot.energy_j


def _wall_hour(server_time_s: float) -> float:
    """The local hour of day now (a real node's server clock is the wall clock)."""
    now = time.localtime()
    return now.tm_hour + now.tm_min / 60.0 + now.tm_sec / 3600.0


class LiveObserver:
    """Observations of a live (or twin) server, one per ``observe()`` call.

    Args:
        metrics_url: the server's ``/metrics`` URL or base URL.
        backend: the knob backend (clock, energy counters, knobs in force).
        builder: the env's observation builder for the node (``ObservationBuilder.for_scenario``); its
            ``start_hour`` is replaced by ``hour_at`` of the first reading.
        front_end: front-end counters for arrivals, prompt tokens and SLO attainment (None: stand-ins).
        hour_at: hour of day at a server time (s), 0-24 (default: the local wall clock now).
        timeout_s: scrape timeout (s).
    """

    def __init__(
        self,
        metrics_url: str,
        backend: KnobBackend,
        builder: ObservationBuilder,
        *,
        front_end: FrontEndSource | None = None,
        hour_at: Callable[[float], float] = _wall_hour,
        timeout_s: float = 5.0,
    ) -> None:
        self.metrics_url = metrics_url
        self.backend = backend
        self.builder = builder
        self.front_end = front_end
        self.hour_at = hour_at
        self.timeout_s = timeout_s
        self._prev: tuple[Instant, dict[str, Any] | None] | None = None
        self._origin_s = 0.0
        self._prev_rate_rps = 0.0
        self._warned_slo = False

    @property
    def primed(self) -> bool:
        """Whether a previous reading exists to difference against."""
        return self._prev is not None

    def reset(self) -> None:
        """Forget the previous reading (the next ``observe`` primes again)."""
        self._prev = None

    def _scrape(self) -> VllmMetrics:
        return scrape(self.metrics_url, timeout_s=self.timeout_s)

    def observe(self, knobs: Knobs) -> Observation | None:
        """Read, difference with the previous reading and build the observation.

        Args:
            knobs: the configuration believed in force (reported if the backend cannot tell).

        Returns:
            The observation, or ``None`` on the first call (it only primes the counters).

        Raises:
            MetricsError: the server cannot be reached or its text is not vLLM's metrics.
            GpuError: the energy counter cannot be read.
            BackendError: the twin cannot be reached.
            ObservationError: a needed series is missing, no time passed, the energy counter went back, or
                a field is not finite.
        """
        cur = read_instant(self.backend, self._scrape)
        front = dict(self.front_end.stats()) if self.front_end is not None else None
        prev, self._prev = self._prev, (cur, front)
        if prev is None:  # t = 0 of the snapshots: this reading, at its hour of day
            self._origin_s = cur.reading.server_time_s
            self.builder = dataclasses.replace(self.builder, start_hour=self.hour_at(self._origin_s))
            return None
        missing = [k for k in REQUIRED_METRICS if k in cur.metrics.missing]
        if missing:
            raise ObservationError(f"{self.metrics_url}: the observation needs {', '.join(missing)}, not exposed")
        span_s = cur.reading.server_time_s - prev[0].reading.server_time_s
        if not span_s > 0:
            raise ObservationError(f"no time passed between two readings ({span_s!r} s)")
        counts, assumed = _front_end_counts(prev[1], front)
        snap = interval_snapshot(prev[0], cur, counts, origin_s=self._origin_s, knobs=knobs)
        raw = self.builder.raw(snap, self._prev_rate_rps)
        values = self.builder.named(raw)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ObservationError(f"non-finite observation fields: {', '.join(bad)}")
        if assumed and not self._warned_slo:
            logger.info("slo_attainment is not measured without a front end: observed as 1.0")
            self._warned_slo = True
        self._prev_rate_rps = raw[0]
        vector = self.builder.vector(raw)
        return Observation(vector, values, snap, assumed=assumed, requested=cur.reading.requested)


def _front_end_counts(
    prev: Mapping[str, Any] | None, cur: Mapping[str, Any] | None
) -> tuple[FrontEndCounts | None, tuple[str, ...]]:
    """The interval's counts from two front-end readings, and the fields assumed for want of them.

    ``finished`` is the requests the front end judged (met + missed), so that ``slo_attainment`` is
    met / judged. Without a front end: None (the snapshot's stand-ins), ``slo_attainment`` assumed.

    Example:
        >>> _front_end_counts({"arrived": 2}, {"arrived": 5, "slo_judged": False})
        (FrontEndCounts(arrived=3, prompt_tokens_in=0, finished=0, slo_met=0, rejected=0), ('slo_attainment',))
    """
    if prev is None or cur is None:
        return None, ("slo_attainment",)
    counts = FrontEndCounts(arrived=_delta(prev, cur, "arrived"), prompt_tokens_in=_delta(prev, cur, "prompt_tokens"))
    if not cur.get("slo_judged"):
        return counts, ("slo_attainment",)
    met, missed = _delta(prev, cur, "slo_met"), _delta(prev, cur, "missed")
    return dataclasses.replace(counts, finished=met + missed, slo_met=met), ()


def _delta(prev: Mapping[str, Any], cur: Mapping[str, Any], key: str) -> int:
    """A counter's increase; a counter that went back (front end restarted) counts from 0."""
    p, c = float(prev.get(key, 0)), float(cur.get(key, 0))
    return int(round(c - p if c >= p else c))
