"""A real node's layout (TP, replicas): kept, or changed by a drained restart of a server we launched.

``ServerLayout.apply`` starts ``proxy.drain`` -> ``launcher.restart`` -> ``proxy.resume`` in a background
thread (``restarting`` meanwhile); the new layout is in force once the server is healthy again. A drain
that times out abandons the change and leaves the server as it was; a start that fails starts the
previous layout again (rollback). An owned server found dead is started again at the wanted layout (at
most once per ``respawn_min_interval_s``). Without a launcher that owns the server a layout change is
refused and logged once.

Public names: AdmissionControl, Relauncher, ServerLayout.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from greenrl.core import Knobs
from greenrl.live.launcher import DrainTimeoutError, LaunchError

if TYPE_CHECKING:
    from greenrl.live.deadline import BoostPredictor
    from greenrl.live.proxy import PendingListener

__all__ = ["AdmissionControl", "Relauncher", "ServerLayout"]

logger = logging.getLogger(__name__)


class AdmissionControl(Protocol):
    """What a real node's backend needs from an admission proxy (``greenrl.live.proxy.AdmissionProxy``)."""

    @property
    def cap(self) -> int | None:
        """Most requests in flight upstream (None: no cap)."""
        ...

    def set_cap(self, cap: int | None) -> None:
        """Change the cap at once."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters; ``queued`` is the number of requests waiting in the proxy."""
        ...

    def pause(self) -> None:
        """Hold new admissions."""
        ...

    def drain(self, timeout_s: float) -> bool:
        """Hold admissions and wait until nothing is in flight upstream; True if it drained in time."""
        ...

    def resume(self) -> None:
        """Admit again."""
        ...

    def stop(self) -> None:
        """Stop serving."""
        ...

    def set_on_pending(self, listener: PendingListener | None, *, deadline: BoostPredictor | None = None) -> None:
        """Call ``listener(pending_first_token, boost_at_s)`` now and on every change (None: no listener)."""
        ...


class Relauncher(Protocol):
    """What a real node's backend needs from a launcher (``greenrl.live.launcher.ServerLauncher``)."""

    @property
    def owned(self) -> bool:
        """Whether it started the server (and may stop and restart it)."""
        ...

    def alive(self) -> bool:
        """Whether the server process runs."""
        ...

    def start(self, knobs: Mapping[str, int]) -> float:
        """Start the server at ``knobs``; returns once healthy (the start-up, s)."""
        ...

    def restart(self, knobs: Mapping[str, int], drain: Callable[[], bool] | None = None) -> float:
        """Drain, stop and start the server at ``knobs``; returns once healthy (the outage, s)."""
        ...

    def stop(self) -> int | None:
        """Stop the server it started."""
        ...

    def close(self) -> None:
        """Stop the server for good."""
        ...


