"""The controller shipped in checkpoints/ loads without SB3 or pickle and reproduces its recorded KPIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenrl.env import ServingEnv, load_scenario
from greenrl.policy import load_controller
from greenrl.train import evaluate_policy_on

SHIPPED = sorted(Path("checkpoints").glob("*/*/controller.json"))


def test_a_controller_is_shipped_for_the_default_scenario() -> None:
    assert any(p.parent.parent.name == "default" for p in SHIPPED)


FLEET_KINDS = ("fleet", "fleet-node")  # a centralized fleet controller, one shared by every node
NODE = [p for p in SHIPPED if json.loads(p.read_text()).get("kind") not in FLEET_KINDS]
FLEET = [p for p in SHIPPED if json.loads(p.read_text()).get("kind") in FLEET_KINDS]


@pytest.mark.parametrize("manifest", NODE, ids=[str(p.parent) for p in NODE])
def test_shipped_controller_reproduces_its_evaluation(manifest: Path) -> None:
    info = json.loads(manifest.read_text())
    scenario = load_scenario(info["scenario"])
    controller = load_controller(manifest.parent, expect_env=ServingEnv(scenario, "eval"))
    kpis = evaluate_policy_on(controller, scenario)
    recorded = info["eval"]["trained"]
    assert kpis["energy_kwh"] == pytest.approx(recorded["energy_kwh"], rel=1e-6)  # recorded on another CPU
    assert kpis["missed"] == recorded["missed"]
    assert kpis["slo_attainment"] == pytest.approx(recorded["slo_attainment"], rel=1e-9)


@pytest.mark.parametrize("manifest", FLEET, ids=[str(p.parent) for p in FLEET])
def test_shipped_fleet_controller_reproduces_its_validation_days(manifest: Path) -> None:
    """The numpy controller replays the validation days (10-11) of every validation category as the trained
    model measured them."""
    from greenrl.fleet import load_fleet
    from greenrl.fleet.learn import load_learned
    from greenrl.fleet.selection import validate_policy

    info = json.loads(manifest.read_text())
    row = validate_policy(load_fleet(info["fleet"]), load_learned(manifest.parent), info["slo_weight"])
    recorded = info["validation"]["selected"]
    assert row["missed"] == recorded["missed"]
    assert row["energy_kwh"] == pytest.approx(recorded["energy_kwh"], rel=1e-6)
    assert row["score"] == pytest.approx(recorded["score"], rel=1e-6)
    for category, figures in recorded.get("categories", {}).items():
        assert row["categories"][category]["missed"] == figures["missed"]
