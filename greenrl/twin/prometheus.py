"""The twin's ``/metrics`` body: a ``LiveSim``'s counters in Prometheus text format, under vLLM's metric names.

Public names: render_metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S
from greenrl.twin.livesim import LiveSim

__all__ = ["render_metrics"]


def render_metrics(sim: LiveSim, model_name: str) -> str:
    """The twin's ``/metrics`` body: Prometheus text format 0.0.4 with vLLM's metric names.

    Gauges come from the last simulated interval; counters and histograms are cumulative since the
    twin started. Histogram bounds are ``VLLM_TTFT_BUCKETS_S`` / ``VLLM_ITL_BUCKETS_S`` plus ``+Inf``.
    Every series carries ``engine="0"`` as vLLM's single engine does, and ``vllm:request_success_total``
    one series per ``finished_reason`` (``stop``, ``length``, ``abort``): the twin's requests end at their
    output length, so all its finished requests are ``length`` (an aborted one, cut short, too).
    """
    name = model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    label = f'model_name="{name}",engine="0"'
    last, tot = sim.last, sim.totals
    lines: list[str] = []

    def scalar(name: str, kind: str, doc: str, value: float) -> None:
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name}{{{label}}} {float(value)!r}"])

    def histogram(name: str, doc: str, bounds: Sequence[float], hist: npt.NDArray[np.float64], total: float) -> None:
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} histogram"])
        cumulative = np.cumsum(hist)
        for le, count in zip([*(repr(float(b)) for b in bounds), "+Inf"], cumulative, strict=True):
            lines.append(f'{name}_bucket{{{label},le="{le}"}} {float(count)!r}')
        lines.append(f"{name}_count{{{label}}} {float(cumulative[-1])!r}")
        lines.append(f"{name}_sum{{{label}}} {float(total)!r}")

    scalar(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        last.running if last else 0,
    )
    scalar(
        "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", last.waiting if last else 0
    )
    scalar(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        last.kv_cache_usage_frac if last else 0.0,
    )
    scalar("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", tot.prompt_tokens)
    scalar("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", tot.generation_tokens)
    scalar("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", tot.preemptions)
    lines.extend(
        [
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
    )
    for reason, count in (("stop", 0), ("length", tot.finished), ("abort", 0)):
        lines.append(f'vllm:request_success_total{{{label},finished_reason="{reason}"}} {float(count)!r}')
    histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        VLLM_TTFT_BUCKETS_S,
        tot.ttft_hist,
        tot.ttft_sum_s,
    )
    histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        VLLM_ITL_BUCKETS_S,
        tot.itl_hist,
        tot.itl_sum_s,
    )
    return "\n".join(lines) + "\n"
