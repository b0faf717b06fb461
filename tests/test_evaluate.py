"""The evaluation command on the tiny scenario: outputs and JSON schema, determinism, CIs, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from greenrl import evaluate as ev
from greenrl.env import ServingEnv
from greenrl.errors import InputError
from greenrl.evaluate_cases import build_cases, resample_trace
from greenrl.evaluate_kpis import KPI_NAMES, mean_ci95
from greenrl.evaluate_policies import resolve_policies
from greenrl.evaluate_report import SCHEMA
from greenrl.workload import load_trace

REQUIRED = ("policy", "scenario", "rate_scale", "n_samples", *KPI_NAMES, "time_at_knob_frac", "samples")
PAPER_KPIS = {"energy_kwh", "saving_vs_static_max", "slo_attainment", "slo_delta_vs_static_max", "ttft_p99_s"}


def test_cli_writes_json_csv_markdown_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    argv = ["--policies", "static-max", "threshold", "random", "--scenarios", "tiny", "--seeds", "2"]
    assert ev.main([*argv, "--out", str(out), "--json", str(tmp_path / "r.json"), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc == json.loads((out / "results.json").read_text())
    assert doc["schema"] == SCHEMA
    assert doc["meta"]["seeds"] == 2 and doc["meta"]["arrivals"] == "resample"
    records = doc["records"]
    assert set(KPI_NAMES) >= PAPER_KPIS
    assert [r["policy"] for r in records] == ["static-max", "threshold", "random"]
    for r in records:
        for key in REQUIRED:
            assert key in r, key
        for key in KPI_NAMES:
            assert f"{key}_ci95" in r
            assert r[key] is not None and math.isfinite(r[key])
            assert r[f"{key}_ci95"] is not None and r[f"{key}_ci95"] >= 0
        assert r["n_samples"] == 4 == len(r["samples"])  # 2 windows x 2 seeds
        assert 0.0 <= r["slo_attainment"] <= 1.0
        for fracs in r["time_at_knob_frac"].values():
            assert sum(fracs.values()) == pytest.approx(1.0)
    static_max, threshold = records[0], records[1]
    assert static_max["saving_vs_static_max"] == 0.0
    assert threshold["energy_j"] < static_max["energy_j"] and threshold["saving_vs_static_max"] > 0
    # paired attainment difference: 0 for static-max itself; its mean is the difference of the means
    assert static_max["slo_delta_vs_static_max"] == 0.0 and static_max["slo_delta_vs_static_max_ci95"] == 0.0
    for r in records[1:]:
        want = r["slo_attainment"] - static_max["slo_attainment"]
        assert r["slo_delta_vs_static_max"] == pytest.approx(want, abs=1e-12)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "energy_j_ci95" in csv_lines[0]
    md = (out / "results.md").read_text()
    assert "| threshold |" in md and "rate x1" in md
    assert (out / "pareto_tiny_x1.png").stat().st_size > 0
    assert (out / "timeline_static-max_tiny_x1.png").stat().st_size > 0
    assert "static-max" in capsys.readouterr().out


def test_same_seeds_give_identical_results() -> None:
    kwargs = {"scenarios": ["tiny"], "seeds": 2, "progress": False}
    a = ev.evaluate(["random", "pid"], **kwargs)  # type: ignore[arg-type]
    b = ev.evaluate(["random", "pid"], **kwargs)  # type: ignore[arg-type]
    assert json.dumps(a.records) == json.dumps(b.records)


def test_confidence_intervals_shrink_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    draws = rng.normal(10.0, 2.0, 64)
    halves = [mean_ci95(draws[:n])[1] for n in (2, 4, 16, 64)]
    assert halves == sorted(halves, reverse=True)
    assert mean_ci95([1.0])[1] is None
    few = ev.evaluate(["random"], ["tiny"], seeds=1, arrivals="exact", progress=False).records[0]
    many = ev.evaluate(["random"], ["tiny"], seeds=5, arrivals="exact", progress=False).records[0]
    assert (few["n_samples"], many["n_samples"]) == (2, 10)
    assert many["energy_j_ci95"] < few["energy_j_ci95"]


def test_exact_arrivals_replay_the_window_and_deterministic_policies_repeat() -> None:
    result = ev.evaluate(["static-max"], ["tiny"], seeds=3, arrivals="exact", progress=False)
    samples = result.records[0]["samples"]
    by_window: dict[int, set[float]] = {}
    for s in samples:
        by_window.setdefault(s["window"], set()).add(s["energy_j"])
    assert all(len(v) == 1 for v in by_window.values())


def test_rate_scale_compresses_the_window_and_adapts_the_episode() -> None:
    base = build_cases("default", 1.0, 1, "exact")[0]
    fast = build_cases("default", 2.0, 1, "exact")[0]
    assert base.scenario.steps == 30
    assert len(fast.trace) == len(base.trace)
    assert fast.trace.duration_s == pytest.approx(base.trace.duration_s / 2)
    # 400 s of arrivals plus the scenario's 100 s drain, in 30 s intervals
    assert fast.scenario.steps == math.ceil((base.trace.duration_s / 2 + 100.0) / 30.0)


def test_resample_keeps_horizon_and_roughly_the_count() -> None:
    trace = load_trace("azure-conv").window(2700.0, 800.0)
    boot = resample_trace(trace, np.random.default_rng(0))
    assert boot.duration_s == trace.duration_s
    assert np.all(np.diff(boot.arrival_s) >= 0)
    assert abs(len(boot) - len(trace)) < 5 * math.sqrt(len(trace))


def test_controller_folders_and_sb3_zips_are_accepted(tmp_path: Path) -> None:
    from sb3_contrib import MaskablePPO

    from greenrl.policy import export_controller
    from greenrl.trust import record_pickle

    env = ServingEnv("tiny", "eval", 0)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, policy_kwargs={"net_arch": [8]}, seed=0)
    model.save(tmp_path / "model.zip")
    record_pickle(tmp_path, tmp_path / "model.zip")  # as train does: the zip is vouched for
    export_controller(model, env, tmp_path / "run" / "controller")
    result = ev.evaluate(
        [str(tmp_path / "run"), str(tmp_path / "model.zip")], ["tiny"], seeds=1, arrivals="exact", progress=False
    )
    labels = [r["policy"] for r in result.records]
    assert labels == ["ppo:run", "sb3:model"]
    # the exported controller acts like the model it came from
    assert result.records[0]["energy_j"] == pytest.approx(result.records[1]["energy_j"])


def _tiny_without_windows(tmp_path: Path) -> str:
    from greenrl.env.scenario import scenarios_dir

    text = (scenarios_dir() / "tiny.yaml").read_text()
    lines = [ln for ln in text.splitlines() if "eval_windows_s" not in ln]
    lines.insert(lines.index("workload:") + 1, "  eval_windows_s: []")
    path = tmp_path / "nowindows.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def default_controller(tmp_path_factory: pytest.TempPathFactory) -> str:
    from sb3_contrib import MaskablePPO

    from greenrl.policy import export_controller

    env = ServingEnv("default", "eval", 0)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, policy_kwargs={"net_arch": [8]}, seed=0)
    folder = tmp_path_factory.mktemp("ctrl") / "default_ppo"
    export_controller(model, env, folder)
    return str(folder)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policies", "greedy"], "unknown policy"),
        (["--policies", "static-max", "--scenarios", "nope"], "unknown scenario"),
        (["--policies", "static-max", "--seeds", "0"], "must be at least 1"),
        (["--policies", "static-max", "--rate-scales", "-1"], "positive"),
        (["--policies", "static-max", "--timeline", "oracle"], "not evaluated"),
        (["--policies", "CONTROLLER", "--scenarios", "tiny"], "differ from scenario tiny"),
        (["--policies", "static-max", "--scenarios", "NOWINDOWS"], "no evaluation windows"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(
    argv: list[str],
    message: str,
    tmp_path: Path,
    default_controller: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        default_controller if a == "CONTROLLER" else _tiny_without_windows(tmp_path) if a == "NOWINDOWS" else a
        for a in argv
    ]
    with pytest.raises(SystemExit) as exit_info:
        ev.main([*argv, "--out", str(tmp_path / "out"), "--no-progress", "--no-plots"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_unknown_policy_message_lists_baselines() -> None:
    with pytest.raises(InputError) as err:
        resolve_policies(["static-min"])
    assert "static-max" in str(err.value) and "oracle" in str(err.value)
