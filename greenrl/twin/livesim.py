"""The twin's simulator hook: a ``SimNode`` fed live requests instead of a fixed trace.

``LiveSim`` injects each completion the twin receives into a running ``SimNode`` (see ``docs/twin.md``,
"How injection works"), with the TTFT bound of the scenario's SLO (``greenrl.slo``) for its prompt,
steps the simulation on demand and reads where each request stands (``RequestProgress``) and the
cumulative counters the twin's ``/metrics`` exposes.

Public names: CapacityError, FAR_S, LiveSim, RequestProgress.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, Knobs, NodeSnapshot, fit_replicas
from greenrl.errors import InputError
from greenrl.sim import SimConfig, SimNode
from greenrl.sim import kernel as K
from greenrl.slo import FastestPrefill
from greenrl.surrogate import Surrogate
from greenrl.workload import Trace

__all__ = ["FAR_S", "CapacityError", "LiveSim", "RequestProgress"]

FAR_S = 1.0e12
"""Arrival time of a placeholder row (s): far beyond any run, so the kernel never reaches it."""

_STATES = {K.FUTURE: "pending", K.WAITING: "waiting", K.RUNNING: "running", K.FINISHED: "finished"}
_STATES[K.REJECTED] = "rejected"


class CapacityError(RuntimeError):
    """Every preallocated request row of a ``LiveSim`` is used (the twin answers HTTP 503)."""


@dataclass(frozen=True, slots=True)
class RequestProgress:
    """Where one injected request stands in simulated time.

    Attributes:
        rid: row of the request in the simulator.
        state: ``pending`` (injected, arrival not yet simulated), ``waiting``, ``running``, ``finished``
            or ``rejected`` (its context can never fit a replica's KV cache).
        arrival_s: simulated arrival time (s).
        prompt_tokens, output_tokens: prompt length and requested output length (tokens).
        generated: output tokens produced so far (tokens).
        first_token_at_s, last_token_at_s, finished_at_s: simulated instants (s), -1 before they happen.
    """

    rid: int
    state: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    generated: int
    first_token_at_s: float
    last_token_at_s: float
    finished_at_s: float


@dataclass(slots=True)
class _Totals:
    """Cumulative counters since the twin started (what Prometheus counters and histograms expose)."""

    arrived: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    finished: int = 0
    slo_met: int = 0
    rejected: int = 0
    ttft_sum_s: float = 0.0
    itl_sum_s: float = 0.0
    ttft_hist: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1))
    itl_hist: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(len(VLLM_ITL_BUCKETS_S) + 1))


class LiveSim:
    """A ``SimNode`` that accepts requests arriving while it runs.

    ``SimNode`` replays a fixed ``Trace`` given at reset, consuming arrivals in row order through the
    kernel's ``G_NEXT_ARRIVAL`` cursor. ``LiveSim`` resets it on a trace of ``capacity`` placeholder
    rows that arrive at ``FAR_S`` (never reached), and ``inject`` fills the next free row in place
    (arrival time, prompt and output lengths, TTFT SLO) with an arrival time no earlier than the
    simulated now nor the previous injection, so rows stay sorted by arrival and the kernel sees each
    one before it advances past it. Rows are never reused: ``capacity`` bounds the requests over the
    twin's lifetime.

    Args:
        config: the simulated node.
        capacity: request rows to preallocate (about 150 bytes each).
        surrogate: fitted surrogate (default: the packaged parameters).

    Raises:
        InputError: on a capacity below 1 or a configuration the node cannot run.
    """

    def __init__(self, config: SimConfig, capacity: int = 100_000, surrogate: Surrogate | None = None) -> None:
        if capacity < 1:
            raise InputError("LiveSim", "capacity", f"must be >= 1, got {capacity}", "pass e.g. 100000")
        surrogate = surrogate or Surrogate()
        ones = np.ones(capacity, dtype=np.int64)
        placeholders = Trace("live", np.full(capacity, FAR_S), ones, ones, FAR_S)
        self.node = SimNode(config, placeholders, surrogate)
        self.node.reset()
        self.capacity = capacity
        fastest = surrogate.replica(config.model, self.node.gpu, self.node.feasible_tp[-1], config.stack)
        self._prefill_alone = FastestPrefill(fastest)
        self._next = 0
        self._last_arrival_s = 0.0
        self._requested: Knobs = self.node.knobs
        self.totals = _Totals()
        self.energy_per_gpu_j = np.zeros(config.gpus)
        self.last: NodeSnapshot | None = None

    @classmethod
    def from_scenario(cls, scenario: str, capacity: int = 100_000, initial: dict[str, int] | None = None) -> LiveSim:
        """The node of a scenario (a name in ``envs/`` or a YAML path), fed live instead of by its trace.

        Args:
            scenario: scenario name or YAML path.
            capacity: request rows to preallocate.
            initial: knobs to start in instead of the scenario's initial ones (``tp``, ``replicas``,
                ``max_num_seqs``, ``sm_clock_mhz``, ``prefill_sm_clock_mhz``; any subset). A new ``tp``
                without ``replicas`` gets ``gpus // tp`` replicas.

        Raises:
            InputError: naming the flag (``--tp``, ...) when the knobs cannot run on the scenario's node.
        """
        from greenrl.env.scenario import load_scenario
        from greenrl.env.serving_env import build_node

        config = build_node(load_scenario(scenario)).config
        given = {k: v for k, v in (initial or {}).items() if v is not None}
        if given:
            knobs = dataclasses.replace(config.initial, **given)
            if "tp" in given and "replicas" not in given:
                knobs = dataclasses.replace(knobs, replicas=fit_replicas(None, knobs.tp, config.gpus))
            config = dataclasses.replace(config, initial=knobs)
        try:
            return cls(config, capacity)
        except InputError as err:
            if err.where != "initial":
                raise
            flag = "--" + err.field.replace("_", "-")
            raise InputError(flag, err.field, f"{err.problem} (scenario {scenario})", err.fix) from None

    # ------------------------------------------------------------------------------------ state

    @property
    def now_s(self) -> float:
        """Simulated time (s since the twin started)."""
        return self.node.now_s

    @property
    def knobs(self) -> Knobs:
        """The configuration in force now (a new SM clock shows once its latency has passed)."""
        return self.node.knobs

    @property
    def requested_knobs(self) -> Knobs:
        """The configuration last asked for with ``apply``."""
        return self._requested

    @property
    def injected(self) -> int:
        """Rows used so far (requests injected)."""
        return self._next

    @property
    def max_model_len_tokens(self) -> int:
        """The context length (vLLM's ``max_model_len``, tokens).

        The scenario's ``max_model_len_tokens``, else what one replica's KV cache holds at the TP in force
        (vLLM refuses to start when one max-length request would not fit).
        """
        configured = self.node.config.max_model_len_tokens
        return configured if configured is not None else self.node.kv_capacity_tokens(self.node.knobs.tp)

    def energy_j(self) -> float:
        """Cumulative GPU energy of the node since the twin started (J)."""
        return float(self.energy_per_gpu_j.sum())

    # ------------------------------------------------------------------------------------ requests

    def inject(self, prompt_tokens: int, output_tokens: int, at_s: float | None = None) -> int:
        """Add a request arriving at ``max(at_s, now, previous arrival)``; returns its request id (row).

        Args:
            prompt_tokens: prompt length (tokens), >= 1.
            output_tokens: tokens to generate (tokens), >= 1; generation never stops early (ignore_eos).
            at_s: wanted simulated arrival time (s); default now.

        Raises:
            InputError: on a token count below 1.
            CapacityError: when every preallocated row is used.
        """
        for name, value in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InputError("LiveSim.inject", name, f"must be an integer >= 1, got {value!r}", "pass >= 1 token")
        if self._next >= self.capacity:
            raise CapacityError(f"all {self.capacity} request rows are used; restart the twin with a larger --capacity")
        t = max(self.node.now_s, self._last_arrival_s, -math.inf if at_s is None else float(at_s))
        rid = self._next
        f, i = self.node.req_f, self.node.req_i
        f[rid, K.RF_ARRIVAL] = t
        f[rid, K.RF_TTFT_SLO] = self.node.config.slo.ttft_bound_s(self._prefill_alone(int(prompt_tokens)))
        i[rid, K.RI_PROMPT] = int(prompt_tokens)
        i[rid, K.RI_OUTPUT] = int(output_tokens)
        self._next = rid + 1
        self._last_arrival_s = t
        return rid

    def abort(self, rid: int) -> None:
        """Cut a request short (client gone): it finishes after at most one more token (>= 1 in all)."""
        self._check_rid(rid)
        i = self.node.req_i
        if i[rid, K.RI_STATE] in (K.FUTURE, K.WAITING, K.RUNNING):
            i[rid, K.RI_OUTPUT] = max(int(i[rid, K.RI_GENERATED]), 1)

    def progress(self, rid: int) -> RequestProgress:
        """Where request ``rid`` stands now."""
        self._check_rid(rid)
        f, i = self.node.req_f[rid], self.node.req_i[rid]
        state = int(i[K.RI_STATE])
        return RequestProgress(
            rid=rid,
            state=_STATES[state],
            arrival_s=float(f[K.RF_ARRIVAL]),
            prompt_tokens=int(i[K.RI_PROMPT]),
            output_tokens=int(i[K.RI_OUTPUT]),
            generated=int(i[K.RI_GENERATED]),
            first_token_at_s=float(f[K.RF_FIRST_TOKEN]),
            last_token_at_s=float(f[K.RF_LAST_TOKEN]),
            finished_at_s=float(f[K.RF_FINISH]) if state in (K.FINISHED, K.REJECTED) else -1.0,
        )

    def _check_rid(self, rid: int) -> None:
        if not 0 <= rid < self._next:
            raise InputError("LiveSim", "rid", f"no injected request {rid}", f"use 0 to {self._next - 1}")

    # ------------------------------------------------------------------------------------ stepping

    def advance_to(self, t_s: float) -> NodeSnapshot | None:
        """Simulate up to ``t_s`` (s); returns the interval's snapshot, or None if ``t_s`` is not ahead."""
        if not t_s > self.node.now_s:
            return None
        snap = self.node.advance(t_s - self.node.now_s)
        tot = self.totals
        tot.arrived += snap.arrived
        tot.prompt_tokens += snap.prompt_tokens_in
        tot.generation_tokens += snap.output_tokens
        tot.preemptions += snap.preemptions
        tot.finished += snap.finished
        tot.slo_met += snap.slo_met
        tot.rejected += snap.rejected
        first_tokens = float(snap.ttft_hist.sum())
        tot.ttft_hist += snap.ttft_hist
        tot.itl_hist += snap.itl_hist
        tot.ttft_sum_s += snap.ttft_mean_s * first_tokens
        tot.itl_sum_s += snap.tbt_mean_s * max(snap.output_tokens - first_tokens, 0.0)
        self.energy_per_gpu_j += np.asarray(snap.energy_per_gpu_j)
        self.last = snap
        return snap

    def apply(self, **changes: int) -> Knobs:
        """Change some knobs of the last requested configuration and apply it; returns the new request.

        Raises:
            InputError: on an unknown knob, a non-integer value or a configuration the node cannot run.
        """
        names = [f.name for f in dataclasses.fields(Knobs)]
        for key, value in changes.items():
            if key not in names:
                raise InputError("knobs", key, "unknown knob", f"use {', '.join(names)}")
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError("knobs", key, f"expected an integer, got {value!r}", "pass a whole number")
        knobs = dataclasses.replace(self._requested, **changes)
        self.node.apply(knobs)
        self._requested = knobs
        return knobs
