"""SimNode: a simulated vLLM node of G GPUs serving one model, driven interval by interval.

The compiled core (``greenrl.sim.kernel``) schedules every replica like vLLM V1; this module owns the
configuration, what reconfiguring really costs, SLOs and per-interval reporting.

Reconfiguration costs:

* SM clock: takes effect ``clock_latency_s`` after ``apply`` (NVML clock locking), no interruption.
* prefill SM clock: the governor's setting changes at once; each replica's switch between it and the
  base clock takes ``clock_latency_s`` from the arrival that makes a request wait (up) or from the
  first iteration with none waiting or prefilling (down), and may land mid-iteration. With
  ``prefill_clock_ttft_s`` (the deadline governor) a switch up is asked for only once a pending prompt
  would, at the base clock, get its first token later than that after its arrival.
* ``max_num_seqs`` / ``max_num_batched_tokens``: a restart-only flag in vLLM, modelled as an admission
  cap enforced in front of the server: instant for new admissions, running requests drain naturally.
* ``tp`` or replica count: affected replicas stop admitting; their running requests either finish
  (``inflight="drain"``) or go back to the node queue to be recomputed elsewhere (``"requeue"``); their
  waiting requests are re-routed at once. Then the GPUs reload weights for ``weight_bytes /
  load_bandwidth_bps`` seconds at idle + ``reload_power_frac`` x TDP each. A TP change reshapes every
  replica, so all of them drain before the new layout loads; a replica-count change touches only the
  replicas added or removed. A replica being added loads on GPUs that are free while the others keep
  serving (make-before-break); one being removed drains (drain-before-break).
* Weights load at ``load_bandwidth_bps`` (one shared source, e.g. a disk), or, with
  ``host_load_bandwidth_per_gpu_bps``, from host memory over each GPU's own PCIe link (tp links in
  parallel); ``engine_start_s`` (vLLM engine start-up) is added to every load.

Power states of a GPU (per GPU, ``SimConfig``): running an iteration (the surrogate); serving but between
iterations, model loaded (``idle_power_w``); parked, in a replica slot that is OFF, no process
(``parked_power_w``); reloading (idle + ``reload_power_frac`` x TDP). By default the last two fall back to
the GPU catalog's idle power (every GPU always holds a loaded model).

A request whose prompt + output exceeds ``max_model_len_tokens`` is rejected when it reaches a replica
(vLLM answers HTTP 400), and a TP degree whose KV cache cannot hold one such request is infeasible
(vLLM refuses to start).

Public names: SimConfig, SimNode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from greenrl.catalog import load_gpu
from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, Knobs, NodeSnapshot, fit_replicas, reload_time_s
from greenrl.errors import InputError
from greenrl.sim import kernel as K
from greenrl.slo import Slo
from greenrl.surrogate import StepBatch, Surrogate
from greenrl.surrogate.model import pack
from greenrl.workload import Trace

__all__ = ["SimConfig", "SimNode"]

MAX_RUNNING = 1024
"""Most running sequences a replica can hold (the largest max_num_seqs accepted)."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A simulated node.

    Attributes:
        model, gpu, gpus: what is served on what (default: Llama-2-70B on 8 x H100, as in the study).
        stack: surrogate stack (default: the GPU's default, vLLM 0.11 on H100).
        mode: ``fast`` (event jumps) or ``exact`` (every iteration).
        initial: the configuration at reset.
        clock_latency_s: delay before a new SM clock takes effect (s).
        prefill_clock_ttft_s: the prefill clock governor's TTFT target (s): a replica raises its clock
            for a prompt only when, at the base clock, its first token would come later than this
            after its arrival. None: whenever a prompt waits or prefills.
        load_bandwidth_bps: weight loading speed of a replica (B/s); 2.5 GB/s loads 138 GB in 55 s.
        host_load_bandwidth_per_gpu_bps: if set, weights load from host memory at this speed per GPU,
            the replica's tp GPUs in parallel (B/s), instead of ``load_bandwidth_bps``.
        engine_start_s: engine start-up added to every replica load (s).
        idle_power_w: power of a serving GPU between iterations, model loaded (W); None: the GPU's
            catalog idle power.
        parked_power_w: power of a GPU with no replica (W); None: ``idle_power_w``'s value.
        max_model_len_tokens: vLLM's ``--max-model-len``; None: as long as the KV cache holds.
        reload_power_frac: extra power of a reloading GPU above idle, as a share of TDP (assumption).
        inflight: what happens to running requests of a replica being reconfigured.
        gpu_memory_utilization, block_tokens: vLLM's memory share and KV block size.
        slo: the per-request SLO (``greenrl.slo.Slo``).
        unfinished_counts_as_missed: whether ``slo_attainment`` counts arrived, unfinished requests as missed.
        parkable: allow ``replicas=0``: every GPU parked, as a fleet powers a node down (arrivals wait in
            the node queue until a replica serves again).
    """

    model: str = "llama-2-70b"
    gpu: str = "h100-sxm-80gb"
    gpus: int = 8
    stack: str | None = None
    mode: Literal["fast", "exact"] = "fast"
    initial: Knobs = field(default_factory=lambda: Knobs(tp=4, replicas=2, max_num_seqs=256, sm_clock_mhz=1980))
    clock_latency_s: float = 0.05
    prefill_clock_ttft_s: float | None = None
    load_bandwidth_bps: float = 2.5e9
    host_load_bandwidth_per_gpu_bps: float | None = None
    engine_start_s: float = 0.0
    idle_power_w: float | None = None
    parked_power_w: float | None = None
    max_model_len_tokens: int | None = None
    reload_power_frac: float = 0.1
    inflight: Literal["drain", "requeue"] = "drain"
    gpu_memory_utilization: float = 0.9
    block_tokens: int = 16
    slo: Slo = field(default_factory=Slo)
    unfinished_counts_as_missed: bool = True
    parkable: bool = False


class SimNode:
    """A simulated vLLM node implementing the ``Node`` protocol, plus ``fork()`` for planners.

    Args:
        config: the node.
        workload: the requests: a ``Trace``, or a function of a numpy Generator returning one per
            episode (so ``reset(seed=...)`` can draw a new window or rate).
        surrogate: fitted surrogate (default: the packaged parameters).
    """

    def __init__(
        self,
        config: SimConfig,
        workload: Trace | Callable[[np.random.Generator], Trace],
        surrogate: Surrogate | None = None,
    ) -> None:
        self.config = config
        self._workload = workload
        self._surrogate = surrogate or Surrogate()
        self.gpu = load_gpu(config.gpu)
        self._feasible: dict[int, tuple[np.ndarray, int, float, float]] = {}
        for tp in (1, 2, 4, 8):
            if tp > config.gpus:
                continue
            try:
                r = self._surrogate.replica(config.model, self.gpu, tp, config.stack)
            except InputError:
                continue
            blocks = r.kv_capacity_tokens(config.gpu_memory_utilization) // config.block_tokens
            if config.max_model_len_tokens is not None and blocks * config.block_tokens < config.max_model_len_tokens:
                continue  # vLLM refuses to start: one max-length request would not fit the KV cache
            load_s = reload_time_s(
                r.card.weight_bytes,
                tp,
                shared_bandwidth_bps=config.load_bandwidth_bps,
                per_gpu_bandwidth_bps=config.host_load_bandwidth_per_gpu_bps,
                engine_start_s=config.engine_start_s,
            )
            idle_gpu_w = self.gpu.idle_power_w if config.idle_power_w is None else config.idle_power_w
            reload_w = tp * (idle_gpu_w + config.reload_power_frac * self.gpu.tdp_w)
            self._feasible[tp] = (pack(r), int(blocks), load_s, reload_w)
        if not self._feasible:
            raise InputError(
                "node",
                "model",
                f"{config.model} fits on no TP degree of {config.gpus} x {self.gpu.name}",
                "use more or larger GPUs",
            )
        self._tp_list = sorted(self._feasible)
        self._packed = np.stack([self._feasible[tp][0] for tp in self._tp_list])
        self._cap_blocks = np.array([self._feasible[tp][1] for tp in self._tp_list], dtype=np.int64)
        self._fastest = self._surrogate.replica(config.model, self.gpu, self._tp_list[-1], config.stack)
        self.check(config.initial, "initial")
        self.trace: Trace | None = None
        self.now_s = 0.0

    # ------------------------------------------------------------------------------------ config

    @property
    def gpu_memory_utilization(self) -> float:
        """Share of each GPU's memory vLLM reserves for weights and KV cache (``SimConfig``'s)."""
        return self.config.gpu_memory_utilization

    @property
    def feasible_tp(self) -> list[int]:
        """TP degrees whose weights fit on this node's GPUs."""
        return list(self._tp_list)

    def kv_capacity_tokens(self, tp: int) -> int:
        """Tokens one replica's KV cache holds at TP degree ``tp`` (whole blocks); 0 for an infeasible ``tp``."""
        feasible = self._feasible.get(tp)
        return feasible[1] * self.config.block_tokens if feasible is not None else 0

    def check(self, knobs: Knobs, where: str = "knobs") -> None:
        """Raise ``InputError`` unless the configuration can run on this node."""
        if knobs.tp not in self._feasible:
            raise InputError(
                where,
                "tp",
                f"tp={knobs.tp} is infeasible for {self.config.model} on {self.config.gpus} x {self.gpu.name}",
                f"use one of {self._tp_list}",
            )
        if knobs.replicas < (0 if self.config.parkable else 1) or knobs.tp * knobs.replicas > self.config.gpus:
            raise InputError(
                where,
                "replicas",
                f"tp x replicas = {knobs.tp} x {knobs.replicas} does not fit {self.config.gpus} GPUs",
                f"use 1 to {fit_replicas(None, knobs.tp, self.config.gpus)} replicas",
            )
        if not 1 <= knobs.max_num_seqs <= MAX_RUNNING:
            raise InputError(where, "max_num_seqs", f"{knobs.max_num_seqs} is out of range", f"use 1 to {MAX_RUNNING}")
        if knobs.max_num_batched_tokens < 16:
            raise InputError(where, "max_num_batched_tokens", "below 16", "use 512 or more")
        self.gpu.check_clock(knobs.sm_clock_mhz, where)
        if knobs.prefill_sm_clock_mhz:
            try:
                self.gpu.check_clock(knobs.prefill_sm_clock_mhz, where)
            except InputError as err:
                raise InputError(where, "prefill_sm_clock_mhz", err.problem, f"{err.fix}, or 0 for none") from None

    # ------------------------------------------------------------------------------------- state

    def reset(self, *, seed: int | None = None) -> NodeSnapshot:
        """Load the episode's requests and start at t = 0 in the initial configuration."""
        rng = np.random.default_rng(seed)
        trace = self._workload(rng) if callable(self._workload) else self._workload
        self.trace = trace
        n = len(trace)
        self.req_f, self.req_i = _blank_requests(n)
        self._fill_requests(slice(0, n), trace.arrival_s, trace.input_tokens, trace.output_tokens)
        self._n_req = n
        self.g = np.array([0, -1, -1, 0], dtype=np.int64)
        self.cnt = np.zeros(K.N_K)
        self.ttft_edges = np.array(VLLM_TTFT_BUCKETS_S)
        self.itl_edges = np.array(VLLM_ITL_BUCKETS_S)
        self.hist_ttft = np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1)
        self.hist_itl = np.zeros(len(VLLM_ITL_BUCKETS_S) + 1)
        self.chunk = np.zeros(n, dtype=np.int64)
        self.now_s = 0.0
        self.knobs = self.config.initial
        self._target: Knobs | None = None
        self._clock_at: tuple[float, int] | None = None
        self._reconfigs = 0
        self._banked = np.zeros(self.config.gpus)
        self._build_slots(self.knobs.tp, self.knobs.replicas, loading=False)
        self._set_cfg(self.knobs, self.knobs.sm_clock_mhz)
        self._energy_mark = np.zeros(self.config.gpus)
        return self._snapshot(0.0, np.zeros(self.config.gpus))

    def add_requests(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> int:
        """Append requests that a front end (a fleet's router) sends while the node runs; returns the first new row.

        Arrivals (s since reset) must be sorted and no earlier than the requests already held. The request
        table grows by doubling; rows not yet used wait at an infinite arrival time.
        """
        k, n = len(arrival_s), self._n_req
        if k and (np.any(np.diff(arrival_s) < 0) or (n and arrival_s[0] < self.req_f[n - 1, K.RF_ARRIVAL])):
            raise InputError("add_requests", "arrival_s", "arrivals out of order", "send requests in arrival order")
        if n + k > len(self.req_f):
            grow = max(n + k, 2 * len(self.req_f), 1024) - len(self.req_f)
            pad_f, pad_i = _blank_requests(grow)
            self.req_f = np.concatenate([self.req_f, pad_f])
            self.req_i = np.concatenate([self.req_i, pad_i])
            self.chunk = np.concatenate([self.chunk, np.zeros(grow, dtype=np.int64)])
        self._fill_requests(slice(n, n + k), arrival_s, input_tokens, output_tokens)
        self._n_req = n + k
        return n

    def _fill_requests(
        self, rows: slice, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray
    ) -> None:
        """Write requests into table ``rows``: arrivals, lengths and each one's TTFT bound under the SLO."""
        self.req_f[rows, K.RF_ARRIVAL] = arrival_s
        alone = self._fastest.step(StepBatch.prefill(1.0, np.asarray(input_tokens, dtype=float))).latency_s
        self.req_f[rows, K.RF_TTFT_SLO] = self.config.slo.ttft_bounds_s(alone)
        self.req_i[rows, K.RI_PROMPT] = input_tokens
        self.req_i[rows, K.RI_OUTPUT] = output_tokens

    def done(self, start: int = 0) -> np.ndarray:
        """Whether each request from row ``start`` on has finished or been rejected (what a front end sees)."""
        return self.req_i[start : self._n_req, K.RI_STATE] >= K.FINISHED

    def _build_slots(self, tp: int, replicas: int, loading: bool) -> None:
        n_slots = fit_replicas(None, tp, self.config.gpus)  # replica slots: as many as fit
        tp_idx = self._tp_list.index(tp)
        self.slot_i = np.zeros((n_slots, K.N_SI), dtype=np.int64)
        self.slot_i[:, K.SI_QHEAD] = -1
        self.slot_i[:, K.SI_QTAIL] = -1
        self.slot_i[:, K.SI_TP_IDX] = tp_idx
        self.slot_i[:, K.SI_TOTAL_BLOCKS] = self._cap_blocks[tp_idx]
        self.slot_i[:, K.SI_FREE_BLOCKS] = self._cap_blocks[tp_idx]
        self.slot_i[:, K.SI_STATUS] = K.OFF
        self.slot_f = np.zeros((n_slots, K.N_SF))
        self.slot_f[:, [K.SF_BUSY_UNTIL, K.SF_ACCOUNTED_TO]] = self.now_s
        self.slot_f[:, K.SF_RELOAD_W] = self._feasible[tp][3]
        catalog_idle_w = self._packed[tp_idx, K.P_IDLE_W] * self._packed[tp_idx, K.P_TP]  # W per replica
        idle_w = catalog_idle_w if self.config.idle_power_w is None else self.config.idle_power_w * tp
        self.slot_f[:, K.SF_IDLE_W] = idle_w
        self.slot_f[:, K.SF_OFF_W] = idle_w if self.config.parked_power_w is None else self.config.parked_power_w * tp
        self.slot_f[:, K.SF_PENDING_SINCE] = -1.0
        self.run_ids = np.full((n_slots, MAX_RUNNING), -1, dtype=np.int64)
        self._slot_tp = tp
        for s in range(replicas):
            self._start_slot(s, loading)

    def _start_slot(self, s: int, loading: bool) -> None:
        if loading:
            self.slot_i[s, K.SI_STATUS] = K.LOADING
            self.slot_f[s, K.SF_READY_AT] = self.now_s + self._feasible[self._slot_tp][2]
        else:
            self.slot_i[s, K.SI_STATUS] = K.SERVING

    def _set_cfg(self, knobs: Knobs, clock_mhz: int) -> None:
        self.cfg = np.array(
            [
                clock_mhz / self.gpu.max_sm_clock_mhz,
                knobs.max_num_seqs,
                knobs.max_num_batched_tokens,
                self.config.block_tokens,
                self.config.slo.tbt_mean_s,
                knobs.prefill_sm_clock_mhz / self.gpu.max_sm_clock_mhz,
                self.config.clock_latency_s,
                -1.0 if self.config.prefill_clock_ttft_s is None else self.config.prefill_clock_ttft_s,
                float(self.config.max_model_len_tokens or 0),
            ]
        )

    def fork(self) -> SimNode:
        """An independent deep copy: stepping it leaves this node unchanged."""
        return copy.deepcopy(self)

    def close(self) -> None:
        """Nothing to release for a simulated node."""

    # ------------------------------------------------------------------------------------- knobs

    def apply(self, knobs: Knobs) -> None:
        """Request a configuration (see the module docstring for what each change costs)."""
        self.check(knobs)
        current = self._target or self.knobs
        changed = knobs != current
        if knobs.sm_clock_mhz != current.sm_clock_mhz:
            self._clock_at = (self.now_s + self.config.clock_latency_s, knobs.sm_clock_mhz)
        clock_now = int(round(self.cfg[K.C_CLOCK_FRAC] * self.gpu.max_sm_clock_mhz))
        self._set_cfg(knobs, clock_now)
        if (knobs.tp, knobs.replicas) != (current.tp, current.replicas):
            self._reshape(knobs)
        self.knobs = replace(
            self.knobs,
            max_num_seqs=knobs.max_num_seqs,
            max_num_batched_tokens=knobs.max_num_batched_tokens,
            prefill_sm_clock_mhz=knobs.prefill_sm_clock_mhz,
        )
        self._reconfigs += int(changed)

    def _reshape(self, knobs: Knobs) -> None:
        active = np.flatnonzero(np.isin(self.slot_i[:, K.SI_STATUS], (K.SERVING, K.LOADING)))
        if self._target is not None or knobs.tp != self._slot_tp:
            # A TP change reshapes every replica: all drain, then the new layout loads. A further
            # layout change while one is under way only updates the target.
            self._target = knobs
            for s in active:
                self._stop_slot(int(s))
            self._maybe_load_new_layout(self.now_s)
            return
        n_active = len(active)
        for _ in range(n_active, knobs.replicas):  # add replicas: load weights on idle GPUs
            free = np.flatnonzero(self.slot_i[:, K.SI_STATUS] == K.OFF)
            if len(free):
                self._start_slot(int(free[0]), loading=True)
            else:  # a replica still draining is wanted again: it serves on, its weights still loaded
                self.slot_i[int(np.flatnonzero(self.slot_i[:, K.SI_STATUS] == K.DRAINING)[0]), K.SI_STATUS] = K.SERVING
        for s in sorted(active, reverse=True)[: max(0, n_active - knobs.replicas)]:
            self._stop_slot(int(s))
        self.knobs = replace(self.knobs, tp=knobs.tp, replicas=knobs.replicas)

    def _stop_slot(self, s: int) -> None:
        """Stop admissions on a replica; re-route its waiting requests (and running ones when requeueing)."""
        status = self.slot_i[s, K.SI_STATUS]
        if status == K.LOADING:
            K._account_idle(s, self.now_s, self.slot_f, self.slot_i)
            self.slot_i[s, K.SI_STATUS] = K.OFF
            return
        self.slot_i[s, K.SI_STATUS] = K.DRAINING
        moved = []
        while self.slot_i[s, K.SI_QLEN] > 0:
            moved.append(int(K._pop_front(self.req_i, self.slot_i, s)))
        if self.config.inflight == "requeue":
            n = int(self.slot_i[s, K.SI_NRUN])
            for rid in self.run_ids[s, :n]:
                rid = int(rid)
                self.slot_i[s, K.SI_FREE_BLOCKS] += self.req_i[rid, K.RI_BLOCKS]
                self.req_i[rid, [K.RI_BLOCKS, K.RI_CTX, K.RI_PHASE]] = 0
                self.req_i[rid, K.RI_PREEMPT] += 1
                moved.append(rid)
            self.slot_i[s, K.SI_NRUN] = 0
        for rid in moved:
            self.slot_i[s, K.SI_OUTSTANDING] -= 1
            K.push_pending(self.req_i, self.g, rid)

    def _maybe_load_new_layout(self, drained_at: float) -> None:
        """Once every old replica has drained, load the target layout's weights."""
        if self._target is None or np.any(self.slot_i[:, K.SI_STATUS] == K.DRAINING):
            return
        self.now_s = max(self.now_s, drained_at)
        K.finish_interval(self.now_s, self.slot_i, self.slot_f)
        # Slot arrays are rebuilt: bank their energy per GPU in the running total first.
        self._banked += np.repeat(self.slot_f[:, K.SF_ENERGY_J] / self._slot_tp, self._slot_tp)
        target = self._target
        self._build_slots(target.tp, target.replicas, loading=True)
        self.knobs = replace(self.knobs, tp=target.tp, replicas=target.replicas)
        self._target = None

    def _gpu_energy(self) -> np.ndarray:
        """Cumulative energy of each GPU since reset (J)."""
        return np.repeat(self.slot_f[:, K.SF_ENERGY_J] / self._slot_tp, self._slot_tp) + self._banked

    # ---------------------------------------------------------------------------------- stepping

    def advance(self, dt_s: float) -> NodeSnapshot:
        """Serve for ``dt_s`` seconds; returns the interval's snapshot."""
        if self.trace is None:
            raise RuntimeError("call reset() before advance()")
        if not dt_s > 0:
            raise InputError("advance", "dt_s", f"must be positive, got {dt_s}", "pass the control interval in s")
        t_start, t_end = self.now_s, self.now_s + dt_s
        reconfigs, self._reconfigs = self._reconfigs, 0
        self.cnt[:] = 0.0
        self.hist_ttft[:] = 0.0
        self.hist_itl[:] = 0.0
        fast = self.config.mode == "fast"
        while True:
            seg_end = t_end
            if self._clock_at is not None and self._clock_at[0] < t_end:
                seg_end = max(self._clock_at[0], self.now_s)
            code = K.run_until(
                self.now_s,
                seg_end,
                fast,
                self.req_f,
                self.req_i,
                self.slot_i,
                self.slot_f,
                self.run_ids,
                self._packed,
                self._cap_blocks,
                self.cfg,
                self.g,
                self.cnt,
                self.hist_ttft,
                self.ttft_edges,
                self.hist_itl,
                self.itl_edges,
                self.chunk,
            )
            if code == K.SLOT_DRAINED:
                off = self.slot_i[:, K.SI_STATUS] == K.OFF
                self._maybe_load_new_layout(min(seg_end, float(self.slot_f[off, K.SF_READY_AT].max())))
                continue
            self.now_s = seg_end
            if self._clock_at is not None and self._clock_at[0] <= seg_end:
                self.cfg[K.C_CLOCK_FRAC] = self._clock_at[1] / self.gpu.max_sm_clock_mhz
                self.knobs = replace(self.knobs, sm_clock_mhz=self._clock_at[1])
                self._clock_at = None
            if seg_end >= t_end:
                break
        K.finish_interval(t_end, self.slot_i, self.slot_f)
        energy = self._gpu_energy()
        delta, self._energy_mark = energy - self._energy_mark, energy
        snap = self._snapshot(t_start, delta)
        return replace(snap, reconfigurations=reconfigs)

    def _snapshot(self, t_start: float, energy_per_gpu: np.ndarray) -> NodeSnapshot:
        c = self.cnt
        serving = np.isin(self.slot_i[:, K.SI_STATUS], (K.SERVING, K.DRAINING))
        total = self.slot_i[serving, K.SI_TOTAL_BLOCKS].sum()
        used = total - self.slot_i[serving, K.SI_FREE_BLOCKS].sum()
        span = max(self.now_s - t_start, 1e-12)
        gaps = c[K.K_TOKENS_OUT] - c[K.K_FIRST_TOKENS]
        return NodeSnapshot(
            t_start_s=t_start,
            t_end_s=self.now_s,
            energy_j=float(energy_per_gpu.sum()),
            energy_per_gpu_j=tuple(float(e) for e in energy_per_gpu),
            mean_power_w=float(energy_per_gpu.sum()) / span if self.now_s > t_start else 0.0,
            arrived=int(c[K.K_ARRIVED]),
            prompt_tokens_in=int(c[K.K_PROMPT_IN]),
            output_tokens=int(c[K.K_TOKENS_OUT]),
            prefill_tokens=int(c[K.K_PREFILL_TOKENS]),
            finished=int(c[K.K_FINISHED]),
            slo_met=int(c[K.K_SLO_MET]),
            rejected=int(c[K.K_REJECTED]),
            preemptions=int(c[K.K_PREEMPTIONS]),
            iterations=int(c[K.K_ITERATIONS]),
            waiting=int(self.slot_i[:, K.SI_QLEN].sum() + self.g[K.G_PLEN]),
            running=int(self.slot_i[:, K.SI_NRUN].sum()),
            kv_cache_usage_frac=float(used / total) if total else 0.0,
            ttft_mean_s=float(c[K.K_TTFT_SUM] / c[K.K_FIRST_TOKENS]) if c[K.K_FIRST_TOKENS] else 0.0,
            tbt_mean_s=float(c[K.K_TBT_SUM] / gaps) if gaps > 0 else 0.0,
            ttft_hist=self.hist_ttft.copy(),
            itl_hist=self.hist_itl.copy(),
            knobs=self.knobs,
            reconfiguring=bool(
                np.any(np.isin(self.slot_i[:, K.SI_STATUS], (K.LOADING, K.DRAINING))) or self._target is not None
            ),
            reconfigurations=0,
            prefill_clock_frac=float(c[K.K_PREFILL_CLOCK_S] / c[K.K_BUSY_S]) if c[K.K_BUSY_S] > 0 else 0.0,
        )

    # ---------------------------------------------------------------------------------- requests

    def requests(self) -> dict[str, np.ndarray]:
        """Per-request records so far (times in s; -1 where an event has not happened)."""
        f, i = self.req_f[: self._n_req], self.req_i[: self._n_req]
        gen = i[:, K.RI_GENERATED]
        first = f[:, K.RF_FIRST_TOKEN]
        ttft = np.where(first >= 0, first - f[:, K.RF_ARRIVAL], -1.0)
        tbt_mean = np.where(gen > 1, f[:, K.RF_TBT_SUM] / np.maximum(gen - 1, 1), 0.0)
        finished = i[:, K.RI_STATE] == K.FINISHED
        met = finished & (ttft >= 0) & self.config.slo.met(ttft, tbt_mean, f[:, K.RF_TTFT_SLO])
        return {
            "arrival_s": f[:, K.RF_ARRIVAL].copy(),
            "admitted_at_s": f[:, K.RF_ADMIT].copy(),
            "first_token_at_s": first.copy(),
            "finished_at_s": np.where(finished, f[:, K.RF_FINISH], -1.0),
            "ttft_s": ttft,
            "tbt_mean_s": tbt_mean,
            "tbt_max_s": f[:, K.RF_TBT_MAX].copy(),
            "e2e_s": np.where(finished, f[:, K.RF_FINISH] - f[:, K.RF_ARRIVAL], -1.0),
            "ttft_slo_s": f[:, K.RF_TTFT_SLO].copy(),
            "input_tokens": i[:, K.RI_PROMPT].copy(),
            "output_tokens": i[:, K.RI_OUTPUT].copy(),
            "generated_tokens": gen.copy(),
            "preemptions": i[:, K.RI_PREEMPT].copy(),
            "state": i[:, K.RI_STATE].copy(),
            "slo_met": met,
        }

    def slo_attainment(self) -> float:
        """Share of arrived requests that met their SLO (unfinished ones count as missed by default)."""
        rec = self.requests()
        arrived = rec["arrival_s"] < self.now_s
        if not self.config.unfinished_counts_as_missed:
            arrived &= rec["state"] >= K.FINISHED
        return float(rec["slo_met"][arrived].mean()) if arrived.any() else 1.0

    def finished_output_tokens(self) -> tuple[int, int]:
        """Output tokens generated by the requests finished since ``reset``, and how many finished."""
        if self.trace is None:
            return 0, 0
        done = self.req_i[:, K.RI_STATE] == K.FINISHED
        return int(self.req_i[done, K.RI_GENERATED].sum()), int(np.count_nonzero(done))

    def state_counts(self) -> dict[str, int]:
        """Requests by state now: arrived = finished + rejected + running + waiting always holds."""
        st = self.req_i[:, K.RI_STATE]
        return {
            "arrived": int(self.g[K.G_NEXT_ARRIVAL]),
            "finished": int((st == K.FINISHED).sum()),
            "rejected": int((st == K.REJECTED).sum()),
            "running": int((st == K.RUNNING).sum()),
            "waiting": int((st == K.WAITING).sum()),
        }


def _blank_requests(n: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty request table of ``n`` rows: arrival at infinity (never reached), no event yet (-1), no slot."""
    req_f = np.zeros((n, K.N_RF))
    req_f[:, K.RF_ARRIVAL] = np.inf
    req_f[:, [K.RF_FIRST_TOKEN, K.RF_FINISH, K.RF_LAST_TOKEN, K.RF_ADMIT]] = -1.0
    req_i = np.zeros((n, K.N_RI), dtype=np.int64)
    req_i[:, [K.RI_SLOT, K.RI_NEXT]] = -1
    return req_f, req_i
