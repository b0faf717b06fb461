"""The admission proxy in front of the digital twin: the cap, hold/drain, retries, pass-through and counters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenrl.errors import InputError
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.launcher import ServerLauncher
from greenrl.live.proxy import AdmissionProxy
from greenrl.live.tokens import approx_prompt_tokens
from greenrl.slo import Slo, SloJudge


def _flat_slo(ttft_s: float, tbt_mean_s: float) -> SloJudge:
    """The same TTFT bound for every prompt (no prefill multiple)."""
    return SloJudge(Slo(ttft_floor_s=ttft_s, ttft_prefill_multiple=0.0, tbt_mean_s=tbt_mean_s))


TWIN = "{python} -m greenrl.twin --port {port} --scenario tiny --time-scale 50 --tp {tp} --log-level WARNING"
KNOBS = {"tp": 2, "replicas": 1, "max_num_seqs": 256, "sm_clock_mhz": 1980}


def _start(log: Path) -> ServerLauncher:
    launcher = ServerLauncher(TWIN, port=0, log_path=log, health_timeout_s=90.0, stop_grace_s=5.0)
    launcher.start(KNOBS)
    return launcher


def _stop(launcher: ServerLauncher, pids: list[int]) -> None:
    launcher.stop()
    for pid in pids:  # every server started, by its pid: gone, or killed here
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    launcher = _start(tmp_path_factory.mktemp("twin") / "server.log")
    pids = [launcher.pid or 0]
    try:
        yield launcher.url
    finally:
        _stop(launcher, pids)


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    proxies: list[AdmissionProxy] = []

    def make(upstream: str, **kw: Any) -> AdmissionProxy:
        proxy = AdmissionProxy(upstream, **kw)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5.0) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _complete(url: str, body: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    """One completion through ``url``: status, tokens, usage, whether a stream ended with [DONE]."""
    req = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            if not body.get("stream"):
                out = json.loads(r.read())
                return {"status": r.status, "tokens": out["usage"]["completion_tokens"], "done": True}
            tokens, done, usage = 0, False, None
            for raw in r:
                line = raw.decode().strip()
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    tokens += bool(chunk["choices"])
                    usage = chunk.get("usage") or usage
            return {"status": r.status, "tokens": tokens, "done": done, "usage": usage}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "tokens": 0, "done": False, "body": err.read()}


def _run_all(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
    out: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(bodies)

    def one(k: int) -> None:
        try:
            out[k] = _complete(url, bodies[k])
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            out[k] = err

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40.0)
    assert not any(t.is_alive() for t in threads)
    return out


def _wait(pred: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ the cap


def test_cap_is_never_exceeded_and_every_queued_request_completes(twin: str, proxy_factory: Any) -> None:
    proxy = proxy_factory(twin, cap=2)
    bodies = [{"prompt": list(range(1, 20 + k)), "max_tokens": 150, "stream": k % 2 == 0} for k in range(10)]
    upstream_peak = [0]
    done = threading.Event()

    def watch() -> None:  # the twin's own view: requests running + waiting in the simulator
        while not done.is_set():
            state = json.loads(_get(f"{twin}/greenrl/state")[1])
            upstream_peak[0] = max(upstream_peak[0], state["running"] + state["waiting"])
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = _run_all(proxy.url, bodies)
    finally:
        done.set()
        watcher.join(timeout=5.0)
    assert all(isinstance(r, dict) and r["status"] == 200 and r["done"] and r["tokens"] == 150 for r in results)
    stats = proxy.stats()
    assert stats["max_in_flight"] == 2 and 1 <= upstream_peak[0] <= 2
    assert stats["arrived"] == stats["admitted"] == stats["finished"] == 10
    assert stats["in_flight"] == stats["queued"] == stats["errors"] == 0
    assert stats["prompt_tokens"] == sum(len(b["prompt"]) for b in bodies)  # token-id prompts: exact
    assert stats["output_tokens"] == 1500


def test_pause_set_cap_resume_and_drain(twin: str, proxy_factory: Any) -> None:
    proxy = proxy_factory(twin, cap=1)
    with pytest.raises(InputError):
        proxy.set_cap(0)
    proxy.pause()
    results: list[Any] = []
    sender = threading.Thread(
        target=lambda: results.extend(_run_all(proxy.url, [{"prompt": "a b c", "max_tokens": 20}] * 3)), daemon=True
    )
    sender.start()
    try:
        _wait(lambda: proxy.stats()["queued"] == 3)
        time.sleep(0.2)
        assert proxy.stats()["in_flight"] == 0  # held, not sent, not refused
        proxy.set_cap(3)
        assert proxy.stats()["in_flight"] == 0 and proxy.cap == 3  # still paused
        proxy.resume()
    finally:
        sender.join(timeout=40.0)
    assert [r["status"] for r in results] == [200] * 3 and proxy.stats()["max_in_flight"] <= 3
    # drain: True at once when idle; False while a long stream is in flight (admissions stay held)
    assert proxy.drain(1.0) is True and proxy.paused
    proxy.resume()
    long_one = threading.Thread(
        target=lambda: results.append(_complete(proxy.url, {"prompt": "x", "max_tokens": 6000, "stream": True})),
        daemon=True,
    )
    long_one.start()
    try:
        _wait(lambda: proxy.stats()["in_flight"] == 1)
        assert proxy.drain(0.05) is False and proxy.paused
        proxy.resume()
    finally:
        long_one.join(timeout=40.0)
    assert results[-1]["status"] == 200 and results[-1]["tokens"] == 6000


# ------------------------------------------------------------------------------------------ counters


def test_counters_and_slo_match_what_the_client_saw(twin: str, proxy_factory: Any) -> None:
    lenient = proxy_factory(twin, slo=_flat_slo(5.0, 1.0))
    strict = proxy_factory(twin, slo=_flat_slo(1e-6, 1e-6))
    text = "one two three four five six seven eight"  # 39 characters: the twin and the proxy count 10 tokens
    bodies = [
        {"prompt": text, "max_tokens": 30, "stream": True, "stream_options": {"include_usage": True}},  # usage
        {"prompt": text, "max_tokens": 30},  # non-streamed: usage in the body
        {"prompt": "x" * 40, "max_tokens": 30, "stream": True},  # no usage: about 1 token per 4 characters
        {"prompt": [1, 2, 3], "max_tokens": 30, "stream": True},  # token ids: exact
    ]
    for proxy in (lenient, strict):
        results = _run_all(proxy.url, bodies)
        assert all(isinstance(r, dict) and r["status"] == 200 and r["tokens"] == 30 for r in results)
        bad = _complete(proxy.url, {"prompt": "hi", "max_tokens": 0})  # the upstream's 400 passes through
        assert bad["status"] == 400 and b"max_tokens" in bad["body"]
    s1, s2 = lenient.stats(), strict.stats()
    for s in (s1, s2):
        assert s["arrived"] == 5 and s["finished"] == 4 and s["errors"] == 1 and s["cancelled"] == 0
        assert s["prompt_tokens"] == 10 + 10 + 10 + 3 + approx_prompt_tokens({"prompt": "hi"})
        # the twin's usage (first two) and the proxy's own count (the others) follow one rule
        assert s["prompt_tokens"] == sum(approx_prompt_tokens(b) for b in [*bodies, {"prompt": "hi"}])
        assert s["output_tokens"] == 120 and s["slo_judged"]
    assert (s1["slo_met"], s1["missed"]) == (4, 0)  # a 400 is the client's fault: not judged
    assert (s2["slo_met"], s2["missed"]) == (0, 4)
    status, body = _get(f"{lenient.url}/greenrl/proxy")
    assert status == 200 and json.loads(body) == lenient.stats()


def test_pass_through_endpoints(twin: str, proxy_factory: Any) -> None:
    proxy = proxy_factory(twin)
    assert _get(f"{proxy.url}/health") == (200, b"")
    status, body = _get(f"{proxy.url}/metrics")
    assert status == 200 and b"vllm:num_requests_running" in body
    status, body = _get(f"{proxy.url}/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "llama-3.1-8b"
    assert _get(f"{proxy.url}/nope")[0] == 404
    assert proxy.stats()["arrived"] == 0  # pass-through requests are not counted as arrivals
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_client_gone_mid_stream_is_counted_cancelled(twin: str, proxy_factory: Any) -> None:
    proxy = proxy_factory(twin)
    body = json.dumps({"prompt": "x", "max_tokens": 20000, "stream": True}).encode()
    req = urllib.request.Request(f"{proxy.url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10.0) as r:
        r.readline()
    _wait(lambda: proxy.stats()["cancelled"] == 1)
    stats = proxy.stats()
    assert stats["in_flight"] == 0 and stats["errors"] == 0 and stats["finished"] == 0


# ------------------------------------------------------------------------------------------ upstream failures


def test_upstream_down_requests_wait_and_retry_cut_stream_counts_as_error(tmp_path: Path, proxy_factory: Any) -> None:
    launcher = _start(tmp_path / "server.log")
    pids = [launcher.pid or 0]
    try:
        proxy = proxy_factory(launcher.url, slo=_flat_slo(5.0, 1.0), health_poll_s=0.05)
        long_body = {"prompt": "x", "max_tokens": 20000, "stream": True}
        cut: list[Any] = []
        streamer = threading.Thread(target=lambda: cut.extend(_run_all(proxy.url, [long_body])), daemon=True)
        streamer.start()
        _wait(lambda: proxy.stats()["in_flight"] == 1)
        time.sleep(0.1)  # tokens are flowing to the client
        launcher.stop()  # the server goes away under a live stream and before the next requests
        streamer.join(timeout=10.0)
        waiting: list[Any] = []
        sender = threading.Thread(
            target=lambda: waiting.extend(_run_all(proxy.url, [{"prompt": [1, 2], "max_tokens": 25}] * 3)), daemon=True
        )
        sender.start()
        _wait(lambda: proxy.stats()["retried"] >= 3)
        assert proxy.stats()["queued"] == 3  # waiting for the upstream, not failed
        launcher.start(KNOBS)
        pids.append(launcher.pid or 0)
        sender.join(timeout=40.0)
    finally:
        _stop(launcher, pids)
    assert len(cut) == 1 and isinstance(cut[0], dict) and not cut[0]["done"] and 0 < cut[0]["tokens"] < 20000
    assert [r["status"] for r in waiting] == [200] * 3 and all(r["tokens"] == 25 for r in waiting)
    stats = proxy.stats()
    assert stats["arrived"] == 4 and stats["finished"] == 3 and stats["errors"] == 1 and stats["missed"] == 1
    assert stats["slo_met"] == 3


def test_retries_are_bounded(proxy_factory: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    proxy = proxy_factory(f"http://127.0.0.1:{port}", max_retries=2, retry_wait_s=0.5, health_poll_s=0.05)
    t0 = time.monotonic()
    out = _complete(proxy.url, {"prompt": "a", "max_tokens": 3})
    assert out["status"] == 503 and b"retries" in out["body"] and time.monotonic() - t0 < 5.0
    # the upstream never became healthy: the 0.5 s budget ran out after the first wait
    assert proxy.stats()["errors"] == 1 and proxy.stats()["retried"] == 1
    assert _get(f"{proxy.url}/health")[0] == 502


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        AdmissionProxy("127.0.0.1:8000")
    with pytest.raises(InputError):
        AdmissionProxy("http://127.0.0.1:8000", cap=0)
    with pytest.raises(InputError):
        Slo(ttft_floor_s=0.0, tbt_mean_s=0.1)


# ------------------------------------------------------------------------------------------ pending first token


def _send_async(url: str, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.extend(_run_all(url, [body])), daemon=True)
    thread.start()
    return thread, out


class _Heard(list[tuple[int, float]]):
    """A pending listener recording ``(count, boost_at_s)``; ``counts`` lists the counts alone."""

    def __call__(self, count: int, boost_at_s: float) -> None:
        self.append((count, boost_at_s))

    @property
    def counts(self) -> list[int]:
        return [c for c, _ in self]


def test_pending_first_token_rises_on_arrival_and_falls_at_the_first_token(
    gated_upstream: Any, proxy_factory: Any
) -> None:
    heard = _Heard()
    proxy = proxy_factory(gated_upstream.url, cap=1)
    proxy.set_on_pending(heard)  # called at once with the count now
    proxy.pause()
    sender, out = _send_async(proxy.url, {"prompt": "a", "max_tokens": 3, "stream": True})
    _wait(lambda: proxy.stats()["queued"] == 1)
    assert proxy.stats()["pending_first_token"] == 1 and heard.counts == [0, 1]  # held in the proxy: pending
    proxy.resume()
    _wait(lambda: gated_upstream.posts == 1)
    time.sleep(0.1)  # the upstream sent its headers and a chunk without a token: still pending
    assert proxy.stats()["pending_first_token"] == 1 and proxy.stats()["in_flight"] == 1
    gated_upstream.finish.clear()
    gated_upstream.release.set()  # the first token, then the stream holds
    _wait(lambda: proxy.stats()["pending_first_token"] == 0)
    assert proxy.stats()["in_flight"] == 1 and heard.counts == [0, 1, 0]  # down at the first token, not at the end
    assert proxy.stats()["decoding"] == 1
    gated_upstream.finish.set()
    sender.join(timeout=10.0)
    _wait(lambda: proxy.stats()["finished"] == 1)
    assert out[0]["status"] == 200 and out[0]["done"] and proxy.stats()["output_tokens"] == 3
    assert heard.counts == [0, 1, 0] and proxy.stats()["pending_first_token"] == 0  # down once, at the first token
    # no predictor: "at once" while pending, "never" with none pending (the prefill clock whenever pending)
    assert heard == [(0, math.inf), (1, -math.inf), (0, math.inf)] and proxy.stats()["decoding"] == 0


@pytest.mark.parametrize("mode", ["500", "close"])
def test_pending_first_token_falls_once_when_the_upstream_fails(
    mode: str, gated_upstream: Any, proxy_factory: Any
) -> None:
    gated_upstream.mode = mode
    heard = _Heard()
    proxy = proxy_factory(gated_upstream.url, on_pending=heard, max_retries=1, retry_wait_s=0.5)
    out = _complete(proxy.url, {"prompt": "a", "max_tokens": 3, "stream": True})
    assert out["status"] == (500 if mode == "500" else 503)
    _wait(lambda: proxy.stats()["errors"] == 1)  # counted just after the answer went out
    assert heard.counts == [1, 0] and proxy.stats()["pending_first_token"] == 0
    assert gated_upstream.posts == (1 if mode == "500" else 2)  # "close": tried again once, then 503


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_policy(request: pytest.FixtureRequest) -> Iterator[str]:
    """The event loop the proxy runs on: asyncio's, or uvloop's (installed process-wide by some embedders,
    e.g. by importing guidellm), whose transports raise on a write after the client left."""
    if request.param == "asyncio":
        yield "asyncio"
        return
    uvloop = pytest.importorskip("uvloop")
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield "uvloop"
    finally:
        asyncio.set_event_loop_policy(old)


def test_pending_first_token_falls_when_the_client_leaves_before_it(
    loop_policy: str, gated_upstream: Any, proxy_factory: Any
) -> None:
    heard = _Heard()
    proxy = proxy_factory(gated_upstream.url, on_pending=heard)
    body = json.dumps({"prompt": "a", "max_tokens": 3, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) as s:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        s.sendall(head + body)
        _wait(lambda: gated_upstream.posts == 1)
        assert s.recv(100).startswith(b"HTTP/1.1 200")  # the empty chunk came: no token yet
    gated_upstream.release.set()  # the proxy writes the tokens to a closed socket: the client is gone
    _wait(lambda: proxy.stats()["cancelled"] == 1)
    assert heard.counts == [1, 0] and proxy.stats()["pending_first_token"] == 0


# ------------------------------------------------------------------------------------------ boost times


class _Recorder:
    """A boost-time predictor recording what the proxy asks; the k-th request boosts ``k x in_s`` after arrival."""

    def __init__(self, in_s: float) -> None:
        self.in_s = in_s
        self.calls: list[dict[str, Any]] = []

    def boost_at(self, arrived_at_s: float, prompt_tokens: int, **load: Any) -> float:
        self.calls.append({"arrived_at_s": arrived_at_s, "prompt_tokens": prompt_tokens, **load})
        return arrived_at_s + self.in_s * len(self.calls)


class _Spy:
    """Wraps a predictor, keeping ``(arrived_at_s, boost_at_s)`` of each call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.out: list[tuple[float, float]] = []

    def boost_at(self, arrived_at_s: float, prompt_tokens: int, **load: Any) -> float:
        boost_at_s = float(self.inner.boost_at(arrived_at_s, prompt_tokens, **load))
        self.out.append((arrived_at_s, boost_at_s))
        return boost_at_s


