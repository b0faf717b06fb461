"""Build the controller's observation from a live server: ``/metrics`` deltas, GPU energy and knobs.

``LiveObserver.observe()`` scrapes the server's Prometheus ``/metrics`` (``greenrl.live.metrics``), takes
the difference with the previous scrape, reads the GPUs' cumulative energy counter and returns the
observation vector in exactly ``ServingEnv``'s ``OBS_FIELDS`` order, divided by the same scales and
clipped to the same ``OBS_CLIP`` (see ``ServingEnv._observe``). The first call only primes the counters
and returns ``None``.

Where the live server cannot give what the simulator gives, the observer says so:

* arrivals: vLLM exposes no arrival counter. With a front end (``front_end=``, the admission proxy's
  ``stats()``), arrivals and prompt tokens are its counters. Without one, requests that got their first
  token in the interval (the TTFT histogram's count delta) stand in for arrivals, and the prompt tokens
  are vLLM's prompt-token counter delta.
* ``slo_attainment``: per-request SLO outcomes need a front end that judges them (the proxy given a
  ``ProxySlo``): met / (met + missed) in the interval, 1.0 when none was judged, as in the simulator.
  Without one it is 1.0 and listed in ``Observation.assumed``.

``TwinGpu`` reads the digital twin's energy counter from ``GET /greenrl/state`` (the twin has no GPUs).

Public names: EnergySource, FrontEndSource, LiveObserver, Observation, ObservationError, TwinGpu.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S
from greenrl.env.serving_env import OBS_CLIP, OBS_FIELDS
from greenrl.live.gpu import GpuUnavailableError
from greenrl.live.metrics import VllmMetrics, diff, scrape

__all__ = ["EnergySource", "FrontEndSource", "LiveObserver", "Observation", "ObservationError", "TwinGpu"]

logger = logging.getLogger(__name__)

REQUIRED_METRICS: tuple[str, ...] = ("prompt_tokens", "ttft", "itl")
"""Quantities that ``parse`` reports as 0 when absent, but that the observation cannot do without."""


class ObservationError(RuntimeError):
    """The live data cannot make a valid observation (missing series, no time elapsed, bad energy)."""


class EnergySource(Protocol):
    """Anything with a cumulative energy counter in joules (``GpuSet``, ``Gpu``, ``TwinGpu``)."""

    def energy_j(self) -> float:
        """Cumulative energy, J; only differences are meaningful."""
        ...


class FrontEndSource(Protocol):
    """Cumulative front-end counters, e.g. ``AdmissionProxy``.

    ``stats()`` has ``arrived``, ``prompt_tokens``, ``slo_met``, ``missed`` and ``slo_judged`` (whether the
    SLO counters are measured).
    """

    def stats(self) -> Mapping[str, Any]:
        """The counters now (cumulative; only differences are used)."""
        ...


class TwinGpu:
    """The digital twin's GPUs seen through ``GET /greenrl/state``: energy counter and twin state.

    Args:
        base_url: the twin's base URL (``http://127.0.0.1:8000``).
        timeout_s: connect and read timeout (s).

    Raises (from ``energy_j`` and ``state``):
        GpuUnavailableError: the twin cannot be reached or answers something that is not its state.
    """

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.last_state: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        """The twin's ``/greenrl/state`` object (knobs, sim time, energy per GPU)."""
        url = f"{self.base_url}/greenrl/state"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 - the caller's twin
                out = json.loads(resp.read())
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise GpuUnavailableError(-1, "twin_state", f"{url} unreachable ({err})", "start the twin") from err
        except ValueError as err:
            raise GpuUnavailableError(-1, "twin_state", f"{url} is not JSON ({err})", "point at a twin") from err
        if not isinstance(out, dict) or not isinstance(out.get("energy_j"), int | float):
            raise GpuUnavailableError(-1, "twin_state", f"{url} has no energy_j", "point at a greenrl twin")
        self.last_state = out
        return out

    def energy_j(self) -> float:
        """The twin's cumulative GPU energy, J."""
        return float(self.state()["energy_j"])


