"""The admission proxy's gate: at most ``cap`` requests upstream, the others wait in arrival order.

Nothing is refused here: a request waits for a slot (``admit``) and gives it back when its attempt ends
(``release``). ``pause`` holds new admissions, ``resume`` sends what was held, ``set_cap`` changes the
cap at once (requests already upstream finish, the next ones wait for room), and ``wait_idle`` waits
until nothing is in flight upstream. A retry (the upstream failed before any byte reached the client)
goes to the head of the line. Used from the proxy's loop thread only: nothing here locks.

Public names: Admission, check_cap.
"""

from __future__ import annotations

import asyncio
from collections import deque

from greenrl.errors import InputError

__all__ = ["Admission", "check_cap"]


def check_cap(cap: int | None) -> int | None:
    """``cap`` when it is an integer >= 1 or None.

    Raises:
        InputError: otherwise.
    """
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise InputError("AdmissionProxy", "cap", f"must be an integer >= 1 or None, got {cap!r}", "e.g. 256")
    return cap


class Admission:
    """FIFO admission under a cap, with hold and drain.

    A request is counted in ``waiting`` from ``enter`` until it is admitted (or gives up), then in
    ``in_flight`` until ``release``.

    Args:
        cap: most requests in flight upstream; None: no cap.

    Raises:
        InputError: on a cap below 1.
    """

    def __init__(self, cap: int | None = None) -> None:
        self.cap = check_cap(cap)
        self.paused = False
        self.in_flight = 0
        self.waiting = 0
        self.admitted = 0  # first admissions upstream
        self.max_in_flight = 0
        self._queue: deque[tuple[asyncio.Future[None], bool]] = deque()
        self._idle: asyncio.Event | None = None

    def start(self) -> None:
        """Make the idle signal on the running loop (call from the proxy's loop when it starts)."""
        self._idle = asyncio.Event()
        self._idle.set()

    def room(self) -> bool:
        """Whether a request could go upstream now (not paused, under the cap)."""
        return not self.paused and (self.cap is None or self.in_flight < self.cap)

    def must_wait(self) -> bool:
        """Whether a request arriving now waits for room (others wait already, or there is none).

        Others waiting: every request that ``enter``-ed and has no slot yet, queued or about to ask.
        """
        return self.waiting > 0 or bool(self._queue) or not self.room()

    def enter(self) -> None:
        """A request starts waiting for a slot (on arrival, and again before a retry)."""
        self.waiting += 1

    def leave(self) -> None:
        """A request that ``enter``-ed stops waiting without a slot (its client went away, or it timed out)."""
        self.waiting -= 1

    async def admit(self, retry: bool) -> None:
        """Wait for a slot upstream (the caller has ``enter``-ed); a retry goes first in line."""
        if not self._queue and self.room():
            self._take_slot(first=not retry)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if retry:
            self._queue.appendleft((fut, retry))
        else:
            self._queue.append((fut, retry))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # admitted just as it was cancelled
            else:
                fut.cancel()
                self.waiting -= 1
            raise

    def release(self) -> None:
        """An attempt upstream ended: its slot goes to the next in line."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()
        self.wake()

    def set_cap(self, cap: int | None) -> None:
        """Change the cap now; waiting requests are admitted if there is room."""
        self.cap = check_cap(cap)
        self.wake()

    def pause(self) -> None:
        """Hold new admissions (requests already upstream go on)."""
        self.paused = True

    def resume(self) -> None:
        """Admit again, oldest held request first."""
        self.paused = False
        self.wake()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight upstream; True if that happened within ``timeout_s``."""
        if self._idle is None:
            return self.in_flight == 0
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        """Admit waiting requests while there is room."""
        while self._queue and self.room():
            fut, retry = self._queue.popleft()
            if fut.done():
                continue
            self._take_slot(first=not retry)
            fut.set_result(None)

    def _take_slot(self, first: bool) -> None:
        self.waiting -= 1
        self.in_flight += 1
        if first:
            self.admitted += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self._idle is not None:
            self._idle.clear()
