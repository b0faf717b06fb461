"""Shared vocabulary: the knobs a controller sets, what a node reports per interval, the protocols.

Everything here is light (numpy only) so the controller, the twin and the simulator share it.

Public names: Knobs, NodeSnapshot, Node, ForkableNode, Policy, EnergyMeter, BackendReading, KnobBackend, KnobDwell,
fit_replicas, VLLM_TTFT_BUCKETS_S, VLLM_ITL_BUCKETS_S.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "VLLM_ITL_BUCKETS_S",
    "VLLM_TTFT_BUCKETS_S",
    "BackendReading",
    "EnergyMeter",
    "KnobBackend",
    "ForkableNode",
    "KnobDwell",
    "Knobs",
    "Node",
    "NodeSnapshot",
    "Policy",
    "fit_replicas",
    "queue_guard_layout",
]

# Histogram bucket upper bounds of vLLM's Prometheus metrics (vllm:time_to_first_token_seconds,
# vllm:inter_token_latency_seconds), so simulated and live histograms line up; +Inf is implicit.
VLLM_TTFT_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
VLLM_ITL_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


@dataclass(frozen=True, slots=True)
class Knobs:
    """A node configuration.

    Attributes:
        tp: tensor-parallel degree of every replica (GPUs).
        replicas: active replicas; tp x replicas <= GPUs of the node, the rest idle.
        max_num_seqs: most running sequences per replica (an admission cap in front of vLLM).
        sm_clock_mhz: SM clock of every GPU (MHz).
        max_num_batched_tokens: chunked-prefill token budget per iteration (tokens).
        prefill_sm_clock_mhz: SM clock while any request of a replica waits or prefills, ``sm_clock_mhz``
            otherwise (a phase-aware governor); 0: no such clock, ``sm_clock_mhz`` always (MHz).
    """

    tp: int
    replicas: int
    max_num_seqs: int
    sm_clock_mhz: int
    max_num_batched_tokens: int = 8192
    prefill_sm_clock_mhz: int = 0


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """What a node reports for one interval [t_start_s, t_end_s). Energies and counts cover the interval.

    Attributes:
        t_start_s, t_end_s: interval bounds (s since the episode start).
        energy_j: GPU energy of the whole node (J); ``energy_per_gpu_j`` per GPU (J).
        mean_power_w: energy_j / interval length (W).
        arrived, prompt_tokens_in: requests arrived and their prompt tokens.
        output_tokens, prefill_tokens: tokens generated and prompt tokens computed (recomputes included).
        finished, slo_met, rejected, preemptions, iterations: counts in the interval.
        waiting, running: requests queued (node queue included) and running at t_end_s.
        kv_cache_usage_frac: used share of the serving replicas' KV blocks at t_end_s.
        ttft_mean_s, tbt_mean_s: means over first tokens / inter-token gaps emitted in the interval (0 if none).
        ttft_hist, itl_hist: counts per vLLM bucket (``VLLM_*_BUCKETS_S`` plus +Inf) in the interval.
        knobs: configuration in force at t_end_s; reconfiguring: a TP/replica change is under way.
        reconfigurations: knob changes applied in the interval.
        prefill_clock_frac: share of the replicas' busy time in the interval run at ``prefill_sm_clock_mhz``
            (0 without one).
    """

    t_start_s: float
    t_end_s: float
    energy_j: float
    energy_per_gpu_j: tuple[float, ...]
    mean_power_w: float
    arrived: int
    prompt_tokens_in: int
    output_tokens: int
    prefill_tokens: int
    finished: int
    slo_met: int
    rejected: int
    preemptions: int
    iterations: int
    waiting: int
    running: int
    kv_cache_usage_frac: float
    ttft_mean_s: float
    tbt_mean_s: float
    ttft_hist: npt.NDArray[np.float64]
    itl_hist: npt.NDArray[np.float64]
    knobs: Knobs
    reconfiguring: bool
    reconfigurations: int
    prefill_clock_frac: float = 0.0

    @property
    def slo_attainment(self) -> float:
        """Share of requests finished in the interval that met their SLO (1.0 when none finished)."""
        return self.slo_met / self.finished if self.finished else 1.0

    @property
    def unfinished(self) -> int:
        """Requests arrived and neither finished nor rejected at ``t_end_s`` (waiting + running)."""
        return self.waiting + self.running


class Node(Protocol):
    """A serving node the environment drives: simulated (``SimNode``) or live (``LiveNode``).

    Besides the per-interval ``NodeSnapshot`` a node reports what its operator knows: vLLM's memory share
    and the output lengths of the requests that have finished (a front end sees each when it ends).
    """

    @property
    def gpu_memory_utilization(self) -> float:
        """Share of each GPU's memory vLLM reserves for weights and KV cache (its flag of that name)."""
        ...

    def reset(self, *, seed: int | None = None) -> NodeSnapshot:
        """Start a new episode at t = 0 in the default configuration."""
        ...

    def apply(self, knobs: Knobs) -> None:
        """Request a configuration; costly changes take effect after their real delay."""
        ...

    def advance(self, dt_s: float) -> NodeSnapshot:
        """Serve for ``dt_s`` seconds and report the interval."""
        ...

    def finished_output_tokens(self) -> tuple[int, int]:
        """Output tokens generated by the requests finished since ``reset``, and how many finished."""
        ...

    def close(self) -> None:
        """Release resources (a live node resets clocks and stops what it started)."""
        ...


