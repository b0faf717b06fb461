"""The serving controller: every interval, observe a live server, ask an exported policy, set the knobs.

``python -m greenrl.controller --checkpoint checkpoints/default/maskable_ppo_s0 --vllm-url URL --twin``
drives the digital twin (knobs through ``POST /greenrl/knobs``, energy from ``GET /greenrl/state``);
without ``--twin`` it drives a vLLM node (``greenrl.live.appliers.ServerApplier``): the SM clock through
NVML (``GpuSet.lock_all``); ``max_num_seqs`` as the cap of the admission proxy (``--proxy-port``,
``greenrl.live.proxy``), which clients then send to and which also counts arrivals and SLO outcomes; and
a TP change as a drained restart of a server the controller started itself (``--launch``,
``greenrl.live.launcher``). A policy with a ``prefill_sm_clock_mhz`` knob gets a phase-aware clock
(``greenrl.live.governor``) driven by the proxy's count of requests pending their first token; with the
TTFT target the policy was trained with (``prefill_clock.ttft_target_s`` in controller.json, or
``--prefill-clock-ttft-s``) only once a pending request would, at the base clock, miss it
(``greenrl.live.deadline``, the simulator's deadline governor). Without
the proxy ``max_num_seqs`` and ``prefill_sm_clock_mhz`` are logged as "would apply"; without
``--launch`` a TP change is refused and logged. ``--shadow`` decides and logs but changes nothing.

Fail-safe: when the metrics are unreachable or garbage, the GPUs fail (permission included), the server
is down or the policy's output is invalid, the controller applies the safe default configuration (top
SM clock, no prefill clock, largest ``max_num_seqs``, ``--default-tp``), counts
``greenrl_fallbacks_total{reason}``, keeps looping and retries with a capped exponential backoff. While
its own restart is under way it waits (mode ``reconfiguring``) instead of falling back. It never rejects
or drops a client request: the proxy only delays admissions and holds them over a restart. See
``docs/controller.md``.

Public names: FALLBACK_REASONS, KnobApplier, NvmlApplier, ServerApplier, ServingController, TwinApplier,
build_controller, main (the appliers live in ``greenrl.live.appliers``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np

from greenrl.errors import InputError, exit_on_input_error
from greenrl.live.appliers import KNOB_ORDER, ApplyError, KnobApplier, NvmlApplier, ServerApplier, TwinApplier
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.gpu import GpuError, GpuPermissionError
from greenrl.live.launcher import DEFAULT_COMMAND, LaunchError, ServerLauncher
from greenrl.live.metrics import MetricsError
from greenrl.live.observe import LiveObserver, Observation, ObservationError, TwinGpu
from greenrl.live.proxy import AdmissionProxy
from greenrl.policy import ControllerPolicy
from greenrl.slo import SloJudge

__all__ = [
    "FALLBACK_REASONS",
    "KnobApplier",
    "NvmlApplier",
    "ServerApplier",
    "ServingController",
    "TwinApplier",
    "build_controller",
    "main",
]

logger = logging.getLogger(__name__)

FALLBACK_REASONS: dict[str, str] = {
    "server_down": "the server's /metrics (or the twin's state) cannot be reached",
    "metrics_invalid": "/metrics answered an error or text that is not vLLM's metrics",
    "observation_invalid": "a needed series is missing, or the observation is not finite",
    "gpu_permission": "NVML refused a clock change: it needs root / CAP_SYS_ADMIN",
    "gpu_error": "a GPU/NVML call failed",
    "apply_failed": "the server refused or did not answer a knob change",
    "policy_invalid": "the policy's action has the wrong shape or is out of range",
}
"""Values of the ``reason`` label of ``greenrl_fallbacks_total``, and what each means."""

PREFILL_CLOCK_MIN_INTERVAL_S = 0.05
"""Default GPU clock rate limit for a policy with a prefill clock: the simulator's ``clock_latency_s``."""


