"""The deadline governor's prediction on a live node: when a request needs the prefill clock.

The simulator's deadline governor (``greenrl.sim.kernel._boost_at``, scenario
``control.prefill_clock_ttft_s``) raises a replica's clock only once a pending prompt would, at the base
clock, get its first token later than the TTFT target after its arrival. ``PrefillDeadline`` makes the
same prediction for the admission proxy with the same compiled function,
``greenrl.sim.kernel.base_clock_prefill_s``, over the surrogate's packed parameters of one replica
(built as ``SimNode`` builds them), so that sim and live predict identically from the same state.

What the proxy can see differs from the simulator's replica state:

* no iteration under way: the proxy cannot see vLLM's iterations, so the kernel's ``busy`` term is 0.
  Instead the prompt tokens of the requests upstream still awaiting their first token are counted
  whole (the proxy cannot tell how much of them is prefilled), which covers the iteration under way
  approximately;
* the load is node-wide: with ``replicas`` > 1 the request lands on one replica, which holds about one
  ``replicas``-th of the others (vLLM's router balances outstanding requests), so the load ahead is
  divided by ``replicas``; one clock still serves every GPU;
* text prompts are counted at about 4 characters a token (``approx_prompt_tokens``), and a decoding
  request's context is its prompt plus the token events streamed so far.

Public names: BoostPredictor, DEFAULT_MAX_NUM_BATCHED_TOKENS, PrefillDeadline.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from greenrl.catalog import load_gpu
from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.sim.kernel import base_clock_prefill_s
from greenrl.surrogate import Surrogate
from greenrl.surrogate.model import pack

__all__ = ["DEFAULT_MAX_NUM_BATCHED_TOKENS", "BoostPredictor", "PrefillDeadline"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_NUM_BATCHED_TOKENS: int = Knobs(tp=1, replicas=1, max_num_seqs=1, sm_clock_mhz=1).max_num_batched_tokens
"""vLLM's chunked-prefill token budget when the knob is not given (``Knobs``' default)."""

TP_DEGREES = (1, 2, 4, 8)


class BoostPredictor(Protocol):
    """What the admission proxy asks at each arrival (``PrefillDeadline``)."""

    def boost_at(
        self,
        arrived_at_s: float,
        prompt_tokens: int,
        *,
        tokens_ahead: int,
        pairs_ahead: float,
        decoding: int,
        decode_ctx_tokens: int,
        must_wait: bool,
    ) -> float:
        """When the request arrived at ``arrived_at_s`` needs the prefill clock (same clock, s)."""
        ...


@dataclass(frozen=True, slots=True)
class _Serving:
    """How the node serves now: what a prediction needs besides the load (swapped whole, never edited)."""

    v: np.ndarray  # packed surrogate parameters of one replica at this TP
    tp: int
    replicas: int
    base_clock_mhz: int
    clock_frac: float
    max_num_batched_tokens: int


class PrefillDeadline:
    """Predicts each arriving request's boost time: when the prefill clock must be asked for it.

    At the base clock from its arrival, a request would get its first token after the prefill of
    everything awaiting a first token ahead of it and of its own prompt, next to the running decodes
    (``base_clock_prefill_s``). Its boost time is the latest time, not before its arrival, that still
    leaves that first token within ``ttft_target_s`` of its arrival; a request that must wait for a
    seat (no room under the admission cap) boosts at once, as its wait depends on completions. Before
    ``configure``, or at a TP the surrogate cannot model, every request boosts at once (the prefill
    clock whenever a request is pending, as without a target).

    ``configure`` may be called from any thread while ``boost_at`` runs on the proxy's loop: the serving
    state is replaced whole.

    Args:
        model: model name (``greenrl/catalog``), as the scenario's ``node.model``.
        gpu: GPU name, as the scenario's ``node.gpu``.
        ttft_target_s: the TTFT target (s, >= 0), as the scenario's ``control.prefill_clock_ttft_s`` or the
            controller's ``prefill_clock.ttft_target_s``.
        stack: the serving stack of the surrogate's parameters (None: the GPU's default).
        surrogate: fitted surrogate (default: the packaged parameters, as ``SimNode``'s).

    Raises:
        InputError: a target that is not a finite number >= 0, an unknown model or GPU, or a model that
            fits on no TP degree.
    """

    def __init__(
        self,
        model: str,
        gpu: str,
        ttft_target_s: float,
        *,
        stack: str | None = None,
        surrogate: Surrogate | None = None,
    ) -> None:
        if isinstance(ttft_target_s, bool) or not (math.isfinite(ttft_target_s) and ttft_target_s >= 0):
            raise InputError("PrefillDeadline", "ttft_target_s", f"must be >= 0 s, got {ttft_target_s!r}", "e.g. 0.2")
        self.model, self.stack = model, stack
        self.ttft_target_s = float(ttft_target_s)
        self.gpu = load_gpu(gpu)
        sur = surrogate or Surrogate()
        self._packed: dict[int, np.ndarray] = {}
        for tp in TP_DEGREES:
            try:
                self._packed[tp] = pack(sur.replica(model, self.gpu, tp, stack))
            except InputError:
                continue  # this TP cannot serve the model (as SimNode skips it)
        if not self._packed:
            raise InputError("PrefillDeadline", "model", f"{model} fits on no TP degree of {self.gpu.name}", "-")
        self._serving: _Serving | None = None
        self._warned: set[int] = set()
        # the first call loads (or compiles) the kernel: here, never on the proxy's loop
        any_v = next(iter(self._packed.values()))
        base_clock_prefill_s(any_v, 1.0, 0.5, 0.0, 0.0, float(DEFAULT_MAX_NUM_BATCHED_TOKENS), 1.0)

    @property
    def feasible_tp(self) -> list[int]:
        """TP degrees the surrogate can model for this model and GPU."""
        return sorted(self._packed)

    @property
    def serving(self) -> dict[str, int] | None:
        """``tp``, ``replicas``, ``base_clock_mhz``, ``max_num_batched_tokens`` in use; None before ``configure``."""
        s = self._serving
        if s is None:
            return None
        return {
            "tp": s.tp,
            "replicas": s.replicas,
            "base_clock_mhz": s.base_clock_mhz,
            "max_num_batched_tokens": s.max_num_batched_tokens,
        }

    def configure(
        self,
        *,
        tp: int,
        replicas: int,
        base_clock_mhz: int,
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    ) -> None:
        """Set the layout, base SM clock (MHz) and chunked-prefill budget in force; later arrivals use them.

        A TP the surrogate cannot model is logged once and makes every request boost at once.
        """
        v = self._packed.get(int(tp))
        if v is None:
            if tp not in self._warned:
                self._warned.add(tp)
                logger.warning("deadline governor: tp=%d not modelled for %s; prefill clock at once", tp, self.model)
            self._serving = None
            return
        base, frac = int(base_clock_mhz), int(base_clock_mhz) / self.gpu.max_sm_clock_mhz
        self._serving = _Serving(v, int(tp), max(1, int(replicas)), base, frac, int(max_num_batched_tokens))

    def prefill_s(self, tokens: float, pairs: float, decoding: float, decode_ctx_tokens: float) -> float | None:
        """Base-clock seconds to prefill ``tokens`` (``pairs`` attention pairs) next to decodes (None: unconfigured)."""
        s = self._serving
        if s is None:
            return None
        args = (float(tokens), float(pairs), float(decoding), float(decode_ctx_tokens))  # one compiled signature
        return float(base_clock_prefill_s(s.v, *args, float(s.max_num_batched_tokens), s.clock_frac))

    def boost_at(
        self,
        arrived_at_s: float,
        prompt_tokens: int,
        *,
        tokens_ahead: int,
        pairs_ahead: float,
        decoding: int,
        decode_ctx_tokens: int,
        must_wait: bool,
    ) -> float:
        """When a request arriving now needs the prefill clock (the clock of ``arrived_at_s``, s).

        Args:
            arrived_at_s: its arrival (now).
            prompt_tokens: its prompt length (tokens).
            tokens_ahead: prompt tokens of the requests awaiting their first token ahead of it, node-wide.
            pairs_ahead: their attention pairs (n x n / 2 for a prompt of n tokens), node-wide.
            decoding: requests past their first token, still generating, node-wide.
            decode_ctx_tokens: their context (prompt + generated tokens), node-wide.
            must_wait: it has to wait for a seat (no room under the admission cap).
        """
        s = self._serving
        if must_wait or s is None:
            return arrived_at_s
        share = 1.0 / s.replicas  # the replica it lands on holds about this share of the others
        own = float(prompt_tokens)
        tokens = tokens_ahead * share + own
        pairs = pairs_ahead * share + own * own / 2.0
        batched = float(s.max_num_batched_tokens)
        work = base_clock_prefill_s(
            s.v, tokens, pairs, decoding * share, decode_ctx_tokens * share, batched, s.clock_frac
        )
        busy_s = 0.0  # the kernel's iteration under way: the proxy cannot see one (see the module doc)
        return max(arrived_at_s, arrived_at_s + self.ttft_target_s - busy_s - work)
