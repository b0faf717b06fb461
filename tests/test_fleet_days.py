"""Which requests a fleet day holds: held-out, validation and any other ServeGen day, and the evaluator's --days."""

from __future__ import annotations

import json

import numpy as np
import pytest

from greenrl.errors import InputError
from greenrl.fleet import load_fleet
from greenrl.fleet.days import fleet_day, fleet_load_on_day, validation_day
from greenrl.workload import scale_for_rate_rps, servegen_trace
from greenrl.workload.servegen import DAY_S


def _same(a, b) -> bool:  # type: ignore[no-untyped-def]
    return bool(np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.input_tokens, b.input_tokens))


def test_a_day_is_the_trace_selection_and_evaluation_play() -> None:
    fleet = load_fleet("default")
    assert _same(fleet_load_on_day(fleet, 13, 600.0), fleet_day(fleet, 1, 600.0))
    assert _same(fleet_load_on_day(fleet, 10, 600.0), validation_day(fleet, 0, 600.0))
    other = fleet_load_on_day(fleet, 3, 600.0)
    scale = scale_for_rate_rps(fleet.workload.category, fleet.workload.mean_rps)
    assert _same(other, servegen_trace(fleet.workload.category, 3 * DAY_S, 600.0, scale=scale, seed=30_003))
    assert not _same(other, fleet_load_on_day(fleet, 4, 600.0))
    assert fleet_load_on_day(fleet, 3).duration_s == DAY_S
    with pytest.raises(InputError):  # reason/deepseek-r1 has day 0 only
        fleet_load_on_day(fleet.with_category("reason/deepseek-r1"), 1, 600.0)


def test_the_evaluator_plays_named_days(capsys) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.evaluate import main

    code = main(["--days", "10", "3", "--duration-s", "600", "--policies", "static-max", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["day"] for r in rows] == [10, 3]
    assert rows[0]["requests"] == len(validation_day(load_fleet("default"), 0, 600.0).arrival_s)
    with pytest.raises(SystemExit):  # one or the other
        main(["--days", "10", "--windows", "0", "--policies", "static-max"])
    assert "not allowed with" in capsys.readouterr().err


def test_the_evaluator_scales_an_unseen_category_to_another_rate(capsys) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.evaluate import main

    args = ["--category", "reason/deepseek-r1", "--days", "0", "--duration-s", "600", "--policies", "static-max"]
    rows = {}
    for rate in ("3", "6"):
        assert main([*args, "--mean-rps", rate, "--json"]) == 0
        rows[rate] = json.loads(capsys.readouterr().out)[0]
    light = load_fleet("default").with_category("reason/deepseek-r1", 3.0)
    assert light.workload.mean_rps == 3.0
    assert rows["3"]["requests"] == len(fleet_load_on_day(light, 0, 600.0).arrival_s)
    assert 1.6 < rows["6"]["requests"] / rows["3"]["requests"] < 2.4  # the same clients at twice the rate
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            main([*args, "--mean-rps", bad])
        assert "--mean-rps" in capsys.readouterr().err


def test_the_evaluator_sets_the_guards_rebalance_threshold(capsys) -> None:  # type: ignore[no-untyped-def]
    from greenrl.fleet.evaluate import fleet_under_load, main

    assert load_fleet("default").control.guard_rebalance_queue == 0  # off in the shipped fleet files
    assert fleet_under_load("default", None, None, 32).control.guard_rebalance_queue == 32
    assert fleet_under_load("default", "language/m-small", 3.0, 16).control.guard_rebalance_queue == 16
    args = ["--windows", "0", "--duration-s", "300", "--policies", "static-max"]
    assert main([*args, "--rebalance-queue", "32"]) == 0
    assert "guard rebalances at 32 queued" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--rebalance-queue", "-1"])
    assert "--rebalance-queue" in capsys.readouterr().err
