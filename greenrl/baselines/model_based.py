"""Model-based controllers that query the fitted surrogate: predictive DVFS (one clock, or one per phase), a planner.

The planner is DynamoLLM-style. All read only what a serving node knows (its gauges, the arrival rate
and prompt lengths seen at the front end, the output lengths of requests already finished) plus the
surrogate of its own model and GPU. None sees the future.

Public names: PredictiveDvfsBaseline, PhaseDvfsBaseline, PlannerBaseline, PlanOption, ttft_quantile_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from greenrl.baselines.base import Baseline
from greenrl.core import Knobs
from greenrl.env.serving_env import ServingEnv
from greenrl.surrogate import ReplicaModel, StepBatch, Surrogate, steady_state

__all__ = ["PhaseDvfsBaseline", "PlanOption", "PlannerBaseline", "PredictiveDvfsBaseline", "ttft_quantile_s"]

DEFAULT_PROMPT_TOKENS = 1024.0
"""Prompt length assumed before any request has been seen (tokens)."""
DEFAULT_OUTPUT_TOKENS = 256.0
"""Output length assumed before enough requests have finished (tokens)."""


class _SurrogateBaseline(Baseline):
    """Shared: replica models per TP, KV capacity, the TTFT SLO of a prompt length."""

    def bind(self, env: ServingEnv) -> None:
        """Attach to ``env`` and build (once per scenario node) its replica models."""
        n = env.scenario.node
        key = (n.model, n.gpu, n.stack)
        if getattr(self, "_key", None) != key:
            surrogate = Surrogate()
            tps = sorted(set(env.feasible_tp) | {env.initial.tp})
            self._replicas = {tp: surrogate.replica(n.model, n.gpu, tp, n.stack) for tp in tps}
            self._key = key
        self._mem_util = env.node.gpu_memory_utilization
        super().bind(env)

    def replica(self, tp: int) -> ReplicaModel:
        """The surrogate of one replica at ``tp``."""
        return self._replicas[tp]

    def kv_capacity_tokens(self, tp: int) -> int:
        """KV-cache tokens one replica at ``tp`` holds."""
        return self._replicas[tp].kv_capacity_tokens(self._mem_util)

    def ttft_slo_s(self, prompt_tokens: float) -> float:
        """The TTFT SLO of a prompt of this length: max(floor, multiple x its prefill alone, fastest TP, top clock)."""
        fastest = self._replicas[max(self._replicas)]
        alone = float(fastest.step(StepBatch.prefill(1.0, prompt_tokens)).latency_s)
        return self.env.scenario.slo.ttft_bound_s(alone)


class PredictiveDvfsBaseline(_SurrogateBaseline):
    """Each interval, the lowest SM clock at which the surrogate predicts the SLOs hold with headroom.

    Projected batch per replica b = min(running + waiting, max_num_seqs x replicas) / replicas; mean
    context = KV usage x KV capacity / running (the recent mean prompt when nothing runs). The predicted
    time between tokens is the iteration latency at b with the arriving prompt tokens mixed in (chunked
    prefill, solved as a fixed point); it must be <= (1 - headroom) x the TBT SLO. As the surrogate's
    decode latency barely depends on the clock, a TTFT check is added: prefilling the queued prompts plus
    one new prompt, in ``max_num_batched_tokens`` chunks beside the decode batch, must finish within
    (1 - headroom) x that prompt's TTFT SLO. TP and max_num_seqs stay at static-max's; the first
    interval, with nothing observed yet, runs static-max.

    Args:
        env, seed: see ``Baseline``.
        headroom_frac: share of each SLO kept in reserve.
    """

    name = "predictive-dvfs"
    family = "model-predictive DVFS"
    anchor = (
        "throttLL'eM (Kakolyris et al., HPCA 2025, arXiv 2408.05235): projected batch/KV -> lowest clock meeting SLO"
    )

    def __init__(self, env: ServingEnv, seed: int = 0, headroom_frac: float = 0.2) -> None:
        self.headroom_frac = headroom_frac
        super().__init__(env, seed)

    def reset_state(self) -> None:
        """Forget the prompt-length average."""
        self.prompt_tokens = DEFAULT_PROMPT_TOKENS

    def predicted_s(
        self, signals: dict[str, float], clocks_mhz: npt.NDArray[np.float64]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted time between tokens and TTFT (s) at each clock, for the current TP and replicas."""
        knobs = self.current
        r = max(1, knobs.replicas)
        rep = self.replica(knobs.tp)
        running, waiting = signals["running"], signals["waiting"]
        if signals["mean_prompt_tokens"] > 0:
            self.prompt_tokens = signals["mean_prompt_tokens"]
        prompt = self.prompt_tokens
        batch = max(1.0, min(running + waiting, knobs.max_num_seqs * r) / r)
        if running >= 1:
            ctx = max(1.0, signals["kv_cache_usage_frac"] * self.kv_capacity_tokens(knobs.tp) * r / running)
        else:
            ctx = prompt
        budget = float(knobs.max_num_batched_tokens)
        prompt_rate = signals["prompt_tokens_per_s"] / r
        t = np.asarray(rep.step(StepBatch.decode(batch, ctx), clocks_mhz).latency_s, dtype=float)
        for _ in range(3):  # prefill tokens arriving during one iteration ride in it
            chunk = np.minimum(prompt_rate * t, budget)
            t = np.asarray(rep.step(StepBatch(chunk, chunk * prompt / 2.0, batch, batch * ctx), clocks_mhz).latency_s)
        queued = waiting * prompt / r + prompt
        chunk_tokens = min(budget, queued)
        t_chunk = np.asarray(
            rep.step(StepBatch(chunk_tokens, chunk_tokens * prompt / 2.0, batch, batch * ctx), clocks_mhz).latency_s
        )
        ttft = math.ceil(queued / budget) * t_chunk
        return t, ttft

    def decide(self, signals: dict[str, float]) -> Knobs:
        """The lowest clock predicted to meet both SLOs with headroom (the top clock if none does).

        The first interval, with nothing observed yet, keeps the initial configuration.
        """
        if self.step_index == 0:
            return self.env.initial
        clocks = np.array(sorted(self.values("sm_clock_mhz")), dtype=float)
        tbt, ttft = self.predicted_s(signals, clocks)
        keep = 1.0 - self.headroom_frac
        ok = (tbt <= keep * self.env.scenario.slo.tbt_mean_s) & (ttft <= keep * self.ttft_slo_s(self.prompt_tokens))
        clock = int(clocks[np.flatnonzero(ok)[0]]) if ok.any() else int(clocks[-1])
        return self.with_knobs(self.current, sm_clock_mhz=clock)


