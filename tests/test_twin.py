"""The digital twin: LiveSim without HTTP, the vLLM-compatible server as a subprocess, metrics parsing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S
from greenrl.errors import InputError
from greenrl.sim import SimConfig
from greenrl.sim import kernel as K
from greenrl.twin import CapacityError, LiveSim, TwinServer, prompt_token_count, render_metrics, serving_in_thread

ROOT = Path(__file__).resolve().parents[1]
TIME_SCALE = 20.0


@pytest.fixture(scope="module")
def tiny_config() -> SimConfig:
    from greenrl.env.scenario import load_scenario
    from greenrl.env.serving_env import build_node

    return build_node(load_scenario("tiny")).config


# ------------------------------------------------------------------------------------------ LiveSim


def test_live_sim_tokens_appear_and_conserve(tiny_config: SimConfig) -> None:
    sim = LiveSim(tiny_config, capacity=64)
    rids = [sim.inject(100, 20), sim.inject(50, 30)]
    assert sim.progress(rids[0]).state == "pending"
    sim.advance_to(0.05)
    mid = [sim.progress(r) for r in rids]
    assert all(p.generated >= 1 for p in mid)
    rids.append(sim.inject(10, 5))  # arrives live, at the simulated now
    assert sim.progress(rids[2]).arrival_s == pytest.approx(sim.now_s)
    sim.advance_to(5.0)
    done = [sim.progress(r) for r in rids]
    assert [p.state for p in done] == ["finished"] * 3
    assert [p.generated for p in done] == [20, 30, 5]
    assert all(p.first_token_at_s >= p.arrival_s and p.last_token_at_s >= p.first_token_at_s for p in done)
    counts = sim.node.state_counts()
    assert counts["arrived"] == 3 == counts["finished"] + counts["rejected"] + counts["running"] + counts["waiting"]
    tot = sim.totals
    assert tot.generation_tokens == 55 == int(sim.node.req_i[:, K.RI_GENERATED].sum())
    assert tot.prompt_tokens == 160
    assert tot.ttft_hist.sum() == 3 and tot.itl_hist.sum() == 55 - 3
    assert sim.energy_j() > 0


def test_live_sim_arrivals_stay_sorted_capacity_and_abort(tiny_config: SimConfig) -> None:
    sim = LiveSim(tiny_config, capacity=3)
    sim.advance_to(1.0)
    a = sim.inject(10, 2000, at_s=0.5)  # never in the simulated past
    assert sim.progress(a).arrival_s == pytest.approx(1.0)
    b = sim.inject(10, 10, at_s=3.0)
    c = sim.inject(10, 10, at_s=2.0)  # never before an earlier injection
    assert sim.progress(c).arrival_s == pytest.approx(3.0) == sim.progress(b).arrival_s
    with pytest.raises(CapacityError):
        sim.inject(1, 1)
    with pytest.raises(InputError):
        LiveSim(tiny_config, capacity=3).inject(0, 5)
    sim.advance_to(1.1)
    generated = sim.progress(a).generated
    assert 0 < generated < 2000
    sim.abort(a)
    sim.advance_to(1.2)
    p = sim.progress(a)
    assert p.state == "finished" and p.generated <= generated + 1


def test_live_sim_knobs(tiny_config: SimConfig) -> None:
    sim = LiveSim(tiny_config, capacity=4)
    assert sim.apply(sm_clock_mhz=1005).sm_clock_mhz == 1005
    sim.advance_to(1.0)  # the clock latency (0.05 s) has passed
    assert sim.knobs.sm_clock_mhz == 1005
    with pytest.raises(InputError):
        sim.apply(sm_clock_mhz=7)
    with pytest.raises(InputError):
        sim.apply(colour=3)


def test_prompt_token_count() -> None:
    assert prompt_token_count("a b  c\n d") == 2  # 9 characters: about 1 token per 4
    assert prompt_token_count("x" * 400) == 100
    assert prompt_token_count("") == 1
    assert prompt_token_count([5, 6]) == 2
    assert prompt_token_count([[5, 6, 7]]) == 3
    assert prompt_token_count(["x y z"]) == 1
    for bad in ([], [1.5], ["a", "b"], None, 3):
        with pytest.raises(InputError):
            prompt_token_count(bad)


# ------------------------------------------------------------------------------------------ metrics


def test_render_parse_roundtrip_and_diff(tiny_config: SimConfig) -> None:
    from greenrl.live.metrics import diff, parse

    sim = LiveSim(tiny_config, capacity=8)
    first = parse(render_metrics(sim, "m"))
    assert first.generation_tokens == 0 and first.missing == ()
    sim.inject(64, 40)
    sim.advance_to(2.0)
    cur = parse(render_metrics(sim, 'we"ird\\name'))
    assert cur.generation_tokens == 40 and cur.prompt_tokens == 64 and cur.requests_finished == 1
    np.testing.assert_array_equal(cur.ttft_hist, sim.totals.ttft_hist)
    np.testing.assert_array_equal(cur.itl_hist, sim.totals.itl_hist)
    assert cur.ttft_hist.shape == (len(VLLM_TTFT_BUCKETS_S) + 1,)
    assert cur.itl_hist.shape == (len(VLLM_ITL_BUCKETS_S) + 1,)
    assert cur.ttft_sum_s == pytest.approx(sim.totals.ttft_sum_s)
    d = diff(first, cur)
    assert d.generation_tokens == 40 and d.itl_count == 39
    # a restarted server: counters start again from zero
    reset = diff(cur, first)
    assert reset.generation_tokens == 0 and reset.ttft_count == 0


OLD_VLLM = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 2
vllm:num_requests_running{model_name="b"} 1
vllm:num_requests_waiting{model_name="a"} 4
vllm:gpu_cache_usage_perc{model_name="a"} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="a"} 100
vllm:time_per_output_token_seconds_bucket{model_name="a",le="0.01"} 3
vllm:time_per_output_token_seconds_bucket{model_name="a",le="0.025"} 5
vllm:time_per_output_token_seconds_bucket{model_name="a",le="+Inf"} 9
vllm:time_per_output_token_seconds_sum{model_name="a"} 0.5
vllm:time_per_output_token_seconds_count{model_name="a"} 9
"""


