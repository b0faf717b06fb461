"""The serving simulator: invariants, fast/exact agreement, reconfiguration costs, fork, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from greenrl.core import Knobs
from greenrl.errors import InputError
from greenrl.sim import SimConfig, SimNode
from greenrl.sim import kernel as K
from greenrl.surrogate import StepBatch, Surrogate
from greenrl.surrogate.model import pack
from greenrl.workload import Trace, load_trace

CONV = load_trace("azure-conv")
WINDOW = CONV.window(600, 600)  # ten busy minutes


def _node(trace=WINDOW, **kw) -> SimNode:
    node = SimNode(SimConfig(**kw), trace)
    node.reset(seed=0)
    return node


def _check_invariants(node: SimNode) -> None:
    counts = node.state_counts()
    assert counts["arrived"] == counts["finished"] + counts["rejected"] + counts["running"] + counts["waiting"]
    # KV: per replica, blocks held by its running requests = total - free, never above capacity
    for s in range(node.slot_i.shape[0]):
        n = node.slot_i[s, K.SI_NRUN]
        held = node.req_i[node.run_ids[s, :n], K.RI_BLOCKS].sum()
        assert 0 <= node.slot_i[s, K.SI_FREE_BLOCKS] <= node.slot_i[s, K.SI_TOTAL_BLOCKS]
        assert held == node.slot_i[s, K.SI_TOTAL_BLOCKS] - node.slot_i[s, K.SI_FREE_BLOCKS]


@pytest.mark.parametrize(
    ("model", "gpu", "tp"), [("llama-2-70b", "h100", 4), ("llama-3.1-8b", "a100-40gb", 1), ("mixtral-8x7b", "h100", 2)]
)
def test_compiled_step_equals_surrogate(model: str, gpu: str, tp: int) -> None:
    replica = Surrogate().replica(model, gpu, tp)
    v = pack(replica)
    rng = np.random.default_rng(1)
    for _ in range(200):
        p, d, c, f = rng.uniform(0, 8192), rng.integers(0, 300), rng.uniform(0, 500_000), rng.uniform(0.2, 1.0)
        want = replica.step(StepBatch(p, p * p / 2, float(d), c), f * replica.gpu.max_sm_clock_mhz)
        lat, power = K.step_scalar(v, p, p * p / 2, float(d), c, f)
        assert lat == pytest.approx(float(want.latency_s), rel=1e-12, abs=1e-15)
        assert power == pytest.approx(float(want.power_w), rel=1e-12)


@pytest.mark.parametrize("inflight", ["drain", "requeue"])
def test_conservation_kv_and_energy_through_reconfigurations(inflight: str) -> None:
    node = _node(CONV.window(0, 900), inflight=inflight)
    plan = {2: Knobs(4, 2, 64, 1605), 4: Knobs(4, 1, 128, 1200), 6: Knobs(2, 4, 256, 1980), 12: Knobs(8, 1, 256, 1980)}
    total = 0.0
    for i in range(20):
        if i in plan:
            node.apply(plan[i])
        snap = node.advance(30.0)
        assert snap.energy_j == pytest.approx(sum(snap.energy_per_gpu_j))
        # every GPU draws at least idle and at most TDP power (iterations may spill past the interval end)
        gpu = node.gpu
        assert gpu.idle_power_w * 8 * 30.0 * 0.999 <= snap.energy_j <= gpu.tdp_w * 8 * 31.0
        total += snap.energy_j
        _check_invariants(node)
    assert total == pytest.approx(node._gpu_energy().sum(), rel=1e-12)
    assert node.knobs.tp == 8


def test_ttft_at_least_own_prefill_and_tokens_complete() -> None:
    node = _node()
    node.advance(WINDOW.duration_s + 900)
    rec = node.requests()
    done = rec["state"] == K.FINISHED
    assert done.all()
    fastest = Surrogate().replica("llama-2-70b", "h100", 8)
    alone = np.asarray(fastest.step(StepBatch.prefill(1.0, rec["input_tokens"].astype(float))).latency_s)
    assert (rec["ttft_s"][done] >= alone[done] * (1 - 1e-9)).all()
    assert (rec["generated_tokens"][done] == rec["output_tokens"][done]).all()
    assert (rec["e2e_s"][done] >= rec["ttft_s"][done]).all()


def test_small_kv_cache_preempts_and_still_conserves() -> None:
    node = _node(CONV.window(600, 300).scale_rate(2), initial=Knobs(2, 4, 256, 1980))
    preempted = 0
    for _ in range(30):
        snap = node.advance(20.0)
        preempted += snap.preemptions
        _check_invariants(node)
    assert preempted > 0
    assert node.requests()["preemptions"].sum() == preempted


@pytest.mark.parametrize("name", ["azure-conv", "azure-code"])
def test_fast_agrees_with_exact(name: str) -> None:
    trace = load_trace(name).window(1200, 900)
    results = []
    for mode in ("fast", "exact"):
        node = _node(trace, mode=mode)
        energy = sum(node.advance(60.0).energy_j for _ in range(30))
        rec = node.requests()
        done = rec["state"] == K.FINISHED
        results.append(
            np.array(
                [
                    rec["ttft_s"][done].mean(),
                    np.percentile(rec["ttft_s"][done], 99),
                    rec["tbt_mean_s"][done].mean(),
                    np.percentile(rec["tbt_mean_s"][done], 99),
                    energy,
                    node.slo_attainment(),
                ]
            )
        )
    np.testing.assert_allclose(results[0], results[1], rtol=0.02)


def test_fast_mode_jumps() -> None:
    node = _node()
    node.advance(600.0)
    assert node.cnt[K.K_SCHEDULES] < 0.5 * node.cnt[K.K_ITERATIONS]


def test_clock_change_takes_effect_after_latency_and_saves_power() -> None:
    node = _node(clock_latency_s=0.05)
    before = node.advance(60.0)
    node.apply(Knobs(4, 2, 256, 1005))
    assert node.knobs.sm_clock_mhz == 1980  # not yet
    after = node.advance(60.0)
    assert node.knobs.sm_clock_mhz == 1005 and after.knobs.sm_clock_mhz == 1005
    assert after.reconfigurations == 1
    assert after.mean_power_w < before.mean_power_w


def test_tp_change_costs_a_weight_reload() -> None:
    node = _node(inflight="requeue", load_bandwidth_bps=2.5e9)
    node.advance(30.0)
    node.apply(Knobs(8, 1, 256, 1980))
    reload_s = Surrogate().replica("llama-2-70b", "h100", 8).card.weight_bytes / 2.5e9
    tokens = [node.advance(5.0).output_tokens for _ in range(int(reload_s // 5) + 4)]
    silent = int(np.argmax(np.array(tokens) > 0))  # 5 s intervals with no token: the reload
    assert silent == pytest.approx(reload_s / 5, abs=1)
    assert sum(tokens) > 0
    _check_invariants(node)


def test_fork_is_independent_and_deterministic() -> None:
    node = _node()
    node.advance(120.0)
    snapshot_arrays = [a.copy() for a in (node.req_f, node.req_i, node.slot_i, node.slot_f)]
    child = node.fork()
    child.apply(Knobs(8, 1, 64, 1200))
    child.advance(300.0)
    for before, now in zip(snapshot_arrays, (node.req_f, node.req_i, node.slot_i, node.slot_f), strict=True):
        np.testing.assert_array_equal(before, now)
    a, b = node.fork(), node.fork()
    sa, sb = a.advance(200.0), b.advance(200.0)
    assert sa.energy_j == sb.energy_j and sa.finished == sb.finished
    np.testing.assert_array_equal(a.req_f, b.req_f)


def test_same_seed_same_episode_with_a_random_workload() -> None:
    def workload(rng: np.random.Generator):
        start = float(rng.uniform(0, CONV.duration_s - 300))
        return CONV.window(start, 300).scale_rate(float(rng.uniform(0.5, 2.0)))

    runs = []
    for seed in (7, 7, 8):
        node = SimNode(SimConfig(), workload)
        node.reset(seed=seed)
        runs.append([node.advance(30.0).energy_j for _ in range(5)])
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        (Knobs(1, 8, 256, 1980), "tp"),
        (Knobs(4, 3, 256, 1980), "replicas"),
        (Knobs(4, 2, 0, 1980), "max_num_seqs"),
        (Knobs(4, 2, 256, 1600), "sm_clock_mhz"),
        (Knobs(3, 2, 256, 1980), "tp"),
    ],
)
def test_bad_configurations(knobs: Knobs, field: str) -> None:
    node = _node()
    with pytest.raises(InputError, match=field):
        node.apply(knobs)
    with pytest.raises(InputError, match=field):
        SimNode(SimConfig(initial=knobs), WINDOW)


def test_admission_cap_applies_to_new_admissions() -> None:
    node = _node(WINDOW.scale_rate(3))
    node.advance(120.0)
    node.apply(Knobs(4, 2, 8, 1980))
    for _ in range(10):
        node.advance(30.0)
    assert node.slot_i[:, K.SI_NRUN].max() <= 8


BOOSTED = Knobs(4, 2, 256, 1005, prefill_sm_clock_mhz=1980)


@pytest.mark.parametrize("target_s", [None, 0.2], ids=["every-prompt", "deadline"])
@pytest.mark.parametrize("name", ["azure-conv", "azure-code"])
def test_prefill_clock_fast_agrees_with_exact(name: str, target_s: float | None) -> None:
    trace = load_trace(name).window(1200, 600)
    results = []
    for mode in ("fast", "exact"):
        node = _node(trace, mode=mode, initial=BOOSTED, prefill_clock_ttft_s=target_s)
        energy = sum(node.advance(60.0).energy_j for _ in range(20))
        rec = node.requests()
        done = rec["state"] == K.FINISHED
        results.append(np.array([rec["ttft_s"][done].mean(), rec["tbt_mean_s"][done].mean(), energy]))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def _run(knobs: Knobs, **kw) -> tuple[SimNode, float, float]:
    """Five busy minutes plus drain at fixed knobs: the node, its energy (J) and mean TTFT (s)."""
    node = _node(CONV.window(600, 300), initial=knobs, **kw)
    energy = sum(node.advance(60.0).energy_j for _ in range(8))
    rec = node.requests()
    done = rec["state"] == K.FINISHED
    return node, energy, float(rec["ttft_s"][done].mean())


def test_prefill_clock_sits_between_its_two_clocks() -> None:
    _, e_low, ttft_low = _run(Knobs(4, 2, 256, 1005))
    _, e_boost, ttft_boost = _run(BOOSTED)
    _, e_top, ttft_top = _run(Knobs(4, 2, 256, 1980))
    assert e_low < e_boost < e_top
    assert ttft_top <= ttft_boost < ttft_low


def test_prefill_clock_equal_to_base_or_never_reached_changes_nothing() -> None:
    _, e_off, ttft_off = _run(Knobs(4, 2, 256, 1005), mode="exact")
    _, e_same, ttft_same = _run(Knobs(4, 2, 256, 1005, prefill_sm_clock_mhz=1005), mode="exact")
    node, e_late, ttft_late = _run(BOOSTED, mode="exact", clock_latency_s=1e6)  # the switch never lands
    assert (e_same, ttft_same) == (e_off, ttft_off)
    assert (e_late, ttft_late) == (e_off, ttft_off)
    assert node.cnt[K.K_PREFILL_CLOCK_S] == 0.0


def _clock_cfg(ttft_target_s: float) -> np.ndarray:
    cfg = np.zeros(K.N_C)
    cfg[K.C_CLOCK_FRAC], cfg[K.C_PREFILL_CLOCK_FRAC], cfg[K.C_SWITCH_S] = 0.5, 1.0, 0.05
    cfg[K.C_MAX_SEQS], cfg[K.C_MAX_BATCHED], cfg[K.C_BOOST_TTFT_S] = 256, 8192, ttft_target_s
    return cfg


def test_prefill_clock_switch_up_counts_from_the_arrival() -> None:
    """The governor sees the arrival: the switch lands clock_latency_s after it, not after the next iteration."""
    cfg = _clock_cfg(ttft_target_s=-1.0)
    slot_f = np.zeros((1, K.N_SF))
    slot_f[0, [K.SF_CLOCK_NOW, K.SF_CLOCK_TARGET, K.SF_CLOCK_AT, K.SF_PENDING_SINCE]] = 0.5, 0.5, -1.0, 2.0
    clock, want_base = K._replica_clock(0, 2.03, True, np.inf, slot_f.copy(), cfg)  # 30 ms after the arrival
    assert (clock, want_base) == (0.5, False)
    late = slot_f.copy()
    clock, _ = K._replica_clock(0, 2.06, True, np.inf, late, cfg)  # the switch landed while the replica was busy
    assert clock == 1.0 and late[0, K.SF_CLOCK_AT] == -1.0
    pending = slot_f.copy()
    K._replica_clock(0, 2.03, True, np.inf, pending, cfg)
    assert pending[0, K.SF_CLOCK_AT] == pytest.approx(2.05)
    K._replica_clock(0, 2.2, False, np.inf, pending, cfg)  # nothing pending: down from now, and no arrival held
    assert pending[0, K.SF_CLOCK_AT] == pytest.approx(2.25) and pending[0, K.SF_PENDING_SINCE] == -1.0


def test_prefill_clock_switch_lands_inside_the_iteration() -> None:
    """A lone prompt on an idle replica: 50 ms at the base clock, the rest of its prefill at the prefill clock."""
    prompt = 6000
    trace = Trace("one", np.array([1.0]), np.array([prompt]), np.array([2]), 60.0)
    ttft = {}
    for name, latency_s in (("split", 0.05), ("instant", 0.0), ("never", 1e6)):
        node = _node(
            trace, mode="exact", initial=Knobs(8, 1, 256, 1005, prefill_sm_clock_mhz=1980), clock_latency_s=latency_s
        )
        node.advance(10.0)
        ttft[name] = float(node.requests()["ttft_s"][0])
    lat_high, lat_base = ttft["instant"], ttft["never"]
    assert 0.05 < lat_high < lat_base  # the case under test: a prefill longer than the switch
    assert ttft["split"] == pytest.approx(0.05 + (1.0 - 0.05 / lat_base) * lat_high, rel=1e-12)


def test_prefill_clock_runs_only_part_of_the_busy_time() -> None:
    node = _node(CONV.window(600, 300), initial=BOOSTED)
    boosted_s = 0.0
    for _ in range(8):
        node.advance(60.0)
        boosted_s += node.cnt[K.K_PREFILL_CLOCK_S]
    busy_s = node.slot_f[:, K.SF_BUSY_S].sum()
    assert 0.0 < boosted_s < 0.8 * busy_s


DEADLINE_TTFT_S = 0.2


def test_deadline_governor_switches_up_at_the_earliest_boost_time() -> None:
    """A boost time in the future holds the base clock; a newly routed request that needs it sooner moves it up."""
    cfg = _clock_cfg(DEADLINE_TTFT_S)
    slot_f = np.zeros((1, K.N_SF))
    slot_f[0, [K.SF_CLOCK_NOW, K.SF_CLOCK_TARGET, K.SF_CLOCK_AT, K.SF_PENDING_SINCE]] = 0.5, 0.5, -1.0, 2.0
    clock, want_base = K._replica_clock(0, 2.01, True, 2.3, slot_f, cfg)
    assert (clock, want_base) == (0.5, False) and slot_f[0, K.SF_CLOCK_AT] == pytest.approx(2.35)
    clock, _ = K._replica_clock(0, 2.05, True, 2.02, slot_f, cfg)  # an arrival at risk: asked at 2.02
    assert clock == 0.5 and slot_f[0, K.SF_CLOCK_AT] == pytest.approx(2.07)
    clock, _ = K._replica_clock(0, 2.08, True, 2.02, slot_f, cfg)
    assert clock == 1.0
    clock, want_base = K._replica_clock(0, 2.5, True, np.inf, _fresh_slot(), cfg)  # nothing needs it
    assert (clock, want_base) == (0.5, True)


def _fresh_slot() -> np.ndarray:
    slot_f = np.zeros((1, K.N_SF))
    slot_f[0, [K.SF_CLOCK_NOW, K.SF_CLOCK_TARGET, K.SF_CLOCK_AT, K.SF_PENDING_SINCE]] = 0.5, 0.5, -1.0, 2.0
    return slot_f


def _boost_delay_s(prompts: list[int], target_s: float, busy_s: float = 0.0) -> float:
    """Queue ``prompts`` on an idle TP8 replica at 1005 MHz; the last one's boost time minus its arrival."""
    trace = Trace("q", np.zeros(len(prompts)), np.array(prompts), np.full(len(prompts), 4), 60.0)
    node = _node(trace, initial=Knobs(8, 1, 256, 1005, prefill_sm_clock_mhz=1980), prefill_clock_ttft_s=target_s)
    now = 0.0
    node.slot_f[0, K.SF_BUSY_UNTIL] = now + busy_s
    for rid in range(len(prompts)):
        node.req_i[rid, K.RI_STATE] = K.WAITING
        K._push_back(node.req_i, node.slot_i, 0, rid)
    last = len(prompts) - 1
    args = (node.req_f, node.req_i, node.slot_i, node.slot_f, node.run_ids, node._packed, node.cfg)
    return K._boost_at(0, last, now, *args) - node.req_f[last, K.RF_ARRIVAL]


