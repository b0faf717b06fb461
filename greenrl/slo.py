"""The per-request SLO: one definition for the simulator, the scenarios, the twin, the proxy and the load generator.

A request meets the SLO when it produced every token, its TTFT is at most

    max(ttft_floor_s, ttft_prefill_multiple x its prefill alone at the node's fastest configuration)

and its mean time between tokens is at most ``tbt_mean_s``. ``Slo`` holds the three numbers (a scenario's
``slo`` section) and computes the bound (``ttft_bound_s`` for one request, ``ttft_bounds_s`` elementwise over
arrays: the same floats) and the verdict (``met``). ``FastestPrefill`` gives the prefill-alone time of a
prompt (the surrogate at the largest TP that fits, as ``SimNode`` picks it); ``SloJudge`` binds the two,
for the live path where requests arrive one at a time (the admission proxy, the load generator).

Importing this module imports numpy only; the surrogate is imported when a ``FastestPrefill`` is built.

Public names: FastestPrefill, Slo, SloJudge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from greenrl.errors import InputError

if TYPE_CHECKING:
    from greenrl.env.scenario import Scenario
    from greenrl.surrogate import ReplicaModel

__all__ = ["FastestPrefill", "Slo", "SloJudge"]

FASTEST_TP_ORDER = (8, 4, 2, 1)
"""TP degrees tried for the fastest configuration, largest first."""


@dataclass(frozen=True, slots=True)
class Slo:
    """The per-request SLO (seconds of server time).

    Attributes:
        ttft_floor_s: the smallest TTFT bound (s), > 0.
        ttft_prefill_multiple: the TTFT bound of a long prompt, in multiples of its prefill alone at the
            fastest configuration (-), >= 0 (0: the floor for every prompt).
        tbt_mean_s: limit on a request's mean time between tokens (s), > 0 (inf: none).

    Raises:
        InputError: on a value out of range (``where`` is ``slo``, ``field`` the attribute).

    Example:
        >>> slo = Slo(ttft_floor_s=0.5, ttft_prefill_multiple=5.0, tbt_mean_s=0.1)
        >>> slo.ttft_bound_s(0.02), slo.ttft_bound_s(0.2)
        (0.5, 1.0)
        >>> bool(slo.met(ttft_s=0.4, tbt_mean_s=0.05, ttft_bound_s=0.5))
        True
    """

    ttft_floor_s: float = 0.5
    ttft_prefill_multiple: float = 5.0
    tbt_mean_s: float = 0.1

    def __post_init__(self) -> None:
        if not self.ttft_floor_s > 0:
            raise InputError("slo", "ttft_floor_s", f"must be > 0 s, got {self.ttft_floor_s!r}", "e.g. 0.5")
        if not (math.isfinite(self.ttft_prefill_multiple) and self.ttft_prefill_multiple >= 0):
            problem = f"must be a finite number >= 0, got {self.ttft_prefill_multiple!r}"
            raise InputError("slo", "ttft_prefill_multiple", problem, "e.g. 5.0, or 0 for the floor alone")
        if not self.tbt_mean_s > 0:
            raise InputError("slo", "tbt_mean_s", f"must be > 0 s, got {self.tbt_mean_s!r}", "e.g. 0.1")

    def ttft_bound_s(self, prefill_alone_s: float) -> float:
        """The TTFT bound of one request whose prompt prefills alone in ``prefill_alone_s`` (s)."""
        return max(self.ttft_floor_s, self.ttft_prefill_multiple * prefill_alone_s)

    def ttft_bounds_s(self, prefill_alone_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``ttft_bound_s`` elementwise over an array of prefill-alone times (s)."""
        bounds: npt.NDArray[np.float64] = np.maximum(
            self.ttft_floor_s, self.ttft_prefill_multiple * np.asarray(prefill_alone_s)
        )
        return bounds

    def met(self, ttft_s: Any, tbt_mean_s: Any, ttft_bound_s: Any) -> Any:
        """Whether a request with this TTFT and mean time between tokens meets the SLO, given its TTFT bound.

        Elementwise over numpy arrays (a boolean array); a bool for floats. Whether the request produced
        every token is the caller's to check.
        """
        return (ttft_s <= ttft_bound_s) & (tbt_mean_s <= self.tbt_mean_s)

    def e2e_bound_s(self, ttft_bound_s: float, output_tokens: int) -> float:
        """The latency bound of a whole response whose first-token time is unknown (s).

        The first token within ``ttft_bound_s``, then each of the others within ``tbt_mean_s`` on average.
        """
        return ttft_bound_s + max(output_tokens - 1, 0) * self.tbt_mean_s