def test_metric_name_aliases() -> None:
    from greenrl.live.metrics import parse

    m = parse(OLD_VLLM)
    assert (m.running, m.waiting, m.kv_cache_usage_frac, m.generation_tokens) == (3, 4, 0.25, 100)
    assert m.itl_hist[0] == 3 and m.itl_hist[1] == 2 and m.itl_hist[-1] == 4 and m.itl_count == 9
    assert m.itl_sum_s == 0.5
    assert "ttft" in m.missing and "preemptions" in m.missing


TWO_ENGINES = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 5.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.6
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 1000.0
vllm:prompt_tokens_total{engine="1",model_name="m"} 500.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 200.0
vllm:generation_tokens_total{engine="1",model_name="m"} 300.0
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 1.0
vllm:num_preemptions_total{engine="1",model_name="m"} 2.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 4.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 6.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="m"} 7.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="m"} 1.0
vllm:request_success_total{engine="1",finished_reason="stop",model_name="m"} 2.0
vllm:request_success_total{engine="1",finished_reason="length",model_name="m"} 3.0
vllm:request_success_total{engine="1",finished_reason="abort",model_name="m"} 9.0
vllm:request_success_total{engine="1",finished_reason="error",model_name="m"} 0.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 6.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 6.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 3.0
"""


def test_two_data_parallel_engines_combine() -> None:
    """vLLM's own names and labels, two engines: counts summed, KV usage the mean, aborts not finished."""
    from greenrl.live.metrics import parse

    m = parse(TWO_ENGINES)
    assert (m.running, m.waiting) == (8, 1)
    assert m.kv_cache_usage_frac == pytest.approx(0.6)  # not 1.2: the mean over engines
    assert (m.prompt_tokens, m.generation_tokens, m.preemptions) == (1500, 500, 3)
    assert m.requests_finished == 4 + 6 + 2 + 3  # stop + length; abort and error left out
    assert m.ttft_count == 10 and m.ttft_hist[0] == 1 and m.ttft_sum_s == 5.0
    uneven = parse(TWO_ENGINES.replace('perc{engine="1",model_name="m"} 0.6', 'perc{engine="1",model_name="m"} 0.2'))
    assert uneven.kv_cache_usage_frac == pytest.approx(0.4)


def test_twin_metrics_carry_vllm_labels(tiny_config: SimConfig) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    sim = LiveSim(tiny_config, capacity=8)
    sim.inject(64, 40)
    sim.advance_to(2.0)
    samples = [s for f in text_string_to_metric_families(render_metrics(sim, "m")) for s in f.samples]
    assert all(s.labels.get("engine") == "0" for s in samples)
    reasons = {s.labels["finished_reason"]: s.value for s in samples if s.name == "vllm:request_success_total"}
    assert reasons == {"stop": 0.0, "length": 1.0, "abort": 0.0}


@pytest.mark.parametrize("text", ["garbage {{{ not metrics", "", "some_other_metric 1\n", "<html>oops</html>"])
def test_garbage_metrics_raise(text: str) -> None:
    from greenrl.live.metrics import MetricsError, parse

    with pytest.raises(MetricsError):
        parse(text)


