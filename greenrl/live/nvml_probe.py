"""Probe one real GPU through ``NvmlGpu`` and write what it saw as one JSON object on stdout.

Public names: probe, main.

Run as ``python -m greenrl.live.nvml_probe [--index 0] [--seconds 1.0] [--lock-mhz MHZ]``. It reads the name,
the energy counter delta over ``--seconds`` (J), power (W), the current SM clock, the supported clocks,
then tries to lock the SM clock (to ``--lock-mhz`` or the median supported clock), reads it back and resets
it. Exit status is 0 whenever it could report, including ``{"nvml": false, ...}`` on a machine without NVML.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from greenrl.live.gpu import GpuError, GpuPermissionError, GpuUnavailableError, NvmlGpu

__all__ = ["main", "probe"]

logger = logging.getLogger(__name__)


def probe(index: int = 0, seconds: float = 1.0, lock_mhz: float | None = None) -> dict[str, Any]:
    """Probe GPU ``index`` and return what was seen; never raises for GPU problems.

    Args:
        index: NVML index of the GPU.
        seconds: how long to watch the energy counter, s.
        lock_mhz: SM clock to try locking, MHz; default the median supported clock.

    Returns:
        A JSON-ready dict; ``nvml`` is False (with ``reason``) when NVML or the GPU is unavailable.
    """
    try:
        gpu = NvmlGpu(index, min_interval_s=0.0)
    except GpuUnavailableError as err:
        return {"nvml": False, "index": index, "reason": str(err)}
    out: dict[str, Any] = {"nvml": True, "index": index, "name": gpu.name}
    try:
        start_j, start_s = gpu.energy_j(), time.monotonic()
        time.sleep(seconds)
        end_j, end_s = gpu.energy_j(), time.monotonic()
        out["energy_delta_j"] = end_j - start_j
        out["energy_window_s"] = end_s - start_s
        out["mean_power_from_energy_w"] = (end_j - start_j) / (end_s - start_s)
    except GpuError as err:
        out["energy_error"] = str(err)
    for key, read in (("power_w", gpu.power_w), ("sm_clock_mhz", gpu.sm_clock_mhz)):
        try:
            out[key] = read()
        except GpuError as err:
            out[f"{key}_error"] = str(err)
    try:
        clocks = gpu.supported_sm_clocks_mhz()
        out["supported_sm_clocks"] = {
            "count": len(clocks),
            "min_mhz": clocks[0] if clocks else None,
            "max_mhz": clocks[-1] if clocks else None,
        }
    except GpuError as err:
        out["supported_sm_clocks_error"] = str(err)
        clocks = []
    out["lock"] = _try_lock(gpu, clocks, lock_mhz)
    try:
        gpu.close()
    except GpuError as err:
        out["close_error"] = str(err)
    return out


def _try_lock(gpu: NvmlGpu, clocks: list[int], lock_mhz: float | None) -> dict[str, Any]:
    if not clocks:
        return {"ok": False, "error": "no supported clocks"}
    request = lock_mhz if lock_mhz is not None else clocks[len(clocks) // 2]
    result: dict[str, Any] = {"requested_mhz": request}
    try:
        result["set_mhz"] = gpu.lock_sm_clock(request)
        time.sleep(0.2)
        result["read_back_mhz"] = gpu.sm_clock_mhz()
        gpu.reset_sm_clock()
        time.sleep(0.2)
        result["after_reset_mhz"] = gpu.sm_clock_mhz()
        result["ok"] = True
    except GpuPermissionError as err:
        result.update(ok=False, permission=False, error=str(err))
    except GpuError as err:
        result.update(ok=False, error=str(err))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, probe the GPU, write one JSON line to stdout; return the exit status (0)."""
    parser = argparse.ArgumentParser(prog="python -m greenrl.live.nvml_probe", description=__doc__)
    parser.add_argument("--index", type=int, default=0, help="NVML index of the GPU")
    parser.add_argument("--seconds", type=float, default=1.0, help="energy counter window, s")
    parser.add_argument("--lock-mhz", type=float, default=None, help="SM clock to try locking, MHz")
    args = parser.parse_args(argv)
    result = probe(args.index, args.seconds, args.lock_mhz)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
