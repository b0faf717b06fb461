"""Start, health-check, stop and restart the model server: what a TP change needs on a real node.

vLLM fixes the tensor-parallel degree at launch, so a TP change is a restart: drain, stop, start with the
new TP, wait until ``GET /health`` answers 200. ``ServerLauncher`` does that for a server it started from
a command template (default ``DEFAULT_COMMAND``, ``vllm serve ...``), or only health-checks one it was
pointed at (``ServerLauncher.attach(url)``), which it refuses to stop or restart.

* The template is split like a shell line (``shlex``), then each word's ``{placeholders}`` are filled:
  ``{model}``, ``{host}``, ``{port}``, ``{python}`` (this interpreter) and the knobs ``{tp}``,
  ``{replicas}``, ``{max_num_seqs}``, ``{sm_clock_mhz}``, ``{max_num_batched_tokens}``. No shell runs.
  ``extra_args`` are appended; ``gpus`` sets ``CUDA_VISIBLE_DEVICES``.
* The server runs in its own session and process group (``start_new_session=True``), its stdout and
  stderr appended to a log file; ``stop()`` sends SIGTERM to the group, waits ``stop_grace_s``, then
  SIGKILL. An exit or a health timeout at start raises ``LaunchError`` quoting the end of that log.
* ``restart(knobs, drain=...)`` first drains (the admission proxy's ``drain``, or by default until the
  server's ``/metrics`` shows nothing running or waiting), and raises ``DrainTimeoutError`` leaving the
  server untouched if that does not finish; then it stops, starts and returns the outage (s).

Public names: DEFAULT_COMMAND, PLACEHOLDERS, DrainTimeoutError, LaunchError, NotOwnedError, ServerLauncher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from greenrl.errors import InputError

__all__ = [
    "DEFAULT_COMMAND",
    "PLACEHOLDERS",
    "DrainTimeoutError",
    "LaunchError",
    "NotOwnedError",
    "ServerLauncher",
]

logger = logging.getLogger(__name__)

DEFAULT_COMMAND = (
    "vllm serve {model} --tensor-parallel-size {tp} --max-num-seqs {max_num_seqs} --port {port} --host {host}"
)
"""The launch command template of a vLLM OpenAI-compatible server."""

KNOB_PLACEHOLDERS = ("tp", "replicas", "max_num_seqs", "sm_clock_mhz", "max_num_batched_tokens")
PLACEHOLDERS = ("model", "host", "port", "python", *KNOB_PLACEHOLDERS)
"""Names a command template may use."""


class LaunchError(RuntimeError):
    """The server could not be started, stopped or restarted."""


class NotOwnedError(LaunchError):
    """Stop or restart of a server this launcher did not start (attach mode)."""


class DrainTimeoutError(LaunchError):
    """The drain before a restart did not finish in time; the server was left running, untouched."""


def _placeholders(template: str, where: str) -> tuple[list[str], set[str]]:
    """Split ``template`` into words and return them with the placeholder names they use."""
    try:
        words = shlex.split(template)
    except ValueError as err:
        raise InputError(where, "command", f"cannot split {template!r} ({err})", "balance the quotes") from None
    if not words:
        raise InputError(where, "command", "is empty", f"e.g. {DEFAULT_COMMAND!r}")
    names: set[str] = set()
    for word in words:
        try:
            parsed = list(string.Formatter().parse(word))
        except ValueError as err:
            raise InputError(
                where, "command", f"bad braces in {word!r} ({err})", "write {{ and }} for literal braces"
            ) from None
        for _, name, _, _ in parsed:
            if name is None:
                continue
            if name not in PLACEHOLDERS:
                raise InputError(
                    where,
                    f"{{{name}}}",
                    f"unknown placeholder in the command {template!r}",
                    f"use only {', '.join('{' + p + '}' for p in PLACEHOLDERS)}",
                )
            names.add(name)
    return words, names


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerLauncher:
    """Owns (starts, stops, restarts) or attaches to (health-checks) one OpenAI-compatible server.

    Args:
        command: launch command template (see the module docstring for the placeholders).
        model: value of ``{model}`` (a Hugging Face id or a path); required if the template uses it.
        host: value of ``{host}`` (where the server binds); the launcher connects to 127.0.0.1 when it
            is ``0.0.0.0``.
        port: value of ``{port}``; 0 picks a free port now, kept across restarts.
        extra_args: words appended to the command.
        gpus: GPU indices for ``CUDA_VISIBLE_DEVICES`` (None: inherit the environment).
        log_path: file the server's stdout and stderr are appended to (default: a file in the temp dir).
        health_timeout_s: longest wait for ``/health`` after a start (s); loading large weights takes minutes.
        stop_grace_s: wait after SIGTERM before SIGKILL (s).
        drain_timeout_s: longest wait of the default drain before a restart (s).
        health_poll_s: time between two health probes (s).
        env: extra environment variables for the server.
        where: the flag named in input errors.

    Raises:
        InputError: on a bad template (unknown placeholder, bad braces, empty) or a missing ``model``.
    """

    def __init__(
        self,
        command: str = DEFAULT_COMMAND,
        *,
        model: str = "",
        host: str = "127.0.0.1",
        port: int = 8000,
        extra_args: Sequence[str] = (),
        gpus: Sequence[int] | None = None,
        log_path: str | Path | None = None,
        health_timeout_s: float = 900.0,
        stop_grace_s: float = 30.0,
        drain_timeout_s: float = 120.0,
        health_poll_s: float = 0.5,
        env: Mapping[str, str] | None = None,
        where: str = "--launch-command",
    ) -> None:
        self._words, names = _placeholders(command, where)
        if "model" in names and not model:
            raise InputError(where, "{model}", "the command needs a model", "pass --model NAME_OR_PATH")
        if not 0 <= port <= 65535:
            raise InputError("--server-port", "port", f"{port} is out of range", "use 0 (any free) to 65535")
        self.command = command
        self.model, self.host = model, host
        self.port = port or _free_port("127.0.0.1")
        self.extra_args = list(extra_args)
        self.gpus = None if gpus is None else [int(g) for g in gpus]
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"greenrl-server-{self.port}.log"
        self.health_timeout_s, self.stop_grace_s = health_timeout_s, stop_grace_s
        self.drain_timeout_s, self.health_poll_s = drain_timeout_s, health_poll_s
        self.env = dict(env or {})
        self.owned = True
        self.closed = False
        self.knobs: dict[str, int] | None = None
        self.last_outage_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()  # a start racing close() must not leave a server behind
        connect = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        self.url = f"http://{connect}:{self.port}"

    @classmethod
    def attach(cls, url: str, *, health_poll_s: float = 0.5) -> ServerLauncher:
        """A launcher for a server it did not start: health checks only; ``stop``/``restart`` raise."""
        if not url.startswith(("http://", "https://")):
            raise InputError("--vllm-url", "url", f"{url!r} is not an http(s) URL", "http://127.0.0.1:8000")
        self = cls("unused", port=1, health_poll_s=health_poll_s)
        self.owned = False
        self.url = url.rstrip("/")
        return self

    # ------------------------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        """Process id of the server this launcher started (None when attached or never started)."""
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        """Owned: the server process is running. Attached: ``/health`` answers 200."""
        if not self.owned:
            return self.healthy()
        return self._proc is not None and self._proc.poll() is None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether ``GET /health`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout_s) as resp:  # noqa: S310
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError, TimeoutError, ValueError):
            return False

    def wait_healthy(self, timeout_s: float) -> float:
        """Wait until ``/health`` answers 200; returns the seconds waited.

        Raises:
            LaunchError: the owned server exited, or ``timeout_s`` passed (the log's tail is quoted).
        """
        t0 = time.monotonic()
        while True:
            if self.healthy(timeout_s=min(2.0, max(timeout_s, 0.1))):
                return time.monotonic() - t0
            if self.owned and self._proc is not None and self._proc.poll() is not None:
                raise LaunchError(
                    f"the server exited with code {self._proc.returncode} before {self.url}/health answered; "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() - t0 > timeout_s:
                raise LaunchError(
                    f"{self.url}/health did not answer 200 within {timeout_s:.0f} s; end of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(self.health_poll_s)

    def log_tail(self, chars: int = 2000) -> str:
        """The last ``chars`` characters of the server log ('' if there is none)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def command_for(self, knobs: Mapping[str, int]) -> list[str]:
        """The argument list that starts the server at ``knobs``.

        Raises:
            InputError: a knob the template uses is missing from ``knobs``.
        """
        values: dict[str, object] = {"model": self.model, "host": self.host, "port": self.port}
        values["python"] = sys.executable
        values.update({k: int(v) for k, v in knobs.items() if k in KNOB_PLACEHOLDERS})
        out = []
        for word in self._words:
            try:
                out.append(word.format(**values))
            except KeyError as err:
                raise InputError(
                    "--launch-command", f"{{{err.args[0]}}}", "no value for it", "pass that knob"
                ) from None
        return out + self.extra_args

    # ------------------------------------------------------------------------------------ lifecycle

    def _require_owned(self, what: str) -> None:
        if not self.owned:
            raise NotOwnedError(
                f"cannot {what} the server at {self.url}: it was not started by greenrl (attach mode). "
                "A TP change restarts the server, so it needs an owned server: run the controller with --launch"
            )

    def start(self, knobs: Mapping[str, int]) -> float:
        """Start the server at ``knobs`` and wait for ``/health``; returns the start-up time (s).

        Raises:
            NotOwnedError: in attach mode.
            LaunchError: the launcher is closed, the server is already running, something else answers
                on its port, the command cannot run, or the server exits or stays unhealthy (then stopped).
        """
        self._require_owned("start")
        if self.closed:
            raise LaunchError("the launcher is closed")
        if self.alive():
            raise LaunchError(f"the server is already running (pid {self.pid}); stop() it first")
        self._close_log()
        if self.healthy(timeout_s=1.0):
            raise LaunchError(f"something already answers on {self.url}; pick another --server-port")
        args = self.command_for(knobs)
        env = {**os.environ, **self.env}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n# greenrl launcher {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(args)}\n".encode())
        self._log.flush()
        logger.info("starting the server: %s (log %s)", shlex.join(args), self.log_path)
        t0 = time.monotonic()
        with self._lock:
            if self.closed:
                self._close_log()
                raise LaunchError("the launcher is closed")
            try:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as err:
                self._close_log()
                raise LaunchError(f"cannot run {args[0]!r} ({err}); is it installed (vLLM: the [live] extra)?") from err
        try:
            self.wait_healthy(self.health_timeout_s)
        except LaunchError:
            self.stop()
            raise
        self.knobs = dict(knobs)
        startup_s = time.monotonic() - t0
        logger.info("server pid %d healthy at %s after %.1f s", self._proc.pid, self.url, startup_s)
        return startup_s

    def stop(self) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``stop_grace_s``; returns the exit code.

        Raises:
            NotOwnedError: in attach mode.
        """
        self._require_owned("stop")
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("server pid %d ignored SIGTERM for %.0f s: SIGKILL", proc.pid, self.stop_grace_s)
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10.0)
        self._signal_group(proc.pid, signal.SIGKILL)  # workers left in its group, if any
        code = proc.returncode
        self._close_log()
        self._proc = None
        logger.info("server pid %d stopped (exit code %s)", proc.pid, code)
        return code

    def close(self) -> None:
        """Stop the owned server for good: later ``start`` calls raise. Does nothing in attach mode."""
        if self.owned:
            with self._lock:
                self.closed = True
            self.stop()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, knobs: Mapping[str, int], drain: Callable[[], bool] | None = None) -> float:
        """Drain, stop, start at ``knobs`` and wait for ``/health``; returns the outage (s, stop to healthy).

        Args:
            knobs: the new configuration.
            drain: called first; returns True once nothing is in flight (e.g. ``lambda: proxy.drain(60)``).
                Default: wait until ``/metrics`` shows 0 running and 0 waiting, up to ``drain_timeout_s``.

        Raises:
            NotOwnedError: in attach mode.
            DrainTimeoutError: the drain did not finish; the server is left running.
            LaunchError: the new server did not come up (it is stopped; nothing runs).
        """
        self._require_owned("restart")
        t_drain = time.monotonic()
        drained = drain() if drain is not None else self._drain_by_metrics(self.drain_timeout_s)
        if not drained:
            raise DrainTimeoutError(
                f"requests were still in flight at {self.url} after {time.monotonic() - t_drain:.1f} s of draining; "
                "the restart was not done"
            )
        t0 = time.monotonic()
        self.stop()
        self.start(knobs)
        self.last_outage_s = time.monotonic() - t0
        logger.info("restarted at %s in %.1f s (drain %.1f s)", dict(knobs), self.last_outage_s, t0 - t_drain)
        return self.last_outage_s

    def _drain_by_metrics(self, timeout_s: float) -> bool:
        """Wait until the server's ``/metrics`` shows 0 running and 0 waiting (True), or ``timeout_s``."""
        from greenrl.live.metrics import MetricsError, scrape

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                m = scrape(self.url, timeout_s=2.0)
            except MetricsError:
                return not self.alive()  # a dead server has nothing in flight
            if m.running == 0 and m.waiting == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(self.health_poll_s)
