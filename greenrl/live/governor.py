"""Phase-aware SM clock on a real node: the prefill clock while requests wait for their first token.

Why: prefill is compute-bound and sets TTFT, decode is memory-bound and loses little at a lower SM clock.
The ``prefill_sm_clock_mhz`` knob asks for one clock while any request waits or prefills and the base
clock (``sm_clock_mhz``) otherwise. The simulator decides that per replica; on a real node the only signal
is the admission proxy's count of requests pending their first token (node-wide: one clock for all GPUs)
and, under the deadline governor (``greenrl.live.deadline``), the earliest boost time among them: the
prefill clock is wanted only once that time has come, as the simulator's ``control.prefill_clock_ttft_s``.

The proxy reports every change of the count from its asyncio loop, where nothing may block, and an NVML
clock lock takes milliseconds. So ``on_pending`` only records the count and boost time and wakes one
worker thread, which:

* wakes by itself at a boost time still to come (a timed wait), as nothing else may happen until then;
* applies only the latest wanted clock (a burst of changes coalesces into at most one lock);
* never locks the clock it already locked;
* waits ``min_interval_s`` between two locks (``Gpu.lock_sm_clock`` silently ignores faster changes, so
  the governor defers instead of losing a switch);
* survives a failing lock: the error is logged once per error type, kept in ``last_error`` (and handed
  to ``pop_error`` for the caller's fallback logic) and the lock is tried again after ``retry_s``.

Public names: PrefillClockGovernor.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PrefillClockGovernor"]

logger = logging.getLogger(__name__)


class PrefillClockGovernor:
    """Lock ``prefill_mhz`` while requests are pending their first token, ``base_mhz`` otherwise.

    Wanted clock: ``prefill_mhz`` if ``prefill_mhz > 0``, the pending count > 0 and the earliest boost
    time of the pending requests has come (``clock() >= boost_at_s``; ``-inf``: at once), else ``base_mhz``.
    Nothing is locked before the first ``configure``.

    Args:
        lock: ``lock(clock_mhz)`` locks every GPU's SM clock (``GpuSet.lock_all``); called from the
            worker thread only, never twice at once.
        min_interval_s: fewest seconds between two locks (the GPUs' own rate limit).
        retry_s: wait before a failed lock is tried again (s); a new ``configure`` tries at once.
        locked_mhz: the clock already locked when the governor starts (None: unknown); when given, the
            first switch away from it also waits ``min_interval_s`` (the caller may just have locked it).
        clock: monotonic time source (s), for the rate limit, ``prefill_s`` and boost times (the proxy's loop
            time is ``time.monotonic``).

    Attributes:
        switches: locks applied (every one changed the clock).
        boosts: locks of the prefill clock applied (a part of ``switches``).
        last_error: the last exception ``lock`` raised (kept after a later success; see ``pop_error``).
    """

    def __init__(
        self,
        lock: Callable[[int], object],
        *,
        min_interval_s: float = 0.0,
        retry_s: float = 1.0,
        locked_mhz: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock_fn = lock
        self.min_interval_s, self.retry_s = float(min_interval_s), float(retry_s)
        self._clock = clock
        self._cond = threading.Condition()
        self._base_mhz = 0
        self._prefill_mhz = 0
        self._configured = False
        self._pending = 0
        self._boost_at_s = -math.inf
        self._locked_mhz = locked_mhz
        now_s = clock()
        self._switch_gate_s = now_s + self.min_interval_s if locked_mhz is not None else -float("inf")
        self._retry_gate_s = -float("inf")
        self._busy = False
        self._closed = False
        self.switches = 0
        self.boosts = 0
        self.failures = 0
        self.last_error: Exception | None = None
        self._fresh_error: Exception | None = None
        self._logged_types: set[type[Exception]] = set()
        self._at_prefill = False
        self._since_s = now_s
        self._prefill_total_s = 0.0
        self._thread = threading.Thread(target=self._run, name="greenrl-prefill-clock", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ inputs

    def configure(self, base_mhz: int, prefill_mhz: int) -> None:
        """Set the base clock and the prefill clock (0: off, always ``base_mhz``), MHz."""
        with self._cond:
            self._base_mhz, self._prefill_mhz = int(base_mhz), int(prefill_mhz)
            self._configured = True
            self._retry_gate_s = -float("inf")
            self._tally(self._clock())
            self._cond.notify_all()

    def on_pending(self, count: int, boost_at_s: float = -math.inf) -> None:
        """Record the requests pending their first token and their earliest boost time; cheap, never blocks on NVML.

        Args:
            count: requests pending their first token.
            boost_at_s: from when (``clock`` time, s) they need the prefill clock; ``-inf``: at once.
        """
        with self._cond:
            self._pending = count
            self._boost_at_s = boost_at_s
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------ state

    @property
    def pending(self) -> int:
        """The last pending count reported."""
        return self._pending

    @property
    def boost_at_s(self) -> float:
        """The last earliest boost time reported (``clock`` time, s; ``-inf``: at once, ``inf``: none pending)."""
        return self._boost_at_s

    @property
    def locked_mhz(self) -> int | None:
        """The clock the governor last locked (or was told is locked), MHz; None if unknown."""
        return self._locked_mhz

    @property
    def wanted_mhz(self) -> int | None:
        """The clock wanted now, MHz; None before ``configure``."""
        with self._cond:
            return self._wanted_mhz()

    @property
    def prefill_s(self) -> float:
        """Seconds spent at the prefill clock (locked, and different from the base clock)."""
        with self._cond:
            extra_s = self._clock() - self._since_s if self._at_prefill else 0.0
            return self._prefill_total_s + extra_s

    def stats(self) -> dict[str, Any]:
        """Counters for logs: switches, boosts, failures, prefill_s, locked_mhz, pending, last_error."""
        err = self.last_error
        return {
            "switches": self.switches,
            "boosts": self.boosts,
            "failures": self.failures,
            "prefill_s": self.prefill_s,
            "locked_mhz": self._locked_mhz,
            "pending": self._pending,
            "last_error": None if err is None else f"{type(err).__name__}: {err}",
        }

    def pop_error(self) -> Exception | None:
        """The error of the last lock attempt if it failed and was not popped yet (then cleared)."""
        with self._cond:
            err, self._fresh_error = self._fresh_error, None
            return err

    def settle(self, timeout_s: float) -> bool:
        """Wait until the wanted clock is locked; False on a failed lock, on close or after ``timeout_s``."""
        deadline_s = time.monotonic() + timeout_s
        with self._cond:
            failures = self.failures
            while True:
                want = self._wanted_mhz()
                if want is None or (want == self._locked_mhz and not self._busy):
                    return True
                left_s = deadline_s - time.monotonic()
                if self.failures != failures or self._closed or left_s <= 0:
                    return False
                self._cond.wait(left_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the worker (a lock under way finishes first); the clock stays as it is. Idempotent."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._tally(self._clock())
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------------------------ worker

    def _wanted_mhz(self) -> int | None:
        if not self._configured:
            return None
        boost = self._prefill_mhz > 0 and self._pending > 0 and self._clock() >= self._boost_at_s
        return self._prefill_mhz if boost else self._base_mhz

    def _boost_in_s(self) -> float | None:
        """Seconds until a boost time still to come makes the prefill clock wanted; None: no such time."""
        if not self._configured or self._prefill_mhz <= 0 or self._pending <= 0:
            return None
        left_s = self._boost_at_s - self._clock()
        return left_s if 0 < left_s < math.inf else None

    def _tally(self, now_s: float) -> None:
        """Close the time segment at the clock in force and start the next one (under the lock)."""
        if self._at_prefill:
            self._prefill_total_s += now_s - self._since_s
        self._since_s = now_s
        prefill = self._prefill_mhz
        self._at_prefill = not self._closed and prefill > 0 and self._locked_mhz == prefill != self._base_mhz

    def _next_clock(self) -> int | None:
        """Wait (under the lock) until a clock must be locked now; None once closed."""
        while not self._closed:
            want = self._wanted_mhz()
            if want is None or want == self._locked_mhz:
                self._cond.wait(self._boost_in_s())  # until a report, or the boost time
                continue
            delay_s = max(self._switch_gate_s, self._retry_gate_s) - self._clock()
            if delay_s > 0:
                self._cond.wait(delay_s)
                continue
            return want
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                want = self._next_clock()
                if want is None:
                    return
                self._busy = True
            try:
                self._lock_fn(want)
            except Exception as err:  # noqa: BLE001 - kept for the caller; the worker goes on
                self._failed(want, err)
            else:
                with self._cond:
                    now_s = self._clock()
                    self._locked_mhz = want
                    self._switch_gate_s = now_s + self.min_interval_s
                    self._fresh_error = None
                    self.switches += 1
                    if want == self._prefill_mhz != self._base_mhz:
                        self.boosts += 1
                    self._tally(now_s)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _failed(self, want_mhz: int, err: Exception) -> None:
        with self._cond:
            self.failures += 1
            self.last_error = self._fresh_error = err
            self._retry_gate_s = self._clock() + self.retry_s
            first = type(err) not in self._logged_types
            self._logged_types.add(type(err))
        msg = "prefill clock governor: locking %d MHz failed (%s: %s); retrying every %.1f s"
        (logger.warning if first else logger.debug)(msg, want_mhz, type(err).__name__, err, self.retry_s)
