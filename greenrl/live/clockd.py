"""The privileged clock helper: the only part of the controller that needs root, as a separate process.

Only NVML's clock calls need privilege (root or ``CAP_SYS_ADMIN``). ``python -m greenrl.live.clockd``
runs as root, opens the GPUs and serves three requests on a Unix socket, nothing else: lock a GPU's SM
clock (snapped to a supported clock, under its own rate limit), reset it, list the supported clocks. The
controller, vLLM and the admission proxy then run as an ordinary user: the controller's ``HelperGpu``
reads energy and clocks through NVML itself (no privilege needed) and asks the helper for clock changes
(``python -m greenrl.controller --clock-helper <socket>``).

Protocol: one JSON object per line each way, 4 KiB at most per request, 5 s to send it.
``{"op": "lock", "gpu": 0, "mhz": 1200}`` -> ``{"ok": true, "mhz": 1200}``; ``{"op": "reset", "gpu": 0}``;
``{"op": "supported", "gpu": 0}`` -> ``{"ok": true, "mhz": [...]}``. A refusal: ``{"ok": false, "kind":
"permission" | "gpu" | "request", "error": "..."}``. The socket is made mode 0660 (owner and ``--group``):
whoever can connect can change the served GPUs' clocks, and nothing more. On SIGTERM / SIGINT the helper
resets every clock it locked.

Public names: ClockHelper, HelperGpu, helper_gpus, main.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from greenrl.errors import InputError, exit_on_input_error
from greenrl.live.gpu import Gpu, GpuError, GpuPermissionError, GpuSet, open_gpus
from greenrl.live.gpu.base import DEFAULT_MIN_INTERVAL_S

__all__ = ["ClockHelper", "HelperGpu", "helper_gpus", "main"]

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
"""Longest request line."""

REQUEST_TIMEOUT_S = 5.0
"""Longest silence from a client within one request."""


class ClockHelper:
    """Serve clock lock / reset / supported-clocks requests for ``gpus`` on the Unix socket ``path``.

    Args:
        gpus: the GPUs to serve (their own rate limit, ``min_interval_s``, applies to every client).
        path: the socket file (replaced if it exists and is a socket).
        group: group name or id that may connect (mode 0660); None: the owner only (0600).
    """

    def __init__(self, gpus: GpuSet, path: str | Path, *, group: str | int | None = None) -> None:
        self.gpus = {g.index: g for g in gpus}
        self.gpu_set = gpus
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_socket():
                raise InputError("--socket", "socket", f"{self.path} exists and is not a socket", "give a new path")
            self.path.unlink()
        helper = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = REQUEST_TIMEOUT_S

            def handle(self) -> None:
                while True:
                    try:
                        line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
                    except OSError:
                        return
                    if not line:
                        return
                    if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
                        self._send({"ok": False, "kind": "request", "error": "request too long or cut"})
                        return
                    self._send(helper.handle(line))

            def _send(self, answer: dict[str, Any]) -> None:
                with contextlib.suppress(OSError):
                    self.wfile.write(json.dumps(answer).encode() + b"\n")

        old = os.umask(0o177 if group is None else 0o117)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        finally:
            os.umask(old)
        self._server.daemon_threads = True
        if group is not None:
            gid = group if isinstance(group, int) else _gid(group)
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)

    def handle(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line (never raises)."""
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "kind": "request", "error": "not JSON"}
        if not isinstance(req, dict):
            return {"ok": False, "kind": "request", "error": "not a JSON object"}
        op, index = req.get("op"), req.get("gpu")
        if op not in ("lock", "reset", "supported"):
            return {"ok": False, "kind": "request", "error": f"unknown op {str(op)[:40]!r}"}
        if not isinstance(index, int) or isinstance(index, bool) or index not in self.gpus:
            return {
                "ok": False,
                "kind": "request",
                "error": f"gpu {str(index)[:40]} is not served ({sorted(self.gpus)})",
            }
        gpu = self.gpus[index]
        try:
            with self._lock:
                if op == "supported":
                    return {"ok": True, "mhz": gpu.supported_sm_clocks_mhz()}
                if op == "reset":
                    gpu.reset_sm_clock()
                    return {"ok": True}
                mhz = req.get("mhz")
                if not isinstance(mhz, int | float) or isinstance(mhz, bool) or not math.isfinite(mhz):
                    return {"ok": False, "kind": "request", "error": f"mhz {str(mhz)[:40]} is not a number"}
                return {"ok": True, "mhz": gpu.lock_sm_clock(float(mhz))}
        except GpuPermissionError as err:
            return {"ok": False, "kind": "permission", "error": str(err)[:500]}
        except GpuError as err:
            return {"ok": False, "kind": "gpu", "error": str(err)[:500]}
        except Exception as err:  # noqa: BLE001 - a helper never dies of one request
            logger.exception("clock helper: request failed")
            return {"ok": False, "kind": "gpu", "error": f"{type(err).__name__}: {str(err)[:300]}"}

    def serve_forever(self) -> None:
        """Serve until ``shutdown()``."""
        self._server.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread)."""
        self._server.shutdown()

    def close(self) -> None:
        """Close the socket and reset every clock this helper locked."""
        self._server.server_close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.gpu_set.close(raise_errors=False)


def _gid(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InputError("--group", "group", f"no group {name!r}", "create it, or give a group id") from None


class HelperGpu(Gpu):
    """A GPU whose reads come from ``reader`` (unprivileged NVML) and whose clock changes go to the helper.

    Args:
        reader: the same GPU opened without privilege (``NvmlGpu``, or a ``FakeGpu`` in tests); it never
            locks a clock.
        path: the helper's socket.
        min_interval_s: this side's rate limit (the helper applies its own too).
        timeout_s: longest wait for one answer of the helper (s).
    """

    def __init__(
        self, reader: Gpu, path: str | Path, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S, timeout_s: float = 2.0
    ) -> None:
        super().__init__(reader.index, reader.name, min_interval_s=min_interval_s)
        self.reader, self.path, self.timeout_s = reader, str(path), timeout_s

    def _call(self, operation: str, **fields: Any) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(self.path)
                s.sendall(json.dumps({"op": operation, "gpu": self.index, **fields}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n") and len(data) <= 1 << 20:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            answer = json.loads(data)
        except (OSError, ValueError) as err:
            raise GpuError(
                self.index, operation, f"the clock helper at {self.path} did not answer ({err})", "start it as root"
            ) from err
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = str(answer.get("error") if isinstance(answer, dict) else answer)
            kind = answer.get("kind") if isinstance(answer, dict) else None
            if kind == "permission":
                raise GpuPermissionError(self.index, operation, error, "run the clock helper as root")
            raise GpuError(self.index, operation, f"the clock helper refused: {error}", "see the helper's log")
        return answer

    def energy_j(self) -> float:
        """The reader's energy counter, J."""
        return self.reader.energy_j()

    def power_w(self) -> float:
        """The reader's power, W."""
        return self.reader.power_w()

    def sm_clock_mhz(self) -> int:
        """The reader's SM clock, MHz."""
        return self.reader.sm_clock_mhz()

    def _query_supported_sm_clocks_mhz(self) -> Iterable[int]:
        answer = self._call("supported")
        values = answer.get("mhz")
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            raise GpuError(self.index, "supported", "the clock helper sent no clock list", "see the helper's log")
        return values

    def _set_locked_sm_clock(self, mhz: int) -> None:
        self._call("lock", mhz=mhz)

    def _reset_locked_sm_clock(self) -> None:
        self._call("reset")

    def _release(self) -> None:
        self.reader.close()