def test_deadline_boost_time_follows_the_work_ahead() -> None:
    v = SimNode(SimConfig(), WINDOW)._packed[-1]  # TP8
    alone_s = K.base_clock_prefill_s(v, 400.0, 400.0 * 400.0 / 2, 0.0, 0.0, 8192.0, 1005 / 1980)
    assert 0.0 < alone_s < DEADLINE_TTFT_S  # the case under test: a short prompt alone meets the target
    assert _boost_delay_s([400], DEADLINE_TTFT_S) == pytest.approx(DEADLINE_TTFT_S - alone_s, rel=1e-9)
    assert _boost_delay_s([400], DEADLINE_TTFT_S, busy_s=0.05) == pytest.approx(DEADLINE_TTFT_S - alone_s - 0.05)
    assert _boost_delay_s([8000, 400], DEADLINE_TTFT_S) == 0.0  # behind a long prompt: at once
    # more than one chunk of work is predicted as equal chunks, each next to the decodes
    two = K.base_clock_prefill_s(v, 10000.0, 0.0, 8.0, 8000.0, 8192.0, 0.5)
    one, _ = K.step_scalar(v, 5000.0, 0.0, 8.0, 8000.0, 0.5)
    assert two == pytest.approx(2 * one, rel=1e-12)


def test_deadline_boost_asks_at_once_without_a_seat() -> None:
    trace = Trace("q", np.zeros(3), np.array([100, 100, 100]), np.full(3, 4), 60.0)
    node = _node(trace, initial=Knobs(8, 1, 2, 1005, prefill_sm_clock_mhz=1980), prefill_clock_ttft_s=DEADLINE_TTFT_S)
    for rid in range(3):
        K._push_back(node.req_i, node.slot_i, 0, rid)
    args = (node.req_f, node.req_i, node.slot_i, node.slot_f, node.run_ids, node._packed, node.cfg)
    assert K._boost_at(0, 2, 0.0, *args) == 0.0  # three queued for two seats
    node.cfg[K.C_MAX_SEQS] = 3
    assert K._boost_at(0, 2, 0.0, *args) > 0.0


