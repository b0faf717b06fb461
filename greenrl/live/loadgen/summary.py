"""The load generator's verdicts: each record against the scenario's SLO, and the summary of a run.

Client-side latency is a measurement only at time scale 1 (or below): above it, every wall millisecond
of client, event-loop and HTTP overhead would count ``time_scale`` times once multiplied back to server
seconds (replaying at 30x reported SLO attainment 0.0006 where the twin's own histograms said 0.26 s mean
TTFT). So ``summarize`` reports no TTFT/TBT percentiles and no SLO attainment at a time scale above 1:
they are None, with ``latency_measured: false`` and the reason in ``latency_not_measured``; read the
server's own histograms (``/metrics``: ``vllm:time_to_first_token_seconds``,
``vllm:inter_token_latency_seconds``, in server time) instead.

Public names: NOT_MEASURED_ABOVE_SCALE_1, RequestSlo, summarize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenrl.live.loadgen.records import RequestRecord
from greenrl.slo import Slo, SloJudge

__all__ = ["NOT_MEASURED_ABOVE_SCALE_1", "RequestSlo", "summarize"]

NOT_MEASURED_ABOVE_SCALE_1 = (
    "client-side latency is not measured at --time-scale {scale:g} > 1: wall-clock overhead would count "
    "{scale:g} times once scaled to server seconds; read the server's own histograms (/metrics: "
    "vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds), or replay at --time-scale 1"
)
"""Why ``summarize`` gives no latency or SLO figures above time scale 1 (format with ``scale``)."""


@dataclass(frozen=True, slots=True)
class RequestSlo:
    """The SLO verdict on load-generator records: a ``greenrl.slo.SloJudge`` on server-time latencies.

    A request meets it when it got every token, its TTFT is within its prompt's TTFT bound and its mean
    time between tokens within ``tbt_mean_s``, as in the simulator. Client-side wall times are
    multiplied by ``time_scale`` first (server s per wall s), which is only a measurement at a time
    scale of 1 or below (see the module docstring): ``summarize`` gives no verdicts above it. ``met``
    itself still scales (``LiveNode`` calls it for its interval ``slo_met`` on the twin at its time scale).

    Attributes:
        judge: the SLO and the prefill-alone time of a prompt.
    """

    judge: SloJudge

    @classmethod
    def from_scenario(cls, scenario: Any) -> RequestSlo:
        """The SLO of a ``Scenario`` (or scenario name), with the surrogate's prefill time at the largest TP."""
        from greenrl.env.scenario import Scenario, load_scenario

        s = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
        return cls(SloJudge.from_scenario(s))

    @classmethod
    def of(cls, slo: Slo) -> RequestSlo:
        """An SLO without a prefill-alone time: every TTFT bound is the floor."""
        return cls(SloJudge(slo))

    def ttft_slo_s(self, prompt_tokens: int) -> float:
        """The TTFT bound of a prompt of ``prompt_tokens`` tokens (server s)."""
        return self.judge.ttft_bound_s(prompt_tokens)

    def met(self, record: RequestRecord, time_scale: float = 1.0) -> bool:
        """Whether a finished request met its SLO (``time_scale``: server s per wall s; see the class)."""
        if record.status != "ok" or record.ttft_s is None:
            return False
        tbt_s = 0.0 if record.mean_tbt_s is None else record.mean_tbt_s * time_scale
        return self.judge.met(record.prompt_tokens, record.ttft_s * time_scale, tbt_s)


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(
    records: Sequence[RequestRecord], slo: RequestSlo | None = None, time_scale: float = 1.0
) -> dict[str, Any]:
    """Counts, TTFT / TBT percentiles (server s: wall x ``time_scale``) and SLO attainment of a run.

    SLO attainment is the share of the requests sent (every record) that met ``slo``; a request that
    failed or did not finish counts as missed. At a ``time_scale`` above 1 the percentiles, ``slo_met``
    and ``slo_attainment`` are None, ``latency_measured`` is False and ``latency_not_measured`` says why
    (see the module docstring); the counts stay.

    Example:
        >>> r = RequestRecord(0, 0.0, 0.0, 10, 2, 2, 0.3, 0.1, 0.2, 0.3, "ok", 200, "")
        >>> s = summarize([r], RequestSlo.of(Slo(0.5, 0.0, 0.25)))
        >>> s["completed"], s["ttft_p50_s"], s["slo_attainment"]
        (1, 0.1, 1.0)
    """
    measured = time_scale <= 1.0
    ok = [r for r in records if r.status == "ok"]
    ttft = [r.ttft_s * time_scale for r in ok if r.ttft_s is not None] if measured else []
    tbt = [r.mean_tbt_s * time_scale for r in ok if r.mean_tbt_s is not None] if measured else []
    by_status: dict[str, int] = {}
    for r in records:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    out: dict[str, Any] = {
        "sent": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "by_status": by_status,
        "prompt_tokens_sent": int(sum(r.prompt_tokens for r in records)),
        "output_tokens_received": int(sum(r.received_tokens for r in records)),
        "time_scale": time_scale,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tbt_p50_s": _pct(tbt, 50),
        "tbt_p99_s": _pct(tbt, 99),
        "latency_measured": measured,
    }
    if not measured:
        out["latency_not_measured"] = NOT_MEASURED_ABOVE_SCALE_1.format(scale=time_scale)
    if slo is not None and not measured:
        out["slo_met"] = out["slo_attainment"] = None
    elif slo is not None:
        met = sum(slo.met(r, time_scale) for r in records)
        out["slo_met"] = int(met)
        out["slo_attainment"] = met / len(records) if records else 1.0
    return out
