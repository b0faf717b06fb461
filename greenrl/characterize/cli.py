"""``python -m greenrl.characterize``: sweep the simulated node the way the seed study swept a real one.

The command line: validates the flags into a ``SweepSpec``, sweeps, writes the CSV and the plots and
prints the comparison with the study (a table, or one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from greenrl.catalog import load_gpu, load_model
from greenrl.characterize.findings import compare
from greenrl.characterize.grid import (
    _DEFAULT_INPUTS,
    _DEFAULT_OUTPUTS,
    DEFAULT_BATCHES,
    DEFAULT_CLOCKS_MHZ,
    DEFAULT_TPS,
    LENGTH_CLASSES,
    SweepSpec,
)
from greenrl.characterize.measure import sweep
from greenrl.characterize.plots import write_plots
from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.sim.node import MAX_RUNNING
from greenrl.surrogate import Surrogate


def _fmt(key: str, value: float | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if "gain" in key:
        return f"{value:+.0%}"
    if "goodput" in key:
        return f"{value:.2f}x"
    return f"{value:.3f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.characterize", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-2-70b", help="built-in model name/alias (default: llama-2-70b)")
    p.add_argument("--gpu", default="h100-sxm-80gb", help="GPU name or alias (default: h100-sxm-80gb)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the node (default: 8)")
    p.add_argument("--tp", type=int, nargs="+", default=None, help="TP degrees (default: the feasible of 2 4 8)")
    p.add_argument("--clocks", type=int, nargs="+", default=None, help="SM clocks in MHz (default: 1005 .. 1980)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="max_num_seqs values (default: 1 .. 256)")
    names = "/".join(LENGTH_CLASSES)
    p.add_argument("--inputs", nargs="+", default=None, help=f"input length classes, {names} (default: medium)")
    p.add_argument("--outputs", nargs="+", default=None, help=f"output length classes, {names} (default: all three)")
    p.add_argument("--full", action="store_true", help="all 3 input x 3 output classes (flags above still override)")
    p.add_argument(
        "--load", default="saturating", help="'saturating' (default) or a Poisson arrival rate in requests/s"
    )
    p.add_argument("--tbt-slo-s", type=float, default=0.1, help="SLO on mean time between tokens (s, default 0.1)")
    p.add_argument("--generations", type=int, default=3, help="saturating: batches measured after warm-up (default 3)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="Poisson load: warm-up (s, default 60)")
    p.add_argument("--measure-s", type=float, default=300.0, help="Poisson load: measured window (s, default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of arrivals and the node (default 0)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/characterize"), help="output folder (default runs/characterize)"
    )
    p.add_argument("--plots-dir", type=Path, default=None, help="folder for the PNGs (default: --out)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    return p


def _spec(args: argparse.Namespace) -> SweepSpec:
    """Validate the flags into a SweepSpec; bad values raise InputError naming the flag."""
    load_model(args.model, where="--model")
    gpu = load_gpu(args.gpu, where="--gpu")
    if not 1 <= args.gpus <= 64:
        raise InputError("--gpus", "gpus", f"{args.gpus} is out of range", "use 1 to 64 GPUs")
    surrogate = Surrogate()
    feasible = []
    for tp in (1, 2, 4, 8):
        if tp > args.gpus:
            continue
        try:
            surrogate.replica(args.model, gpu, tp)
        except InputError:
            continue
        feasible.append(tp)
    if args.tp is None:
        tps = [tp for tp in DEFAULT_TPS if tp in feasible]
        if not tps:
            raise InputError(
                "--model",
                "model",
                f"{args.model} fits on no TP of 2, 4, 8 of {args.gpus} x {gpu.name}",
                "use more GPUs",
            )
    else:
        tps = list(dict.fromkeys(args.tp))
        bad = [tp for tp in tps if tp not in feasible]
        if bad:
            raise InputError(
                "--tp",
                "tp",
                f"tp={bad[0]} is infeasible for {args.model} on {args.gpus} x {gpu.name}",
                f"use one of {feasible}",
            )
    grid = gpu.supported_clocks_mhz()
    default_clocks = list(DEFAULT_CLOCKS_MHZ)
    if not set(default_clocks) <= set(grid):  # another GPU: six on its grid, from half to the top clock
        half = [c for c in grid if c >= grid[-1] / 2]
        default_clocks = sorted({half[round(i * (len(half) - 1) / 5)] for i in range(6)})
    clocks = list(dict.fromkeys(args.clocks or default_clocks))
    for c in clocks:
        gpu.check_clock(c, "--clocks")
    batches = sorted(set(args.batches or DEFAULT_BATCHES))
    for b in batches:
        if not 1 <= b <= MAX_RUNNING:
            raise InputError("--batches", "max_num_seqs", f"{b} is out of range", f"use 1 to {MAX_RUNNING}")
    classes: dict[str, list[str]] = {}
    for flag, given, default in (
        ("--inputs", args.inputs, _DEFAULT_INPUTS),
        ("--outputs", args.outputs, _DEFAULT_OUTPUTS),
    ):
        chosen = given or (list(LENGTH_CLASSES) if args.full else list(default))
        for name in chosen:
            if name not in LENGTH_CLASSES:
                raise InputError(flag, "length class", f"unknown class {name!r}", f"use {', '.join(LENGTH_CLASSES)}")
        classes[flag] = list(dict.fromkeys(chosen))
    load_rps: float | None = None
    if args.load != "saturating":
        try:
            load_rps = float(args.load)
        except ValueError:
            load_rps = math.nan
        if not (math.isfinite(load_rps) and load_rps > 0):
            raise InputError(
                "--load", "load", f"{args.load!r} is neither 'saturating' nor a rate > 0", "use e.g. --load 2.5"
            )
    for flag, value, ok, need, example in (
        ("--tbt-slo-s", args.tbt_slo_s, args.tbt_slo_s > 0, "> 0 s", "0.1"),
        ("--generations", args.generations, args.generations >= 1, ">= 1", "3"),
        ("--warmup-s", args.warmup_s, args.warmup_s >= 0, ">= 0 s", "60"),
        ("--measure-s", args.measure_s, args.measure_s > 0, "> 0 s", "300"),
    ):
        if not (ok and math.isfinite(value)):
            raise InputError(
                flag, flag[2:].replace("-", "_"), f"must be {need}, got {value!r}", f"use e.g. {flag} {example}"
            )
    return SweepSpec(
        model=args.model,
        gpu=gpu.name,
        gpus=args.gpus,
        tps=tuple(tps),
        clocks_mhz=tuple(clocks),
        batches=tuple(batches),
        inputs=tuple(classes["--inputs"]),
        outputs=tuple(classes["--outputs"]),
        load_rps=load_rps,
        tbt_slo_s=args.tbt_slo_s,
        generations=args.generations,
        warmup_s=args.warmup_s,
        measure_s=args.measure_s,
        seed=args.seed,
    )


def _print_table(comparison: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Simulator vs the study (Stojkovic et al., arXiv 2403.20306)")
    for col in ("finding", "simulator (median)", "range over pairs", "same running batch", "study", "verdict"):
        table.add_column(col)
    for c in comparison:
        rng = "n/a" if c["sim"] is None else f"{_fmt(c['key'], c['sim_min'])} .. {_fmt(c['key'], c['sim_max'])}"
        same = _fmt(c["key"], c["sim_same_batch"]) if c["key"].startswith("tp_") else ""
        style = {"agrees": "green", "disagrees": "red"}.get(c["verdict"], "yellow")
        verdict = f"[{style}]{c['verdict']}[/{style}]"
        table.add_row(c["label"], _fmt(c["key"], c["sim"]), rng, same, c["study_text"], verdict)
    console = Console(width=max(Console().width, 132))
    console.print(table)
    for c in comparison:
        console.print(f"[dim]{c['label']}: {c['definition']}; {c['pairs']} pairs.[/dim]", soft_wrap=True)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Parse flags, sweep, write the CSV and plots, print the comparison."""
    args = _parser().parse_args(argv)
    spec = _spec(args)
    out: Path = args.out
    for flag, folder in (("--out", out), ("--plots-dir", args.plots_dir)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise InputError(flag, flag[2:].replace("-", "_"), f"{folder} is a file", "give a folder")
    started = time.perf_counter()

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"sweeping {spec.points} points", total=spec.points)
        df = sweep(spec, on_point=lambda done, total: progress.update(task, completed=done))
    swept_s = time.perf_counter() - started
    csv_path = out / "characterization.csv"
    atomic_write_text(csv_path, df.to_csv(index=False, float_format="%.6g"))
    plots = [] if args.no_plots else write_plots(df, args.plots_dir or out, spec.tbt_slo_s)
    comparison = compare(df)
    elapsed_s = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "comparison": comparison,
                    "points": len(df),
                    "load": "saturating" if spec.load_rps is None else spec.load_rps,
                    "csv": str(csv_path),
                    "plots": [str(p) for p in plots],
                    "sweep_s": round(swept_s, 2),
                    "elapsed_s": round(elapsed_s, 2),
                }
            )
        )
    else:
        _print_table(comparison)
        print(
            f"{len(df)} points swept in {swept_s:.1f} s ({elapsed_s:.1f} s in all); wrote {csv_path}", file=sys.stderr
        )
        for p in plots:
            print(f"wrote {p}", file=sys.stderr)
    return 0
