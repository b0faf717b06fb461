"""Fault drills on localhost, each bounded to a few seconds: slow, frozen, garbage and absurd ``/metrics``
against the controller (falls back within one interval, names the true reason, recovers), and the admission
proxy with its upstream killed, frozen or restarted and its clients leaving (no client waits past the stated
bound, no request is lost across a restart, the proxy's counters return to zero)."""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenrl.controller import ServingController, build_controller, build_parser
from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S
from greenrl.live.metrics import MetricsError, MetricsTimeout, scrape

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "default" / "maskable_ppo_s0"


def _page(n: int, running: float = 2.0, waiting: float = 1.0, kv: float = 0.3) -> bytes:
    """A plausible vLLM /metrics page; counters grow with ``n``."""
    lines = [
        f"vllm:num_requests_running {running!r}",
        f"vllm:num_requests_waiting {waiting!r}",
        f"vllm:kv_cache_usage_perc {kv!r}",
        f"vllm:prompt_tokens_total {100.0 * n}",
        f"vllm:generation_tokens_total {50.0 * n}",
        "vllm:num_preemptions_total 0.0",
        f"vllm:request_success_total {float(n)}",
    ]
    for name, bounds in (
        ("vllm:time_to_first_token_seconds", VLLM_TTFT_BUCKETS_S),
        ("vllm:inter_token_latency_seconds", VLLM_ITL_BUCKETS_S),
    ):
        lines.append(f"# TYPE {name} histogram")
        for le in [*(repr(float(b)) for b in bounds), "+Inf"]:
            lines.append(f'{name}_bucket{{le="{le}"}} {float(n)}')
        lines.append(f"{name}_count {float(n)}")
        lines.append(f"{name}_sum {0.01 * n}")
    return ("\n".join(lines) + "\n").encode()


_GARBAGE = bytes(range(256)) * 8 + b"\x00\xff{{{ vllm:num_requests_running }}}\n\x89PNG\r\n"
"""A /metrics page of garbage bytes: not UTF-8, not Prometheus text."""


