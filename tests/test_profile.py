"""``greenrl profile``: profile the twin, refit the surrogate on the CSV, recover the twin's own surrogate.

The twin (tiny scenario: Llama-3.1-8B, TP2 on 2 x H100) simulates with the shipped surrogate parameters
(``Surrogate()``, physics 1, stack ``vllm-0.11``). ``greenrl fit --data <csv> --user-only --physics 1`` fits a
``user`` stack to the profile alone; its steady-state predictions must match the twin's own over the profiled
domain, and a CSV whose batch column is wrong must not.
"""

from __future__ import annotations

import csv
import itertools
import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from greenrl.cli import main as greenrl
from greenrl.core import VLLM_ITL_BUCKETS_S, VLLM_TTFT_BUCKETS_S, BackendReading, Knobs
from greenrl.live.backends import GpuBackend, TwinBackend
from greenrl.live.gpu import FakeGpu, GpuSet
from greenrl.live.metrics import VllmMetrics, scrape
from greenrl.live.profile import CSV_METRICS, GridPoint, measure_point
from greenrl.live.profile.grid import measurement_rows
from greenrl.live.profile.measure import _result
from greenrl.live.proxy import AdmissionProxy
from greenrl.live.snapshot import Instant
from greenrl.surrogate import Surrogate
from greenrl.surrogate.data import SCHEMA_COLUMNS, load_user_csv
from greenrl.surrogate.steady import steady_state

