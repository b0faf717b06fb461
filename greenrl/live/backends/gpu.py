"""A real node as a ``KnobBackend``: NVML clocks and energy, an admission proxy, a launcher for restarts.

``GpuBackend`` is the one real-node backend of ``LiveNode`` and of the serving controller:

* ``sm_clock_mhz``: locked on every GPU (``GpuSet.lock_all``); a lock the GPUs' rate limit ignored is not
  reported applied, and the previous clock stays in force;
* ``prefill_sm_clock_mhz`` > 0 with a proxy: a ``PrefillClockGovernor`` fed by the proxy's requests
  pending their first token (and, with a ``PrefillDeadline``, their boost times) holds it; without a proxy
  it is logged once as "would apply" and reported 0 (both by ``greenrl.live.clock.SmClockControl``); a
  fault the governor meets is raised by the next ``apply``;
* ``max_num_seqs``: the proxy's cap of ``max_num_seqs x replicas`` requests in flight upstream (without a
  proxy: logged once as "would apply");
* ``tp`` / ``replicas``: a drained restart by the launcher in a background thread
  (``greenrl.live.backends.restart.ServerLayout``).

Readings are the wall clock, each GPU's energy counter, the knobs really applied, the proxy's queue and
the governor's time at the prefill clock.

Public names: GpuBackend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping

from greenrl.core import BackendReading, Knobs
from greenrl.live.backends.restart import AdmissionControl, Relauncher, ServerLayout
from greenrl.live.clock import SmClockControl
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.governor import PrefillClockGovernor
from greenrl.live.gpu import GpuSet

__all__ = ["GpuBackend"]

logger = logging.getLogger(__name__)

KNOB_FIELDS = tuple(f.name for f in dataclasses.fields(Knobs))


class GpuBackend:
    """A real node: wall clock, NVML energy and SM clock, optional admission proxy and launcher.

    Args:
        gpus: the node's GPUs (``open_gpus(...)``, or ``FakeGpu``s); closed (clocks reset) by ``close``.
        initial: the configuration the server runs with (see ``assume``); None: ``start`` or the first
            ``apply`` tells. A prefill clock starts at the first ``apply``.
        proxy: the admission proxy in front of the server, if any.
        launcher: starts and restarts the server in a new layout, if any.
        launch_overrides: knob values the launch command gets instead of the requested ones, e.g.
            ``{"max_num_seqs": 1024}`` so that vLLM's own limit never binds below the proxy's cap.
        drain_timeout_s: longest proxy drain before a restart (s); on timeout the restart is not done.
        respawn_min_interval_s: fewest seconds between two starts of an owned server found dead.
        stop_server_on_close: ``close`` also stops the launcher's server (when this node started it).
        owns_proxy: ``close`` also lets the proxy's in-flight requests finish (10 s at most) and stops it.
        clock: monotonic wall clock (s).
        deadline: the deadline governor's predictor for the prefill clock, kept configured with the knobs
            in force (``SmClockControl.set_deadline`` changes it); None: the prefill clock whenever a
            request is pending (``LiveNode`` may set the scenario's).
        proxy_hint, launcher_hint: appended to the "would apply" / "refused" messages (how to get one).

    Attributes:
        sm_clocks: the ``SmClockControl`` (its ``governor`` while a prefill clock is applied).
        server: the ``ServerLayout`` (restarts, ``last_outage_s``, ``last_error``).
    """

    time_scale = 1.0
    discrete_time = False

    def __init__(
        self,
        gpus: GpuSet,
        initial: Knobs | None = None,
        *,
        proxy: AdmissionControl | None = None,
        launcher: Relauncher | None = None,
        launch_overrides: Mapping[str, int] | None = None,
        drain_timeout_s: float = 120.0,
        respawn_min_interval_s: float = 30.0,
        stop_server_on_close: bool = False,
        owns_proxy: bool = False,
        clock: Callable[[], float] = time.monotonic,
        deadline: PrefillDeadline | None = None,
        proxy_hint: str = " (pass GpuBackend a proxy)",
        launcher_hint: str = " (pass GpuBackend a launcher)",
    ) -> None:
        self.gpus = gpus
        self.proxy = proxy
        self.stop_server_on_close, self.owns_proxy = stop_server_on_close, owns_proxy
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.proxy_hint = proxy_hint
        self.sm_clocks = SmClockControl(gpus, proxy, hint=proxy_hint, deadline=deadline)
        self.server = ServerLayout(
            launcher,
            proxy,
            drain_timeout_s=drain_timeout_s,
            launch_overrides=launch_overrides,
            respawn_min_interval_s=respawn_min_interval_s,
            hint=launcher_hint,
            on_change=self._configure_layout,
        )
        self._knobs: Knobs | None = None  # clocks and max_num_seqs in force; the layout is the server's
        self._logged: set[int] = set()
        if initial is not None:
            self.assume(initial)

    # ------------------------------------------------------------------------------------ state

    @property
    def launcher(self) -> Relauncher | None:
        """The launcher, if any."""
        return self.server.launcher

    @property
    def owns_server(self) -> bool:
        """Whether TP and replica changes can be applied (a launcher that started the server)."""
        return self.server.owns_server

    @property
    def restarting(self) -> bool:
        """Whether a restart is under way."""
        return self.server.restarting

    @property
    def governor(self) -> PrefillClockGovernor | None:
        """The prefill-clock governor while a prefill clock is applied."""
        return self.sm_clocks.governor

    @property
    def deadline(self) -> PrefillDeadline | None:
        """The deadline governor's predictor handed to the proxy while a prefill clock runs (None: none)."""
        return self.sm_clocks.deadline

    def _in_force(self) -> Knobs | None:
        k, s = self._knobs, self.server.knobs
        if k is None or s is None:
            return k
        return dataclasses.replace(k, tp=s.tp, replicas=s.replicas, max_num_batched_tokens=s.max_num_batched_tokens)

    def read(self) -> BackendReading:
        """Wall time, each GPU's energy counter, the knobs applied (and being moved to), the proxy's queue."""
        queued = int(self.proxy.stats().get("queued", 0)) if self.proxy is not None else 0
        knobs = self._in_force()
        layout = self.server.layout()
        requested = knobs
        if knobs is not None and layout is not None:
            requested = dataclasses.replace(knobs, tp=layout[0], replicas=layout[1])
        return BackendReading(
            server_time_s=self.clock(),
            energy_per_gpu_j=tuple(g.energy_j() for g in self.gpus),
            knobs=knobs,
            reconfiguring=self.restarting,
            queued=queued,
            prefill_clock_s=self.sm_clocks.prefill_s,
            requested=requested,
        )

    # ------------------------------------------------------------------------------------ knobs

    def assume(self, knobs: Knobs) -> None:
        """Declare the configuration the server runs with (started elsewhere) and set the proxy's cap."""
        self._knobs = dataclasses.replace(knobs, prefill_sm_clock_mhz=0)  # no governor runs yet
        self.server.assume(knobs)
        if self.proxy is not None:
            self.proxy.set_cap(knobs.max_num_seqs * knobs.replicas)
        self._configure_layout()

    def start(self, knobs: Knobs) -> float:
        """Set the cap, start the owned server at ``knobs`` (admissions held meanwhile); returns start-up s.

        Raises:
            LaunchError: the server did not come up (``NotOwnedError`` without an owned launcher).
        """
        self.assume(knobs)
        return self.server.start(knobs)

    def apply(self, knobs: Knobs, changed: Collection[str] | None = None) -> list[str]:
        """Set the SM clocks and the proxy's cap, start a restart for a new layout (see the module doc).

        Args:
            knobs: the configuration wanted.
            changed: the knobs to apply (None: those that differ from the knobs in force).

        Returns:
            The knobs applied; a clock lock the GPUs' rate limit ignored, a knob without its proxy and a
            refused or held layout change are left out.

        Raises:
            GpuError: NVML refused the clock (``GpuPermissionError``: root / CAP_SYS_ADMIN needed), here or
                in the prefill-clock governor since the last call.
            ClockRestoreError: the governor did not put the base clock back in time (at the last call).
        """
        first = self._knobs is None
        if first:  # nothing known of the server: take its layout to be the one asked for, apply the rest
            self.assume(knobs)
        current = self._in_force()
        assert current is not None
        if changed is None:
            changed = [k for k in KNOB_FIELDS if first or getattr(knobs, k) != getattr(current, k)]
        applied = self._apply_clock(knobs, changed)
        restarted = self.server.apply(knobs, asked="tp" in changed or "replicas" in changed)
        applied += self._apply_cap(knobs, changed)
        return applied + ([k for k in ("tp", "replicas") if k in changed] if restarted else [])

    def _apply_clock(self, knobs: Knobs, changed: Collection[str]) -> list[str]:
        """The SM clock: locked here, or by the governor when a prefill clock is asked for with a proxy."""
        assert self._knobs is not None
        self._configure_layout()
        clock = self.sm_clocks
        names = clock.apply(knobs.sm_clock_mhz, knobs.prefill_sm_clock_mhz, changed)
        base = self._knobs.sm_clock_mhz if clock.sm_clock_mhz is None else clock.sm_clock_mhz  # None: never locked
        prefill = clock.prefill_sm_clock_mhz
        self._knobs = dataclasses.replace(self._knobs, sm_clock_mhz=base, prefill_sm_clock_mhz=prefill)
        return names

    def _apply_cap(self, knobs: Knobs, changed: Collection[str]) -> list[str]:
        """``max_num_seqs`` as the proxy's cap over the replicas in force (or being started)."""
        assert self._knobs is not None
        if self.proxy is None:
            if "max_num_seqs" in changed and knobs.max_num_seqs not in self._logged:
                self._logged.add(knobs.max_num_seqs)
                logger.warning("would apply max_num_seqs=%d: no admission proxy%s", knobs.max_num_seqs, self.proxy_hint)
            return []
        layout = self.server.layout()
        cap = knobs.max_num_seqs * (layout[1] if layout is not None else knobs.replicas)
        if self.proxy.cap != cap:
            self.proxy.set_cap(cap)
        self._knobs = dataclasses.replace(self._knobs, max_num_seqs=knobs.max_num_seqs)
        return ["max_num_seqs"] if "max_num_seqs" in changed else []

    def _configure_layout(self) -> None:
        """The layout the server runs or is started in, and its batch budget, for the deadline's predictions."""
        layout, k = self.server.layout(), self.server.knobs
        if layout is not None and k is not None:
            self.sm_clocks.set_layout(layout[0], layout[1], k.max_num_batched_tokens)

    def close(self, restore: Mapping[str, int] | None = None) -> None:
        """Stop what this backend owns (proxy, server), the clock governor, and reset the clocks.

        ``restore`` is not needed: resetting the clocks is the safe state.
        """
        try:
            if self.owns_proxy and self.proxy is not None:  # let in-flight requests finish first
                with contextlib.suppress(Exception):
                    self.proxy.drain(min(self.drain_timeout_s, 10.0))
                self.proxy.stop()
            self.server.close(stop_server=self.stop_server_on_close)
        finally:
            self.sm_clocks.close()
            self.gpus.close(raise_errors=False)