def _stream_body(prompt: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": 3, "stream": True}


def test_boost_times_are_predicted_from_the_load_the_proxy_sees(gated_upstream: Any, proxy_factory: Any) -> None:
    heard, rec = _Heard(), _Recorder(10.0)
    proxy = proxy_factory(gated_upstream.url, cap=2, on_pending=heard, deadline=rec)
    gated_upstream.finish.clear()  # a stream holds after its first token
    senders = [_send_async(proxy.url, _stream_body(list(range(1, 101))))[0]]  # A: 100 token ids
    _wait(lambda: gated_upstream.posts == 1)
    a = rec.calls[0]
    assert a["prompt_tokens"] == 100 and (a["tokens_ahead"], a["pairs_ahead"], a["decoding"]) == (0, 0.0, 0)
    assert a["decode_ctx_tokens"] == 0 and not a["must_wait"]
    assert heard[-1] == (1, a["arrived_at_s"] + 10.0)
    gated_upstream.release.set()  # A's first token
    _wait(lambda: proxy.stats()["decoding"] == 1)
    assert heard[-1] == (0, math.inf)
    gated_upstream.release.clear()  # the next ones wait for their first token
    senders.append(_send_async(proxy.url, _stream_body("x" * 400))[0])  # B: about 100 tokens of text
    _wait(lambda: gated_upstream.posts == 2)
    b = rec.calls[1]
    assert b["prompt_tokens"] == 100 and (b["tokens_ahead"], b["decoding"], b["decode_ctx_tokens"]) == (0, 1, 101)
    assert not b["must_wait"]  # A decodes with its prompt and one token event as context
    senders.append(_send_async(proxy.url, _stream_body(list(range(1, 51))))[0])  # C: 50 token ids
    _wait(lambda: proxy.stats()["queued"] == 1)
    c = rec.calls[2]
    assert (c["prompt_tokens"], c["tokens_ahead"], c["pairs_ahead"]) == (50, 100, 100 * 100 / 2)
    assert (c["decoding"], c["decode_ctx_tokens"], c["must_wait"]) == (1, 101, True)  # A and B fill the cap
    assert heard[-1] == (2, b["arrived_at_s"] + 20.0)  # the earliest boost time of the pending ones (B's)
    gated_upstream.release.set()
    gated_upstream.finish.set()
    for sender in senders:
        sender.join(timeout=10.0)
    _wait(lambda: proxy.stats()["finished"] == 3)
    assert heard[-1] == (0, math.inf) and proxy.stats()["decoding"] == 0 and len(rec.calls) == 3


def test_a_long_queue_ahead_boosts_at_once_a_lone_short_prompt_later(gated_upstream: Any, proxy_factory: Any) -> None:
    deadline = PrefillDeadline("llama-3.1-8b", "h100-sxm-80gb", 0.5)
    deadline.configure(tp=1, replicas=1, base_clock_mhz=1005)
    heard, spy = _Heard(), _Spy(deadline)
    proxy = proxy_factory(gated_upstream.url, on_pending=heard, deadline=spy)
    t0 = time.monotonic()
    senders = [_send_async(proxy.url, _stream_body(list(range(1, 21))))[0]]  # a lone 20-token prompt
    _wait(lambda: proxy.stats()["pending_first_token"] == 1)
    arrived_s, boost_s = spy.out[0]
    assert t0 <= arrived_s <= time.monotonic()  # the proxy's loop clock is time.monotonic
    assert arrived_s + 0.45 < boost_s < arrived_s + 0.5 and heard[-1] == (1, boost_s)  # a few ms of prefill
    senders += [_send_async(proxy.url, _stream_body(list(range(1, 8001))))[0] for _ in range(3)]
    _wait(lambda: proxy.stats()["pending_first_token"] == 4)
    senders.append(_send_async(proxy.url, _stream_body(list(range(1, 21))))[0])  # the same prompt, now behind them
    _wait(lambda: proxy.stats()["pending_first_token"] == 5)
    arrived_s, boost_s = spy.out[-1]
    assert boost_s == arrived_s  # 24,000 tokens ahead take longer than 0.5 s at the base clock: at once
    assert heard[-1] == (5, min(b for _, b in spy.out))
    gated_upstream.release.set()
    for sender in senders:
        sender.join(timeout=20.0)
    _wait(lambda: proxy.stats()["finished"] == 5)
    assert heard[-1] == (0, math.inf)


def test_a_failing_predictor_boosts_at_once(gated_upstream: Any, proxy_factory: Any) -> None:
    class Broken:
        def boost_at(self, *args: Any, **kw: Any) -> float:
            raise ValueError("no model")

    heard = _Heard()
    proxy = proxy_factory(gated_upstream.url, on_pending=heard, deadline=Broken())
    sender, out = _send_async(proxy.url, _stream_body("a"))
    _wait(lambda: proxy.stats()["pending_first_token"] == 1)
    assert heard[-1] == (1, -math.inf)  # logged; the request is served and the clock goes up as without a deadline
    gated_upstream.release.set()
    sender.join(timeout=10.0)
    assert out[0]["status"] == 200 and heard[-1] == (0, math.inf)


# ------------------------------------------------------------------------------------------ stream errors


def test_error_event_in_a_200_stream_counts_as_an_error_and_misses_the_slo(
    gated_upstream: Any, proxy_factory: Any
) -> None:
    gated_upstream.mode = "error"
    gated_upstream.release.set()
    proxy = proxy_factory(gated_upstream.url, slo=_flat_slo(ttft_s=60.0, tbt_mean_s=60.0))  # any timing meets it
    req = urllib.request.Request(
        f"{proxy.url}/v1/completions",
        data=json.dumps({"prompt": "a", "max_tokens": 3, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10.0) as r:
        assert r.status == 200
        events = [raw.decode().strip() for raw in r if raw.strip()]
    assert any('"error"' in e for e in events) and events[-1] == "data: [DONE]"  # relayed as it came
    _wait(lambda: proxy.stats()["errors"] == 1)
    stats = proxy.stats()
    assert (stats["finished"], stats["slo_met"], stats["missed"], stats["output_tokens"]) == (0, 0, 1, 0)
    assert stats["arrived"] == stats["errors"] + stats["finished"] + stats["cancelled"] + stats["in_flight"]


def test_a_clean_200_stream_through_the_same_upstream_is_finished(gated_upstream: Any, proxy_factory: Any) -> None:
    gated_upstream.release.set()
    proxy = proxy_factory(gated_upstream.url, slo=_flat_slo(ttft_s=60.0, tbt_mean_s=60.0))
    out = _complete(proxy.url, {"prompt": "a", "max_tokens": 3, "stream": True})
    assert out["status"] == 200 and out["done"]
    _wait(lambda: proxy.stats()["finished"] == 1)
    stats = proxy.stats()
    assert (stats["errors"], stats["slo_met"], stats["missed"]) == (0, 1, 0)


# ------------------------------------------------------------------------------------------ shutdown


def test_stop_with_a_stream_open_cuts_it_quietly(
    gated_upstream: Any, proxy_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = proxy_factory(gated_upstream.url)
    body = json.dumps({"prompt": "a", "max_tokens": 3, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) as s:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        s.sendall(head + body)
        assert s.recv(100).startswith(b"HTTP/1.1 200")  # the stream is open, waiting for its first token
        with caplog.at_level("DEBUG"):
            started = time.monotonic()
            proxy.stop()
        assert time.monotonic() - started < 5.0
        rest = b""
        while chunk := s.recv(65536):  # cut: the connection closes, without [DONE]
            rest += chunk
        assert b"[DONE]" not in rest
    assert proxy.stats()["cancelled"] == 1
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= 40 or "Traceback" in r.getMessage()]
    assert not noisy, [r.getMessage() for r in noisy]