class ServerLayout:
    """The layout of a real node's server, changed by restarts (see the module doc).

    Args:
        launcher: restarts the server in a new layout (None: layout changes are refused).
        proxy: drained before a restart and resumed after, held during a respawn (None: no drain).
        drain_timeout_s: longest proxy drain before a restart (s); past it the change is abandoned.
        launch_overrides: knob values the launch command gets instead of the requested ones, e.g.
            ``{"max_num_seqs": 1024}`` so that vLLM's own limit never binds below the proxy's cap.
        respawn_min_interval_s: fewest seconds between two starts of an owned server found dead.
        hint: appended to the "refused" message (how to get a launcher).
        on_change: called (from the restart thread) once a restart ended, whatever its outcome.

    Attributes:
        knobs: the configuration the server runs with, as started or assumed (None: unknown).
        restarts: restarts done (layout changes and respawns); ``last_outage_s``: the last one's outage.
        last_error: why the last restart failed (None after a success).
    """

    def __init__(
        self,
        launcher: Relauncher | None,
        proxy: AdmissionControl | None,
        *,
        drain_timeout_s: float = 120.0,
        launch_overrides: Mapping[str, int] | None = None,
        respawn_min_interval_s: float = 30.0,
        hint: str = "",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.launcher, self.proxy = launcher, proxy
        self.drain_timeout_s = drain_timeout_s
        self.launch_overrides = dict(launch_overrides or {})
        self.respawn_min_interval_s = respawn_min_interval_s
        self.hint = hint
        self.on_change = on_change
        self.knobs: Knobs | None = None
        self.restarts = 0
        self.last_outage_s: float | None = None
        self.last_error: str | None = None
        self._target: Knobs | None = None  # layout being moved to
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_spawn_at_s = -math.inf
        self._closing = False
        self._refused: set[tuple[int, int]] = set()

    @property
    def owns_server(self) -> bool:
        """Whether layout changes can be applied (a launcher that started the server)."""
        return self.launcher is not None and self.launcher.owned

    @property
    def restarting(self) -> bool:
        """Whether a restart (layout change or respawn) is under way."""
        return self._thread is not None and self._thread.is_alive()

    def layout(self) -> tuple[int, int] | None:
        """``(tp, replicas)`` of the server being started, else of the one running; None if unknown."""
        with self._lock:
            src = self._target or self.knobs
        return None if src is None else (src.tp, src.replicas)

    def assume(self, knobs: Knobs) -> None:
        """Declare the configuration the server runs with (started elsewhere)."""
        self.knobs = knobs

    def start(self, knobs: Knobs) -> float:
        """Start the owned server at ``knobs`` (admissions held meanwhile); returns the start-up (s).

        Raises:
            LaunchError: the server did not come up (``NotOwnedError`` without an owned launcher).
        """
        if self.launcher is None:
            raise LaunchError("no launcher: nothing to start")
        if self.proxy is not None:
            self.proxy.pause()
        try:
            startup_s = self.launcher.start(self._launch(knobs))
            self.knobs = knobs
        finally:
            if self.proxy is not None:
                self.proxy.resume()
        return startup_s

    def _launch(self, knobs: Knobs) -> dict[str, int]:
        return {**dataclasses.asdict(knobs), **self.launch_overrides}

    def apply(self, knobs: Knobs, asked: bool) -> bool:
        """Start a restart if ``knobs`` has another layout (or the server is dead); True if one started for it.

        ``asked``: the caller counts the layout as changed (a refusal is logged only then).
        """
        wanted = (knobs.tp, knobs.replicas)
        launcher = self.launcher
        if launcher is None or not launcher.owned:
            known = self.layout()
            if asked and known is not None and wanted != known and wanted not in self._refused:
                self._refused.add(wanted)
                logger.warning(
                    "refused tp=%d replicas=%d: a layout change restarts the server, which needs an owned one%s",
                    *wanted,
                    self.hint,
                )
            return False
        if self.restarting:
            if wanted != self.layout():
                logger.info("tp=%d replicas=%d held: a restart is already under way", *wanted)
            return False
        alive = launcher.alive()
        if alive and wanted == self.layout():
            return False
        if not alive:
            if time.monotonic() - self._last_spawn_at_s < self.respawn_min_interval_s:
                return False
            logger.warning("the server is not running: starting it again at tp=%d replicas=%d", *wanted)
        with self._lock:
            self._target = knobs
            self._thread = threading.Thread(target=self._restart, args=(knobs,), name="greenrl-restart", daemon=True)
            self._thread.start()
        return asked

    def _restart(self, knobs: Knobs) -> None:
        """Background thread: drain, restart at ``knobs``, resume; roll back to the old layout on failure."""
        launcher, proxy = self.launcher, self.proxy
        assert launcher is not None
        previous = self.knobs
        try:
            if launcher.alive():
                drain = (lambda: proxy.drain(self.drain_timeout_s)) if proxy is not None else None
                self.last_outage_s = launcher.restart(self._launch(knobs), drain=drain)
            else:
                self._last_spawn_at_s = time.monotonic()
                if proxy is not None:
                    proxy.pause()
                launcher.stop()  # reap the dead one and whatever is left of its process group
                launcher.start(self._launch(knobs))
            with self._lock:
                self.knobs = knobs
            self.restarts += 1
            self.last_error = None
        except DrainTimeoutError as err:
            self.last_error = str(err)
            logger.warning("change to tp=%d replicas=%d abandoned: %s", knobs.tp, knobs.replicas, err)
        except LaunchError as err:
            self.last_error = str(err)
            logger.error("restart at tp=%d replicas=%d failed: %s", knobs.tp, knobs.replicas, err)
            if previous is not None and not self._closing and not launcher.alive():
                try:
                    launcher.start(self._launch(previous))
                    logger.warning("rolled back to tp=%d replicas=%d", previous.tp, previous.replicas)
                except LaunchError as err2:
                    logger.error("the rollback failed too, the server is down: %s", err2)
        except Exception as err:  # reported through last_error and the log; the node keeps serving
            self.last_error = str(err)
            logger.exception("restart at tp=%d replicas=%d failed", knobs.tp, knobs.replicas)
        finally:
            with self._lock:
                self._target = None
            if proxy is not None:
                proxy.resume()
            if self.on_change is not None:
                self.on_change()

    def close(self, stop_server: bool) -> None:
        """Stop the owned server for good if ``stop_server``; wait (bounded) for a restart under way."""
        self._closing = True
        if stop_server and self.owns_server and self.launcher is not None:
            self.launcher.close()
        if self._thread is not None:
            self._thread.join(timeout=10.0 if stop_server else 600.0)
