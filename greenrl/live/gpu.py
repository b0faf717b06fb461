"""GPU layer of the live node: energy counter, power, SM clock locking and safe reset.

Public names: Gpu, NvmlGpu, FakeGpu, GpuSet, open_gpus, snap_clock_mhz, GpuError, GpuPermissionError,
GpuNotSupportedError, GpuUnavailableError.

Units: everything leaving this module is SI (``_j``, ``_w``, ``_s``) or MHz (``_mhz``). NVML's vendor units
(energy in mJ, power in mW) are converted here and nowhere else. The reward's energy comes from the
cumulative energy counter (``energy_j``), never from integrating sampled power. See ``docs/live_gpu.md``.

``pynvml`` (package ``nvidia-ml-py``) is imported only when an ``NvmlGpu`` is created, so importing this
module needs neither a GPU nor the ``[live]`` extra.
"""

from __future__ import annotations

import bisect
import logging
import math
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType, ModuleType, TracebackType
from typing import Any, Literal, TypeVar

from greenrl.errors import InputError

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

logger = logging.getLogger(__name__)

T = TypeVar("T")

H100_SM_CLOCKS_MHZ: tuple[int, ...] = tuple(range(345, 1981, 15))
"""Default supported SM clocks of ``FakeGpu``: an H100's 345..1980 MHz in 15 MHz steps."""

DEFAULT_MIN_INTERVAL_S = 1.0
"""Default minimum time between two SM clock changes on one GPU, s."""

_LOCK_PRIVILEGE = (
    "nvmlDeviceSetGpuLockedClocks and nvmlDeviceResetGpuLockedClocks need root/admin "
    "(NVML 'Device Commands'); in a container, run as root and start it with --cap-add SYS_ADMIN"
)
_LOCK_FIX = (
    "run the live node as root (in a container: as root with --cap-add SYS_ADMIN), or lock the clock "
    "beforehand as root with `nvidia-smi -i <index> -lgc <mhz>,<mhz>` and disable clock control; "
    "`nvidia-smi -acp UNRESTRICTED` does not help, it only lifts the restriction on application clocks "
    "(-ac) and auto boost, not on locked clocks (-lgc)"
)


class GpuError(RuntimeError):
    """A GPU operation failed.

    Args:
        index: NVML index of the GPU.
        operation: what greenrl was doing (``lock_sm_clock``, ``energy_j``, ...).
        problem: what went wrong.
        fix: what to do about it.
    """

    def __init__(self, index: int, operation: str, problem: str, fix: str) -> None:
        self.index, self.operation, self.problem, self.fix = index, operation, problem, fix
        super().__init__(f"GPU {index}: {operation}: {problem}; fix: {fix}")


class GpuPermissionError(GpuError):
    """NVML refused an operation for lack of privilege (``NVML_ERROR_NO_PERMISSION``)."""


class GpuNotSupportedError(GpuError):
    """The GPU or driver does not support an operation (``NVML_ERROR_NOT_SUPPORTED``)."""


class GpuUnavailableError(GpuError):
    """NVML cannot be loaded or initialized, or the GPU index does not exist."""


def permission_error(index: int, operation: str) -> GpuPermissionError:
    """Build the error that a clock change without privilege raises, naming the privilege needed.

    Args:
        index: NVML index of the GPU.
        operation: ``lock_sm_clock`` or ``reset_sm_clock``.

    Returns:
        A ``GpuPermissionError`` whose message names the privilege and how to get it.
    """
    return GpuPermissionError(index, operation, f"NVML_ERROR_NO_PERMISSION: {_LOCK_PRIVILEGE}", _LOCK_FIX)