def test_unreachable_metrics_raise() -> None:
    from greenrl.live.metrics import MetricsError, scrape

    with pytest.raises(MetricsError, match="unreachable"):
        scrape(f"http://127.0.0.1:{_free_port()}/metrics", timeout_s=2.0)


# ------------------------------------------------------------------------------------------ HTTP helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open(req: str | urllib.request.Request, timeout_s: float) -> tuple[int, bytes]:
    """The status and body of a request, an error status included."""
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    return _open(url, timeout_s)


def _post(url: str, body: dict[str, Any], timeout_s: float = 10.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    return _open(urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers), timeout_s)


def _stream(url: str, body: dict[str, Any], timeout_s: float = 15.0) -> dict[str, Any]:
    """Send a streaming completion; returns the token chunks' arrival times (s after sending) and the rest."""
    req = urllib.request.Request(
        url, data=json.dumps({**body, "stream": True}).encode(), headers={"Content-Type": "application/json"}
    )
    t0 = time.monotonic()
    times: list[float] = []
    chunks: list[dict[str, Any]] = []
    done = False
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for raw in r:
            line = raw.decode().strip()
            if not line:
                continue
            assert line.startswith("data: ")
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            chunks.append(chunk)
            if chunk["choices"]:
                times.append(time.monotonic() - t0)
    return {"times": times, "chunks": chunks, "done": done}


# ------------------------------------------------------------------------------------------ the twin process


