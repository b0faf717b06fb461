"""The observation: its fields, and the one builder that turns a ``NodeSnapshot`` into the policy's vector.

``ServingEnv`` (over a ``SimNode`` or a ``LiveNode``) and the live serving controller both observe through
``ObservationBuilder``, so a policy sees on a live node exactly what it was trained on. Light (numpy and
math only, no gymnasium): the controller imports it without the training stack.

Public names: OBS_CLIP, OBS_FIELDS, ObsField, ObservationBuilder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, NodeSnapshot

if TYPE_CHECKING:
    from greenrl.catalog import GpuSpec
    from greenrl.env.scenario import Scenario

__all__ = ["OBS_CLIP", "OBS_FIELDS", "ObsField", "ObservationBuilder"]


@dataclass(frozen=True, slots=True)
class ObsField:
    """One observation entry: its name, unit, the scale it is divided by, and where a live node gets it."""

    name: str
    unit: str
    scale: float
    source: str


OBS_FIELDS: tuple[ObsField, ...] = (
    ObsField("arrival_rate_rps", "requests/s", 20.0, "front end: arrivals in the interval / interval"),
    ObsField("arrival_rate_prev_rps", "requests/s", 20.0, "the same, one interval earlier"),
    ObsField("mean_prompt_tokens", "tokens", 4096.0, "front end: mean prompt length of arrivals"),
    ObsField("prompt_tokens_per_s", "tokens/s", 20000.0, "front end: prompt tokens arriving per s"),
    ObsField("output_tokens_per_s", "tokens/s", 20000.0, "vllm:generation_tokens_total rate"),
    ObsField("waiting", "requests", 256.0, "vllm:num_requests_waiting (+ proxy queue)"),
    ObsField("running", "requests", 512.0, "vllm:num_requests_running"),
    ObsField("kv_cache_usage_frac", "fraction", 1.0, "vllm:kv_cache_usage_perc"),
    ObsField("ttft_mean_s", "s", 1.0, "vllm:time_to_first_token_seconds sum/count in the interval"),
    ObsField("tbt_mean_s", "s", 0.1, "vllm:inter_token_latency_seconds sum/count in the interval"),
    ObsField("ttft_over_floor_frac", "fraction", 1.0, "TTFT histogram share above the SLO floor"),
    ObsField("itl_over_slo_frac", "fraction", 1.0, "inter-token histogram share above the TBT SLO"),
    ObsField("preemptions_per_s", "1/s", 10.0, "vllm:num_preemptions_total rate"),
    ObsField("power_frac", "fraction of node TDP", 1.0, "NVML energy counter delta / interval / (GPUs x TDP)"),
    ObsField("slo_attainment", "fraction", 1.0, "front end: finished requests that met their SLO"),
    ObsField("reconfiguring", "0/1", 1.0, "controller: a TP/replica change is under way"),
    ObsField("tp", "GPUs", 8.0, "current knob"),
    ObsField("replicas", "replicas", 8.0, "current knob"),
    ObsField("max_num_seqs", "sequences", 1024.0, "current knob"),
    ObsField("sm_clock_frac", "fraction of top clock", 1.0, "NVML current SM clock / max"),
    ObsField("prefill_sm_clock_frac", "fraction of top clock", 1.0, "current knob / max SM clock (0: off)"),
    ObsField("time_of_day_sin", "-", 1.0, "wall clock"),
    ObsField("time_of_day_cos", "-", 1.0, "wall clock"),
)
OBS_CLIP = 10.0


@dataclass(frozen=True, slots=True)
class ObservationBuilder:
    """The observation of one interval: a ``NodeSnapshot`` in, ``OBS_FIELDS`` values out.

    ``raw`` gives each field in its unit, ``vector`` divides by the scales and clips to +-``OBS_CLIP``.
    The builder keeps no state: the caller passes the previous interval's arrival rate (``raw(...)[0]``).

    Attributes:
        gpus: GPUs of the node (``power_frac`` is per ``gpus x tdp_w``).
        tdp_w: board power of one GPU (W).
        max_sm_clock_mhz: the GPU's top SM clock (MHz), for the clock fractions.
        ttft_floor_s: the TTFT SLO floor (s); ``ttft_over_floor_frac`` counts first tokens in buckets above it.
        tbt_slo_s: the inter-token SLO (s); ``itl_over_slo_frac`` counts gaps in buckets above it.
        start_hour: hour of day at t = 0 of the snapshots' clock (0-24).

    Example:
        >>> b = ObservationBuilder(gpus=8, tdp_w=700.0, max_sm_clock_mhz=1980, ttft_floor_s=0.5, tbt_slo_s=0.1)
        >>> b.ttft_floor_bucket, b.itl_slo_bucket
        (10, 5)
    """

    gpus: int
    tdp_w: float
    max_sm_clock_mhz: float
    ttft_floor_s: float
    tbt_slo_s: float
    start_hour: float = 0.0
    ttft_floor_bucket: int = field(init=False)
    itl_slo_bucket: int = field(init=False)

    def __post_init__(self) -> None:
        # first histogram bucket (of VLLM_*_BUCKETS_S plus +Inf) counted as over the SLO
        object.__setattr__(self, "ttft_floor_bucket", int(np.searchsorted(VLLM_TTFT_BUCKETS_S, self.ttft_floor_s)) + 1)
        object.__setattr__(self, "itl_slo_bucket", int(np.searchsorted(VLLM_ITL_BUCKETS_S, self.tbt_slo_s)) + 1)

    @classmethod
    def for_scenario(cls, scenario: Scenario, gpu: GpuSpec) -> ObservationBuilder:
        """The builder of a scenario's node (``gpu``: its catalog entry, ``greenrl.catalog.load_gpu``)."""
        return cls(
            gpus=scenario.node.gpus,
            tdp_w=gpu.tdp_w,
            max_sm_clock_mhz=gpu.max_sm_clock_mhz,
            ttft_floor_s=scenario.slo.ttft_floor_s,
            tbt_slo_s=scenario.slo.tbt_mean_s,
            start_hour=scenario.workload.start_hour,
        )

    def raw(self, snap: NodeSnapshot, prev_rate_rps: float) -> list[float]:
        """Each field of ``OBS_FIELDS`` in its unit; ``prev_rate_rps``: the previous interval's ``raw(...)[0]``."""
        span = max(snap.t_end_s - snap.t_start_s, 1e-9)
        rate = snap.arrived / span if snap.t_end_s > snap.t_start_s else 0.0
        ttft_n, itl_n = snap.ttft_hist.sum(), snap.itl_hist.sum()
        hour = self.start_hour + snap.t_end_s / 3600.0
        k = snap.knobs
        return [
            rate,
            prev_rate_rps,
            snap.prompt_tokens_in / snap.arrived if snap.arrived else 0.0,
            snap.prompt_tokens_in / span,
            snap.output_tokens / span,
            snap.waiting,
            snap.running,
            snap.kv_cache_usage_frac,
            snap.ttft_mean_s,
            snap.tbt_mean_s,
            snap.ttft_hist[self.ttft_floor_bucket :].sum() / ttft_n if ttft_n else 0.0,
            snap.itl_hist[self.itl_slo_bucket :].sum() / itl_n if itl_n else 0.0,
            snap.preemptions / span,
            snap.mean_power_w / (self.gpus * self.tdp_w),
            snap.slo_attainment,
            float(snap.reconfiguring),
            k.tp,
            k.replicas,
            k.max_num_seqs,
            k.sm_clock_mhz / self.max_sm_clock_mhz,
            k.prefill_sm_clock_mhz / self.max_sm_clock_mhz,
            math.sin(2 * math.pi * hour / 24.0),
            math.cos(2 * math.pi * hour / 24.0),
        ]

    @staticmethod
    def vector(raw: list[float]) -> npt.NDArray[np.float32]:
        """``raw`` divided by each field's scale, as float32, clipped to +-``OBS_CLIP``."""
        obs = np.array([v / f.scale for v, f in zip(raw, OBS_FIELDS, strict=True)], dtype=np.float32)
        return np.clip(obs, -OBS_CLIP, OBS_CLIP)

    @staticmethod
    def named(raw: list[float]) -> dict[str, float]:
        """``raw`` by field name (for logs)."""
        return {f.name: float(v) for f, v in zip(OBS_FIELDS, raw, strict=True)}