@runtime_checkable
class ForkableNode(Node, Protocol):
    """A node that can copy itself: a simulator, never a live node.

    What needs one says so by this capability: hindsight baselines (oracle, static-best), the static-max
    SLO reference of the reward, and rebuilding the node for another evaluation window.
    """

    def fork(self) -> ForkableNode:
        """An independent copy: stepping it leaves this node unchanged."""
        ...


class Policy(Protocol):
    """Anything that maps an observation to an action with SB3's ``predict`` (PPO, a baseline, a controller).

    The signature is SB3's ``predict(observation, state=None, episode_start=None, deterministic=True)``;
    keyword ``action_masks`` is passed only where ``predict`` takes it (MaskablePPO). It is declared
    loosely so that every such ``predict`` matches.
    """

    def predict(self, observation: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Return ``(action, state)``."""
        ...


class EnergyMeter(Protocol):
    """A monotonic GPU energy counter (NVML's, the twin's, or a replay)."""

    def energy_j(self) -> float:
        """Energy consumed since an arbitrary origin (J)."""
        ...


@dataclass(frozen=True, slots=True)
class BackendReading:
    """What a ``KnobBackend`` reads at one instant.

    Attributes:
        server_time_s: the server's clock (s): the twin's simulated time, or wall time on a real node.
        energy_per_gpu_j: cumulative energy of each GPU (J); only differences are meaningful.
        knobs: the configuration in force now (None if the backend cannot tell).
        reconfiguring: a TP / replica change is under way.
        queued: requests held in front of the server (admission proxy), not yet seen by it.
        prefill_clock_s: cumulative server seconds at the prefill SM clock (None: the backend cannot tell).
        requested: the configuration being moved to: ``knobs`` with the layout of a restart under way (None
            if the backend cannot tell).
        server_verdicts: cumulative (finished, met the SLO) requests as the server judged them in its own
            clock (the twin, which knows the scenario's SLO); None: only the client can judge (a real node).
    """

    server_time_s: float
    energy_per_gpu_j: tuple[float, ...]
    knobs: Knobs | None
    reconfiguring: bool
    queued: int = 0
    prefill_clock_s: float | None = None
    requested: Knobs | None = None
    server_verdicts: tuple[int, int] | None = None


class KnobBackend(Protocol):
    """Where a live node's knobs go, and its clock and energy: the digital twin, or a real node's GPUs.

    One stack for ``LiveNode`` (the env on a live server) and the serving controller:
    ``greenrl.live.backends.TwinBackend`` (the twin's HTTP API) and ``GpuBackend`` (NVML, admission proxy,
    launcher).
    """

    @property
    def time_scale(self) -> float:
        """Server seconds per wall second (the twin's ``--time-scale``; 1 for a real node)."""
        ...

    @property
    def discrete_time(self) -> bool:
        """The server clock moves in steps (the twin's ticks): a reading and a scrape pair only if it did not move."""
        ...

    def read(self) -> BackendReading:
        """Clock, energy counters, knobs in force."""
        ...

    def apply(self, knobs: Knobs, changed: Collection[str] | None = None) -> list[str]:
        """Request ``knobs``; returns the names of the knobs applied.

        Args:
            knobs: the whole configuration wanted.
            changed: the knob names to send (None: every knob that may differ from what is in force).
                A name missing from the result was refused or deferred (a layout the server cannot change,
                a clock lock the GPUs' rate limit ignored): what was in force stays.
        """
        ...

    def close(self, restore: Mapping[str, int] | None = None) -> None:
        """Restore a safe state and release what the backend holds.

        A real node resets its GPUs' clocks; the twin, which has none, is sent the ``restore`` knobs (None:
        left as they are).
        """
        ...


def fit_replicas(replicas: int | None, tp: int, gpus: int) -> int:
    """The replicas a node serves with: as many as fit when ``replicas`` is not chosen, else clamped to fit.

    The one rule for every node, env, baseline and controller: a replica takes ``tp`` GPUs, at least one
    serves, and at most ``gpus // tp`` fit.

    Example:
        >>> fit_replicas(None, 2, 8), fit_replicas(9, 4, 8), fit_replicas(0, 8, 8)
        (4, 2, 1)
    """
    most = gpus // tp
    return max(1, min(most if replicas is None else replicas, most))


def queue_guard_layout(
    knobs: Knobs, waiting: float, *, gpus: int, queue_requests: int, replica_values: Sequence[int] | None = None
) -> Knobs | None:
    """The layout the queue guard forces: every GPU serving at the current TP, or None when it does not fire.

    It fires when ``queue_requests`` > 0, at least that many requests wait, and GPUs are parked (fewer
    replicas than fit). A parked GPU takes a new replica while the old ones serve (make-before-break), so a
    burst costs one reload instead of the rest of the layout dwell. ``replica_values``: the replica counts
    the scenario allows (None: any).

    Example:
        >>> k = Knobs(tp=4, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)
        >>> queue_guard_layout(k, 40, gpus=8, queue_requests=32).replicas
        2
        >>> queue_guard_layout(k, 10, gpus=8, queue_requests=32) is None
        True
    """
    most = fit_replicas(None, knobs.tp, gpus)
    allowed = [r for r in (replica_values or range(1, most + 1)) if knobs.replicas < r <= most]
    if queue_requests <= 0 or waiting < queue_requests or not allowed:
        return None
    return replace(knobs, replicas=max(allowed))


def reload_time_s(
    weight_bytes: float,
    tp: int,
    *,
    shared_bandwidth_bps: float,
    per_gpu_bandwidth_bps: float | None = None,
    engine_start_s: float = 0.0,
) -> float:
    """How long a new replica takes to serve: its weights loaded, then the engine started (s).

    The one rule for the simulator and every planner. Weights come either from one shared source (a
    disk: ``shared_bandwidth_bps`` for the whole replica) or, with ``per_gpu_bandwidth_bps``, from host
    memory over each GPU's own PCIe link, the replica's ``tp`` GPUs in parallel.

    Example:
        >>> round(reload_time_s(141e9, 4, shared_bandwidth_bps=2.5e9), 1)
        56.4
        >>> round(reload_time_s(141e9, 4, shared_bandwidth_bps=2.5e9, per_gpu_bandwidth_bps=20e9, engine_start_s=30), 2)
        31.76
    """
    bandwidth_bps = tp * per_gpu_bandwidth_bps if per_gpu_bandwidth_bps is not None else shared_bandwidth_bps
    return weight_bytes / bandwidth_bps + engine_start_s


LAYOUT_KNOBS = ("tp", "replicas")
"""The knobs that make a node's layout: they change together or not at all (``KnobDwell``)."""


class KnobDwell:
    """Holds a costly knob (TP, replicas) at its value until its minimum dwell has passed since its last change.

    A production controller does not restart a server every interval; the env and the live controller
    apply the same rule so a trained policy meets on a real node the dwell it was trained with.

    Args:
        min_dwell_steps: fewest intervals between two changes of each named knob.

    Example:
        >>> dwell = KnobDwell({"tp": 2})
        >>> dwell.held({"tp": 8}, {"tp": 4}, t=0), dwell.held({"tp": 4}, {"tp": 8}, t=1)
        ({}, {'tp': 4})
        >>> dwell.held({"tp": 4}, {"tp": 8}, t=2)
        {}

    The layout knobs (``LAYOUT_KNOBS``) move together: while one is held, so is the other, so a held
    replica count never meets a new TP it does not fit (TP 8 x 2 replicas on 8 GPUs):

        >>> dwell = KnobDwell({"tp": 10, "replicas": 10})
        >>> dwell.held({"tp": 4, "replicas": 2}, {"tp": 4, "replicas": 1}, t=0)
        {}
        >>> dwell.held({"tp": 4, "replicas": 1}, {"tp": 8, "replicas": 1}, t=5)
        {}
        >>> dwell.held({"tp": 4, "replicas": 2}, {"tp": 8, "replicas": 1}, t=5)
        {'tp': 4, 'replicas': 2}
    """

    def __init__(self, min_dwell_steps: Mapping[str, int]) -> None:
        self.min_dwell_steps = dict(min_dwell_steps)
        self._last_change: dict[str, int] = {}

    def reset(self) -> None:
        """Forget past changes (a new episode, a restarted controller)."""
        self._last_change = {}

    def record(self, names: Iterable[str], t: int) -> None:
        """Count a change made outside ``held`` (the queue guard's) as made at interval ``t``."""
        for name in names:
            if name in self.min_dwell_steps:
                self._last_change[name] = t

    def held(self, current: Mapping[str, int], wanted: Mapping[str, int], t: int) -> dict[str, int]:
        """The knobs (name -> current value) that must stay as they are at interval ``t``.

        A wanted change that is allowed is recorded as made at ``t``.
        """
        changing = [n for n in current if n in wanted and wanted[n] != current[n]]
        blocked = {
            n
            for n in changing
            if n in self.min_dwell_steps and t - self._last_change.get(n, -(10**9)) < self.min_dwell_steps[n]
        }
        if blocked & set(LAYOUT_KNOBS):  # tp and replicas are one layout: hold one, hold both
            blocked |= {n for n in changing if n in LAYOUT_KNOBS}
        for name in changing:
            if name in self.min_dwell_steps and name not in blocked:
                self._last_change[name] = t
        return {name: current[name] for name in changing if name in blocked}
