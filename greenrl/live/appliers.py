"""Where the serving controller's knobs go: the digital twin, or a real vLLM node's GPUs, proxy and launcher.

* ``TwinApplier``: every knob through the twin's ``POST /greenrl/knobs`` (the simulator drains and
  reloads on a TP change; the server stays up).
* ``ServerApplier``: a real node. The SM clock through NVML (``GpuSet.lock_all``); with a
  ``prefill_sm_clock_mhz`` > 0 and a proxy, through a ``PrefillClockGovernor`` fed by the proxy's count
  of requests pending their first token and, with a ``PrefillDeadline``, their boost times (both by
  ``greenrl.live.clock.SmClockControl``; without a proxy it is only logged as "would apply" and the base
  clock stays); a fault the governor meets is raised by the next ``apply``; ``max_num_seqs`` as the
  admission proxy's cap (``max_num_seqs x replicas`` requests in flight upstream); a TP or replica
  change as a restart: ``proxy.drain`` -> ``launcher.restart`` -> ``proxy.resume``, run in a background
  thread (``reconfiguring()`` is True meanwhile). Without a proxy ``max_num_seqs`` is only logged as
  "would apply"; without an owned launcher (``--launch``) a TP change is refused and logged, and the
  controller keeps the TP in force. An owned server found dead is started again (at most once per
  ``respawn_min_interval_s``).
* ``NvmlApplier``: a ``ServerApplier`` with GPUs only.

Public names: ApplyError, KNOB_ORDER, KnobApplier, NvmlApplier, ServerApplier, TwinApplier.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from typing import Protocol

from greenrl.live.clock import ClockRestoreError, SmClockControl
from greenrl.live.deadline import DEFAULT_MAX_NUM_BATCHED_TOKENS, PrefillDeadline
from greenrl.live.governor import PrefillClockGovernor
from greenrl.live.gpu import GpuSet
from greenrl.live.launcher import DrainTimeoutError, LaunchError, ServerLauncher
from greenrl.live.observe import TwinGpu
from greenrl.live.proxy import AdmissionProxy

__all__ = ["KNOB_ORDER", "ApplyError", "KnobApplier", "NvmlApplier", "ServerApplier", "TwinApplier"]

logger = logging.getLogger(__name__)

KNOB_ORDER = ("tp", "replicas", "max_num_seqs", "sm_clock_mhz", "prefill_sm_clock_mhz")
"""The knobs a controller sets, in the order they are applied and logged."""


class ApplyError(RuntimeError):
    """The server refused or did not answer a knob change."""


class KnobApplier(Protocol):
    """Where knobs go: the twin's HTTP endpoint, or NVML plus the admission proxy and the launcher."""

    def current(self) -> dict[str, int] | None:
        """The configuration in force, if the applier can read it."""
        ...

    def apply(self, knobs: dict[str, int], changed: list[str]) -> list[str]:
        """Apply ``knobs`` (``changed`` lists the knobs that differ); returns the knobs really applied.

        A TP or replica change missing from the result was refused: the layout in force did not change.
        """
        ...

    def reconfiguring(self) -> bool:
        """Whether a TP/replica change is under way."""
        ...

    def close(self, safe: dict[str, int] | None) -> None:
        """Restore a safe state on shutdown (reset clocks / apply ``safe``)."""
        ...


