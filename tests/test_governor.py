"""The prefill-clock governor, and ``GpuBackend`` honouring ``prefill_sm_clock_mhz`` through the proxy."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenrl.core import Knobs
from greenrl.live.backends import GpuBackend, TwinBackend
from greenrl.live.clock import SmClockControl
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.governor import PrefillClockGovernor
from greenrl.live.gpu import FakeGpu, GpuError, GpuSet
from greenrl.live.launcher import ServerLauncher
from greenrl.live.proxy import AdmissionProxy

ROOT = Path(__file__).resolve().parents[1]
BASE, PREFILL = 1005, 1980


class _Locks:
    """A ``lock`` callable that records the clocks, optionally slow or failing."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.clocks: list[int] = []
        self.times_s: list[float] = []
        self.delay_s = delay_s
        self.errors: list[Exception] = []

    def __call__(self, clock_mhz: int) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.errors:
            raise self.errors.pop(0)
        self.clocks.append(clock_mhz)
        self.times_s.append(time.monotonic())


@pytest.fixture
def governors() -> Iterator[Any]:
    made: list[PrefillClockGovernor] = []

    def make(lock: Any, **kw: Any) -> PrefillClockGovernor:
        gov = PrefillClockGovernor(lock, **kw)
        made.append(gov)
        return gov

    try:
        yield make
    finally:
        for gov in made:
            gov.close()


def _wait(pred: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------ the governor


def test_prefill_clock_while_pending_and_base_clock_at_zero(governors: Any) -> None:
    t = [0.0]
    locks = _Locks()
    gov = governors(locks, clock=lambda: t[0])
    gov.on_pending(3)
    time.sleep(0.05)
    assert locks.clocks == []  # nothing before configure
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0) and locks.clocks == [PREFILL]
    t[0] = 4.0
    gov.on_pending(0)
    assert gov.settle(5.0) and locks.clocks == [PREFILL, BASE]
    t[0] = 10.0
    gov.on_pending(1)
    assert gov.settle(5.0) and locks.clocks == [PREFILL, BASE, PREFILL]
    t[0] = 11.5
    assert gov.switches == 3 and gov.locked_mhz == PREFILL
    assert gov.prefill_s == pytest.approx(4.0 + 1.5)  # 0 -> 4 s, then 10 -> 11.5 s at the prefill clock
    gov.configure(1395, PREFILL)  # a new base clock while pending: the prefill clock stays
    gov.on_pending(0)
    assert gov.settle(5.0) and locks.clocks[-1] == 1395 and gov.stats()["switches"] == 4


def test_a_burst_coalesces_and_never_blocks_the_caller(governors: Any) -> None:
    locks = _Locks(delay_s=0.02)  # NVML takes milliseconds
    gov = governors(locks)
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0)
    t0 = time.perf_counter()
    for k in range(1000):
        gov.on_pending(k % 3)  # 0, 1, 2, 0, 1, 2, ...: the wanted clock flips 667 times
    elapsed_s = time.perf_counter() - t0
    gov.on_pending(2)
    assert gov.settle(5.0)
    assert elapsed_s < 0.5  # 1000 reports never waited on a 20 ms lock
    assert len(locks.clocks) <= 10 and locks.clocks[-1] == PREFILL == gov.locked_mhz
    assert all(a != b for a, b in zip(locks.clocks, locks.clocks[1:], strict=False))  # no re-lock


def test_the_clock_already_locked_is_never_locked_again(governors: Any) -> None:
    locks = _Locks()
    gov = governors(locks)
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0)
    for count in (1, 2, 5, 1):
        gov.on_pending(count)
        assert gov.settle(5.0)
    gov.configure(BASE, PREFILL)
    time.sleep(0.05)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL]


def test_off_never_switches(governors: Any) -> None:
    locks = _Locks()
    gov = governors(locks)
    gov.configure(1395, 0)
    for count in (4, 0, 7, 1):
        gov.on_pending(count)
        time.sleep(0.01)
    assert gov.settle(5.0) and locks.clocks == [1395] and gov.prefill_s == 0.0


def test_a_failing_lock_is_kept_logged_once_and_retried(governors: Any, caplog: pytest.LogCaptureFixture) -> None:
    locks = _Locks()
    boom = GpuError(0, "lock_sm_clock", "NVML said no", "check the driver")
    locks.errors = [boom, GpuError(0, "lock_sm_clock", "again", "-"), RuntimeError("other")]
    gov = governors(locks, retry_s=0.3)
    with caplog.at_level(logging.DEBUG, logger="greenrl.live.governor"):
        gov.configure(BASE, PREFILL)
        _wait(lambda: gov.failures == 1)
        assert gov.pop_error() is boom and gov.pop_error() is None
        assert not gov.settle(5.0)  # the next try, 0.3 s later, fails too
        _wait(lambda: locks.clocks == [BASE])  # tried again until it worked: the worker lives on
    assert gov.failures == 3 and isinstance(gov.last_error, RuntimeError) and gov.pop_error() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per error type (GpuError, RuntimeError)
    gov.on_pending(1)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL]


