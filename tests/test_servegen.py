"""ServeGen workloads: the shipped derivative, the generator's statistics, bad input and the pack script."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from greenrl.errors import InputError
from greenrl.workload import Trace, servegen_pack
from greenrl.workload import servegen as sg
from greenrl.workload.servegen_data import WINDOW_S, read_servegen_folder, read_servegen_npz

UNIFORM_2000 = "{" + ", ".join(f"{t}: {1 / 2000}" for t in range(1, 2001)) + "}"
OUTPUT_PDF = "{10: 0.25, 20: 0.5, 40: 0.25}"


def _write_client(folder: Path, cid: int, rows: list[str], pdfs: dict[int, tuple[str, str]] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"chunk-{cid}-trace.csv").write_text("\n".join(rows) + "\n")
    if pdfs is not None:
        doc = {str(k): {"input_tokens": i, "output_tokens": o} for k, (i, o) in pdfs.items()}
        (folder / f"chunk-{cid}-dataset.json").write_text(json.dumps(doc))


def _rows(n_windows: int, rate_rps: float, law: str = "Gamma", shape: float = 1.0) -> list[str]:
    cv = 1 / np.sqrt(shape)
    return [f"{int(w * WINDOW_S)},{rate_rps},{cv},{law},{shape},{1 / rate_rps / shape}" for w in range(n_windows)]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two 6-hour windows (72 x 600 s); client 0 has lengths, client 1 has none; client 0's pdfs change at 6 h."""
    folder = tmp_path / "servegen" / "language" / "tiny"
    _write_client(folder, 0, _rows(72, 2.0), {0: (UNIFORM_2000, OUTPUT_PDF), 21600: ("{5000: 1.0}", "{7: 1.0}")})
    _write_client(folder, 1, _rows(72, 1.0, "Weibull", 0.5), None)
    return folder


# --- shipped data, splits, determinism ---


def test_shipped_categories_load_and_match_the_raw_rates() -> None:
    means = {"language/m-large": 195.8, "language/m-small": 1174.4, "reason/deepseek-r1": 16.0}
    for name in sg.servegen_categories():
        data = sg.load_servegen(name)
        assert data.rate_rps().mean() == pytest.approx(means[name], abs=0.05)  # shared/data/README.md 1.3
        assert sg.load_servegen(name) is data
    assert sg.load_servegen("language/m-large").n_windows == 14 * 144


def test_splits() -> None:
    assert sg.split_days("train") == sg.TRAIN_DAYS == tuple(range(10))
    assert sg.split_days("validate") == sg.VALIDATE_DAYS == (10, 11)
    assert sg.split_days("test") == sg.TEST_DAYS == (12, 13)
    with pytest.raises(InputError, match="split"):
        sg.split_days("dev")  # type: ignore[arg-type]


