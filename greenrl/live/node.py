"""LiveNode: the ``Node`` protocol over a running server (a real vLLM, or the digital twin).

``ServingEnv(scenario, node=LiveNode(...))`` trains, fine-tunes or evaluates on a live server with no
change to the env. Per episode, ``reset(seed)`` brings the server to the scenario's initial knobs, waits
until it is idle, and starts a ``LoadGenerator`` replaying the episode's requests (the scenario's
training window drawn from the seed, or its evaluation window); ``apply(knobs)`` hands the knobs to the
backend; ``advance(dt_s)`` waits until ``dt_s`` server seconds have passed since the previous interval's
end and builds the interval's ``NodeSnapshot`` (``greenrl.live.snapshot``, shared with the serving
controller) from ``/metrics`` differences, the energy counter difference per GPU and the front end: the
load generator's requests sent in the interval (``arrived``, ``prompt_tokens_in``) and those whose
outcome became known in it (``finished`` with every token, ``slo_met`` against the scenario's SLO,
``rejected`` = failed: an HTTP error, a cut stream, a timeout).

The backend (a ``greenrl.core.KnobBackend``, the same stack as the serving controller's) is the
server-specific part: its clock, energy counter, knobs in force and how knobs are set. The twin and a
real node are two configurations of one class: ``TwinBackend`` (the twin's HTTP API) and ``GpuBackend``
(NVML, admission proxy, launcher; ``greenrl.live.backends``).

With a scenario whose ``control.prefill_clock_ttft_s`` is set, ``LiveNode`` gives a ``GpuBackend`` that
has no predictor of its own a ``PrefillDeadline`` with that target (the deadline governor, as the
simulator's node of the same scenario runs it; ``greenrl.live.deadline``).

``prefill_clock_frac`` is the share of the interval's wall time the governor held the prefill clock (the
simulator's is a share of busy time; see docs/live_node.md); 0 on the twin, whose state does not carry it.

Public names: LiveNode, LiveNodeError; BackendReading (from ``greenrl.core``), GpuBackend, TwinBackend (from
``greenrl.live.backends``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from greenrl.core import BackendReading, KnobBackend, Knobs, NodeSnapshot
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import build_node, episode_workload
from greenrl.errors import InputError
from greenrl.live.backends import GpuBackend, TwinBackend
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.loadgen import LoadGenerator, RequestSlo
from greenrl.live.metrics import VllmMetrics, scrape
from greenrl.live.snapshot import (
    FrontEndCounts,
    Instant,
    ObservationError,
    interval_snapshot,
    read_instant,
    start_snapshot,
)
from greenrl.workload import Trace

__all__ = ["BackendReading", "GpuBackend", "LiveNode", "LiveNodeError", "TwinBackend"]

logger = logging.getLogger(__name__)


class LiveNodeError(ObservationError):
    """The live node cannot make a valid interval (clock stuck, GPU count, load generator, no settling)."""


class LiveNode:
    """A ``Node`` over a running server: wait for each interval in server time, report it.

    Args:
        scenario: scenario name, YAML path or ``Scenario``: node size, initial knobs, SLO, workload.
        backend: ``TwinBackend`` or ``GpuBackend`` (any ``greenrl.core.KnobBackend``); closed by ``close``,
            which has the twin put the initial knobs back and a real node reset its clocks.
        url: where the load generator sends completions (the server, or the admission proxy).
        metrics_url: the server's ``/metrics`` (or base) URL; default ``url``.
        split, eval_index: which of the scenario's windows an episode replays (as ``ServingEnv``'s).
        workload: the requests instead of the scenario's: a ``Trace`` or a function of a numpy
            Generator returning one per episode.
        loadgen: more ``LoadGenerator`` arguments (``max_concurrency``, ``model``, timeouts).
        settle_timeout_s: longest wait at reset for the initial knobs to be in force (wall s).
        idle_timeout_s: longest wait at reset for the server to have nothing running or waiting (wall s).
        advance_grace_s: how much longer than ``dt_s / time_scale`` an interval may take (wall s).
        scrape_timeout_s: ``/metrics`` timeout (s).
        sleep: wall-clock sleep (s), replaceable in tests.
    """

    def __init__(
        self,
        scenario: str | Scenario,
        backend: KnobBackend,
        *,
        url: str,
        metrics_url: str | None = None,
        split: str = "train",
        eval_index: int = 0,
        workload: Trace | Callable[[np.random.Generator], Trace] | None = None,
        loadgen: dict[str, Any] | None = None,
        settle_timeout_s: float = 120.0,
        idle_timeout_s: float = 60.0,
        advance_grace_s: float = 30.0,
        scrape_timeout_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.backend = backend
        self.url = url.rstrip("/")
        self.metrics_url = (metrics_url or url).rstrip("/")
        self._sim = build_node(self.scenario, split, eval_index)  # feasibility and knob checks only
        self._use_scenario_deadline()
        self.initial: Knobs = self._sim.config.initial
        self._workload = workload if workload is not None else episode_workload(self.scenario, split, eval_index)
        self.loadgen_options = dict(loadgen or {})
        self.slo = RequestSlo.from_scenario(self.scenario)
        self.settle_timeout_s, self.idle_timeout_s = settle_timeout_s, idle_timeout_s
        self.advance_grace_s, self.scrape_timeout_s = advance_grace_s, scrape_timeout_s
        self.sleep = sleep
        self.trace: Trace | None = None
        self.generator: LoadGenerator | None = None
        self._last: Instant | None = None  # the previous interval's end
        self.episode_start_s = 0.0
        self._elapsed_s = 0.0
        self._requested = self.initial
        self._reconfigs = 0
        self._sent_cursor = 0
        self._done_cursor = 0
        self._closed = False

    def _use_scenario_deadline(self) -> None:
        """Give a ``GpuBackend`` without a predictor the scenario's deadline governor (its TTFT target)."""
        target = self.scenario.control.prefill_clock_ttft_s
        backend = self.backend
        if target is None or not isinstance(backend, GpuBackend) or backend.sm_clocks.deadline is not None:
            return
        n = self.scenario.node
        backend.sm_clocks.set_deadline(PrefillDeadline(n.model, n.gpu, target, stack=n.stack))

    @classmethod
    def for_twin(cls, url: str, scenario: str | Scenario = "tiny", **kwargs: Any) -> LiveNode:
        """A node on a digital twin at ``url`` (its knobs are put back to the initial ones on ``close``)."""
        return cls(scenario, TwinBackend(url), url=url, **kwargs)

    @property
    def last_reading(self) -> BackendReading | None:
        """The backend reading at the previous interval's end (None before ``reset``)."""
        return self._last.reading if self._last is not None else None

    @property
    def last_metrics(self) -> VllmMetrics | None:
        """The ``/metrics`` scrape at the previous interval's end (None before ``reset``)."""
        return self._last.metrics if self._last is not None else None

    # ---------------------------------------------------------------------------- env hooks

    @property
    def feasible_tp(self) -> list[int]:
        """TP degrees whose weights fit on the node's GPUs (``ServingEnv`` masks the others)."""
        return self._sim.feasible_tp

    @property
    def gpu_memory_utilization(self) -> float:
        """The memory share vLLM reserves, as the feasibility checks assume it (vLLM's default)."""
        return self._sim.gpu_memory_utilization

    def finished_output_tokens(self) -> tuple[int, int]:
        """Tokens received by the requests the load generator saw finish in full since ``reset``, and how many."""
        ok = [r for r in self.generator.records() if r.status == "ok"] if self.generator is not None else []
        return sum(r.received_tokens for r in ok), len(ok)

    def check(self, knobs: Knobs, where: str = "knobs") -> None:
        """Raise ``InputError`` unless the configuration can run on this node."""
        self._sim.check(knobs, where)

    # ---------------------------------------------------------------------------- Node protocol

    def reset(self, *, seed: int | None = None) -> NodeSnapshot:
        """Stop the previous episode's load, bring the server to the initial knobs, start the episode's load."""
        self._stop_load()
        rng = np.random.default_rng(seed)
        self.trace = self._workload(rng) if callable(self._workload) else self._workload
        self.backend.apply(self.initial)
        self._requested = self.initial
        self._settle()
        start = self._read()
        gpus = len(start.reading.energy_per_gpu_j)
        if gpus != self.scenario.node.gpus:
            raise LiveNodeError(
                f"the server reports {gpus} GPUs, the scenario "
                f"{self.scenario.name} has {self.scenario.node.gpus}: start the twin with the same --scenario"
            )
        self.episode_start_s = start.reading.server_time_s
        self._elapsed_s = 0.0
        self._reconfigs = 0
        self._last = start
        options = {"seed": seed or 0, **self.loadgen_options}
        self.generator = LoadGenerator(self.url, self.trace, time_scale=self.backend.time_scale, **options)
        self.generator.start()
        if self.generator.error is not None:
            raise LiveNodeError(f"the load generator did not start: {self.generator.error}")
        self._sent_cursor = self._done_cursor = 0
        return start_snapshot(start, self.initial)

    def apply(self, knobs: Knobs) -> None:
        """Request a configuration through the backend.

        Raises:
            InputError: the configuration cannot run on this node.
        """
        self.check(knobs)
        self.backend.apply(knobs)  # also when unchanged: a backend may not have applied all of it last time
        if knobs != self._requested:
            self._reconfigs += 1
            self._requested = knobs

    def advance(self, dt_s: float) -> NodeSnapshot:
        """Wait until ``dt_s`` server seconds after the previous interval's end; report the interval.

        Raises:
            InputError: on a non-positive ``dt_s``.
            LiveNodeError: the server clock did not reach the interval's end in time.
            ObservationError: an energy counter went back (``LiveNodeError`` is one too).
            MetricsError: ``/metrics`` cannot be read.
            BackendError: the twin cannot be reached.
        """
        if self.trace is None or self._last is None:
            raise RuntimeError("call reset() before advance()")
        if not dt_s > 0:
            raise InputError("advance", "dt_s", f"must be positive, got {dt_s}", "pass the control interval in s")
        if self.generator is not None and self.generator.error is not None:
            raise LiveNodeError(f"the load generator failed: {self.generator.error}")
        self._elapsed_s += dt_s
        self._wait_server_time(self.episode_start_s + self._elapsed_s, dt_s)
        prev, self._last = self._last, self._read()
        reconfigs, self._reconfigs = self._reconfigs, 0
        return interval_snapshot(
            prev,
            self._last,
            self._front_end(self._last.mono_s, prev.reading, self._last.reading),
            origin_s=self.episode_start_s,
            knobs=self._requested,
            reconfigurations=reconfigs,
        )

    def close(self) -> None:
        """Stop the load generator (in-flight requests are cancelled) and close the backend. Idempotent.

        The backend gets the initial knobs to restore (the twin; a real node resets its clocks instead).
        """
        self._stop_load()
        if not self._closed:
            self._closed = True
            self.backend.close(dataclasses.asdict(self.initial))

    # ---------------------------------------------------------------------------- internals

    def _stop_load(self) -> None:
        if self.generator is not None:
            self.generator.stop(timeout_s=15.0)
            self.generator = None

    def _scrape(self) -> VllmMetrics:
        return scrape(self.metrics_url, timeout_s=self.scrape_timeout_s)

    def _read(self) -> Instant:
        """A backend reading and a scrape of the same server instant."""
        return read_instant(self.backend, self._scrape)

    def _settle(self) -> None:
        """Wait until the initial knobs are in force, nothing reconfigures, and the server is idle (bounded)."""
        deadline = time.monotonic() + self.settle_timeout_s
        while True:
            r = self.backend.read()
            if (r.knobs is None or r.knobs == self.initial) and not r.reconfiguring:
                break
            if time.monotonic() > deadline:
                raise LiveNodeError(
                    f"the initial knobs {self.initial} are not in force after {self.settle_timeout_s:g} s "
                    f"(now {r.knobs}, reconfiguring={r.reconfiguring})"
                )
            self.sleep(0.05)
        deadline = time.monotonic() + self.idle_timeout_s
        while True:
            m = self._scrape()
            queued = self.backend.read().queued
            if m.running + m.waiting + queued == 0:
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "the server is not idle after %.0f s (%d running, %d waiting, %d queued); starting anyway",
                    self.idle_timeout_s,
                    m.running,
                    m.waiting,
                    queued,
                )
                return
            self.sleep(0.05)

    def _wait_server_time(self, target_s: float, dt_s: float) -> None:
        scale = self.backend.time_scale
        deadline = time.monotonic() + dt_s / scale + self.advance_grace_s
        while True:
            now_s = self.backend.read().server_time_s
            if now_s >= target_s:
                return
            if time.monotonic() > deadline:
                raise LiveNodeError(
                    f"the server clock is at {now_s - self.episode_start_s:.3f} s, short of the interval end "
                    f"{target_s - self.episode_start_s:.3f} s, {self.advance_grace_s:g} s past due"
                )
            self.sleep(min((target_s - now_s) / scale + 0.002, 1.0))

    def _front_end(self, until_mono_s: float, prev: BackendReading, now: BackendReading) -> FrontEndCounts:
        """The load generator's requests sent, and those whose outcome became known, up to ``until_mono_s``.

        Above time scale 1, client wall-clock latencies times the scale are not a measurement (a busy host's
        delays are scaled up too), so where the server judges each request in its own clock (the twin's
        ``server_verdicts``) its finished and SLO-met counts are used; a real node runs at scale 1.
        """
        gen = self.generator
        if gen is None or gen.started_at_mono is None:
            return FrontEndCounts()
        cut_s = until_mono_s - gen.started_at_mono
        sent = gen.sent(self._sent_cursor)
        sent = sent[: _count_upto([s.sent_at_s for s in sent], cut_s)]
        self._sent_cursor += len(sent)
        done = gen.records(self._done_cursor)
        done = done[: _count_upto([r.finished_at_s for r in done], cut_s)]
        self._done_cursor += len(done)
        ok = [r for r in done if r.status == "ok"]
        finished, slo_met = len(ok), sum(self.slo.met(r, self.backend.time_scale) for r in ok)
        if self.backend.time_scale > 1 and prev.server_verdicts is not None and now.server_verdicts is not None:
            finished = now.server_verdicts[0] - prev.server_verdicts[0]
            slo_met = now.server_verdicts[1] - prev.server_verdicts[1]
        return FrontEndCounts(
            arrived=len(sent),
            prompt_tokens_in=sum(s.prompt_tokens for s in sent),
            finished=finished,
            slo_met=slo_met,
            rejected=sum(r.status not in ("ok", "cancelled") for r in done),
        )


def _count_upto(times_s: Sequence[float], cut_s: float) -> int:
    """How many of the leading ``times_s`` are <= ``cut_s`` (they are appended in time order).

    Example:
        >>> _count_upto([0.1, 0.5, 0.9], 0.5)
        2
    """
    n = 0
    for t in times_s:
        if t > cut_s:
            break
        n += 1
    return n
