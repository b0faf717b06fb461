"""Live serving node: real GPUs and a real vLLM server (the ``[live]`` extra).

Public names: Gpu, NvmlGpu, FakeGpu, GpuSet, open_gpus, snap_clock_mhz, GpuError, GpuPermissionError,
GpuNotSupportedError, GpuUnavailableError (all from ``greenrl.live.gpu``).

Importing this package imports no optional dependency: ``pynvml`` is imported only when an ``NvmlGpu`` is
created, so the package loads on a CPU-only machine.
"""

from __future__ import annotations

from greenrl.live.gpu import (
    FakeGpu,
    Gpu,
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuSet,
    GpuUnavailableError,
    NvmlGpu,
    open_gpus,
    snap_clock_mhz,
)

__all__ = [
    "FakeGpu",
    "Gpu",
    "GpuError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuSet",
    "GpuUnavailableError",
    "NvmlGpu",
    "open_gpus",
    "snap_clock_mhz",
]
