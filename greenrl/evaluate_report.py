"""Reporting for ``python -m greenrl.evaluate``: KPI tables (markdown, CSV, console), JSON results, plots.

Turns the records of :func:`greenrl.evaluate.evaluate` into ``results.json``/``.csv``/``.md``, the
Pareto and timeline PNGs, and the rich console tables.

Public names: markdown_report, write_outputs, print_tables, SCHEMA, PARETO_SPAN_POINTS.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from greenrl.env.scenario import Scenario, load_scenario
from greenrl.evaluate_kpis import Episode, Evaluation
from greenrl.ioutil import atomic_savefig, atomic_write_text

__all__ = ["PARETO_SPAN_POINTS", "SCHEMA", "markdown_report", "print_tables", "write_outputs"]

SCHEMA = "greenrl-eval/1"
"""Schema tag of ``results.json`` (and of ``Evaluation.meta``)."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(value: float | None, half: float | None, digits: int, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value * scale:.{digits}f}"
    return text if half is None else f"{text} ± {half * scale:.{digits}f}"


_TABLE_COLUMNS = (
    ("energy (kWh)", "energy_kwh", 3, 1.0),
    ("J/token", "energy_per_output_token_j", 2, 1.0),
    ("saving vs static-max (%)", "saving_vs_static_max", 1, 100.0),
    ("SLO attainment (%)", "slo_attainment", 2, 100.0),
    ("vs static-max (points)", "slo_delta_vs_static_max", 2, 100.0),
    ("TTFT p50 (s)", "ttft_p50_s", 3, 1.0),
    ("TTFT p99 (s)", "ttft_p99_s", 2, 1.0),
    ("TBT p50 (ms)", "tbt_p50_s", 1, 1000.0),
    ("TBT p99 (ms)", "tbt_p99_s", 1, 1000.0),
    ("goodput (req/s)", "goodput_rps", 2, 1.0),
    ("reconfig.", "reconfigurations", 1, 1.0),
    ("mean clock (MHz)", "mean_sm_clock_mhz", 0, 1.0),
    ("at prefill clock (%)", "prefill_clock_frac", 0, 100.0),
)


def _groups(records: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    out: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["scenario"], r["rate_scale"]), []).append(r)
    return out


def _title(scenario: str, scale: float, group: list[dict[str, Any]]) -> str:
    r = group[0]
    windows, seeds = len(r["windows"]), len(r["seeds"])
    mode = "bootstrapped arrivals" if r["arrivals"] == "resample" else "exact windows"
    return f"{scenario}, rate x{scale:g}: {r['n_samples']} samples ({windows} window(s) x {seeds} seed(s), {mode})"


def markdown_report(records: list[dict[str, Any]]) -> str:
    """One KPI table and one knob-time table per (scenario, rate scale), mean ± 95% CI half-width."""
    lines: list[str] = []
    for (scenario, scale), group in _groups(records).items():
        lines += [f"### {_title(scenario, scale, group)}", ""]
        lines.append("| policy | " + " | ".join(c[0] for c in _TABLE_COLUMNS) + " |")
        lines.append("|---" * (len(_TABLE_COLUMNS) + 1) + "|")
        for r in group:
            cells = [_fmt(r[key], r[f"{key}_ci95"], d, s) for _, key, d, s in _TABLE_COLUMNS]
            lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
        knobs = list(group[0]["time_at_knob_frac"])
        lines += ["", "Time at each knob value (share of intervals):", ""]
        lines.append("| policy | " + " | ".join(knobs) + " |")
        lines.append("|---" * (len(knobs) + 1) + "|")
        for r in group:
            cells = [
                " ".join(f"{v}:{100 * f:.0f}%" for v, f in r["time_at_knob_frac"][k].items() if f > 0) for k in knobs
            ]
            lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _csv_text(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("samples", "time_at_knob_frac", "windows", "seeds")}
        row["windows"] = " ".join(str(w) for w in r["windows"])
        row["seeds"] = " ".join(str(s) for s in r["seeds"])
        for knob, fracs in r["time_at_knob_frac"].items():
            for value, frac in fracs.items():
                row[f"time_frac_{knob}_{value}"] = frac
        rows.append(_clean(row))
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


PARETO_SPAN_POINTS = 5.0
"""The Pareto plot shows policies within this many points of static-max's SLO attainment."""