def test_same_seed_same_trace_other_seed_differs() -> None:
    a = sg.servegen_trace("language/m-large", 3600.0, 1800.0, scale=0.05, seed=3)
    b = sg.servegen_trace("language/m-large", 3600.0, 1800.0, scale=0.05, seed=3)
    c = sg.servegen_trace("language/m-large", 3600.0, 1800.0, scale=0.05, seed=4)
    assert isinstance(a, Trace) and len(a) > 1000 and a.duration_s == 1800.0
    for field in ("arrival_s", "input_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.input_tokens[:100], c.input_tokens[:100])


# --- statistics ---


def test_scale_one_reproduces_the_counts_of_every_window() -> None:
    data = sg.load_servegen("reason/deepseek-r1")
    trace = sg.servegen_trace(data, 0.0, 6 * 3600.0, scale=1.0, seed=0)
    counts = np.bincount((trace.arrival_s // WINDOW_S).astype(int), minlength=36)
    np.testing.assert_array_equal(counts, data.requests[:, :36].sum(axis=0))


def test_scaled_counts_match_each_window_within_five_sigma() -> None:
    """Stochastic rounding per client: each client-window count varies by at most 1/4, so sd <= sqrt(C)/2."""
    data = sg.load_servegen("language/m-large")
    day = sg.TEST_DAYS[0]
    trace = sg.servegen_day(data, day, scale=0.03, seed=1)
    w0 = day * 144
    expected = data.requests[:, w0 : w0 + 144].sum(axis=0) * 0.03
    counts = np.bincount((trace.arrival_s // WINDOW_S).astype(int), minlength=144)
    active = (data.requests[:, w0 : w0 + 144] > 0).sum(axis=0)
    assert np.all(np.abs(counts - expected) <= 5 * 0.5 * np.sqrt(active) + 1)
    assert abs(counts.sum() - expected.sum()) <= 5 * 0.5 * np.sqrt(active.sum())


def test_scale_for_rate_rps() -> None:
    scale = sg.scale_for_rate_rps("language/m-large", 10.0)
    rates = sg.load_servegen("language/m-large").rate_rps()[: 10 * 144]
    assert rates.mean() * scale == pytest.approx(10.0)
    with pytest.raises(InputError, match="days"):
        sg.scale_for_rate_rps("reason/deepseek-r1", 10.0, days=sg.TEST_DAYS)


def test_gamma_gaps_have_the_law_coefficient_of_variation(tmp_path: Path) -> None:
    folder = tmp_path / "cv"
    _write_client(folder, 0, _rows(6, 40.0, "Gamma", 0.25), {0: ("{100: 1.0}", "{10: 1.0}")})
    trace = sg.servegen_trace(folder, 0.0, 3600.0, scale=1.0, seed=0)
    assert len(trace) == 6 * 24000
    gaps = np.diff(trace.arrival_s)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.1)  # 1 / sqrt(0.25)


def test_lengths_follow_the_six_hour_distributions(tiny: Path) -> None:
    trace = sg.servegen_trace(tiny, 0.0, 43200.0, scale=1.0, seed=5)
    client0_first = trace.arrival_s < 21600.0
    inputs, outputs = trace.input_tokens[client0_first], trace.output_tokens[client0_first]
    # client 1 borrows client 0's lengths, so the whole first window is uniform on 1..2000
    grid = np.arange(100, 2001, 100)
    empirical = (inputs[:, None] <= grid).mean(axis=0)
    assert np.abs(empirical - grid / 2000).max() < 0.01
    assert np.mean(outputs == 20) == pytest.approx(0.5, abs=0.03)
    assert set(np.unique(outputs)) <= set(range(10, 41))
    assert np.all(trace.input_tokens[~client0_first] == 5000)
    assert np.all(trace.output_tokens[~client0_first] == 7)


def test_over_long_requests_are_flagged() -> None:
    trace = sg.servegen_trace("language/m-large", 0.0, 3600.0, scale=0.5, seed=0)
    flags = sg.over_context(trace, 8192)
    assert flags.dtype == bool and flags.shape == (len(trace),)
    np.testing.assert_array_equal(flags, trace.input_tokens + trace.output_tokens > 8192)
    assert 0 < flags.sum() < len(trace)
    with pytest.raises(InputError, match="max_model_len_tokens"):
        sg.over_context(trace, 0)


# --- bad input ---


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"start_s": 13 * 86400.0, "duration_s": 2 * 86400.0}, "start_s/duration_s"),
        ({"start_s": -1.0}, "start_s/duration_s"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"scale": 0.0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": float("nan")}, "scale"),
    ],
)
def test_bad_generator_arguments(kwargs: dict[str, float], field: str) -> None:
    args = {"start_s": 0.0, "duration_s": 3600.0, "scale": 0.1} | kwargs
    with pytest.raises(InputError) as err:
        sg.servegen_trace("language/m-large", args["start_s"], args["duration_s"], scale=args["scale"], seed=0)
    assert err.value.field == field and "language/m-large" in err.value.where


def test_unknown_category() -> None:
    with pytest.raises(InputError) as err:
        sg.servegen_trace("language/m-huge", 0.0, 60.0, scale=1.0, seed=0)
    assert err.value.field == "category" and "language/m-large" in err.value.fix


def _corrupt(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "field"),
    [
        ("chunk-0-trace.csv", "", "(file)"),
        ("chunk-0-trace.csv", "0,1.0,1.0,Gamma,1.0\n", "(columns)"),
        ("chunk-0-trace.csv", "0,fast,1.0,Gamma,1.0,1.0\n", "rate_rps"),
        ("chunk-0-trace.csv", "0,1.0,1.0,Pareto,1.0,1.0\n", "distribution"),
        ("chunk-0-trace.csv", "0,1.0,1.0,Gamma,0,1.0\n", "param1"),
        ("chunk-0-trace.csv", "600,1.0,1.0,Gamma,1.0,1.0\n", "window_start_s"),
        ("chunk-0-dataset.json", "{not json", "(file)"),
        (
            "chunk-0-dataset.json",
            '{"0": {"input_tokens": "{1: 0.5, 2: 0.7}", "output_tokens": "{}"}}',
            "0.input_tokens",
        ),
        ("chunk-0-dataset.json", '{"0": {"input_tokens": "{1: 1.0", "output_tokens": "{}"}}', "0.input_tokens"),
        ("chunk-0-dataset.json", '{"0": {"input_tokens": "{1: x}", "output_tokens": "{}"}}', "0.input_tokens"),
        ("chunk-0-dataset.json", '{"0": {"output_tokens": "{}"}}', "0"),
        ("chunk-0-dataset.json", '{"99": {"input_tokens": "{}", "output_tokens": "{}"}}', "99"),
    ],
)
def test_malformed_files_name_the_file_and_field(tiny: Path, name: str, text: str, field: str) -> None:
    path = _corrupt(tiny, name, text)
    with pytest.raises(InputError) as err:
        sg.servegen_trace(tiny, 0.0, 600.0, scale=1.0, seed=0)
    assert err.value.where == str(path) and err.value.field == field


