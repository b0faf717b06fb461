"""The planner's energy-attainment frontier on the held-out days, and the planner's energy at a controller's attainment.

"At least 10% less energy than the planner at equal or better attainment" (issue #17) needs the planner at
the learned controller's attainment, not only at its own default point. Two steps:

1. ``--windows 0 --out grid12.json``: play ``PlannerFleet(headroom_frac=h, margin_frac=m)`` over a grid of
   its capacity headroom and forecast margin on held-out windows (``greenrl.fleet.days.fleet_day``;
   ``--category`` for another ServeGen load, ``--mean-rps`` at another rate, ``--days 0`` on other ServeGen days
   than the held-out ones), with static-max, and keep each day's frontier (no grid point
   with less energy and higher attainment). One window per process runs them side by side.
2. ``--planner-grid grid12.json --planner-grid grid13.json --rows docs/results/fleet_m-large.json``: for
   every learned row of ``greenrl.fleet.evaluate --save`` (policy ``learned...``), the planner's least
   energy at its attainment or above on its day (linear between two frontier points; none when no grid
   point reaches it) and the planner point closest below it (``greenrl.fleet.frontier.versus_planner``).
   ``--pareto docs/img/pareto_fleet.png`` also redraws the rows' Pareto plot with the planner's frontier.
3. ``--tune --planner-grid grid13.json --rows docs/results/fleet_m-large.json --windows 1``: the planner
   tuned to each learned row's attainment, nothing interpolated: from the day's grid, bisect its headroom
   and margin toward the cheapest planner day at that attainment or above
   (``greenrl.fleet.frontier.tune_to_attainment``), play each new point, and compare the row with the
   real point found. Its output is also a step-1 grid (every point played, and their frontier), so a
   later step 3 (a larger ``--max-evals``) can go on from it, and step 2 can plot it.

In steps 2 and 3 ``--planner-grid`` may repeat; a day found in several files gets the points of all of them.
``--rows`` may repeat too (baselines and learned rows saved by separate runs); a (day, policy) row found in
two files is kept once when equal and refused when not.

Each prints one JSON object (steps 1 and 3 after a progress line per planner day) and writes it to ``--out``.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/fleet_planner_frontier.py --windows 0 --out grid12.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from greenrl.errors import InputError, exit_on_input_error
from greenrl.fleet import FleetConfig, FleetSim
from greenrl.fleet.days import fleet_day, fleet_load_on_day, held_out_day_number
from greenrl.fleet.evaluate import fleet_under_load, plot_pareto
from greenrl.fleet.frontier import cheapest_reaching, frontier, next_knobs, tune_to_attainment, versus_planner
from greenrl.fleet.policies import PlannerFleet, make_policy
from greenrl.fleet.rollout import run_policy
from greenrl.ioutil import atomic_write_text
from greenrl.workload import Trace

FIGURES = ("energy_kwh", "slo_attainment", "missed", "requests")


@exit_on_input_error
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fleet", default="default")
    p.add_argument("--category", default=None, help="another ServeGen category at the fleet's mean rate")
    p.add_argument("--mean-rps", type=float, default=None, help="the load's mean rate instead (requests/s)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--windows", type=int, nargs="+", default=None, help="held-out windows (default: all)")
    which.add_argument("--days", type=int, nargs="+", default=None, help="ServeGen days instead (as fleet.evaluate's)")
    headroom = "0.2,0.35,0.5,0.65,0.75,0.8,0.825,0.85,0.875,0.9"  # finer near the learned controllers' attainment
    p.add_argument("--headroom", default=headroom, help="comma-separated headroom_frac values")
    p.add_argument("--margin", default="0.2,1.0", help="comma-separated margin_frac values")
    p.add_argument("--planner-grid", action="append", default=[], help="step 2: a step-1 output (repeatable)")
    p.add_argument(
        "--rows", action="append", default=[], help="steps 2-3: greenrl.fleet.evaluate --save rows (repeatable)"
    )
    p.add_argument("--pareto", type=Path, default=None, help="step 2: plot the rows with the planner frontier here")
    p.add_argument("--tune", action="store_true", help="step 3: tune the planner to each learned row's attainment")
    p.add_argument("--max-evals", type=int, default=6, help="step 3: new planner days per learned row, at most")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object here")
    args = p.parse_args()
    out: dict[str, Any]
    if args.tune:
        out = _tune(args)
    elif args.planner_grid:
        fronts = {day: frontier(d["planner_grid"]) for day, d in _grids_by_day(args.planner_grid).items()}
        rows = _rows(args.rows)
        out = {"planner_grid": args.planner_grid, "rows": args.rows, "controllers": []}
        for r in rows:
            if r["policy"].startswith("learned") and r["day"] in fronts:
                out["controllers"].append(
                    {k: r[k] for k in ("day", "policy", *FIGURES)} | versus_planner(r, fronts[r["day"]])
                )
        if args.pareto is not None:
            plot_pareto(rows, args.pareto, fronts)
    else:
        out = _grid(args)
    text = json.dumps(out, indent=1)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text)


def _fleet(args: argparse.Namespace) -> tuple[FleetConfig, FleetSim, list[tuple[int, Callable[[], Trace]]]]:
    """The fleet with the command line's load, its simulator, and (day, its trace) per day asked for."""
    config = fleet_under_load(args.fleet, args.category, args.mean_rps)
    if args.days is not None:
        return config, FleetSim(config), [(d, partial(fleet_load_on_day, config, d)) for d in args.days]
    windows = args.windows or list(range(len(config.scenario.workload.eval_windows_s)))
    return config, FleetSim(config), [(held_out_day_number(config, w), partial(fleet_day, config, w)) for w in windows]


