"""``python -m greenrl.sweep``: training sweeps (scenarios x seeds x SLO weights) and evaluation grids, serial or Ray.

Each cell is one ``python -m greenrl.train --scenario S --seed K --slo-weight W ...`` run (the same
function, :func:`greenrl.train.train_argv`, with ``--torch-threads 1``) in its own run folder under
``--out``. ``--evaluate`` then runs :func:`greenrl.evaluate.evaluate` on each trained controller (and
on the baselines) over the held-out windows, distributed the same way. The report gives, per
(scenario, SLO weight), the mean and Student-t 95% confidence interval over training seeds of the
energy saving vs static-max, the SLO attainment and its difference from static-max's.

A sweep resumes: a cell whose run folder has a summary (and an evaluation, with ``--evaluate``) is
skipped. Backends: ``serial`` (this process) or ``ray`` (a local instance, or a cluster with
``--ray-address``); by default Ray when it is installed (``pip install 'greenrl[sweep]'``).

Public names: Cell, EvalJob, SweepGrid, parse_seeds, parse_grid, train_cell, evaluate_cell, finished_run, run_sweep,
main.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.sweep_backend import RAY_TIMEOUT_S, TASK_THREADS, Backend, make_backend
from greenrl.sweep_report import EVAL_FILE, WORKER_FILE, build_report, print_report, write_report

__all__ = [
    "Cell",
    "EvalJob",
    "SweepGrid",
    "evaluate_cell",
    "finished_run",
    "main",
    "parse_grid",
    "parse_seeds",
    "run_sweep",
    "train_cell",
]

_STAMP = r"\d{8}-\d{6}"


@dataclass(frozen=True, slots=True)
class Cell:
    """One training run of a sweep.

    Args:
        scenario: scenario name, or the absolute path of a scenario YAML.
        scenario_name: the scenario's name (its file stem): the run folder's parent under ``out``.
        seed: training seed.
        slo_weight: ``--slo-weight`` (None: the scenario's own ``reward.slo_weight``).
        agent: ``maskable_ppo`` or ``ppo`` (``agents/<agent>.yaml``).
        total_timesteps: ``--total-timesteps`` (None: the agent file's).
        out: absolute folder of the sweep.
    """

    scenario: str
    scenario_name: str
    seed: int
    slo_weight: float | None
    agent: str
    total_timesteps: int | None
    out: str

    @property
    def run_name(self) -> str:
        """The run folder's name without its time stamp (as ``greenrl.train`` names it)."""
        w = "" if self.slo_weight is None else f"_w{self.slo_weight:g}"
        return f"{self.agent}{w}_s{self.seed}"

    def train_argv(self) -> list[str]:
        """The ``python -m greenrl.train`` flags of this cell."""
        argv = ["--scenario", self.scenario, "--agent", self.agent, "--seed", str(self.seed)]
        if self.slo_weight is not None:
            argv += ["--slo-weight", f"{self.slo_weight:g}"]
        if self.total_timesteps is not None:
            argv += ["--total-timesteps", str(self.total_timesteps)]
        return [*argv, "--torch-threads", str(TASK_THREADS), "--out", self.out, "--no-progress"]

    def label(self) -> str:
        """Short text for progress lines, e.g. ``tiny w50 s3``."""
        w = "" if self.slo_weight is None else f" w{self.slo_weight:g}"
        return f"{self.scenario_name}{w} s{self.seed}"


@dataclass(frozen=True, slots=True)
class SweepGrid:
    """The cells of a sweep (scenarios x SLO weights x seeds, in that order)."""

    cells: tuple[Cell, ...]
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    slo_weights: tuple[float | None, ...]


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``0-4``, ``0,1,2`` or a mix (``0-2,7``), without repeats, in the order given.

    Example:
        >>> parse_seeds("0-2,7")
        [0, 1, 2, 7]

    Raises:
        InputError: an empty list, a range whose end is below its start, anything but non-negative integers.
    """
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise InputError("--seeds", "seeds", f"{part!r} in {text!r} is not a seed or a range", "e.g. 0-4 or 0,1,2")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise InputError("--seeds", "seeds", f"range {part!r} ends below its start", f"write {hi}-{lo}")
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    return seeds


def _split(flag: str, text: str) -> list[str]:
    items = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in items):
        raise InputError(flag, flag.removeprefix("--"), f"{text!r} is empty or has an empty item", "e.g. a,b")
    return list(dict.fromkeys(items))


def _weight(text: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise InputError("--slo-weights", "slo_weights", f"{text!r} is not a number", "e.g. 50,100") from None
    if not (math.isfinite(w) and w >= 0):
        raise InputError("--slo-weights", "slo_weights", f"{text} is not >= 0", "e.g. 50,100")
    return w


def parse_grid(
    scenarios: str, seeds: str, slo_weights: str | None, agent: str, total_timesteps: int | None, out: Path
) -> SweepGrid:
    """Check every flag and scenario (and the agent file for each) before anything runs; the cells.

    Raises:
        InputError: an empty list, a malformed seed range, an unknown scenario or agent, a negative
            SLO weight, ``total_timesteps`` below 1.
    """
    from greenrl.agent_config import agent_config
    from greenrl.env.scenario import load_scenario

    names = _split("--scenarios", scenarios)
    seed_list = parse_seeds(seeds)
    weights: list[float | None] = (
        [None] if slo_weights is None else list(dict.fromkeys(_weight(w) for w in _split("--slo-weights", slo_weights)))
    )
    if total_timesteps is not None and total_timesteps < 1:
        raise InputError(
            "--total-timesteps", "total_timesteps", f"must be at least 1, got {total_timesteps}", "e.g. 4096"
        )
    resolved: list[tuple[str, str]] = []
    for name in names:
        if name.startswith("fleet-"):  # a fleet (envs/fleets/<name>.yaml): trained by greenrl.fleet.learn
            from greenrl.fleet.config import load_fleet

            load_fleet(name.removeprefix("fleet-"))
            agent_config(agent, name)
            resolved.append((name, name))
            continue
        try:
            scenario = load_scenario(name)
        except InputError as err:
            if err.where != "--scenario":
                raise
            raise InputError("--scenarios", err.field, err.problem, err.fix) from None
        agent_config(agent, scenario.name)
        as_given = name if Path(name).suffix not in (".yaml", ".yml") else str(Path(name).resolve())
        resolved.append((as_given, scenario.name))
    root = str(Path(out).resolve())
    cells = tuple(
        Cell(given, stem, seed, w, agent, total_timesteps, root)
        for given, stem in resolved
        for w in weights
        for seed in seed_list
    )
    return SweepGrid(cells, tuple(stem for _, stem in resolved), tuple(seed_list), tuple(weights))


def finished_run(cell: Cell) -> Path | None:
    """The newest run folder of ``cell`` under its sweep that has a summary and this cell's timesteps."""
    parent = Path(cell.out) / cell.scenario_name
    if not parent.is_dir():
        return None
    pattern = re.compile(re.escape(cell.run_name) + "_" + _STAMP)
    for run in sorted((p for p in parent.iterdir() if pattern.fullmatch(p.name)), reverse=True):
        if not (run / "summary.json").is_file() or not (run / "controller" / "controller.json").is_file():
            continue
        if cell.total_timesteps is not None:
            import yaml

            config = yaml.safe_load((run / "config.yaml").read_text())
            if int(config["hyperparameters"]["total_timesteps"]) != cell.total_timesteps:
                continue
        return run
    return None


def _policy_sha256(run: Path) -> str:
    return str(json.loads((run / "controller" / "controller.json").read_text())["policy"]["sha256"])


def train_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell (a Ray task or a serial call): ``greenrl.train`` with its flags, stdout kept in train.log."""
    import torch

    from greenrl.train import train_argv

    threads = torch.get_num_threads()
    started = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            run = train_argv(cell.train_argv())
    finally:
        torch.set_num_threads(threads)  # the serial backend shares this process with its caller
    atomic_write_text(run / "train.log", log.getvalue())
    if not (run / "summary.json").is_file():  # greenrl.train returns without a summary only when interrupted
        raise KeyboardInterrupt(f"{run}: training interrupted before its summary")
    worker = {"host": platform.node(), "ray_node_id": _ray_node_id(), "wall_s": round(time.perf_counter() - started, 1)}
    atomic_write_text(run / WORKER_FILE, json.dumps(worker) + "\n")
    return {"run": str(run), "policy_sha256": _policy_sha256(run), **worker}


def _ray_node_id() -> str | None:
    """The Ray node this task runs on (None outside Ray): which machine of a cluster trained a cell."""
    if "ray" not in sys.modules:
        return None
    import ray

    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None


def _baselines(text: str, scenario: str) -> tuple[str, ...]:
    from greenrl.baselines import BASELINES
    from greenrl.env.scenario import load_scenario

    if text == "none":
        return ()
    if text == "all":
        loaded = load_scenario(scenario)
        return tuple(n for n, cls in BASELINES.items() if cls.applies_to(loaded))
    names = _split("--baselines", text)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise InputError("--baselines", "baselines", f"unknown baseline {unknown[0]!r}", f"use {', '.join(BASELINES)}")
    return tuple(names)


def run_sweep(
    grid: SweepGrid,
    backend: Backend,
    evaluate: bool = False,
    eval_seeds: int = 5,
    baselines: str = "static-max,planner",
    say: Any = print,
) -> tuple[dict[str, Any], list[str]]:
    """Train the cells not finished yet, evaluate them with ``evaluate``; the report and the failed cells."""
    started = time.perf_counter()
    failures: list[str] = []
    todo: list[Cell] = []
    for cell in grid.cells:
        run = finished_run(cell)
        if run is None:
            todo.append(cell)
        else:
            say(f"skip {cell.label()}: finished in {run}")
    say(f"training {len(todo)} of {len(grid.cells)} cells on {backend.description}")
    for cell, result in backend.map(train_cell, todo):
        if isinstance(result, BaseException):
            failures.append(f"train {cell.label()}: {type(result).__name__}: {result}")
            say(f"FAILED {failures[-1]}")
        else:
            say(f"trained {cell.label()} in {result['wall_s']} s on {result['host']}: {result['run']}")
    runs = {cell: finished_run(cell) for cell in grid.cells}
    if evaluate:
        _evaluate_runs(grid, runs, backend, eval_seeds, baselines, failures, say)
    meta = {
        "command": shlex.join([sys.executable, "-m", "greenrl.sweep", *sys.argv[1:]]),
        "backend": backend.description,
        "torch_threads_per_task": TASK_THREADS,
        "wall_s": round(time.perf_counter() - started, 1),
        "eval_seeds": eval_seeds if evaluate else None,
    }
    return build_report(grid, runs, meta), failures


@dataclass(frozen=True, slots=True)
class EvalJob:
    """One evaluation task: ``policies`` on ``scenario`` with ``seeds`` per held-out window, saved to ``target``."""

    scenario: str
    target: str
    seeds: int
    policies: tuple[str, ...]


def evaluate_cell(job: EvalJob) -> list[dict[str, Any]]:
    """Evaluate a controller folder (or baselines) on one scenario (a Ray task or a serial call): the records."""
    import torch

    from greenrl.evaluate import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(TASK_THREADS)
    try:
        return evaluate(list(job.policies), [job.scenario], job.seeds, progress=False).records
    finally:
        torch.set_num_threads(threads)


def _evaluate_runs(
    grid: SweepGrid,
    runs: dict[Cell, Path | None],
    backend: Backend,
    eval_seeds: int,
    baselines: str,
    failures: list[str],
    say: Any,
) -> None:
    """Evaluate every finished cell's controller and the baselines of each scenario, skipping those done."""
    if eval_seeds < 1:
        raise InputError("--eval-seeds", "eval_seeds", f"must be at least 1, got {eval_seeds}", "e.g. 5")
    jobs: list[EvalJob] = []
    for cell, run in runs.items():
        if run is None:
            continue
        job = EvalJob(cell.scenario, str(run / EVAL_FILE), eval_seeds, (str(run / "controller"),))
        if _done(job):
            say(f"skip evaluating {cell.label()}: done in {job.target}")
        else:
            jobs.append(job)
    for scenario, name in dict.fromkeys((c.scenario, c.scenario_name) for c in grid.cells):
        names = _baselines(baselines, scenario)
        job = EvalJob(scenario, str(Path(grid.cells[0].out) / "baselines" / f"{name}.json"), eval_seeds, names)
        if names and _done(job):
            say(f"skip evaluating baselines on {name}: done in {job.target}")
        elif names:
            jobs.append(job)
    say(f"evaluating {len(jobs)} jobs ({eval_seeds} seeds per held-out window) on {backend.description}")
    for job, records in backend.map(evaluate_cell, jobs):
        if isinstance(records, BaseException):
            failures.append(f"evaluate {job.target}: {type(records).__name__}: {records}")
            say(f"FAILED {failures[-1]}")
            continue
        payload = {"eval_seeds": job.seeds, "policies": list(job.policies), "records": _finite(records)}
        atomic_write_text(job.target, json.dumps(payload, indent=1) + "\n")
        say(f"evaluated {job.target}")


def _done(job: EvalJob) -> bool:
    path = Path(job.target)
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())
    return bool(saved.get("eval_seeds") == job.seeds and saved.get("policies") == list(job.policies))


def _finite(value: Any) -> Any:
    """NaN and infinities -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="tiny", help="comma-separated scenario names or YAML paths (default tiny)")
    p.add_argument("--seeds", default="0-4", help="training seeds: 0-4, 0,1,2 or a mix (default 0-4)")
    p.add_argument("--slo-weights", default=None, help="comma-separated --slo-weight values (default: the scenario's)")
    p.add_argument("--agent", default="maskable_ppo", help="agents/<agent>.yaml (default maskable_ppo)")
    p.add_argument("--total-timesteps", type=int, default=None, help="per cell (default: the agent file's)")
    p.add_argument("--out", type=Path, default=None, help="sweep folder (default runs/sweeps/<scenarios>)")
    p.add_argument(
        "--backend", choices=["serial", "ray"], default=None, help="default: ray when installed, else serial"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="a Ray cluster's head, host:port (default: $RAY_ADDRESS, else a new local instance)",
    )
    p.add_argument(
        "--ray-timeout",
        type=float,
        default=RAY_TIMEOUT_S,
        help=f"seconds a --ray-address may take to answer as a Ray head (default {RAY_TIMEOUT_S:g})",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--evaluate", action="store_true", help="also evaluate each controller and the baselines")
    p.add_argument("--eval-seeds", type=int, default=5, help="evaluation seeds per held-out window (default 5)")
    p.add_argument(
        "--baselines",
        default="static-max,planner",
        help="baselines evaluated with --evaluate: comma-separated names, all (those that apply) or none",
    )
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the sweep, write report.json and report.csv, print the table; 1 if a cell failed."""
    args = _parser().parse_args(argv)
    out = args.out or Path("runs") / "sweeps" / args.scenarios.replace(",", "+").replace("/", "_")
    grid = parse_grid(args.scenarios, args.seeds, args.slo_weights, args.agent, args.total_timesteps, out)
    if args.evaluate:
        if args.eval_seeds < 1:
            raise InputError("--eval-seeds", "eval_seeds", f"must be at least 1, got {args.eval_seeds}", "e.g. 5")
        for scenario in grid.scenarios:
            if scenario.startswith("fleet-"):
                raise InputError(
                    "--evaluate",
                    "evaluate",
                    f"{scenario} is a fleet: each run's summary.json already holds its held-out days",
                    "leave --evaluate out, or evaluate a run with python -m greenrl.fleet.evaluate --checkpoint",
                )
            _baselines(args.baselines, scenario)
    backend = make_backend(
        args.backend, args.ray_address, args.num_cpus, args.ray_timeout
    )  # before anything is written
    try:
        report, failures = run_sweep(grid, backend, args.evaluate, args.eval_seeds, args.baselines)
    except KeyboardInterrupt:
        print("interrupted: no report written; run the same command to resume (finished cells are skipped)")
        return 130
    finally:
        backend.close()
    written = write_report(report, out)
    print_report(report)
    print(f"wrote {', '.join(str(p) for p in written)}")
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
