"""The real GPU through NVML: ``NvmlGpu`` (package ``nvidia-ml-py``, imported as ``pynvml``).

NVML's vendor units are converted here and nowhere else: energy mJ -> J, power and power limits mW -> W. ``pynvml`` is
imported only when an ``NvmlGpu`` is created (or every GPU is listed), so importing this module needs
neither a GPU nor the ``[live]`` extra.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from greenrl.live.gpu.base import (
    DEFAULT_MIN_INTERVAL_S,
    Gpu,
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
    permission_error,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_SUPPORTED_HINTS = {
    "energy_j": "the total energy counter needs a Volta or newer GPU",
    "power_w": "this GPU does not report power draw",
    "sm_clock_mhz": "this GPU does not report its SM clock",
    "supported_sm_clocks_mhz": "this GPU does not list supported clocks (e.g. some vGPU/MIG setups)",
    "lock_sm_clock": "locked clocks need a Volta or newer GPU and are unavailable on some vGPU/MIG setups",
    "reset_sm_clock": "locked clocks need a Volta or newer GPU and are unavailable on some vGPU/MIG setups",
}


class NvmlGpu(Gpu):
    """A real NVIDIA GPU through NVML (``pynvml``, package ``nvidia-ml-py``).

    Calls ``nvmlInit`` on creation and ``nvmlShutdown`` on ``close`` (NVML reference-counts these).
    NVML errors become ``GpuPermissionError``, ``GpuNotSupportedError`` or ``GpuError`` with a fix.

    Args:
        index: NVML index of the GPU (``nvidia-smi`` order, not ``CUDA_VISIBLE_DEVICES`` order).
        min_interval_s: minimum time between two SM clock changes, s.
        clock: monotonic time source, s.

    Raises:
        GpuUnavailableError: ``pynvml`` is not installed, NVML cannot initialize, or ``index`` does not exist.
    """

    def __init__(
        self,
        index: int,
        *,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = _import_pynvml(index)
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise GpuUnavailableError(
                index, "nvmlInit", f"NVML did not initialize: {err}", "run on a machine with an NVIDIA driver loaded"
            ) from err
        self._initialized = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
            if not 0 <= index < count:
                raise GpuUnavailableError(
                    index, "open", f"no GPU with NVML index {index} ({count} found)", f"pick an index in 0..{count - 1}"
                )
            self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
            raw_name = nvml.nvmlDeviceGetName(self._handle)
        except nvml.NVMLError as err:
            self._shutdown()
            raise GpuUnavailableError(index, "open", f"NVML error: {err}", "check `nvidia-smi`") from err
        except GpuError:
            self._shutdown()
            raise
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        super().__init__(index, name, min_interval_s=min_interval_s, clock=clock)

    def _call(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        """Call an NVML function, turning NVML errors into greenrl's ``GpuError`` family."""
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError_NoPermission as err:
            if operation in ("lock_sm_clock", "reset_sm_clock"):
                raise permission_error(self.index, operation) from err
            raise GpuPermissionError(
                self.index, operation, f"NVML_ERROR_NO_PERMISSION: {err}", "run as root/admin"
            ) from err
        except nvml.NVMLError_NotSupported as err:
            hint = _NOT_SUPPORTED_HINTS.get(operation, "unsupported on this GPU")
            raise GpuNotSupportedError(
                self.index,
                operation,
                f"NVML_ERROR_NOT_SUPPORTED: {hint}",
                "use a supported GPU or disable this feature",
            ) from err
        except nvml.NVMLError as err:
            raise GpuError(self.index, operation, f"NVML error: {err}", "check the GPU with `nvidia-smi`") from err

    def energy_j(self) -> float:
        """Cumulative energy since the driver was loaded, J (NVML total energy consumption, mJ / 1000)."""
        mj = self._call("energy_j", self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        return int(mj) / 1000.0

    def power_w(self) -> float:
        """Power draw reported by NVML, W (mW / 1000); the driver may average it over a window."""
        mw = self._call("power_w", self._nvml.nvmlDeviceGetPowerUsage, self._handle)
        return int(mw) / 1000.0

    def sm_clock_mhz(self) -> int:
        """Current SM clock, MHz (``nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM)``)."""
        nvml = self._nvml
        return int(self._call("sm_clock_mhz", nvml.nvmlDeviceGetClockInfo, self._handle, nvml.NVML_CLOCK_SM))

    def read_settings(self) -> dict[str, Any]:
        """The GPU's settings and state that a self-check reports, read only (nothing is set), SI/MHz.

        Power limits (mW -> W), SM/memory clocks and application clocks (MHz), temperature (C),
        persistence and MIG mode, clock-event (throttle) reasons, driver versions, and whether NVML
        restricts application clocks to root. A read the GPU does not support is None, its error listed
        in ``unreadable``.
        """
        nvml, h = self._nvml, self._handle
        out: dict[str, Any] = {}
        unreadable: dict[str, str] = {}

        def read(key: str, fn: Callable[..., Any], *args: Any, convert: Callable[[Any], Any] = int) -> None:
            try:
                out[key] = convert(fn(*args))
            except (nvml.NVMLError, AttributeError, TypeError) as err:
                out[key] = None
                unreadable[key] = str(err) or type(err).__name__

        def watts(mw: Any) -> float:
            return int(mw) / 1000.0

        read("power_limit_w", nvml.nvmlDeviceGetPowerManagementLimit, h, convert=watts)
        read("enforced_power_limit_w", nvml.nvmlDeviceGetEnforcedPowerLimit, h, convert=watts)
        read("default_power_limit_w", nvml.nvmlDeviceGetPowerManagementDefaultLimit, h, convert=watts)
        read(
            "power_limit_range_w",
            nvml.nvmlDeviceGetPowerManagementLimitConstraints,
            h,
            convert=lambda lim: [watts(lim[0]), watts(lim[1])],
        )
        read("max_sm_clock_mhz", nvml.nvmlDeviceGetMaxClockInfo, h, nvml.NVML_CLOCK_SM)
        read("memory_clock_mhz", nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM)
        read("applications_sm_clock_mhz", nvml.nvmlDeviceGetApplicationsClock, h, nvml.NVML_CLOCK_SM)
        read("default_applications_sm_clock_mhz", nvml.nvmlDeviceGetDefaultApplicationsClock, h, nvml.NVML_CLOCK_SM)
        read("temperature_c", nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU)
        read("persistence_mode", nvml.nvmlDeviceGetPersistenceMode, h, convert=lambda v: int(v) == 1)
        read("mig_mode", nvml.nvmlDeviceGetMigMode, h, convert=lambda v: [int(v[0]), int(v[1])])
        read("clock_event_reasons", nvml.nvmlDeviceGetCurrentClocksEventReasons, h)
        read(
            "application_clocks_restricted",
            nvml.nvmlDeviceGetAPIRestriction,
            h,
            nvml.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS,
            convert=lambda v: int(v) == int(nvml.NVML_FEATURE_ENABLED),
        )
        read("driver_version", nvml.nvmlSystemGetDriverVersion, convert=_text)
        read("cuda_driver_version", nvml.nvmlSystemGetCudaDriverVersion)
        out["unreadable"] = unreadable
        return out

    def _query_supported_sm_clocks_mhz(self) -> list[int]:
        nvml = self._nvml
        op = "supported_sm_clocks_mhz"
        memory_mhz = self._call(op, nvml.nvmlDeviceGetSupportedMemoryClocks, self._handle)
        if not memory_mhz:
            return []
        return list(self._call(op, nvml.nvmlDeviceGetSupportedGraphicsClocks, self._handle, int(max(memory_mhz))))

    def _set_locked_sm_clock(self, mhz: int) -> None:
        self._call("lock_sm_clock", self._nvml.nvmlDeviceSetGpuLockedClocks, self._handle, mhz, mhz)

    def _reset_locked_sm_clock(self) -> None:
        self._call("reset_sm_clock", self._nvml.nvmlDeviceResetGpuLockedClocks, self._handle)

    def _release(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if getattr(self, "_initialized", False):
            self._initialized = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as err:
                logger.warning("GPU %d: nvmlShutdown failed: %s", self.index, err)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _import_pynvml(index: int) -> ModuleType:
    try:
        import pynvml
    except ImportError as err:
        raise GpuUnavailableError(
            index, "import pynvml", "nvidia-ml-py is not installed", "pip install 'greenrl[live]'"
        ) from err
    return pynvml


def _all_nvml_indices() -> list[int]:
    nvml = _import_pynvml(-1)
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise GpuUnavailableError(
            -1, "nvmlInit", f"NVML did not initialize: {err}", "run on a machine with an NVIDIA driver loaded"
        ) from err
    try:
        return list(range(int(nvml.nvmlDeviceGetCount())))
    finally:
        nvml.nvmlShutdown()