def test_switches_wait_for_the_gpus_rate_limit(governors: Any) -> None:
    locks = _Locks()
    t0 = time.monotonic()
    gov = governors(locks, min_interval_s=0.2, locked_mhz=BASE)  # the caller just locked BASE
    gov.configure(BASE, PREFILL)
    gov.on_pending(1)
    assert gov.settle(5.0) and locks.clocks == [PREFILL] and locks.times_s[0] - t0 >= 0.2
    gov.on_pending(0)
    gov.on_pending(1)
    gov.on_pending(0)
    assert gov.settle(5.0) and locks.clocks == [PREFILL, BASE]
    assert locks.times_s[1] - locks.times_s[0] >= 0.2  # deferred, not dropped


def test_close_stops_the_worker(governors: Any) -> None:
    locks = _Locks()
    gov = governors(locks)
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0)
    gov.close()
    gov.close()
    gov.on_pending(5)
    time.sleep(0.05)
    assert locks.clocks == [BASE] and not gov._thread.is_alive()


def test_the_deadline_holds_the_base_clock_until_the_boost_time(governors: Any) -> None:
    t = [100.0]
    locks = _Locks()
    gov = governors(locks, clock=lambda: t[0])
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0) and locks.clocks == [BASE]
    gov.on_pending(2, 105.0)  # pending, but their first tokens come in time at the base clock until 105 s
    time.sleep(0.1)
    assert gov.settle(5.0) and locks.clocks == [BASE] and gov.wanted_mhz == BASE and gov.boost_at_s == 105.0
    t[0] = 104.99
    assert gov.wanted_mhz == BASE
    t[0] = 105.0
    assert gov.wanted_mhz == PREFILL  # the boost time has come (the worker wakes by itself: next test)
    gov.on_pending(2, 105.0)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL]
    gov.on_pending(1, 109.0)  # the early one got its first token; the other one can wait: back to base
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL, BASE]
    gov.on_pending(0, math.inf)
    time.sleep(0.05)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL, BASE]
    assert gov.stats()["boosts"] == 1 and gov.switches == 3
    assert gov.prefill_s == pytest.approx(0.0)  # the fake clock did not move while at the prefill clock


def test_the_worker_wakes_at_the_boost_time_by_itself(governors: Any) -> None:
    locks = _Locks()
    gov = governors(locks)  # time.monotonic, the proxy's loop clock
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0)
    boost_at_s = time.monotonic() + 0.3
    gov.on_pending(1, boost_at_s)  # no other report follows
    time.sleep(0.15)
    assert locks.clocks == [BASE]
    _wait(lambda: locks.clocks == [BASE, PREFILL], timeout_s=5.0)
    assert boost_at_s <= locks.times_s[-1] < boost_at_s + 1.0 and gov.boosts == 1


def test_a_boost_time_past_or_unset_switches_at_once(governors: Any) -> None:
    locks = _Locks()
    gov = governors(locks)
    gov.configure(BASE, PREFILL)
    assert gov.settle(5.0)
    gov.on_pending(1, time.monotonic() - 1.0)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL]
    gov.on_pending(0, math.inf)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL, BASE]
    gov.on_pending(1)  # no boost time: at once (the governor without a deadline)
    assert gov.settle(5.0) and locks.clocks == [BASE, PREFILL, BASE, PREFILL] and gov.boosts == 2


def test_a_boost_waits_for_the_rate_limit_too(governors: Any) -> None:
    locks = _Locks()
    t0 = time.monotonic()
    gov = governors(locks, min_interval_s=0.4, locked_mhz=BASE)  # the caller just locked BASE
    gov.configure(BASE, PREFILL)
    gov.on_pending(1, t0 + 0.1)  # the boost time comes before the GPUs allow a switch
    _wait(lambda: locks.clocks == [PREFILL])
    assert locks.times_s[0] - t0 >= 0.4


# ------------------------------------------------------------------------------------------ GpuBackend


KNOBS = Knobs(tp=1, replicas=1, max_num_seqs=8, sm_clock_mhz=BASE, prefill_sm_clock_mhz=PREFILL)
ALL = ["tp", "replicas", "max_num_seqs", "sm_clock_mhz", "prefill_sm_clock_mhz"]


