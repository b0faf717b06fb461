"""ServingEnv: a Gymnasium environment in which an agent sets a vLLM node's knobs every control interval.

The observation is built by ``greenrl.env.observation.ObservationBuilder`` (shared with the live controller).

Public names: ServingEnv, make_env, build_node, episode_workload; OBS_FIELDS, OBS_CLIP, ObsField (re-exported
from ``greenrl.env.observation``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from greenrl.catalog import load_gpu
from greenrl.core import ForkableNode, KnobDwell, Knobs, Node, NodeSnapshot, fit_replicas, queue_guard_layout
from greenrl.env.observation import OBS_CLIP, OBS_FIELDS, ObservationBuilder, ObsField
from greenrl.env.scenario import KNOB_NAMES, Scenario, load_scenario
from greenrl.errors import InputError
from greenrl.sim import SimConfig, SimNode
from greenrl.workload import Trace, load_trace, scale_for_rate_rps, servegen_trace, synthetic_trace

__all__ = ["OBS_CLIP", "OBS_FIELDS", "ObsField", "ServingEnv", "build_node", "episode_workload", "make_env"]


def episode_workload(s: Scenario, split: str, eval_index: int) -> Any:
    """The episode's request stream as a function of the episode's Generator."""
    w = s.workload
    if w.synthetic is not None:
        spec = dict(w.synthetic)
        mean_rps = float(spec.pop("mean_rps", 5.0))

        def synthetic(rng: np.random.Generator) -> Trace:
            if split == "eval":  # fixed, held-out seeds: 10_000 + window index
                rng = np.random.default_rng(10_000 + eval_index)
                start, duration = w.eval_windows_s[eval_index % len(w.eval_windows_s)]
                scale = w.eval_rate_scale
            else:
                start, duration = float(rng.uniform(w.train_range_s[0], w.train_range_s[1])), w.window_s
                scale = float(rng.uniform(w.rate_scale[0], w.rate_scale[1]))
            hour = (w.start_hour + start / 3600.0) % 24.0
            return synthetic_trace(duration, mean_rps * scale, seed=rng, start_hour=hour, **spec)  # type: ignore[arg-type]

        return synthetic
    if w.servegen is not None:
        return _servegen_workload(s, split, eval_index)
    trace = load_trace(w.trace)

    def replay(rng: np.random.Generator) -> Trace:
        if split == "eval":
            start, duration = w.eval_windows_s[eval_index % len(w.eval_windows_s)]
            return trace.window(start, duration).scale_rate(w.eval_rate_scale)
        scale = float(rng.uniform(w.rate_scale[0], w.rate_scale[1]))
        span = w.window_s * scale  # compressed by `scale` into window_s
        t0, t1 = w.train_range_s
        start = float(rng.uniform(t0, max(t0, t1 - span)))
        return trace.window(start, min(span, t1 - start)).scale_rate(scale)

    return replay


def _servegen_workload(s: Scenario, split: str, eval_index: int) -> Any:
    """Episodes of a ServeGen category: training windows in ``train_range_s``, fixed evaluation windows."""
    w = s.workload
    spec = w.servegen or {}
    category = str(spec["category"])
    base_scale = scale_for_rate_rps(category, float(spec["mean_rps"]))

    def generate(rng: np.random.Generator) -> Trace:
        if split == "eval":  # fixed, held-out seeds: 10_000 + window index
            start, duration = w.eval_windows_s[eval_index % len(w.eval_windows_s)]
            return servegen_trace(
                category, start, duration, scale=base_scale * w.eval_rate_scale, seed=10_000 + eval_index
            )
        t0, t1 = w.train_range_s
        start = float(rng.uniform(t0, max(t0, t1 - w.window_s)))
        scale = float(rng.uniform(w.rate_scale[0], w.rate_scale[1]))
        return servegen_trace(category, start, min(w.window_s, t1 - start), scale=base_scale * scale, seed=rng)

    return generate


def build_node(s: Scenario, split: str = "train", eval_index: int = 0) -> SimNode:
    """The scenario's simulated node."""
    n = s.node
    initial = _initial_knobs(s)
    config = SimConfig(
        model=n.model,
        gpu=n.gpu,
        gpus=n.gpus,
        stack=n.stack,
        mode=n.mode,  # type: ignore[arg-type]
        initial=initial,
        clock_latency_s=n.clock_latency_s,
        prefill_clock_ttft_s=s.control.prefill_clock_ttft_s,
        load_bandwidth_bps=n.load_bandwidth_gbps * 1e9,
        host_load_bandwidth_per_gpu_bps=(
            None if n.host_load_bandwidth_per_gpu_gbps is None else n.host_load_bandwidth_per_gpu_gbps * 1e9
        ),
        engine_start_s=n.engine_start_s,
        idle_power_w=n.idle_power_w,
        parked_power_w=n.parked_power_w,
        max_model_len_tokens=n.max_model_len_tokens,
        inflight=n.inflight,  # type: ignore[arg-type]
        slo=s.slo,
    )
    workload = episode_workload(s, split, eval_index)  # a bad trace file names itself, not node.initial
    try:
        return SimNode(config, workload)
    except InputError as err:
        raise InputError(s.path, f"node.initial.{err.field}", err.problem, err.fix) from None


