"""A day of the fleet under each baseline: energy (kWh), SLO attainment, parked node-hours.

Run: ``python -m greenrl.fleet.evaluate --fleet default --policies static-max autoscaler planner oracle`` (the
node scenario's held-out days, each whole; prints a markdown table and, with ``--json``, one JSON object);
``--checkpoint checkpoints/fleet-default/maskable_ppo_s0`` adds a learned controller, ``--category
language/m-small`` replaces the load with a ServeGen category at the same mean rate (``--mean-rps 2`` at
another), ``--days 10 11`` plays other ServeGen days instead of the held-out ones
(``greenrl.fleet.days.fleet_load_on_day``).

Public names: fleet_under_load, plot_timelines, plot_pareto, seed_summary, main (the days: ``greenrl.fleet.days``;
one policy over one day: ``greenrl.fleet.rollout``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greenrl.errors import InputError, exit_on_input_error
from greenrl.fleet.cluster import FleetSim
from greenrl.fleet.config import FleetConfig, load_fleet
from greenrl.fleet.days import fleet_day, fleet_load_on_day, held_out_day_number
from greenrl.fleet.policies import FLEET_POLICIES, FleetPolicy, make_policy
from greenrl.fleet.rollout import run_policy
from greenrl.ioutil import atomic_savefig, atomic_write_text
from greenrl.workload import servegen_categories

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["fleet_under_load", "main", "plot_pareto", "plot_timelines", "seed_summary"]

logger = logging.getLogger(__name__)


def plot_timelines(timelines: dict[str, dict[str, list[Any]]], pools: list[str], path: Path, every: int = 10) -> None:
    """One day under each policy: arrivals per pool, nodes on, fleet power; ``every`` intervals averaged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7))
    axes = fig.subplots(3, 1, sharex=True)
    first = next(iter(timelines.values()))
    n = len(first["t_end_s"]) // every * every
    hours = np.array(first["t_end_s"][:n:every]) / 3600.0
    arrivals = np.array(first["pool_arrivals"][:n], dtype=float).reshape(n // every, every, -1).sum(axis=1)
    span_s = every * (first["t_end_s"][1] - first["t_end_s"][0]) if n > 1 else 1.0
    for i, name in enumerate(pools):
        axes[0].step(hours, arrivals[:, i] / span_s, where="pre", label=f"pool {name}")
    axes[0].set_ylabel("arrivals (req/s)")
    axes[0].legend(fontsize=7)
    for policy, t in timelines.items():
        axes[1].step(hours, np.array(t["nodes_on"][:n], dtype=float).reshape(-1, every).mean(axis=1), label=policy)
        axes[2].step(hours, np.array(t["power_w"][:n]).reshape(-1, every).mean(axis=1) / 1000.0, label=policy)
    axes[1].set_ylabel("nodes on")
    axes[1].legend(fontsize=7)
    axes[2].set_ylabel("fleet power (kW)")
    axes[2].set_xlabel("hour of the day")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)