def _grid(args: argparse.Namespace) -> dict[str, Any]:
    config, sim, loads = _fleet(args)
    grid = [(float(h), float(m)) for h in args.headroom.split(",") for m in args.margin.split(",")]
    days = []
    for day, load in loads:
        trace = load()
        static_max = run_policy(sim, make_policy("static-max"), trace)
        points = []
        for h, m in grid:
            row = run_policy(sim, PlannerFleet(headroom_frac=h, margin_frac=m), trace)
            points.append({"headroom_frac": h, "margin_frac": m} | {k: row[k] for k in FIGURES})
            print(json.dumps({"day": day, **points[-1]}), flush=True)
        front = frontier(points)
        days.append(
            {
                "day": day,
                "static_max": {k: static_max[k] for k in FIGURES},
                "planner_grid": points,
                "planner_frontier": front,
            }
        )
    return {"category": config.workload.category, "mean_rps": config.workload.mean_rps, "days": days}


def _tune(args: argparse.Namespace) -> dict[str, Any]:
    config, sim, loads = _fleet(args)
    if not args.rows or not args.planner_grid:
        raise SystemExit("--tune needs --rows (greenrl.fleet.evaluate --save) and --planner-grid (a step-1 grid)")
    grids = _grids_by_day(args.planner_grid, config)
    rows = _rows(args.rows)
    days = []
    for day, load in loads:
        if day not in grids:
            raise InputError("--planner-grid", "days", f"no grid for day {day}", "run step 1 on that day first")
        trace = load()
        points = [dict(p) for p in grids[day]["planner_grid"]]
        mine = sorted(
            (r for r in rows if r["day"] == day and r["policy"].startswith("learned")),
            key=lambda r: r["slo_attainment"],
        )
        played = {}
        for r in mine:  # a lower target's points serve the higher
            before = len(points)
            tune_to_attainment(partial(_play, sim, trace, day), points, r["slo_attainment"], max_evals=args.max_evals)
            played[r["policy"]] = len(points) - before
        controllers = []
        for r in mine:  # against every point played, a later target's included
            tuned = cheapest_reaching(points, r["slo_attainment"])
            controllers.append(
                {k: r[k] for k in ("day", "policy", *FIGURES)}
                | {
                    "planner_tuned": tuned,
                    "energy_vs_planner_tuned": None if tuned is None else r["energy_kwh"] / tuned["energy_kwh"] - 1.0,
                    "new_planner_days": played[r["policy"]],
                    # False: --max-evals ran out first, and a cheaper planner point may lie in a gap
                    "search_converged": tuned is None or next_knobs(points, tuned, r["slo_attainment"]) is None,
                }
            )
        days.append(
            {
                "day": day,
                "static_max": grids[day]["static_max"],
                "planner_grid": points,
                "planner_frontier": frontier(points),
                "controllers": controllers,
            }
        )
    return {"category": config.workload.category, "mean_rps": config.workload.mean_rps, "days": days}


def _rows(paths: list[str]) -> list[dict[str, Any]]:
    """The rows of every ``greenrl.fleet.evaluate --save`` file given, in order, each (day, policy) once.

    A row repeated by a later file (static-max, saved with every run) is kept once; a later file's other
    figures under a name already seen (``learned-0`` of two runs) would be taken for the same policy, so
    they are refused.
    """
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            key = (row["day"], row["policy"])
            if key not in seen:
                seen[key] = row
            elif seen[key]["energy_kwh"] != row["energy_kwh"]:
                raise InputError(
                    path,
                    "policy",
                    f"{key[1]!r} on day {key[0]} differs from an earlier file's",
                    "pass rows of one load, each policy name in one file",
                )
    return list(seen.values())


def _grids_by_day(paths: list[str], config: FleetConfig | None = None) -> dict[int, dict[str, Any]]:
    """Each day's grid from step-1 or step-3 files; a day in several files gets all their points.

    With ``config`` (step 3, which plays more planner days), every file must hold that fleet's load.
    """
    grids: dict[int, dict[str, Any]] = {}
    for path in paths:
        saved = json.loads(Path(path).read_text())
        if config is not None and saved["category"] != config.workload.category:
            raise InputError(
                path, "category", f"{saved['category']!r}, not {config.workload.category!r}", "pass --category"
            )
        if config is not None and saved.get("mean_rps", config.workload.mean_rps) != config.workload.mean_rps:
            raise InputError(
                path, "mean_rps", f"{saved['mean_rps']}, not {config.workload.mean_rps}", "pass the grid's --mean-rps"
            )
        for d in saved["days"]:
            if d["day"] in grids:
                grids[d["day"]]["planner_grid"] += d["planner_grid"]
            else:
                grids[d["day"]] = {"static_max": d["static_max"], "planner_grid": list(d["planner_grid"])}
    return grids


def _play(sim: FleetSim, trace: Trace, day: int, headroom_frac: float, margin_frac: float) -> dict[str, Any]:
    """One planner day at these knobs: its figures, and a progress line."""
    row = run_policy(sim, PlannerFleet(headroom_frac=headroom_frac, margin_frac=margin_frac), trace)
    figures = {k: row[k] for k in FIGURES}
    print(json.dumps({"day": day, "headroom_frac": headroom_frac, "margin_frac": margin_frac} | figures), flush=True)
    return figures


if __name__ == "__main__":
    main()
