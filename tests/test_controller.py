"""The serving controller against the digital twin: decisions, shadow mode, fail-safe fallbacks and the CLI."""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenrl.controller import ServingController, build_controller, build_parser, main
from greenrl.core import BackendReading, Knobs
from greenrl.env.observation import OBS_FIELDS, ObservationBuilder
from greenrl.env.scenario import load_scenario
from greenrl.errors import InputError
from greenrl.live.backends import GpuBackend
from greenrl.live.gpu import FakeGpu, GpuError, GpuSet
from greenrl.live.launcher import ServerLauncher
from greenrl.live.metrics import parse
from greenrl.live.observe import LiveObserver, Observation
from greenrl.live.snapshot import Instant, start_snapshot
from greenrl.policy import ControllerPolicy, load_controller

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "default" / "maskable_ppo_s0"
TIME_SCALE = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5.0) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


@pytest.fixture(scope="module")
def twin(twin_launcher: Callable[..., ServerLauncher]) -> str:
    """A twin of the default scenario (the shipped controller's) for the module."""
    launcher = twin_launcher("default", TIME_SCALE)
    launcher.start({})
    return launcher.url


def _load(base: str, streams: int = 4, max_tokens: int = 300) -> list[threading.Thread]:
    """A few concurrent streaming completions in background threads (bounded: each ends by itself)."""

    def one(i: int) -> None:
        body = {"prompt": "word " * (50 + 20 * i), "max_tokens": max_tokens, "stream": True}
        req = urllib.request.Request(
            f"{base}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=20.0) as r:
                for _ in r:
                    pass
        except OSError:
            pass  # the twin may be stopped under it

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    return threads


def _short_sleep(seconds: float) -> bool:
    time.sleep(min(seconds, 0.3))
    return False


def _controller(base: str, *extra: str, sleep: Any = _short_sleep) -> tuple[ServingController, io.StringIO]:
    args = build_parser().parse_args(
        ["--checkpoint", str(CHECKPOINT), "--vllm-url", base, "--interval-s", "0.3", *extra]
    )
    log = io.StringIO()
    return build_controller(args, log, sleep=sleep), log


def _records(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


# ------------------------------------------------------------------------------------------ normal and shadow


def test_normal_mode_applies_the_policy_knobs(twin: str) -> None:
    threads = _load(twin)
    ctl, log = _controller(twin, "--twin")
    port = ctl.serve_metrics(0)
    try:
        assert ctl.run(max_intervals=3) == 3
        records = [r for r in _records(log) if r["mode"] != "priming"]
        assert [r["mode"] for r in records] == ["applied"] * 3
        for r in records:
            assert len(r["action"]) == len(ctl.policy.knob_names) and r["decision_latency_us"] < 50_000
            assert set(r["observation"]) >= {"arrival_rate_rps", "power_frac", "sm_clock_frac"}
            assert 0.0 < r["observation"]["power_frac"] <= 1.5  # per simulated second, not per wall second
        state = _get_json(f"{twin}/greenrl/state")
        for k in ("tp", "max_num_seqs", "sm_clock_mhz"):
            assert state["requested_knobs"][k] == ctl.knobs[k] == records[-1]["knobs"][k]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as r:
            text = r.read().decode()
        assert 'greenrl_decisions_total{mode="applied"} 3.0' in text
        assert f"greenrl_sm_clock_mhz {float(ctl.knobs['sm_clock_mhz'])}" in text
        assert f"greenrl_max_num_seqs {float(ctl.knobs['max_num_seqs'])}" in text
        assert f"greenrl_tp_gpus {float(ctl.knobs['tp'])}" in text and "greenrl_shadow 0.0" in text
        assert "greenrl_knob_value" not in text and "greenrl_energy_joules_total" in text
        assert "greenrl_slo_attainment_ratio " in text
    finally:
        ctl.close()
        for t in threads:
            t.join(timeout=20.0)
    # close() puts the safe (top) clock back
    assert _get_json(f"{twin}/greenrl/state")["requested_knobs"]["sm_clock_mhz"] == ctl.safe["sm_clock_mhz"]


def test_shadow_mode_changes_nothing(twin: str) -> None:
    requests = urllib.request.Request(
        f"{twin}/greenrl/knobs", data=json.dumps({"sm_clock_mhz": 1200}).encode(), method="POST"
    )
    with urllib.request.urlopen(requests, timeout=5.0):
        pass
    before = _get_json(f"{twin}/greenrl/state")["requested_knobs"]
    ctl, log = _controller(twin, "--twin", "--shadow")
    port = ctl.serve_metrics(0)
    try:
        assert ctl.run(max_intervals=2) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as r:
            text = r.read().decode()
    finally:
        ctl.close()
    records = [r for r in _records(log) if r["mode"] != "priming"]
    assert [r["mode"] for r in records] == ["shadow", "shadow"]
    assert all(r["applied"] == [] for r in records)
    assert _get_json(f"{twin}/greenrl/state")["requested_knobs"] == before
    # the knobs it chose (never applied) are exposed, one unit-suffixed gauge each
    chosen = records[-1]["knobs"]
    assert "greenrl_shadow 1.0" in text
    for knob, name in (("sm_clock_mhz", "greenrl_sm_clock_mhz"), ("max_num_seqs", "greenrl_max_num_seqs")):
        assert f"{name} {float(chosen[knob])}" in text


def test_metrics_host_flag_and_non_loopback_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prometheus_client

    from greenrl.controller.telemetry import ControllerMetrics, is_loopback

    assert build_parser().parse_args(["--checkpoint", "x"]).metrics_host == "127.0.0.1"
    assert build_parser().parse_args(["--checkpoint", "x", "--metrics-host", "0.0.0.0"]).metrics_host == "0.0.0.0"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")
    prom = ControllerMetrics()
    with caplog.at_level(logging.WARNING, logger="greenrl.controller.telemetry"):
        port = prom.serve(0, "127.0.0.1")
    try:
        assert port > 0 and not caplog.records
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5.0) as r:
            assert "greenrl_decisions_total" in r.read().decode()
    finally:
        prom.close()
    bound: list[str] = []

    class _Server:
        server_port = 9400

        def shutdown(self) -> None:
            pass

        def server_close(self) -> None:
            pass

    def fake_start(port: int, addr: str, registry: Any) -> tuple[_Server, None]:
        bound.append(addr)  # never listens beyond loopback in a test
        return _Server(), None

    monkeypatch.setattr(prometheus_client, "start_http_server", fake_start)
    other = ControllerMetrics()
    with caplog.at_level(logging.WARNING, logger="greenrl.controller.telemetry"):
        assert other.serve(9400, "0.0.0.0") == 9400
    other.close()
    assert bound == ["0.0.0.0"]
    assert any("not a loopback address" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------ faults


class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<html>definitely not prometheus {{{</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_garbage_metrics_fall_back_and_keep_looping() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ctl, log = _controller(f"http://127.0.0.1:{server.server_port}", "--gpus", "fake", sleep=lambda s: False)
        try:
            assert ctl.run(max_intervals=3) == 3
        finally:
            ctl.close()
    finally:
        server.shutdown()
        server.server_close()
    records = _records(log)
    assert [r["fallback_reason"] for r in records] == ["metrics_invalid"] * 3
    assert ctl.fallback_counts == {"metrics_invalid": 3}
    assert all(r["knobs"]["sm_clock_mhz"] == 1980 and r["knobs"]["max_num_seqs"] == 256 for r in records)
    assert ctl.next_wait_s() == pytest.approx(1.2)  # 0.3 s x 2**2, capped at 4 x 0.3 s


def test_twin_killed_then_restarted_recovers(twin_launcher: Callable[..., ServerLauncher]) -> None:
    launcher = twin_launcher("default", TIME_SCALE)
    launcher.start({})
    base = launcher.url
    ctl, log = _controller(base, "--twin", "--max-backoff-s", "0.6", "--timeout-s", "1")
    runner = threading.Thread(target=ctl.run, kwargs={"max_intervals": 200}, daemon=True)
    runner.start()
    try:

        def wait_for(pred: Any, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not pred():
                assert time.monotonic() < deadline, log.getvalue()[-2000:]
                time.sleep(0.05)

        wait_for(lambda: any(r["mode"] == "applied" for r in _records(log)), 10.0)
        launcher.stop()
        wait_for(lambda: ctl.fallback_counts.get("server_down", 0) >= 2, 10.0)
        launcher.start({})  # the same port: the controller finds it where it was
        n = len(_records(log))
        wait_for(lambda: sum(r["mode"] == "applied" for r in _records(log)[n:]) >= 2, 10.0)
        counted = dict(ctl.fallback_counts)
        time.sleep(1.0)
        assert ctl.fallback_counts == counted  # no new fallbacks once the twin is back
        assert set(counted) == {"server_down"}
    finally:
        ctl.stop()
        runner.join(timeout=10.0)
        ctl.close()
        launcher.stop()
    assert not runner.is_alive()


BUILDER = ObservationBuilder(gpus=8, tdp_w=700.0, max_sm_clock_mhz=1980, ttft_floor_s=0.5, tbt_slo_s=0.1)


def test_gpu_permission_error_falls_back_naming_the_privilege(twin: str) -> None:
    gpu = FakeGpu(0, energy_source=lambda: 0.0)
    gpu.deny_permission()
    policy = load_controller(CHECKPOINT)
    backend = GpuBackend(GpuSet([gpu]), clock=_ticking())
    observer = LiveObserver(twin, backend, BUILDER)
    log = io.StringIO()
    ctl = ServingController(policy, observer, backend, gpus=8, interval_s=0.1, decision_log=log, metrics=False)
    try:
        ctl.run_interval()  # primes
        record = ctl.run_interval()
    finally:
        ctl.close()
    assert record["mode"] == "fallback" and record["fallback_reason"] == "gpu_permission"
    assert "root" in record["error"] and "SYS_ADMIN" in record["error"]
    assert record["knobs"]["sm_clock_mhz"] == 1980 and "sm_clock_mhz" not in record["applied"]
    assert ctl.failures == 1


def _ticking() -> Any:
    t = [0.0]

    def clock() -> float:
        t[0] += 30.0
        return t[0]

    return clock


class _FixedObserver:
    """An observer that always sees the same (valid) observation: 30 s, 100 J."""

    primed = True

    def __init__(self, vector: np.ndarray | None = None) -> None:
        self.vector = np.zeros(len(OBS_FIELDS), np.float32) if vector is None else vector
        metrics = parse("vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:generation_tokens 0\n")
        reading = BackendReading(0.0, (0.0,), None, False)
        snap = start_snapshot(
            Instant(reading, metrics, 0.0), Knobs(tp=8, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)
        )
        self.snapshot = dataclasses.replace(snap, t_end_s=30.0, energy_j=100.0)

    def observe(self, knobs: Knobs) -> Observation:
        return Observation(self.vector, {"slo_attainment": 1.0}, self.snapshot)

    def reset(self) -> None:
        pass


class _RecordingBackend:
    """A knob backend that records each ``apply`` (the names changed and their values) and applies it all."""

    time_scale = 1.0
    discrete_time = False

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []

    def read(self) -> BackendReading:
        return BackendReading(0.0, (0.0,), None, False)

    def apply(self, knobs: Knobs, changed: Any = None) -> list[str]:
        self.calls.append({k: getattr(knobs, k) for k in changed})
        return list(changed)

    def close(self, restore: Any = None) -> None:
        pass


def _offline(policy: ControllerPolicy, **kw: Any) -> tuple[ServingController, _RecordingBackend, io.StringIO]:
    backend, log = _RecordingBackend(), io.StringIO()
    observer: Any = kw.pop("observer", _FixedObserver())
    ctl = ServingController(policy, observer, backend, gpus=8, decision_log=log, metrics=False, **kw)
    return ctl, backend, log


@pytest.mark.parametrize(
    "bad", [np.array([7, 0, 0, 0]), np.array([0, -1, 0, 0]), np.array([0, 0]), np.array([0.5, 0.0, 1.0, 0.0])]
)
def test_invalid_policy_output_falls_back(bad: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_controller(CHECKPOINT)
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: (bad, None))
    ctl, backend, _ = _offline(policy)
    record = ctl.run_interval()
    assert record["mode"] == "fallback" and record["fallback_reason"] == "policy_invalid"
    safe = {"tp": 8, "replicas": 1, "max_num_seqs": 256, "sm_clock_mhz": 1980, "prefill_sm_clock_mhz": 0}
    assert backend.calls[-1] == safe


def test_nan_observation_falls_back() -> None:
    vec = np.zeros(len(load_controller(CHECKPOINT).observation_names), np.float32)
    vec[3] = np.nan
    ctl, _, _ = _offline(load_controller(CHECKPOINT), observer=_FixedObserver(vec))
    assert ctl.run_interval()["fallback_reason"] == "observation_invalid"


def test_tp_dwell_holds_tp_for_min_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_controller(CHECKPOINT)
    actions = iter([np.array([i % 2, 4, 5, 0]) for i in range(30)])  # tp 2, 4, 2, 4, ... every interval
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: (next(actions), None))
    ctl, _, log = _offline(policy, min_dwell_intervals=10)
    tps = [ctl.run_interval()["knobs"]["tp"] for _ in range(25)]
    changes = [i for i in range(1, 25) if tps[i] != tps[i - 1]]
    assert tps[0] == 2 and all(b - a >= 10 for a, b in zip(changes, changes[1:], strict=False))
    assert all(ctl_r["knobs"]["replicas"] == 8 // ctl_r["knobs"]["tp"] for ctl_r in _records(log))


class _QueueObserver(_FixedObserver):
    """The fixed observation, with the given requests waiting in successive intervals."""

    def __init__(self, waiting: list[float]) -> None:
        super().__init__()
        self.waiting = iter(waiting)

    def observe(self, knobs: Knobs) -> Observation:
        return Observation(self.vector, {"slo_attainment": 1.0, "waiting": next(self.waiting)}, self.snapshot)


@pytest.mark.parametrize("guard", [0, 32])
def test_the_queue_guard_serves_on_every_gpu_as_the_env_does(guard: int, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_controller(ROOT / "checkpoints" / "day" / "maskable_ppo_s0")
    parked = np.array([0, 0, 0, 0, 0])  # TP 4 x 1 (4 GPUs parked) asked for every interval
    assert policy.knobs(parked)["tp"] * policy.knobs(parked)["replicas"] == 4
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: (parked, None))
    waiting = [0.0, 0.0, 0.0, 40.0] + [0.0] * 12
    ctl, _, log = _offline(policy, observer=_QueueObserver(waiting), min_dwell_intervals=10, guard_grow_queue=guard)
    replicas = [ctl.run_interval()["knobs"]["replicas"] for _ in waiting]
    guarded = [r["guard"] for r in _records(log)]
    if guard == 0:
        assert replicas == [1] * 16 and not any(guarded)
    else:  # fires on the queue within the first dwell, then holds its layout for a dwell of its own
        assert replicas == [1, 1, 1] + [2] * 10 + [1] * 3
        assert guarded == [False] * 3 + [True] + [False] * 12


def test_the_dwell_is_the_scenarios_per_knob_unless_given() -> None:
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:9", "--gpus", "fake"]
    for extra, expected in (
        ([], load_scenario("default").control.min_dwell_steps),
        (["--min-dwell-intervals", "3"], {"tp": 3, "replicas": 3}),
    ):
        ctl = build_controller(build_parser().parse_args([*argv, *extra]), None)
        try:
            assert ctl.dwell.min_dwell_steps == expected
        finally:
            ctl.close()


def test_a_clock_the_rate_limit_ignored_is_retried_at_the_next_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    t = [0.0]
    gpu = FakeGpu(0, min_interval_s=10.0, clock=lambda: t[0])
    policy = load_controller(CHECKPOINT)
    clocks = iter([0, 1, 1])  # sm_clock_mhz 1005, then 1200 at the next two intervals
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: (np.array([2, 4, next(clocks), 0]), None))
    backend = GpuBackend(GpuSet([gpu]))
    ctl = ServingController(policy, _FixedObserver(), backend, gpus=8, decision_log=io.StringIO(), metrics=False)
    try:
        assert "sm_clock_mhz" in ctl.run_interval()["applied"] and gpu.locked_sm_clock_mhz == 1005
        t[0] = 1.0  # inside the GPU's rate limit: the lock is ignored, and the clock in force still believed
        record = ctl.run_interval()
        assert record["mode"] == "applied" and "sm_clock_mhz" not in record["applied"]
        assert gpu.locked_sm_clock_mhz == 1005 and ctl.knobs["sm_clock_mhz"] == 1005
        t[0] = 11.0  # the same policy clock: asked for again, now applied
        record = ctl.run_interval()
        assert "sm_clock_mhz" in record["applied"] and gpu.locked_sm_clock_mhz == 1200
        assert ctl.knobs["sm_clock_mhz"] == 1200
    finally:
        ctl.close()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path / "nope"), "--vllm-url", "http://127.0.0.1:1", "--twin"])
    assert exc.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    bad = tmp_path / "tampered"
    shutil.copytree(CHECKPOINT, bad)
    data = bytearray((bad / "policy.npz").read_bytes())
    data[-10] ^= 0xFF
    (bad / "policy.npz").write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(bad), "--vllm-url", "http://127.0.0.1:1", "--twin"])
    assert exc.value.code == 2 and "sha256" in capsys.readouterr().err
    bad_flags = [["--interval-s", "0"], ["--gpus", "a,b"], ["--vllm-url", "localhost:8000"], ["--twin", "--launch"]]
    bad_flags += [
        ["--launch", "--launch-command", "serve {bogus}"],
        ["--launch", "--model", "m", "--server-port", "-1"],
    ]
    for flags in bad_flags:
        argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:1", *flags]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, flags
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(CHECKPOINT)])  # no --vllm-url and no --launch
    assert exc.value.code == 2 and "--vllm-url" in capsys.readouterr().err