def plot_pareto(
    rows: list[dict[str, Any]], path: Path, planner_frontiers: dict[int, list[dict[str, Any]]] | None = None
) -> Figure:
    """Energy saved vs static-max against SLO attainment, one panel per day, one point per policy.

    Learned controllers (``learned-<i>``, e.g. one per training seed) share one marker; static-max's
    attainment is a dashed line: points right of it and high up are what the issue asks for.
    ``planner_frontiers`` (day -> ``greenrl.fleet.frontier.frontier`` points of a planner grid, e.g. from
    ``benchmarks/fleet_planner_frontier.py``) adds the planner's tuned frontier as a line. Returns the figure.
    """
    from matplotlib.figure import Figure

    days = sorted({r["day"] for r in rows})
    fig = Figure(figsize=(5 * len(days), 4.2))
    axes = fig.subplots(1, len(days), squeeze=False)[0]
    for ax, day in zip(axes, days, strict=True):
        mine = [r for r in rows if r["day"] == day]
        ref = next((r for r in mine if r["policy"] == "static-max"), None)
        if ref is None:
            continue
        learned = [r for r in mine if r["policy"].startswith("learned")]
        for r in mine:
            if r in learned:
                continue
            x, y = 100 * r["slo_attainment"], 100 * (1 - r["energy_kwh"] / ref["energy_kwh"])
            ax.scatter([x], [y], marker="s" if "+guard" in r["policy"] else "o")
            ax.annotate(r["policy"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if learned:
            ax.scatter(
                [100 * r["slo_attainment"] for r in learned],
                [100 * (1 - r["energy_kwh"] / ref["energy_kwh"]) for r in learned],
                marker="*",
                s=90,
                color="black",
                label=f"learned ({len(learned)} controllers)",
            )
        front = sorted((planner_frontiers or {}).get(day, []), key=lambda q: q["slo_attainment"])
        if front:
            ax.plot(
                [100 * q["slo_attainment"] for q in front],
                [100 * (1 - q["energy_kwh"] / ref["energy_kwh"]) for q in front],
                "-.",
                lw=1.0,
                color="tab:blue",
                marker=".",
                label="planner frontier (every headroom x margin played)",
            )
        if learned or front:
            ax.legend(fontsize=7, loc="best")
        ax.axvline(100 * ref["slo_attainment"], ls="--", lw=0.8, color="grey")
        ax.set_title(f"day {day}", fontsize=9)
        ax.set_xlabel("SLO attainment (%)")
        ax.set_ylabel("energy saved vs static-max (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    return fig


def fleet_under_load(
    fleet: str, category: str | None, mean_rps: float | None, rebalance_queue: int | None = None
) -> FleetConfig:
    """The fleet file ``fleet`` with the command line's ``--category``, ``--mean-rps`` and ``--rebalance-queue``.

    None keeps the file's value. Raises ``InputError`` naming the flag for an unknown category, a rate that
    is not positive or a negative queue threshold.
    """
    config = load_fleet(fleet)
    if rebalance_queue is not None:
        if rebalance_queue < 0:
            raise InputError(
                "--rebalance-queue", "guard_rebalance_queue", f"{rebalance_queue} is negative", "use 0 (off) or e.g. 32"
            )
        config = config.with_guard_rebalance(rebalance_queue)
    if category is None and mean_rps is None:
        return config
    categories = servegen_categories()
    if category is not None and category not in categories:
        raise InputError(
            "--category", "category", f"unknown ServeGen category {category!r}", f"use one of {categories}"
        )
    if mean_rps is not None and not (math.isfinite(mean_rps) and mean_rps > 0):
        raise InputError("--mean-rps", "mean_rps", f"must be a positive rate, got {mean_rps}", "e.g. 2.0")
    return config.with_category(category or config.workload.category, mean_rps)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Evaluate fleet baselines on held-out days; print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleet", default="default")
    p.add_argument(
        "--policies",
        nargs="+",
        default=["static-max", "autoscaler", "planner", "oracle"],
        help=f"{', '.join(FLEET_POLICIES)} (default: all but planner-history); <name>+guard adds the learned "
        "controller's fast node rule",
    )
    days = p.add_mutually_exclusive_group()
    days.add_argument("--windows", nargs="+", type=int, default=None, help="evaluation window indices (default: all)")
    days.add_argument(
        "--days",
        nargs="+",
        type=int,
        default=None,
        help="ServeGen days instead (whole; validation days 10-11 as selection plays them, any other with seed "
        "30,000 + day), e.g. --days 10 11, or --days 0 for reason/deepseek-r1",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeline", type=Path, default=None, help="plot the first window's day per policy to this PNG")
    p.add_argument("--pareto", type=Path, default=None, help="plot energy saved vs SLO attainment per day to this PNG")
    p.add_argument("--save", type=Path, default=None, help="also write the rows as JSON to this file")
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a learned fleet controller (an exported folder, or an SB3 .zip) to rank with the baselines; repeatable",
    )
    p.add_argument(
        "--category",
        default=None,
        help="replace the fleet's ServeGen category (e.g. language/m-small), at the same mean rate unless --mean-rps",
    )
    p.add_argument(
        "--mean-rps",
        type=float,
        default=None,
        help="scale the load to this mean rate (requests/s; default: the fleet file's), e.g. a lighter unseen category",
    )
    p.add_argument(
        "--rebalance-queue",
        type=int,
        default=None,
        help="the guard moves a node into a pool whose every node queues this many requests, from an idle pool "
        "(control.guard_rebalance_queue; default: the fleet file's, 0 = off), e.g. 32",
    )
    p.add_argument("--duration-s", type=float, default=None, help="only each day's first seconds (default: whole)")
    args = p.parse_args(argv)
    config = fleet_under_load(args.fleet, args.category, args.mean_rps, args.rebalance_queue)
    if args.days is not None:
        loads = [(day, fleet_load_on_day(config, day, args.duration_s)) for day in args.days]
    else:
        windows = args.windows if args.windows is not None else range(len(config.scenario.workload.eval_windows_s))
        loads = [(held_out_day_number(config, w), fleet_day(config, w, args.duration_s)) for w in windows]
    sim = FleetSim(config)
    policies: list[FleetPolicy] = []
    for name in args.policies:
        if name.endswith("+guard"):  # a baseline with the learned controller's fast node rule
            from greenrl.fleet.learn import GuardedFleet

            policies.append(GuardedFleet(make_policy(name.removesuffix("+guard"))))
        else:
            policies.append(make_policy(name))
    if args.checkpoint:
        from greenrl.fleet.learn import load_learned

        for i, path in enumerate(args.checkpoint):
            policies.append(load_learned(path, "learned" if len(args.checkpoint) == 1 else f"learned-{i}"))
    rows = []
    timelines: dict[str, dict[str, list[Any]]] = {}
    for i, (day, trace) in enumerate(loads):
        for policy in policies:
            timeline = timelines.setdefault(policy.name, {}) if i == 0 else None
            row = {"day": day, **run_policy(sim, policy, trace, timeline=timeline)}
            rows.append(row)
            logger.info("%s", row)
    if args.timeline is not None:
        plot_timelines(timelines, [pool.name for pool in config.pools], args.timeline)
    if args.pareto is not None:
        plot_pareto(rows, args.pareto)
    if args.save is not None:
        atomic_write_text(args.save, json.dumps(rows, indent=1) + "\n")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    ref = {r["day"]: r["energy_kwh"] for r in rows if r["policy"] == "static-max"}
    rebalance = config.control.guard_rebalance_queue
    guard = f", guard rebalances at {rebalance} queued" if rebalance else ""
    print(
        f"fleet {config.name}, load {config.workload.category} at {config.workload.mean_rps:g} requests/s (mean){guard}"
    )
    print("| day | policy | energy (kWh) | saving vs static-max | SLO attainment | missed | nodes on (mean) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        saving = f"{100 * (1 - r['energy_kwh'] / ref[r['day']]):.1f}%" if r["day"] in ref else "-"
        print(
            f"| {r['day']} | {r['policy']} | {r['energy_kwh']:.1f} | {saving} | {100 * r['slo_attainment']:.2f}% "
            f"| {r['missed']} | {r['mean_nodes_on']:.2f} |"
        )
    for line in seed_summary(rows):
        print(line)
    return 0


def seed_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per day, the learned controllers (``learned-<i>``: one per training seed) as mean +- Student-t 95% CI.

    Markdown lines: energy saved vs static-max and SLO attainment (percent) over the controllers, and how
    many of them beat or tie static-max's attainment; nothing with fewer than two controllers.
    """
    from greenrl.evaluate_kpis import mean_ci95

    lines: list[str] = []
    for day in sorted({r["day"] for r in rows}):
        ref = next((r for r in rows if r["day"] == day and r["policy"] == "static-max"), None)
        learned = [r for r in rows if r["day"] == day and r["policy"].startswith("learned-")]
        if ref is None or len(learned) < 2:
            continue
        saving, s_ci = mean_ci95([100 * (1 - r["energy_kwh"] / ref["energy_kwh"]) for r in learned])
        att, a_ci = mean_ci95([100 * r["slo_attainment"] for r in learned])
        at_least = sum(r["slo_attainment"] >= ref["slo_attainment"] for r in learned)
        if not lines:
            lines += [
                "",
                "| day | learned controllers | saving vs static-max | SLO attainment | at static-max's attainment |",
            ]
            lines += ["|---|---|---|---|---|"]
        lines.append(
            f"| {day} | {len(learned)} (mean +- 95% CI, Student t) | {saving:.1f} +- {s_ci:.1f}% "
            f"| {att:.2f} +- {a_ci:.2f}% | {at_least} of {len(learned)} |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
