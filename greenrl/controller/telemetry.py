"""What the serving controller reports: its Prometheus series and its JSON-lines decision log.

Public names: FALLBACK_REASONS, KNOB_GAUGES, ControllerMetrics, DecisionLog, is_loopback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from typing import IO, Any

from greenrl.errors import InputError

__all__ = ["FALLBACK_REASONS", "KNOB_GAUGES", "ControllerMetrics", "DecisionLog", "is_loopback"]

logger = logging.getLogger(__name__)

FALLBACK_REASONS: dict[str, str] = {
    "server_down": "the server's /metrics (or the twin's state) cannot be reached",
    "metrics_timeout": "/metrics did not answer in full within --timeout-s (a slow or frozen server)",
    "metrics_invalid": "/metrics answered an error, text that is not vLLM's metrics, or absurd values",
    "observation_invalid": "a needed series is missing, or the observation is not finite",
    "gpu_permission": "NVML refused a clock change: it needs root / CAP_SYS_ADMIN",
    "gpu_error": "a GPU/NVML call failed",
    "apply_failed": "the server refused or did not answer a knob change",
    "policy_invalid": "the policy's output is not finite, masked out, of the wrong shape or out of range",
}
"""Values of the ``reason`` label of ``greenrl_fallbacks_total``, and what each means."""

KNOB_GAUGES: dict[str, tuple[str, str]] = {
    "tp": ("greenrl_tp_gpus", "Tensor parallelism: GPUs per replica."),
    "replicas": ("greenrl_replicas", "Serving replicas (GPUs / TP)."),
    "max_num_seqs": ("greenrl_max_num_seqs", "Most sequences a replica runs at once (the admission cap)."),
    "sm_clock_mhz": ("greenrl_sm_clock_mhz", "SM clock the GPUs are locked to (MHz)."),
    "prefill_sm_clock_mhz": (
        "greenrl_prefill_sm_clock_mhz",
        "SM clock while a prefill runs (MHz; 0: no prefill clock, the top clock).",
    ),
}
"""The gauge of each knob, named with its unit, and its help text (one gauge per knob, not one gauge
with a ``knob`` label: the knobs have different units)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) only listens on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ControllerMetrics:
    """The controller's Prometheus series, on a registry of its own (needs ``prometheus_client``).

    The knob gauges (``KNOB_GAUGES``) hold the knobs in force, or in shadow mode the knobs the controller
    chose and did not apply (``greenrl_shadow`` is then 1).
    """

    def __init__(self, *, shadow: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("greenrl_decisions", "Controller decisions, by mode.", ["mode"], registry=r)
        self.fallbacks = Counter(
            "greenrl_fallbacks", "Fallbacks to the safe default, by reason.", ["reason"], registry=r
        )
        self.knob = {
            knob: Gauge(name, doc + " In shadow mode: the value chosen, never applied.", registry=r)
            for knob, (name, doc) in KNOB_GAUGES.items()
        }
        self.shadow = Gauge("greenrl_shadow", "1 in shadow mode (knobs chosen, never applied), else 0.", registry=r)
        self.shadow.set(1.0 if shadow else 0.0)
        self.energy = Counter("greenrl_energy_joules", "GPU energy observed by the controller (J).", registry=r)
        self.latency = Histogram(
            "greenrl_decision_latency_seconds",
            "Time to compute one decision (policy forward pass), s.",
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1),
            registry=r,
        )
        self.slo = Gauge(
            "greenrl_slo_attainment_ratio",
            "Observed SLO attainment over the last interval, 0-1 (1.0 without a front end).",
            registry=r,
        )
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)
        self._http: Any = None

    def set_knobs(self, knobs: Mapping[str, int]) -> None:
        """The knob values in force (in shadow mode: chosen); knobs without a gauge are skipped."""
        for k, v in knobs.items():
            if k in self.knob:
                self.knob[k].set(v)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose the series on ``host``:``port`` (0: any free port); returns the port.

        A host other than a loopback address serves the series to the network: logged as a warning.
        """
        if not 0 <= port <= 65535:
            raise InputError("--metrics-port", "port", f"{port} out of range", "use 0 (any free) to 65535")
        if not host:
            raise InputError("--metrics-host", "host", "empty", "e.g. 127.0.0.1")
        if not is_loopback(host):
            logger.warning("metrics served on %s, not a loopback address: reachable from the network", host)
        from prometheus_client import start_http_server

        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise InputError(
                "--metrics-host", "host", f"cannot listen on {host}:{port} ({err})", "e.g. 127.0.0.1"
            ) from err
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving. Idempotent."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class DecisionLog:
    """One JSON object per line per interval, flushed at once (a text stream, or None: nothing written)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.stream = stream

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (numpy scalars as floats)."""
        if self.stream is not None:
            self.stream.write(json.dumps(record, default=float) + "\n")
            self.stream.flush()
