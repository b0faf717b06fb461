"""The GPU layer's base: the ``Gpu`` ABC (clock-lock policy), the ``GpuError`` family, clock snapping.

``Gpu`` owns the policy every backend shares (clamping and snapping a requested SM clock, the rate
limit, reset on close); a backend supplies the device access. Units: everything a ``Gpu`` returns is SI
(``_j``, ``_w``, ``_s``) or MHz (``_mhz``); a backend converts its vendor units before returning.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from greenrl.errors import InputError

logger = logging.getLogger(__name__)

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