def _boosted(knobs: Knobs, **kw) -> tuple[float, float, float]:
    """As ``_run``: energy (J), mean TTFT (s) and seconds at the prefill clock."""
    node = _node(CONV.window(600, 300), initial=knobs, **kw)
    energy = boosted_s = 0.0
    for _ in range(8):
        energy += node.advance(60.0).energy_j
        boosted_s += node.cnt[K.K_PREFILL_CLOCK_S]
    rec = node.requests()
    return energy, float(rec["ttft_s"][rec["state"] == K.FINISHED].mean()), boosted_s


def test_deadline_governor_boosts_less_and_spends_less() -> None:
    """Against the prefill clock whenever a prompt waits: less time at the prefill clock, less energy."""
    e_always, _, boosted_always = _boosted(BOOSTED)
    e_deadline, ttft_deadline, boosted_deadline = _boosted(BOOSTED, prefill_clock_ttft_s=DEADLINE_TTFT_S)
    e_low, ttft_low, _ = _boosted(Knobs(4, 2, 256, 1005))
    assert 0.0 < boosted_deadline < 0.9 * boosted_always
    assert e_low < e_deadline < e_always
    assert ttft_deadline < ttft_low
    # a target no prompt can miss at the base clock never raises the clock
    e_never, _, boosted_never = _boosted(BOOSTED, prefill_clock_ttft_s=1e6)
    assert boosted_never == 0.0 and e_never == pytest.approx(e_low, rel=1e-9)


def test_kernel_cache_is_stamped_with_every_kernel_module() -> None:
    # numba stamps a cached function with its own file only; an edit to a module it inlines must recompile it
    from greenrl.sim.kernel import _cache

    if not _cache.install():
        pytest.skip("this numba has no cache locator hook")
    for fn in (K.run_until, K.step_scalar, K._boost_at):
        locator = fn._cache._impl.locator
        assert isinstance(locator, _cache._PackageStampMixin)
        assert locator.get_source_stamp()[1] == _cache._package_stamp()
