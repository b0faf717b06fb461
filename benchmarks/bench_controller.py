"""Controller overheads: one decision (policy forward pass) and one whole interval against a running twin.

Prints one JSON object: ``decision_latency_us`` (``ControllerPolicy.predict`` on a live-shaped
observation; target < 1 ms) and ``interval_overhead_ms`` (observe + decide + apply against the digital
twin on loopback, the interval's sleep excluded), each as median and p99. The twin (scenario
``default``, time scale 30) is started on a free port and stopped by its PID.
Run: ``.venv/bin/python benchmarks/bench_controller.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from greenrl.controller import build_controller, build_parser
from greenrl.policy import load_controller

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "default" / "maskable_ppo_s0"
DECISIONS = 2000
INTERVALS = 50


def _stats(values_s: list[float], scale: float) -> dict[str, float]:
    arr = np.asarray(values_s) * scale
    return {"median": round(float(np.median(arr)), 3), "p99": round(float(np.percentile(arr, 99)), 3), "n": len(arr)}


def decision_latency() -> dict[str, float]:
    """``predict`` on observations shaped like the live ones (22 scaled fields, a few non-zero)."""
    policy = load_controller(CHECKPOINT)
    rng = np.random.default_rng(0)
    obs = np.clip(rng.normal(0.3, 0.3, (DECISIONS, len(policy.observation_names))), -10, 10).astype(np.float32)
    policy.predict(obs[0])
    out = []
    for x in obs:
        t0 = time.perf_counter()
        policy.predict(x, deterministic=True)
        out.append(time.perf_counter() - t0)
    return _stats(out, 1e6)


def interval_overhead() -> dict[str, float]:
    """Observe + decide + apply once per interval against the twin; the sleep between intervals is excluded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "greenrl.twin", "--port", str(port), "--scenario", "default", "--allow-control"]
    cmd += ["--time-scale", "30", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the twin did not start") from None
                time.sleep(0.1)
        args = build_parser().parse_args(["--checkpoint", str(CHECKPOINT), "--vllm-url", base, "--twin"])
        ctl = build_controller(args, io.StringIO())
        try:
            ctl.run_interval()  # primes
            out = []
            for _ in range(INTERVALS):
                time.sleep(0.05)  # some simulated time between scrapes
                t0 = time.perf_counter()
                record = ctl.run_interval()
                out.append(time.perf_counter() - t0)
                if record["mode"] != "applied":
                    raise RuntimeError(f"unexpected decision: {record}")
        finally:
            ctl.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10.0)
    return _stats(out, 1e3)


def main() -> None:
    """Print the benchmark's JSON."""
    print(
        json.dumps(
            {
                "checkpoint": str(CHECKPOINT.relative_to(ROOT)),
                "decision_latency_us": decision_latency(),
                "decision_target_us": 1000,
                "interval_overhead_ms": interval_overhead(),
                "note": "interval overhead: /metrics scrape + /greenrl/state + predict + POST knobs on loopback",
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
