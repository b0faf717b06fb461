"""Scenarios: YAML files in ``envs/`` describing a node, its workload, SLOs, knobs, reward and episodes.

Loaded with ``yaml.safe_load`` into frozen dataclasses; an unknown key or a wrong type is an error
naming the file, the key and what is allowed.

Public names: Scenario, load_scenario, scenario_names, scenarios_dir.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from greenrl.bundled import scenarios_dir
from greenrl.core import reload_time_s
from greenrl.env.scenario_checks import check_scenario, check_sections, check_shapes
from greenrl.errors import InputError
from greenrl.ioutil import read_yaml
from greenrl.slo import Slo

__all__ = ["Scenario", "load_scenario", "scenario_names", "scenarios_dir"]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """The simulated node (see ``greenrl.sim.SimConfig``, whose fields these are; bandwidths in GB/s)."""

    model: str = "llama-2-70b"
    gpu: str = "h100-sxm-80gb"
    gpus: int = 8
    stack: str | None = None
    mode: str = "fast"
    inflight: str = "drain"
    load_bandwidth_gbps: float = 2.5
    host_load_bandwidth_per_gpu_gbps: float | None = None
    engine_start_s: float = 0.0
    idle_power_w: float | None = None
    parked_power_w: float | None = None
    max_model_len_tokens: int | None = None
    clock_latency_s: float = 0.05
    initial: dict[str, int] = field(
        default_factory=lambda: {"tp": 8, "replicas": 1, "max_num_seqs": 256, "sm_clock_mhz": 1980}
    )

    def reload_s(self, weight_bytes: float, tp: int) -> float:
        """Seconds a new replica of ``tp`` GPUs takes to serve (``greenrl.core.reload_time_s``)."""
        per_gpu = self.host_load_bandwidth_per_gpu_gbps
        return reload_time_s(
            weight_bytes,
            tp,
            shared_bandwidth_bps=self.load_bandwidth_gbps * 1e9,
            per_gpu_bandwidth_bps=None if per_gpu is None else per_gpu * 1e9,
            engine_start_s=self.engine_start_s,
        )

    def parked_gpu_w(self, catalog_idle_w: float) -> float:
        """Power of a GPU outside every replica (W): ``parked_power_w``, else ``idle_power_w``, else the catalog's."""
        if self.parked_power_w is not None:
            return self.parked_power_w
        return self.idle_power_w if self.idle_power_w is not None else catalog_idle_w


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Requests: a bundled trace (or CSV path), a synthetic diurnal stream, or ServeGen production days.

    Training episodes draw a window start in ``train_range_s`` and a rate scale in ``rate_scale``;
    evaluation uses the fixed ``eval_windows_s`` ([start, duration] pairs), disjoint from training.
    ``servegen: {category: language/m-large, mean_rps: 2.0}`` generates a category's requests
    (``greenrl.workload.servegen_trace``), every client's rate scaled so that the training days
    average ``mean_rps``; times are seconds from the data's first midnight (day d starts at d x 86400).
    """

    trace: str = "azure-conv"
    synthetic: dict[str, float] | None = None
    servegen: dict[str, Any] | None = None
    window_s: float = 900.0
    train_range_s: list[float] = field(default_factory=lambda: [0.0, 2700.0])
    eval_windows_s: list[list[float]] = field(default_factory=lambda: [[2700.0, 800.0]])
    rate_scale: list[float] = field(default_factory=lambda: [0.5, 1.5])
    eval_rate_scale: float = 1.0
    start_hour: float = 18.25


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """Control interval, knob values and dwell times.

    ``knobs`` lists the values each knob may take (``replicas`` omitted: all GPUs serve);
    ``min_dwell_steps`` is the fewest intervals between two changes of a costly knob (a change asked
    for sooner is ignored); ``prefill_clock_ttft_s`` is the prefill clock governor's TTFT target (see
    ``greenrl.sim.SimConfig``; None: the prefill clock whenever a prompt waits); ``guard_grow_queue``:
    with GPUs parked and at least this many requests waiting, every GPU serves at once, whatever the
    policy chose and the dwell (``greenrl.core.queue_guard_layout``; 0: off).
    """

    interval_s: float = 30.0
    knobs: dict[str, list[int]] = field(default_factory=dict)
    min_dwell_steps: dict[str, int] = field(default_factory=lambda: {"tp": 10, "replicas": 10})
    prefill_clock_ttft_s: float | None = None
    guard_grow_queue: int = 0


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """reward = -energy/ref - slo_weight x (missed - reference missed)/ref_requests - reconfig_weight x changes.

    ``slo_reference``: ``none`` (reference missed = 0) or ``static-max``: a shadow copy of the simulated
    node runs the initial configuration on the same requests and its misses are subtracted. They do not
    depend on the agent's actions, so the optimal policy is unchanged, but the misses that bursts cause
    under any configuration stop adding noise to the SLO term (a baseline, as in variance reduction).
    """

    slo_weight: float = 10.0
    reconfig_weight: float = 0.01
    slo_reference: str = "none"


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    """Episode lengths in control steps.

    ``steps`` for training (window_s / interval_s by default), ``eval_steps`` for the evaluation
    windows (default: ``steps``; a day-scale scenario trains on hours and evaluates whole days).
    """

    steps: int | None = None
    eval_steps: int | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario file."""

    name: str
    path: str
    description: str = ""
    version: int = 0
    node: NodeSpec = field(default_factory=NodeSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    slo: Slo = field(default_factory=Slo)
    control: ControlSpec = field(default_factory=ControlSpec)
    reward: RewardSpec = field(default_factory=RewardSpec)
    episode: EpisodeSpec = field(default_factory=EpisodeSpec)

    @property
    def steps(self) -> int:
        """Control steps per episode."""
        return self.episode.steps or max(1, round(self.workload.window_s / self.control.interval_s))

    @property
    def eval_steps(self) -> int:
        """Control steps per evaluation episode."""
        return self.episode.eval_steps or self.steps


KNOB_NAMES = ("tp", "replicas", "max_num_seqs", "sm_clock_mhz", "max_num_batched_tokens", "prefill_sm_clock_mhz")
ZERO_MEANS_OFF = ("prefill_sm_clock_mhz",)
"""Knobs whose value 0 is allowed and switches them off."""


def scenario_names() -> list[str]:
    """Scenario names (file stems) found in ``scenarios_dir()``."""
    folder = scenarios_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _typename(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_type(where: str, key: str, value: Any, tp: Any) -> Any:
    """Coerce ints to floats where a float is expected; raise on anything else that does not match."""
    text = str(tp)
    if value is None and "None" in text:
        return value
    members = [a for a in get_args(tp) if a is not type(None)]
    if len(members) == 1 and get_origin(tp) not in (list, dict):  # X | None, value given: check it as X
        tp, text = members[0], str(members[0])
    if tp is float or text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(where, key, f"expected a number, got {value!r}", "write a number such as 30.0")
        return float(value)
    if tp is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(where, key, f"expected an integer, got {value!r}", "write a whole number")
        return value
    if tp is str or text.startswith("str"):
        if not isinstance(value, str):
            raise InputError(where, key, f"expected text, got {value!r}", "quote it as a string")
        return value
    if text.startswith("list") and not isinstance(value, list):
        raise InputError(where, key, f"expected a list, got {value!r}", "write [a, b, ...]")
    if text.startswith("dict") and not isinstance(value, dict):
        raise InputError(where, key, f"expected a mapping, got {value!r}", "write {key: value, ...}")
    args = get_args(tp)
    if text.startswith("list") and args:  # each item too: ["a", "b"] or [.nan] fail here, naming the item
        return [_check_type(where, f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if text.startswith("dict") and len(args) == 2:
        return {k: _check_type(where, f"{key}.{k}", v, args[1]) for k, v in value.items()}
    return value


def _build(cls: Any, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise InputError(where, prefix or "file", f"expected a mapping, got {raw!r}", "see envs/default.yaml")
    hints = get_type_hints(cls)
    allowed = [f.name for f in fields(cls) if f.name not in ("name", "path")]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in allowed:
            raise InputError(where, full, "unknown key", f"use one of {', '.join(allowed)}")
        tp = hints[key]
        if hasattr(tp, "__dataclass_fields__"):
            try:
                kwargs[key] = tp(**_build(tp, value, where, f"{full}."))
            except InputError as err:  # a section that checks its own values (``slo``): name the file
                if err.where == where:
                    raise
                raise InputError(where, f"{full}.{err.field}", err.problem, err.fix) from None
        else:
            kwargs[key] = _check_type(where, full, value, tp)
    missing = [
        f.name
        for f in fields(cls)
        if f.default is MISSING
        and f.default_factory is MISSING
        and f.name not in kwargs
        and f.name not in ("name", "path")
    ]
    if missing:
        raise InputError(where, f"{prefix}{missing[0]}", "missing", "add it (see envs/default.yaml)")
    return kwargs


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario by name (a file in ``scenarios_dir()``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = scenarios_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        names = scenario_names()
        raise InputError(
            "--scenario",
            "scenario",
            f"unknown scenario {name_or_path!r}",
            f"use one of {', '.join(names) or '(none found in ' + str(scenarios_dir()) + ')'}",
        )
    where = str(path)
    raw = read_yaml(path, "scenario")
    kwargs = _build(Scenario, raw or {}, where, "")
    check_sections(raw, where)
    scenario = Scenario(name=path.stem, path=where, **kwargs)
    check_shapes(scenario, where)
    _validate(scenario, where)
    check_scenario(scenario, where)
    return scenario


def _validate(s: Scenario, where: str) -> None:
    knobs = s.control.knobs
    for key, values in knobs.items():
        if key not in KNOB_NAMES:
            raise InputError(where, f"control.knobs.{key}", "unknown knob", f"use {', '.join(KNOB_NAMES)}")
        low = 0 if key in ZERO_MEANS_OFF else 1
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values):
            kind = "integers >= 0 (0: off)" if low == 0 else "positive integers"
            raise InputError(
                where,
                f"control.knobs.{key}",
                f"needs a non-empty list of {kind}, got {values!r}",
                "write e.g. [1605, 1980]",
            )
    for key, steps in s.control.min_dwell_steps.items():
        if key not in KNOB_NAMES or not isinstance(steps, int) or steps < 0:
            raise InputError(
                where,
                f"control.min_dwell_steps.{key}",
                f"needs a knob name and steps >= 0, got {steps!r}",
                "e.g. min_dwell_steps: {tp: 10}",
            )
    for key in ("tp", "replicas", "max_num_seqs", "sm_clock_mhz", "prefill_sm_clock_mhz"):
        if key in s.node.initial and not isinstance(s.node.initial[key], int):
            raise InputError(where, f"node.initial.{key}", "expected an integer", "write a whole number")
    for key in s.node.initial:
        if key not in KNOB_NAMES:
            raise InputError(where, f"node.initial.{key}", "unknown knob", f"use {', '.join(KNOB_NAMES)}")
    if s.reward.slo_reference not in ("none", "static-max"):
        raise InputError(
            where, "reward.slo_reference", f"unknown value {s.reward.slo_reference!r}", "use none or static-max"
        )
    if s.node.mode not in ("fast", "exact"):
        raise InputError(where, "node.mode", f"unknown mode {s.node.mode!r}", "use fast or exact")
    if s.node.inflight not in ("drain", "requeue"):
        raise InputError(where, "node.inflight", f"unknown value {s.node.inflight!r}", "use drain or requeue")
    if s.control.interval_s <= 0 or s.workload.window_s < s.control.interval_s:
        raise InputError(
            where,
            "control.interval_s",
            "must be positive and no longer than workload.window_s",
            "e.g. interval_s: 30.0 with window_s: 900.0",
        )
    guard = s.control.guard_grow_queue
    if not isinstance(guard, int) or isinstance(guard, bool) or guard < 0:
        raise InputError(
            where,
            "control.guard_grow_queue",
            f"needs a whole number of waiting requests >= 0 (0: off), got {guard!r}",
            "e.g. guard_grow_queue: 32",
        )
    target = s.control.prefill_clock_ttft_s
    if target is not None and not 0.0 <= target < s.slo.ttft_floor_s:
        raise InputError(
            where,
            "control.prefill_clock_ttft_s",
            f"needs 0 <= target < slo.ttft_floor_s ({s.slo.ttft_floor_s}), got {target}",
            "e.g. 0.2, or null for the prefill clock whenever a prompt waits",
        )
    lo, hi = s.workload.rate_scale
    if not 0 < lo <= hi:
        raise InputError(where, "workload.rate_scale", f"needs 0 < low <= high, got {[lo, hi]}", "e.g. [0.5, 1.5]")
    if not s.workload.eval_windows_s:
        raise InputError(where, "workload.eval_windows_s", "no evaluation windows", "add [[start_s, duration_s]]")
    t0, t1 = s.workload.train_range_s
    for start, duration in s.workload.eval_windows_s:
        if start < t1 and start + duration > t0 and s.workload.synthetic is None:
            raise InputError(
                where,
                "workload.eval_windows_s",
                f"window [{start}, {start + duration}) overlaps train_range_s [{t0}, {t1})",
                "make evaluation windows disjoint from training",
            )