class PhaseDvfsBaseline(PredictiveDvfsBaseline):
    """Predictive DVFS with one clock per phase: the lowest decode clock meeting the TBT SLO, top prefill clock.

    The decode clock is the lowest whose predicted time between tokens meets the TBT SLO with headroom
    (``PredictiveDvfsBaseline.predicted_s``); prompts run at the top allowed ``prefill_sm_clock_mhz``.
    Prefill is compute-bound and TTFT breaks in bursts an interval average cannot see, so prompts run as
    fast as allowed; decode is memory-bound, so its clock is lowered to what the TBT SLO needs. The
    prefill clock runs while requests wait or prefill (see ``greenrl.core.Knobs``). Without a
    ``prefill_sm_clock_mhz`` knob in the env it is ``predictive-dvfs``.
    """

    name = "phase-dvfs"
    family = "model-predictive DVFS, per phase"
    anchor = "GreenLLM (Liu et al., arXiv 2508.16449): separate SLO-aware prefill and decode frequency control"

    def decide(self, signals: dict[str, float]) -> Knobs:
        """Decode clock from the TBT check; prefill clock the top allowed (0 if that is not above it)."""
        if self.step_index == 0 or "prefill_sm_clock_mhz" not in self.env.knob_names:
            return super().decide(signals)
        clocks = np.array(sorted(self.values("sm_clock_mhz")), dtype=float)
        tbt, _ = self.predicted_s(signals, clocks)
        ok = np.flatnonzero(tbt <= (1.0 - self.headroom_frac) * self.env.scenario.slo.tbt_mean_s)
        base = int(clocks[ok[0]]) if len(ok) else int(clocks[-1])
        top = max(self.values("prefill_sm_clock_mhz"))
        return self.with_knobs(self.current, sm_clock_mhz=base, prefill_sm_clock_mhz=top if top > base else 0)


def ttft_quantile_s(service_s: float, rate_rps: float, quantile: float = 0.99) -> float:
    """TTFT quantile of an M/M/1 prefill queue: service + waiting quantile (inf when overloaded).

    P(wait > t) = rho·exp(-(1 - rho)·t / service) with rho = rate x service, so the q-quantile wait is
    service / (1 - rho) x ln(rho / (1 - q)) (0 when rho <= 1 - q).

    Example:
        >>> round(ttft_quantile_s(0.1, 5.0, 0.99), 3)
        0.882
    """
    rho = rate_rps * service_s
    if rho >= 1.0:
        return math.inf
    tail = 1.0 - quantile
    wait = service_s / (1.0 - rho) * math.log(rho / tail) if rho > tail else 0.0
    return service_s + wait


@dataclass(frozen=True, slots=True)
class PlanOption:
    """One configuration the planner scored: its knobs, predicted node power (W) and running batch per replica."""

    knobs: Knobs
    power_w: float
    batch: float


