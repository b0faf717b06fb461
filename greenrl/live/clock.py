"""A real node's SM clock knobs: ``sm_clock_mhz`` locked directly, or a ``prefill_sm_clock_mhz`` by a governor.

Used by ``greenrl.live.backends.GpuBackend``, the real-node knob backend of ``LiveNode`` and the serving controller.
``SmClockControl.apply(base, prefill, changed)``:

* prefill 0: locks the base clock on every GPU (``GpuSet.lock_all``) when ``sm_clock_mhz`` changed; a
  lock the GPUs' rate limit ignored on any GPU is not reported applied (the caller asks again later);
* prefill > 0 with an admission proxy: hands the clock to a ``PrefillClockGovernor`` fed by the proxy's
  count of requests pending their first token and their earliest boost time (``set_on_pending``),
  started on first need; with a ``PrefillDeadline`` (the deadline governor) the proxy predicts each
  request's boost time from the layout (``set_layout``) and base clock in force, else at once;
* prefill > 0 without a proxy: logged once per value as "would apply"; the base clock stays;
* back to 0: the governor locks the base clock (waited for, bounded), is stopped, and the clock is locked
  directly again; a fault the governor met, or a base clock not restored, is raised by the next ``apply``.

``close`` stops the governor and leaves the clock as it is: the owner resets the clocks (``GpuSet.close``).

Public names: ClockRestoreError, PendingSource, SmClockControl.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

from greenrl.live.governor import PrefillClockGovernor
from greenrl.live.gpu import GpuSet, snap_clock_mhz

if TYPE_CHECKING:
    from greenrl.live.deadline import BoostPredictor, PrefillDeadline
    from greenrl.live.proxy import PendingListener

__all__ = ["ClockRestoreError", "PendingSource", "SmClockControl"]

logger = logging.getLogger(__name__)


class ClockRestoreError(RuntimeError):
    """The governor did not put the base clock back in time when the prefill clock was turned off."""


class PendingSource(Protocol):
    """What the governor needs from an admission proxy (``AdmissionProxy.set_on_pending``)."""

    def set_on_pending(self, listener: PendingListener | None, *, deadline: BoostPredictor | None = None) -> None:
        """Call ``listener(pending_first_token, boost_at_s)`` now and on every change (None: no listener).

        ``deadline`` predicts each arriving request's boost time (None: at once).
        """
        ...


class SmClockControl:
    """The SM clock of a node's GPUs: locked here, or by a governor while a prefill clock is asked for.

    Args:
        gpus: the node's GPUs (the owner closes them).
        proxy: the source of the pending-first-token count; None: a prefill clock is not applied.
        hint: appended to the "would apply ... no admission proxy" message (how to get a proxy).
        deadline: the deadline governor's predictor, handed to the proxy while a governor runs and kept
            configured with the layout and base clock in force; None: the prefill clock whenever a
            request is pending.

    Attributes:
        governor: the running ``PrefillClockGovernor``, if any.
        deadline: the predictor (see ``set_deadline``).
        locked_mhz: the clock last locked here (as asked; a request the rate limit ignored leaves it) or by
            a governor now stopped; None: none yet.
    """

    def __init__(
        self,
        gpus: GpuSet,
        proxy: PendingSource | None = None,
        *,
        hint: str = "",
        deadline: PrefillDeadline | None = None,
    ) -> None:
        self.gpus, self.proxy, self.hint = gpus, proxy, hint
        self.deadline = deadline
        self._layout: tuple[int, int, int] | None = None  # tp, replicas, max_num_batched_tokens
        self.governor: PrefillClockGovernor | None = None
        self.locked_mhz: int | None = None
        self._in_force_mhz: int | None = None  # base clock in force, as the GPUs reported it
        self._prefill_mhz = 0
        self._error: Exception | None = None  # met while handing the clock back from the governor
        self._logged: set[int] = set()
        self._prefill_done_s = 0.0  # time at the prefill clock under governors now stopped

    @property
    def sm_clock_mhz(self) -> int | None:
        """The base clock in force (None before any lock), MHz.

        The one handed to the governor, or what the last direct lock left locked (the previous clock if
        the GPUs' rate limit ignored it), or what a stopped governor locked last.
        """
        return self._in_force_mhz

    @property
    def prefill_sm_clock_mhz(self) -> int:
        """The prefill clock in force: the running governor's, 0 without one."""
        return self._prefill_mhz if self.governor is not None else 0

    @property
    def prefill_s(self) -> float:
        """Cumulative wall seconds the governors held the prefill clock (0 without a prefill clock)."""
        gov = self.governor
        return self._prefill_done_s + (gov.prefill_s if gov is not None else 0.0)

    def set_layout(self, tp: int, replicas: int, max_num_batched_tokens: int) -> None:
        """The layout and chunked-prefill budget in force, for the deadline's predictions (cheap; call often)."""
        self._layout = (int(tp), int(replicas), int(max_num_batched_tokens))
        self._configure_deadline()

    def set_deadline(self, deadline: PrefillDeadline | None) -> None:
        """Use another predictor (None: none); a running governor's proxy gets it for the next arrivals."""
        self.deadline = deadline
        self._configure_deadline()
        if self.governor is not None and self.proxy is not None:
            self.proxy.set_on_pending(self.governor.on_pending, deadline=deadline)

    def _configure_deadline(self) -> None:
        """Hand the layout and base clock in force to the predictor, once both are known."""
        deadline, layout, base = self.deadline, self._layout, self._in_force_mhz
        if deadline is not None and layout is not None and base is not None:
            tp, replicas, batched = layout
            deadline.configure(tp=tp, replicas=replicas, base_clock_mhz=base, max_num_batched_tokens=batched)

    def apply(self, base_mhz: int, prefill_mhz: int, changed: Collection[str]) -> list[str]:
        """Set the clocks (``changed``: the knob names that differ from the last call); returns those applied.

        A direct lock of ``sm_clock_mhz`` that the GPUs' rate limit ignored is left out of the result.

        Raises:
            GpuPermissionError: NVML refused the clock for lack of privilege.
            GpuError: another NVML failure (also one the governor met since the last call).
            ClockRestoreError: the governor did not put the base clock back in time (at the previous call).
        """
        err, self._error = self._error, None
        if self.governor is not None:
            err = err or self.governor.pop_error()
        if err is not None:
            raise err
        names = [k for k in ("sm_clock_mhz", "prefill_sm_clock_mhz") if k in changed]
        if prefill_mhz > 0 and self.proxy is None:
            if "prefill_sm_clock_mhz" in changed and prefill_mhz not in self._logged:
                self._logged.add(prefill_mhz)
                logger.warning("would apply prefill_sm_clock_mhz=%d: no admission proxy%s", prefill_mhz, self.hint)
            names = [k for k in names if k != "prefill_sm_clock_mhz"]
            prefill_mhz = 0
        if prefill_mhz > 0:
            self._in_force_mhz, self._prefill_mhz = base_mhz, prefill_mhz
            self._configure_deadline()  # before the proxy predicts with it: arrivals see this base clock
            if self.governor is None:
                self.governor = self._start_governor()
            self.governor.configure(base_mhz, prefill_mhz)
        elif self.governor is not None:
            self._stop_governor(base_mhz)
        elif "sm_clock_mhz" in changed:
            applied = self.gpus.lock_all(base_mhz)
            self._in_force_mhz = int(applied[0]) if applied else base_mhz
            wanted = [snap_clock_mhz(base_mhz, g.supported_sm_clocks_mhz()) for g in self.gpus]
            if applied != wanted:
                # a GPU's rate limit kept its previous clock: not applied, so that the caller asks again
                msg = "sm_clock_mhz=%d ignored by the GPUs' rate limit (in force: %s): will be retried"
                logger.info(msg, base_mhz, applied)
                return [k for k in names if k != "sm_clock_mhz"]
            self.locked_mhz = base_mhz
        return names

    def _start_governor(self) -> PrefillClockGovernor:
        assert self.proxy is not None
        min_interval_s = max((g.min_interval_s for g in self.gpus), default=0.0)
        governor = PrefillClockGovernor(self.gpus.lock_all, min_interval_s=min_interval_s, locked_mhz=self.locked_mhz)
        self.proxy.set_on_pending(governor.on_pending, deadline=self.deadline)
        return governor

    def _stop_governor(self, base_mhz: int) -> None:
        """Let the governor lock ``base_mhz`` (a failure is raised by the next ``apply``), then stop it."""
        governor = self.governor
        assert governor is not None
        try:
            if self.proxy is not None:
                self.proxy.set_on_pending(None)
            governor.configure(base_mhz, 0)
            if not governor.settle(governor.min_interval_s + governor.retry_s + 5.0):
                restore = ClockRestoreError(f"the SM clock did not return to {base_mhz} MHz")
                self._error = governor.pop_error() or restore
        finally:
            self._retire(governor)
            self.locked_mhz = self._in_force_mhz = governor.locked_mhz

    def _retire(self, governor: PrefillClockGovernor) -> None:
        self.governor = None
        governor.close()
        self._prefill_done_s += governor.prefill_s
        logger.info("prefill clock governor stopped: %s", governor.stats())

    def close(self) -> None:
        """Stop the governor (the clock stays as it is; the owner resets the clocks). Idempotent."""
        if self.governor is None:
            return
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.set_on_pending(None)
        self._retire(self.governor)
