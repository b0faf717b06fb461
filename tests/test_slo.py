"""One SLO: the simulator, the scenario parser, the admission proxy and the load generator judge alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from greenrl.env.scenario import load_scenario
from greenrl.env.serving_env import build_node
from greenrl.errors import InputError
from greenrl.live.loadgen import RequestRecord, RequestSlo
from greenrl.live.proxy.accounting import Accounting, Track
from greenrl.sim import SimNode
from greenrl.slo import FastestPrefill, Slo, SloJudge
from greenrl.workload import Trace


def test_scalar_and_vector_bounds_are_the_same_floats() -> None:
    slo = Slo(0.5, 5.0, 0.1)
    alone = np.random.default_rng(0).uniform(0.0, 0.3, 1000)
    vector = slo.ttft_bounds_s(alone)
    assert [slo.ttft_bound_s(float(a)) for a in alone] == vector.tolist()
    assert vector.tolist() == np.maximum(0.5, 5.0 * alone).tolist()  # the simulator's formula, bit for bit
    ttft, tbt = np.array([0.4, 0.6, 0.4]), np.array([0.05, 0.05, 0.2])
    assert slo.met(ttft, tbt, np.array([0.5, 0.5, 0.5])).tolist() == [True, False, False]
    assert slo.met(0.4, 0.05, 0.5) is True and slo.e2e_bound_s(0.5, 11) == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttft_floor_s": 0.0}, "ttft_floor_s"),
        ({"ttft_floor_s": float("nan")}, "ttft_floor_s"),
        ({"ttft_prefill_multiple": -1.0}, "ttft_prefill_multiple"),
        ({"ttft_prefill_multiple": float("inf")}, "ttft_prefill_multiple"),
        ({"tbt_mean_s": 0.0}, "tbt_mean_s"),
    ],
)
def test_bad_slo_values_are_refused(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InputError) as err:
        Slo(**kwargs)
    assert err.value.field == field


def test_the_scenario_parses_into_slo_and_names_the_file_on_a_bad_value(tmp_path: Path) -> None:
    s = load_scenario("tiny")
    assert isinstance(s.slo, Slo) and build_node(s).config.slo == s.slo
    bad = tmp_path / "bad.yaml"
    bad.write_text("slo: {ttft_floor_s: -1.0}\n")
    with pytest.raises(InputError) as err:
        load_scenario(str(bad))
    assert (err.value.where, err.value.field) == (str(bad), "slo.ttft_floor_s")
    bad.write_text("slo: {ttft_floor_s: fast}\n")  # the type check comes first, as before
    with pytest.raises(InputError, match="expected a number"):
        load_scenario(str(bad))


def test_fastest_prefill_is_the_simulators_and_cached() -> None:
    s = load_scenario("tiny")
    fastest = FastestPrefill.for_node(s.node.model, s.node.gpu, s.node.gpus, s.node.stack)
    assert fastest.replica.tp == build_node(s).feasible_tp[-1]
    assert fastest(1000) == fastest(1000.0) > fastest(100) > 0
    with pytest.raises(InputError):
        FastestPrefill.for_node("llama-2-70b", "h100-sxm-80gb", 1)  # fits on no TP of one GPU


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    """Requests the tiny node served, a share of them with a TTFT between the floor and their own bound."""
    s = load_scenario("tiny")
    rng = np.random.default_rng(0)
    n = 150
    arrivals = np.sort(rng.uniform(0.0, 60.0, n))
    trace = Trace("slo", arrivals, rng.integers(10, 24000, n), rng.integers(2, 200, n), 60.0)
    node = SimNode(build_node(s).config, trace)
    node.reset(seed=0)
    node.advance(300.0)
    rec = node.requests()
    assert (rec["state"] == 3).all()
    return rec


def test_the_proxy_judges_a_request_as_the_simulator_does(simulated: dict[str, np.ndarray]) -> None:
    rec = simulated
    judge = SloJudge.from_scenario(load_scenario("tiny"))
    accounting = Accounting(judge)
    floor = judge.slo.ttft_floor_s
    between = (rec["ttft_s"] > floor) & (rec["ttft_s"] <= rec["ttft_slo_s"])
    assert between.sum() >= 10 and 0 < rec["slo_met"].mean() < 1  # the multiple matters here
    verdicts = []
    for k in range(len(rec["ttft_s"])):
        prompt, tokens = int(rec["input_tokens"][k]), int(rec["generated_tokens"][k])
        ttft, tbt = float(rec["ttft_s"][k]), float(rec["tbt_mean_s"][k])
        assert judge.ttft_bound_s(prompt) == pytest.approx(rec["ttft_slo_s"][k], rel=1e-12)
        # the proxy's measurements of the same request: arrival, first and last token sent on
        track = Track(0.0, True, prompt, prompt, first_token_at_s=ttft, last_token_at_s=ttft + tbt * (tokens - 1))
        track.token_events = tokens
        verdicts.append(accounting.met(track, prompt, tokens))
        accounting.close(track, "finished", 200)
    assert verdicts == rec["slo_met"].tolist()
    c = accounting.counters
    assert (c.slo_met, c.missed) == (int(rec["slo_met"].sum()), int((~rec["slo_met"]).sum()))


def test_the_load_generator_judges_a_request_as_the_simulator_does(simulated: dict[str, np.ndarray]) -> None:
    rec, scale = simulated, 10.0  # client wall seconds are server seconds / time scale
    slo = RequestSlo.from_scenario("tiny")
    verdicts = []
    for k in range(len(rec["ttft_s"])):
        prompt, tokens = int(rec["input_tokens"][k]), int(rec["generated_tokens"][k])
        ttft, tbt = float(rec["ttft_s"][k]) / scale, float(rec["tbt_mean_s"][k]) / scale
        record = RequestRecord(
            k, 0.0, 0.0, prompt, tokens, tokens, 1.0, ttft, tbt if tokens > 1 else None, 1.0, "ok", 200, ""
        )
        verdicts.append(slo.met(record, time_scale=scale))
    assert verdicts == rec["slo_met"].tolist()


def test_a_non_streamed_response_is_judged_on_its_whole_latency() -> None:
    judge = SloJudge(Slo(0.5, 5.0, 0.1), prefill_alone_s=lambda n: n / 10_000)  # 1000 tokens: a 0.5 s bound
    accounting = Accounting(judge)
    for prompt, e2e_s, met in ((1000, 0.5 + 9 * 0.1, True), (2000, 1.0 + 9 * 0.1 + 0.01, False)):
        track = Track(0.0, False, prompt, prompt, first_token_at_s=e2e_s, last_token_at_s=e2e_s)
        assert accounting.met(track, prompt, 10) is met
