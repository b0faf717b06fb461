"""The report of ``python -m greenrl.sweep``: per (scenario, SLO weight), mean and 95% CI over training seeds.

Two sources per cell: ``train`` (the run's summary.json: the best policy on the held-out windows, exact
arrivals, as ``greenrl.train`` prints it; a fleet trained on several categories adds ``train <category>``
for each other one's held-out days) and, with ``--evaluate``, ``evaluate`` (the controller's mean
over ``greenrl.evaluate``'s bootstrapped samples, paired with static-max). The interval is Student's t
over the training seeds (each seed one number); baselines are not trained, so their interval is over
evaluation samples, as ``greenrl.evaluate`` reports it.

Public names: EVAL_FILE, SCHEMA, METRICS, build_report, write_report, print_report, report_csv.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenrl.evaluate_kpis import mean_ci95
from greenrl.ioutil import atomic_write_text

if TYPE_CHECKING:
    from greenrl.sweep import Cell, SweepGrid

__all__ = ["EVAL_FILE", "METRICS", "SCHEMA", "build_report", "print_report", "report_csv", "write_report"]

SCHEMA = "greenrl-sweep/1"
WORKER_FILE = "sweep_worker.json"
"""Where a cell trained (host, Ray node id, wall time), written into its run folder by the sweep."""
EVAL_FILE = "sweep_eval.json"
"""A cell's evaluation records, written into its run folder by ``--evaluate``."""
METRICS = ("saving_vs_static_max", "slo_attainment", "slo_delta_vs_static_max")
"""Report columns (fractions): 1 - energy / static-max's, attainment, attainment minus static-max's."""

CI_TEXT = "95% CI: mean +- t(0.975, n-1) * sd / sqrt(n) (Student t), n = training seeds"


def _train_kpis(run: Path) -> dict[str, dict[str, float]]:
    """The ``train`` source, and ``train <category>`` for each other category a fleet run held out."""
    s = json.loads((run / "summary.json").read_text())
    if "energy_saving_vs_static_max" not in s:  # a fleet run without validation (val_episodes 0)
        return {"train": dict.fromkeys(METRICS, math.nan)}
    sources = {"train": _kpis(s)}
    for category, figures in s.get("held_out_categories", {}).items():
        sources[f"train {category}"] = _kpis(figures)
    return sources


def _kpis(held_out: dict[str, Any]) -> dict[str, float]:
    return {
        "saving_vs_static_max": float(held_out["energy_saving_vs_static_max"]),
        "slo_attainment": float(held_out["eval_trained"]["slo_attainment"]),
        "slo_delta_vs_static_max": float(held_out["slo_attainment_delta"]),
    }


def _default_slo_weight(cell: Cell) -> float:
    """The SLO weight a cell without ``--slo-weight`` trains with: the scenario's, or a fleet's agent file's."""
    if cell.scenario.startswith("fleet-"):
        from greenrl.agent_config import agent_config

        return float(agent_config(cell.agent, cell.scenario).get("slo_weight", 100.0))
    from greenrl.env.scenario import load_scenario

    return load_scenario(cell.scenario).reward.slo_weight


def _eval_records(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["records"]) if path.is_file() else []


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _row(key: dict[str, Any], values: dict[str, list[float]], n: int, ci_over: str) -> dict[str, Any]:
    row = dict(key) | {"n": n, "ci_over": ci_over}
    for metric in METRICS:
        mean, half = mean_ci95(values[metric])
        row[metric] = None if math.isnan(mean) else mean
        row[f"{metric}_ci95"] = half
    return row


