"""LiveNode: the ``Node`` protocol over a running server (a real vLLM, or the digital twin).

``ServingEnv(scenario, node=LiveNode(...))`` trains, fine-tunes or evaluates on a live server with no
change to the env. Per episode, ``reset(seed)`` brings the server to the scenario's initial knobs, waits
until it is idle, and starts a ``LoadGenerator`` replaying the episode's requests (the scenario's
training window drawn from the seed, or its evaluation window); ``apply(knobs)`` hands the knobs to the
backend; ``advance(dt_s)`` waits until ``dt_s`` server seconds have passed since the previous interval's
end and builds the interval's ``NodeSnapshot`` from

* ``/metrics`` differences (``greenrl.live.metrics``): running, waiting, KV use, TTFT and inter-token
  histograms with their means, generated and prompt tokens, preemptions;
* the energy counter difference per GPU (NVML through a ``GpuSet``, or the twin's counter);
* the front end: the load generator's requests sent in the interval (``arrived``, ``prompt_tokens_in``)
  and those whose outcome became known in it (``finished`` with every token, ``slo_met`` against the
  scenario's SLO, ``rejected`` = failed: an HTTP error, a cut stream, a timeout).

A backend (``NodeBackend``) is the server-specific part: its clock, energy counter, knobs in force and
how knobs are set. Two are provided, so the twin and a real node are two configurations of one class:

* ``TwinBackend``: the twin's ``GET /greenrl/state`` (simulated clock, per-GPU energy, knobs in force,
  ``reconfiguring``) and ``POST /greenrl/knobs`` for every knob;
* ``GpuBackend``: wall clock, a ``GpuSet`` (NVML or ``FakeGpu``) for the energy counter and SM clock,
  an optional admission proxy (``max_num_seqs`` as a cap, its queue counted as waiting, its requests
  pending a first token driving ``prefill_sm_clock_mhz``: ``greenrl.live.clock``) and an optional
  launcher (TP / replica changes by drain and restart, in a background thread).

With a scenario whose ``control.prefill_clock_ttft_s`` is set, ``LiveNode`` gives a ``GpuBackend`` that
has no predictor of its own a ``PrefillDeadline`` with that target (the deadline governor, as the
simulator's node of the same scenario runs it; ``greenrl.live.deadline``).

``prefill_clock_frac`` is the share of the interval's wall time the governor held the prefill clock (the
simulator's is a share of busy time; see docs/live_node.md); 0 on the twin, whose state does not carry it.

Public names: BackendReading, GpuBackend, LiveNode, LiveNodeError, NodeBackend, TwinBackend.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import numpy as np

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, Knobs, NodeSnapshot
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import build_node, episode_workload
from greenrl.errors import InputError
from greenrl.live.clock import SmClockControl
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.gpu import GpuSet
from greenrl.live.loadgen import LoadGenerator, RequestSlo
from greenrl.live.metrics import VllmMetrics, diff, scrape
from greenrl.workload import Trace

if TYPE_CHECKING:
    from greenrl.live.deadline import BoostPredictor
    from greenrl.live.proxy import PendingListener

__all__ = ["BackendReading", "GpuBackend", "LiveNode", "LiveNodeError", "NodeBackend", "TwinBackend"]

logger = logging.getLogger(__name__)


class LiveNodeError(RuntimeError):
    """The live node cannot make a valid interval (clock stuck, energy counter went back, no settling)."""


@dataclass(frozen=True, slots=True)
class BackendReading:
    """What a backend reads at one instant.

    Attributes:
        server_time_s: the server's clock (s): the twin's simulated time, or wall time on a real node.
        energy_per_gpu_j: cumulative energy of each GPU (J); only differences are meaningful.
        knobs: the configuration in force now (None if the backend cannot tell).
        reconfiguring: a TP / replica change is under way.
        queued: requests held in front of the server (admission proxy), not yet seen by it.
        prefill_clock_s: cumulative server seconds at the prefill SM clock (None: the backend cannot tell).
    """

    server_time_s: float
    energy_per_gpu_j: tuple[float, ...]
    knobs: Knobs | None
    reconfiguring: bool
    queued: int = 0
    prefill_clock_s: float | None = None


class NodeBackend(Protocol):
    """The server-specific part of a ``LiveNode``.

    Attributes:
        time_scale: server seconds per wall second (the twin's ``--time-scale``; 1 for a real node).
        discrete_time: the server clock moves in steps (the twin's ticks): a reading and a ``/metrics``
            scrape belong together only if the clock did not move between them.
    """

    time_scale: float
    discrete_time: bool

    def read(self) -> BackendReading:
        """Clock, energy counters, knobs in force."""
        ...

    def apply(self, knobs: Knobs) -> None:
        """Request a configuration (costly changes may take effect later)."""
        ...

    def close(self) -> None:
        """Restore a safe state (clocks) and release what the backend holds."""
        ...


class AdmissionControl(Protocol):
    """What ``GpuBackend`` needs from an admission proxy (``greenrl.live.proxy.AdmissionProxy``)."""

    def set_cap(self, cap: int | None) -> None:
        """Most requests in flight upstream."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters; ``queued`` is the number of requests waiting in the proxy."""
        ...

    def drain(self, timeout_s: float) -> bool:
        """Hold admissions and wait until nothing is in flight upstream; True if it drained in time."""
        ...

    def resume(self) -> None:
        """Admit again."""
        ...

    def set_on_pending(self, listener: PendingListener | None, *, deadline: BoostPredictor | None = None) -> None:
        """Call ``listener(pending_first_token, boost_at_s)`` now and on every change (None: no listener).

        ``deadline`` predicts each arriving request's boost time (None: at once).
        """
        ...


class Relauncher(Protocol):
    """What ``GpuBackend`` needs from a launcher (``greenrl.live.launcher.ServerLauncher``)."""

    def restart(self, knobs: Mapping[str, int], drain: Callable[[], bool] | None = None) -> float:
        """Drain, stop and start the server at ``knobs``; returns once healthy (the outage, s)."""
        ...

    def stop(self) -> int | None:
        """Stop the server it started."""
        ...


# ---------------------------------------------------------------------------------------- backends


class TwinBackend:
    """The digital twin: clock, energy and knobs through ``/greenrl/state`` and ``/greenrl/knobs``.

    Args:
        base_url: the twin's base URL.
        restore: knobs to put back on ``close`` (the twin's stand-in for resetting clocks); None: none.
        timeout_s: HTTP timeout (s).

    Raises (from ``read`` / ``apply``):
        LiveNodeError: the twin cannot be reached, answers something else, or refuses the knobs.
    """

    discrete_time = True

    def __init__(self, base_url: str, *, restore: Knobs | None = None, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.restore = restore
        self._client = httpx.Client(timeout=timeout_s, trust_env=False)
        self.last_state: dict[str, Any] = self._state()
        self.time_scale = float(self.last_state.get("time_scale", 1.0))

    def _state(self) -> dict[str, Any]:
        url = f"{self.base_url}/greenrl/state"
        try:
            resp = self._client.get(url)
            resp.raise_for_status()
            out = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            raise LiveNodeError(f"{url}: {type(err).__name__}: {err}") from err
        if not isinstance(out, dict) or "sim_time_s" not in out or "energy_per_gpu_j" not in out:
            raise LiveNodeError(f"{url} is not a greenrl twin's state")
        return out

    def read(self) -> BackendReading:
        """One ``GET /greenrl/state``: simulated time, energy per GPU, knobs in force."""
        s = self.last_state = self._state()
        return BackendReading(
            server_time_s=float(s["sim_time_s"]),
            energy_per_gpu_j=tuple(float(e) for e in s["energy_per_gpu_j"]),
            knobs=Knobs(**s["knobs"]),
            reconfiguring=bool(s.get("reconfiguring", False)),
        )

    def apply(self, knobs: Knobs) -> None:
        """``POST /greenrl/knobs`` with every knob (the twin applies them with the simulator's delays)."""
        url = f"{self.base_url}/greenrl/knobs"
        try:
            resp = self._client.post(url, json=dataclasses.asdict(knobs))
        except httpx.HTTPError as err:
            raise LiveNodeError(f"{url}: {type(err).__name__}: {err}") from err
        if resp.status_code != 200:
            raise LiveNodeError(f"{url}: HTTP {resp.status_code}: {resp.text[:300]}")

    def close(self) -> None:
        """Put the ``restore`` knobs back (best effort) and close the HTTP client. Idempotent."""
        if self._client.is_closed:
            return
        try:
            if self.restore is not None:
                self.apply(self.restore)
        except LiveNodeError as err:
            logger.warning("could not restore the twin's knobs: %s", err)
        finally:
            self._client.close()


class GpuBackend:
    """A real node: wall clock, NVML energy and SM clock, optional admission proxy and launcher.

    ``max_num_seqs`` goes to the proxy as a cap of ``max_num_seqs x replicas`` requests in flight
    (without a proxy it is logged and not applied). A ``prefill_sm_clock_mhz`` > 0 goes to a governor fed
    by the proxy (``SmClockControl``; without a proxy: logged, not applied, reported 0), whose time at the
    prefill clock is ``prefill_clock_s``. A TP or replica change runs ``launcher.restart`` in a
    background thread (draining through the proxy when there is one, which is resumed afterwards);
    ``reconfiguring`` is true while it runs, and the new layout is reported in force once the server is
    healthy again (without a launcher the change is logged and not applied). The knobs reported in force
    are those really applied (a rate-limited clock change keeps the previous clock).

    Args:
        gpus: the node's GPUs (``open_gpus(...)``, or ``FakeGpu``s); closed (clocks reset) by ``close``.
        initial: the configuration the server was launched with (a prefill clock starts at the first apply).
        proxy: the admission proxy in front of the server, if any.
        launcher: restarts the server in a new layout, if any.
        launch_overrides: knob values the restart command gets instead of the requested ones, e.g.
            ``{"max_num_seqs": 1024}`` so that vLLM's own limit never binds below the proxy's cap.
        drain_timeout_s: longest proxy drain before a restart (s); on timeout the restart is not done.
        stop_server_on_close: ``close`` also stops the launcher's server (when this node started it).
        clock: monotonic wall clock (s).
        deadline: the deadline governor's predictor for the prefill clock, kept configured with the knobs
            in force (``SmClockControl.set_deadline`` changes it); None: the prefill clock whenever a
            request is pending (``LiveNode`` may set the scenario's).

    Attributes:
        sm_clocks: the ``SmClockControl`` (its ``governor`` while a prefill clock is applied).
    """

    time_scale = 1.0
    discrete_time = False

    def __init__(
        self,
        gpus: GpuSet,
        initial: Knobs,
        *,
        proxy: AdmissionControl | None = None,
        launcher: Relauncher | None = None,
        launch_overrides: Mapping[str, int] | None = None,
        drain_timeout_s: float = 120.0,
        stop_server_on_close: bool = False,
        clock: Callable[[], float] = time.monotonic,
        deadline: PrefillDeadline | None = None,
    ) -> None:
        self.gpus = gpus
        self.proxy = proxy
        self.launcher = launcher
        self.launch_overrides = dict(launch_overrides or {})
        self.drain_timeout_s = drain_timeout_s
        self.stop_server_on_close = stop_server_on_close
        self.clock = clock
        self._knobs = dataclasses.replace(initial, prefill_sm_clock_mhz=0)  # no governor runs yet
        self.sm_clocks = SmClockControl(gpus, proxy, hint=" (pass GpuBackend a proxy)", deadline=deadline)
        self._restart: threading.Thread | None = None
        self.restart_error: BaseException | None = None
        if proxy is not None:
            proxy.set_cap(initial.max_num_seqs * initial.replicas)

    def read(self) -> BackendReading:
        """Wall time, each GPU's energy counter, the knobs applied, the proxy's queue."""
        queued = int(self.proxy.stats().get("queued", 0)) if self.proxy is not None else 0
        return BackendReading(
            server_time_s=self.clock(),
            energy_per_gpu_j=tuple(g.energy_j() for g in self.gpus),
            knobs=self._knobs,
            reconfiguring=self.restarting,
            queued=queued,
            prefill_clock_s=self.sm_clocks.prefill_s,
        )

    @property
    def restarting(self) -> bool:
        """Whether a restart is under way."""
        return self._restart is not None and self._restart.is_alive()

    def apply(self, knobs: Knobs) -> None:
        """Set the SM clocks, the proxy's cap, start a restart for a new layout (see the class doc).

        Raises:
            GpuError: NVML refused the clock (``GpuPermissionError``: root / CAP_SYS_ADMIN needed), here or
                in the prefill-clock governor since the last call.
            ClockRestoreError: the governor did not put the base clock back in time (at the last call).
        """
        current, clock = self._knobs, self.sm_clocks
        changed = [k for k in ("sm_clock_mhz", "prefill_sm_clock_mhz") if getattr(knobs, k) != getattr(current, k)]
        self._set_layout()
        clock.apply(knobs.sm_clock_mhz, knobs.prefill_sm_clock_mhz, changed)
        base, prefill = clock.sm_clock_mhz, clock.prefill_sm_clock_mhz  # in force (base None: never locked)
        base = current.sm_clock_mhz if base is None else base
        self._knobs = dataclasses.replace(self._knobs, sm_clock_mhz=base, prefill_sm_clock_mhz=prefill)
        if (knobs.tp, knobs.replicas) != (current.tp, current.replicas):
            self._start_restart(knobs)
        if knobs.max_num_seqs != current.max_num_seqs or knobs.replicas != current.replicas:
            if self.proxy is None:
                logger.info("max_num_seqs=%d not applied: no admission proxy", knobs.max_num_seqs)
            else:
                self.proxy.set_cap(knobs.max_num_seqs * knobs.replicas)
                self._knobs = dataclasses.replace(self._knobs, max_num_seqs=knobs.max_num_seqs)

    def _start_restart(self, knobs: Knobs) -> None:
        launcher, proxy = self.launcher, self.proxy
        if launcher is None:
            logger.info("tp=%d replicas=%d not applied: no launcher", knobs.tp, knobs.replicas)
            return
        if self.restarting:
            logger.warning("a restart is under way; tp=%d replicas=%d ignored", knobs.tp, knobs.replicas)
            return
        launch = {**dataclasses.asdict(knobs), **self.launch_overrides}
        timeout_s = self.drain_timeout_s

        def restart() -> None:
            try:
                launcher.restart(launch, drain=(lambda: proxy.drain(timeout_s)) if proxy is not None else None)
                self._knobs = dataclasses.replace(self._knobs, tp=knobs.tp, replicas=knobs.replicas)
                self._set_layout()
                self.restart_error = None
            except Exception as err:  # reported through restart_error and the log; the node keeps serving
                self.restart_error = err
                logger.exception("restart to tp=%d replicas=%d failed", knobs.tp, knobs.replicas)
            finally:
                if proxy is not None:
                    proxy.resume()

        self._restart = threading.Thread(target=restart, name="greenrl-restart", daemon=True)
        self._restart.start()

    def _set_layout(self) -> None:
        """The layout the server runs (and its launch-time batch budget), for the deadline's predictions."""
        k = self._knobs
        self.sm_clocks.set_layout(k.tp, k.replicas, k.max_num_batched_tokens)

    def close(self) -> None:
        """Wait (bounded) for a restart, stop the clock governor, reset the clocks; stop the server if owned."""
        if self._restart is not None:
            self._restart.join(timeout=600.0)
        self.sm_clocks.close()
        self.gpus.close(raise_errors=False)
        if self.stop_server_on_close and self.launcher is not None:
            self.launcher.stop()


# ---------------------------------------------------------------------------------------- the node


class LiveNode:
    """A ``Node`` over a running server: wait for each interval in server time, report it.

    Args:
        scenario: scenario name, YAML path or ``Scenario``: node size, initial knobs, SLO, workload.
        backend: ``TwinBackend`` or ``GpuBackend`` (or any ``NodeBackend``).
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
        backend: NodeBackend,
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
        self.last_reading: BackendReading | None = None
        self.last_metrics: VllmMetrics | None = None
        self.last_boundary_mono = 0.0
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
        backend = TwinBackend(url)
        node = cls(scenario, backend, url=url, **kwargs)
        backend.restore = node.initial
        return node

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
        reading, metrics, mono = self._read()
        if len(reading.energy_per_gpu_j) != self.scenario.node.gpus:
            raise LiveNodeError(
                f"the server reports {len(reading.energy_per_gpu_j)} GPUs, the scenario "
                f"{self.scenario.name} has {self.scenario.node.gpus}: start the twin with the same --scenario"
            )
        self.episode_start_s = reading.server_time_s
        self._elapsed_s = 0.0
        self._reconfigs = 0
        self._mark(reading, metrics, mono)
        options = {"seed": seed or 0, **self.loadgen_options}
        self.generator = LoadGenerator(self.url, self.trace, time_scale=self.backend.time_scale, **options)
        self.generator.start()
        if self.generator.error is not None:
            raise LiveNodeError(f"the load generator did not start: {self.generator.error}")
        self._sent_cursor = self._done_cursor = 0
        zeros_ttft, zeros_itl = np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1), np.zeros(len(VLLM_ITL_BUCKETS_S) + 1)
        return NodeSnapshot(
            t_start_s=0.0,
            t_end_s=0.0,
            energy_j=0.0,
            energy_per_gpu_j=tuple(0.0 for _ in reading.energy_per_gpu_j),
            mean_power_w=0.0,
            arrived=0,
            prompt_tokens_in=0,
            output_tokens=0,
            prefill_tokens=0,
            finished=0,
            slo_met=0,
            rejected=0,
            preemptions=0,
            iterations=0,
            waiting=int(metrics.waiting) + reading.queued,
            running=int(metrics.running),
            kv_cache_usage_frac=float(metrics.kv_cache_usage_frac),
            ttft_mean_s=0.0,
            tbt_mean_s=0.0,
            ttft_hist=zeros_ttft,
            itl_hist=zeros_itl,
            knobs=reading.knobs or self.initial,
            reconfiguring=reading.reconfiguring,
            reconfigurations=0,
        )

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
            LiveNodeError: the server clock did not reach the interval's end in time, or an energy counter
                went back.
            MetricsError: ``/metrics`` cannot be read.
        """
        if self.trace is None or self.last_reading is None or self.last_metrics is None:
            raise RuntimeError("call reset() before advance()")
        if not dt_s > 0:
            raise InputError("advance", "dt_s", f"must be positive, got {dt_s}", "pass the control interval in s")
        if self.generator is not None and self.generator.error is not None:
            raise LiveNodeError(f"the load generator failed: {self.generator.error}")
        self._elapsed_s += dt_s
        self._wait_server_time(self.episode_start_s + self._elapsed_s, dt_s)
        prev_r, prev_m, prev_mono = self.last_reading, self.last_metrics, self.last_boundary_mono
        reading, metrics, mono = self._read()
        self._mark(reading, metrics, mono)
        return self._snapshot(prev_r, prev_m, prev_mono, reading, metrics, mono)

    def close(self) -> None:
        """Stop the load generator (in-flight requests are cancelled) and close the backend. Idempotent."""
        self._stop_load()
        if not self._closed:
            self._closed = True
            self.backend.close()

    # ---------------------------------------------------------------------------- internals

    def _stop_load(self) -> None:
        if self.generator is not None:
            self.generator.stop(timeout_s=15.0)
            self.generator = None

    def _scrape(self) -> VllmMetrics:
        return scrape(self.metrics_url, timeout_s=self.scrape_timeout_s)

    def _read(self) -> tuple[BackendReading, VllmMetrics, float]:
        """A reading, a scrape of the same server instant and the wall time (monotonic s) between them.

        With a stepped clock (the twin) the reading is taken again after the scrape and the pair retried
        (3 tries) until the clock did not move in between; otherwise the scrape may be one tick off the
        reading, which moves that tick's counts to the neighbouring interval (totals are unaffected).
        """
        for attempt in range(3):
            reading = self.backend.read()
            mono = time.monotonic()
            metrics = self._scrape()
            if not self.backend.discrete_time:
                return reading, metrics, mono
            again = self.backend.read()
            if again.server_time_s == reading.server_time_s or attempt == 2:
                return again, metrics, mono
        raise AssertionError("unreachable")

    def _mark(self, reading: BackendReading, metrics: VllmMetrics, mono: float) -> None:
        self.last_reading, self.last_metrics, self.last_boundary_mono = reading, metrics, mono

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

    def _front_end(self, until_mono: float) -> tuple[int, int, int, int, int]:
        """Arrived, prompt tokens, finished, SLO met and failed of the load generator up to ``until_mono``."""
        gen = self.generator
        if gen is None or gen.started_at_mono is None:
            return 0, 0, 0, 0, 0
        cut_s = until_mono - gen.started_at_mono
        sent = gen.sent(self._sent_cursor)
        sent = sent[: _count_upto([s.sent_at_s for s in sent], cut_s)]
        self._sent_cursor += len(sent)
        done = gen.records(self._done_cursor)
        done = done[: _count_upto([r.finished_at_s for r in done], cut_s)]
        self._done_cursor += len(done)
        ok = [r for r in done if r.status == "ok"]
        met = sum(self.slo.met(r, self.backend.time_scale) for r in ok)
        failed = sum(r.status not in ("ok", "cancelled") for r in done)
        return len(sent), sum(s.prompt_tokens for s in sent), len(ok), met, failed

    def _snapshot(
        self,
        prev_r: BackendReading,
        prev_m: VllmMetrics,
        prev_mono: float,
        reading: BackendReading,
        metrics: VllmMetrics,
        mono: float,
    ) -> NodeSnapshot:
        span_s = reading.server_time_s - prev_r.server_time_s
        energy = np.subtract(reading.energy_per_gpu_j, prev_r.energy_per_gpu_j)
        if np.any(energy < -1e-6):
            raise LiveNodeError(f"an energy counter went back by {-energy.min():.1f} J (GPU reset?)")
        energy = np.maximum(energy, 0.0)
        d = diff(prev_m, metrics)
        arrived, prompt_in, finished, met, failed = self._front_end(mono)
        first_tokens, gaps = d.ttft_count, d.itl_count
        reconfigs, self._reconfigs = self._reconfigs, 0
        return NodeSnapshot(
            t_start_s=prev_r.server_time_s - self.episode_start_s,
            t_end_s=reading.server_time_s - self.episode_start_s,
            energy_j=float(energy.sum()),
            energy_per_gpu_j=tuple(float(e) for e in energy),
            mean_power_w=float(energy.sum()) / span_s if span_s > 0 else 0.0,
            arrived=arrived,
            prompt_tokens_in=prompt_in,
            output_tokens=_count(d.generation_tokens),
            prefill_tokens=_count(d.prompt_tokens),
            finished=finished,
            slo_met=met,
            rejected=failed,
            preemptions=_count(d.preemptions),
            iterations=0,  # vLLM's iteration count is not read (vllm:iteration_tokens_total is not parsed)
            waiting=_count(d.waiting) + reading.queued,
            running=_count(d.running),
            kv_cache_usage_frac=float(d.kv_cache_usage_frac),
            ttft_mean_s=d.ttft_sum_s / first_tokens if first_tokens else 0.0,
            tbt_mean_s=d.itl_sum_s / gaps if gaps else 0.0,
            ttft_hist=d.ttft_hist.copy(),
            itl_hist=d.itl_hist.copy(),
            knobs=reading.knobs or self._requested,
            reconfiguring=reading.reconfiguring,
            reconfigurations=reconfigs,
            prefill_clock_frac=_share(prev_r.prefill_clock_s, reading.prefill_clock_s, span_s),
        )


def _count(value: float) -> int:
    return int(round(value)) if math.isfinite(value) else 0


def _share(before_s: float | None, after_s: float | None, span_s: float) -> float:
    """The share of ``span_s`` a cumulative time grew by, in [0, 1]; 0 if unknown."""
    if before_s is None or after_s is None or span_s <= 0:
        return 0.0
    return min(max((after_s - before_s) / span_s, 0.0), 1.0)


def _count_upto(times_s: Sequence[float], cut_s: float) -> int:
    """How many of the leading ``times_s`` are <= ``cut_s`` (they are appended in time order)."""
    n = 0
    for t in times_s:
        if t > cut_s:
            break
        n += 1
    return n