class FastestPrefill:
    """Prefill latency of one prompt alone at a node's fastest configuration (s), cached per prompt length.

    Args:
        replica: the surrogate of one replica at the fastest configuration (top SM clock).
        cache_size: most prompt lengths kept (the cache is emptied when full).
    """

    def __init__(self, replica: ReplicaModel, cache_size: int = 65_536) -> None:
        from greenrl.surrogate import StepBatch

        self.replica = replica
        self._batch = StepBatch.prefill
        self._cache: dict[float, float] = {}
        self._cache_size = cache_size

    @classmethod
    def for_node(cls, model: str, gpu: str, gpus: int, stack: str | None = None) -> FastestPrefill:
        """The fastest configuration of ``gpus`` x ``gpu`` serving ``model``: the largest TP that fits.

        Raises:
            InputError: when the model fits on no TP degree of the node.
        """
        from greenrl.surrogate import Surrogate

        surrogate = Surrogate()
        for tp in FASTEST_TP_ORDER:
            if tp > gpus:
                continue
            try:
                return cls(surrogate.replica(model, gpu, tp, stack))
            except InputError:
                continue
        raise InputError("node", "model", f"{model} fits on no TP degree of {gpus} x {gpu}", "use more or larger GPUs")

    def __call__(self, prompt_tokens: float) -> float:
        """Prefill-alone time of a prompt of ``prompt_tokens`` tokens (s)."""
        key = float(prompt_tokens)
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            cached = self._cache[key] = float(np.asarray(self.replica.step(self._batch(1.0, key)).latency_s))
        return cached


@dataclass(frozen=True, slots=True)
class SloJudge:
    """An SLO bound to a node's prefill-alone time: the TTFT bound and verdict of one request at a time.

    Attributes:
        slo: the SLO.
        prefill_alone_s: prefill-alone time of a prompt of n tokens (s); None: 0 (the bound is the floor).
    """

    slo: Slo
    prefill_alone_s: Callable[[int], float] | None = None

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> SloJudge:
        """The SLO of a ``Scenario`` with its node's ``FastestPrefill``."""
        n = scenario.node
        return cls(scenario.slo, FastestPrefill.for_node(n.model, n.gpu, n.gpus, n.stack))

    def ttft_bound_s(self, prompt_tokens: int) -> float:
        """The TTFT bound of a prompt of ``prompt_tokens`` tokens (s)."""
        alone = self.prefill_alone_s(prompt_tokens) if self.prefill_alone_s is not None else 0.0
        return self.slo.ttft_bound_s(alone)

    def met(self, prompt_tokens: int, ttft_s: float, tbt_mean_s: float) -> bool:
        """Whether a request that produced every token met the SLO."""
        return bool(self.slo.met(ttft_s, tbt_mean_s, self.ttft_bound_s(prompt_tokens)))

    def met_e2e(self, prompt_tokens: int, e2e_s: float, output_tokens: int) -> bool:
        """Whether a whole response whose first-token time is unknown came within ``Slo.e2e_bound_s``."""
        return e2e_s <= self.slo.e2e_bound_s(self.ttft_bound_s(prompt_tokens), output_tokens)