class _Metrics(http.server.BaseHTTPRequestHandler):
    """``mode`` (on the server): good, drip (headers, then a byte every 0.4 s), drip_headers, frozen, absurd_*,
    garbage (a 200 of binary bytes, not Prometheus text)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: Any = self.server
        server.n += 1
        mode = server.mode
        try:
            if mode == "frozen":
                server.release.wait(5.0)
                return
            if mode == "drip_headers":
                for b in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"x" * 50:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    if server.release.wait(0.4):
                        return
                return
            body = {
                "good": _page(server.n),
                "drip": _page(server.n),
                "absurd_running": _page(server.n, running=-1e9),
                "absurd_waiting": _page(server.n, waiting=1e12),
                "absurd_kv": _page(server.n, kv=50.0),
                "garbage": _GARBAGE,
            }[mode]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "drip":
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    if server.release.wait(0.4):
                        return
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[Any]:
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    server.daemon_threads = True
    server.mode, server.n, server.release = "good", 0, threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def _controller(base: str) -> tuple[ServingController, io.StringIO]:
    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", base, "--interval-s", "1", "--gpus", "fake"]
    args = build_parser().parse_args([*argv, "--timeout-s", "1"])
    log = io.StringIO()
    return build_controller(args, log, sleep=lambda s: False), log


@pytest.mark.parametrize("mode", ["drip", "drip_headers", "frozen"])
def test_a_slow_metrics_page_times_out_as_a_whole(metrics_server: Any, mode: str) -> None:
    metrics_server.mode = mode
    t0 = time.monotonic()
    with pytest.raises(MetricsTimeout, match="timed out"):
        scrape(f"http://127.0.0.1:{metrics_server.server_port}", timeout_s=1.0)
    assert time.monotonic() - t0 < 1.8


@pytest.mark.parametrize("mode", ["absurd_running", "absurd_waiting", "absurd_kv"])
def test_an_absurd_metrics_page_is_refused(metrics_server: Any, mode: str) -> None:
    metrics_server.mode = mode
    with pytest.raises(MetricsError, match="absurd"):
        scrape(f"http://127.0.0.1:{metrics_server.server_port}", timeout_s=2.0)


def test_controller_falls_back_within_one_interval_names_the_reason_and_recovers(metrics_server: Any) -> None:
    ctl, log = _controller(f"http://127.0.0.1:{metrics_server.server_port}")
    try:
        assert ctl.run_interval()["mode"] == "priming"
        record = ctl.run_interval()
        assert record["mode"] == "applied", record
        for mode, reason in [
            ("drip", "metrics_timeout"),
            ("frozen", "metrics_timeout"),
            ("garbage", "metrics_invalid"),
            ("absurd_running", "metrics_invalid"),
            ("absurd_waiting", "metrics_invalid"),
            ("absurd_kv", "metrics_invalid"),
        ]:
            metrics_server.mode = mode
            t0 = time.monotonic()
            record = ctl.run_interval()
            took = time.monotonic() - t0
            assert record["mode"] == "fallback" and record["fallback_reason"] == reason, (mode, record)
            assert took < ctl.interval_s + 0.8, (mode, took)  # within one interval (deadline 1 s)
            assert record["knobs"]["sm_clock_mhz"] == 1980  # the low clock is not kept
        metrics_server.mode = "good"
        modes = [ctl.run_interval()["mode"] for _ in range(2)]
        assert modes[-1] == "applied" and ctl.failures == 0
    finally:
        ctl.close()
    reasons = [r.get("fallback_reason") for r in map(json.loads, log.getvalue().splitlines())]
    assert "policy_invalid" not in reasons


def test_stop_during_a_frozen_scrape_returns_within_the_deadline(metrics_server: Any) -> None:
    ctl, _ = _controller(f"http://127.0.0.1:{metrics_server.server_port}")
    ctl.run_interval()
    metrics_server.mode = "frozen"
    done = threading.Event()

    def loop() -> None:
        ctl.run()
        done.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    ctl.stop()
    assert done.wait(3.0), "run() did not return"
    assert time.monotonic() - t0 < 1.8
    ctl.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the proxy forwards only the serving API


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An upstream that answers 200 to everything and records each method and path."""

    def _answer(self) -> None:
        server: Any = self.server
        server.seen.append((self.command, self.path))
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        pass


def _request(url: str, method: str, body: bytes | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5.0) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_proxy_forwards_only_the_serving_api() -> None:
    from greenrl.live.proxy import AdmissionProxy

    upstream: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    upstream.daemon_threads, upstream.seen = True, []
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with AdmissionProxy(f"http://127.0.0.1:{upstream.server_port}") as proxy:
            refused = [
                ("POST", "/greenrl/knobs", b'{"sm_clock_mhz": 345}'),
                ("GET", "/greenrl/state", None),
                ("POST", "/sleep", b"{}"),
                ("POST", "/reset_prefix_cache", b"{}"),
                ("POST", "/v1/load_lora_adapter", b"{}"),
                ("DELETE", "/v1/models", None),
                ("GET", "/v1/models/../greenrl/state", None),
            ]
            for method, path, body in refused:
                status, text = _request(proxy.url + path, method, body)
                assert status == 404 and json.loads(text)["error"]["code"] == 404, (method, path)
            for method, path in [
                ("GET", "/v1/models"),
                ("GET", "/health"),
                ("GET", "/metrics"),
                ("GET", "/v1/models/m"),
            ]:
                assert _request(proxy.url + path, method)[0] == 200, path
            assert _request(proxy.url + "/v1/completions", "POST", b'{"prompt": "a", "max_tokens": 1}')[0] == 200
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert [p for _, p in upstream.seen] == ["/v1/models", "/health", "/metrics", "/v1/models/m", "/v1/completions"]


