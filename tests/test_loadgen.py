"""The load generator against the digital twin: exact prompt and output lengths, concurrency, stop, errors, CLI."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenrl.live.loadgen import LoadGenerator, RequestRecord, RequestSlo, main, summarize
from greenrl.live.loadgen.records import StreamTiming
from greenrl.live.metrics import scrape
from greenrl.workload import Trace

ROOT = Path(__file__).resolve().parents[1]
TIME_SCALE = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5.0) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def _trace(arrivals: list[float], prompts: list[int], outputs: list[int]) -> Trace:
    return Trace("test", np.array(arrivals), np.array(prompts), np.array(outputs), max(arrivals) + 1.0)


def _run(gen: LoadGenerator, deadline_s: float = 30.0) -> list[RequestRecord]:
    async def bounded() -> list[RequestRecord]:
        return await asyncio.wait_for(gen.run(), timeout=deadline_s)

    return asyncio.run(bounded())


# ------------------------------------------------------------------------------------------ against the twin


def test_exact_prompt_and_output_tokens(twin: str) -> None:
    prompts = [1, 2, 7, 100, 513, 1000, 2048, 33, 4, 300]
    outputs = [1, 2, 5, 40, 17, 3, 25, 60, 1, 9]
    arrivals = list(np.linspace(0.0, 5.0, len(prompts)))  # workload s: 0.5 wall s at TIME_SCALE
    before = scrape(twin)
    gen = LoadGenerator(twin, _trace(arrivals, prompts, outputs), time_scale=TIME_SCALE, request_timeout_s=20.0)
    records = sorted(_run(gen), key=lambda r: r.index)
    after = scrape(twin)
    assert [r.status for r in records] == ["ok"] * len(prompts), [r.error for r in records]
    assert [r.received_tokens for r in records] == outputs
    assert [r.prompt_tokens for r in records] == prompts
    assert after.prompt_tokens - before.prompt_tokens == sum(prompts)  # the twin counted each prompt exactly
    assert after.generation_tokens - before.generation_tokens == sum(outputs)
    for r, a in zip(records, arrivals, strict=True):
        assert r.sent_at_s >= a / TIME_SCALE - 1e-3  # never sent early
        assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s
        assert (r.mean_tbt_s is None) == (r.output_tokens == 1)
        assert r.http_status == 200 and r.error == ""
    assert gen.peak_in_flight <= len(prompts)


def test_concurrency_bound_holds_at_client_and_server(twin: str) -> None:
    n, cap = 12, 3
    trace = _trace([0.0] * n, [64] * n, [150] * n)  # all at once: the bound must hold them back
    gen = LoadGenerator(twin, trace, time_scale=TIME_SCALE, max_concurrency=cap, request_timeout_s=20.0)
    gen.start()
    server_peak = 0
    deadline = time.monotonic() + 40.0
    while not gen.done and time.monotonic() < deadline:
        state = _get_json(f"{twin}/greenrl/state")
        server_peak = max(server_peak, int(state["running"]) + int(state["waiting"]))
        time.sleep(0.01)
    records = gen.stop(timeout_s=10.0)
    assert gen.done, "the load generator did not finish within 40 s"
    assert len(records) == n and all(r.status == "ok" for r in records)
    assert gen.peak_in_flight == cap
    assert 1 <= server_peak <= cap
    sent = sorted(r.sent_at_s for r in records)
    assert sent[cap] > sent[0] + 0.01  # the (cap+1)-th request waited for a free slot
    assert gen.in_flight == 0


def test_stop_cancels_in_flight_and_returns_fast(twin: str) -> None:
    trace = _trace([0.0, 0.0, 10_000.0], [10, 10, 10], [100_000, 100_000, 5])  # long streams, one far arrival
    gen = LoadGenerator(twin, trace, time_scale=TIME_SCALE)
    gen.start()
    deadline = time.monotonic() + 10.0
    while len(gen.sent()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    t0 = time.monotonic()
    records = gen.stop(timeout_s=10.0)
    assert time.monotonic() - t0 < 5.0
    assert gen.done
    assert sorted(r.status for r in records) == ["cancelled", "cancelled"]
    assert all(0 < r.received_tokens < 100_000 for r in records)
    assert len(gen.sent()) == 2  # the far arrival was never sent


def test_errors_are_recorded_not_raised(twin: str) -> None:
    trace = _trace([0.0, 0.0], [5, 5], [3, 3])
    bad_model = LoadGenerator(twin, trace, model="no-such-model", time_scale=TIME_SCALE)
    records = _run(bad_model)
    assert [r.status for r in records] == ["http_error"] * 2
    assert all(r.http_status == 404 and "no-such-model" in r.error for r in records)
    nobody = f"http://127.0.0.1:{_free_port()}"
    down = LoadGenerator(nobody, trace, model="m", connect_timeout_s=1.0)
    records = _run(down)
    assert [r.status for r in records] == ["error"] * 2 and all(r.http_status is None for r in records)


def test_cli_writes_records_and_summary(twin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "records.jsonl"
    args = ["--url", twin, "--scenario", "tiny", "--window", "eval:0", "--time-scale", str(TIME_SCALE)]
    assert main([*args, "--duration-s", "4", "--max-concurrency", "16", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["sent"] == len(lines) >= 3
    assert summary["completed"] == sum(r["status"] == "ok" for r in lines) == len(lines)
    assert summary["output_tokens_received"] == sum(r["output_tokens"] for r in lines)
    assert all(r["arrival_s"] < 4.0 for r in lines)
    # at time scale 10, client-side latency is not a measurement: no figures, the reason, the histograms
    assert TIME_SCALE > 1 and summary["latency_measured"] is False
    assert summary["slo_attainment"] is summary["slo_met"] is summary["ttft_p50_s"] is summary["tbt_p99_s"] is None
    assert "vllm:time_to_first_token_seconds" in summary["latency_not_measured"]
    assert printed.err.startswith("note: client-side latency is not measured at --time-scale 10 > 1")
    with pytest.raises(SystemExit) as err:
        main([*args, "--window", "sideways"])
    assert err.value.code == 2


# ------------------------------------------------------------------------------------------ no server


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_chunk_token_counting() -> None:
    s = StreamTiming(t_send=0.0)
    s.feed(_event({"choices": [{"text": "ab"}], "usage": {"completion_tokens": 3}}), at=1.0)  # 3 tokens in one
    s.feed(_event({"choices": [{"text": "c"}], "usage": {"completion_tokens": 4}}), at=2.0)
    s.feed(_event({"choices": [], "usage": {"completion_tokens": 4}}), at=2.1)  # final usage: nothing new
    assert (s.received, s.ttft_s(), s.mean_tbt_s()) == (4, 1.0, pytest.approx(1.0 / 3))
    plain = StreamTiming(t_send=0.0)
    plain.feed(_event({"choices": [{"text": ""}]}), at=0.4)  # no text, no usage: no token yet
    for t in (0.5, 0.6, 0.7):
        plain.feed(_event({"choices": [{"text": " tok"}]}), at=t)  # no usage: one token per chunk
    plain.feed(_event({"choices": [], "usage": {"completion_tokens": 5}}), at=0.8)  # more than counted: the rest
    assert plain.received == 5 and plain.ttft_s() == 0.5 and plain.mean_tbt_s() == pytest.approx(0.3 / 4)
    assert not plain.sse.done and plain.sse.error is None
    plain.feed(b"data: [DONE]\r\n\r\n", at=0.9)
    assert plain.sse.done and plain.received == 5


def test_slo_and_summary() -> None:
    slo = RequestSlo.from_scenario("tiny")
    assert slo.ttft_slo_s(10) == pytest.approx(0.5)  # the floor
    assert slo.ttft_slo_s(100_000) > slo.ttft_slo_s(10_000) > 0.5  # a long prefill gets 5x its own time
    fast = RequestRecord(0, 0.0, 0.0, 10, 5, 5, 0.1, 0.01, 0.004, 0.1, "ok", 200, "")
    slow_tbt = RequestRecord(1, 0.0, 0.0, 10, 5, 5, 0.1, 0.01, 0.25, 0.1, "ok", 200, "")
    failed = RequestRecord(2, 0.0, 0.0, 10, 5, 0, 0.1, None, None, 0.1, "http_error", 400, "x")
    assert slo.met(fast) and not slo.met(slow_tbt, time_scale=0.5) and not slo.met(failed)
    assert not slo.met(slow_tbt)  # 0.25 s between tokens: over the 0.1 s bound
    s = summarize([fast, slow_tbt, failed], slo)
    assert (s["sent"], s["completed"], s["failed"], s["slo_met"]) == (3, 2, 1, 1)
    assert s["ttft_p50_s"] == pytest.approx(0.01) and s["tbt_p99_s"] == pytest.approx(0.24754)
    assert s["slo_attainment"] == pytest.approx(1 / 3) and s["latency_measured"] is True
    assert "latency_not_measured" not in s


def test_no_client_side_latency_or_slo_above_time_scale_1() -> None:
    slo = RequestSlo.from_scenario("tiny")
    fast = RequestRecord(0, 0.0, 0.0, 10, 5, 5, 0.1, 0.01, 0.004, 0.1, "ok", 200, "")
    failed = RequestRecord(1, 0.0, 0.0, 10, 5, 0, 0.1, None, None, 0.1, "http_error", 400, "x")
    s = summarize([fast, failed], slo, time_scale=30.0)
    assert (s["sent"], s["completed"], s["failed"], s["time_scale"]) == (2, 1, 1, 30.0)  # counts stay
    assert s["latency_measured"] is False
    for key in ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "slo_met", "slo_attainment"):
        assert s[key] is None, key
    reason = s["latency_not_measured"]
    assert "--time-scale 30 > 1" in reason and "vllm:inter_token_latency_seconds" in reason
