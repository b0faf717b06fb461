"""LiveNode: ServingEnv driving the digital twin, the controller's LiveObserver seeing the same interval as the
env, the real-node backend (FakeGpus, admission proxy, a stub launcher) and its prefill clock."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenrl.catalog import load_gpu
from greenrl.core import Knobs, NodeSnapshot
from greenrl.env.observation import OBS_FIELDS, ObservationBuilder
from greenrl.env.scenario import Scenario, load_scenario
from greenrl.env.serving_env import ServingEnv
from greenrl.live.backends import ServerLayout
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.gpu import FakeGpu, GpuError, GpuSet
from greenrl.live.launcher import DrainTimeoutError, LaunchError
from greenrl.live.node import BackendReading, GpuBackend, LiveNode, TwinBackend
from greenrl.live.observe import LiveObserver
from greenrl.live.proxy import AdmissionProxy
from greenrl.workload import Trace

ROOT = Path(__file__).resolve().parents[1]
TIME_SCALE = 10.0  # the tiny scenario's 10 s interval is 1 wall s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5.0) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def _workload(rng: np.random.Generator) -> Trace:
    """40 requests in the first 24 s (of three 10 s intervals): nothing arrives near the last boundary."""
    n = 40
    arrivals = np.sort(rng.uniform(0.5, 24.0, n))
    return Trace("test", arrivals, rng.integers(50, 1500, n), rng.integers(10, 80, n), 30.0)


def _recording(node: LiveNode) -> list[tuple[NodeSnapshot, dict[str, Any]]]:
    """Wrap ``node.advance`` to keep each snapshot with the twin's raw state read at its end."""
    out: list[tuple[NodeSnapshot, dict[str, Any]]] = []
    advance = node.advance

    def recorded(dt_s: float) -> NodeSnapshot:
        snap = advance(dt_s)
        out.append((snap, dict(node.backend.last_state)))  # type: ignore[attr-defined]
        return snap

    node.advance = recorded  # type: ignore[method-assign]
    return out


# ------------------------------------------------------------------------------------------ ServingEnv on the twin


def test_env_episode_on_the_twin(twin: str) -> None:
    node = LiveNode.for_twin(twin, "tiny", workload=_workload, loadgen={"max_concurrency": 64})
    env = ServingEnv("tiny", node=node)
    snaps = _recording(node)
    try:
        obs, info = env.reset(seed=7)
        start = dict(node.backend.last_state)  # type: ignore[attr-defined]
        assert obs.shape == (len(OBS_FIELDS),) and info["knobs"] == node.initial
        slow = env.action_for(dataclasses.replace(node.initial, sm_clock_mhz=1005))
        actions = [env.action_for(node.initial), slow, slow]
        for a in actions:
            obs, reward, terminated, truncated, info = env.step(a)
            assert env.observation_space.contains(obs) and np.isfinite(reward) and not terminated
            assert set(info["reward_terms"]) == {"energy", "slo", "reconfig"}
        gen = node.generator
        assert gen is not None
        sent = gen.sent()
    finally:
        env.close()
    prev, prev_end_s = start, 0.0
    for k, (snap, state) in enumerate(snaps, start=1):
        span = snap.t_end_s - snap.t_start_s
        # intervals end on the 10 s grid of simulated time (no drift), late by however long the machine stalled
        # times TIME_SCALE (a 0.3 s stall of a loaded CI machine is 3 simulated s), and follow each other
        assert 0.0 <= snap.t_end_s - 10.0 * k < 5.0
        assert snap.t_start_s == prev_end_s if k > 1 else 0.0 <= snap.t_start_s < 5.0
        prev_end_s = snap.t_end_s
        # the energy is the twin's counter difference over exactly that simulated span
        assert snap.energy_j == pytest.approx(state["energy_j"] - prev["energy_j"], rel=1e-9, abs=1e-6)
        assert state["sim_time_s"] - prev["sim_time_s"] == pytest.approx(span)
        assert sum(snap.energy_per_gpu_j) == pytest.approx(snap.energy_j) and len(snap.energy_per_gpu_j) == 2
        assert snap.mean_power_w * span == pytest.approx(snap.energy_j)
        assert 2 * 50.0 < snap.mean_power_w < 2 * 700.0  # between idle-ish and two TDPs
        # front end vs the twin's own arrival counter (boundaries may shift a request by one tick)
        assert abs(snap.arrived - (state["requests"]["arrived"] - prev["requests"]["arrived"])) <= 3
        assert snap.finished + snap.rejected <= snap.arrived + 40 and snap.slo_met <= snap.finished
        assert snap.rejected == 0
        # above time scale 1 the outcomes are the twin's own verdicts, in simulated time (not client wall time x 10)
        assert snap.finished == state["finished_total"] - prev["finished_total"]
        assert snap.slo_met == state["slo_met_total"] - prev["slo_met_total"]
        prev = state
    total_arrived = sum(s.arrived for s, _ in snaps)
    assert total_arrived == len(sent) == 40  # every request sent was counted in exactly one interval
    assert total_arrived == snaps[-1][1]["requests"]["arrived"] - start["requests"]["arrived"]
    assert sum(s.prompt_tokens_in for s, _ in snaps) == sum(r.prompt_tokens for r in sent)
    assert sum(s.prefill_tokens for s, _ in snaps) == sum(r.prompt_tokens for r in sent)  # the twin's counter
    assert [s.knobs.sm_clock_mhz for s, _ in snaps] == [1980, 1005, 1005]
    assert [s.reconfigurations for s, _ in snaps] == [0, 1, 0]
    assert sum(s.finished for s, _ in snaps) >= 30  # most requests are done well within the 30 s
    assert gen.done  # close() stopped the load generator
    state = _get_json(f"{twin}/greenrl/state")
    assert state["requested_knobs"]["sm_clock_mhz"] == 1980  # close() put the initial knobs back