@pytest.fixture(scope="module")
def twin() -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "greenrl.twin", "--port", str(port), "--scenario", "tiny", "--allow-control"]
    cmd += ["--time-scale", str(TIME_SCALE), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15.0
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"twin exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if _get(f"{base}/health", timeout_s=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("twin did not answer /health within 15 s")
            time.sleep(0.1)
        yield base
        # a clean shutdown on SIGTERM, even with a stream still open
        opened = threading.Event()

        def hold_stream() -> None:
            try:
                req = urllib.request.Request(
                    f"{base}/v1/completions",
                    data=json.dumps({"prompt": "x", "max_tokens": 100_000, "stream": True}).encode(),
                )
                with urllib.request.urlopen(req, timeout=10) as r:
                    opened.set()
                    for _ in r:
                        pass
            except OSError:
                pass
            finally:
                opened.set()

        holder = threading.Thread(target=hold_stream, daemon=True)
        holder.start()
        opened.wait(5.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10.0) == 0
        holder.join(5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)
        if proc.stderr:
            proc.stderr.close()


def test_twin_health_models_and_errors(twin: str) -> None:
    assert _get(f"{twin}/health") == (200, b"")
    status, body = _get(f"{twin}/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "llama-3.1-8b"
    assert _get(f"{twin}/nope")[0] == 404
    assert _post(f"{twin}/v1/completions", {"prompt": "hi", "max_tokens": 0})[0] == 400
    assert _post(f"{twin}/v1/completions", {"prompt": "hi", "model": "other"})[0] == 404
    status, body = _post(f"{twin}/v1/completions", {"prompt": "hi", "max_tokens": 10_000_000})
    assert status == 400 and b"maximum context length" in body
    status, body = _post(f"{twin}/v1/completions", {"prompt": [1, 2, 3, 4], "max_tokens": 7})
    assert status == 200
    out = json.loads(body)
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert out["choices"][0]["finish_reason"] == "length"


def test_twin_streams_timed_tokens_and_metrics(twin: str) -> None:
    from greenrl.live.metrics import diff, scrape

    before = scrape(twin, timeout_s=5.0)
    requests = [{"prompt": "word " * (50 * (k + 1)), "max_tokens": m} for k, m in enumerate((1200, 2000, 1600, 800))]
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(requests)

    def run(k: int) -> None:
        try:
            body = {**requests[k], "stream_options": {"include_usage": True}}
            results[k] = _stream(f"{twin}/v1/completions", body)
        except BaseException as err:  # noqa: BLE001 - reported below
            results[k] = err

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15.0)
    spans = 0.0
    for req, res in zip(requests, results, strict=True):
        assert isinstance(res, dict), res
        times = res["times"]
        assert len(times) == req["max_tokens"] and res["done"]
        assert res["chunks"][-2]["choices"][0]["finish_reason"] == "length"
        assert res["chunks"][-1]["usage"]["completion_tokens"] == req["max_tokens"]
        assert 0 < times[0] < 1.0 and all(b >= a for a, b in zip(times, times[1:], strict=False))
        spans += times[-1] - times[0]
    after = scrape(twin, timeout_s=5.0)
    d = diff(before, after)
    sent = sum(r["max_tokens"] for r in requests)
    assert d.generation_tokens >= sent
    assert d.ttft_count >= len(requests) and d.itl_count >= sent - len(requests)
    assert d.requests_finished >= len(requests)
    # the streams span the simulated inter-token time mapped to wall time (one driver tick of slack each)
    expected = d.itl_sum_s / TIME_SCALE
    assert expected > 0.5
    assert expected * 0.7 - 0.1 <= spans <= expected * 1.5 + 0.3, (spans, expected)


def test_twin_knobs_and_state(twin: str) -> None:
    status, body = _get(f"{twin}/greenrl/state")
    state0 = json.loads(body)
    assert status == 200 and state0["gpus"] == 2 and state0["energy_j"] > 0
    assert _post(f"{twin}/greenrl/knobs", {"sm_clock_mhz": 7})[0] == 400
    assert _post(f"{twin}/greenrl/knobs", {"bogus": 1})[0] == 400
    status, body = _post(f"{twin}/greenrl/knobs", {"sm_clock_mhz": 1005})
    assert status == 200 and json.loads(body)["requested_knobs"]["sm_clock_mhz"] == 1005
    deadline = time.monotonic() + 5.0
    while True:
        state = json.loads(_get(f"{twin}/greenrl/state")[1])
        if state["knobs"]["sm_clock_mhz"] == 1005:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["energy_j"] > state0["energy_j"] and state["sim_time_s"] > state0["sim_time_s"]
    assert sum(state["energy_per_gpu_j"]) == pytest.approx(state["energy_j"])


# ------------------------------------------------------------------------------------------ in-process server


def test_in_process_server_capacity_503(tiny_config: SimConfig) -> None:
    sim = LiveSim(tiny_config, capacity=1)
    with serving_in_thread(TwinServer(sim, model_name="m", time_scale=50.0, port=0)) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert _post(f"{base}/v1/completions", {"prompt": "a b", "max_tokens": 3})[0] == 200
        status, body = _post(f"{base}/v1/completions", {"prompt": "a b", "max_tokens": 3})
        assert status == 503 and b"capacity" in body
        assert _post(f"{base}/v1/completions", {"prompt": "a"}, timeout_s=5.0)[0] == 503
        # a malformed request line gets a 400 and the connection closes
        with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as s:
            s.sendall(b"NONSENSE\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
    with pytest.raises(InputError):
        TwinServer(sim, model_name="m", time_scale=0.0)


def test_twin_starts_at_given_knobs_and_names_the_bad_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from greenrl.twin import main

    sim = LiveSim.from_scenario("tiny", capacity=4, initial={"tp": 1, "max_num_seqs": 32, "sm_clock_mhz": 1395})
    assert (sim.knobs.tp, sim.knobs.replicas, sim.knobs.max_num_seqs, sim.knobs.sm_clock_mhz) == (1, 2, 32, 1395)
    assert LiveSim.from_scenario("tiny", capacity=4).knobs.tp == 2  # the scenario's initial knobs
    for flags, name in ((["--tp", "3"], "--tp"), (["--tp", "1", "--replicas", "3"], "--replicas")):
        with pytest.raises(SystemExit) as exc:
            main(["--scenario", "tiny", "--port", "0", *flags])
        assert exc.value.code == 2 and name in capsys.readouterr().err


@pytest.mark.parametrize(("sig", "stream"), [(signal.SIGTERM, True), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_signal_with_a_request_open_exits_0_without_a_traceback(sig: signal.Signals, stream: bool) -> None:
    """SIGTERM (or SIGINT) while a request is open: exit code 0 and no traceback, within seconds."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "greenrl.twin", "--port", "0", "--scenario", "tiny", "--time-scale", "1"]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "INFO"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        timer = threading.Timer(20.0, proc.kill)  # bounded: a twin that never prints its port is killed
        timer.start()
        line = proc.stdout.readline()
        timer.cancel()
        assert "listening on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        body = json.dumps({"prompt": [7] * 50, "max_tokens": 100_000, "ignore_eos": True, "stream": stream}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
            head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            s.sendall(head.encode() + body)
            seen = b""
            if stream:  # tokens are flowing when the signal comes
                while b"data: " not in seen:
                    chunk = s.recv(4096)
                    assert chunk, "the twin closed the stream before a token"
                    seen += chunk
            else:  # the whole answer is still being generated
                time.sleep(0.3)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10.0)
            while chunk := s.recv(65536):  # the open request was cut: the connection closes
                seen += chunk
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "CancelledError" not in err, err
        assert b"data: [DONE]" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5.0)
