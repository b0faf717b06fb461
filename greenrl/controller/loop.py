"""The serving controller's loop: every interval observe, decide with the exported policy, apply the knobs.

``ServingController.run_interval()`` observes (``greenrl.live.observe.LiveObserver``: the interval as a
``NodeSnapshot``, observed by the env's builder), asks the policy, completes its knobs with the core
replicas rule (``fit_replicas``), holds costly knobs with the env's dwell rule (``KnobDwell``) and
applies them through a ``KnobBackend``. ``run()`` loops with an injectable sleep.

Fail-safe: when the metrics are unreachable or garbage, the GPUs fail (permission included), the server
is down or the policy's output is invalid, the controller applies the safe default configuration (top
SM clock, no prefill clock, largest ``max_num_seqs``, ``default_tp``), counts
``greenrl_fallbacks_total{reason}``, keeps looping and retries with a capped exponential backoff. While
its own restart is under way it waits (mode ``reconfiguring``) instead of falling back.

Public names: KNOB_ORDER, Observer, ServingController.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

import numpy as np

from greenrl.controller.telemetry import ControllerMetrics, DecisionLog
from greenrl.core import KnobBackend, KnobDwell, Knobs, fit_replicas, queue_guard_layout
from greenrl.errors import InputError
from greenrl.live.backends import BackendError
from greenrl.live.clock import ClockRestoreError
from greenrl.live.gpu import GpuError, GpuPermissionError
from greenrl.live.metrics import MetricsError, MetricsTimeout
from greenrl.live.observe import Observation, ObservationError
from greenrl.policy import ControllerPolicy, InvalidDecision

__all__ = ["KNOB_ORDER", "Observer", "ServingController"]

logger = logging.getLogger(__name__)

KNOB_ORDER = ("tp", "replicas", "max_num_seqs", "sm_clock_mhz", "prefill_sm_clock_mhz")
"""The knobs a controller sets, in the order they are applied and logged."""

CLOCK_RESTORE = ("sm_clock_mhz", "prefill_sm_clock_mhz")
"""Knobs put back on close: on the twin, the stand-in for resetting the clocks."""


class Observer(Protocol):
    """Where the controller's observations come from (``greenrl.live.observe.LiveObserver``)."""

    @property
    def primed(self) -> bool:
        """Whether the next ``observe`` gives an observation."""
        ...

    def observe(self, knobs: Knobs) -> Observation | None:
        """The interval since the previous call (None: only primed)."""
        ...

    def reset(self) -> None:
        """Prime again at the next ``observe``."""
        ...


class _PolicyError(RuntimeError):
    """The policy's action is not a valid action."""


def _classify(err: BaseException, stage: str = "decide") -> str:
    """The ``greenrl_fallbacks_total`` reason of a fault (``stage``: where an unknown fault happened)."""
    if isinstance(err, MetricsTimeout):
        return "metrics_timeout"
    if isinstance(err, MetricsError):
        return "server_down" if "unreachable" in str(err) else "metrics_invalid"
    if isinstance(err, ObservationError):
        return "observation_invalid"
    if isinstance(err, GpuPermissionError):
        return "gpu_permission"
    if isinstance(err, GpuError):
        return "gpu_error"
    if isinstance(err, BackendError):
        return "server_down" if err.unreachable else "apply_failed"
    if isinstance(err, ClockRestoreError):
        return "apply_failed"
    if isinstance(err, _PolicyError | InvalidDecision):
        return "policy_invalid"
    # an unexpected fault is named by its stage, never blamed on the policy
    return {"observe": "observation_invalid", "apply": "apply_failed"}.get(stage, "policy_invalid")