class _SameInstant:
    """The controller's view of a ``LiveNode``'s interval ends: its backend readings and its scrapes.

    As a knob backend it returns the node's last reading; ``scrape`` returns its last scrape; as a front end
    its counters are the node's snapshots summed (arrivals, prompt tokens, SLO met / missed).
    """

    time_scale = 1.0
    discrete_time = False

    def __init__(self, node: LiveNode) -> None:
        self.node = node
        self.counts = {"arrived": 0, "prompt_tokens": 0, "slo_met": 0, "missed": 0, "slo_judged": True}

    def read(self) -> Any:
        return self.node.last_reading

    def scrape(self, url: str, timeout_s: float = 5.0) -> Any:
        return self.node.last_metrics

    def count(self, snap: NodeSnapshot) -> None:
        c = self.counts
        c["arrived"] += snap.arrived
        c["prompt_tokens"] += snap.prompt_tokens_in
        c["slo_met"] += snap.slo_met
        c["missed"] += snap.finished - snap.slo_met

    def stats(self) -> dict[str, Any]:
        return dict(self.counts)


def test_the_controller_observes_an_interval_as_the_env_does(twin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fed a LiveNode's readings, scrapes and front-end counts, the controller's LiveObserver builds the same
    NodeSnapshot as the node, and the same observation vector as the env (every field)."""
    node = LiveNode.for_twin(twin, "tiny", workload=_workload, loadgen={"max_concurrency": 64})
    env = ServingEnv("tiny", node=node)
    s = env.scenario
    same = _SameInstant(node)
    monkeypatch.setattr("greenrl.live.observe.scrape", same.scrape)
    hours = [s.workload.start_hour]  # the hour of day at t = 0: the episode's start

    def hour_at(server_time_s: float) -> float:
        return hours[0] + (server_time_s - node.episode_start_s) / 3600.0

    builder = ObservationBuilder.for_scenario(s, load_gpu(s.node.gpu))  # as the controller's wiring builds it
    observer = LiveObserver(twin, same, builder, front_end=same, hour_at=hour_at)
    snaps = _recording(node)
    try:
        _, info = env.reset(seed=11)
        assert observer.observe(info["knobs"]) is None  # primes on the reset reading
        for _ in range(3):
            obs, _, _, _, info = env.step(env.action_for(node.initial))
            snap = snaps[-1][0]
            same.count(snap)  # the front end saw what the load generator saw
            o = observer.observe(info["knobs"])
            assert o is not None and o.assumed == ()
            ours = dataclasses.asdict(o.snapshot)
            for name, value in dataclasses.asdict(snap).items():
                if name in ("rejected", "reconfigurations"):
                    continue  # the proxy counts failures as missed; knob changes are the env's to count
                if isinstance(value, np.ndarray | tuple | float):
                    np.testing.assert_allclose(ours[name], value, rtol=1e-12, atol=1e-9, err_msg=name)
                else:
                    assert ours[name] == value, name
            np.testing.assert_allclose(o.vector, obs, rtol=1e-6, atol=1e-6)  # every field
            # same snapshot in, same vector out: the controller's builder on the env's snapshot
            raw = o.values["arrival_rate_prev_rps"]
            np.testing.assert_allclose(observer.builder.vector(observer.builder.raw(snap, raw)), obs, atol=1e-6)
            assert o.values["output_tokens_per_s"] > 0 and o.values["power_frac"] > 0
    finally:
        env.close()
    assert sum(sn.arrived for sn, _ in snaps) == 40


# ------------------------------------------------------------------------------------------ real-node backend


class StubLauncher:
    """Records restarts; each drains through the given callable and takes ``restart_s`` wall seconds."""

    owned = True

    def __init__(self, restart_s: float) -> None:
        self.restart_s = restart_s
        self.calls: list[dict[str, int]] = []
        self.drained: list[bool] = []
        self.stopped = False

    def alive(self) -> bool:
        return not self.stopped

    def start(self, knobs: Mapping[str, int]) -> float:
        self.stopped = False
        return 0.0

    def restart(self, knobs: Mapping[str, int], drain: Any = None) -> float:
        self.calls.append(dict(knobs))
        self.drained.append(bool(drain()) if drain is not None else True)
        time.sleep(self.restart_s)
        return self.restart_s

    def stop(self) -> int | None:
        self.stopped = True
        return 0

    def close(self) -> None:
        self.stop()


def test_gpu_backend_with_proxy_and_launcher(twin: str) -> None:
    """The real-node configuration on loopback: FakeGpus for energy and clocks, the admission proxy in front
    of the twin (its cap is max_num_seqs x replicas, its queue counts as waiting), a stub launcher for TP."""
    gpus = [FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)]
    initial = Knobs(tp=2, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)
    proxy = AdmissionProxy(twin)
    url = proxy.start()
    launcher = StubLauncher(restart_s=0.3)
    backend = GpuBackend(GpuSet(gpus), initial, proxy=proxy, launcher=launcher, launch_overrides={"max_num_seqs": 1024})
    assert proxy.cap == 256

    def workload(rng: np.random.Generator) -> Trace:  # wall time: 12 requests in the first 0.3 s
        return Trace("burst", np.linspace(0.0, 0.3, 12), np.full(12, 64), np.full(12, 400), 1.0)

    node = LiveNode("tiny", backend, url=url, metrics_url=twin, workload=workload, loadgen={"max_concurrency": 32})
    try:
        node.reset(seed=0)
        node.apply(dataclasses.replace(initial, max_num_seqs=2, sm_clock_mhz=1395))
        assert proxy.cap == 2 and [g.locked_sm_clock_mhz for g in gpus] == [1395, 1395]
        for g in gpus:
            g.add_energy_j(100.0)
        snap = node.advance(0.5)
        assert snap.energy_j == pytest.approx(200.0) and snap.energy_per_gpu_j == (100.0, 100.0)
        assert snap.knobs.sm_clock_mhz == 1395 and snap.knobs.max_num_seqs == 2
        assert snap.arrived == 12 and snap.reconfigurations == 1
        assert node.last_reading is not None and node.last_metrics is not None
        queued = node.last_reading.queued  # 12 sent, 2 at a time upstream: the rest wait in the proxy
        assert queued >= 1 and snap.waiting == int(node.last_metrics.waiting) + queued
        proxy.set_cap(None)  # let the burst through (as a larger max_num_seqs would)
        node.apply(dataclasses.replace(initial, tp=1, replicas=2, max_num_seqs=256, sm_clock_mhz=1395))
        assert backend.read().reconfiguring
        deadline = time.monotonic() + 20.0
        while backend.restarting and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = node.advance(0.5)
        assert (snap.knobs.tp, snap.knobs.replicas) == (1, 2) and not snap.reconfiguring
        assert launcher.calls[0]["tp"] == 1 and launcher.calls[0]["max_num_seqs"] == 1024 and launcher.drained == [True]
        assert not proxy.paused  # resumed after the restart
        assert proxy.cap == 512  # max_num_seqs x replicas
    finally:
        node.close()
        proxy.stop()
    assert all(("reset", None) in g.calls for g in gpus)  # close() reset the clocks
    assert not launcher.stopped  # not asked to stop a server it does not own
    assert not any(t.name == "greenrl-loadgen" and t.is_alive() for t in threading.enumerate())


class _FailingLauncher(StubLauncher):
    """A restart that fails: by a drain timeout (the server untouched) or a start error (the server down)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(restart_s=0.0)
        self.error = error
        self.starts: list[dict[str, int]] = []

    def restart(self, knobs: Mapping[str, int], drain: Any = None) -> float:
        self.calls.append(dict(knobs))
        self.stopped = isinstance(self.error, LaunchError) and not isinstance(self.error, DrainTimeoutError)
        raise self.error

    def start(self, knobs: Mapping[str, int]) -> float:
        self.starts.append(dict(knobs))
        return super().start(knobs)


@pytest.mark.parametrize("error", [LaunchError("no health"), DrainTimeoutError("still busy")])
def test_a_failed_restart_keeps_or_restores_the_layout(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    launcher = _FailingLauncher(error)
    layout = ServerLayout(launcher, None)
    initial = Knobs(tp=2, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)
    layout.assume(initial)
    assert layout.apply(dataclasses.replace(initial, tp=1, replicas=2), asked=True)
    _wait(lambda: not layout.restarting)
    assert layout.knobs == initial and layout.layout() == (2, 1) and layout.last_error == str(error)
    rolled_back = [] if isinstance(error, DrainTimeoutError) else [dataclasses.asdict(initial)]
    assert launcher.starts == rolled_back and layout.restarts == 0
    refused = ServerLayout(None, None, hint=" (give it a launcher)")
    refused.assume(initial)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert not refused.apply(dataclasses.replace(initial, tp=1, replicas=2), asked=True)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(said) == 1 and said[0].endswith("(give it a launcher)") and refused.layout() == (2, 1)


# ------------------------------------------------------------------------------------------ the prefill clock

BASE, PREFILL = 1005, 1980
PREFILL_KNOBS = Knobs(tp=2, replicas=1, max_num_seqs=8, sm_clock_mhz=BASE, prefill_sm_clock_mhz=PREFILL)


def _wait(pred: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _stream(url: str) -> threading.Thread:
    """One streamed completion through ``url`` in a thread (it awaits the gated upstream's first token)."""

    def run() -> None:
        body = json.dumps({"prompt": "a", "max_tokens": 3, "stream": True}).encode()
        req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20.0) as r:
            r.read()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _locked(gpus: list[FakeGpu], mhz: int) -> bool:
    return all(g.locked_sm_clock_mhz == mhz for g in gpus)


def test_gpu_backend_locks_the_prefill_clock_until_the_first_token(gated_upstream: Any) -> None:
    gpus = [FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)]
    proxy = AdmissionProxy(gated_upstream.url)
    proxy.start()
    backend = GpuBackend(GpuSet(gpus), dataclasses.replace(PREFILL_KNOBS, prefill_sm_clock_mhz=0), proxy=proxy)
    try:
        backend.apply(PREFILL_KNOBS)
        r = backend.read()
        assert r.knobs == PREFILL_KNOBS and r.prefill_clock_s == 0.0
        _wait(lambda: _locked(gpus, BASE))  # idle: the base clock, by the governor
        client = _stream(proxy.url)
        _wait(lambda: _locked(gpus, PREFILL))  # a request awaits its first token
        time.sleep(0.2)
        assert _locked(gpus, PREFILL) and gated_upstream.posts == 1
        gated_upstream.finish.clear()
        gated_upstream.release.set()  # the first token; the stream then holds
        _wait(lambda: _locked(gpus, BASE))
        assert proxy.stats()["in_flight"] == 1  # the base clock while the request decodes
        gated_upstream.finish.set()
        client.join(timeout=10.0)
        assert all(g.calls == [("lock", BASE), ("lock", PREFILL), ("lock", BASE)] for g in gpus)
        held_s = backend.read().prefill_clock_s
        assert held_s is not None and 0.2 <= held_s < 5.0
        # back to 0: the governor stops, the time held stays counted, the knob is reported 0
        backend.apply(dataclasses.replace(PREFILL_KNOBS, prefill_sm_clock_mhz=0))
        r = backend.read()
        assert backend.sm_clocks.governor is None and r.knobs is not None
        assert r.knobs.prefill_sm_clock_mhz == 0 and r.knobs.sm_clock_mhz == BASE
        assert r.prefill_clock_s == pytest.approx(held_s, abs=0.05) and len(gpus[0].calls) == 3
        backend.apply(dataclasses.replace(PREFILL_KNOBS, prefill_sm_clock_mhz=0, sm_clock_mhz=1395))
        assert _locked(gpus, 1395) and gpus[0].calls[-1] == ("lock", 1395)  # locked directly, at once
    finally:
        backend.close()
        proxy.stop()


def test_gpu_backend_without_a_proxy_reports_no_prefill_clock(caplog: pytest.LogCaptureFixture) -> None:
    gpu = FakeGpu(0, min_interval_s=0.0)
    backend = GpuBackend(GpuSet([gpu]), dataclasses.replace(PREFILL_KNOBS, sm_clock_mhz=1395, prefill_sm_clock_mhz=0))
    try:
        with caplog.at_level(logging.WARNING, logger="greenrl.live.clock"):
            backend.apply(PREFILL_KNOBS)
            backend.apply(PREFILL_KNOBS)
        r = backend.read()
        assert r.knobs == dataclasses.replace(PREFILL_KNOBS, prefill_sm_clock_mhz=0) and r.prefill_clock_s == 0.0
        assert gpu.calls == [("lock", BASE)] and backend.sm_clocks.governor is None  # the base clock, directly
        said = [rec.getMessage() for rec in caplog.records if "prefill_sm_clock_mhz" in rec.getMessage()]
        assert said == [f"would apply prefill_sm_clock_mhz={PREFILL}: no admission proxy (pass GpuBackend a proxy)"]
    finally:
        backend.close()
    assert gpu.calls[-1] == ("reset", None)


def test_gpu_backend_close_stops_the_governor_and_resets_the_clocks(gated_upstream: Any) -> None:
    gpus = [FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)]
    proxy = AdmissionProxy(gated_upstream.url)
    proxy.start()
    backend = GpuBackend(GpuSet(gpus), PREFILL_KNOBS, proxy=proxy)
    try:
        backend.apply(PREFILL_KNOBS)
        governor = backend.sm_clocks.governor
        assert governor is not None
        client = _stream(proxy.url)
        _wait(lambda: _locked(gpus, PREFILL))
        backend.close()  # while the request still awaits its first token
        assert backend.sm_clocks.governor is None and not governor._thread.is_alive()
        assert all(g.calls[-1] == ("reset", None) and g.locked_sm_clock_mhz is None for g in gpus)
        gated_upstream.release.set()
        client.join(timeout=10.0)
        assert all(g.calls[-1] == ("reset", None) for g in gpus)  # nothing locked after close
        assert proxy._on_pending is None  # the proxy (the caller's) no longer feeds the governor
    finally:
        backend.close()
        proxy.stop()


