"""Whole-scenario checks run at load time, so a bad YAML fails in a line before anything runs.

``greenrl.env.scenario`` checks keys and types; this module checks what the values mean together:
sections that must be written out, list shapes, ranges, knob values the node can take, and
evaluation and training windows that the trace covers (the trace is read to learn its length).

Public names: check_sections, check_shapes, check_scenario.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

from greenrl.errors import InputError

if TYPE_CHECKING:
    from greenrl.env.scenario import Scenario

__all__ = ["check_scenario", "check_sections", "check_shapes"]

REQUIRED_SECTIONS = ("node", "workload", "control")
"""Sections a scenario file must write out: a missing one would silently take the defaults."""


def check_sections(raw: Any, where: str) -> None:
    """Raise unless the parsed YAML is a mapping that has every required section."""
    if not isinstance(raw, dict):
        return  # _build names the file as not a mapping
    for key in REQUIRED_SECTIONS:
        if key not in raw:
            raise InputError(where, key, "missing section", f"add a {key}: section (see envs/default.yaml)")


def check_shapes(s: Scenario, where: str) -> None:
    """List lengths that the rest of the loader unpacks: pairs must be pairs."""
    w = s.workload
    for key in ("rate_scale", "train_range_s"):
        value = getattr(w, key)
        if len(value) != 2:
            raise InputError(where, f"workload.{key}", f"needs [low, high], got {value!r}", "write two numbers")
    for i, pair in enumerate(w.eval_windows_s):
        if len(pair) != 2:
            raise InputError(
                where,
                f"workload.eval_windows_s[{i}]",
                f"needs [start_s, duration_s], got {pair!r}",
                "write e.g. [[2700.0, 800.0]]",
            )


def _positive(where: str, key: str, value: float | None, fix: str, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if zero_ok else value > 0
    if not (math.isfinite(value) and ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise InputError(where, key, f"must be {bound}, got {value!r}", fix)


def check_scenario(s: Scenario, where: str) -> None:
    """Ranges, the knob values the node can take and the trace's coverage of every window."""
    n, w = s.node, s.workload
    if n.gpus < 1:
        raise InputError(where, "node.gpus", f"must be >= 1, got {n.gpus}", "e.g. gpus: 8")
    _positive(where, "node.load_bandwidth_gbps", n.load_bandwidth_gbps, "e.g. 2.5 (GB/s from host to GPU)")
    _positive(where, "node.clock_latency_s", n.clock_latency_s, "e.g. 0.05", zero_ok=True)
    for key in ("idle_power_w", "parked_power_w", "host_load_bandwidth_per_gpu_gbps"):
        _positive(where, f"node.{key}", getattr(n, key), "e.g. 71.8, or omit it")
    _positive(where, "node.engine_start_s", n.engine_start_s, "e.g. 30.0", zero_ok=True)
    _positive(where, "node.max_model_len_tokens", n.max_model_len_tokens, "e.g. 32768, or omit it")
    init = n.initial
    if "replicas" in init and init["replicas"] * init.get("tp", 8) > n.gpus:
        raise InputError(
            where,
            "node.initial.replicas",
            f"tp x replicas = {init.get('tp', 8)} x {init['replicas']} does not fit {n.gpus} GPUs",
            "lower replicas or tp",
        )
    for key in ("steps", "eval_steps"):
        steps = getattr(s.episode, key)
        if steps is not None and steps < 1:
            raise InputError(where, f"episode.{key}", f"must be >= 1, got {steps}", "e.g. 30, or omit it")
    _positive(where, "workload.window_s", w.window_s, "e.g. 900.0")
    _positive(where, "workload.eval_rate_scale", w.eval_rate_scale, "e.g. 1.0")
    _positive(where, "reward.slo_weight", s.reward.slo_weight, "e.g. 10.0", zero_ok=True)
    _positive(where, "reward.reconfig_weight", s.reward.reconfig_weight, "e.g. 0.01", zero_ok=True)
    t0, t1 = w.train_range_s
    if not 0 <= t0 <= t1:
        raise InputError(where, "workload.train_range_s", f"needs 0 <= start <= end, got {[t0, t1]}", "e.g. [0, 2700]")
    for i, (start, duration) in enumerate(w.eval_windows_s):
        if not (start >= 0 and duration > 0):
            raise InputError(
                where,
                f"workload.eval_windows_s[{i}]",
                f"needs start_s >= 0 and duration_s > 0, got {[start, duration]}",
                "e.g. [2700.0, 800.0]",
            )
    _check_node(s, where)
    _check_knobs(s, where)
    if w.synthetic is not None:
        _check_synthetic(s, where)
    elif w.servegen is not None:
        _check_servegen(s, where)
    else:
        _check_trace_covers(s, where)