def test_missing_files(tiny: Path) -> None:
    (tiny / "chunk-0-trace.csv").unlink()
    with pytest.raises(InputError, match="missing") as err:
        sg.load_servegen(tiny)
    assert err.value.where == str(tiny / "chunk-0-trace.csv")
    for path in tiny.iterdir():
        path.unlink()
    with pytest.raises(InputError, match="no trace files"):
        sg.load_servegen(tiny)


def test_clients_with_different_spans(tiny: Path) -> None:
    _write_client(tiny, 2, _rows(10, 1.0), None)
    with pytest.raises(InputError) as err:
        sg.load_servegen(tiny)
    assert err.value.where.endswith("chunk-2-trace.csv") and err.value.field == "window_start_s"


def test_no_length_data_anywhere(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    _write_client(folder, 0, _rows(2, 1.0), None)
    with pytest.raises(InputError, match="length data") as err:
        sg.servegen_trace(folder, 0.0, 1200.0, scale=1.0, seed=0)
    assert err.value.field == "dataset.json"


# --- the pack script ---


def test_pack_round_trips(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert servegen_pack.main(["language/tiny", "--src", str(tiny.parents[1]), "--out", str(out)]) == 0
    packed = read_servegen_npz(out / "language" / "tiny.npz", "tiny")
    raw = read_servegen_folder(tiny)
    for field in ("client_ids", "requests", "law", "has_lengths", "input_knots", "output_knots", "knot_p"):
        np.testing.assert_array_equal(getattr(packed, field), getattr(raw, field))
    np.testing.assert_allclose(packed.shape, raw.shape, rtol=1e-6)
    a = sg.servegen_trace(packed, 0.0, 3600.0, scale=1.0, seed=1)
    b = sg.servegen_trace(out / "language" / "tiny.npz", 0.0, 3600.0, scale=1.0, seed=1)
    np.testing.assert_array_equal(a.input_tokens, b.input_tokens)


def test_pack_writes_nothing_on_bad_input(tiny: Path, tmp_path: Path) -> None:
    src = tiny.parents[1]
    _write_client(src / "language" / "broken", 0, ["0,oops,1,Gamma,1,1"], None)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        servegen_pack.main(["language/tiny", "language/broken", "--src", str(src), "--out", str(out)])
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_pack_leaves_the_old_file_when_interrupted(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    target = out / "language" / "tiny.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")

    def fail(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        servegen_pack.pack(tiny.parents[1], out, ["language/tiny"])
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["tiny.npz"]