def test_gpu_backend_raises_a_governor_fault_at_the_next_apply(gated_upstream: Any) -> None:
    gpu = FakeGpu(0, min_interval_s=0.0)
    proxy = AdmissionProxy(gated_upstream.url)
    proxy.start()
    backend = GpuBackend(GpuSet([gpu]), PREFILL_KNOBS, proxy=proxy)
    try:
        backend.apply(PREFILL_KNOBS)
        _wait(lambda: gpu.locked_sm_clock_mhz == BASE)
        gpu.fail("lock", GpuError(0, "lock_sm_clock", "fell off the bus", "reboot"))
        client = _stream(proxy.url)
        governor = backend.sm_clocks.governor
        assert governor is not None
        _wait(lambda: governor.failures >= 1)
        with pytest.raises(GpuError, match="fell off the bus"):
            backend.apply(PREFILL_KNOBS)  # unchanged knobs: the fault still surfaces
        gated_upstream.release.set()
        client.join(timeout=10.0)
    finally:
        backend.close()
        proxy.stop()


class _PrefillTwinBackend(TwinBackend):
    """The twin's backend, claiming a quarter of server time at the prefill clock."""

    def read(self) -> BackendReading:
        r = super().read()
        return dataclasses.replace(r, prefill_clock_s=0.25 * r.server_time_s)