def _plot_pareto(group: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    points: list[tuple[float, float]] = []
    labels: dict[tuple[float, float], list[str]] = {}
    # Zoom on the policies within PARETO_SPAN_POINTS of static-max's attainment, where the choice is made;
    # the others (random, overloaded ones) are named below the axes instead of squashing the plot.
    reference = next((r for r in group if r["policy"] == "static-max"), None)
    floor = 100 * (reference["slo_attainment"] if reference else 1.0) - PARETO_SPAN_POINTS
    hidden = [r for r in group if 100 * r["slo_attainment"] < floor]
    for r in (r for r in group if 100 * r["slo_attainment"] >= floor):
        x, y = 100 * r["slo_attainment"], r["energy_kwh"]
        xe = 100 * (r["slo_attainment_ci95"] or 0.0)
        ye = r["energy_kwh_ci95"] or 0.0
        style = {"color": "black", "marker": "s"} if r["policy"] == "static-max" else {"marker": "o"}
        ax.errorbar(x, y, xerr=xe, yerr=ye, capsize=3, linestyle="none", **style)  # type: ignore[arg-type]
        same = next((p for p in labels if abs(p[0] - x) < 0.05 and abs(p[1] - y) <= 0.002 * max(y, 1e-9)), (x, y))
        labels.setdefault(same, []).append(r["policy"])  # coinciding policies share one label
        points.append((x, y))
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted(p for p in points if not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in points))
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", linewidth=1, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    xlabel = "SLO attainment (%)"
    if hidden:
        xlabel += "\noff the plot: " + ", ".join(f"{r['policy']} ({100 * r['slo_attainment']:.1f}%)" for r in hidden)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("GPU energy per episode (kWh)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _plot_timeline(episode: Episode, scenario: Scenario, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = episode.timeline
    span_s = float(s["t_end_s"][-1]) if s["t_end_s"] else 0.0
    unit, per = ("h", 3600.0) if span_s > 3 * 3600.0 else ("min", 60.0)  # a day reads in hours
    edges = np.concatenate([[0.0], np.array(s["t_end_s"])]) / per  # each value holds over its interval
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    axes[0].stairs(s["arrival_rate_rps"], edges)
    axes[0].set_ylabel("arrivals (req/s)")
    ax = axes[1]
    if "sm_clock_mhz" in s:
        ax.stairs(s["sm_clock_mhz"], edges, label="SM clock (MHz)", baseline=None)
    if "prefill_sm_clock_mhz" in s:  # 0 (off) is drawn as the base clock
        boost = np.where(np.array(s["prefill_sm_clock_mhz"]) > 0, s["prefill_sm_clock_mhz"], s["sm_clock_mhz"])
        ax.stairs(boost, edges, label="prefill SM clock (MHz)", baseline=None, linestyle="-.")
    ax.set_ylabel("SM clock (MHz)")
    twin = ax.twinx()
    for name, color, dash in (("tp", "red", "--"), ("replicas", "purple", "-"), ("max_num_seqs", "green", ":")):
        if name in s:
            twin.stairs(s[name], edges, color=color, linestyle=dash, label=name, baseline=None)
    twin.set_ylabel("tp / replicas / max_num_seqs" if "replicas" in s else "tp / max_num_seqs")
    twin.set_yscale("log", base=2)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    axes[2].stairs(np.array(s["power_w"]) / 1000.0, edges)
    axes[2].set_ylabel("node power (kW)")
    axes[3].stairs(s["ttft_mean_s"], edges, label="TTFT mean (s)", baseline=None)
    axes[3].stairs(s["tbt_mean_s"], edges, label="TBT mean (s)", baseline=None)
    axes[3].axhline(scenario.slo.ttft_floor_s, color="C0", linestyle=":", label="TTFT SLO floor")
    axes[3].axhline(scenario.slo.tbt_mean_s, color="C1", linestyle=":", label="TBT SLO")
    axes[3].set_yscale("log")
    axes[3].set_ylabel("latency (s)")
    axes[3].set_xlabel(f"time ({unit})")
    axes[3].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"{episode.policy} on {episode.scenario} x{episode.rate_scale:g}, window {episode.window}, seed {episode.seed}",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_outputs(
    result: Evaluation,
    out: Path,
    json_path: Path | None = None,
    plots: bool = True,
    timeline_policy: str | None = None,
) -> list[Path]:
    """Write results.json/.csv/.md (and the plots) to ``out``; returns the files written."""
    written = []
    doc = _clean({"schema": SCHEMA, "meta": result.meta, "records": result.records})
    text = json.dumps(doc, indent=1) + "\n"
    for path in [out / "results.json", *([json_path] if json_path else [])]:
        atomic_write_text(path, text)
        written.append(path)
    atomic_write_text(out / "results.csv", _csv_text(result.records))
    atomic_write_text(out / "results.md", markdown_report(result.records))
    written += [out / "results.csv", out / "results.md"]
    if not plots:
        return written
    for (scenario, scale), group in _groups(result.records).items():
        path = out / f"pareto_{_slug(scenario)}_x{scale:g}.png"
        _plot_pareto(group, _title(scenario, scale, group), path)
        written.append(path)
        if timeline_policy is None:
            continue
        episode = next(
            (
                e
                for e in result.episodes
                if e.policy == timeline_policy and e.scenario == scenario and e.rate_scale == scale
            ),
            None,
        )
        if episode is not None:
            path = out / f"timeline_{_slug(timeline_policy)}_{_slug(scenario)}_x{scale:g}.png"
            _plot_timeline(episode, load_scenario(scenario), path)
            written.append(path)
    return written


_CONSOLE_KEYS = (
    "energy_kwh",
    "saving_vs_static_max",
    "slo_attainment",
    "slo_delta_vs_static_max",
    "ttft_p99_s",
    "goodput_rps",
    "reconfigurations",
    "mean_sm_clock_mhz",
    "prefill_clock_frac",
)


def print_tables(records: list[dict[str, Any]]) -> None:
    """The console tables: the main KPIs per (scenario, rate scale), mean ± 95% CI half-width."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    columns = [c for c in _TABLE_COLUMNS if c[1] in _CONSOLE_KEYS]
    for (scenario, scale), group in _groups(records).items():
        table = Table(title=_title(scenario, scale, group), title_style="bold")
        table.add_column("policy", no_wrap=True)
        for header, *_ in columns:
            table.add_column(header, justify="right")
        for r in group:
            table.add_row(r["policy"], *[_fmt(r[k], r[f"{k}_ci95"], d, s) for _, k, d, s in columns])
        console.print(table)
    console.print("mean ± 95% CI half-width over samples; all KPIs in results.md / results.json")