class TwinApplier:
    """Knobs through the digital twin's ``POST /greenrl/knobs``; state from its ``/greenrl/state``.

    Args:
        twin: the twin's state reader (also the observer's energy source).
        timeout_s: HTTP timeout (s).
    """

    def __init__(self, twin: TwinGpu, timeout_s: float = 5.0) -> None:
        self.twin = twin
        self.timeout_s = timeout_s

    def current(self) -> dict[str, int] | None:
        """The twin's requested knobs (those the simulator is running or moving to)."""
        requested = self.twin.state()["requested_knobs"]
        return {k: int(requested[k]) for k in KNOB_ORDER if k in requested}

    def apply(self, knobs: dict[str, int], changed: list[str]) -> list[str]:
        """POST the changed knobs.

        Raises:
            ApplyError: the twin cannot be reached or refuses the change (its answer in the message).
        """
        if not changed:
            return []
        body = json.dumps({k: knobs[k] for k in changed}).encode()
        url = f"{self.twin.base_url}/greenrl/knobs"
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - the caller's twin
                resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:200]
            raise ApplyError(f"{url}: HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise ApplyError(f"{url}: unreachable ({err})") from err
        return list(changed)

    def reconfiguring(self) -> bool:
        """The twin's ``reconfiguring`` flag as of the last state read."""
        state = self.twin.last_state or {}
        return bool(state.get("reconfiguring", False))

    def close(self, safe: dict[str, int] | None) -> None:
        """Put the safe default clocks back (the twin's stand-in for resetting clocks)."""
        if safe is None:
            return
        with contextlib.suppress(Exception):
            self.apply(safe, [k for k in ("sm_clock_mhz", "prefill_sm_clock_mhz") if k in safe])


class ServerApplier:
    """A real node's knobs: SM clock by NVML, ``max_num_seqs`` by the proxy's cap, TP by a drained restart.

    A ``prefill_sm_clock_mhz`` > 0 (with a proxy) hands the clock to a ``PrefillClockGovernor`` (the
    ``governor`` attribute while it runs); back at 0 the governor restores the base clock and stops, and
    the clock is locked directly again, as without the knob.

    Args:
        gpus: the node's GPUs (None: the clock is not controlled); clocks are reset by ``close``.
        proxy: the admission proxy in front of the server (None: ``max_num_seqs`` is logged, not applied).
        launcher: the server's launcher; TP and replica changes need one that owns the server.
        drain_timeout_s: longest wait for in-flight requests before a restart (s); past it the change is
            abandoned and the server left as it is.
        launch_max_num_seqs: ``{max_num_seqs}`` the server is started with while a proxy enforces the
            knob (the largest knob value, so that the cap can go up as well as down); None: the knob.
        respawn_min_interval_s: fewest seconds between two starts of an owned server found dead.
        deadline: the deadline governor's predictor (the policy's TTFT target), kept configured with the
            layout and base clock in force; None: the prefill clock whenever a request is pending.
    """

    def __init__(
        self,
        gpus: GpuSet | None,
        *,
        proxy: AdmissionProxy | None = None,
        launcher: ServerLauncher | None = None,
        drain_timeout_s: float = 120.0,
        launch_max_num_seqs: int | None = None,
        respawn_min_interval_s: float = 30.0,
        deadline: PrefillDeadline | None = None,
    ) -> None:
        self.gpus, self.proxy, self.launcher = gpus, proxy, launcher
        self.drain_timeout_s = drain_timeout_s
        self.launch_max_num_seqs = launch_max_num_seqs
        self.respawn_min_interval_s = respawn_min_interval_s
        self.restarts = 0
        self.last_outage_s: float | None = None
        self.last_error: str | None = None
        self._knobs: dict[str, int] | None = None  # what the owned server was started with (its layout)
        self._assumed: dict[str, int] | None = None  # layout of a server not owned (never changed)
        self._target: dict[str, int] | None = None  # layout being moved to
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_spawn_at_s = -math.inf
        self._closing = False
        self._logged: set[tuple[str, int]] = set()
        hint = " (run the controller with --proxy-port)"
        self._clock = SmClockControl(gpus, proxy, hint=hint, deadline=deadline) if gpus is not None else None

    @property
    def governor(self) -> PrefillClockGovernor | None:
        """The prefill-clock governor while a prefill clock is applied."""
        return self._clock.governor if self._clock is not None else None

    @property
    def deadline(self) -> PrefillDeadline | None:
        """The deadline governor's predictor handed to the proxy while a prefill clock runs (None: none)."""
        return self._clock.deadline if self._clock is not None else None

    @property
    def owns_server(self) -> bool:
        """Whether TP changes can be applied (a launcher that started the server)."""
        return self.launcher is not None and self.launcher.owned

    def start(self, knobs: dict[str, int]) -> float:
        """Start the owned server at ``knobs`` (admissions held meanwhile) and set the cap; returns start-up s.

        Raises:
            LaunchError: the server did not come up (``NotOwnedError`` without an owned launcher).
        """
        if self.launcher is None:
            raise LaunchError("no launcher: nothing to start")
        if self.proxy is not None:
            self.proxy.pause()
        try:
            startup_s = self.launcher.start(self._launch_knobs(knobs))
            self._knobs = dict(knobs)
        finally:
            if self.proxy is not None:
                self.proxy.set_cap(knobs["max_num_seqs"] * knobs.get("replicas", 1))
                self.proxy.resume()
        return startup_s

    def _launch_knobs(self, knobs: dict[str, int]) -> dict[str, int]:
        out = dict(knobs)
        if self.proxy is not None and self.launch_max_num_seqs is not None:
            out["max_num_seqs"] = self.launch_max_num_seqs
        return out

    def assume_layout(self, knobs: dict[str, int]) -> None:
        """Declare the layout of a server not owned (the controller's ``--default-tp``); it never changes."""
        self._assumed = {"tp": knobs["tp"], "replicas": knobs.get("replicas", 1)}

    def layout(self) -> dict[str, int] | None:
        """``tp`` and ``replicas`` of the server, of the one being started, or as assumed; None if unknown."""
        with self._lock:
            src = self._target or self._knobs or self._assumed
        return None if src is None else {"tp": src["tp"], "replicas": src["replicas"]}

    def current(self) -> dict[str, int] | None:
        """The knobs the owned server was last started for (None without one: vLLM does not report them)."""
        return dict(self._knobs) if self._knobs is not None else None

    def reconfiguring(self) -> bool:
        """Whether a restart (TP change or respawn) is under way."""
        return self._thread is not None and self._thread.is_alive()

    def _once(self, key: str, value: int, msg: str, *args: object) -> None:
        if (key, value) not in self._logged:
            self._logged.add((key, value))
            logger.warning(msg, *args)

    def apply(self, knobs: dict[str, int], changed: list[str]) -> list[str]:
        """Lock the clock, set the cap, start a restart for a new layout; returns what was applied.

        Raises:
            GpuPermissionError: NVML refused the clock for lack of privilege.
            GpuError: another NVML failure (also one the prefill-clock governor met since the last call).
            ApplyError: the governor did not put the base clock back in time (at the previous call).
        """
        applied = self._apply_clock(knobs, changed)
        layout_applied = self._apply_layout(knobs, changed)
        if self.proxy is not None:
            # the cap covers the replicas in force (or being started), not a refused layout
            replicas = (self.layout() or knobs).get("replicas", 1)
            cap = knobs["max_num_seqs"] * replicas
            if self.proxy.cap != cap:
                self.proxy.set_cap(cap)
            applied += ["max_num_seqs"] if "max_num_seqs" in changed else []
        elif "max_num_seqs" in changed:
            msg = "would apply max_num_seqs=%d: no admission proxy (run the controller with --proxy-port)"
            self._once("max_num_seqs", knobs["max_num_seqs"], msg, knobs["max_num_seqs"])
        return applied + layout_applied

    def _apply_clock(self, knobs: dict[str, int], changed: list[str]) -> list[str]:
        """The SM clock: locked here, or by the governor when a prefill clock is asked for with a proxy."""
        if self._clock is None:
            return []
        layout = self.layout() or {"tp": knobs["tp"], "replicas": knobs.get("replicas", 1)}
        batched = knobs.get("max_num_batched_tokens", DEFAULT_MAX_NUM_BATCHED_TOKENS)
        self._clock.set_layout(layout["tp"], layout["replicas"], batched)
        try:
            return self._clock.apply(knobs["sm_clock_mhz"], knobs.get("prefill_sm_clock_mhz", 0), changed)
        except ClockRestoreError as err:
            raise ApplyError(str(err)) from err

    def _apply_layout(self, knobs: dict[str, int], changed: list[str]) -> list[str]:
        wanted = {"tp": knobs["tp"], "replicas": knobs.get("replicas", 1)}
        asked: list[str] = [k for k in ("tp", "replicas") if k in changed]
        if self.launcher is None or not self.launcher.owned:
            if asked and self._assumed is not None and wanted != self._assumed:
                msg = "refused tp=%d: a TP change restarts the server, which needs an owned server (--launch)"
                self._once("tp", wanted["tp"], msg, wanted["tp"])
            return []
        if self.reconfiguring():
            if wanted != self.layout():
                logger.info("tp=%d held: a restart is already under way", wanted["tp"])
            return []
        alive = self.launcher.alive()
        if alive and wanted == self.layout():
            return []
        if not alive:
            since_s = time.monotonic() - self._last_spawn_at_s
            if since_s < self.respawn_min_interval_s:
                return []
            logger.warning("the server (pid %s) is not running: starting it again at %s", self.launcher.pid, wanted)
        with self._lock:
            self._target = {**knobs, **wanted}
            self._thread = threading.Thread(
                target=self._restart, args=({**knobs, **wanted},), name="greenrl-restart", daemon=True
            )
            self._thread.start()
        return asked

    def _restart(self, knobs: dict[str, int]) -> None:
        """Background thread: drain, restart at ``knobs``, resume; roll back to the old layout on failure."""
        assert self.launcher is not None
        previous = self._knobs
        proxy = self.proxy
        try:
            if self.launcher.alive():
                drain = (lambda: proxy.drain(self.drain_timeout_s)) if proxy is not None else None
                self.last_outage_s = self.launcher.restart(self._launch_knobs(knobs), drain=drain)
            else:
                self._last_spawn_at_s = time.monotonic()
                if proxy is not None:
                    proxy.pause()
                self.launcher.stop()  # reap the dead one and whatever is left of its process group
                self.launcher.start(self._launch_knobs(knobs))
            with self._lock:
                self._knobs = dict(knobs)
            self.restarts += 1
            self.last_error = None
        except DrainTimeoutError as err:
            self.last_error = str(err)
            logger.warning("change to tp=%d abandoned: %s", knobs["tp"], err)
        except LaunchError as err:
            self.last_error = str(err)
            logger.error("restart at tp=%d failed: %s", knobs["tp"], err)
            if previous is not None and not self._closing and not self.launcher.alive():
                try:
                    self.launcher.start(self._launch_knobs(previous))
                    logger.warning("rolled back to tp=%d", previous["tp"])
                except LaunchError as err2:
                    logger.error("the rollback failed too, the server is down: %s", err2)
        except Exception:
            logger.exception("restart at tp=%d failed", knobs["tp"])
        finally:
            with self._lock:
                self._target = None
            if proxy is not None:
                proxy.resume()

    def close(self, safe: dict[str, int] | None) -> None:
        """Let in-flight requests finish (10 s at most), stop the proxy and an owned server, reset the clocks."""
        self._closing = True
        try:
            if self.proxy is not None:
                with contextlib.suppress(Exception):
                    self.proxy.drain(min(self.drain_timeout_s, 10.0))
                self.proxy.stop()
            if self.owns_server and self.launcher is not None:
                self.launcher.close()
            if self._thread is not None:
                self._thread.join(timeout=10.0)
        finally:
            if self._clock is not None:
                self._clock.close()
            if self.gpus is not None:
                self.gpus.close(raise_errors=False)


class NvmlApplier(ServerApplier):
    """The SM clock through NVML only; ``max_num_seqs`` is logged as "would apply", TP changes are refused.

    Args:
        gpus: the node's GPUs; closed (clocks reset) by ``close``.
    """

    def __init__(self, gpus: GpuSet) -> None:
        super().__init__(gpus)