def snap_clock_mhz(request_mhz: float, supported_mhz: Sequence[int]) -> int:
    """Clamp a requested clock to the supported range and snap it to the nearest supported clock.

    Ties go to the lower clock (the energy-saving side).

    Args:
        request_mhz: requested clock, MHz; any finite number.
        supported_mhz: supported clocks, MHz, sorted ascending, non-empty.

    Returns:
        The supported clock nearest to ``request_mhz`` clamped to ``[supported_mhz[0], supported_mhz[-1]]``, MHz.

    Raises:
        InputError: ``request_mhz`` is not finite, or ``supported_mhz`` is empty.

    Example:
        >>> snap_clock_mhz(1000.0, [900, 960, 1020])
        1020
        >>> snap_clock_mhz(990, [900, 960, 1020])
        960
        >>> snap_clock_mhz(99_999, [900, 960, 1020])
        1020
    """
    if not math.isfinite(request_mhz):
        raise InputError("lock_sm_clock", "mhz", f"{request_mhz!r} is not a finite number", "pass a clock in MHz")
    if not supported_mhz:
        raise InputError("lock_sm_clock", "supported_mhz", "no supported clocks", "query the GPU's supported clocks")
    clamped = min(max(request_mhz, supported_mhz[0]), supported_mhz[-1])
    i = bisect.bisect_left(supported_mhz, clamped)
    if i == 0:
        return int(supported_mhz[0])
    if i == len(supported_mhz):
        return int(supported_mhz[-1])
    below, above = supported_mhz[i - 1], supported_mhz[i]
    return int(above) if above - clamped < clamped - below else int(below)