def _classify(err: BaseException) -> str:
    if isinstance(err, MetricsError):
        return "server_down" if "unreachable" in str(err) else "metrics_invalid"
    if isinstance(err, ObservationError):
        return "observation_invalid"
    if isinstance(err, GpuPermissionError):
        return "gpu_permission"
    if isinstance(err, GpuError):
        return "server_down" if err.operation == "twin_state" else "gpu_error"
    if isinstance(err, ApplyError):
        return "server_down" if "unreachable" in str(err) else "apply_failed"
    return "policy_invalid"


class _PolicyError(RuntimeError):
    """The policy's action is not a valid action."""


class _Metrics:
    """The controller's Prometheus series, on a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("greenrl_decisions", "Controller decisions, by mode.", ["mode"], registry=r)
        self.fallbacks = Counter(
            "greenrl_fallbacks", "Fallbacks to the safe default, by reason.", ["reason"], registry=r
        )
        self.knob = Gauge("greenrl_knob_value", "Knob value the controller last set or chose.", ["knob"], registry=r)
        self.energy = Counter("greenrl_energy_joules", "GPU energy observed by the controller (J).", registry=r)
        self.latency = Histogram(
            "greenrl_decision_latency_seconds",
            "Time to compute one decision (policy forward pass), s.",
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1),
            registry=r,
        )
        self.slo = Gauge("greenrl_slo_attainment", "Observed SLO attainment (1.0 without a front end).", registry=r)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)


class ServingController:
    """Observe -> decide -> apply, once per ``run_interval()``; ``run()`` loops with an injectable sleep.

    Args:
        policy: the loaded controller.
        observer: builds observations from the server.
        applier: applies knobs (``TwinApplier``, ``NvmlApplier``).
        gpus: GPUs of the node (replicas = gpus // tp when ``replicas`` is not a knob).
        default_tp: TP of the safe default configuration (default: the largest TP knob value).
        shadow: decide and log, never apply.
        interval_s: control interval (s).
        max_backoff_s: longest wait between retries after failures (s; default 4 x ``interval_s``).
        min_dwell_intervals: fewest intervals between two TP (or replica) changes.
        decision_log: a text stream for one JSON line per decision, or None.
        sleep: ``sleep(seconds) -> bool``; returns True to stop early (default: waits on the stop event).
        clock: monotonic time source (s), for latencies.
        metrics: expose Prometheus series (needs ``prometheus_client``).
    """

    def __init__(
        self,
        policy: ControllerPolicy,
        observer: LiveObserver,
        applier: KnobApplier,
        *,
        gpus: int,
        default_tp: int | None = None,
        shadow: bool = False,
        interval_s: float = 30.0,
        max_backoff_s: float | None = None,
        min_dwell_intervals: int = 10,
        decision_log: IO[str] | None = None,
        sleep: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        metrics: bool = True,
    ) -> None:
        self.policy, self.observer, self.applier = policy, observer, applier
        self.gpus = gpus
        self.shadow = shadow
        self.interval_s = interval_s
        self.max_backoff_s = 4.0 * interval_s if max_backoff_s is None else max_backoff_s
        self.min_dwell_intervals = min_dwell_intervals
        self.decision_log = decision_log
        self.clock = clock
        self.stop_event = threading.Event()
        self._sleep = sleep if sleep is not None else self.stop_event.wait
        values = dict(zip(policy.knob_names, policy.knob_values, strict=True))
        tps = values.get("tp", [gpus])
        self.default_tp = max(tps) if default_tp is None else default_tp
        if self.default_tp < 1 or gpus % self.default_tp:
            raise InputError("--default-tp", "tp", f"{self.default_tp} does not divide {gpus} GPUs", "use 1, 2, 4, 8")
        safe = {
            "tp": self.default_tp,
            "max_num_seqs": max(values.get("max_num_seqs", [256])),
            "sm_clock_mhz": max(values.get("sm_clock_mhz", [0])),
        }
        if "prefill_sm_clock_mhz" in values:
            safe["prefill_sm_clock_mhz"] = 0  # no phase-aware governor: the top clock always
        self.safe = self._complete(safe)
        self.knobs: dict[str, int] = dict(self.safe)  # believed in force
        self.interval = 0
        self.failures = 0  # consecutive
        self.fallback_counts: dict[str, int] = {}
        self.decisions = 0
        self._last_tp_change = -(10**9)
        self._pending_apply = True  # push the full configuration after start or a failure
        self.prom = _Metrics() if metrics else None
        self._http: Any = None
        try:
            current = applier.current()
        except Exception as err:  # the server may be down at start: fall back on the first interval
            logger.warning("cannot read the configuration in force (%s); assuming the safe default", err)
            current = None
        if current is not None:
            self.knobs = self._complete(current)

    # ---------------------------------------------------------------------------------------- knobs

    def _complete(self, chosen: dict[str, int]) -> dict[str, int]:
        out = dict(chosen)
        out.setdefault("tp", self.default_tp)
        if "replicas" not in self.policy.knob_names or "replicas" not in out:
            out["replicas"] = self.gpus // out["tp"]
        out["replicas"] = max(1, min(out["replicas"], self.gpus // out["tp"]))
        if "prefill_sm_clock_mhz" not in self.policy.knob_names:
            out.pop("prefill_sm_clock_mhz", None)  # a policy without the knob leaves it as it is
        return {k: int(out[k]) for k in KNOB_ORDER if k in out}

    def _dwell(self, wanted: dict[str, int]) -> tuple[dict[str, int], list[str]]:
        """Hold TP and replicas for ``min_dwell_intervals`` after a change; returns knobs and held names."""
        held: list[str] = []
        out = dict(wanted)
        dwelling = self.interval - self._last_tp_change < self.min_dwell_intervals
        for name in ("tp", "replicas"):
            if dwelling and name in out and name in self.knobs and out[name] != self.knobs[name]:
                out[name] = self.knobs[name]
                held.append(name)
        if "tp" in held:
            out = self._complete({k: v for k, v in out.items() if k != "replicas"} | {"tp": self.knobs["tp"]})
        return out, held

    def _check_action(self, action: Any) -> dict[str, int]:
        arr = np.asarray(action)
        if arr.shape != (len(self.policy.nvec),) or not np.issubdtype(arr.dtype, np.integer):
            raise _PolicyError(f"action {arr.tolist()!r} has shape {arr.shape}, expected ({len(self.policy.nvec)},)")
        if np.any(arr < 0) or np.any(arr >= np.asarray(self.policy.nvec)):
            raise _PolicyError(f"action {arr.tolist()} is out of range {self.policy.nvec}")
        return self.policy.knobs(arr)

    # -------------------------------------------------------------------------------------- one step

    def run_interval(self) -> dict[str, Any]:
        """Observe, decide and apply once; returns the decision record (also written to the log).

        Never raises for server, GPU or policy faults: those make a fallback to the safe default.
        """
        t0 = self.clock()
        record: dict[str, Any] = {"time_s": time.time(), "interval": self.interval, "shadow": self.shadow}
        stage = "observe"
        self._sync_layout()
        restarting = False
        try:
            reconfiguring = self.applier.reconfiguring()
            restarting = reconfiguring and isinstance(self.applier, ServerApplier)
            obs = self.observer.observe(self.knobs, reconfiguring)
            if obs is None:
                record.update(mode="priming", overhead_us=(self.clock() - t0) * 1e6)
                self.failures = 0
                return self._finish(record)
            self._record_obs(record, obs)
            stage = "decide"
            vec = obs.vector
            if vec.shape != (len(self.policy.observation_names),) or not np.all(np.isfinite(vec)):
                raise ObservationError(f"observation {vec.tolist()} is not finite or has the wrong shape")
            t_dec = self.clock()
            action, _ = self.policy.predict(vec, deterministic=True)
            chosen = self._check_action(action)
            latency_s = self.clock() - t_dec
            record.update(action=np.asarray(action).tolist(), decision_latency_us=latency_s * 1e6)
            if self.prom is not None:
                self.prom.latency.observe(latency_s)
            wanted, held = self._dwell(self._complete(self.knobs | chosen))
            record.update(chosen_knobs=self._complete(self.knobs | chosen), knobs=wanted, dwell_held=held)
            stage = "apply"
            self._apply(wanted, record)
            record["mode"] = "shadow" if self.shadow else "applied"
            self.failures = 0
        except Exception as err:  # every fault makes a fallback, never a crash
            if stage == "decide" and not isinstance(err, ObservationError | _PolicyError):
                err = _PolicyError(f"{type(err).__name__}: {err}")
            if stage == "observe" and restarting and _classify(err) == "server_down":
                # our own restart is under way: wait for it, do not fall back (nor restart again)
                self.observer.reset()
                record.update(mode="reconfiguring", knobs=dict(self.knobs), applied=[], error=str(err)[:300])
            else:
                self._fallback(err, record)
        record["overhead_us"] = (self.clock() - t0) * 1e6
        return self._finish(record)

    def _record_obs(self, record: dict[str, Any], obs: Observation) -> None:
        record["observation"] = {k: round(v, 6) for k, v in obs.values.items()}
        record["assumed"] = list(obs.assumed)
        record["energy_j"] = obs.energy_j
        record["observed_s"] = obs.interval_s
        if self.prom is not None:
            self.prom.energy.inc(max(obs.energy_j, 0.0))
            self.prom.slo.set(obs.values["slo_attainment"])

    def _apply(self, wanted: dict[str, int], record: dict[str, Any]) -> None:
        changed = [k for k in KNOB_ORDER if k in wanted and (self._pending_apply or wanted[k] != self.knobs.get(k))]
        if self.shadow:
            record["applied"] = []
            record["would_change"] = [k for k in changed if wanted[k] != self.knobs.get(k)]
            return
        applied = self.applier.apply(wanted, changed)
        self._believe(wanted, changed, applied)
        self._pending_apply = False
        record["applied"] = applied
        if self.prom is not None:
            for k, v in self.knobs.items():
                self.prom.knob.labels(knob=k).set(v)

    def _fallback(self, err: BaseException, record: dict[str, Any]) -> None:
        reason = _classify(err)
        self.failures += 1
        self.fallback_counts[reason] = self.fallback_counts.get(reason, 0) + 1
        if self.prom is not None:
            self.prom.fallbacks.labels(reason=reason).inc()
        logger.warning("fallback (%s): %s", reason, err)
        record.update(mode="fallback", fallback_reason=reason, error=str(err)[:500])
        if isinstance(err, MetricsError | GpuError) and reason == "server_down":
            self.observer.reset()  # the server may come back with fresh counters
        safe, held = self._dwell(self.safe)
        record.update(knobs=safe, dwell_held=held)
        if self.shadow:
            record["applied"] = []
            return
        self._pending_apply = True
        changed = [k for k in KNOB_ORDER if k in safe]
        try:
            if reason == "gpu_permission" or reason == "gpu_error":
                # the clock cannot be set: still apply the rest, never retry the clock in a tight loop;
                # prefill_sm_clock_mhz stays: its safe 0 stops the governor (one try to restore the base clock)
                changed = [k for k in changed if k != "sm_clock_mhz"]
            record["applied"] = self.applier.apply(safe, changed)
            self._believe(safe, changed, record["applied"])
        except Exception as apply_err:  # the server is down: nothing can be applied now; retry later
            record["applied"] = []
            record["fallback_apply_error"] = str(apply_err)[:300]

    def _believe(self, wanted: dict[str, int], changed: list[str], applied: list[str]) -> None:
        """Update the knobs believed in force to ``wanted``, keeping the old belief where a change was not applied.

        A refused TP/replica change (``changed`` but not ``applied``) leaves the layout as it was; so does an
        SM clock lock that the GPUs' rate limit ignored (a ``ServerApplier`` with GPUs), so that the next
        interval asks for it again. Other knobs missing from ``applied`` (logged "would apply") are believed.
        """
        new = dict(wanted)
        kept = ["tp", "replicas"]
        # only a ServerApplier with GPUs leaves out a clock it was asked for: when their rate limit ignored it
        if isinstance(self.applier, ServerApplier) and self.applier.gpus is not None:
            kept.append("sm_clock_mhz")
        for k in kept:
            if k in changed and k not in applied and k in self.knobs:
                new[k] = self.knobs[k]
        if new.get("tp") != self.knobs.get("tp") or new.get("replicas") != self.knobs.get("replicas"):
            self._last_tp_change = self.interval
        self.knobs = new
        self._sync_layout()

    def _sync_layout(self) -> None:
        """Take TP and replicas from a ``ServerApplier`` that owns the server (a failed restart rolls back)."""
        if isinstance(self.applier, ServerApplier):
            layout = self.applier.layout()
            if layout is not None:
                self.knobs.update(layout)

    def _finish(self, record: dict[str, Any]) -> dict[str, Any]:
        self.interval += 1
        mode = record.get("mode", "fallback")
        if mode not in ("priming", "reconfiguring"):
            self.decisions += 1
            if self.prom is not None:
                self.prom.decisions.labels(mode=mode).inc()
        if self.decision_log is not None:
            self.decision_log.write(json.dumps(record, default=float) + "\n")
            self.decision_log.flush()
        return record

    # -------------------------------------------------------------------------------------- the loop

    def next_wait_s(self) -> float:
        """Wait before the next interval: ``interval_s``, or a capped exponential backoff after failures."""
        if self.failures == 0:
            return self.interval_s
        return float(min(self.interval_s * 2.0 ** (self.failures - 1), max(self.max_backoff_s, self.interval_s)))

    def run(self, max_intervals: int | None = None) -> int:
        """Loop until ``stop()`` or ``max_intervals`` decisions (priming not counted); returns decisions made."""
        start = self.decisions
        first = True
        while not self.stop_event.is_set():
            if max_intervals is not None and self.decisions - start >= max_intervals:
                break
            if (not first or self.observer.primed) and self._sleep(self.next_wait_s()):
                break
            first = False
            record = self.run_interval()
            if record.get("mode") == "priming":
                continue
        return self.decisions - start

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler or another thread)."""
        self.stop_event.set()

    def serve_metrics(self, port: int) -> int:
        """Expose the Prometheus series on 127.0.0.1:``port`` (0: any free port); returns the port."""
        if self.prom is None:
            raise InputError("--metrics-port", "port", "metrics are disabled", "construct with metrics=True")
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.prom.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving metrics and restore a safe state (reset clocks) unless in shadow mode."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.applier.close(None if self.shadow else self.safe)


# -------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.controller", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="exported controller folder (controller.json + policy.npz)")
    p.add_argument("--vllm-url", default=None, help="the server's base URL (default with --launch: its own)")
    p.add_argument("--interval-s", type=float, default=30.0, help="control interval (s; default 30)")
    p.add_argument("--shadow", action="store_true", help="decide and log, never change a knob")
    p.add_argument("--gpus", default=None, help="NVML indices '0,1,...' or 'fake' (default: all; unused with --twin)")
    p.add_argument(
        "--clock-min-interval-s",
        type=float,
        default=None,
        help="fewest seconds between two SM clock changes of a GPU (default: 0.05 for a policy with a "
        "prefill_sm_clock_mhz knob, as the simulator assumes; else 1.0)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on 127.0.0.1:N (0: off)")
    p.add_argument("--decision-log", default=None, help="JSON-lines decision log (default: none; '-': stdout)")
    p.add_argument("--max-intervals", type=int, default=None, help="stop after N decisions (default: run forever)")
    p.add_argument("--twin", action="store_true", help="the server is greenrl's twin: knobs and energy over HTTP")
    p.add_argument("--default-tp", type=int, default=None, help="TP of the safe default (default: largest TP knob)")
    p.add_argument("--scenario", default=None, help="scenario for GPU count, TDP and SLOs (default: the manifest's)")
    p.add_argument("--min-dwell-intervals", type=int, default=10, help="fewest intervals between TP changes")
    p.add_argument("--max-backoff-s", type=float, default=None, help="longest retry wait (default: 4 x interval)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="HTTP timeout (s; default 5)")
    g = p.add_argument_group("real node: admission proxy and launcher (not with --twin)")
    g.add_argument("--proxy-port", type=int, default=None, help="run the admission proxy on 127.0.0.1:N (0: free)")
    g.add_argument("--launch", action="store_true", help="start and own the server (needed for TP changes)")
    g.add_argument("--launch-command", default=DEFAULT_COMMAND, help="server command template (default: vllm serve)")
    g.add_argument("--model", default=None, help="{model} of the launch command (Hugging Face id or path)")
    g.add_argument("--server-port", type=int, default=None, help="{port} of the launched server (default: 8000)")
    g.add_argument("--server-log", default=None, help="file for the launched server's output (default: temp dir)")
    g.add_argument("--launch-timeout-s", type=float, default=900.0, help="longest server start-up (s; 900)")
    g.add_argument("--drain-timeout-s", type=float, default=120.0, help="longest drain before a restart (s; 120)")
    g.add_argument(
        "--prefill-clock-ttft-s",
        default=None,
        help="TTFT target of the prefill clock governor (s), or 'none' for the prefill clock whenever a "
        "request is pending (default: the policy's prefill_clock.ttft_target_s)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return p


def _prefill_target(policy: ControllerPolicy, flag: str | None) -> float | None:
    """The deadline governor's TTFT target: ``--prefill-clock-ttft-s``, else the policy's (None: off)."""
    if flag is None:
        return policy.prefill_clock_ttft_s
    if flag.strip().lower() == "none":
        return None
    try:
        target = float(flag)
    except ValueError:
        target = math.nan
    if not (math.isfinite(target) and target >= 0):
        raise InputError(
            "--prefill-clock-ttft-s", "ttft_target_s", f"{flag!r} is not a time >= 0 s", "e.g. 0.2 or none"
        )
    return target


def _parse_gpus(spec: str | None) -> tuple[list[int] | None, str]:
    if spec is None:
        return None, "nvml"
    if spec == "fake":
        return None, "fake"
    try:
        return [int(x) for x in spec.split(",") if x.strip()], "nvml"
    except ValueError:
        raise InputError("--gpus", "gpus", f"{spec!r} is not a list of indices", "e.g. 0,1 or fake") from None


def build_controller(
    args: argparse.Namespace, decision_log: IO[str] | None, sleep: Callable[[float], bool] | None = None
) -> ServingController:
    """The controller the CLI's arguments describe (``sleep``: see ``ServingController``)."""
    from greenrl.catalog import load_gpu
    from greenrl.env.scenario import load_scenario
    from greenrl.live.gpu import DEFAULT_MIN_INTERVAL_S, open_gpus
    from greenrl.policy import load_controller

    if not args.interval_s > 0 or not math.isfinite(args.interval_s):
        raise InputError("--interval-s", "interval_s", f"{args.interval_s} is not > 0", "e.g. 30")
    if args.max_intervals is not None and args.max_intervals < 1:
        raise InputError("--max-intervals", "max_intervals", f"{args.max_intervals} < 1", "give N >= 1")
    if not 0 <= args.metrics_port <= 65535:
        raise InputError("--metrics-port", "port", f"{args.metrics_port} out of range", "use 0 (off) to 65535")
    base = _server_url(args)
    folder = Path(args.checkpoint)
    if not folder.is_dir():
        raise InputError("--checkpoint", "checkpoint", f"{folder} is not a folder", "give an exported controller")
    policy = load_controller(folder)
    target = _prefill_target(policy, args.prefill_clock_ttft_s)
    scenario = load_scenario(args.scenario or policy.manifest["scenario"])
    gpu = load_gpu(scenario.node.gpu)
    applier: KnobApplier
    proxy: AdmissionProxy | None = None
    extra: dict[str, Callable[[], float]] = {}
    if args.twin:
        twin = TwinGpu(base, timeout_s=args.timeout_s)
        energy: Any = twin
        applier = TwinApplier(twin, timeout_s=args.timeout_s)
        start_hour = scenario.workload.start_hour

        def sim_time_s() -> float:  # the twin's simulated clock, read with the energy counter
            return float((twin.last_state or {}).get("sim_time_s", 0.0))

        def hour() -> float:  # the twin's simulated time of day
            return (start_hour + sim_time_s() / 3600.0) % 24.0

        # rates and power are per simulated second: the twin runs --time-scale times faster than the wall
        extra = {"clock": sim_time_s, "hour_of_day": hour}

    else:
        indices, backend = _parse_gpus(args.gpus)
        launcher = None
        if args.launch:
            port = int(base.rsplit(":", 1)[1])
            launcher = ServerLauncher(
                args.launch_command,
                model=args.model or "",
                port=port,
                gpus=indices,
                log_path=args.server_log,
                health_timeout_s=args.launch_timeout_s,
                drain_timeout_s=args.drain_timeout_s,
            )
        if args.proxy_port is not None:
            slo = SloJudge.from_scenario(scenario)  # the SLO the policy was trained on
            proxy = AdmissionProxy(base, port=args.proxy_port, slo=slo, connect_timeout_s=args.timeout_s)
        min_interval_s = args.clock_min_interval_s
        if min_interval_s is None:
            # a phase-aware policy was trained with 50 ms clock switches; a plain one changes the clock per interval
            phase_aware = "prefill_sm_clock_mhz" in policy.knob_names
            min_interval_s = PREFILL_CLOCK_MIN_INTERVAL_S if phase_aware else DEFAULT_MIN_INTERVAL_S
        if not (math.isfinite(min_interval_s) and min_interval_s >= 0):
            raise InputError("--clock-min-interval-s", "min_interval_s", f"{min_interval_s} is not >= 0", "e.g. 0.05")
        gpu_set = open_gpus(indices, backend, min_interval_s=min_interval_s)  # type: ignore[arg-type]
        gpu_set.install_sigterm_handler()
        energy = gpu_set
        values = dict(zip(policy.knob_names, policy.knob_values, strict=True))
        deadline = None
        if target is not None and proxy is not None and "prefill_sm_clock_mhz" in policy.knob_names:
            n = scenario.node
            deadline = PrefillDeadline(n.model, n.gpu, target, stack=n.stack)
            logger.info("prefill clock: the deadline governor, TTFT target %.3f s", target)
        applier = ServerApplier(
            gpu_set,
            proxy=proxy,
            launcher=launcher,
            drain_timeout_s=args.drain_timeout_s,
            launch_max_num_seqs=max(values.get("max_num_seqs", [256])),
            deadline=deadline,
        )
    observer = LiveObserver(
        base,
        energy,
        gpus=scenario.node.gpus,
        tdp_w=gpu.tdp_w,
        max_sm_clock_mhz=gpu.max_sm_clock_mhz,
        ttft_floor_s=scenario.slo.ttft_floor_s,
        tbt_slo_s=scenario.slo.tbt_mean_s,
        timeout_s=args.timeout_s,
        front_end=proxy,
        **extra,
    )
    controller = ServingController(
        policy,
        observer,
        applier,
        gpus=scenario.node.gpus,
        default_tp=args.default_tp,
        shadow=args.shadow,
        interval_s=args.interval_s,
        max_backoff_s=args.max_backoff_s,
        min_dwell_intervals=args.min_dwell_intervals,
        decision_log=decision_log,
        sleep=sleep,
    )
    if isinstance(applier, ServerApplier):
        _start_server_side(controller, applier)
    return controller


def _server_url(args: argparse.Namespace) -> str:
    """The server's base URL from ``--vllm-url`` / ``--server-port``; checks the flags that go together."""
    if args.twin and (args.launch or args.proxy_port is not None):
        raise InputError(
            "--twin",
            "twin",
            "--launch and --proxy-port drive a real server's process and admissions",
            "to rehearse them on the twin, leave out --twin and give --gpus fake and a twin --launch-command",
        )
    for flag, port in (("--proxy-port", args.proxy_port), ("--server-port", args.server_port)):
        if port is not None and not 0 <= port <= 65535:
            raise InputError(flag, "port", f"{port} is out of range", "use 0 to 65535")
    if args.vllm_url is None:
        if not args.launch:
            raise InputError("--vllm-url", "url", "is required without --launch", "e.g. http://127.0.0.1:8000")
        return f"http://127.0.0.1:{args.server_port or 8000}"
    if not args.vllm_url.startswith(("http://", "https://")):
        raise InputError("--vllm-url", "url", f"{args.vllm_url!r} is not an http(s) URL", "http://127.0.0.1:8000")
    base = args.vllm_url.rstrip("/")
    if args.launch:
        parsed = urllib.parse.urlsplit(base)
        if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.path:
            raise InputError("--vllm-url", "url", f"{base} is not a local server", "leave it out with --launch")
        port = args.server_port or parsed.port or 8000
        base = f"http://127.0.0.1:{port}"
    return base


def _start_server_side(controller: ServingController, applier: ServerApplier) -> None:
    """Start the proxy, then the owned server at the safe default; undo both if the server fails."""
    try:
        if applier.proxy is not None:
            applier.proxy.set_cap(controller.safe["max_num_seqs"] * controller.safe["replicas"])
            logger.info("admission proxy: send requests to %s", applier.proxy.start())
        if applier.owns_server:
            applier.start(controller.safe)
            controller.knobs = controller._complete(applier.current() or controller.safe)
        else:
            applier.assume_layout(controller.safe)  # the server runs at --default-tp; it cannot change
    except LaunchError as err:
        applier.close(None)
        raise InputError("--launch-command", "command", f"the server did not start: {err}", "fix the command") from None
    except BaseException:
        applier.close(None)
        raise


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the controller until SIGTERM / SIGINT or ``--max-intervals`` decisions."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log: IO[str] | None = None
    if args.decision_log == "-":
        log = sys.stdout
    elif args.decision_log:
        path = Path(args.decision_log)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = path.open("a")
    try:
        controller = build_controller(args, log)
        applier = controller.applier
        if isinstance(applier, ServerApplier):
            if applier.proxy is None:
                logger.warning("no admission proxy (--proxy-port): max_num_seqs changes are only logged")
            if not applier.owns_server:
                logger.warning("the server is not owned (--launch): TP changes are refused and logged")

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: stopping", signum)
            controller.stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            if args.metrics_port:
                port = controller.serve_metrics(args.metrics_port)
                logger.info("metrics on http://127.0.0.1:%d/metrics", port)
            mode = "shadow" if args.shadow else "live"
            logger.info("controlling %s every %.1f s (%s mode)", args.vllm_url, args.interval_s, mode)
            made = controller.run(args.max_intervals)
            logger.info("stopped after %d decisions; fallbacks: %s", made, controller.fallback_counts or "none")
        finally:
            controller.close()
    finally:
        if log is not None and log is not sys.stdout:
            log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