def _stream(url: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        body = json.dumps({"prompt": "a", "max_tokens": 3, "stream": True}).encode()
        req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20.0) as r:
            out.append(r.read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def proxied(gated_upstream: Any) -> Iterator[tuple[FakeGpu, GpuBackend, AdmissionProxy]]:
    """A GpuBackend over one FakeGpu (no rate limit) and a real proxy before the gated stand-in, which it stops."""
    gpu = FakeGpu(0, min_interval_s=0.0)
    proxy = AdmissionProxy(gated_upstream.url)
    proxy.start()
    backend = GpuBackend(GpuSet([gpu]), proxy=proxy, owns_proxy=True)
    try:
        yield gpu, backend, proxy
    finally:
        backend.close()


def test_the_controllers_calls_lock_the_prefill_clock_until_the_first_token(proxied: Any, gated_upstream: Any) -> None:
    """The knobs the controller names as changed (``LiveNode`` leaves them to the backend: test_live_node.py)."""
    gpu, backend, proxy = proxied
    try:
        assert backend.apply(KNOBS, ALL) == ["sm_clock_mhz", "prefill_sm_clock_mhz", "max_num_seqs"]
        assert backend.governor is not None
        _wait(lambda: gpu.locked_sm_clock_mhz == BASE)  # idle: the base clock
        client, out = _stream(proxy.url)
        _wait(lambda: gpu.locked_sm_clock_mhz == PREFILL)  # a request awaits its first token
        time.sleep(0.1)
        assert gpu.locked_sm_clock_mhz == PREFILL and gated_upstream.posts == 1
        gated_upstream.finish.clear()
        gated_upstream.release.set()  # the first token; the stream then holds
        _wait(lambda: gpu.locked_sm_clock_mhz == BASE)
        assert proxy.stats()["in_flight"] == 1  # the base clock while the request decodes
        gated_upstream.finish.set()
        client.join(timeout=10.0)
        assert out and b"[DONE]" in out[0]
        assert gpu.calls == [("lock", BASE), ("lock", PREFILL), ("lock", BASE)]
        assert backend.governor.switches == 3 and backend.governor.prefill_s > 0.1
        # back to 0: the governor stops and the clock is locked directly again, at once
        off = dataclasses.replace(KNOBS, prefill_sm_clock_mhz=0)
        assert backend.apply(off, ["prefill_sm_clock_mhz"]) == ["prefill_sm_clock_mhz"]
        assert backend.governor is None and len(gpu.calls) == 3
        assert backend.apply(dataclasses.replace(off, sm_clock_mhz=1395), ["sm_clock_mhz"]) == ["sm_clock_mhz"]
        assert gpu.calls[-1] == ("lock", 1395)
        backend.apply(KNOBS, ["sm_clock_mhz", "prefill_sm_clock_mhz"])  # a governor again, closed by close()
        _wait(lambda: gpu.locked_sm_clock_mhz == BASE)
    finally:
        backend.close()
    assert backend.governor is None and gpu.calls[-1] == ("reset", None)


def test_leaving_the_prefill_clock_restores_the_base_clock(proxied: Any, gated_upstream: Any) -> None:
    gpu, backend, proxy = proxied
    backend.apply(KNOBS, ALL)
    client, _ = _stream(proxy.url)
    _wait(lambda: gpu.locked_sm_clock_mhz == PREFILL)
    backend.apply(dataclasses.replace(KNOBS, prefill_sm_clock_mhz=0), ["prefill_sm_clock_mhz"])  # still pending
    assert gpu.locked_sm_clock_mhz == BASE and backend.governor is None
    gated_upstream.release.set()
    client.join(timeout=10.0)


def test_a_deadline_defers_the_prefill_clock(gated_upstream: Any) -> None:
    deadline = PrefillDeadline("llama-3.1-8b", "h100-sxm-80gb", 0.6)
    gpu = FakeGpu(0, min_interval_s=0.0)
    proxy = AdmissionProxy(gated_upstream.url)
    proxy.start()
    backend = GpuBackend(GpuSet([gpu]), proxy=proxy, deadline=deadline, owns_proxy=True)
    try:
        backend.apply(KNOBS, ALL)
        assert backend.deadline is deadline and proxy._deadline is deadline
        assert deadline.serving == {"tp": 1, "replicas": 1, "base_clock_mhz": BASE, "max_num_batched_tokens": 8192}
        _wait(lambda: gpu.locked_sm_clock_mhz == BASE)
        t0 = time.monotonic()
        client, out = _stream(proxy.url)  # a one-token prompt: its prefill takes milliseconds at the base clock
        _wait(lambda: proxy.stats()["pending_first_token"] == 1)
        time.sleep(0.3)
        assert gpu.locked_sm_clock_mhz == BASE  # its boost time, about 0.6 s after its arrival, is not there yet
        governor = backend.governor
        assert governor is not None and t0 + 0.5 < governor.boost_at_s < time.monotonic() + 0.6
        _wait(lambda: gpu.locked_sm_clock_mhz == PREFILL)  # no first token by then: the prefill clock
        assert time.monotonic() - t0 >= 0.5 and governor.boosts == 1
        gated_upstream.release.set()
        client.join(timeout=10.0)
        _wait(lambda: gpu.locked_sm_clock_mhz == BASE)
        assert out and gpu.calls == [("lock", BASE), ("lock", PREFILL), ("lock", BASE)]
        backend.apply(dataclasses.replace(KNOBS, prefill_sm_clock_mhz=0), ["prefill_sm_clock_mhz"])
        assert proxy._deadline is None and proxy._on_pending is None  # no governor: no predictions
    finally:
        backend.close()


def test_the_controllers_calls_without_a_proxy_keep_the_base_clock(caplog: pytest.LogCaptureFixture) -> None:
    gpu = FakeGpu(0, min_interval_s=0.0)
    backend = GpuBackend(GpuSet([gpu]), proxy_hint=" (run the controller with --proxy-port)")
    try:
        with caplog.at_level(logging.WARNING, logger="greenrl.live.clock"):
            assert backend.apply(KNOBS, ALL) == ["sm_clock_mhz"]
            assert backend.apply(KNOBS, ["prefill_sm_clock_mhz"]) == []
        assert backend.governor is None and gpu.calls == [("lock", BASE)]  # at once, no governor
        said = [r.getMessage() for r in caplog.records if "prefill_sm_clock_mhz" in r.getMessage()]
        assert said == [
            f"would apply prefill_sm_clock_mhz={PREFILL}: no admission proxy (run the controller with --proxy-port)"
        ]
    finally:
        backend.close()


def test_a_direct_lock_the_rate_limit_ignored_is_not_applied_until_the_interval_passed() -> None:
    t = [0.0]
    # GPU 0 is rate-limited, GPU 1 is not: one GPU keeping its clock is enough to count as not applied
    gpus = GpuSet([FakeGpu(0, min_interval_s=10.0, clock=lambda: t[0]), FakeGpu(1, min_interval_s=0.0)])
    control = SmClockControl(gpus)
    try:
        assert control.apply(BASE, 0, ["sm_clock_mhz"]) == ["sm_clock_mhz"] and control.locked_mhz == BASE
        t[0] = 1.0
        assert control.apply(1500, 0, ["sm_clock_mhz", "prefill_sm_clock_mhz"]) == ["prefill_sm_clock_mhz"]
        assert control.locked_mhz == BASE and control.sm_clock_mhz == BASE
        assert [g.locked_sm_clock_mhz for g in gpus] == [BASE, 1500]
        t[0] = 10.0  # the interval has passed: the same request goes through
        assert control.apply(1500, 0, ["sm_clock_mhz"]) == ["sm_clock_mhz"]
        assert control.locked_mhz == 1500 and [g.locked_sm_clock_mhz for g in gpus] == [1500, 1500]
    finally:
        gpus.close()


# ------------------------------------------------------------------------------------------ the twin


def test_the_twin_takes_the_knob_at_start_and_over_http(tmp_path: Path) -> None:
    command = "{python} -m greenrl.twin --port {port} --scenario tiny --prefill-sm-clock-mhz 1980 --allow-control"
    command += " --log-level WARNING"
    launcher = ServerLauncher(command, port=0, log_path=tmp_path / "twin.log", health_timeout_s=90.0)
    launcher.start({})
    try:
        backend = TwinBackend(launcher.url)
        current = backend.read().requested
        assert current is not None and current.prefill_sm_clock_mhz == 1980
        off = dataclasses.replace(current, prefill_sm_clock_mhz=0)
        assert backend.apply(off, ["prefill_sm_clock_mhz"]) == ["prefill_sm_clock_mhz"]
        current = backend.read().requested
        assert current is not None and current.prefill_sm_clock_mhz == 0
        backend.close()
    finally:
        launcher.close()
    bad = [sys.executable, "-m", "greenrl.twin", "--scenario", "tiny", "--prefill-sm-clock-mhz", "1234"]
    proc = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=60.0, check=False)
    assert proc.returncode == 2 and "--prefill-sm-clock-mhz" in proc.stderr
