"""The server launcher: start/stop/restart the digital twin through a command template, attach mode, bad input."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenrl.errors import InputError
from greenrl.live.launcher import DrainTimeoutError, LaunchError, NotOwnedError, ServerLauncher
from greenrl.live.proxy import AdmissionProxy

TWIN = (
    "{python} -m greenrl.twin --port {port} --scenario tiny --time-scale 50 --tp {tp} "
    "--max-num-seqs {max_num_seqs} --log-level WARNING"
)
KNOBS = {"tp": 2, "replicas": 1, "max_num_seqs": 64, "sm_clock_mhz": 1980}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _kill(pid: int | None) -> None:
    """Last resort for a test that failed half-way: the launcher's own process group, by its id."""
    if pid is not None and not _gone(pid):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ServerLauncher]:
    launcher = ServerLauncher(TWIN, port=0, log_path=tmp_path / "server.log", health_timeout_s=90.0, stop_grace_s=5.0)
    pids: list[int] = []
    original = launcher.start

    def start(knobs: Any) -> float:  # remember every pid so that the teardown can check it is gone
        try:
            return original(knobs)
        finally:
            if launcher.pid is not None:
                pids.append(launcher.pid)

    launcher.start = start  # type: ignore[method-assign]
    try:
        yield launcher
    finally:
        launcher.stop()
        for pid in pids:
            _kill(pid)


def _state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/greenrl/state", timeout=5.0) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def _request(url: str, max_tokens: int, stream: bool, timeout_s: float = 30.0) -> dict[str, Any]:
    """One completion; returns status, tokens received and whether a stream ended with [DONE]."""
    body = {"prompt": list(range(1, 33)), "max_tokens": max_tokens, "stream": stream}
    req = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        if not stream:
            out = json.loads(r.read())
            return {"status": r.status, "tokens": out["usage"]["completion_tokens"], "done": True}
        tokens, done = 0, False
        for raw in r:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and json.loads(line[6:])["choices"]:
                tokens += 1
        return {"status": r.status, "tokens": tokens, "done": done}


def test_start_restart_stop_through_the_template(launcher: ServerLauncher) -> None:
    startup_s = launcher.start(KNOBS)
    pid = launcher.pid
    assert pid is not None and launcher.alive() and launcher.healthy() and 0 < startup_s < 30
    assert _state(launcher.url)["knobs"]["tp"] == 2 and _state(launcher.url)["knobs"]["max_num_seqs"] == 64
    with pytest.raises(LaunchError, match="already running"):
        launcher.start(KNOBS)
    # a drain that does not finish leaves the server untouched
    with pytest.raises(DrainTimeoutError):
        launcher.restart({**KNOBS, "tp": 1}, drain=lambda: False)
    assert launcher.pid == pid and _state(launcher.url)["knobs"]["tp"] == 2
    # the default drain reads /metrics (idle here), then stop + start at the new TP
    outage_s = launcher.restart({**KNOBS, "tp": 1, "replicas": 2})
    assert 0 < outage_s < 30 and launcher.pid != pid and _gone(pid)
    assert _state(launcher.url)["knobs"]["tp"] == 1
    new_pid = launcher.pid
    assert launcher.stop() == 0
    assert new_pid is not None and _gone(new_pid) and not launcher.alive() and not launcher.healthy()
    assert "greenrl launcher" in launcher.log_tail()


def test_restart_with_new_tp_under_load_through_the_proxy_loses_nothing(launcher: ServerLauncher) -> None:
    launcher.start(KNOBS)
    proxy = AdmissionProxy(launcher.url, cap=4)
    proxy.start()
    results: list[dict[str, Any] | BaseException] = []
    stop = threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            try:
                results.append(_request(proxy.url, max_tokens=40 + 10 * k, stream=k % 2 == 0))
            except BaseException as err:  # noqa: BLE001 - a lost request, reported below
                results.append(err)

    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(1.0)
        before = len(results)
        outage_s = launcher.restart({**KNOBS, "tp": 1, "replicas": 2}, drain=lambda: proxy.drain(10.0))
        held = proxy.stats()["queued"]  # sent during the restart, held by the proxy
        proxy.resume()
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30.0)
        stats = proxy.stats()
        proxy.stop()
    assert not any(w.is_alive() for w in workers)
    assert _state(launcher.url)["knobs"]["tp"] == 1 and outage_s > 0
    assert before > 0 and held > 0 and len(results) > before + held  # load before, during and after the restart
    lost = [r for r in results if not (isinstance(r, dict) and r["status"] == 200 and r["done"])]
    assert lost == []
    assert stats["arrived"] == stats["finished"] == len(results) and stats["errors"] == 0
    assert stats["max_in_flight"] <= 4 and stats["retried"] == 0  # drained: nothing was in flight to fail


def test_attach_mode_health_checks_but_refuses_restart_and_stop(launcher: ServerLauncher) -> None:
    launcher.start(KNOBS)
    attached = ServerLauncher.attach(launcher.url)
    assert attached.healthy() and attached.alive() and attached.pid is None and not attached.owned
    assert attached.wait_healthy(5.0) >= 0
    with pytest.raises(NotOwnedError, match="--launch"):
        attached.restart({**KNOBS, "tp": 1})
    with pytest.raises(NotOwnedError):
        attached.stop()
    assert _state(launcher.url)["knobs"]["tp"] == 2  # untouched
    with pytest.raises(InputError):
        ServerLauncher.attach("localhost:8000")


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ("vllm serve {model} --tp {tensor_parallel}", "{tensor_parallel}"),
        ("vllm serve {model} --tp {tp.real}", "{tp.real}"),
        ("vllm serve {model} --tp {tp", "command"),
        ("", "command"),
        ("vllm serve 'unbalanced", "command"),
        ("vllm serve {model}", "{model}"),  # no --model given
    ],
)
def test_bad_templates_raise_input_error(template: str, field: str) -> None:
    with pytest.raises(InputError) as exc:
        ServerLauncher(template, port=0)
    assert exc.value.field == field and exc.value.where == "--launch-command" and exc.value.fix
    if field.startswith("{") and field != "{model}":
        assert "{max_num_seqs}" in exc.value.fix  # the fix lists what may be used


def test_exit_at_start_and_health_timeout_quote_the_log(tmp_path: Path) -> None:
    crash = ServerLauncher(
        "{python} -c 'import sys; print(\"boom at tp {tp}\"); sys.exit(3)'", port=0, log_path=tmp_path / "a.log"
    )
    with pytest.raises(LaunchError, match="code 3") as exc:
        crash.start(KNOBS)
    assert "boom at tp 2" in str(exc.value) and not crash.alive()
    # a server that never answers /health and ignores SIGTERM: timeout, then SIGTERM, then SIGKILL
    stubborn = (
        "{python} -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("pid", os.getpid(), flush=True); time.sleep(60)\''
    )
    hung = ServerLauncher(stubborn, port=0, log_path=tmp_path / "b.log", health_timeout_s=1.0, stop_grace_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="did not answer 200 within 1 s") as exc:
        hung.start(KNOBS)
    pid = int(str(exc.value).rsplit("pid ", 1)[1].split()[0])
    try:
        assert time.monotonic() - t0 < 10.0 and _gone(pid) and not hung.alive()
    finally:
        _kill(pid)
    missing = ServerLauncher("/nonexistent/server --port {port}", port=0, log_path=tmp_path / "c.log")
    with pytest.raises(LaunchError, match="cannot run"):
        missing.start(KNOBS)