@dataclass(frozen=True, slots=True)
class Observation:
    """One interval's observation.

    Attributes:
        vector: ``OBS_FIELDS`` values divided by their scales and clipped to +-``OBS_CLIP`` (float32).
        values: the raw (unscaled) value of each field, by name, in its unit.
        interval_s: time between the two scrapes (s).
        energy_j: GPU energy used in the interval (J).
        metrics: the interval's metrics (``diff`` of two scrapes).
        assumed: fields that were not measured but assumed (``slo_attainment``).
    """

    vector: npt.NDArray[np.float32]
    values: dict[str, float]
    interval_s: float
    energy_j: float
    metrics: VllmMetrics
    assumed: tuple[str, ...] = field(default=())


def _wall_hour() -> float:
    now = time.localtime()
    return now.tm_hour + now.tm_min / 60.0 + now.tm_sec / 3600.0


class LiveObserver:
    """Observations of a live (or twin) server, one per ``observe()`` call.

    Args:
        metrics_url: the server's ``/metrics`` URL or base URL.
        energy: the GPUs' energy counter (``GpuSet``, ``TwinGpu``).
        gpus: GPUs of the node (for ``power_frac``).
        tdp_w: board power of one GPU (W).
        max_sm_clock_mhz: the GPU's top SM clock (MHz), for ``sm_clock_frac``.
        ttft_floor_s: the scenario's TTFT SLO floor (s); ``ttft_over_floor_frac`` counts first tokens above it.
        tbt_slo_s: the scenario's inter-token SLO (s); ``itl_over_slo_frac`` counts gaps above it.
        timeout_s: scrape timeout (s).
        clock: monotonic time source (s).
        hour_of_day: hour of day now, 0-24 (default: the local wall clock).
        front_end: front-end counters for arrivals, prompt tokens and SLO attainment (None: stand-ins).
    """

    def __init__(
        self,
        metrics_url: str,
        energy: EnergySource,
        *,
        gpus: int,
        tdp_w: float,
        max_sm_clock_mhz: float,
        ttft_floor_s: float,
        tbt_slo_s: float,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        hour_of_day: Callable[[], float] = _wall_hour,
        front_end: FrontEndSource | None = None,
    ) -> None:
        self.metrics_url = metrics_url
        self.energy = energy
        self.gpus, self.tdp_w, self.max_sm_clock_mhz = gpus, tdp_w, max_sm_clock_mhz
        self.timeout_s = timeout_s
        self.clock = clock
        self.hour_of_day = hour_of_day
        self.front_end = front_end
        self._ttft_bucket = int(np.searchsorted(VLLM_TTFT_BUCKETS_S, ttft_floor_s)) + 1
        self._itl_bucket = int(np.searchsorted(VLLM_ITL_BUCKETS_S, tbt_slo_s)) + 1
        self._prev: _Scrape | None = None
        self._prev_rate_rps = 0.0
        self._warned_slo = False

    @property
    def primed(self) -> bool:
        """Whether a previous scrape exists to difference against."""
        return self._prev is not None

    def reset(self) -> None:
        """Forget the previous scrape (the next ``observe`` primes again)."""
        self._prev = None

    def _read(self) -> _Scrape:
        metrics = scrape(self.metrics_url, timeout_s=self.timeout_s)
        front = dict(self.front_end.stats()) if self.front_end is not None else None
        energy_j = float(self.energy.energy_j())
        if not math.isfinite(energy_j):
            raise ObservationError(f"GPU energy counter is {energy_j!r}")
        return metrics, energy_j, self.clock(), front

    def observe(self, knobs: dict[str, int], reconfiguring: bool = False) -> Observation | None:
        """Scrape, difference with the previous scrape and build the observation.

        Args:
            knobs: the configuration in force (``tp``, ``replicas``, ``max_num_seqs``, ``sm_clock_mhz``).
            reconfiguring: a TP/replica change is under way.

        Returns:
            The observation, or ``None`` on the first call (it only primes the counters).

        Raises:
            MetricsError: the server cannot be reached or its text is not vLLM's metrics.
            GpuError: the energy counter cannot be read.
            ObservationError: a needed series is missing, no time passed, or the energy counter went back.
        """
        cur = self._read()
        prev, self._prev = self._prev, cur
        if prev is None:
            return None
        m_prev, e_prev, t_prev, f_prev = prev
        m_cur, e_cur, t_cur, f_cur = cur
        missing = [k for k in REQUIRED_METRICS if k in m_cur.missing]
        if missing:
            raise ObservationError(f"{self.metrics_url}: the observation needs {', '.join(missing)}, not exposed")
        span_s = t_cur - t_prev
        if not span_s > 0:
            raise ObservationError(f"no time passed between two scrapes ({span_s!r} s)")
        energy_j = e_cur - e_prev
        if energy_j < 0:
            raise ObservationError(f"GPU energy counter went back by {-energy_j:.1f} J (GPU reset or restart?)")
        d = diff(m_prev, m_cur)
        started = d.ttft_count
        arrived, prompt_tokens = started, d.prompt_tokens
        slo_attainment = 1.0
        assumed: tuple[str, ...] = ("slo_attainment",)
        if f_prev is not None and f_cur is not None:
            arrived, prompt_tokens = _delta(f_prev, f_cur, "arrived"), _delta(f_prev, f_cur, "prompt_tokens")
            if f_cur.get("slo_judged"):
                met, missed = _delta(f_prev, f_cur, "slo_met"), _delta(f_prev, f_cur, "missed")
                slo_attainment = met / (met + missed) if met + missed else 1.0
                assumed = ()
        rate_rps = arrived / span_s
        hour = self.hour_of_day()
        raw = {
            "arrival_rate_rps": rate_rps,
            "arrival_rate_prev_rps": self._prev_rate_rps,
            "mean_prompt_tokens": prompt_tokens / arrived if arrived else 0.0,
            "prompt_tokens_per_s": prompt_tokens / span_s,
            "output_tokens_per_s": d.generation_tokens / span_s,
            "waiting": d.waiting,
            "running": d.running,
            "kv_cache_usage_frac": d.kv_cache_usage_frac,
            "ttft_mean_s": d.ttft_sum_s / started if started else 0.0,
            "tbt_mean_s": d.itl_sum_s / d.itl_count if d.itl_count else 0.0,
            "ttft_over_floor_frac": float(d.ttft_hist[self._ttft_bucket :].sum()) / started if started else 0.0,
            "itl_over_slo_frac": float(d.itl_hist[self._itl_bucket :].sum()) / d.itl_count if d.itl_count else 0.0,
            "preemptions_per_s": d.preemptions / span_s,
            "power_frac": energy_j / span_s / (self.gpus * self.tdp_w),
            "slo_attainment": slo_attainment,
            "reconfiguring": float(reconfiguring),
            "tp": float(knobs["tp"]),
            "replicas": float(knobs["replicas"]),
            "max_num_seqs": float(knobs["max_num_seqs"]),
            "sm_clock_frac": knobs["sm_clock_mhz"] / self.max_sm_clock_mhz,
            "prefill_sm_clock_frac": knobs.get("prefill_sm_clock_mhz", 0) / self.max_sm_clock_mhz,
            "time_of_day_sin": math.sin(2 * math.pi * hour / 24.0),
            "time_of_day_cos": math.cos(2 * math.pi * hour / 24.0),
        }
        bad = [k for k, v in raw.items() if not math.isfinite(v)]
        if bad:
            raise ObservationError(f"non-finite observation fields: {', '.join(bad)}")
        if assumed and not self._warned_slo:
            logger.info("slo_attainment is not measured without a front end: observed as 1.0")
            self._warned_slo = True
        self._prev_rate_rps = rate_rps
        vector = np.array([raw[f.name] / f.scale for f in OBS_FIELDS], dtype=np.float32)
        vector = np.clip(vector, -OBS_CLIP, OBS_CLIP)
        return Observation(vector, raw, span_s, energy_j, d, assumed=assumed)


_Scrape = tuple[VllmMetrics, float, float, dict[str, Any] | None]
"""One read: metrics, energy (J), clock (s), front-end counters."""


def _delta(prev: Mapping[str, Any], cur: Mapping[str, Any], key: str) -> float:
    """A counter's increase; a counter that went back (front end restarted) counts from 0."""
    p, c = float(prev.get(key, 0)), float(cur.get(key, 0))
    return c - p if c >= p else c