def helper_gpus(readers: Sequence[Gpu], path: str | Path, *, min_interval_s: float) -> GpuSet:
    """``readers`` wrapped as ``HelperGpu``s of the helper at ``path``."""
    return GpuSet([HelperGpu(r, path, min_interval_s=min_interval_s) for r in readers])


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """``python -m greenrl.live.clockd --socket PATH [--gpus 0,1|fake] [--group NAME]`` (as root)."""
    p = argparse.ArgumentParser(prog="python -m greenrl.live.clockd", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="Unix socket path, e.g. /run/greenrl/clock.sock")
    p.add_argument("--gpus", default=None, help="NVML indices '0,1,...' or 'fake' (default: all)")
    p.add_argument("--group", default=None, help="group allowed to connect (mode 0660; default: owner only)")
    p.add_argument("--min-interval-s", type=float, default=0.05, help="fewest s between two changes (0.05)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.gpus == "fake":
        gpus = open_gpus(None, "fake", min_interval_s=args.min_interval_s)
    else:
        try:
            indices = None if args.gpus is None else [int(x) for x in args.gpus.split(",") if x.strip()]
        except ValueError:
            raise InputError("--gpus", "gpus", f"{args.gpus!r} is not a list of indices", "e.g. 0,1") from None
        gpus = open_gpus(indices, "nvml", min_interval_s=args.min_interval_s)
    helper = ClockHelper(gpus, args.socket, group=args.group)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=helper.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("clock helper for GPUs %s on %s", sorted(helper.gpus), args.socket)
    try:
        helper.serve_forever()
    finally:
        helper.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
