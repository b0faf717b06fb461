"""``python -m greenrl.evaluate``: policies x scenarios x rate scales x (windows x seeds) -> KPI tables with 95% CIs.

Every policy (baselines by name, exported controller folders, SB3 ``.zip`` models) runs on the same
held-out evaluation windows. A *sample* is one (window, seed) pair. With ``--arrivals resample`` (the
default) each sample replays a Poisson bootstrap of the window's requests (every request appears
Poisson(1) times, extra copies shifted by up to +-5 s), seeded by (seed, window), so deterministic
policies see workload variation and the CIs say how much a result depends on it; with ``exact`` every
sample is the window itself and seeds vary only stochastic policies (``random``). KPIs are computed
per sample and summarized as mean +- the half-width of a t-distribution 95% interval over samples;
``saving_vs_static_max`` and ``slo_delta_vs_static_max`` (attainment minus static-max's) are paired
(same sample), so their intervals exclude the workload variation both policies share.
Generalization: ``--rate-scales`` speeds the arrivals up or slows them down (episodes are lengthened
or shortened to cover the scaled window plus the scenario's drain time), ``--scenarios code diurnal``
evaluates on the other Azure trace and the synthetic day; each (scenario, rate scale) gets its own table.

Outputs (``--out``, default ``runs/eval/<timestamp>/``): ``results.json`` (``--json`` writes a copy
elsewhere), ``results.csv``, ``results.md``, ``pareto_<scenario>_x<rate>.png`` (energy vs SLO
attainment) and ``timeline_<policy>_<scenario>_x<rate>.png`` (load, knobs, power, TTFT/TBT vs SLO).

This module runs the grid and the command line; each step has its own module:
:mod:`greenrl.evaluate_policies` (names and paths -> policies), :mod:`greenrl.evaluate_cases` (windows
x seeds -> samples), :mod:`greenrl.evaluate_kpis` (an episode -> KPIs; samples -> means and CIs) and
:mod:`greenrl.evaluate_report` (tables, files and plots).

Public names: main, evaluate, DEFAULT_SEEDS.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from greenrl import __version__
from greenrl.baselines import BASELINES
from greenrl.core import Policy
from greenrl.errors import InputError, exit_on_input_error
from greenrl.evaluate_cases import Arrivals, build_cases, case_env
from greenrl.evaluate_kpis import Episode, Evaluation, pair_with_reference, run_episode, summarize
from greenrl.evaluate_policies import PolicySpec, default_policies, is_deterministic, load_policy, resolve_policies
from greenrl.evaluate_report import SCHEMA, print_tables, write_outputs

__all__ = ["DEFAULT_SEEDS", "evaluate", "main"]

DEFAULT_SEEDS = 5
"""Seeds per evaluation window."""


def evaluate(
    policies: list[str] | None = None,
    scenarios: list[str] | None = None,
    seeds: int = DEFAULT_SEEDS,
    rate_scales: list[float] | None = None,
    arrivals: Arrivals = "resample",
    progress: bool = True,
    trust_pickle: bool = False,
) -> Evaluation:
    """Evaluate every policy on every (scenario, rate scale) over windows x seeds.

    Args:
        policies: baseline names, controller folders, SB3 zips (default: ``default_policies()``).
        scenarios: scenario names or YAML paths (default: ``["default"]``).
        seeds: seeds per evaluation window.
        rate_scales: arrival-rate multipliers on top of each scenario's own evaluation scale (default: [1]).
        arrivals: ``resample`` (Poisson bootstrap per sample) or ``exact`` (the window itself).
        progress: show a rich progress bar (on stderr).
        trust_pickle: load SB3 zips that no run folder vouches for (a zip is a pickle: it runs code).

    Raises:
        InputError: unknown policy or scenario, a controller or model that does not fit a scenario's
            knobs or observation, a scenario without evaluation windows, bad seeds or rate scales.
    """
    started = time.perf_counter()
    specs = resolve_policies(policies if policies is not None else default_policies(scenarios), trust_pickle)
    scenario_names = scenarios or ["default"]
    scales = rate_scales or [1.0]
    grid = [(s, r, build_cases(s, r, seeds, arrivals)) for s in scenario_names for r in scales]
    loaded: dict[tuple[str, str], Policy] = {}
    for name, _, cases in grid:  # check every controller against every scenario before running anything
        probe = case_env(cases[0])
        for spec in specs:
            if spec.kind != "baseline" and (spec.label, name) not in loaded:
                loaded[(spec.label, name)] = load_policy(spec, probe, 0)
    reference = PolicySpec("static-max", "baseline", "static-max")
    run_specs = specs if any(s.label == "static-max" for s in specs) else [*specs, reference]
    total = sum(len(cases) for _, _, cases in grid) * len(run_specs)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    episodes: list[Episode] = []
    records: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("evaluating", total=total)
        for name, scale, cases in grid:
            by_policy: dict[str, list[Episode]] = {}
            for spec in run_specs:
                bar.update(task, description=f"{spec.label} on {name} x{scale:g}")
                runs: list[Episode] = []
                done_once: dict[int, Episode] = {}
                for case in cases:
                    policy_obj = loaded.get((spec.label, name))
                    if arrivals == "exact" and is_deterministic(spec) and case.window in done_once:
                        copy_of = done_once[case.window]  # same requests, same actions: the same episode
                        runs.append(replace(copy_of, seed=case.seed, kpis=dict(copy_of.kpis), wall_s=0.0))
                    else:
                        if policy_obj is None or spec.kind == "baseline":
                            policy_obj = load_policy(spec, case_env(case), case.seed)
                        runs.append(run_episode(policy_obj, case, spec.label))
                        done_once.setdefault(case.window, runs[-1])
                    bar.advance(task)
                by_policy[spec.label] = runs
                timings[f"{spec.label}|{name}|x{scale:g}"] = round(sum(e.wall_s for e in runs), 3)
            for spec in specs:
                pair_with_reference(by_policy[spec.label], by_policy["static-max"])
                records.append(summarize(spec, by_policy[spec.label], arrivals))
                episodes += by_policy[spec.label]
    meta = {
        "schema": SCHEMA,
        "greenrl_version": __version__,
        "command": shlex.join([sys.executable, "-m", "greenrl.evaluate", *sys.argv[1:]]),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - started, 2),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "policies": {s.label: {"kind": s.kind, "source": s.source} for s in specs},
        "scenarios": scenario_names,
        "rate_scales": scales,
        "seeds": seeds,
        "arrivals": arrivals,
        "ci": "mean +- t(0.975, n-1) * sd / sqrt(n) over samples (windows x seeds)",
        "timings_s": timings,
    }
    return Evaluation(records, episodes, meta)


# ------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.evaluate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--policies",
        nargs="+",
        default=None,
        help=f"baselines ({', '.join(BASELINES)}), controller folders or SB3 .zip files "
        "(default: checkpoints/default/* controllers plus every baseline). An SB3 .zip is a pickle: loading it "
        "runs any code inside, so a zip is loaded only from a run folder whose pickle_sha256.json records its "
        "hash, or with --trust-pickle",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load SB3 .zip files that no run folder vouches for: only zips from people you trust (it runs their code)",
    )
    p.add_argument("--scenarios", nargs="+", default=None, help="scenario names or YAML paths (default: default)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds per evaluation window (default 5)")
    p.add_argument("--rate-scales", nargs="+", type=float, default=None, help="arrival-rate multipliers (default 1)")
    p.add_argument(
        "--arrivals",
        choices=["resample", "exact"],
        default="resample",
        help="resample: Poisson bootstrap of the window per sample (default); exact: the window itself",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/eval/<timestamp>)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results here")
    p.add_argument(
        "--timeline", default=None, help="policy whose timeline to plot (default: first controller, else oracle)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags, evaluate, write the outputs and print the tables."""
    args = _parser().parse_args(argv)
    chosen = args.policies if args.policies is not None else default_policies(args.scenarios)
    labels = [s.label for s in resolve_policies(chosen, args.trust_pickle)]
    timeline = args.timeline
    if timeline is not None and timeline not in labels:
        raise InputError("--timeline", "timeline", f"{timeline!r} is not evaluated", f"use one of {', '.join(labels)}")
    result = evaluate(
        chosen,
        args.scenarios,
        args.seeds,
        args.rate_scales,
        args.arrivals,
        progress=not args.no_progress,
        trust_pickle=args.trust_pickle,
    )
    if timeline is None:
        controllers = [r["policy"] for r in result.records if r["policy_kind"] != "baseline"]
        timeline = controllers[0] if controllers else ("oracle" if "oracle" in labels else labels[0])
    out = args.out or Path("runs") / "eval" / datetime.now().strftime("%Y%m%d-%H%M%S")
    written = write_outputs(result, out, args.json, plots=not args.no_plots, timeline_policy=timeline)
    print_tables(result.records)
    print(f"wrote {', '.join(str(p) for p in written)} in {result.meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
