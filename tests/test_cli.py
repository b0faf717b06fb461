"""The fit and predict commands as a user runs them: JSON output, exit code 2 and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from greenrl import fit as fit_cli
from greenrl import predict as predict_cli

BASE = [
    "--model",
    "llama-2-70b",
    "--gpu",
    "h100",
    "--tp",
    "4",
    "--batch",
    "64",
    "--input-tokens",
    "1024",
    "--output-tokens",
    "256",
]
KEYS = {"prefill_s", "decode_step_s", "power_w", "energy_per_output_token_j", "output_tokens_per_s"}


def test_predict_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_cli.main([*BASE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= KEYS
    assert out["sm_clock_mhz"] == 1980
    assert out["output_tokens_per_s"] == pytest.approx(64 / out["mixed_step_s"])
    assert out["energy_per_output_token_j"] == pytest.approx(out["power_w"] / out["output_tokens_per_s"])
    assert out["prefill_s"] > out["decode_step_s"] > 0


def test_lower_clock_predicts_less_power(capsys: pytest.CaptureFixture[str]) -> None:
    predict_cli.main([*BASE, "--json"])
    top = json.loads(capsys.readouterr().out)
    predict_cli.main([*BASE, "--json", "--sm-clock-mhz", "1200"])
    low = json.loads(capsys.readouterr().out)
    assert low["power_w"] < top["power_w"] and low["prefill_s"] > top["prefill_s"]


def test_module_runs_as_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "greenrl.predict", *BASE, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert set(json.loads(done.stdout)) >= KEYS


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--gpu", "b300"], "unknown GPU 'b300'"),
        (["--tp", "3"], "does not divide"),
        (["--tp", "1"], "needs 138.0 GB of weights per GPU"),
        (["--sm-clock-mhz", "1600"], "use 1590 or 1605"),
        (["--sm-clock-mhz", "100"], "use 345"),
        (["--batch", "0"], "batch: must be positive"),
        (["--stack", "nope"], "no fitted parameters for stack"),
        (["--model", "/nonexistent/config.json"], "no such file"),
    ],
)
def test_predict_bad_input_exits_2_with_one_line(
    change: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flag, value = change
    args = list(BASE)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(SystemExit) as ended:
        predict_cli.main(args)
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "fix:" in err and len(err.splitlines()) == 1


def _good_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": "llama-3.1-8b",
                "gpu": "h100",
                "tp": 1,
                "batch": 8,
                "output_tokens": 200,
                "input_tokens": 300,
                "metric": "median_itl_s",
                "value": 0.008,
            }
        ]
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda f: f.drop(columns=["metric"]), "missing column(s) metric"),
        (lambda f: f.assign(value=-1.0), "line 2: value: must be a positive number"),
        (lambda f: f.assign(batch="many"), "line 2: batch: must be a positive number"),
        (lambda f: f.assign(metric="joules"), "unknown metric 'joules'"),
        (lambda f: f.assign(model="nope"), "unknown model 'nope'"),
        (lambda f: f.assign(input_tokens=None), "blank, and no workload given"),
        (lambda f: f.iloc[0:0], "no data rows"),
    ],
)
def test_fit_bad_csv_exits_2_and_writes_nothing(
    tmp_path: Path, mutate, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "m.csv"
    mutate(_good_rows()).to_csv(csv, index=False)
    out = tmp_path / "params.json"
    out.write_text("previous")
    with pytest.raises(SystemExit) as ended:
        fit_cli.main(["--data", str(csv), "--user-only", "--no-cv", "--out", str(out)])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and str(csv) in err
    assert out.read_text() == "previous"  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "params.json"]  # no temp files left


def _predict_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict:
    assert predict_cli.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


IN_DOMAIN = [
    *("--model", "llama-3.1-70b", "--gpu", "h100", "--tp", "4", "--batch", "64"),
    *("--input-tokens", "300", "--output-tokens", "350"),
]


def test_predict_gives_intervals_around_the_prediction_inside_the_domain(capsys: pytest.CaptureFixture[str]) -> None:
    out = _predict_json(capsys, IN_DOMAIN)
    assert out["in_validated_domain"] is True and out["domain_warnings"] == []
    assert out["interval_coverage"] == pytest.approx(0.9)
    for key in ("decode_step_s", "power_w", "energy_per_output_token_j", "output_tokens_per_s", "prefill_s"):
        band = out["intervals"][key]
        assert band["lo"] < out[key] * 1.0001 and out[key] * 0.9999 < band["hi"], key
        assert band["hi"] / band["lo"] < 3.0, key  # an interval, not 'anything goes'
    assert "leave-one-model-out" in out["intervals"]["decode_step_s"]["from"]
    assert "vllm-0.11" in out["intervals"]["decode_step_s"]["from"]
    assert "splitwise" in out["intervals"]["prefill_s"]["from"]  # ML.ENERGY has no prefill: borrowed, and said so


def test_predict_warns_outside_the_validated_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = Path(str(resources.files("greenrl").joinpath("data/models/llama-3.1-405b.json")))
    # Llama-3.1-405B with 160 layers instead of 126, in FP8 (~515 GB): larger than any fitted model
    config = json.loads(card.read_text())["config"] | {"num_hidden_layers": 160, "torch_dtype": "fp8"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    big = [*("--model", str(path), "--gpu", "h100", "--tp", "8", "--batch", "64"), *IN_DOMAIN[-4:]]
    out = _predict_json(capsys, big)
    assert out["in_validated_domain"] is False
    assert any("larger than any validated model" in w for w in out["domain_warnings"])
    assert "leave-largest-model-out" in out["intervals"]["decode_step_s"]["from"]
    inside = _predict_json(capsys, IN_DOMAIN)
    for key in ("decode_step_s", "power_w"):  # extrapolation never narrows the relative interval
        wide, narrow = out["intervals"][key], inside["intervals"][key]
        assert wide["hi"] / wide["lo"] >= narrow["hi"] / narrow["lo"] * (1 - 1e-9)
    many = _predict_json(capsys, [*IN_DOMAIN[:6], "--batch", "3000", *IN_DOMAIN[-4:]])
    assert any(w.startswith("batch 3000 is outside") for w in many["domain_warnings"])
    assert predict_cli.main([*IN_DOMAIN[:6], "--batch", "3000", *IN_DOMAIN[-4:]]) == 0
    assert "warning: batch 3000 is outside" in capsys.readouterr().err
