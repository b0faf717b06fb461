"""What the serving controller reports: its Prometheus series and its JSON-lines decision log.

Public names: FALLBACK_REASONS, ControllerMetrics, DecisionLog.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

from greenrl.errors import InputError

__all__ = ["FALLBACK_REASONS", "ControllerMetrics", "DecisionLog"]

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


class ControllerMetrics:
    """The controller's Prometheus series, on a registry of its own (needs ``prometheus_client``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("greenrl_decisions", "Controller decisions, by mode.", ["mode"], registry=r)
        self.fallbacks = Counter(
            "greenrl_fallbacks", "Fallbacks to the safe default, by reason.", ["reason"], registry=r
        )
        self.knob = Gauge("greenrl_knob_value", "Knob value the controller last set or chose.", ["knob"], registry=r)
        self.energy = Counter("greenrl_energy_joules", "GPU energy observed by the controller (J).", registry=r)
        self.latency = Histogram(
            "greenrl_decision_latency_seconds",
            "Time to compute one decision (policy forward pass), s.",
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1),
            registry=r,
        )
        self.slo = Gauge("greenrl_slo_attainment", "Observed SLO attainment (1.0 without a front end).", registry=r)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)
        self._http: Any = None

    def set_knobs(self, knobs: Mapping[str, int]) -> None:
        """The knob values in force."""
        for k, v in knobs.items():
            self.knob.labels(knob=k).set(v)

    def serve(self, port: int) -> int:
        """Expose the series on 127.0.0.1:``port`` (0: any free port); returns the port."""
        if not 0 <= port <= 65535:
            raise InputError("--metrics-port", "port", f"{port} out of range", "use 0 (any free) to 65535")
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
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
