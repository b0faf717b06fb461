"""Model selection over every validation category: a tiny two-category run, its snapshots, and reselection."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from greenrl.errors import InputError
from greenrl.fleet import load_fleet
from greenrl.fleet.config import fleets_dir

DEFAULT = fleets_dir() / "default.yaml"


def test_validation_categories_put_the_held_out_category_first(tmp_path: Path) -> None:
    text = DEFAULT.read_text()
    assert load_fleet("default").workload.validation_categories == ("language/m-large",)
    assert load_fleet("mixed").workload.validation_categories == ("language/m-large", "language/m-small")
    path = tmp_path / "small-only.yaml"  # trained on m-small alone: still validated on the held-out category
    path.write_text(text.replace("mean_rps: 8.0}", "mean_rps: 8.0, train_categories: [language/m-small]}"))
    config = load_fleet(str(path))
    assert config.workload.training_categories == ("language/m-small",)
    assert config.workload.validation_categories == ("language/m-large", "language/m-small")
    assert config.with_category("language/m-small").workload.category == "language/m-small"
    assert config.with_category("language/m-small").workload.mean_rps == config.workload.mean_rps


def _figures(energy_kwh: float, attainment: float) -> dict[str, float]:
    return {"energy_kwh": energy_kwh, "slo_attainment": attainment}


def test_the_ship_verdict_checks_every_category_on_its_own() -> None:
    from greenrl.fleet.selection import ship_verdict

    planner = {"categories": {"a": _figures(100.0, 0.985), "b": _figures(50.0, 0.995)}}
    # pooled over both loads this one would read 99.2%; b alone is under the floor
    selected = {"categories": {"a": _figures(90.0, 0.996), "b": _figures(45.0, 0.988)}}
    ok, reason = ship_verdict(selected, planner)
    assert not ok and reason.startswith("b: attainment below 99%")
    selected["categories"]["b"] = _figures(55.0, 0.994)  # at the floor, but the planner dominates it on b
    ok, reason = ship_verdict(selected, planner)
    assert not ok and reason.startswith("b: dominated by the planner")
    selected["categories"]["b"] = _figures(48.0, 0.993)
    ok, reason = ship_verdict(selected, planner)
    assert ok and "a: meets 99%" in reason and "b: meets 99%" in reason


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory, train_tiny_fleet: Callable[[str, Path], Path]) -> Path:
    """A few hundred steps of the two-category recipe, validated on 15 minutes of each category's days."""
    return train_tiny_fleet("mixed", tmp_path_factory.mktemp("runs"))


def test_a_run_validates_on_every_category_and_keeps_every_validated_model(mixed_run: Path) -> None:
    from greenrl.fleet.learn import LearnedFleet
    from greenrl.fleet.selection import day_score, evaluate_days
    from greenrl.trust import check_pickle

    summary = json.loads((mixed_run / "summary.json").read_text())
    config = load_fleet("mixed")
    categories = ("language/m-large", "language/m-small")
    for entry in summary["validation"]:
        assert tuple(entry["categories"]) == categories
        scores = [entry["categories"][c]["score"] for c in categories]
        assert entry["score"] == pytest.approx(sum(scores) / 2)
        assert entry["missed"] == sum(entry["categories"][c]["missed"] for c in categories)
        snapshot = mixed_run / "snapshots" / str(entry["timesteps"]) / "model.zip"
        check_pickle(snapshot)  # recorded in the run's pickle record, so it loads without --trust-pickle
    assert summary["selected"] == max(summary["validation"], key=lambda e: e["score"])
    assert set(summary["validation_planner"]["categories"]) == set(categories)
    assert set(summary["held_out_categories"]) == {"language/m-small"}  # m-large's are the sweep's keys
    assert summary["held_out"]["energy_kwh"] == summary["eval_trained"]["energy_kwh"]
    other = summary["held_out_categories"]["language/m-small"]
    assert (
        len(other["held_out"]["days"]) == 2 and other["held_out"]["energy_kwh"] == other["eval_trained"]["energy_kwh"]
    )
    assert other["eval_trained"]["energy_kwh"] != summary["eval_trained"]["energy_kwh"]  # another load
    # the m-small score is the one that category's days give when played alone
    from sb3_contrib import MaskablePPO

    last = summary["validation"][-1]
    model = MaskablePPO.load(mixed_run / "snapshots" / str(last["timesteps"]) / "model.zip", device="cpu")
    small = config.with_category("language/m-small")
    row = evaluate_days(small, LearnedFleet(model), "val", duration_s=900.0)
    assert day_score(row, config, 30.0) == pytest.approx(last["categories"]["language/m-small"]["score"])