def test_the_twin_serves_knob_changes_and_remote_hosts_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:

    from greenrl.env.scenario import load_scenario
    from greenrl.twin.cli import main as twin_main
    from greenrl.twin.inprocess import serving_in_thread
    from greenrl.twin.livesim import LiveSim
    from greenrl.twin.server import TwinServer

    with pytest.raises(SystemExit) as exc:
        twin_main(["--host", "0.0.0.0", "--port", "0"])
    assert exc.value.code == 2 and "--allow-remote" in capsys.readouterr().err
    sim = LiveSim.from_scenario(load_scenario("tiny").name, 10, {})
    for allow, expected in ((False, 403), (True, 200)):
        with serving_in_thread(TwinServer(sim, model_name="m", port=0, allow_control=allow)) as server:
            status, body = _request(f"http://127.0.0.1:{server.port}/greenrl/knobs", "POST", b'{"sm_clock_mhz": 1005}')
            assert status == expected, body
            if not allow:
                assert b"--allow-control" in body


# ------------------------------------------------------------------ the proxy: upstream killed or frozen, clients leave


class _Frozen:
    """An upstream that accepts connections, reads requests and never answers; counts connections open."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open = 0
        self.accepted = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.open += 1
                self.accepted += 1
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self.stopped.is_set():
                try:
                    if not conn.recv(65536):
                        break  # the proxy closed its side
                except TimeoutError:
                    continue
                except OSError:
                    break
        with self._lock:
            self.open -= 1

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


def _post_raw(url: str, body: dict[str, Any]) -> socket.socket:
    """Send a completion request on a raw socket (the test decides when the client leaves)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)), timeout=5.0)
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    s.sendall(head.encode() + data)
    return s


def _until(pred: Any, timeout_s: float) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout_s, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - t0


def _idle(stats: dict[str, Any]) -> bool:
    return stats["in_flight"] == 0 and stats["queued"] == 0 and stats["pending_first_token"] == 0


@pytest.mark.parametrize("upstream_kind", ["frozen", "killed"])
def test_a_waiting_client_hears_the_truth_within_max_wait(upstream_kind: str) -> None:
    from greenrl.live.proxy import AdmissionProxy

    frozen = _Frozen()
    url = frozen.url
    if upstream_kind == "killed":
        frozen.close()  # nothing listens any more: every attempt is refused
    try:
        with AdmissionProxy(url, cap=2, max_wait_s=1.0, health_poll_s=0.05, connect_timeout_s=0.5) as proxy:
            t0 = time.monotonic()
            status, text = _request(proxy.url + "/v1/completions", "POST", b'{"prompt": "a", "max_tokens": 3}')
            waited = time.monotonic() - t0
            assert status == 504 and json.loads(text)["error"]["code"] == 504, text
            assert waited < 1.0 + 0.6
            _until(lambda: _idle(proxy.stats()), 1.0)
            stats = proxy.stats()
            assert stats["errors"] == 1 and stats["arrived"] == 1
            if upstream_kind == "frozen":
                _until(lambda: frozen.open == 0, 2.0)  # the upstream request was cancelled
    finally:
        frozen.close()


def test_clients_that_leave_are_dropped_with_their_upstream_requests() -> None:
    from greenrl.live.proxy import AdmissionProxy

    frozen = _Frozen()
    try:
        with AdmissionProxy(frozen.url, cap=1, max_wait_s=60.0, watch_s=0.05) as proxy:
            clients = [_post_raw(proxy.url, {"prompt": "a b c", "max_tokens": 5, "stream": True}) for _ in range(3)]
            _until(lambda: proxy.stats()["arrived"] == 3 and frozen.open == 1, 3.0)
            stats = proxy.stats()
            assert stats["in_flight"] == 1 and stats["queued"] == 2 and stats["pending_first_token"] == 3
            for c in clients:
                c.close()
            took = _until(lambda: _idle(proxy.stats()), 2.0)
            assert took < 1.0
            assert proxy.stats()["cancelled"] == 3
            _until(lambda: frozen.open == 0, 2.0)  # the proxy closed its upstream request too
    finally:
        frozen.close()


def test_a_client_leaving_a_frozen_stream_is_dropped(gated_upstream: Any) -> None:
    from greenrl.live.proxy import AdmissionProxy

    with AdmissionProxy(gated_upstream.url, cap=4, watch_s=0.05) as proxy:
        client = _post_raw(proxy.url, {"prompt": "a b", "max_tokens": 5, "stream": True})
        assert client.recv(100).startswith(b"HTTP/1.1 200")  # headers and an empty chunk; then nothing
        assert proxy.stats()["in_flight"] == 1
        client.close()
        _until(lambda: _idle(proxy.stats()) and proxy.stats()["decoding"] == 0, 2.0)
        assert proxy.stats()["cancelled"] == 1


