"""The characterization sweep as a user runs it: a tiny grid end to end, the comparison logic, bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from greenrl import characterize

TINY = ["--tp", "4", "8", "--batches", "4", "8", "--clocks", "1605", "1980", "--inputs", "short", "--outputs", "short"]
METRICS = [
    "throughput_tokens_per_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tbt_p50_s",
    "tbt_p99_s",
    "power_w",
    "energy_per_output_token_j",
    "goodput_tokens_per_s",
    "window_s",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict, Path]:
    out = tmp_path_factory.mktemp("characterize")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is per test; this fixture runs once per module
        assert characterize.main([*TINY, "--out", str(out), "--json"]) == 0
    return pd.read_csv(out / "characterization.csv"), json.loads(buf.getvalue()), out


def test_csv_has_one_finite_row_per_grid_point(tiny_run: tuple[pd.DataFrame, dict, Path]) -> None:
    df, _, _ = tiny_run
    assert len(df) == 2 * 2 * 2
    assert set(df[["tp", "max_num_seqs", "sm_clock_mhz"]].itertuples(index=False)) == {
        (tp, b, c) for tp in (4, 8) for b in (4, 8) for c in (1605, 1980)
    }
    assert set(METRICS) | {"slo_attainment_frac", "within_slo", "input_tokens", "output_tokens"} <= set(df.columns)
    values = df[METRICS].to_numpy(dtype=float)
    assert np.isfinite(values).all() and (values > 0).all()
    assert ((df["slo_attainment_frac"] >= 0) & (df["slo_attainment_frac"] <= 1)).all()
    assert (df["input_tokens"] == 256).all() and (df["output_tokens"] == 64).all()
    assert df["saturated"].all() and (df["load"] == "saturating").all()


def test_throughput_rises_with_batch_and_lower_clock_draws_less(tiny_run: tuple[pd.DataFrame, dict, Path]) -> None:
    df, _, _ = tiny_run
    tput = df.pivot_table(index=["tp", "sm_clock_mhz"], columns="max_num_seqs", values="throughput_tokens_per_s")
    assert (tput[8] > tput[4]).all()
    power = df.pivot_table(index=["tp", "max_num_seqs"], columns="sm_clock_mhz", values="power_w")
    assert (power[1605] <= power[1980]).all()
    top = df[df["sm_clock_mhz"] == 1980].set_index("max_num_seqs")
    assert (top[top["tp"] == 8]["throughput_tokens_per_s"] > top[top["tp"] == 4]["throughput_tokens_per_s"]).all()


def test_json_comparison_and_plots(tiny_run: tuple[pd.DataFrame, dict, Path]) -> None:
    _, out, folder = tiny_run
    rows = {c["key"]: c for c in out["comparison"]}
    assert list(rows) == [f.key for f in characterize.STUDY_FINDINGS]
    assert rows["tp_2_to_4_throughput_gain"]["verdict"] == "not measured"  # no TP2 in this grid
    for key in ("tp_4_to_8_throughput_gain", "clock_1605_vs_1980_energy_ratio"):
        assert rows[key]["verdict"] in {"agrees", "disagrees"}
        assert rows[key]["pairs"] == (2 if key.startswith("tp") else 4)
    assert rows["clock_1605_vs_1980_energy_ratio"]["sim"] < 1.0
    assert out["points"] == 8
    pngs = sorted(folder.glob("characterize_*.png"))
    assert [p.name for p in pngs] == [
        "characterize_clock.png",
        "characterize_latency.png",
        "characterize_throughput.png",
    ]
    assert all(0 < p.stat().st_size < 200_000 for p in pngs)
    assert not list(folder.glob(".*.tmp"))


def _row(tp: int, batch: int, clock: int, tput: float, energy: float, goodput: float) -> dict:
    return {
        "tp": tp,
        "max_num_seqs": batch,
        "sm_clock_mhz": clock,
        "input_class": "medium",
        "output_class": "medium",
        "load": "saturating",
        "kv_batch_limit": 100,
        "throughput_tokens_per_s": tput,
        "energy_per_output_token_j": energy,
        "goodput_tokens_per_s": goodput,
    }


def test_compare_applies_the_stated_agreement_ranges() -> None:
    rows = [
        _row(2, 4, 1980, 100.0, 10.0, 10.0),
        _row(4, 4, 1980, 175.0, 10.0, 10.0),
        _row(2, 4, 1605, 99.0, 7.5, 10.0),
        _row(4, 4, 1605, 174.0, 7.0, 10.0),
        _row(2, 8, 1980, 100.0, 10.0, 70.0),
        _row(4, 8, 1980, 400.0, 10.0, 0.0),
    ]
    out = {c["key"]: c for c in characterize.compare(pd.DataFrame(rows))}
    tp = out["tp_2_to_4_throughput_gain"]
    assert tp["pairs"] == 2 and tp["sim"] == pytest.approx((0.75 + 3.0) / 2) and tp["verdict"] == "disagrees"
    assert tp["sim_same_batch"] == pytest.approx((0.75 + 3.0) / 2)
    batch = out["batch_4_to_8_goodput_ratio"]
    assert batch["pairs"] == 2 and batch["sim_min"] == 0.0 and batch["sim_max"] == 7.0
    assert out["clock_1605_vs_1980_energy_ratio"]["verdict"] == "agrees"
    assert out["clock_1605_vs_1980_throughput_ratio"]["verdict"] == "agrees"
    assert out["tp_4_to_8_throughput_gain"]["verdict"] == "not measured"


def test_poisson_load_runs_and_reports_queueing(tmp_path: Path) -> None:
    args = ["--tp", "8", "--batches", "8", "--clocks", "1980", "--inputs", "short", "--outputs", "short"]
    args += ["--load", "0.5", "--warmup-s", "10", "--measure-s", "60", "--no-plots", "--out", str(tmp_path), "--json"]
    assert characterize.main(args) == 0
    df = pd.read_csv(tmp_path / "characterization.csv")
    assert len(df) == 1 and df["load"].iloc[0] == "0.5rps"
    # 0.5 requests/s x 64 tokens is far below what TP8 serves: throughput follows the offered load.
    assert 10 < df["throughput_tokens_per_s"].iloc[0] < 60
    assert not df["saturated"].iloc[0]
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--tp", "3"], "--tp"),
        (["--clocks", "1600"], "--clocks"),
        (["--load", "-1"], "--load"),
        (["--load", "fast"], "--load"),
        (["--model", "no-such-model"], "--model"),
        (["--batches", "0"], "--batches"),
        (["--inputs", "huge"], "--inputs"),
        (["--gpu", "tpu"], "--gpu"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        characterize.main([*args, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and flag in err and "\n" not in err
    assert not (tmp_path / "out").exists()
