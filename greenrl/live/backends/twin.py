"""The digital twin as a ``KnobBackend``: knobs, clock and energy through its HTTP API.

``GET /greenrl/state`` gives the simulated clock, each GPU's energy counter, the knobs in force and those
requested, and ``reconfiguring``; ``POST /greenrl/knobs`` sets knobs (the simulator applies them with its
own delays; the server stays up through a TP change). One ``httpx.Client`` carries both.

Public names: BackendError, TwinBackend.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping
from typing import Any

import httpx

from greenrl.core import BackendReading, Knobs

__all__ = ["BackendError", "TwinBackend"]

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """The twin cannot be reached (``unreachable``), answers something else, or refuses a knob change."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class TwinBackend:
    """The digital twin: clock, energy and knobs through ``/greenrl/state`` and ``/greenrl/knobs``.

    Args:
        base_url: the twin's base URL (``http://127.0.0.1:8000``).
        timeout_s: HTTP timeout (s).

    Attributes:
        last_state: the twin's last ``/greenrl/state`` object (None before the first read).

    Raises (from ``read`` / ``apply``):
        BackendError: the twin cannot be reached or answers something that is not its state
            (``unreachable``), or refuses the knobs.
    """

    discrete_time = True

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s, trust_env=False)
        self.last_state: dict[str, Any] | None = None

    @property
    def time_scale(self) -> float:
        """Simulated seconds per wall second (the twin's ``--time-scale``; read once)."""
        state = self.last_state if self.last_state is not None else self.state()
        return float(state.get("time_scale", 1.0))

    def state(self) -> dict[str, Any]:
        """One ``GET /greenrl/state``."""
        url = f"{self.base_url}/greenrl/state"
        try:
            resp = self._client.get(url)
            resp.raise_for_status()
            out = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            raise BackendError(f"{url}: unreachable ({type(err).__name__}: {err})", unreachable=True) from err
        if not isinstance(out, dict) or "sim_time_s" not in out or "energy_per_gpu_j" not in out:
            raise BackendError(f"{url} is not a greenrl twin's state", unreachable=True)
        self.last_state = out
        return out

    def read(self) -> BackendReading:
        """Simulated time, energy per GPU, knobs in force and requested."""
        s = self.state()
        requested = s.get("requested_knobs")
        return BackendReading(
            server_time_s=float(s["sim_time_s"]),
            energy_per_gpu_j=tuple(float(e) for e in s["energy_per_gpu_j"]),
            knobs=Knobs(**s["knobs"]),
            reconfiguring=bool(s.get("reconfiguring", False)),
            requested=Knobs(**requested) if requested else None,
            server_verdicts=(int(s["finished_total"]), int(s["slo_met_total"])) if "slo_met_total" in s else None,
        )

    def apply(self, knobs: Knobs, changed: Collection[str] | None = None) -> list[str]:
        """``POST /greenrl/knobs`` with the ``changed`` knobs (None: all; the twin ignores unchanged ones)."""
        values = dataclasses.asdict(knobs)
        names = list(values) if changed is None else [k for k in values if k in changed]
        if names:
            self._post({k: values[k] for k in names})
        return names

    def _post(self, body: Mapping[str, int]) -> None:
        url = f"{self.base_url}/greenrl/knobs"
        try:
            resp = self._client.post(url, json=dict(body))
        except httpx.HTTPError as err:
            raise BackendError(f"{url}: unreachable ({type(err).__name__}: {err})", unreachable=True) from err
        if resp.status_code != 200:
            raise BackendError(f"{url}: HTTP {resp.status_code}: {resp.text[:300]}", unreachable=False)

    def close(self, restore: Mapping[str, int] | None = None) -> None:
        """Send the ``restore`` knobs (best effort; the twin's stand-in for resetting clocks), close the client.

        Idempotent.
        """
        if self._client.is_closed:
            return
        try:
            if restore:
                self._post(restore)
        except BackendError as err:
            logger.warning("could not restore the twin's knobs: %s", err)
        finally:
            self._client.close()