class PlannerBaseline(_SurrogateBaseline):
    """DynamoLLM-style planner: forecast the load, pick the least-power configuration that meets the SLOs.

    Forecast: lambda = (1 + margin) x max(EWMA of the arrival rate, last interval's rate). For every
    (tp, replicas, SM clock), the surrogate's steady state gives the smallest running batch B per
    replica that sustains lambda / replicas with the recent request shape (mean prompt seen at the front
    end, mean output of finished requests); the option is feasible if B fits max_num_seqs and the KV
    cache, the steady median time between tokens is within (1 - headroom) x the TBT SLO, and the
    ``ttft_quantile`` TTFT of a queue of prompts (M/M/1, service = one prompt's prefill beside that
    batch, see ``ttft_quantile_s``) within (1 - headroom) x the prompt's TTFT SLO. As every cap >= B
    gives the same steady state, max_num_seqs is the largest allowed value (a tighter cap only queues
    bursts). Node power = replicas x steady power + parked GPUs. The first interval, with no forecast
    yet, runs the initial (static-max) configuration.

    TP/replica changes (a weight reload with no service) have hysteresis: the other layout must win by
    ``min_saving_frac`` for ``patience`` consecutive intervals, the env's dwell time must have passed,
    and the reload outage must be at most ``max_outage_frac`` of a dwell period; a layout that cannot
    meet the forecast at all is left at once.

    Args:
        env, seed: see ``Baseline``.
        margin_frac, ewma_alpha: forecast margin and smoothing.
        headroom_frac: share of each SLO kept in reserve.
        min_saving_frac, patience, max_outage_frac: TP hysteresis (see above).
        ttft_quantile: TTFT quantile held to the SLO (0.99: the p99).
    """

    name = "planner"
    family = "forecast + model-based planning"
    anchor = "DynamoLLM (Stojkovic et al., HPCA 2025, arXiv 2408.00741)"

    def __init__(
        self,
        env: ServingEnv,
        seed: int = 0,
        margin_frac: float = 0.2,
        ewma_alpha: float = 0.5,
        headroom_frac: float = 0.2,
        min_saving_frac: float = 0.15,
        patience: int = 3,
        max_outage_frac: float = 0.05,
        ttft_quantile: float = 0.99,
    ) -> None:
        self.margin_frac, self.ewma_alpha, self.headroom_frac = margin_frac, ewma_alpha, headroom_frac
        self.ttft_quantile = ttft_quantile
        self.min_saving_frac, self.patience, self.max_outage_frac = min_saving_frac, patience, max_outage_frac
        super().__init__(env, seed)

    def reset_state(self) -> None:
        """Empty forecast and hysteresis state."""
        self.rate_ewma: float | None = None
        self.prompt_tokens = DEFAULT_PROMPT_TOKENS
        self.pending: tuple[int, int] | None = None
        self.pending_count = 0
        self.last_layout_change = -(10**9)
        self.options: list[PlanOption] = []

    def _output_tokens(self) -> float:
        """Mean output length of the requests finished so far (once 20 have), as the front end sees it."""
        tokens, finished = self.env.node.finished_output_tokens()
        return tokens / finished if finished >= 20 else DEFAULT_OUTPUT_TOKENS

    def plan(self, rate_rps: float, prompt_tokens: float, output_tokens: float) -> list[PlanOption]:
        """Feasible options for a forecast load, least power first."""
        slo = self.env.scenario.slo
        keep = 1.0 - self.headroom_frac
        clocks = np.array(sorted(self.values("sm_clock_mhz")), dtype=float)
        seqs = sorted(self.values("max_num_seqs"))
        grid = np.geomspace(0.05, float(max(seqs)), 80)
        ttft_limit = keep * self.ttft_slo_s(prompt_tokens)
        ctx = prompt_tokens + output_tokens / 2.0
        parked_w = self.env.scenario.node.parked_gpu_w(self.env.gpu.idle_power_w)
        gpus = self.env.scenario.node.gpus
        options = []
        for tp, r in self.layouts():
            rep = self.replica(tp)
            ss = steady_state(rep, grid[None, :], prompt_tokens, output_tokens, clocks[:, None])
            served_rps = grid[None, :] / (output_tokens * np.asarray(ss.mixed_step_s))
            cap = self.kv_capacity_tokens(tp)
            for i, clock in enumerate(clocks):
                enough = np.flatnonzero(served_rps[i] >= rate_rps / r)
                if not len(enough):
                    continue
                j = int(enough[0])
                batch = float(grid[j])
                if batch > max(seqs) or batch * ctx > cap:
                    continue
                if float(np.asarray(ss.median_itl_s)[i, j]) > keep * slo.tbt_mean_s:
                    continue
                service_s = float(
                    rep.step(StepBatch(prompt_tokens, prompt_tokens**2 / 2.0, batch, batch * ctx), clock).latency_s
                )
                if ttft_quantile_s(service_s, rate_rps / r, self.ttft_quantile) <= ttft_limit:
                    boost, replica_w = 0, float(np.asarray(ss.power_w)[i, j])
                else:
                    boosted = self._boosted(rep, clock, batch, prompt_tokens, output_tokens, rate_rps / r, ttft_limit)
                    if boosted is None:
                        continue
                    boost, replica_w = boosted
                mns = seqs[-1]  # the steady state is the same under any cap >= B: keep the least restrictive
                knobs = self.with_knobs(
                    self.env.initial,
                    tp=tp,
                    replicas=r,
                    sm_clock_mhz=int(clock),
                    max_num_seqs=mns,
                    prefill_sm_clock_mhz=boost,
                )
                options.append(PlanOption(knobs, r * replica_w + (gpus - tp * r) * parked_w, batch))
        return sorted(options, key=lambda o: o.power_w)

    def _boosted(
        self,
        rep: ReplicaModel,
        clock: float,
        batch: float,
        prompt_tokens: float,
        output_tokens: float,
        rate_rps: float,
        ttft_limit: float,
    ) -> tuple[int, float] | None:
        """The lowest prefill clock above ``clock`` that meets the TTFT check, and the replica's power then.

        Iterations carrying a prompt run at the prefill clock, the others at ``clock``; with Poisson
        arrivals a share 1 - exp(-new) of iterations carries one (new = prompts entering per iteration).
        None when the env has no prefill clock or none meets the check.
        """
        if "prefill_sm_clock_mhz" not in self.env.knob_names:
            return None
        ctx = prompt_tokens + output_tokens / 2.0
        for boost in sorted(v for v in self.values("prefill_sm_clock_mhz") if v > clock):
            mixed = rep.step(StepBatch(prompt_tokens, prompt_tokens**2 / 2.0, batch, batch * ctx), boost)
            if ttft_quantile_s(float(mixed.latency_s), rate_rps, self.ttft_quantile) > ttft_limit:
                continue
            decode = rep.step(StepBatch.decode(batch, ctx), clock)
            share = 1.0 - math.exp(-batch / output_tokens)
            t_m, t_d = share * float(mixed.latency_s), (1.0 - share) * float(decode.latency_s)
            power = (t_m * float(mixed.power_w) + t_d * float(decode.power_w)) / (t_m + t_d)
            return boost, power
        return None

    def decide(self, signals: dict[str, float]) -> Knobs:
        """Forecast, plan, and apply TP hysteresis (the first interval keeps the initial knobs)."""
        if self.step_index == 0:
            return self.env.initial
        rate = signals["arrival_rate_rps"]
        a = self.ewma_alpha
        self.rate_ewma = rate if self.rate_ewma is None else a * rate + (1.0 - a) * self.rate_ewma
        if signals["mean_prompt_tokens"] > 0:
            self.prompt_tokens = a * signals["mean_prompt_tokens"] + (1.0 - a) * self.prompt_tokens
        forecast = (1.0 + self.margin_frac) * max(self.rate_ewma, rate)
        self.options = self.plan(forecast, self.prompt_tokens, self._output_tokens())
        layout = (self.current.tp, self.current.replicas)
        here = [o for o in self.options if (o.knobs.tp, o.knobs.replicas) == layout]
        if not self.options:  # nothing meets the forecast: fastest configuration of the current layout
            clocks = self.values("sm_clock_mhz")
            seqs = self.values("max_num_seqs")
            return self.with_knobs(self.current, sm_clock_mhz=max(clocks), max_num_seqs=max(seqs))
        best = self.options[0]
        target = (best.knobs.tp, best.knobs.replicas)
        if target == layout:
            self.pending, self.pending_count = None, 0
            return best.knobs
        urgent = not here
        saving = 1.0 - best.power_w / here[0].power_w if here else 1.0
        self.pending_count = self.pending_count + 1 if self.pending == target else 1
        self.pending = target
        dwell = max(self.env.scenario.control.min_dwell_steps.get(k, 0) for k in ("tp", "replicas"))
        reload_s = self.env.scenario.node.reload_s(self.replica(best.knobs.tp).card.weight_bytes, best.knobs.tp)
        outage_frac = reload_s / (max(dwell, 1) * self.env.scenario.control.interval_s)
        dwell_ok = self.step_index - self.last_layout_change >= dwell
        worth = saving >= self.min_saving_frac and outage_frac <= self.max_outage_frac
        if dwell_ok and (urgent or (worth and self.pending_count >= self.patience)):
            self.last_layout_change = self.step_index
            self.pending, self.pending_count = None, 0
            return best.knobs
        if here:
            return here[0].knobs
        clocks = self.values("sm_clock_mhz")
        return self.with_knobs(self.current, sm_clock_mhz=max(clocks), max_num_seqs=max(self.values("max_num_seqs")))