class Gpu(ABC):
    """One GPU: cumulative energy, power, SM clock and SM clock locking.

    Subclasses supply the device access (``energy_j``, ``power_w``, ``sm_clock_mhz`` and the three ``_``
    hooks); this class owns the shared policy:

    * ``lock_sm_clock`` clamps to the supported range and snaps to the nearest supported clock.
    * Rate limit: while a lock is in force, a change requested less than ``min_interval_s`` after the
      previous change is **ignored** (not deferred): nothing is sent to the GPU, a debug line is logged,
      and the clock in force is returned. With no lock in force (first lock, or after a reset) the lock
      applies at once. A request that snaps to the clock already in force is a no-op and does not restart
      the interval. ``reset_sm_clock`` is never rate-limited.
    * ``close`` resets the SM clock only if this object may have locked it, then releases the device.

    Args:
        index: NVML index of the GPU.
        name: product name.
        min_interval_s: minimum time between two SM clock changes, s; 0 disables the rate limit.
        clock: monotonic time source, s (tests pass a fake).
    """

    def __init__(
        self,
        index: int,
        name: str,
        *,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(min_interval_s) and min_interval_s >= 0):
            raise InputError(type(self).__name__, "min_interval_s", f"{min_interval_s!r} is not >= 0", "pass e.g. 1.0")
        self.index = index
        self.name = name
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._supported: tuple[int, ...] | None = None
        self._locked_mhz: int | None = None
        self._last_change_at_s: float | None = None
        self._needs_reset = False
        self._closed = False

    # -- device access (subclasses) -------------------------------------------------------------
    @abstractmethod
    def energy_j(self) -> float:
        """Cumulative energy counter, J; only differences between two reads are meaningful."""

    @abstractmethod
    def power_w(self) -> float:
        """Current power draw as reported by the device, W; for display, never for the reward."""

    @abstractmethod
    def sm_clock_mhz(self) -> int:
        """Current SM clock, MHz."""

    @abstractmethod
    def _query_supported_sm_clocks_mhz(self) -> Iterable[int]:
        """Supported SM clocks at the maximum memory clock, MHz, any order, duplicates allowed."""

    @abstractmethod
    def _set_locked_sm_clock(self, mhz: int) -> None:
        """Lock the SM clock to ``mhz`` (already snapped)."""

    @abstractmethod
    def _reset_locked_sm_clock(self) -> None:
        """Undo any SM clock lock."""

    def _release(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release the device handle; called once by ``close``."""

    # -- shared policy ----------------------------------------------------------------------------
    @property
    def locked_sm_clock_mhz(self) -> int | None:
        """SM clock this object locked and has not reset, MHz; ``None`` when none is in force."""
        return self._locked_mhz

    def supported_sm_clocks_mhz(self) -> list[int]:
        """Supported SM clocks at the maximum memory clock, MHz, sorted ascending, deduplicated (cached)."""
        if self._supported is None:
            self._supported = tuple(sorted({int(c) for c in self._query_supported_sm_clocks_mhz()}))
        return list(self._supported)

    def lock_sm_clock(self, mhz: float) -> int:
        """Lock the SM clock near ``mhz``, subject to clamping, snapping and the rate limit.

        Args:
            mhz: requested SM clock, MHz.

        Returns:
            The SM clock in force after the call, MHz (the snapped request, or the previous lock when the
            request was ignored by the rate limit).

        Raises:
            InputError: ``mhz`` is not finite.
            GpuPermissionError: the process may not lock clocks (needs root/admin).
            GpuNotSupportedError: the GPU cannot lock clocks or list its supported clocks.
            GpuError: this GPU is closed, or another NVML failure.
        """
        if self._closed:
            raise GpuError(self.index, "lock_sm_clock", "GPU is closed", "open the GPU again")
        supported = self.supported_sm_clocks_mhz()
        if not supported:
            raise GpuNotSupportedError(
                self.index, "lock_sm_clock", "the GPU reports no supported SM clocks", "disable clock control"
            )
        target = snap_clock_mhz(mhz, supported)
        if self._locked_mhz is not None:
            if target == self._locked_mhz:
                return target
            now_s = self._clock()
            if self._last_change_at_s is not None and now_s - self._last_change_at_s < self.min_interval_s:
                logger.debug(
                    "GPU %d: ignored SM clock change to %d MHz %.3f s after the last change (min interval %.3f s)",
                    self.index,
                    target,
                    now_s - self._last_change_at_s,
                    self.min_interval_s,
                )
                return self._locked_mhz
        self._needs_reset = True  # set before the call: if it is interrupted, close() still resets
        try:
            self._set_locked_sm_clock(target)
        except (GpuPermissionError, GpuNotSupportedError):
            if self._locked_mhz is None:
                self._needs_reset = False  # nothing changed on the device
            raise
        self._locked_mhz = target
        self._last_change_at_s = self._clock()
        logger.debug("GPU %d: locked SM clock to %d MHz (requested %s)", self.index, target, mhz)
        return target

    def reset_sm_clock(self) -> None:
        """Reset the SM clock to the driver default (unlock); never rate-limited.

        Raises:
            GpuPermissionError: the process may not reset clocks (needs root/admin).
            GpuError: another NVML failure.
        """
        self._reset_locked_sm_clock()
        self._locked_mhz = None
        self._needs_reset = False
        logger.debug("GPU %d: reset SM clock", self.index)

    def close(self) -> None:
        """Reset the SM clock if this object may have locked it, then release the device; idempotent."""
        if self._closed:
            return
        try:
            if self._needs_reset:
                self.reset_sm_clock()
        finally:
            self._closed = True
            self._release()

    def __enter__(self) -> Gpu:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index}, name={self.name!r}, locked={self._locked_mhz})"


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


def _import_pynvml(index: int) -> ModuleType:
    try:
        import pynvml
    except ImportError as err:
        raise GpuUnavailableError(
            index, "import pynvml", "nvidia-ml-py is not installed", "pip install 'greenrl[live]'"
        ) from err
    return pynvml


FakeOperation = Literal["energy_j", "power_w", "sm_clock_mhz", "supported_sm_clocks_mhz", "lock", "reset"]


class FakeGpu(Gpu):
    """An in-memory GPU for tests and the CPU-only digital twin; needs no ``pynvml``.

    Energy is driven from outside: ``energy_j()`` returns ``energy_source()`` (cumulative J) plus everything
    added with ``add_energy_j``. Lock and reset calls are recorded in ``calls`` as ``("lock", mhz)`` and
    ``("reset", None)``. ``fail(operation, error)`` makes an operation raise, to test fault handling;
    ``deny_permission()`` makes lock and reset raise the same ``GpuPermissionError`` as ``NvmlGpu``.

    Args:
        index: GPU index.
        name: product name.
        supported_sm_clocks_mhz: supported SM clocks, MHz; default H100 (345..1980 in 15 MHz steps).
        energy_source: callable returning cumulative energy, J; default none (only ``add_energy_j``).
        power_w: power that ``power_w()`` reports, W.
        default_sm_clock_mhz: SM clock when unlocked, MHz; default the highest supported clock.
        min_interval_s: minimum time between two SM clock changes, s.
        clock: monotonic time source, s.
    """

    def __init__(
        self,
        index: int = 0,
        name: str = "FakeGpu (H100 clocks)",
        *,
        supported_sm_clocks_mhz: Sequence[int] = H100_SM_CLOCKS_MHZ,
        energy_source: Callable[[], float] | None = None,
        power_w: float = 0.0,
        default_sm_clock_mhz: int | None = None,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(index, name, min_interval_s=min_interval_s, clock=clock)
        self._clocks_mhz = [int(c) for c in supported_sm_clocks_mhz]
        self._energy_source = energy_source
        self._added_j = 0.0
        self._power_w = float(power_w)
        self._default_mhz = (
            default_sm_clock_mhz if default_sm_clock_mhz is not None else max(self._clocks_mhz, default=0)
        )
        self._failures: dict[str, BaseException] = {}
        self.calls: list[tuple[str, int | None]] = []
        self.released = False

    # -- driving the fake ---------------------------------------------------------------------------
    def add_energy_j(self, energy_j: float) -> None:
        """Add energy to the counter, J (>= 0: the counter never decreases)."""
        if not (math.isfinite(energy_j) and energy_j >= 0):
            raise InputError(
                "FakeGpu.add_energy_j", "energy_j", f"{energy_j!r} is not a finite number >= 0", "add >= 0 J"
            )
        self._added_j += energy_j

    def set_power_w(self, power_w: float) -> None:
        """Set the power that ``power_w()`` reports, W."""
        self._power_w = float(power_w)

    def fail(self, operation: FakeOperation, error: BaseException | None) -> None:
        """Make ``operation`` raise ``error`` from now on; ``None`` clears the failure."""
        if error is None:
            self._failures.pop(operation, None)
        else:
            self._failures[operation] = error

    def deny_permission(self) -> None:
        """Make lock and reset raise the ``GpuPermissionError`` a non-root ``NvmlGpu`` raises."""
        self.fail("lock", permission_error(self.index, "lock_sm_clock"))
        self.fail("reset", permission_error(self.index, "reset_sm_clock"))

    def _maybe_fail(self, operation: str) -> None:
        error = self._failures.get(operation)
        if error is not None:
            raise error

    # -- Gpu ----------------------------------------------------------------------------------------
    def energy_j(self) -> float:
        """Cumulative energy, J: ``energy_source()`` plus energy added with ``add_energy_j``."""
        self._maybe_fail("energy_j")
        source_j = float(self._energy_source()) if self._energy_source is not None else 0.0
        return source_j + self._added_j

    def power_w(self) -> float:
        """Power set with ``power_w=`` or ``set_power_w``, W."""
        self._maybe_fail("power_w")
        return self._power_w

    def sm_clock_mhz(self) -> int:
        """Locked SM clock, or ``default_sm_clock_mhz`` when unlocked, MHz."""
        self._maybe_fail("sm_clock_mhz")
        return self._locked_mhz if self._locked_mhz is not None else self._default_mhz

    def _query_supported_sm_clocks_mhz(self) -> list[int]:
        self._maybe_fail("supported_sm_clocks_mhz")
        return list(self._clocks_mhz)

    def _set_locked_sm_clock(self, mhz: int) -> None:
        self._maybe_fail("lock")
        self.calls.append(("lock", mhz))

    def _reset_locked_sm_clock(self) -> None:
        self._maybe_fail("reset")
        self.calls.append(("reset", None))

    def _release(self) -> None:
        self.released = True


SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class GpuSet:
    """The GPUs of one node, managed together; a context manager that always resets clocks.

    Clocks are reset (on each GPU that this set may have locked) when the set closes: on ``close()``, on
    leaving a ``with`` block normally or by an exception, and on SIGTERM once ``install_sigterm_handler()``
    was called. Reset failures while an exception is already propagating are logged, not raised, so the
    original error surfaces.

    Args:
        gpus: the GPUs; the set owns them and closes them.
    """

    def __init__(self, gpus: Sequence[Gpu]) -> None:
        indices = [g.index for g in gpus]
        if len(set(indices)) != len(indices):
            raise InputError("GpuSet", "gpus", f"duplicate GPU indices {indices}", "list each GPU once")
        self._gpus = list(gpus)
        self._closed = False
        self._previous_sigterm: SignalHandler = None
        self._sigterm_installed = False

    @property
    def gpus(self) -> list[Gpu]:
        """The GPUs, in the order given."""
        return list(self._gpus)

    @property
    def indices(self) -> list[int]:
        """NVML indices of the GPUs."""
        return [g.index for g in self._gpus]

    def __len__(self) -> int:
        return len(self._gpus)

    def __iter__(self) -> Iterator[Gpu]:
        return iter(self._gpus)

    def __getitem__(self, i: int) -> Gpu:
        return self._gpus[i]

    def energy_j(self) -> float:
        """Sum of the GPUs' cumulative energy counters, J; only differences are meaningful."""
        return sum(g.energy_j() for g in self._gpus)

    def power_w(self) -> float:
        """Sum of the GPUs' reported power, W; for display, never for the reward."""
        return sum(g.power_w() for g in self._gpus)

    def lock_all(self, mhz: float) -> list[int]:
        """Lock every GPU's SM clock near ``mhz`` (see ``Gpu.lock_sm_clock``).

        Args:
            mhz: requested SM clock, MHz.

        Returns:
            The SM clock in force on each GPU after the call, MHz.
        """
        return [g.lock_sm_clock(mhz) for g in self._gpus]

    def reset_all(self) -> None:
        """Reset every GPU's SM clock; tries all GPUs, then raises the first failure."""
        self._each(lambda g: g.reset_sm_clock(), "reset_sm_clock", raise_errors=True)

    def close(self, *, raise_errors: bool = True) -> None:
        """Reset the clocks this set may have locked, close every GPU and restore the SIGTERM handler.

        Idempotent. Every GPU is closed even if one fails.

        Args:
            raise_errors: raise the first failure after trying every GPU; when False only log failures.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._each(lambda g: g.close(), "close", raise_errors=raise_errors)
        finally:
            self.uninstall_sigterm_handler()

    def _each(self, fn: Callable[[Gpu], object], what: str, *, raise_errors: bool) -> None:
        first: BaseException | None = None
        for g in self._gpus:
            try:
                fn(g)
            except Exception as err:  # keep going: every GPU must get its reset
                logger.error("GPU %d: %s failed: %s", g.index, what, err)
                first = first or err
        if first is not None and raise_errors:
            raise first

    def install_sigterm_handler(self) -> None:
        """Reset clocks on SIGTERM, then terminate as the previous handler would.

        On SIGTERM the handler closes this set (resetting clocks, logging failures), restores the previous
        handler, and then: calls the previous handler if it was a Python callable; returns if it was
        ``SIG_IGN``; otherwise (``SIG_DFL``) raises ``SystemExit(128 + SIGTERM)`` so that ``finally`` blocks
        and ``with`` exits still run. Must be called from the main thread (a Python rule for signals).
        ``close`` restores the previous handler.
        """
        if self._sigterm_installed:
            return
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._sigterm_installed = True

    def uninstall_sigterm_handler(self) -> None:
        """Restore the SIGTERM handler that ``install_sigterm_handler`` replaced, if still ours."""
        if not self._sigterm_installed:
            return
        self._sigterm_installed = False
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        logger.warning("SIGTERM: resetting GPU clocks on %s", self.indices)
        previous = self._previous_sigterm
        self.close(raise_errors=False)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            raise SystemExit(128 + signum)

    def __enter__(self) -> GpuSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def __repr__(self) -> str:
        return f"GpuSet({self._gpus!r})"


def open_gpus(
    indices: Sequence[int] | None = None,
    backend: Literal["nvml", "fake"] = "nvml",
    *,
    min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
) -> GpuSet:
    """Open GPUs by NVML index as a ``GpuSet``.

    Args:
        indices: NVML indices; ``None`` opens every GPU (``nvml``) or one GPU 0 (``fake``).
        backend: ``nvml`` for real GPUs, ``fake`` for ``FakeGpu``s with H100 clocks.
        min_interval_s: minimum time between two SM clock changes per GPU, s.

    Returns:
        The opened GPUs; use it as a context manager so clocks are reset.

    Raises:
        InputError: unknown backend, or duplicate or negative indices.
        GpuUnavailableError: NVML cannot initialize or an index does not exist.
    """
    if backend not in ("nvml", "fake"):
        raise InputError("open_gpus", "backend", f"unknown backend {backend!r}", "use 'nvml' or 'fake'")
    if indices is None:
        indices = _all_nvml_indices() if backend == "nvml" else [0]
    index_list = [int(i) for i in indices]
    if len(set(index_list)) != len(index_list) or any(i < 0 for i in index_list):
        raise InputError(
            "open_gpus", "indices", f"{index_list} has duplicates or negatives", "list each index >= 0 once"
        )
    opened: list[Gpu] = []
    try:
        for i in index_list:
            if backend == "nvml":
                opened.append(NvmlGpu(i, min_interval_s=min_interval_s))
            else:
                opened.append(FakeGpu(i, min_interval_s=min_interval_s))
    except BaseException:
        for g in opened:
            g.close()
        raise
    return GpuSet(opened)


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
