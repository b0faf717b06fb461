"""GPU layer of the live node: energy counter, power, SM clock locking and safe reset.

Public names: Gpu, NvmlGpu, FakeGpu, GpuSet, open_gpus, snap_clock_mhz, GpuError, GpuPermissionError,
GpuNotSupportedError, GpuUnavailableError.

Units: everything leaving this package is SI (``_j``, ``_w``, ``_s``) or MHz (``_mhz``). NVML's vendor
units (energy in mJ, power in mW) are converted in ``nvml`` and nowhere else. The reward's energy comes from the
cumulative energy counter (``energy_j``), never from integrating sampled power. See ``docs/live_gpu.md``.

``pynvml`` (package ``nvidia-ml-py``) is imported only when an ``NvmlGpu`` is created, so importing this
package needs neither a GPU nor the ``[live]`` extra.

Modules, one job each: ``base`` (the ``Gpu`` ABC and its clock-lock policy, the ``GpuError`` family,
``snap_clock_mhz``), ``nvml`` (``NvmlGpu``: NVML and its unit conversions), ``fake`` (``FakeGpu``),
``gpuset`` (``GpuSet``, ``open_gpus``).
"""

from __future__ import annotations

from greenrl.live.gpu.base import DEFAULT_MIN_INTERVAL_S as DEFAULT_MIN_INTERVAL_S
from greenrl.live.gpu.base import (
    Gpu,
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
    snap_clock_mhz,
)
from greenrl.live.gpu.fake import H100_SM_CLOCKS_MHZ as H100_SM_CLOCKS_MHZ
from greenrl.live.gpu.fake import FakeGpu
from greenrl.live.gpu.gpuset import GpuSet, open_gpus
from greenrl.live.gpu.nvml import NvmlGpu

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
