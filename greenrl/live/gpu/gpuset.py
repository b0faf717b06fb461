"""The GPUs of one node: ``GpuSet`` (reset clocks on close, exception or SIGTERM) and ``open_gpus``."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from types import FrameType, TracebackType
from typing import Any, Literal

from greenrl.errors import InputError
from greenrl.live.gpu.base import DEFAULT_MIN_INTERVAL_S, Gpu
from greenrl.live.gpu.fake import FakeGpu
from greenrl.live.gpu.nvml import NvmlGpu, _all_nvml_indices

logger = logging.getLogger(__name__)

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
