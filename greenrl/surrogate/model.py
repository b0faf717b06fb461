"""Iteration latency and GPU power of one vLLM replica, from first principles with fitted efficiencies.

One *iteration* (one forward pass of vLLM's engine) prefills ``prefill_tokens`` prompt tokens (in
chunks whose attention spans ``prefill_pairs`` query-key pairs) and decodes ``decode_seqs`` running
sequences whose contexts add up to ``decode_ctx_tokens``. On each of the ``tp`` GPUs of the replica:

    t = t_overhead + t_linear + t_attention + t_allreduce                       (physics 1 and 2)
    t = t_gpu + t_host - host_overlap_frac·min(t_gpu, t_host)                  (physics 3)

    t_overhead  = iter_overhead_s + layers·layer_overhead_s + decode_seqs·seq_overhead_s
                  + (tp - 1)·worker_overhead_s                                                (CPU side)
    t_host      = decode_seqs·seq_overhead_s      per-sequence output processing (vLLM V1: another process)
    t_gpu       = t_overhead - t_host + t_linear + t_attention + t_allreduce     (the serial part with it)
    t_linear    = soft_max(F_lin / C, (W + T·A) / M)          roofline of the weight GEMMs, T = P + D
    t_attention = pairs·F_pair / C  +  ctx·KV / M             prefill is compute-, decode memory-bound
    t_allreduce = 2·layers·(allreduce_latency_s + T·2h / BW_ar(tp))          only when tp > 1
    C = peak FLOP/s · eff_compute · speed_c(f),   M = peak HBM B/s · eff_memory · speed_m(f)

    power/GPU = idle + HBM J/B · bytes/t + s(f)·(busy_w + compute_w·u_c + memory_w·u_m),  ≤ TDP

with u_c, u_m the compute- and memory-busy fractions of t and s(f) the dynamic-power scale of
``greenrl.surrogate.dvfs``. The efficiencies, overheads and power coefficients are fitted by
``greenrl.surrogate.fit`` to public measurements; the parameter file is plain JSON.

Every function here takes floats or numpy arrays (broadcast together), so one code path serves the
simulator (scalars) and the fitter and benchmarks (vectors).

Public names: StepBatch, StepResult, KernelParams, StackParams, ReplicaConsts, ReplicaModel, Surrogate,
load_params, replica_consts, step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from greenrl.catalog import GpuSpec, ModelCard, load_gpu, load_model
from greenrl.errors import InputError
from greenrl.surrogate import dvfs

__all__ = [
    "HBM_JOULES_PER_BYTE",
    "KernelParams",
    "ReplicaConsts",
    "ReplicaModel",
    "StackParams",
    "StepBatch",
    "StepResult",
    "Surrogate",
    "load_params",
    "replica_consts",
    "step",
]

HBM_JOULES_PER_BYTE = 3.9e-12 * 8
"""HBM access energy, 3.9 pJ/bit (O'Connor et al., "Fine-Grained DRAM", MICRO 2017, HBM2 figure)."""

ACT_BYTES = 2.0
"""Bytes per activation element (bf16/fp16 activations; FP8 checkpoints still compute in 16-bit)."""

Num = Any  # a float or a numpy array; the arithmetic below is written for both.


@dataclass(frozen=True, slots=True)
class StepBatch:
    """What one iteration does. Floats or arrays of the same shape.

    Attributes:
        prefill_tokens: prompt tokens processed this iteration (tokens).
        prefill_pairs: attention query-key pairs of those prompt tokens, sum of c·(c0 + c/2) over
            chunks of c tokens after c0 already-cached ones (token²).
        decode_seqs: running sequences that each decode one token (sequences).
        decode_ctx_tokens: sum of those sequences' context lengths (tokens).
    """

    prefill_tokens: Num = 0.0
    prefill_pairs: Num = 0.0
    decode_seqs: Num = 0.0
    decode_ctx_tokens: Num = 0.0

    @staticmethod
    def prefill(batch: Num, input_tokens: Num) -> StepBatch:
        """``batch`` whole prompts of ``input_tokens`` each, prefilled together in one iteration."""
        return StepBatch(batch * input_tokens, batch * input_tokens * input_tokens / 2.0, 0.0, 0.0)

    @staticmethod
    def decode(batch: Num, context_tokens: Num) -> StepBatch:
        """``batch`` sequences, each at ``context_tokens`` of context, decoding one token each."""
        return StepBatch(0.0, 0.0, batch, batch * context_tokens)


@dataclass(frozen=True, slots=True)
class StepResult:
    """Latency and power of one iteration of one replica.

    Attributes:
        latency_s: wall time of the iteration (s).
        power_w: mean power of all tp GPUs together during it (W).
        compute_s, memory_s, comm_s, overhead_s: the parts of latency_s (compute and memory as if alone;
            overhead_s is what the CPU-side terms add, after any physics-3 overlap).
    """

    latency_s: Num
    power_w: Num
    compute_s: Num
    memory_s: Num
    comm_s: Num
    overhead_s: Num

    @property
    def energy_j(self) -> Num:
        """GPU energy of the iteration, all tp GPUs (J)."""
        return self.power_w * self.latency_s


@dataclass(frozen=True, slots=True)
class KernelParams:
    """Kernel-level efficiencies of one GPU chip, fitted to Vidur's operator profiles.

    Attributes:
        eff_compute: achieved fraction of peak FLOP/s by large GEMMs.
        eff_memory: achieved fraction of peak HBM bandwidth by weight-streaming GEMMs.
        roofline_sharpness: exponent p of the soft roofline (t_c^p + t_m^p)^(1/p).
        act_traffic: activation bytes moved per token per layer, in units of 2·hidden_size.
        op_latency_s: fixed GPU time of one layer's small kernels (s).
    """

    eff_compute: Num
    eff_memory: Num
    roofline_sharpness: Num
    act_traffic: Num
    op_latency_s: Num

    @classmethod
    def names(cls) -> list[str]:
        """Field names in order, for packing into a fit vector."""
        return [f.name for f in fields(cls)]


@dataclass(frozen=True, slots=True)
class StackParams:
    """Parameters of one serving stack (a vLLM version and its host) on one chip, fitted to serving data.

    Attributes:
        eff_compute: fraction of peak FLOP/s reached by prefill (the kernel value for modern stacks).
        eff_memory: fraction of peak HBM bandwidth reached by decode weight and KV reads.
        iter_overhead_s: fixed CPU/launch time per iteration (s).
        layer_overhead_s: per-layer launch and small-kernel time per iteration (s).
        seq_overhead_s: per-running-sequence CPU time per iteration: sampling, detokenization (s).
        worker_overhead_s: per extra GPU worker per iteration: input broadcast and launch coordination (s).
        allreduce_latency_s: fixed cost of one tensor-parallel all-reduce (s).
        power_busy_w: dynamic power of a GPU that is running an iteration at all, top clock (W).
        power_compute_w: extra dynamic power at full tensor-core use, top clock (W).
        power_memory_w: extra SM/L2 power at full memory streaming, top clock (W).
        host_overlap_frac: share of the shorter of host time and GPU time hidden under the longer
            (physics 3; 0 in physics 1 and 2 files: host time adds to GPU time).
    """

    eff_compute: Num
    eff_memory: Num
    iter_overhead_s: Num
    layer_overhead_s: Num
    seq_overhead_s: Num
    worker_overhead_s: Num
    allreduce_latency_s: Num
    power_busy_w: Num
    power_compute_w: Num
    power_memory_w: Num
    host_overlap_frac: Num = 0.0

    @classmethod
    def names(cls) -> list[str]:
        """Field names in order, for packing into a fit vector."""
        return [f.name for f in fields(cls)]


@dataclass(frozen=True, slots=True)
class ReplicaConsts:
    """Per-GPU constants of (model, GPU, tp): floats for one replica, or arrays for many rows."""

    tp: Num
    layers: Num
    flops_per_token: Num  # linear-layer FLOPs per token (FLOP)
    lmhead_flops_per_seq: Num  # LM-head FLOPs per sampled sequence (FLOP)
    dense_weight_bytes: Num  # weights every iteration streams (B)
    expert_weight_bytes: Num  # all experts' weights; a share is touched per iteration (B)
    experts: Num
    experts_per_token: Num
    kv_bytes_per_token: Num  # KV-cache bytes per context token (B)
    attn_flops_per_pair: Num  # attention FLOPs per query-key pair (FLOP)
    act_bytes_per_token: Num  # activation traffic per token, before the fitted act_traffic factor (B)
    allreduce_bytes_per_token: Num  # all-reduce payload per token per call (B)
    linear_peak_flops: Num
    attn_peak_flops: Num
    mem_bandwidth_bps: Num
    allreduce_bandwidth_bps: Num
    idle_power_w: Num
    tdp_w: Num
    min_clock_frac: Num


def act_elements_per_layer(
    hidden: Num, heads: Num, kv_heads: Num, head_dim: Num, inter: Num, mlp_mats: Num, tp: Num, physics: int = 1
) -> Num:
    """Activation elements one token moves through one layer's weight GEMMs on one GPU (in and out).

    Physics 1 counts ``hidden`` (the fitted ``act_traffic`` factor absorbs the shape). Physics 2 counts
    the GEMMs' inputs and outputs: the QKV projection reads ``hidden`` and writes (heads + 2·kv)·head_dim
    / tp (wider for full multi-head attention than for GQA), the output projection reads heads·head_dim /
    tp and writes ``hidden``, the MLP reads ``hidden``, writes ``mlp_mats - 1`` intermediate rows / tp,
    reads one / tp and writes ``hidden``; column-parallel outputs are sharded, the replicated
    ``hidden``-wide tensors are not.

    Example:
        >>> float(act_elements_per_layer(4096, 32, 8, 128, 14336, 3, 1, physics=2))
        69632.0
    """
    if physics < 2:
        return hidden * 1.0
    kv = np.maximum(kv_heads / tp, 1.0) * tp  # KV heads replicate when tp exceeds them
    return 4.0 * hidden + ((heads + 2.0 * kv) * head_dim + heads * head_dim + mlp_mats * inter) / tp


def replica_consts(
    card: ModelCard,
    gpu: GpuSpec,
    tp: int,
    allreduce_bandwidth_bps: float,
    physics: int = 1,
) -> ReplicaConsts:
    """Constants of one GPU of a replica serving ``card`` with tensor parallelism ``tp``."""
    wb = card.weight_bytes_per_param
    lm_head = card.vocab_size * card.hidden_size
    return ReplicaConsts(
        tp=float(tp),
        layers=float(card.num_layers),
        flops_per_token=2.0 * card.active_params_per_token / tp,
        lmhead_flops_per_seq=2.0 * lm_head / tp,
        dense_weight_bytes=(card.num_layers * card.attn_params_per_layer + lm_head) * wb / tp,
        expert_weight_bytes=card.num_layers * card.num_experts * card.expert_params_per_layer * wb / tp,
        experts=float(card.num_experts),
        experts_per_token=float(card.experts_per_token),
        kv_bytes_per_token=card.kv_bytes_per_token_per_gpu(tp),
        attn_flops_per_pair=4.0 * card.num_layers * card.num_heads * card.head_dim / tp,
        act_bytes_per_token=card.num_layers
        * ACT_BYTES
        * act_elements_per_layer(
            card.hidden_size,
            card.num_heads,
            card.num_kv_heads,
            card.head_dim,
            card.intermediate_size * card.experts_per_token,
            3 if card.gated_mlp else 2,
            tp,
            physics,
        ),
        allreduce_bytes_per_token=card.hidden_size * ACT_BYTES,
        linear_peak_flops=gpu.fp8_flops if wb < 2 else gpu.bf16_flops,
        attn_peak_flops=gpu.bf16_flops,
        mem_bandwidth_bps=gpu.mem_bandwidth_bps,
        allreduce_bandwidth_bps=allreduce_bandwidth_bps,
        idle_power_w=gpu.idle_power_w,
        tdp_w=gpu.tdp_w,
        min_clock_frac=gpu.min_sm_clock_mhz / gpu.max_sm_clock_mhz,
    )


def soft_roofline(compute_s: Num, memory_s: Num, sharpness: Num) -> Num:
    """(t_c^p + t_m^p)^(1/p): the larger of the two, smoothed where they are close.

    Example:
        >>> round(float(soft_roofline(1.0, 0.1, 4.0)), 4)
        1.0
    """
    big = np.maximum(compute_s, memory_s)
    small = np.minimum(compute_s, memory_s)
    return big * (1.0 + (small / np.maximum(big, 1e-30)) ** sharpness) ** (1.0 / sharpness)


def overlap(gpu_s: Num, host_s: Num, frac: Num) -> Num:
    """Wall time of GPU work and host work that overlap by ``frac`` of the shorter: gpu + host - frac·min.

    ``frac`` 0 adds them (one thread does both), 1 gives max(gpu, host) (separate processes that
    pipeline perfectly). Never below the longer part, and non-decreasing in each part for frac <= 1.

    Example:
        >>> float(overlap(10.0, 4.0, 0.75))
        11.0
    """
    return gpu_s + host_s - frac * np.minimum(gpu_s, host_s)


def step(c: ReplicaConsts, k: KernelParams, s: StackParams, b: StepBatch, clock_frac: Num = 1.0) -> StepResult:
    """Latency and power of one iteration (see the module docstring for the formula)."""
    tokens = b.prefill_tokens + b.decode_seqs
    busy = np.minimum(1.0, tokens)  # 0 for an empty iteration, else 1
    touched = 1.0 - (1.0 - c.experts_per_token / c.experts) ** tokens  # share of experts read (1 if dense)
    weight_bytes = busy * c.dense_weight_bytes + c.expert_weight_bytes * touched
    compute = c.linear_peak_flops * s.eff_compute * dvfs.compute_speed(clock_frac)
    attn_compute = c.attn_peak_flops * s.eff_compute * dvfs.compute_speed(clock_frac)
    memory = c.mem_bandwidth_bps * s.eff_memory * dvfs.memory_speed(clock_frac)

    lin_c = (tokens * c.flops_per_token + b.decode_seqs * c.lmhead_flops_per_seq) / compute
    lin_bytes = weight_bytes + tokens * c.act_bytes_per_token * k.act_traffic
    lin_m = lin_bytes / memory
    attn_c = b.prefill_pairs * c.attn_flops_per_pair / attn_compute
    kv_bytes = b.decode_ctx_tokens * c.kv_bytes_per_token
    attn_m = kv_bytes / memory
    tp_multi = np.minimum(1.0, c.tp - 1.0)  # 0 at tp=1
    comm = (
        tp_multi
        * busy
        * 2.0
        * c.layers
        * (s.allreduce_latency_s + tokens * c.allreduce_bytes_per_token / c.allreduce_bandwidth_bps)
    )
    roof = soft_roofline(lin_c, lin_m, k.roofline_sharpness)
    frac = s.host_overlap_frac
    if frac > 0.0 if isinstance(frac, float) else np.any(frac > 0.0):  # physics 3: host work overlaps the GPU
        host = busy * b.decode_seqs * s.seq_overhead_s
        serial = busy * (s.iter_overhead_s + c.layers * s.layer_overhead_s + (c.tp - 1.0) * s.worker_overhead_s)
        latency = overlap(serial + roof + attn_c + attn_m + comm, host, s.host_overlap_frac)
        overhead = latency - (roof + attn_c + attn_m + comm)
    else:  # physics 1 and 2: additive (this exact expression: the shipped figures depend on its rounding)
        overhead = busy * (
            s.iter_overhead_s
            + c.layers * s.layer_overhead_s
            + b.decode_seqs * s.seq_overhead_s
            + (c.tp - 1.0) * s.worker_overhead_s
        )
        latency = overhead + roof + attn_c + attn_m + comm
    safe_t = np.maximum(latency, 1e-30)

    u_c = np.minimum(1.0, (lin_c + attn_c) / safe_t)
    u_m = np.minimum(1.0, (lin_m + attn_m) / safe_t)
    scale = dvfs.dynamic_power_scale(clock_frac, c.min_clock_frac)
    hbm_w = HBM_JOULES_PER_BYTE * (lin_bytes + kv_bytes) / safe_t
    dynamic_w = scale * (s.power_busy_w + s.power_compute_w * u_c + s.power_memory_w * u_m)
    per_gpu_w = np.minimum(c.tdp_w, c.idle_power_w + busy * (hbm_w + dynamic_w))
    return StepResult(
        latency_s=latency,
        power_w=per_gpu_w * c.tp,
        compute_s=lin_c + attn_c,
        memory_s=lin_m + attn_m,
        comm_s=comm,
        overhead_s=overhead,
    )


# ----------------------------------------------------------------------------------------- parameters


def _default_params_path() -> Path:
    return Path(str(resources.files("greenrl").joinpath("data/surrogate/default.json")))


@cache
def _read_params(path: str) -> dict[str, Any]:
    p = Path(path)
    try:
        data: dict[str, Any] = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(path, "surrogate", "parameter file not found", "run `python -m greenrl.fit`") from None
    except json.JSONDecodeError as err:
        raise InputError(path, "surrogate", f"not valid JSON ({err.msg})", "refit with python -m greenrl.fit") from None
    for key in ("kernels", "stacks", "allreduce", "default_stack"):
        if key not in data:
            raise InputError(path, key, "missing from the parameter file", "refit with `python -m greenrl.fit`")
    return data


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read a surrogate parameter file (default: the one shipped in the package)."""
    return _read_params(str(path or _default_params_path()))


@dataclass(frozen=True, slots=True)
class ReplicaModel:
    """The surrogate for one replica: a model on ``tp`` GPUs of one type with one stack's parameters."""

    card: ModelCard
    gpu: GpuSpec
    tp: int
    stack: str
    consts: ReplicaConsts
    kernel: KernelParams
    params: StackParams
    chunked_prefill: bool = True
    physics: int = 1

    def step(self, batch: StepBatch, sm_clock_mhz: Num | None = None) -> StepResult:
        """Latency and power of one iteration at ``sm_clock_mhz`` (default: the top clock)."""
        clock_frac = 1.0 if sm_clock_mhz is None else sm_clock_mhz / self.gpu.max_sm_clock_mhz
        return step(self.consts, self.kernel, self.params, batch, clock_frac)

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9, activation_reserve_frac: float = 0.02) -> int:
        """Tokens of KV cache the replica holds: (memory x utilization - reserve - weights) / KV per token.

        vLLM reserves ``gpu_memory_utilization`` of each GPU, loads the weights, keeps room for
        activations (``activation_reserve_frac`` of memory, ~1.6 GB on an 80 GB GPU: about the peak vLLM
        profiles at an 8k-token budget) and
        gives the rest to the KV cache.
        """
        per_gpu = self.gpu.memory_bytes * (gpu_memory_utilization - activation_reserve_frac)
        free = per_gpu - self.card.weight_bytes / self.tp
        return max(0, int(free // self.consts.kv_bytes_per_token))

    def check_fits(self, where: str = "--tp", gpu_memory_utilization: float = 0.9) -> None:
        """Raise unless the weights fit and leave KV room for at least one 2k-token sequence."""
        need_gb = self.card.weight_bytes / self.tp / 1e9
        if self.kv_capacity_tokens(gpu_memory_utilization) < 2048:
            have_gb = self.gpu.memory_bytes * gpu_memory_utilization / 1e9
            bigger = [t for t in (2, 4, 8) if t > self.tp and self.card.num_heads % t == 0]
            fix = f"use --tp {bigger[0]} or more" if bigger else "use a GPU with more memory or an FP8 checkpoint"
            raise InputError(
                where,
                "tp",
                f"{self.card.name} needs {need_gb:.1f} GB of weights per GPU at tp={self.tp}, "
                f"leaving too little of {self.gpu.name}'s {have_gb:.1f} GB usable for a KV cache",
                fix,
            )


class Surrogate:
    """Fitted parameters plus the catalogs: builds a ``ReplicaModel`` for any (model, GPU, tp, stack)."""

    def __init__(self, params: dict[str, Any] | None = None, path: str | Path | None = None) -> None:
        self.params = params if params is not None else load_params(path)

    def stacks(self, chip: str) -> list[str]:
        """Stacks with parameters for this chip."""
        return sorted(name for name, chips in self.params["stacks"].items() if chip in chips)

    def replica(
        self, model: str | ModelCard, gpu: str | GpuSpec, tp: int, stack: str | None = None, dtype: str | None = None
    ) -> ReplicaModel:
        """A replica model; errors name the bad input (unknown model/GPU, bad tp, weights that do not fit)."""
        card = load_model(model, dtype) if isinstance(model, str) else model
        spec = load_gpu(gpu) if isinstance(gpu, str) else gpu
        card.check_tp(tp)
        stack = stack or self.params["default_stack"].get(spec.chip)
        chips = self.params["stacks"].get(stack or "", {})
        if spec.chip not in chips:
            raise InputError(
                "--stack",
                "stack",
                f"no fitted parameters for stack {stack!r} on {spec.chip}",
                f"use one of {', '.join(self.stacks(spec.chip)) or '(none: refit)'}",
            )
        ar = self.params["allreduce"][spec.interconnect].get(str(tp)) if tp > 1 else None
        if tp > 1 and ar is None:
            raise InputError("--tp", "tp", f"no all-reduce profile for tp={tp} on {spec.interconnect}", "use 2, 4 or 8")
        physics = int(self.params.get("physics", 1))
        consts = replica_consts(card, spec, tp, ar["bandwidth_bps"] if ar else 1.0, physics)
        kernel = KernelParams(**self.params["kernels"][spec.chip])
        fitted = chips[spec.chip]
        values = {k: fitted[k] for k in StackParams.names() if k != "host_overlap_frac"}
        values["host_overlap_frac"] = fitted.get("host_overlap_frac", 0.0)  # absent before physics 3: additive
        if physics >= 2 and ar is not None:  # measured all-reduce latency plus the stack's fitted extra
            values["allreduce_latency_s"] += ar["latency_s"]
        stack_params = StackParams(**values)
        chunked = bool(chips[spec.chip].get("chunked_prefill", True))
        replica = ReplicaModel(card, spec, tp, str(stack), consts, kernel, stack_params, chunked, physics)
        replica.check_fits()
        return replica


# Order of the packed parameter vector read by the simulator's compiled step (greenrl.sim.kernel).
PACKED_FIELDS: tuple[str, ...] = (
    *(f.name for f in fields(ReplicaConsts)),
    *(f"kernel.{n}" for n in ("roofline_sharpness", "act_traffic")),
    *(f"stack.{f.name}" for f in fields(StackParams)),
)


def pack(replica: ReplicaModel) -> np.ndarray:
    """Constants and parameters of a replica as one float64 vector in ``PACKED_FIELDS`` order."""
    values = []
    for name in PACKED_FIELDS:
        if name.startswith("kernel."):
            values.append(getattr(replica.kernel, name[7:]))
        elif name.startswith("stack."):
            values.append(getattr(replica.params, name[6:]))
        else:
            values.append(getattr(replica.consts, name))
    return np.asarray(values, dtype=np.float64)
