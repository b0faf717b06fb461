from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenrl.live.launcher import ServerLauncher
from greenrl.surrogate import Surrogate


@pytest.fixture(scope="session")
def surrogate() -> Surrogate:
    return Surrogate()


@pytest.fixture(scope="session")
def train_tiny_fleet() -> Callable[[str, Path], Path]:
    """Trains ``fleet`` (``default``, ``mixed``) with a few hundred steps of its centralized recipe: the run.

    The warm start by the planner, DAgger and PPO all run; validation and held-out days are their first 15
    minutes (every reported figure of a real run is whole days).
    """

    def train(fleet: str, out: Path) -> Path:
        from greenrl.fleet.learn import train_fleet
        from greenrl.train import agent_config

        cfg = agent_config("maskable_ppo", f"fleet-{fleet}") | {
            "total_timesteps": 128,
            "n_envs": 2,
            "n_steps": 32,
            "batch_size": 32,
            "warm_start_episodes": 2,
            "warm_start_epochs": 5,
            "val_duration_s": 900.0,
            "episode_s": 1800.0,
        }
        return train_fleet(fleet, cfg, out=out)

    return train


@pytest.fixture(scope="module")
def twin_launcher() -> Iterator[Callable[..., ServerLauncher]]:
    """Makes unstarted launchers of the twin: ``twin_launcher(scenario, time_scale, *extra_args)``.

    One home for how tests start a twin: controls allowed, warnings only, and a start-up wait of 90 s (start-up
    only: on a cold numba cache, beside a busy pytest worker, a twin has taken over 20 s to answer /health).
    Every launcher made is closed (its process group stopped) at the module's end.
    """
    made: list[ServerLauncher] = []

    def make(scenario: str, time_scale: float, *extra: str) -> ServerLauncher:
        command = " ".join(
            [
                "{python} -m greenrl.twin --port {port}",
                f"--scenario {scenario} --time-scale {time_scale:g} --allow-control --log-level WARNING",
                *extra,
            ]
        )
        launcher = ServerLauncher(command, port=0, health_timeout_s=90.0, stop_grace_s=10.0)
        made.append(launcher)
        return launcher

    try:
        yield make
    finally:
        for launcher in made:
            launcher.close()


@pytest.fixture(scope="module")
def twin(request: pytest.FixtureRequest, twin_launcher: Callable[..., ServerLauncher]) -> str:
    """A twin of the tiny scenario at the test module's ``TIME_SCALE``, started for the module (stopped by
    ``twin_launcher``). Modules that need another twin define their own ``twin``."""
    launcher = twin_launcher("tiny", float(request.module.TIME_SCALE), "--tick-ms", "5")
    launcher.start({})
    return launcher.url


class GatedUpstream:
    """A stand-in OpenAI server whose answer waits on ``release``: what the first token waits for.

    ``mode``: ``"stream"`` sends SSE headers and an empty chunk at once, then (once ``release`` is set,
    10 s at most) a token chunk, then (once ``finish`` is set: it is unless cleared) two more and
    ``[DONE]``; ``"error"`` streams like ``"stream"`` but sends vLLM's mid-stream error event
    (``data: {"error": {...}}``) after the first token chunk, then ``[DONE]``; ``"500"`` answers HTTP 500;
    ``"close"`` closes the connection without an answer.
    ``GET /health`` answers 200. ``posts`` counts the POSTs received.
    """

    def __init__(self) -> None:
        self.mode = "stream"
        self.release = threading.Event()
        self.finish = threading.Event()
        self.finish.set()
        self.posts = 0
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                gate.posts += 1
                if gate.mode == "close":
                    self.close_connection = True
                    return
                if gate.mode == "500":
                    body = json.dumps({"error": {"message": "boom", "code": 500}}).encode()
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(self._event({"choices": [{"index": 0, "text": ""}]}))  # no token yet
                self.wfile.flush()
                gate.release.wait(10.0)
                for k in range(3):
                    self.wfile.write(self._event({"choices": [{"index": 0, "text": "x"}]}))
                    self.wfile.flush()
                    if gate.mode == "error":
                        error = {"object": "error", "message": "engine died", "type": "InternalServerError"}
                        self.wfile.write(self._event({"error": {**error, "param": None, "code": 500}}))
                        break
                    if k == 0:
                        gate.finish.wait(10.0)
                self.wfile.write(b"data: [DONE]\n\n")

            @staticmethod
            def _event(obj: Any) -> bytes:
                return b"data: " + json.dumps(obj).encode() + b"\n\n"

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.finish.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5.0)


@pytest.fixture
def gated_upstream() -> Iterator[GatedUpstream]:
    """A ``GatedUpstream`` on a free loopback port, shut down after the test."""
    upstream = GatedUpstream()
    try:
        yield upstream
    finally:
        upstream.close()
