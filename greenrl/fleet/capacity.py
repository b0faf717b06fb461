"""What one node configuration can serve of a request type, and at what power: the surrogate's steady state.

For a node configuration (TP, replicas, SM clock) and a pool's request shape (mean prompt and output
lengths), the capacity is the highest arrival rate whose steady state (``greenrl.surrogate.steady_state``)
meets the planner's checks, as ``greenrl.baselines.model_based.PlannerBaseline`` makes them: the running
batch fits max_num_seqs and the KV cache, the median time between tokens is within (1 - headroom) x the
TBT SLO, and the p99 TTFT of an M/M/1 queue of prompts (``ttft_quantile_s``; prefill beside the batch, at
the prefill clock when the node has one) within (1 - headroom) x the prompt's TTFT SLO. Node power is
linear in the rate between the loaded-idle node (0 requests/s) and the steady state at capacity, plus the
parked GPUs of a layout that leaves some out (DynamoLLM's per-configuration power profiles, here from the
surrogate instead of measurements).

Public names: NodeOption, node_options.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greenrl.catalog import load_gpu
from greenrl.core import Knobs
from greenrl.env.scenario import Scenario
from greenrl.errors import InputError
from greenrl.surrogate import StepBatch, Surrogate, steady_state

__all__ = ["NodeOption", "node_options"]

_BATCH_GRID = np.geomspace(0.05, 1024.0, 120)


@dataclass(frozen=True, slots=True)
class NodeOption:
    """One node configuration scored for one request shape.

    Attributes:
        knobs: the node's knobs (max_num_seqs the largest allowed; prefill clock the top one if above the base).
        capacity_rps: the highest rate the node serves within the SLO checks (requests/s).
        idle_w: node power serving nothing (loaded-idle replicas + parked GPUs, W).
        slope_j: extra energy per request at capacity, (power at capacity - idle_w) / capacity_rps (J).
    """

    knobs: Knobs
    capacity_rps: float
    idle_w: float
    slope_j: float

    def power_w(self, rate_rps: float) -> float:
        """Predicted node power at ``rate_rps`` (<= capacity): idle_w + slope_j x rate (W)."""
        return self.idle_w + self.slope_j * rate_rps


def _ttft_quantiles_s(service_s: np.ndarray, rate_rps: np.ndarray, quantile: float) -> np.ndarray:
    """``greenrl.baselines.model_based.ttft_quantile_s`` over arrays (inf when overloaded).

    Example:
        >>> round(float(_ttft_quantiles_s(np.array([0.1]), np.array([5.0]), 0.99)[0]), 3)
        0.882
    """
    rho = rate_rps * service_s
    tail = 1.0 - quantile
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = np.where(rho > tail, service_s / (1.0 - rho) * np.log(np.maximum(rho, tail) / tail), 0.0)
    return np.where(rho >= 1.0, np.inf, service_s + wait)


def _values(s: Scenario, name: str, default: int) -> list[int]:
    return sorted(s.control.knobs.get(name, [default]))


def node_options(
    s: Scenario, prompt_tokens: float, output_tokens: float, headroom_frac: float = 0.2, quantile: float = 0.99
) -> list[NodeOption]:
    """Every (tp, replicas, clock) the node scenario allows, with capacity > 0 for this request shape.

    Args:
        s: the node scenario (model, GPUs, knob values, SLOs, power states).
        prompt_tokens: the pool's mean prompt length (tokens).
        output_tokens: the pool's mean output length (tokens).
        headroom_frac: share of each SLO kept in reserve, in [0, 1) (at 1 no configuration meets an SLO).
        quantile: the TTFT quantile held to the SLO.
    """
    if not 0.0 <= headroom_frac < 1.0:
        raise InputError(
            "node_options",
            "headroom_frac",
            f"{headroom_frac:g} keeps {100 * (1 - headroom_frac):g}% of each SLO: no configuration could meet it",
            "use a share in [0, 1), e.g. 0.2",
        )
    n = s.node
    gpu = load_gpu(n.gpu)
    surrogate = Surrogate()
    idle_gpu_w = n.idle_power_w if n.idle_power_w is not None else gpu.idle_power_w
    parked_w = n.parked_gpu_w(gpu.idle_power_w)
    clocks = np.array(_values(s, "sm_clock_mhz", gpu.max_sm_clock_mhz), dtype=float)
    prefill_top = max(_values(s, "prefill_sm_clock_mhz", 0))
    seqs = _values(s, "max_num_seqs", int(n.initial.get("max_num_seqs", 256)))
    keep = 1.0 - headroom_frac
    ctx = prompt_tokens + output_tokens / 2.0
    replica_counts = _values(s, "replicas", 0)
    out: list[NodeOption] = []
    for tp in _values(s, "tp", int(n.initial.get("tp", 8))):
        if tp > n.gpus:
            continue
        rep = surrogate.replica(n.model, gpu, tp, n.stack)
        alone = float(
            surrogate.replica(n.model, gpu, max(_values(s, "tp", 8)), n.stack)
            .step(StepBatch.prefill(1.0, prompt_tokens))
            .latency_s
        )
        ttft_limit = keep * s.slo.ttft_bound_s(alone)
        kv_cap = rep.kv_capacity_tokens(0.9)
        if n.max_model_len_tokens is not None and kv_cap < n.max_model_len_tokens:
            continue
        grid = _BATCH_GRID[(seqs[-1] >= _BATCH_GRID) & (_BATCH_GRID * ctx <= kv_cap)]
        ss = steady_state(rep, grid[None, :], prompt_tokens, output_tokens, clocks[:, None])
        served = grid[None, :] / (output_tokens * np.asarray(ss.mixed_step_s))
        itl_ok = np.asarray(ss.median_itl_s) <= keep * s.slo.tbt_mean_s
        for i, clock in enumerate(clocks):
            prefill_clock = prefill_top if prefill_top > clock else int(clock)
            mixed = StepBatch(
                np.full_like(grid, prompt_tokens), np.full_like(grid, prompt_tokens**2 / 2.0), grid, grid * ctx
            )
            service = np.asarray(rep.step(mixed, float(prefill_clock)).latency_s, dtype=float)
            ttft = _ttft_quantiles_s(service, served[i], quantile)
            ok = np.flatnonzero(itl_ok[i] & (ttft <= ttft_limit))
            if not len(ok):
                continue
            best = int(ok[-1])
            for r in replica_counts or [n.gpus // tp]:
                if r < 1 or tp * r > n.gpus:
                    continue
                capacity = r * float(served[i, best])
                idle_w = r * tp * idle_gpu_w + (n.gpus - r * tp) * parked_w
                busy_w = r * float(np.asarray(ss.power_w)[i, best]) + (n.gpus - r * tp) * parked_w
                knobs = Knobs(
                    tp=tp,
                    replicas=r,
                    max_num_seqs=seqs[-1],
                    sm_clock_mhz=int(clock),
                    prefill_sm_clock_mhz=prefill_top if prefill_top > clock else 0,
                )
                out.append(NodeOption(knobs, capacity, idle_w, max(0.0, busy_w - idle_w) / capacity))
    return out