def build_report(grid: SweepGrid, runs: dict[Cell, Path | None], meta: dict[str, Any]) -> dict[str, Any]:
    """Cells, per-(scenario, SLO weight, source) rows over seeds, and baseline rows, as one JSON-ready dict."""
    weights = {c.scenario: _default_slo_weight(c) for c in grid.cells}
    cells: list[dict[str, Any]] = []
    groups: dict[tuple[str, float, str], tuple[list[int], dict[str, list[float]]]] = {}
    for cell, run in runs.items():
        weight = cell.slo_weight if cell.slo_weight is not None else weights[cell.scenario]
        entry: dict[str, Any] = {"scenario": cell.scenario_name, "slo_weight": weight, "seed": cell.seed}
        entry["run"] = None if run is None else str(run)
        if run is None:
            cells.append(entry)
            continue
        entry["policy_sha256"] = json.loads((run / "controller" / "controller.json").read_text())["policy"]["sha256"]
        if (run / WORKER_FILE).is_file():
            entry["worker"] = json.loads((run / WORKER_FILE).read_text())
        sources = _train_kpis(run)
        trained = [r for r in _eval_records(run / EVAL_FILE) if r["policy_kind"] != "baseline"]
        if trained:
            sources["evaluate"] = {m: _num(trained[0][m]) for m in METRICS}
        for source, kpis in sources.items():
            entry[source] = kpis
            seeds, values = groups.setdefault((cell.scenario_name, weight, source), ([], {m: [] for m in METRICS}))
            seeds.append(cell.seed)
            for metric in METRICS:
                values[metric].append(kpis[metric])
        cells.append(entry)
    rows = [
        _row(
            {"scenario": s, "slo_weight": w, "source": src, "policy": "trained", "seeds": seeds},
            values,
            len(seeds),
            "training seeds",
        )
        for (s, w, src), (seeds, values) in groups.items()
    ]
    baselines: list[dict[str, Any]] = []
    for name in grid.scenarios:
        for r in _eval_records(Path(grid.cells[0].out) / "baselines" / f"{name}.json"):
            row = {"scenario": name, "slo_weight": None, "source": "evaluate", "policy": r["policy"]}
            row |= {"seeds": r["seeds"], "n": r["n_samples"], "ci_over": "evaluation samples"}
            for metric in METRICS:
                row[metric], row[f"{metric}_ci95"] = r[metric], r[f"{metric}_ci95"]
            baselines.append(row)
    missing = [f"{c['scenario']} w{c['slo_weight']:g} s{c['seed']}" for c in cells if c["run"] is None]
    meta = meta | {
        "schema": SCHEMA,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
        "ci": CI_TEXT,
        "sources": {
            "train": "summary.json: best policy on the held-out windows, exact arrivals, vs static-max",
            "train <category>": "the same on a fleet's other validation category (summary.json held_out_categories)",
            "evaluate": "greenrl.evaluate: mean over bootstrapped held-out samples, paired with static-max",
        },
        "missing_cells": missing,
    }
    return {"schema": SCHEMA, "meta": meta, "rows": rows, "baselines": baselines, "cells": cells}


_CSV_COLUMNS = ("scenario", "slo_weight", "source", "policy", "n", "ci_over", "seeds")


def report_csv(report: dict[str, Any]) -> str:
    """The rows and baseline rows as CSV (fractions; ``_ci95`` columns are half-widths, empty for n < 2)."""
    buffer = io.StringIO()
    columns = [*_CSV_COLUMNS, *(f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci95"))]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in [*report["rows"], *report["baselines"]]:
        out = {k: row.get(k) for k in columns}
        out["seeds"] = " ".join(str(s) for s in row["seeds"])
        writer.writerow({k: "" if v is None else v for k, v in out.items()})
    return buffer.getvalue()


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``report.json`` and ``report.csv`` in ``out``, each written atomically; the paths."""
    paths = [Path(out) / "report.json", Path(out) / "report.csv"]
    atomic_write_text(paths[0], json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths[1], report_csv(report))
    return paths


def _pct(row: dict[str, Any], metric: str, digits: int) -> str:
    mean, half = row[metric], row[f"{metric}_ci95"]
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.{digits}f}"
    return text if half is None else f"{text} ± {100 * half:.{digits}f}"


def print_report(report: dict[str, Any]) -> None:
    """One rich table: trained rows (CI over seeds), then baselines (CI over evaluation samples)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="sweep: mean ± 95% CI half-width, Student t: trained rows over training seeds (n - 1 degrees of "
        "freedom), baselines over evaluation samples"
    )
    for col in ("scenario", "SLO weight", "source", "policy", "n", "saving vs static-max (%)"):
        table.add_column(col)
    table.add_column("SLO attainment (%)")
    table.add_column("vs static-max (points)")
    for row in [*report["rows"], *report["baselines"]]:
        weight = "" if row["slo_weight"] is None else f"{row['slo_weight']:g}"
        n = f"{row['n']} {'seeds' if row['ci_over'] == 'training seeds' else 'samples'}"
        table.add_row(
            row["scenario"],
            weight,
            row["source"],
            row["policy"],
            n,
            _pct(row, "saving_vs_static_max", 1),
            _pct(row, "slo_attainment", 2),
            _pct(row, "slo_delta_vs_static_max", 2),
        )
    console = Console(width=160)
    console.print(table)
    if report["meta"]["missing_cells"]:
        console.print(f"not finished: {', '.join(report['meta']['missing_cells'])}")
