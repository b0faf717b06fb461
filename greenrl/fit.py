"""``python -m greenrl.fit``: refit the surrogate from the shipped measurements (and a user's CSV).

Writes the parameter file atomically and prints the cross-validated report, which also replaces the
generated block of ``docs/surrogate.md`` when that file is present.

Public names: main.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.surrogate.calibrate import fit_all
from greenrl.surrogate.data import load_allreduce, load_public, load_user_csv, load_vidur_kernels
from greenrl.surrogate.fit import PHYSICS
from greenrl.surrogate.model import _default_params_path
from greenrl.surrogate.report import render_report, replace_block

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m greenrl.fit", description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="CSV",
        help="a measurement CSV in the schema of docs/surrogate.md (repeatable); fitted as its own stack",
    )
    p.add_argument("--user-only", action="store_true", help="fit the serving stacks on --data rows only")
    p.add_argument("--out", type=Path, default=None, help="parameter file to write (default: the packaged one)")
    p.add_argument(
        "--report",
        type=Path,
        default=Path("docs/surrogate.md"),
        help="markdown file whose generated block is replaced (skipped when absent)",
    )
    p.add_argument("--no-cv", action="store_true", help="skip cross-validation (fast refit)")
    p.add_argument(
        "--physics",
        type=int,
        choices=(1, 2, 3),
        default=PHYSICS,
        help="model version: 1 = the shipped file's model, 2 = measured all-reduce latency and GEMM-shaped "
        "activation traffic, 3 = 2 plus per-sequence host time overlapping the GPU (vLLM V1 stacks) and the "
        f"median inter-token latency of decode-only iterations (default {PHYSICS})",
    )
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Fit, write the parameters, print the validation report."""
    args = _parser().parse_args(argv)
    user = [load_user_csv(path) for path in args.data]
    if args.user_only and not user:
        raise InputError("--user-only", "data", "no --data file given", "add --data my_measurements.csv")
    serving = pd.concat(user if args.user_only else [load_public(), *user], ignore_index=True)
    out = args.out or _default_params_path()
    if out.exists() and out.is_dir():
        raise InputError("--out", "out", f"{out} is a folder", "give a file path ending in .json")

    started = time.perf_counter()
    result = fit_all(
        serving,
        load_vidur_kernels(),
        load_allreduce(),
        cross_validate=not args.no_cv,
        physics=args.physics,
        progress=lambda msg: print(f"fitting {msg} ...", file=sys.stderr),
    )
    result.params["fit_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out, json.dumps(result.params, indent=1, sort_keys=True) + "\n")

    command = "python -m greenrl.fit" + ("" if argv is None else " " + " ".join(argv)).rstrip()
    report = render_report(result.errors, result.params, command.strip())
    print(report)
    print(f"\nwrote {out} in {result.params['fit_seconds']} s", file=sys.stderr)
    if args.report.exists():
        atomic_write_text(args.report, replace_block(args.report.read_text(), report))
        print(f"updated {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