class ServingController:
    """Observe -> decide -> apply, once per ``run_interval()``; ``run()`` loops with an injectable sleep.

    Args:
        policy: the loaded controller.
        observer: builds observations from the server (``LiveObserver``).
        backend: applies knobs (``TwinBackend``, ``GpuBackend``).
        gpus: GPUs of the node (replicas fit them, ``fit_replicas``).
        default_tp: TP of the safe default configuration (default: the largest TP knob value).
        shadow: decide and log, never apply.
        interval_s: control interval (s).
        max_backoff_s: longest wait between retries after failures (s; default 4 x ``interval_s``).
        min_dwell_intervals: fewest intervals between two changes of each costly knob (the env's rule,
            ``KnobDwell``): a number for both TP and replicas, or per knob (a scenario's
            ``control.min_dwell_steps``).
        guard_grow_queue: with GPUs parked and at least this many requests waiting, serve on every GPU
            whatever the policy chose and the dwell (the env's rule, ``queue_guard_layout``; 0: off).
        decision_log: a text stream for one JSON line per decision, or None.
        sleep: ``sleep(seconds) -> bool``; returns True to stop early (default: waits on the stop event).
        clock: monotonic time source (s), for latencies.
        metrics: expose Prometheus series (needs ``prometheus_client``).
    """

    def __init__(
        self,
        policy: ControllerPolicy,
        observer: Observer,
        backend: KnobBackend,
        *,
        gpus: int,
        default_tp: int | None = None,
        shadow: bool = False,
        interval_s: float = 30.0,
        max_backoff_s: float | None = None,
        min_dwell_intervals: int | Mapping[str, int] = 10,
        guard_grow_queue: int = 0,
        decision_log: IO[str] | None = None,
        sleep: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        metrics: bool = True,
    ) -> None:
        self.policy, self.observer, self.backend = policy, observer, backend
        self.gpus = gpus
        self.shadow = shadow
        self.interval_s = interval_s
        self.max_backoff_s = 4.0 * interval_s if max_backoff_s is None else max_backoff_s
        steps = min_dwell_intervals
        self.dwell = KnobDwell({"tp": steps, "replicas": steps} if isinstance(steps, int) else steps)
        self.guard_grow_queue = guard_grow_queue
        self.log = DecisionLog(decision_log)
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
        self._pending_apply = True  # push the full configuration after start or a failure
        self.prom = ControllerMetrics(shadow=shadow) if metrics else None
        try:
            requested = backend.read().requested
        except Exception as err:  # the server may be down at start: fall back on the first interval
            logger.warning("cannot read the configuration in force (%s); assuming the safe default", err)
            requested = None
        if requested is not None:
            self.believe_in_force(requested)

    # ---------------------------------------------------------------------------------------- knobs

    def _complete(self, chosen: Mapping[str, int]) -> dict[str, int]:
        """The whole configuration: TP defaulted, replicas fit to the GPUs, only the policy's prefill knob."""
        out = dict(chosen)
        out.setdefault("tp", self.default_tp)
        replicas = out.get("replicas") if "replicas" in self.policy.knob_names else None
        out["replicas"] = fit_replicas(replicas, out["tp"], self.gpus)
        if "prefill_sm_clock_mhz" not in self.policy.knob_names:
            out.pop("prefill_sm_clock_mhz", None)  # a policy without the knob leaves it as it is
        return {k: int(out[k]) for k in KNOB_ORDER if k in out}

    def believe_in_force(self, knobs: Knobs) -> None:
        """Take ``knobs`` (e.g. those a server was started with) as the configuration in force."""
        self.knobs = self._complete({k: getattr(knobs, k) for k in KNOB_ORDER})

    def _dwell(self, wanted: dict[str, int]) -> tuple[dict[str, int], list[str]]:
        """Hold a costly knob until its dwell has passed since its last change; returns knobs and held names."""
        kept = self.dwell.held(self.knobs, wanted, self.interval)
        return (self._complete(wanted | kept), list(kept)) if kept else (wanted, [])

    def _guard(self, wanted: dict[str, int], waiting: float) -> tuple[dict[str, int], bool]:
        """The queue guard: every GPU serving when requests wait with GPUs parked (a new dwell starts)."""
        values = dict(zip(self.policy.knob_names, self.policy.knob_values, strict=True))
        grown = queue_guard_layout(
            Knobs(**wanted),
            waiting,
            gpus=self.gpus,
            queue_requests=self.guard_grow_queue,
            replica_values=values.get("replicas"),
        )
        if grown is None:
            return wanted, False
        self.dwell.record(("tp", "replicas"), self.interval)
        return self._complete({k: getattr(grown, k) for k in KNOB_ORDER}), True

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
        try:
            obs = self.observer.observe(Knobs(**self.knobs))
            if obs is None:
                record.update(mode="priming", overhead_us=(self.clock() - t0) * 1e6)
                self.failures = 0
                return self._finish(record)
            if obs.requested is not None:  # a failed restart rolls the layout back
                self.knobs.update(tp=obs.requested.tp, replicas=obs.requested.replicas)
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
            asked = self._complete(self.knobs | chosen)
            wanted, held = self._dwell(asked)
            wanted, guarded = self._guard(wanted, obs.values.get("waiting", 0.0))
            record.update(chosen_knobs=asked, knobs=wanted, dwell_held=held, guard=guarded)
            stage = "apply"
            self._apply(wanted, record)
            record["mode"] = "shadow" if self.shadow else "applied"
            self.failures = 0
        except Exception as err:  # every fault makes a fallback, never a crash
            if stage == "decide" and not isinstance(err, ObservationError | _PolicyError):
                err = _PolicyError(f"{type(err).__name__}: {err}")
            if stage == "observe" and _classify(err, stage) == "server_down" and self._restarting():
                # our own restart is under way: wait for it, do not fall back (nor restart again)
                self.observer.reset()
                record.update(mode="reconfiguring", knobs=dict(self.knobs), applied=[], error=str(err)[:300])
            else:
                self._fallback(err, record, reset_observer=stage == "observe", stage=stage)
        record["overhead_us"] = (self.clock() - t0) * 1e6
        return self._finish(record)

    def _restarting(self) -> bool:
        """Whether the backend says a restart is under way (False if it cannot be read)."""
        try:
            return self.backend.read().reconfiguring
        except Exception:
            return False

    def _record_obs(self, record: dict[str, Any], obs: Observation) -> None:
        record["observation"] = {k: round(v, 6) for k, v in obs.values.items()}
        record["assumed"] = list(obs.assumed)
        record["energy_j"] = obs.energy_j
        record["observed_s"] = obs.interval_s
        if self.prom is not None:
            self.prom.energy.inc(max(obs.energy_j, 0.0))
            self.prom.slo.set(obs.values["slo_attainment"])

    def _send(self, wanted: dict[str, int], changed: list[str]) -> list[str]:
        """Apply ``changed`` knobs of ``wanted``; update what is believed in force; returns those applied."""
        applied = self.backend.apply(Knobs(**wanted), changed)
        self._believe(wanted, changed, applied)
        return applied

    def _apply(self, wanted: dict[str, int], record: dict[str, Any]) -> None:
        changed = [k for k in KNOB_ORDER if k in wanted and (self._pending_apply or wanted[k] != self.knobs.get(k))]
        if self.shadow:
            record["applied"] = []
            record["would_change"] = [k for k in changed if wanted[k] != self.knobs.get(k)]
            return
        record["applied"] = self._send(wanted, changed)
        self._pending_apply = False

    def _fallback(self, err: BaseException, record: dict[str, Any], *, reset_observer: bool, stage: str) -> None:
        reason = _classify(err, stage)
        self.failures += 1
        self.fallback_counts[reason] = self.fallback_counts.get(reason, 0) + 1
        if self.prom is not None:
            self.prom.fallbacks.labels(reason=reason).inc()
        logger.warning("fallback (%s): %s", reason, err)
        record.update(mode="fallback", fallback_reason=reason, error=str(err)[:500])
        if reset_observer and reason == "server_down":
            self.observer.reset()  # the server may come back with fresh counters
        safe, held = self._dwell(self.safe)
        record.update(knobs=safe, dwell_held=held)
        if self.shadow:
            record["applied"] = []
            return
        self._pending_apply = True
        changed = [k for k in KNOB_ORDER if k in safe]
        if reason == "gpu_permission" or reason == "gpu_error":
            # the clock cannot be set: still apply the rest, never retry the clock in a tight loop;
            # prefill_sm_clock_mhz stays: its safe 0 stops the governor (one try to restore the base clock)
            changed = [k for k in changed if k != "sm_clock_mhz"]
        try:
            record["applied"] = self._send(safe, changed)
        except Exception as apply_err:  # the server is down: nothing can be applied now; retry later
            record["applied"] = []
            record["fallback_apply_error"] = str(apply_err)[:300]

    def _believe(self, wanted: dict[str, int], changed: list[str], applied: list[str]) -> None:
        """Update the knobs believed in force to ``wanted``, keeping the old belief where a change was not applied.

        A refused or held TP/replica change (``changed`` but not ``applied``) leaves the layout as it was;
        so does an SM clock lock that the GPUs' rate limit ignored, so that the next interval asks for it
        again. Other knobs missing from ``applied`` (logged "would apply") are believed.
        """
        new = dict(wanted)
        for k in ("tp", "replicas", "sm_clock_mhz"):
            if k in changed and k not in applied and k in self.knobs:
                new[k] = self.knobs[k]
        self.knobs = new

    def _finish(self, record: dict[str, Any]) -> dict[str, Any]:
        self.interval += 1
        mode = record.get("mode", "fallback")
        if mode not in ("priming", "reconfiguring"):
            self.decisions += 1
            if self.prom is not None:
                self.prom.decisions.labels(mode=mode).inc()
        if self.prom is not None:  # in force; in shadow mode, chosen (the safe default on a fallback)
            self.prom.set_knobs(record.get("knobs", self.knobs) if self.shadow else self.knobs)
        self.log.write(record)
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
            self.run_interval()
        return self.decisions - start

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler or another thread)."""
        self.stop_event.set()

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose the Prometheus series on ``host``:``port`` (0: any free port); returns the port."""
        if self.prom is None:
            raise InputError("--metrics-port", "port", "metrics are disabled", "construct with metrics=True")
        return self.prom.serve(port, host)

    def close(self) -> None:
        """Stop serving metrics and restore a safe state (reset clocks) unless in shadow mode."""
        if self.prom is not None:
            self.prom.close()
        restore = None if self.shadow else {k: v for k, v in self.safe.items() if k in CLOCK_RESTORE}
        self.backend.close(restore)