TIME_SCALE = 1.0  # the closed loop must refill as fast as the simulated node serves (see docs/live_node.md)
MODEL, GPU, TP = "llama-3.1-8b", "h100-sxm-80gb", 2
GRID = ["--batch", "2,16", "--input-tokens", "256,1024", "--output-tokens", "128", "--warmup-s", "0.3"]
WINDOW = ["--window-s", "2"]
# Largest |refit / twin - 1| over the profiled domain (batch 2-16, prompts 256-1024, 128 output tokens). Six runs on
# the busy 2-core dev box gave 3.8-5.8% (step times, tokens/s), 5.0-7.2% (power), 0.7-3.1% (energy per token): the
# twin prefills whole prompts in some iterations and none in others, the fit's steady state spreads them evenly.
TOLERANCE = {
    "decode_step_s": 0.10,
    "mixed_step_s": 0.10,
    "output_tokens_per_s": 0.10,
    "power_w": 0.10,
    "energy_per_output_token_j": 0.06,
}
DOMAIN = list(itertools.product([2, 4, 8, 16], [256, 512, 1024], [128]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/greenrl/state", timeout=5) as resp:
        out: dict[str, object] = json.loads(resp.read())
    return out


def _refit(csv_path: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"{csv_path.stem}.json"
    args = ["fit", "--data", str(csv_path), "--user-only", "--physics", "1", "--out", str(out)]
    assert greenrl([*args, "--report", str(tmp_path / "absent.md")]) == 0
    return out


def _worst(params: Path) -> dict[str, float]:
    """Largest |refit / twin - 1| per steady-state metric over ``DOMAIN``."""
    twin = Surrogate().replica(MODEL, GPU, TP)
    refit = Surrogate(path=params).replica(MODEL, GPU, TP, "user")
    worst = dict.fromkeys(TOLERANCE, 0.0)
    for batch, prompt, output in DOMAIN:
        a, b = steady_state(twin, batch, prompt, output), steady_state(refit, batch, prompt, output)
        for m in worst:
            worst[m] = max(worst[m], abs(float(getattr(b, m)) / float(getattr(a, m)) - 1.0))
    return worst


def test_profile_then_fit_recovers_the_twins_surrogate(
    twin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "profile.csv"
    assert greenrl(["profile", "--url", twin, "--gpu", GPU, "--out", str(out), *GRID, *WINDOW]) == 0

    # the CSV is the measurement schema, one row per point and metric, that the fit's reader accepts
    with out.open() as f:
        assert next(csv.reader(f)) == list(SCHEMA_COLUMNS)
    rows = load_user_csv(out)
    assert len(rows) == 4 * len(CSV_METRICS) and set(rows["metric"]) == set(CSV_METRICS)
    assert (rows["model"] == MODEL).all() and (rows["gpu"] == GPU).all() and (rows["tp"] == TP).all()
    caps = rows["source"].str.extract(r"cap=(\d+)")[0].astype(int)
    assert ((rows["batch"] <= caps) & (rows["batch"] > 0.9 * caps)).all()  # the cap holds, and is filled

    # each measured point is the twin's steady state at the measured batch (mixed prefills make it up to ~7% off)
    twin_model = Surrogate().replica(MODEL, GPU, TP)
    for r in rows.itertuples():
        expected = float(getattr(steady_state(twin_model, r.batch, r.input_tokens, r.output_tokens), str(r.metric)))
        assert r.value == pytest.approx(expected, rel=0.12), r

    worst = _worst(_refit(out, tmp_path))
    with capsys.disabled():
        print("\nround trip, worst |refit/twin - 1|:", {m: round(e, 3) for m, e in worst.items()})
    for m, err in worst.items():
        assert err <= TOLERANCE[m], (m, err)

    # the check can fail: the same measurements with the batch mislabelled (per node of 2 replicas) are far off
    wrong = pd.read_csv(out).assign(batch=lambda f: f["batch"] * 2)
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    worst_wrong = _worst(_refit(tmp_path / "wrong.csv", tmp_path))
    assert any(err > 3 * TOLERANCE[m] for m, err in worst_wrong.items()), worst_wrong

    state = _state(twin)  # the twin's knobs are put back
    assert state["knobs"]["max_num_seqs"] == 256  # type: ignore[index]


def test_clocks_below_the_top_one_go_to_their_own_file(twin: str, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    grid = ["--batch", "4", "--input-tokens", "256", "--output-tokens", "64", "--warmup-s", "0.1", "--window-s", "0.5"]
    assert (
        greenrl(["profile", "--url", twin, "--gpu", GPU, "--out", str(out), "--sm-clock-mhz", "1980,1005", *grid]) == 0
    )
    top = pd.read_csv(out)
    low = pd.read_csv(tmp_path / "p.clocks.csv")
    assert list(top.columns) == list(SCHEMA_COLUMNS) and len(top) == len(CSV_METRICS)
    assert list(low.columns) == [*SCHEMA_COLUMNS, "sm_clock_mhz"] and (low["sm_clock_mhz"] == 1005).all()
    step = {f["metric"]: f for f in top.to_dict("records")}
    slow = {f["metric"]: f for f in low.to_dict("records")}
    assert slow["mixed_step_s"]["value"] > step["mixed_step_s"]["value"]  # a slower clock, a slower step
    assert slow["power_w"]["value"] < step["power_w"]["value"]  # and less power
    assert _state(twin)["knobs"]["sm_clock_mhz"] == 1980  # type: ignore[index]


def test_a_real_node_through_the_admission_proxy_and_nvml_stand_ins(twin: str) -> None:
    """``GpuBackend`` as on a GPU node: the proxy's cap holds the batch (the twin's own cap stays 256), the
    energy counters are two ``FakeGpu``s fed by the twin's (NVML's stand-in), and the clock is locked on them."""
    twin_backend = TwinBackend(twin)
    gpus = [FakeGpu(i, energy_source=lambda i=i: twin_backend.state()["energy_per_gpu_j"][i]) for i in range(2)]
    proxy = AdmissionProxy(twin)
    base = Knobs(tp=TP, replicas=1, max_num_seqs=256, sm_clock_mhz=1980)
    backend = GpuBackend(GpuSet(gpus), base, proxy=proxy, owns_proxy=True)
    try:
        url = proxy.start()
        point = GridPoint(4, 1980, 256, 64)
        r = measure_point(backend, lambda: scrape(f"{twin}/metrics"), url, point, base, warmup_s=0.2, window_s=1.0)
        assert proxy.cap == 4 and _state(twin)["knobs"]["max_num_seqs"] == 256  # type: ignore[index]
        assert ("lock", 1980) in gpus[0].calls
    finally:
        backend.close()
        twin_backend.close()
    expected = steady_state(Surrogate().replica(MODEL, GPU, TP), r.mean_running, 256, 64)
    # the cap holds (<= 4); above 3 the node was loaded (a busy CI core can leave the closed-loop client
    # short of a refill: 3.55 seen with two pytest workers side by side)
    assert 3.0 < r.mean_running <= 4.0
    assert r.mixed_step_s == pytest.approx(float(expected.mixed_step_s), rel=0.05)
    assert r.power_w == pytest.approx(float(expected.power_w), rel=0.1)  # wall time against simulated energy
    assert gpus[0].calls[-1] == ("reset", None)  # clocks reset on close


def test_a_point_that_cannot_be_measured_exits_1_writing_nothing(
    twin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--gpus fake`` opens a ``FakeGpu`` with no energy source: the real-node path runs, the energy stands still."""
    out = tmp_path / "x.csv"
    grid = ["--batch", "2", "--input-tokens", "64", "--output-tokens", "32", "--warmup-s", "0", "--window-s", "0.3"]
    assert greenrl(["profile", "--url", twin, "--gpu", GPU, "--gpus", "fake", "--out", str(out), *grid]) == 1
    assert "error: the GPU energy counters did not advance" in capsys.readouterr().err
    assert not out.exists()


def test_gpus_nvml_cannot_open_is_an_input_error(twin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:  # no driver here; no GPU 99 on a GPU machine either
        greenrl(["profile", "--url", twin, "--gpu", GPU, "--gpus", "99", "--out", str(tmp_path / "x.csv")])
    assert err.value.code == 2 and capsys.readouterr().err.startswith("error: --gpus: gpus: GPU 99:")


def _metrics(tokens: float, itl_sum_s: float, itl_count: float, running: float) -> VllmMetrics:
    itl = np.zeros(len(VLLM_ITL_BUCKETS_S) + 1)
    itl[0] = itl_count
    ttft = np.zeros(len(VLLM_TTFT_BUCKETS_S) + 1)
    return VllmMetrics(0.0, running, 0.0, 0.0, 0.0, tokens, 0.0, 0.0, ttft, 0.0, itl, itl_sum_s)


def test_a_point_is_reported_per_replica() -> None:
    knobs = Knobs(tp=1, replicas=2, max_num_seqs=8, sm_clock_mhz=1980)
    start = Instant(BackendReading(100.0, (1000.0, 2000.0), knobs, False), _metrics(0, 0.0, 0, 16), 0.0)
    end = Instant(BackendReading(110.0, (5000.0, 6000.0), knobs, False), _metrics(2000, 16.0, 2000, 16), 1.0)
    samples = [(100.0, 16.0), (105.0, 14.0), (110.0, 16.0)]
    r = _result(GridPoint(8, None, 256, 64), start, end, samples, replicas=2)
    assert r.mean_running == pytest.approx(7.5)  # (16 x 5 + 14 x 5) / 10 / 2 replicas
    assert r.decoding == pytest.approx(0.8)  # 16 s of gaps / 10 s / 2 replicas
    assert r.power_w == pytest.approx(400.0)  # 8000 J / 10 s / 2 replicas
    assert r.output_tokens_per_s == pytest.approx(100.0)  # 2000 tokens / 10 s / 2 replicas
    assert r.energy_per_output_token_j == pytest.approx(4.0)  # 8000 J / 2000 tokens
    assert r.mixed_step_s == pytest.approx(0.008)
    rows = measurement_rows([r], model=MODEL, gpu=GPU, tp=1, source="test")
    assert [row["metric"] for row in rows] == list(CSV_METRICS) and {row["batch"] for row in rows} == {7.5}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--url", "http://127.0.0.1:{port}"], "--url"),
        (["--url", "localhost:8000"], "--url"),
        (["--url", "http://127.0.0.1:{port}", "--batch", ""], "--batch"),
        (["--url", "http://127.0.0.1:{port}", "--batch", "0,4"], "--batch"),
        (["--url", "http://127.0.0.1:{port}", "--output-tokens", "x"], "--output-tokens"),
        (["--url", "http://127.0.0.1:{port}", "--sm-clock-mhz", "1234"], "--sm-clock-mhz"),
        (["--url", "http://127.0.0.1:{port}", "--window-s", "0"], "--window-s"),
        (["--url", "http://127.0.0.1:{port}", "--gpu", "h900"], "--gpu"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag_and_exit_2(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()  # nothing listens there
    argv = ["profile", "--gpu", GPU, "--out", str(tmp_path / "x.csv")] + [f.format(port=port) for f in flags]
    with pytest.raises(SystemExit) as err:
        greenrl(argv)
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {named}") and "fix:" in message and "\n" not in message, message
    assert not (tmp_path / "x.csv").exists()