def test_live_node_reports_the_share_of_time_at_the_prefill_clock(twin: str) -> None:
    backend = _PrefillTwinBackend(twin)
    node = LiveNode("tiny", backend, url=twin, workload=_workload, loadgen={"max_concurrency": 64})
    try:
        assert node.reset(seed=3).prefill_clock_frac == 0.0
        snap = node.advance(10.0)
        assert snap.prefill_clock_frac == pytest.approx(0.25)
    finally:
        node.close()
    plain = TwinBackend(twin)
    node = LiveNode("tiny", plain, url=twin, workload=_workload)
    try:
        node.reset(seed=3)
        assert node.advance(10.0).prefill_clock_frac == 0.0  # a backend that cannot tell: 0
    finally:
        node.close()


# ------------------------------------------------------------------------------------------ the deadline governor


def _with_target(target_s: float | None) -> Scenario:
    """The tiny scenario with the deadline governor's TTFT target (None: without one)."""
    s = load_scenario("tiny")
    return dataclasses.replace(s, control=dataclasses.replace(s.control, prefill_clock_ttft_s=target_s))


def test_live_node_gives_a_gpu_backend_the_scenarios_deadline(gated_upstream: Any) -> None:
    proxy = AdmissionProxy(gated_upstream.url)
    proxy.start()
    initial = dataclasses.replace(PREFILL_KNOBS, prefill_sm_clock_mhz=0)
    backend = GpuBackend(GpuSet([FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)]), initial, proxy=proxy)
    try:
        LiveNode(_with_target(0.3), backend, url=proxy.url)
        deadline = backend.sm_clocks.deadline
        assert deadline is not None and deadline.ttft_target_s == 0.3 and deadline.model == "llama-3.1-8b"
        backend.apply(PREFILL_KNOBS)
        assert proxy._deadline is deadline  # handed to the proxy with the governor
        assert deadline.serving == {"tp": 2, "replicas": 1, "base_clock_mhz": BASE, "max_num_batched_tokens": 8192}
        backend.apply(dataclasses.replace(PREFILL_KNOBS, sm_clock_mhz=1395))
        assert deadline.serving is not None and deadline.serving["base_clock_mhz"] == 1395  # kept current
        own = PrefillDeadline("llama-3.1-8b", "h100-sxm-80gb", 0.1)
        backend.sm_clocks.set_deadline(own)
        LiveNode(_with_target(0.3), backend, url=proxy.url)
        assert backend.sm_clocks.deadline is own and proxy._deadline is own  # a backend's own one stays
    finally:
        backend.close()
        proxy.stop()
    plain = GpuBackend(GpuSet([FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)]), initial)
    try:
        LiveNode(_with_target(None), plain, url=gated_upstream.url)
        assert plain.sm_clocks.deadline is None  # no target: the prefill clock whenever a request is pending
    finally:
        plain.close()