def _initial_knobs(s: Scenario) -> Knobs:
    init = dict(s.node.initial)
    tp = init.get("tp", 8)
    return Knobs(
        tp=tp,
        replicas=init.get("replicas", fit_replicas(None, tp, s.node.gpus)),
        max_num_seqs=init.get("max_num_seqs", 256),
        sm_clock_mhz=init.get("sm_clock_mhz", load_gpu(s.node.gpu).max_sm_clock_mhz),
        max_num_batched_tokens=init.get("max_num_batched_tokens", 8192),
        prefill_sm_clock_mhz=init.get("prefill_sm_clock_mhz", 0),
    )


class ServingEnv(gym.Env[npt.NDArray[np.float32], npt.NDArray[np.int64]]):
    """Set a vLLM node's knobs each control interval to save GPU energy without breaking SLOs.

    ## Description
    The node (simulated ``SimNode``, or a live vLLM node: any ``greenrl.core.Node``) serves the
    scenario's requests. Every ``control.interval_s`` seconds the agent picks the knobs.

    ## Action Space
    ``MultiDiscrete``: one index per knob listed in the scenario's ``control.knobs``, in the order
    tp, replicas, max_num_seqs, sm_clock_mhz, max_num_batched_tokens, prefill_sm_clock_mhz (the clock while
    requests wait or prefill, 0: off; see ``greenrl.core.Knobs``). Knobs not listed keep their initial
    value; without a ``replicas`` knob every GPU serves (replicas = GPUs / tp). ``action_masks()`` masks
    TP values whose weights do not fit (for MaskablePPO); an unmasked infeasible choice is mapped to the
    nearest feasible configuration (the smallest feasible TP above it, else the largest; replicas capped
    at GPUs / tp).

    ## Observation Space
    ``Box(-10, 10, (23,), float32)``: each field of ``OBS_FIELDS`` divided by its scale, clipped:

    | field | unit | scale | live source |
    |---|---|---|---|
    | arrival_rate_rps, arrival_rate_prev_rps | requests/s | 20 | front end |
    | mean_prompt_tokens | tokens | 4096 | front end |
    | prompt_tokens_per_s, output_tokens_per_s | tokens/s | 20000 | front end / vLLM counters |
    | waiting, running | requests | 256, 512 | vLLM gauges |
    | kv_cache_usage_frac | fraction | 1 | vLLM gauge |
    | ttft_mean_s, tbt_mean_s | s | 1, 0.1 | vLLM histograms (interval sum/count) |
    | ttft_over_floor_frac, itl_over_slo_frac | fraction | 1 | vLLM histogram buckets |
    | preemptions_per_s | 1/s | 10 | vLLM counter |
    | power_frac | fraction of GPUs x TDP | 1 | NVML energy counter |
    | slo_attainment | fraction | 1 | front end |
    | reconfiguring | 0/1 | 1 | controller |
    | tp, replicas, max_num_seqs, sm_clock_frac | knob | 8, 8, 1024, 1 | controller / NVML |
    | prefill_sm_clock_frac | knob (0: off) | 1 | controller |
    | time_of_day_sin, time_of_day_cos | - | 1 | wall clock |

    Output lengths are never observed before a request finishes.

    ## Rewards
    ``r = energy + slo + reconfig`` (each term in ``info["reward_terms"]``):
    ``energy = -E_interval / (GPUs x TDP x interval_s)``;
    ``slo = -slo_weight x (missed - reference_missed) / expected_requests_per_interval`` (missed: finished
    late or rejected; at the episode's end every unfinished request counts as missed; reference_missed:
    0, or with ``reward.slo_reference: static-max`` the misses of a shadow copy of the simulated node
    running the initial configuration on the same requests, in ``info["reference_missed"]``);
    ``reconfig = -reconfig_weight x knobs changed``.

    ## Dwell times
    A change of TP or replicas (each costs a weight reload) asked for less than
    ``control.min_dwell_steps`` intervals after the previous one is ignored, as a production controller
    would enforce; the other knobs change every interval if asked. With ``control.guard_grow_queue`` N > 0,
    when GPUs are parked and N or more requests wait, every GPU serves at once whatever the action and the
    dwell (``info["guard"]``; the change starts a new dwell).

    ## Starting State
    The scenario's initial knobs, an empty node, a training window drawn from the episode's seed (or the
    fixed evaluation window).

    ## Episode End
    Truncated after ``Scenario.steps`` intervals (``Scenario.eval_steps`` on the eval split); never terminated.

    ## Arguments
    ``scenario`` (name, path or ``Scenario``), ``split`` (``train`` or ``eval``), ``eval_index``
    (evaluation window), ``node`` (any ``Node``; default: the scenario's ``SimNode``).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self, scenario: str | Scenario = "default", split: str = "train", eval_index: int = 0, node: Node | None = None
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        if split not in ("train", "eval"):
            raise InputError("ServingEnv", "split", f"unknown split {split!r}", "use train or eval")
        self.split, self.eval_index = split, eval_index
        self.node: Node = node if node is not None else build_node(self.scenario, split, eval_index)
        self.gpu = load_gpu(self.scenario.node.gpu)
        s = self.scenario
        self.initial = _initial_knobs(s)
        self.knob_names = [k for k in KNOB_NAMES if k in s.control.knobs]
        self.knob_values = [list(s.control.knobs[k]) for k in self.knob_names]
        feasible_tp = getattr(self.node, "feasible_tp", [1, 2, 4, 8])
        for name, values in zip(self.knob_names, self.knob_values, strict=True):
            if name in ("tp", "replicas"):
                continue  # infeasible TP is masked, replicas are capped at run time
            for v in values:
                probe = self._knobs_from({name: v}, clamp=False)
                try:
                    getattr(self.node, "check", lambda _k, _w: None)(probe, f"{s.path}: control.knobs.{name}")
                except InputError as err:
                    raise InputError(s.path, f"control.knobs.{name}", f"value {v}: {err.problem}", err.fix) from None
        self.feasible_tp = feasible_tp
        self.action_space: gym.spaces.MultiDiscrete = gym.spaces.MultiDiscrete([len(v) for v in self.knob_values])
        self.observation_space = gym.spaces.Box(-OBS_CLIP, OBS_CLIP, (len(OBS_FIELDS),), np.float32)
        self._mask = (
            np.concatenate(
                [
                    np.array([(v in feasible_tp) if n == "tp" else True for v in vals], dtype=bool)
                    for n, vals in zip(self.knob_names, self.knob_values, strict=True)
                ]
            )
            if self.knob_names
            else np.zeros(0, dtype=bool)
        )
        self._observation = ObservationBuilder.for_scenario(s, self.gpu)
        self._steps = s.steps if split == "train" else s.eval_steps
        self._t = 0
        self._prev_rate = 0.0
        self._knobs = self.initial
        self._dwell_rule = KnobDwell(s.control.min_dwell_steps)
        self._expected_per_step = 1.0
        self._shadow: ForkableNode | None = None
        self._waiting = 0.0

    # ------------------------------------------------------------------------------------ knobs

    def _knobs_from(self, chosen: dict[str, int], clamp: bool = True) -> Knobs:
        values = {
            "tp": self.initial.tp,
            "replicas": self.initial.replicas,
            "max_num_seqs": self.initial.max_num_seqs,
            "sm_clock_mhz": self.initial.sm_clock_mhz,
            "max_num_batched_tokens": self.initial.max_num_batched_tokens,
            "prefill_sm_clock_mhz": self.initial.prefill_sm_clock_mhz,
        } | chosen
        gpus = self.scenario.node.gpus
        if clamp and values["tp"] not in getattr(self, "feasible_tp", [values["tp"]]):
            allowed = [t for t in self.scenario.control.knobs.get("tp", self.feasible_tp) if t in self.feasible_tp]
            bigger = sorted(t for t in allowed if t > values["tp"])
            values["tp"] = bigger[0] if bigger else max(allowed)
        replicas = values["replicas"] if "replicas" in self.scenario.control.knobs else None
        values["replicas"] = fit_replicas(replicas, values["tp"], gpus)
        return Knobs(**values)

    def knobs_for(self, action: npt.ArrayLike) -> Knobs:
        """The (feasible) configuration an action selects."""
        idx = np.asarray(action, dtype=np.int64).reshape(-1)
        if idx.shape != (len(self.knob_names),) or np.any(idx < 0) or np.any(idx >= self.action_space.nvec):
            raise InputError("action", "action", f"{idx.tolist()} is not in {self.action_space}", "sample the space")
        chosen = {n: vals[i] for n, vals, i in zip(self.knob_names, self.knob_values, idx, strict=True)}
        return self._knobs_from(chosen)

    def action_for(self, knobs: Knobs) -> npt.NDArray[np.int64]:
        """The action index of each knob nearest to ``knobs`` (for baselines and tests)."""
        out = []
        for name, values in zip(self.knob_names, self.knob_values, strict=True):
            target = getattr(knobs, name)
            out.append(int(np.argmin([abs(v - target) for v in values])))
        return np.array(out, dtype=np.int64)

    def _dwell(self, knobs: Knobs) -> Knobs:
        """Keep a costly knob (TP, replicas) unchanged until its minimum dwell time has passed."""
        kept = self._dwell_rule.held(asdict(self._knobs), asdict(knobs), self._t)
        if not kept:
            return knobs
        out = replace(knobs, **kept)
        if "replicas" not in self.scenario.control.knobs:
            out = replace(out, replicas=fit_replicas(None, out.tp, self.scenario.node.gpus))
        return out

    @property
    def expected_requests_per_step(self) -> float:
        """The episode's requests per interval (at least 1): the SLO term's unit of misses."""
        return self._expected_per_step

    def action_masks(self) -> npt.NDArray[np.bool_]:
        """Per-dimension valid values, concatenated (sb3-contrib's MaskablePPO format)."""
        return self._mask.copy()

    # -------------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Start an episode; the node's workload is drawn from this env's seeded generator."""
        super().reset(seed=seed)
        if options and "eval_index" in options and isinstance(self.node, ForkableNode):
            # only a simulator is the scenario's node for any window; a live node keeps its own workload
            self.eval_index = int(options["eval_index"])
            self.node = build_node(self.scenario, "eval", self.eval_index)
        node_seed = int(self.np_random.integers(2**31 - 1))
        snap = self.node.reset(seed=node_seed)
        trace = getattr(self.node, "trace", None)
        self._expected_per_step = max(1.0, len(trace) / self._steps) if trace is not None else 1.0
        start_hour = getattr(trace, "start_hour", None)  # a window of a day-scale trace knows its clock
        if start_hour is not None:
            self._observation = replace(self._observation, start_hour=start_hour)
        self._t = 0
        self._dwell_rule.reset()
        self._prev_rate = 0.0
        self._knobs = snap.knobs
        self._shadow = None
        if self.scenario.reward.slo_reference == "static-max" and isinstance(self.node, ForkableNode):
            self._shadow = self.node.fork()  # the initial configuration on the same requests
        return self._observe(snap), {"knobs": snap.knobs}

    def step(self, action: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Apply the action's knobs, serve one control interval, return the observation and reward."""
        knobs = self._dwell(self.knobs_for(action))
        guarded = self._guard(knobs)
        if guarded is not None:
            knobs = guarded
            self._dwell_rule.record(("tp", "replicas"), self._t)
        changed = sum(getattr(knobs, n) != getattr(self._knobs, n) for n in KNOB_NAMES)
        if changed:
            self.node.apply(knobs)
        self._knobs = knobs
        snap = self.node.advance(self.scenario.control.interval_s)
        self._t += 1
        truncated = self._t >= self._steps
        missed = _missed(snap, truncated)
        reference_missed = 0
        if self._shadow is not None:
            reference_missed = _missed(self._shadow.advance(self.scenario.control.interval_s), truncated)
        r = self.scenario.reward
        node_peak_j = self.scenario.node.gpus * self.gpu.tdp_w * self.scenario.control.interval_s
        terms = {
            "energy": -snap.energy_j / node_peak_j,
            "slo": -r.slo_weight * (missed - reference_missed) / self._expected_per_step,
            "reconfig": -r.reconfig_weight * changed,
        }
        reward = float(sum(terms.values()))
        info = {
            "reward_terms": terms,
            "energy_j": snap.energy_j,
            "finished": snap.finished,
            "slo_met": snap.slo_met,
            "missed": missed,
            "reference_missed": reference_missed,
            "knobs": snap.knobs,
            "prefill_clock_frac": snap.prefill_clock_frac,
            "guard": guarded is not None,
        }
        return self._observe(snap), reward, False, truncated, info

    def _guard(self, knobs: Knobs) -> Knobs | None:
        """The queue guard's layout for ``knobs`` given the last observed queue (None: it does not fire)."""
        values = self.scenario.control.knobs.get("replicas")
        return queue_guard_layout(
            knobs,
            self._waiting,
            gpus=self.scenario.node.gpus,
            queue_requests=self.scenario.control.guard_grow_queue,
            replica_values=values,
        )

    def _observe(self, snap: NodeSnapshot) -> npt.NDArray[np.float32]:
        self._waiting = float(snap.waiting)
        raw = self._observation.raw(snap, self._prev_rate)
        self._prev_rate = raw[0]
        return self._observation.vector(raw)

    def close(self) -> None:
        """Close the node."""
        self.node.close()


def _missed(snap: NodeSnapshot, ended: bool) -> int:
    """Requests that missed their SLO in the interval; at the episode end (``ended``) unfinished ones too.

    Any node reports its unfinished requests, so simulated and live episodes are scored alike.
    """
    return snap.finished - snap.slo_met + snap.rejected + (snap.unfinished if ended else 0)


def make_env(scenario: str = "default", split: str = "train", eval_index: int = 0) -> ServingEnv:
    """Entry point used by the Gymnasium registry (``greenrl/<scenario>-v0``)."""
    return ServingEnv(scenario, split, eval_index)