def _check_node(s: Scenario, where: str) -> None:
    from greenrl.catalog import load_gpu, load_model

    try:
        load_gpu(s.node.gpu, where)
    except InputError as err:
        raise InputError(where, "node.gpu", err.problem, err.fix) from None
    try:
        load_model(s.node.model, where=where)
    except InputError as err:
        raise InputError(where, "node.model", err.problem, err.fix) from None


def _check_knobs(s: Scenario, where: str) -> None:
    from greenrl.catalog import load_model

    knobs, gpus = s.control.knobs, s.node.gpus
    if not knobs:
        raise InputError(
            where,
            "control.knobs",
            "no knob to control",
            "list at least one knob, e.g. knobs: {sm_clock_mhz: [1605, 1980]}",
        )
    card = load_model(s.node.model, where=where)
    for tp in knobs.get("tp", []):
        if tp > gpus or gpus % tp:
            divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
            raise InputError(
                where,
                "control.knobs.tp",
                f"tp {tp} does not divide the node's {gpus} GPUs",
                f"use values from {divisors}",
            )
        try:
            card.check_tp(tp, where)
        except InputError as err:
            raise InputError(where, "control.knobs.tp", err.problem, err.fix) from None
    for replicas in knobs.get("replicas", []):
        if replicas > gpus:
            raise InputError(
                where,
                "control.knobs.replicas",
                f"{replicas} replicas exceed the node's {gpus} GPUs",
                f"use 1 to {gpus}",
            )


def _check_synthetic(s: Scenario, where: str) -> None:
    from greenrl.workload import synthetic_trace

    spec = dict(s.workload.synthetic or {})
    params = inspect.signature(synthetic_trace).parameters
    allowed = [p for p in params if p not in ("duration_s", "seed", "start_hour", "lengths_from")]
    for key in spec:
        if key not in allowed:
            raise InputError(where, f"workload.synthetic.{key}", "unknown key", f"use one of {', '.join(allowed)}")
    _positive(where, "workload.synthetic.mean_rps", spec.get("mean_rps"), "e.g. 5.0")
    for key in ("peak_to_trough", "burstiness_cv"):
        _positive(where, f"workload.synthetic.{key}", spec.get(key), "e.g. 2.0", zero_ok=True)


def _check_trace_covers(s: Scenario, where: str) -> None:
    """Read the trace (bundled ones once per process) and check every window lies within it."""
    from greenrl.workload import load_trace

    w = s.workload
    try:
        duration = load_trace(w.trace).duration_s  # a bad CSV raises naming the CSV file and its column
    except InputError as err:
        if err.field != "path":
            raise
        raise InputError(where, "workload.trace", f"{w.trace!r}: {err.problem}", err.fix) from None
    end = duration * (1 + 1e-12)
    if w.train_range_s[1] > end:
        raise InputError(
            where,
            "workload.train_range_s",
            f"ends at {w.train_range_s[1]:g} s, past the end of trace {w.trace!r} ({duration:.1f} s)",
            f"end it by {math.floor(duration)} s",
        )
    for i, (start, length) in enumerate(w.eval_windows_s):
        if start + length > end:
            raise InputError(
                where,
                f"workload.eval_windows_s[{i}]",
                f"[{start:g}, {start + length:g}) s ends past the end of trace {w.trace!r} ({duration:.1f} s)",
                f"end every window by {math.floor(duration)} s",
            )


def _check_servegen(s: Scenario, where: str) -> None:
    """The ``servegen`` spec, and every window within the category's days (the data is loaded once)."""
    from greenrl.workload.servegen import DAY_S, load_servegen

    spec = s.workload.servegen or {}
    if set(spec) != {"category", "mean_rps"}:
        raise InputError(
            where,
            "workload.servegen",
            f"needs exactly category and mean_rps, got {sorted(spec)}",
            "write servegen: {category: language/m-large, mean_rps: 2.0}",
        )
    rate = spec["mean_rps"]
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise InputError(where, "workload.servegen.mean_rps", f"must be a number, got {rate!r}", "e.g. 2.0")
    _positive(where, "workload.servegen.mean_rps", rate, "e.g. 2.0")
    try:
        data = load_servegen(str(spec["category"]))
    except InputError as err:
        raise InputError(where, "workload.servegen.category", err.problem, err.fix) from None
    t0, t1 = s.workload.train_range_s
    windows = [("train_range_s", t0, t1 - t0)]
    windows += [(f"eval_windows_s[{i}]", a, d) for i, (a, d) in enumerate(s.workload.eval_windows_s)]
    for name, start, duration in windows:
        if not (start >= 0 and duration > 0 and start + duration <= data.span_s):
            raise InputError(
                where,
                f"workload.{name}",
                f"[{start}, {start + duration}) s is outside {data.name}'s {data.span_s / DAY_S:g} days",
                f"keep it within [0, {data.span_s:g}) s (day d starts at d x {DAY_S:g} s)",
            )