def test_the_deadline_governor_on_the_twin(twin: str) -> None:
    """End to end on loopback: FakeGpus, the proxy in front of the twin, the scenario's deadline."""
    gpus = [FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)]
    proxy = AdmissionProxy(twin)
    url = proxy.start()
    backend = GpuBackend(GpuSet(gpus), dataclasses.replace(PREFILL_KNOBS, max_num_seqs=256), proxy=proxy)
    # a generous target: the twin serves a first token in milliseconds of wall time
    LiveNode(_with_target(2.0), backend, url=url, metrics_url=twin)
    deadline = backend.sm_clocks.deadline
    assert deadline is not None

    def send(n: int, max_tokens: int) -> None:
        body = {"prompt": list(range(1, 65)), "max_tokens": max_tokens, "stream": True}
        statuses: list[int] = []

        def one() -> None:
            req = urllib.request.Request(
                f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30.0) as r:
                r.read()
                statuses.append(r.status)

        threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30.0)
        assert statuses == [200] * n

    try:
        backend.apply(dataclasses.replace(PREFILL_KNOBS, max_num_seqs=256))
        governor = backend.sm_clocks.governor
        assert governor is not None
        _wait(lambda: _locked(gpus, BASE))
        backend.sm_clocks.set_deadline(None)  # first without a deadline: every request raises the clock
        for _ in range(2):
            send(1, 10)
        _wait(lambda: _locked(gpus, BASE))
        assert governor.boosts >= 1
        boosts = governor.boosts
        backend.sm_clocks.set_deadline(deadline)
        for _ in range(3):
            send(1, 10)  # one at a time: each first token comes well within the target at the base clock
        assert governor.boosts == boosts and _locked(gpus, BASE)
        backend.apply(dataclasses.replace(PREFILL_KNOBS, max_num_seqs=1))  # a cap of one: the others must wait
        send(3, 150)
        _wait(lambda: _locked(gpus, BASE))
        assert governor.boosts > boosts  # a request waiting for a seat boosts at once
        _wait(lambda: proxy.stats()["pending_first_token"] == 0 == proxy.stats()["decoding"])  # the load is gone
    finally:
        backend.close()
        proxy.stop()
    assert all(g.calls[-1] == ("reset", None) for g in gpus)