def test_cli_runs_and_stops_cleanly_on_sigterm(twin: str, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    cmd = [sys.executable, "-m", "greenrl.controller", "--checkpoint", str(CHECKPOINT), "--vllm-url", twin]
    cmd += ["--twin", "--interval-s", "0.3", "--decision-log", str(log), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20.0
        while not (log.exists() and sum(1 for _ in log.open()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10.0) == 0
    finally:
        if proc.poll() is None:  # the assertion above failed: do not leave it running
            proc.kill()
            proc.wait(timeout=10.0)
    modes = {json.loads(line)["mode"] for line in log.open()}
    assert modes <= {"priming", "applied"}
    assert _get_json(f"{twin}/greenrl/state")["requested_knobs"]["sm_clock_mhz"] == 1980


# ------------------------------------------------------------------------------------------ proxy and launcher

LAUNCH = (
    "{python} -m greenrl.twin --port {port} --scenario default --time-scale 30 --tp {tp} --replicas {replicas} "
    "--max-num-seqs {max_num_seqs} --sm-clock-mhz {sm_clock_mhz} --log-level WARNING"
)


@pytest.fixture
def owned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A controller that starts the twin through --launch, with the admission proxy, on fake GPUs."""
    made: list[ServingController] = []
    pids: list[int] = []

    def make(*extra: str, tp_index: int = 1) -> tuple[ServingController, io.StringIO]:
        policy = load_controller(CHECKPOINT)
        monkeypatch.setattr("greenrl.policy.load_controller", lambda folder: policy)
        monkeypatch.setattr(policy, "predict", lambda obs, **kw: (np.array([tp_index, 4, 5, 0]), None))
        argv = ["--launch", "--launch-command", LAUNCH, "--server-port", str(_free_port()), "--proxy-port", "0"]
        argv += ["--gpus", "fake", "--min-dwell-intervals", "1", "--launch-timeout-s", "30", "--timeout-s", "2"]
        argv += ["--server-log", str(tmp_path / "server.log"), *extra]
        args = build_parser().parse_args(["--checkpoint", str(CHECKPOINT), "--interval-s", "0.2", *argv])
        log = io.StringIO()
        ctl = build_controller(args, log, sleep=_short_sleep)
        made.append(ctl)
        assert isinstance(ctl.backend, GpuBackend) and ctl.backend.launcher is not None
        pids.append(ctl.backend.launcher.pid or 0)
        return ctl, log

    try:
        yield make, pids
    finally:
        for ctl in made:
            ctl.stop()
            ctl.close()
        for pid in pids:  # every server the launcher started must be gone; a leftover is killed by its pid
            alive = True
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            if alive:
                os.killpg(pid, signal.SIGKILL)
            assert not alive, f"server pid {pid} outlived the controller"


def _until(ctl: ServingController, pred: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        ctl.run_interval()
        time.sleep(0.1)


def test_launch_tp_change_drains_restarts_and_loses_no_request(owned: Any) -> None:
    make, pids = owned
    ctl, log = make()
    backend = ctl.backend
    assert ctl.knobs["tp"] == 8 and backend.proxy is not None and backend.launcher is not None
    first_pid = backend.launcher.pid
    results: list[Any] = []
    stop = threading.Event()

    def client(k: int) -> None:
        body = {"prompt": list(range(1, 40)), "max_tokens": 60, "stream": True}
        while not stop.is_set():
            req = urllib.request.Request(
                f"{backend.proxy.url}/v1/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30.0) as r:
                    results.append(sum(1 for line in r if line.startswith(b"data: [DONE]")))
            except OSError as err:
                results.append(err)

    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(3)]
    for w in workers:
        w.start()
    try:
        _until(ctl, lambda: backend.server.restarts == 1 and not backend.restarting)
        pids.append(backend.launcher.pid or 0)
        _until(ctl, lambda: sum(r["mode"] == "applied" for r in _records(log)) >= 3)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30.0)
    modes = [r["mode"] for r in _records(log)]
    assert "reconfiguring" in modes and "fallback" not in modes and ctl.fallback_counts == {}
    state = _get_json(f"{backend.launcher.url}/greenrl/state")
    assert (state["knobs"]["tp"], state["knobs"]["replicas"]) == (4, 2) and ctl.knobs["tp"] == 4
    assert backend.launcher.pid != first_pid and backend.server.last_outage_s is not None
    assert results and all(r == 1 for r in results), results[-5:]  # every request got its whole stream
    stats = backend.proxy.stats()
    assert stats["arrived"] == stats["finished"] == len(results) and stats["cap"] == 256 * 2
    applied = [r for r in _records(log) if r["mode"] == "applied"]
    assert applied[-1]["assumed"] == [] and 0.0 <= applied[-1]["observation"]["slo_attainment"] <= 1.0


def test_owned_server_killed_falls_back_then_is_started_again(owned: Any) -> None:
    make, pids = owned
    ctl, log = make(tp_index=2)  # the policy keeps tp 8: no restart of its own
    launcher = ctl.backend.launcher
    _until(ctl, lambda: any(r["mode"] == "applied" for r in _records(log)))
    old_pid = launcher.pid
    os.killpg(old_pid, signal.SIGKILL)  # the server dies (its own process group, by its id)
    _until(ctl, lambda: ctl.fallback_counts.get("server_down", 0) >= 1)
    _until(ctl, lambda: ctl.backend.server.restarts == 1 and not ctl.backend.restarting)
    pids.append(launcher.pid or 0)
    n = len(_records(log))
    _until(ctl, lambda: sum(r["mode"] == "applied" for r in _records(log)[n:]) >= 2)
    assert set(ctl.fallback_counts) == {"server_down"} and launcher.pid != old_pid and launcher.healthy()
    assert _get_json(f"{launcher.url}/greenrl/state")["knobs"]["tp"] == 8


def test_attached_server_refuses_tp_change_but_caps_admissions(twin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_controller(CHECKPOINT)
    monkeypatch.setattr("greenrl.policy.load_controller", lambda folder: policy)
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: (np.array([1, 2, 5, 0]), None))  # tp 4, max_num_seqs 64
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", twin, "--interval-s", "0.2", "--gpus", "fake"]
    ctl = build_controller(build_parser().parse_args([*argv, "--proxy-port", "0", "--min-dwell-intervals", "1"]), None)
    try:
        ctl.run_interval()
        record = ctl.run_interval()
        assert record["mode"] == "applied" and "tp" not in record["applied"] and "max_num_seqs" in record["applied"]
        assert ctl.knobs["tp"] == 8 and ctl.knobs["max_num_seqs"] == 64  # TP refused: the layout in force stays
        assert ctl.backend.proxy.cap == 64 and not ctl.backend.restarting
        assert _get_json(f"{twin}/greenrl/state")["knobs"]["tp"] == 8
    finally:
        ctl.close()


def test_observer_takes_arrivals_and_slo_from_the_front_end(twin: str) -> None:
    class Front:
        def __init__(self) -> None:
            self.counts = {"arrived": 0, "prompt_tokens": 0, "slo_met": 0, "missed": 0, "slo_judged": True}

        def stats(self) -> dict[str, Any]:
            return dict(self.counts)

    front = Front()
    knobs = Knobs(tp=8, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)
    backend = GpuBackend(GpuSet([FakeGpu(0, energy_source=lambda: 0.0)]), knobs, clock=_ticking())
    observer = LiveObserver(twin, backend, BUILDER, front_end=front)
    assert observer.observe(knobs) is None
    front.counts.update(arrived=60, prompt_tokens=6000, slo_met=27, missed=3)
    obs = observer.observe(knobs)
    assert obs is not None and obs.assumed == ()
    assert obs.values["arrival_rate_rps"] == pytest.approx(2.0)  # 60 arrivals over 30 s
    assert obs.values["mean_prompt_tokens"] == pytest.approx(100.0)
    assert obs.values["slo_attainment"] == pytest.approx(0.9)
    front.counts["slo_judged"] = False
    obs = observer.observe(knobs)
    assert obs is not None and obs.assumed == ("slo_attainment",) and obs.values["slo_attainment"] == 1.0
    assert obs.values["arrival_rate_rps"] == 0.0


# ------------------------------------------------------------------------------------------ the prefill clock


def _raw_policy(prefill: bool, action: list[int] | None = None) -> ControllerPolicy:
    """The shipped policy read without the observation check (a fixed ``action`` stands in for ``predict``),
    optionally with a fourth knob ``prefill_sm_clock_mhz`` in {0, 1980}."""
    manifest = json.loads((CHECKPOINT / "controller.json").read_text())
    mask = iter(manifest["action_mask"])
    kept = [(k, [next(mask) for _ in k["values"]]) for k in manifest["knobs"]]
    kept = [(k, m) for k, m in kept if k["name"] != "prefill_sm_clock_mhz"]
    if prefill:
        kept.append(({"name": "prefill_sm_clock_mhz", "values": [0, 1980]}, [True, True]))
    manifest["knobs"] = [k for k, _ in kept]
    manifest["action_mask"] = [v for _, m in kept for v in m]
    with np.load(CHECKPOINT / manifest["policy"]["file"]) as data:
        policy = ControllerPolicy(manifest, {k: data[k] for k in data.files}, CHECKPOINT)
    if action is not None:
        policy.predict = lambda obs, **kw: (np.array(action), None)  # type: ignore[method-assign]
    return policy


def _raw_offline(policy: ControllerPolicy) -> tuple[ServingController, _RecordingBackend]:
    vector = np.zeros(len(policy.observation_names), np.float32)
    ctl, backend, _ = _offline(policy, observer=_FixedObserver(vector))
    return ctl, backend


def test_a_policy_without_the_prefill_knob_never_sends_it() -> None:
    ctl, backend = _raw_offline(_raw_policy(False, [2, 4, 0]))
    assert ctl.safe == {"tp": 8, "replicas": 1, "max_num_seqs": 256, "sm_clock_mhz": 1980}
    assert "prefill_sm_clock_mhz" not in ctl._complete({"tp": 8, "sm_clock_mhz": 1980, "prefill_sm_clock_mhz": 1980})
    assert ctl.run_interval()["mode"] == "applied"
    assert backend.calls and all("prefill_sm_clock_mhz" not in call for call in backend.calls)


def test_prefill_knob_safe_default_is_off_and_a_gpu_fault_still_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _raw_policy(True, [2, 4, 0, 1])  # tp 8, prefill 1980
    ctl, backend = _raw_offline(policy)
    assert ctl.safe["prefill_sm_clock_mhz"] == 0 and ctl.safe["sm_clock_mhz"] == 1980
    record = ctl.run_interval()
    assert record["mode"] == "applied" and backend.calls[-1]["prefill_sm_clock_mhz"] == 1980
    failing = [GpuError(0, "lock_sm_clock", "fell off the bus", "reboot")]

    def apply(knobs: Knobs, changed: list[str]) -> list[str]:
        if failing:
            raise failing.pop()
        backend.calls.append({k: getattr(knobs, k) for k in changed})
        return changed

    monkeypatch.setattr(backend, "apply", apply)
    monkeypatch.setattr(policy, "predict", lambda obs, **kw: (np.array([2, 4, 1, 1]), None))  # another clock
    record = ctl.run_interval()
    assert record["mode"] == "fallback" and record["fallback_reason"] == "gpu_error"
    # the clock is not retried, but prefill 0 goes out: it stops the governor
    assert backend.calls[-1] == {"tp": 8, "replicas": 1, "max_num_seqs": 256, "prefill_sm_clock_mhz": 0}
    assert ctl.knobs["prefill_sm_clock_mhz"] == 0


def test_controller_with_a_proxy_drives_the_prefill_clock_of_fake_gpus(
    gated_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _raw_policy(True, [2, 4, 0, 1])  # base clock: the lowest value; prefill 1980
    monkeypatch.setattr("greenrl.policy.load_controller", lambda folder: policy)
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", gated_upstream.url, "--gpus", "fake", "--proxy-port", "0"]
    ctl = build_controller(build_parser().parse_args(argv), None)
    ctl.observer = _FixedObserver(np.zeros(len(policy.observation_names), np.float32))  # type: ignore[assignment]
    backend = ctl.backend
    assert isinstance(backend, GpuBackend) and backend.proxy is not None and backend.gpus is not None
    gpu = backend.gpus[0]

    def until(pred: Any) -> None:
        deadline = time.monotonic() + 10.0
        while not pred():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.02)

    try:
        assert ctl.run_interval()["mode"] == "applied" and backend.governor is not None
        base = ctl.knobs["sm_clock_mhz"]
        assert base < 1980 and ctl.knobs["prefill_sm_clock_mhz"] == 1980
        assert backend.deadline is not None and backend.deadline.ttft_target_s == policy.prefill_clock_ttft_s
        until(lambda: gpu.locked_sm_clock_mhz == base)
        body = json.dumps({"prompt": "a", "max_tokens": 3, "stream": True}).encode()
        req = urllib.request.Request(f"{backend.proxy.url}/v1/completions", data=body, method="POST")
        client = threading.Thread(target=lambda: urllib.request.urlopen(req, timeout=20.0).read(), daemon=True)
        client.start()
        until(lambda: gpu.locked_sm_clock_mhz == 1980)  # awaiting its first token
        gated_upstream.release.set()
        client.join(timeout=10.0)
        until(lambda: gpu.locked_sm_clock_mhz == base)
    finally:
        ctl.close()
    assert backend.governor is None and gpu.locked_sm_clock_mhz is None  # stopped, then the clocks reset
    assert gpu.min_interval_s == 0.05  # the simulator's switch time, for a policy with a prefill clock


@pytest.mark.parametrize(("prefill", "flag", "expected"), [(False, None, 1.0), (True, None, 0.05), (True, "0.5", 0.5)])
def test_clock_rate_limit_follows_the_policy_unless_given(
    prefill: bool, flag: str | None, expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("greenrl.policy.load_controller", lambda folder: _raw_policy(prefill))
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:9", "--gpus", "fake"]
    argv += ["--clock-min-interval-s", flag] if flag else []
    ctl = build_controller(build_parser().parse_args(argv), None)
    try:
        assert isinstance(ctl.backend, GpuBackend) and ctl.backend.gpus is not None
        assert all(g.min_interval_s == expected for g in ctl.backend.gpus)
    finally:
        ctl.close()


def test_a_negative_clock_rate_limit_is_refused() -> None:
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:9", "--gpus", "fake"]
    with pytest.raises(InputError, match="--clock-min-interval-s"):
        build_controller(build_parser().parse_args([*argv, "--clock-min-interval-s", "-1"]), None)


# ------------------------------------------------------------------------------------------ the deadline governor


def test_the_policy_carries_its_prefill_clock_target() -> None:
    manifest = json.loads((CHECKPOINT / "controller.json").read_text())
    shipped = load_controller(CHECKPOINT).prefill_clock_ttft_s
    assert shipped is not None and shipped == manifest["prefill_clock"]["ttft_target_s"]
    policy = _raw_policy(True)
    policy.manifest["prefill_clock"] = {"ttft_target_s": None}
    assert policy.prefill_clock_ttft_s is None
    del policy.manifest["prefill_clock"]  # exported before the manifest recorded it
    assert policy.prefill_clock_ttft_s is None
    policy.manifest["prefill_clock"] = {"ttft_target_s": 1}
    assert policy.prefill_clock_ttft_s == 1.0 and isinstance(policy.prefill_clock_ttft_s, float)


@pytest.mark.parametrize(
    ("extra", "prefill_knob", "expected"),
    [
        (["--proxy-port", "0"], True, "policy"),
        (["--proxy-port", "0", "--prefill-clock-ttft-s", "0.35"], True, 0.35),
        (["--proxy-port", "0", "--prefill-clock-ttft-s", "none"], True, None),
        ([], True, None),  # no proxy: no governor, nothing to predict for
        (["--proxy-port", "0"], False, None),  # no prefill clock knob
    ],
)
def test_the_controller_hands_the_target_to_the_proxy(
    extra: list[str], prefill_knob: bool, expected: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _raw_policy(prefill_knob, [2, 4, 0, 1] if prefill_knob else [2, 4, 0])  # tp 8, prefill 1980
    monkeypatch.setattr("greenrl.policy.load_controller", lambda folder: policy)
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:9", "--gpus", "fake", *extra]
    ctl = build_controller(build_parser().parse_args(argv), None)
    try:
        backend = ctl.backend
        assert isinstance(backend, GpuBackend)
        deadline = backend.deadline
        if expected is None:
            assert deadline is None
            return
        target = policy.prefill_clock_ttft_s if expected == "policy" else expected
        assert deadline is not None and target is not None and deadline.ttft_target_s == target
        assert deadline.model == "llama-2-70b" and deadline.gpu.name.lower().startswith("h100")  # the scenario's
        ctl.observer = _FixedObserver(np.zeros(len(policy.observation_names), np.float32))  # type: ignore[assignment]
        assert ctl.run_interval()["mode"] == "applied" and backend.governor is not None
        assert backend.proxy is not None and backend.proxy._deadline is deadline
        base = ctl.knobs["sm_clock_mhz"]
        assert deadline.serving == {"tp": 8, "replicas": 1, "base_clock_mhz": base, "max_num_batched_tokens": 8192}
    finally:
        ctl.close()


@pytest.mark.parametrize("bad", ["-0.1", "soon", "inf", "nan"])
def test_a_bad_prefill_clock_target_is_refused(bad: str) -> None:
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:9", "--gpus", "fake"]
    with pytest.raises(InputError, match="--prefill-clock-ttft-s"):
        build_controller(build_parser().parse_args([*argv, "--prefill-clock-ttft-s", bad]), None)
