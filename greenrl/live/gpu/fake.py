"""An in-memory GPU: ``FakeGpu``, for tests and the CPU-only digital twin (needs no ``pynvml``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

from greenrl.errors import InputError
from greenrl.live.gpu.base import DEFAULT_MIN_INTERVAL_S, Gpu, permission_error

H100_SM_CLOCKS_MHZ: tuple[int, ...] = tuple(range(345, 1981, 15))
"""Default supported SM clocks of ``FakeGpu``: an H100's 345..1980 MHz in 15 MHz steps."""

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