# ------------------------------------------------------------------ the proxy: upstream restarted


class _Restartable:
    """An upstream on a fixed port that can die and come back, like a server restarted.

    A completion streams 3 one-token chunks and ``[DONE]`` (``served`` counts them, per life). While
    ``hold`` is set a completion is read and held, unanswered, until ``stop``: then its connection closes
    without an answer, as when the server dies with requests inside it. ``GET /health`` answers 200.
    """

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.hold = False
        self.posts = self.served = 0
        self.dying = threading.Event()
        self.server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.posts += 1
                if owner.hold:
                    owner.dying.wait(5.0)
                    self.close_connection = True  # died with the request inside: no answer
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for _ in range(3):
                    self.wfile.write(b'data: {"choices": [{"index": 0, "text": "x"}]}\n\n')
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                owner.served += 1

            def log_message(self, *args: Any) -> None:
                pass

        self.dying.clear()
        self.posts = self.served = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)  # reuses the address
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Die: stop listening (connections are refused), then drop the requests held inside."""
        self.server.shutdown()
        self.server.server_close()
        self.dying.set()
        assert self._thread is not None
        self._thread.join(5.0)


def test_no_request_is_lost_while_the_upstream_restarts() -> None:
    """Issue 18's drill: the server dies with 4 requests inside it and 2 queued in the proxy, stays down
    0.5 s, and comes back on the same port within the retry window: every client gets its whole stream."""
    from greenrl.live.proxy import AdmissionProxy

    n, cap, down_s, max_wait_s = 6, 4, 0.5, 4.0
    upstream = _Restartable(_free_port())
    upstream.hold = True
    upstream.start()
    results: list[tuple[int, bytes, float] | None] = [None] * n
    body = json.dumps({"prompt": "a b", "max_tokens": 3, "stream": True}).encode()
    proxy = AdmissionProxy(
        upstream.url,
        cap=cap,
        retry_wait_s=3.0,
        max_wait_s=max_wait_s,
        connect_timeout_s=0.5,
        health_poll_s=0.05,
        watch_s=0.05,
    )
    try:
        with proxy:

            def client(i: int) -> None:
                t0 = time.monotonic()
                status, text = _request(proxy.url + "/v1/completions", "POST", body)
                results[i] = (status, text, time.monotonic() - t0)

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
            for t in threads:
                t.start()
            _until(lambda: upstream.posts == cap and proxy.stats()["queued"] == n - cap, 3.0)
            upstream.stop()  # dies: 4 requests inside it (no byte sent yet), 2 waiting in the proxy for room
            _until(lambda: proxy.stats()["retried"] == n, 2.0)  # each failed once and waits for /health
            time.sleep(down_s)
            stats = proxy.stats()
            assert stats["in_flight"] == 0 and stats["queued"] == n and stats["finished"] == stats["errors"] == 0
            upstream.hold = False
            upstream.start()  # back on the same port, within the retry window
            for t in threads:
                t.join(max_wait_s + 2.0)
            assert not any(t.is_alive() for t in threads), "a client is still waiting"
            for i, result in enumerate(results):
                assert result is not None, i
                status, text, waited = result
                assert status == 200, (i, status, text[:300])
                assert text.count(b'"text": "x"') == 3 and text.endswith(b"data: [DONE]\n\n"), (i, text)
                assert waited < max_wait_s, (i, waited)  # no one waited past the stated bound (nor got a 504)
            _until(lambda: _idle(proxy.stats()) and proxy.stats()["decoding"] == 0, 1.0)
            stats = proxy.stats()
            assert stats["arrived"] == stats["finished"] == n, stats
            assert stats["errors"] == stats["cancelled"] == 0 and stats["retried"] == n, stats
            assert upstream.served == upstream.posts == n  # each sent once to the restarted server: none twice
    finally:
        upstream.stop()
