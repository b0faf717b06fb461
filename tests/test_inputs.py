"""Inputs that crashed, hung or lied (issue 18): each now fails at once, in one line naming file, field and fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenrl.env import ServingEnv, load_scenario, scenario_names
from greenrl.errors import InputError
from greenrl.workload import load_trace

TINY = yaml.safe_load(Path(load_scenario("tiny").path).read_text())


def _scenario(tmp_path: Path, change: dict[str, Any], base: dict[str, Any] = TINY) -> Path:
    """Write ``base`` with dotted keys set (value ``...``: the key removed)."""
    raw = copy.deepcopy(base)
    for dotted, value in change.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _fails(path: Path, field: str) -> InputError:
    """Loading (or, to be sure nothing slips through, building the env) raises naming the file and field."""
    with pytest.raises(InputError) as info:
        scenario = load_scenario(str(path))
        ServingEnv(scenario, "eval")  # pragma: no cover - only reached while the bug is present
    err = info.value
    assert err.where == str(path), str(err)
    assert err.field == field, str(err)
    assert "\n" not in str(err) and err.fix
    return err


# ----------------------------------------------------------------------------------- scenario YAML


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"node": ...}, "node"),
        ({"control": ...}, "control"),
        ({"workload": ...}, "workload"),
        ({"control.knobs": {}}, "control.knobs"),
        ({"control.interval_s": float("nan")}, "control.interval_s"),
        ({"workload.window_s": float("nan")}, "workload.window_s"),
        ({"workload.window_s": float("inf")}, "workload.window_s"),
        ({"workload.rate_scale": [0.5, 1.0, 2.0]}, "workload.rate_scale"),
        ({"workload.rate_scale": "abc"}, "workload.rate_scale"),
        ({"workload.rate_scale": ["a", "b"]}, "workload.rate_scale[0]"),
        ({"workload.eval_windows_s": [[2700]]}, "workload.eval_windows_s[0]"),
        ({"workload.eval_windows_s": [2700, 300]}, "workload.eval_windows_s[0]"),
        ({"workload.train_range_s": [0.0]}, "workload.train_range_s"),
        ({"node.load_bandwidth_gbps": 0}, "node.load_bandwidth_gbps"),
        ({"node.gpus": 0}, "node.gpus"),
        ({"node.gpu": "tpu"}, "node.gpu"),
        ({"node.model": "gpt-17"}, "node.model"),
        ({"episode.steps": -5}, "episode.steps"),
        ({"slo.ttft_floor_s": -0.5}, "slo.ttft_floor_s"),
        ({"workload.eval_rate_scale": -0.6}, "workload.eval_rate_scale"),
        ({"workload.eval_windows_s": [[3000.0, 900.0]]}, "workload.eval_windows_s[0]"),
        (
            {"workload.train_range_s": [0.0, 9000.0], "workload.eval_windows_s": [[9000.0, 100.0]]},
            "workload.train_range_s",
        ),
        ({"control.knobs.tp": [1, 2, 3]}, "control.knobs.tp"),
        ({"control.knobs.tp": [4]}, "control.knobs.tp"),
        ({"control.knobs.replicas": [1, 4]}, "control.knobs.replicas"),
        ({"control.knobs.tp": 2}, "control.knobs.tp"),
        ({"node.initial": {"tp": [2]}}, "node.initial.tp"),
        ({"workload.synthetic": {"mean_rps": 5.0, "colour": 1.0}}, "workload.synthetic.colour"),
        ({"workload.synthetic": {"mean_rps": -1.0}}, "workload.synthetic.mean_rps"),
    ],
)
def test_bad_scenario_fails_at_load(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    _fails(_scenario(tmp_path, change), field)


def test_tp_that_does_not_divide_the_gpus_is_an_error_not_a_mask(tmp_path: Path) -> None:
    default = yaml.safe_load(Path(load_scenario("default").path).read_text())
    err = _fails(_scenario(tmp_path, {"control.knobs.tp": [2, 3, 8]}, default), "control.knobs.tp")
    assert "3" in err.problem and "[1, 2, 4, 8]" in err.fix
    # weights that do not fit stay masked (a run-time fact, not a typo)
    path = _scenario(tmp_path, {"control.knobs.tp": [1, 8]}, default)
    assert ServingEnv(load_scenario(str(path))).action_masks()[:2].tolist() == [False, True]


def test_binary_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    _fails(path, "file")


def test_shipped_scenarios_still_load() -> None:
    for name in scenario_names():
        assert load_scenario(name).control.knobs


# ---------------------------------------------------------------------------------------- trace CSV


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "reqs.csv"
    path.write_text("\n".join(["arrival_s,input_tokens,output_tokens", *rows]) + "\n")
    return path


def test_trace_error_names_the_csv_and_column_not_node_initial(tmp_path: Path) -> None:
    trace = _csv(tmp_path, ["0,10,5", "1,oops,5", "2,10,5"])
    path = _scenario(tmp_path, {"workload.trace": str(trace), "workload.train_range_s": [0.0, 2.0]})
    with pytest.raises(InputError) as info:
        ServingEnv(load_scenario(str(path)))
    assert info.value.where == str(trace) and info.value.field == "input_tokens", str(info.value)


def test_trace_nan_is_not_an_empty_cell(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_trace(_csv(tmp_path, ["0,10,5", "1,nan,5", "2,10,5"]))
    assert "'nan' is not a number" in info.value.problem and "empty" not in info.value.problem
    with pytest.raises(InputError) as info:
        load_trace(_csv(tmp_path, ["0,10,5", "1,,5", "2,10,5"]))
    assert "an empty cell" in info.value.problem


def test_trace_huge_token_count_is_reported_as_written(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_trace(_csv(tmp_path, ["0,10,5", "1,1e30,5", "2,10,5"]))
    err = info.value
    assert err.field == "input_tokens" and "1e+30" in err.problem and "-9223372036854775808" not in str(err)
    with pytest.raises(InputError) as info:
        load_trace(_csv(tmp_path, ["0,10,5", "1,9000000000000000000,5", "2,10,5"]))
    assert info.value.field == "input_tokens" and info.value.where == str(tmp_path / "reqs.csv")


# -------------------------------------------------------------------------------------- config.json

LLAMA = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_size": "4096"}, "hidden_size"),
        ({"num_key_value_heads": "8"}, "num_key_value_heads"),
        ({"num_local_experts": "8"}, "num_local_experts"),
        ({"head_dim": "128"}, "head_dim"),
        ({"num_key_value_heads": -8}, "num_key_value_heads"),
        ({"head_dim": 0}, "head_dim"),
        ({"num_local_experts": 8, "num_experts_per_tok": 9}, "num_experts_per_tok"),
        ({"hidden_size": 10**400}, "hidden_size"),
        ({"num_attention_heads": 10**12 + 1}, "num_attention_heads"),
        ({"hidden_size": 16, "num_attention_heads": 32, "num_key_value_heads": 32}, "head_dim"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ],
)
def test_bad_config_json_fields(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    from greenrl.catalog import load_model

    path = _config(tmp_path, json.dumps(LLAMA | change))
    with pytest.raises(InputError) as info:
        load_model(str(path))
    assert (info.value.where, info.value.field) == (str(path), field), str(info.value)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_config_json_nan_and_infinity(tmp_path: Path, token: str) -> None:
    from greenrl.catalog import load_model

    for key in ("hidden_size", "num_key_value_heads", "num_local_experts"):
        text = json.dumps(LLAMA | {key: 0}).replace(f'"{key}": 0', f'"{key}": {token}')
        with pytest.raises(InputError) as info:
            load_model(str(_config(tmp_path, text)))
        assert info.value.field == key


def test_config_json_directory_and_binary(tmp_path: Path) -> None:
    from greenrl.catalog import load_model

    with pytest.raises(InputError) as info:
        load_model(str(tmp_path))
    assert info.value.where == str(tmp_path)
    path = tmp_path / "config.json"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(InputError):
        load_model(str(path))


def test_huge_head_count_with_tp_does_not_hang(tmp_path: Path) -> None:
    from greenrl.catalog.models import ModelCard

    card = ModelCard("big", 1, 8, 10**12 + 1, 1, 8, 8, 8)
    with pytest.raises(InputError) as info:
        card.check_tp(2)
    assert "use one of 1" in info.value.fix


# ---------------------------------------------------------------------------------------------- predict

PREDICT = ["--model", "llama-3.1-70b", "--gpu", "h100", "--tp", "4", "--input-tokens", "300", "--output-tokens", "350"]


@pytest.mark.parametrize(("flag", "value"), [("--batch", "inf"), ("--batch", "nan"), ("--batch", "1e9")])
def test_predict_rejects_batches_it_cannot_answer(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    from greenrl import predict

    with pytest.raises(SystemExit) as info:
        predict.main([*PREDICT, flag, value, "--json"])
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "--batch" in out.err and "fix:" in out.err


def test_predict_warns_when_the_batch_overflows_the_kv_cache(capsys: pytest.CaptureFixture[str]) -> None:
    from greenrl import predict

    assert predict.main([*PREDICT, "--batch", "3000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("KV" in w and "at most" in w for w in out["domain_warnings"])


# ------------------------------------------------------------------------------------------------ train


def _interrupting_learn(calls: list[int]) -> Any:
    """A stand-in for PPO.learn that records the steps asked for and is 'interrupted' at once."""

    def learn(self: Any, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(total_timesteps)
        raise KeyboardInterrupt

    return learn


def _train_cli(argv: list[str]) -> int:
    from greenrl import train

    try:
        return train.main(argv)
    except KeyboardInterrupt:  # pragma: no cover - the bug: Ctrl-C escapes as a traceback
        pytest.fail("KeyboardInterrupt escaped greenrl.train")
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture
def interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    """A tiny run of 96 recorded timesteps, interrupted before learning: a checkpoint, no summary."""
    from sb3_contrib import MaskablePPO

    calls: list[int] = []
    monkeypatch.setattr(MaskablePPO, "learn", _interrupting_learn(calls))
    argv = ["--scenario", "tiny", "--total-timesteps", "96", "--n-envs", "1", "--out", str(tmp_path), "--no-progress"]
    assert _train_cli(argv) in (0, 130)
    (run,) = (tmp_path / "tiny").iterdir()
    assert (run / "checkpoint" / "model.zip").is_file() and calls == [96]
    return run, calls


def test_ctrl_c_during_the_warm_start_is_clean_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_contrib import MaskablePPO

    from greenrl import train

    def warm_start(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_warm_start", warm_start)
    argv = ["--scenario", "tiny", "--warm-start", "static-max", "--total-timesteps", "64", "--n-envs", "1"]
    assert _train_cli([*argv, "--out", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--resume" in err
    (run,) = (tmp_path / "tiny").iterdir()
    calls: list[int] = []
    monkeypatch.setattr(train, "_warm_start", lambda *a, **k: None)
    monkeypatch.setattr(MaskablePPO, "learn", _interrupting_learn(calls))
    assert _train_cli(["--resume", str(run), "--no-progress"]) == 130  # starts over in the same folder
    assert calls == [64] and (run / "checkpoint" / "model.zip").is_file()


def test_resume_uses_the_runs_scenario_and_total_timesteps(interrupted_run: tuple[Path, list[int]]) -> None:
    run, calls = interrupted_run
    assert _train_cli(["--resume", str(run), "--no-progress"]) == 130  # no --scenario: the run's own (tiny)
    assert calls == [96, 96]  # the recorded total_timesteps, not the agent file's 30_000
    assert _train_cli(["--resume", str(run), "--scenario", "default", "--no-progress"]) == 2


def test_a_planted_checkpoint_is_refused_unless_trusted(
    interrupted_run: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    import zipfile

    run, calls = interrupted_run
    with zipfile.ZipFile(run / "checkpoint" / "model.zip", "a") as zipped:
        zipped.writestr("payload.pkl", b"planted")
    capsys.readouterr()
    assert _train_cli(["--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.zip" in err and "changed since training" in err and calls == [96]
    assert "--trust-pickle" in err
    assert _train_cli(["--resume", str(run), "--trust-pickle", "--no-progress"]) == 130
    assert calls == [96, 96]


def test_a_failed_checkpoint_save_leaves_the_old_one_whole(
    interrupted_run: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sb3_contrib import MaskablePPO

    run, _ = interrupted_run
    before = (run / "checkpoint" / "model.zip").read_bytes()

    def save(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        handle = open(path, "wb") if isinstance(path, str | Path) else path  # noqa: SIM115
        handle.write(before[:100])  # half-written, then the disk fills
        raise OSError("No space left on device")

    monkeypatch.setattr(MaskablePPO, "save", save)
    with pytest.raises(OSError, match="No space"):
        _train_cli(["--resume", str(run), "--no-progress"])
    assert (run / "checkpoint" / "model.zip").read_bytes() == before
