"""GPU self-check: what greenrl's live path needs from one real GPU, as one JSON object on stdout.

Run as ``python -m greenrl.live.selfcheck [--index 0] [--idle-s 1] [--workload-s 3]``. It reads, through
``NvmlGpu`` only: the name, the settings (power limits, clocks, application clocks, persistence and MIG
mode, temperature, driver versions), the energy counter over an idle window, then runs a short torch
matmul workload on the GPU and reads the counter again, so the energy and power that the controller will
account are seen to move. Whether this process may lock clocks is reported (effective uid,
``CAP_SYS_ADMIN``, NVML's application-clock restriction) but not exercised: nothing is set. The settings
are read again at the end and ``settings_unchanged`` says whether they are as they were found.
``--try-lock MHZ`` (opt-in) does exercise a lock, reads the clock back and resets it.

Exit status: 0 whenever it could report (also ``{"nvml": false, ...}`` on a machine without NVML); 1 if
the settings differ at the end.

Public names: SETTINGS_COMPARED, main, selfcheck.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from greenrl.live.gpu import GpuError, GpuPermissionError, GpuUnavailableError, NvmlGpu

__all__ = ["SETTINGS_COMPARED", "main", "selfcheck"]

SETTINGS_COMPARED = (
    "power_limit_w",
    "enforced_power_limit_w",
    "applications_sm_clock_mhz",
    "persistence_mode",
    "mig_mode",
)
"""The operator's settings that must be as found at the end (clocks and temperature move by themselves)."""

_CAP_SYS_ADMIN_BIT = 21


def selfcheck(
    index: int = 0, idle_s: float = 1.0, workload_s: float = 3.0, try_lock_mhz: float | None = None
) -> dict[str, Any]:
    """Check GPU ``index``; a JSON-ready dict, never raising for GPU problems.

    Args:
        index: NVML index of the GPU (torch's ``cuda:<index>`` runs the workload: keep
            ``CUDA_VISIBLE_DEVICES`` unset, or the two orders may differ).
        idle_s: energy counter window with no workload, s.
        workload_s: duration of the torch matmul workload, s; 0 skips it.
        try_lock_mhz: SM clock to lock, read back and reset (opt-in); None: no clock is touched.
    """
    try:
        gpu = NvmlGpu(index, min_interval_s=0.0)
    except GpuUnavailableError as err:
        return {"nvml": False, "index": index, "reason": str(err)}
    out: dict[str, Any] = {"nvml": True, "index": index, "name": gpu.name}
    try:
        before = gpu.read_settings()
        out["settings"] = before
        out["clock_lock_permission"] = _lock_permission(before)
        out["supported_sm_clocks"] = _supported_clocks(gpu)
        out["idle"] = _energy_window(gpu, idle_s, None)
        if workload_s > 0:
            out["workload"] = _energy_window(gpu, workload_s, index)
        if try_lock_mhz is not None:
            out["lock"] = _try_lock(gpu, try_lock_mhz)
        after = gpu.read_settings()
        changed = {k: [before.get(k), after.get(k)] for k in SETTINGS_COMPARED if before.get(k) != after.get(k)}
        out["settings_unchanged"] = not changed
        if changed:
            out["settings_changed"] = changed
    finally:
        try:
            gpu.close()  # resets the clock only if --try-lock locked it (NvmlGpu.close)
        except GpuError as err:
            out["close_error"] = str(err)
    return out


def _lock_permission(settings: dict[str, Any]) -> dict[str, Any]:
    """Who may lock clocks here, from the process's privileges; reported, never tried."""
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    cap = _has_cap_sys_admin()
    return {
        "euid": euid,
        "cap_sys_admin": cap,
        "application_clocks_restricted": settings.get("application_clocks_restricted"),
        "likely": bool(euid == 0 or cap),
        "how": "NVML locked clocks need root or CAP_SYS_ADMIN; see docs/live_gpu.md (clockd helper)",
    }


def _has_cap_sys_admin() -> bool | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN_BIT & 1)
    except OSError:
        return None
    return None


def _supported_clocks(gpu: NvmlGpu) -> dict[str, Any]:
    try:
        clocks = gpu.supported_sm_clocks_mhz()
    except GpuError as err:
        return {"error": str(err)}
    return {"count": len(clocks), "min_mhz": clocks[0] if clocks else None, "max_mhz": clocks[-1] if clocks else None}


def _energy_window(gpu: NvmlGpu, seconds: float, cuda_index: int | None) -> dict[str, Any]:
    """Energy counter and power over ``seconds``: idle (``cuda_index`` None) or under a matmul loop."""
    out: dict[str, Any] = {}
    try:
        start_j, start_s = gpu.energy_j(), time.monotonic()
        if cuda_index is None:
            time.sleep(seconds)
        else:
            out.update(_matmul_load(cuda_index, seconds, gpu))
        end_j, end_s = gpu.energy_j(), time.monotonic()
        out.update(
            energy_delta_j=end_j - start_j,
            window_s=end_s - start_s,
            mean_power_from_energy_w=(end_j - start_j) / max(end_s - start_s, 1e-9),
            power_w=gpu.power_w(),
            sm_clock_mhz=gpu.sm_clock_mhz(),
        )
    except GpuError as err:
        out["error"] = str(err)
    return out


def _matmul_load(cuda_index: int, seconds: float, gpu: NvmlGpu) -> dict[str, Any]:
    """bf16 8192^3 matmuls on ``cuda:<cuda_index>`` for ``seconds``; achieved TFLOP/s and clocks seen."""
    import torch  # a core dependency; imported here so the NVML-only path stays light

    if not torch.cuda.is_available():
        return {"ran": False, "reason": "torch sees no CUDA device (CPU build or no driver)"}
    n = 8192
    device = torch.device(f"cuda:{cuda_index}")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    done, clocks_mhz, power_w = 0, [], []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(8):
            a @ b
        torch.cuda.synchronize(device)
        done += 8
        clocks_mhz.append(gpu.sm_clock_mhz())
        power_w.append(gpu.power_w())
    elapsed = time.monotonic() - start
    return {
        "ran": True,
        "device": torch.cuda.get_device_name(device),
        "matmuls": done,
        "tflops": 2 * n**3 * done / elapsed / 1e12,
        "sm_clock_under_load_mhz": {"min": min(clocks_mhz), "max": max(clocks_mhz)},
        "power_under_load_w": {"min": min(power_w), "max": max(power_w)},
    }


def _try_lock(gpu: NvmlGpu, mhz: float) -> dict[str, Any]:
    result: dict[str, Any] = {"requested_mhz": mhz}
    try:
        result["set_mhz"] = gpu.lock_sm_clock(mhz)
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
    """Parse arguments, check the GPU, write one JSON line to stdout; 1 if its settings changed, else 0."""
    parser = argparse.ArgumentParser(prog="python -m greenrl.live.selfcheck", description=__doc__)
    parser.add_argument("--index", type=int, default=0, help="NVML index of the GPU (default 0)")
    parser.add_argument("--idle-s", type=float, default=1.0, help="idle energy window, s (default 1)")
    parser.add_argument("--workload-s", type=float, default=3.0, help="torch matmul workload, s; 0 skips it")
    parser.add_argument("--try-lock", type=float, default=None, metavar="MHZ", help="lock, read back, reset (opt-in)")
    args = parser.parse_args(argv)
    result = selfcheck(args.index, args.idle_s, args.workload_s, args.try_lock)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 1 if result.get("settings_unchanged") is False else 0


if __name__ == "__main__":
    raise SystemExit(main())
