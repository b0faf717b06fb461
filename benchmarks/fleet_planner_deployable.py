"""A planner a provider could deploy: one headroom and margin, chosen on the validation days, then held out.

``fleet_planner_frontier.py --tune`` tunes the planner to each learned row's attainment on the held-out day
itself, in hindsight. A provider picks one setting beforehand. Here, for each learned controller, the
planner is tuned (``greenrl.fleet.frontier.tune_to_attainment``) on validation days 10 + 11 together to the
controller's own validation attainment (``--target learned-1=0.997908``: the one its model selection saw;
docs/fleet.md, "The learned controller"), and that one setting is then played on the held-out days and
compared with the controller's rows there (``--rows``, from ``greenrl.fleet.evaluate --save``).

Prints one JSON object (after a progress line per planner day) and writes it to ``--out``.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/fleet_planner_deployable.py --target learned-1=0.997908
--rows docs/results/fleet_m-large.json --out deployable.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from greenrl.errors import InputError, exit_on_input_error
from greenrl.fleet import FleetSim, load_fleet
from greenrl.fleet.days import fleet_day, held_out_day_number, validation_day, validation_windows_s
from greenrl.fleet.frontier import cheapest_reaching, next_knobs, tune_to_attainment
from greenrl.fleet.policies import PlannerFleet
from greenrl.fleet.rollout import run_policy
from greenrl.ioutil import atomic_write_text
from greenrl.workload import Trace

_SIM: FleetSim | None = None  # one per worker process, made before the fork
_DAYS: list[Trace] = []


@exit_on_input_error
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fleet", default="default")
    p.add_argument("--target", action="append", required=True, help="POLICY=validation attainment (repeatable)")
    p.add_argument("--rows", required=True, help="held-out rows saved by greenrl.fleet.evaluate --save")
    p.add_argument("--headroom", default="0.2,0.5,0.8,0.85,0.9", help="the starting grid's headroom_frac values")
    p.add_argument("--margin", default="0.2,1.0", help="the starting grid's margin_frac values")
    p.add_argument("--max-evals", type=int, default=6, help="new validation plays per target, at most")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    targets = dict(_target(t) for t in args.target)
    global _SIM, _DAYS
    config = load_fleet(args.fleet)
    _SIM = FleetSim(config)
    n_val = len(validation_windows_s(config))
    n_held = len(config.scenario.workload.eval_windows_s)
    _DAYS = [validation_day(config, i) for i in range(n_val)] + [fleet_day(config, w) for w in range(n_held)]
    rows = json.loads(Path(args.rows).read_text())
    days = [held_out_day_number(config, w) for w in range(n_held)]
    out: dict[str, Any] = {"category": config.workload.category, "controllers": []}
    with multiprocessing.get_context("fork").Pool(max(n_val, n_held)) as pool:  # one day a process

        def validation(h: float, m: float) -> dict[str, Any]:
            figures = _together(pool.starmap(_play, [(i, h, m) for i in range(n_val)]))
            print(json.dumps({"validation": True, "headroom_frac": h, "margin_frac": m} | figures), flush=True)
            return figures

        points = [
            {"headroom_frac": h, "margin_frac": m} | validation(h, m)
            for h in map(float, args.headroom.split(","))
            for m in map(float, args.margin.split(","))
        ]
        for value in sorted(targets.values()):
            tune_to_attainment(validation, points, value, max_evals=args.max_evals)
        played: dict[tuple[float, float], list[dict[str, Any]]] = {}
        for name, value in sorted(targets.items()):
            chosen = cheapest_reaching(points, value)
            entry: dict[str, Any] = {"policy": name, "validation_attainment": value, "planner_validation": chosen}
            if chosen is not None:
                knobs = (chosen["headroom_frac"], chosen["margin_frac"])
                entry["search_converged"] = next_knobs(points, chosen, value) is None
                if knobs not in played:
                    played[knobs] = pool.starmap(_play, [(n_val + w, *knobs) for w in range(n_held)])
                    print(
                        json.dumps({"held_out": True, "headroom_frac": knobs[0], "margin_frac": knobs[1]}), flush=True
                    )
                entry["held_out"] = []
                for day, planner in zip(days, played[knobs], strict=True):
                    mine = [r for r in rows if r["day"] == day and r["policy"] == name]
                    row = {"day": day, "planner": planner}
                    if mine:
                        learned = {k: mine[0][k] for k in ("energy_kwh", "slo_attainment", "missed", "requests")}
                        row |= {
                            "learned": learned,
                            "energy_vs_planner": learned["energy_kwh"] / planner["energy_kwh"] - 1,
                        }
                    entry["held_out"].append(row)
            out["controllers"].append(entry)
    out["validation_points"] = points
    text = json.dumps(out, indent=1)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text)


def _target(text: str) -> tuple[str, float]:
    """``POLICY=ATTAINMENT`` (a fraction in (0, 1]) from ``--target``."""
    name, _, value = text.partition("=")
    try:
        attainment = float(value)
    except ValueError:
        attainment = -1.0
    if not name or not 0.0 < attainment <= 1.0:
        raise InputError("--target", text, "not POLICY=ATTAINMENT with 0 < ATTAINMENT <= 1", "e.g. learned-1=0.997908")
    return name, attainment


def _play(index: int, headroom_frac: float, margin_frac: float) -> dict[str, Any]:
    """Day ``index`` of ``_DAYS`` (the validation days, then the held-out ones) under the planner at these knobs."""
    assert _SIM is not None
    row = run_policy(_SIM, PlannerFleet(headroom_frac=headroom_frac, margin_frac=margin_frac), _DAYS[index])
    return {k: row[k] for k in ("energy_kwh", "slo_attainment", "missed", "requests")}


def _together(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Several days as one: energy, misses and requests summed; attainment over all requests."""
    missed, requests = sum(d["missed"] for d in days), sum(d["requests"] for d in days)
    energy = round(sum(d["energy_kwh"] for d in days), 3)
    return {"energy_kwh": energy, "slo_attainment": 1 - missed / requests, "missed": missed, "requests": requests}


if __name__ == "__main__":
    main()