def _reselect(run: Path, tmp_path: Path, name: str) -> tuple[Path, dict[str, Any]]:
    from greenrl.fleet.reselect import reselect

    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy, reselect(copy, duration_s=900.0)


def test_reselection_scores_every_snapshot_as_the_run_did(mixed_run: Path, tmp_path: Path) -> None:
    from greenrl.policy import load_controller

    before = (mixed_run / "summary.json").read_text()
    copy, summary = _reselect(mixed_run, tmp_path, "run")
    recorded = json.loads(before)["validation"]
    assert [c["candidate"] for c in summary["candidates"]] == [f"snapshots/{e['timesteps']}" for e in recorded]
    for candidate, entry in zip(summary["candidates"], recorded, strict=True):
        assert candidate["score"] == pytest.approx(entry["score"])  # same rule, same days: same scores
    assert summary["selected"]["score"] == max(c["score"] for c in summary["candidates"])
    assert (copy / "summary.json").read_text() == before  # the run's own files are left as they were
    written = json.loads((copy / "reselect" / "summary.json").read_text())
    assert written["selected_candidate"] == summary["selected_candidate"]
    assert load_controller(copy / "reselect" / "controller").manifest["kind"] == "fleet"


def test_reselection_of_a_run_without_snapshots_uses_best_and_checkpoint(mixed_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "legacy"
    shutil.copytree(mixed_run, copy)
    shutil.rmtree(copy / "snapshots")  # as runs saved before snapshots existed
    from greenrl.fleet.reselect import candidates, reselect

    recorded = json.loads((mixed_run / "summary.json").read_text())
    later = recorded["selected"]["timesteps"] != recorded["timesteps"]  # else best is the last model: once
    assert list(candidates(copy)) == ["best", "checkpoint"][: 1 + later]
    summary = reselect(copy, duration_s=900.0)
    by_name = {c["candidate"]: c for c in summary["candidates"]}
    assert by_name["best"]["timesteps"] == recorded["selected"]["timesteps"]
    assert by_name["best"]["score"] == pytest.approx(recorded["selected"]["score"])
    if later:
        assert by_name["checkpoint"]["timesteps"] == recorded["timesteps"]
    other = next(e for e in recorded["validation"] if e["timesteps"] != recorded["selected"]["timesteps"])
    shutil.copytree(mixed_run / "snapshots" / str(other["timesteps"]), copy / "best", dirs_exist_ok=True)
    with pytest.raises(InputError, match="best"):  # a swapped zip no longer matches the pickle record
        reselect(copy, duration_s=900.0)


def test_reselection_refuses_a_run_whose_fleet_changed_or_that_kept_nothing(mixed_run: Path, tmp_path: Path) -> None:
    import yaml

    from greenrl.fleet.reselect import reselect

    copy = tmp_path / "changed"
    shutil.copytree(mixed_run, copy)
    recorded = yaml.safe_load((copy / "config.yaml").read_text())
    recorded["files_sha256"] = {k: "0" * 64 for k in recorded["files_sha256"]}
    (copy / "config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(InputError, match="files_sha256"):
        reselect(copy, duration_s=900.0)
    empty = tmp_path / "empty"
    shutil.copytree(mixed_run, empty)
    for folder in ("snapshots", "best", "checkpoint"):
        shutil.rmtree(empty / folder)
    with pytest.raises(InputError, match="holds no model"):
        reselect(empty, duration_s=900.0)
