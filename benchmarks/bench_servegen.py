"""ServeGen generator: cost of a generated day, and a check of its output against the raw ServeGen files.

Timing: one whole held-out test day (day 12; day 0 for ``deepseek-r1``, which has one day) per
shipped category, at a node-sized scale (mean 10 req/s over the training days), and at scale 1 for
``deepseek-r1`` (a full ``m-large`` day is 24 million requests), best of ``--repeats`` warm runs.

Validation (``--raw``, default ``../shared/data/servegen`` when present) on ``language/m-large``,
test day 12, which no fitted part of greenrl uses:

- counts: requests per 600-s window vs the raw ``rate_rps x 600`` summed over clients, generated
  at scale 1 (hours 12-14 of the day) and at the node scale (the whole day);
- lengths: quantiles and mean of the generated prompt / output lengths (node scale) vs the raw
  request-weighted mixture of every client's per-6-hour pdf (read with ``ast.literal_eval``,
  independently of greenrl's parser), and the Kolmogorov-Smirnov distance between the two.

Run: ``.venv/bin/python benchmarks/bench_servegen.py`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from greenrl.workload import load_servegen, scale_for_rate_rps, servegen_categories, servegen_day, servegen_trace

NODE_RPS = 10.0
QUANTILES = (0.1, 0.5, 0.9, 0.99)


def timing(repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for category in servegen_categories():
        data = load_servegen(category)
        day = 12 if data.n_windows >= 13 * 144 else 0
        scales = [("node", scale_for_rate_rps(data, NODE_RPS))] + [("full", 1.0)] * int(data.rate_rps().mean() < 100)
        for label, scale in scales:
            servegen_day(data, day, scale=scale, seed=0)  # warm
            best = np.inf
            for seed in range(repeats):
                start = time.perf_counter()
                trace = servegen_day(data, day, scale=scale, seed=seed)
                best = min(best, time.perf_counter() - start)
            out[f"{category} day {day} {label}"] = {
                "scale": round(scale, 6),
                "requests": len(trace),
                "seconds": round(best, 3),
                "requests_per_s": round(len(trace) / best),
            }
    return out


def raw_mixture(folder: Path, day: int, field: str) -> np.ndarray:
    """Request-weighted mixture pdf (index = tokens) of every client's raw pdfs over one day."""
    pmf = np.zeros(1 << 18)
    for trace_csv in sorted(folder.glob("chunk-*-trace.csv")):
        dataset = trace_csv.with_name(trace_csv.name.replace("trace.csv", "dataset.json"))
        if not dataset.is_file():
            continue
        rates = np.loadtxt(trace_csv, delimiter=",", usecols=1)
        doc = json.loads(dataset.read_text())
        for slot in range(day * 4, day * 4 + 4):
            weight = rates[slot * 36 : (slot + 1) * 36].sum() * 600
            pdf = ast.literal_eval(doc.get(str(slot * 21600), {}).get(field, "{}"))
            if weight > 0 and pdf:
                tokens = np.fromiter(pdf.keys(), dtype=np.int64)
                probs = np.fromiter(pdf.values(), dtype=np.float64)
                np.add.at(pmf, np.maximum(tokens, 1), weight * probs / probs.sum())
    return pmf / pmf.sum()


def validation(raw: Path) -> dict[str, object]:
    category, day = "language/m-large", 12
    data = load_servegen(category)
    scale = scale_for_rate_rps(data, NODE_RPS)
    expected = data.requests[:, day * 144 : (day + 1) * 144].sum(axis=0)
    raw_counts = np.zeros(144)
    for trace_csv in sorted((raw / category).glob("chunk-*-trace.csv")):
        raw_counts += np.loadtxt(trace_csv, delimiter=",", usecols=1)[day * 144 : (day + 1) * 144] * 600
    out: dict[str, object] = {"category": category, "day": day, "node_scale": round(scale, 6)}
    noon = slice(day * 144 + 72, day * 144 + 84)
    full = servegen_trace(data, noon.start * 600.0, 7200.0, scale=1.0, seed=0)
    counts_full = np.bincount((full.arrival_s // 600).astype(int), minlength=12)
    raw_noon = raw_counts[72:84]
    out["counts_scale_1_hours_12_to_14"] = {
        "raw_total": int(raw_noon.sum()),
        "generated_total": len(full),
        "max_abs_window_diff": float(np.abs(counts_full - np.rint(raw_noon)).max()),
        "derivative_equals_raw_whole_day": bool(np.allclose(expected, raw_counts)),
    }
    node = servegen_day(data, day, scale=scale, seed=0)
    counts = np.bincount((node.arrival_s // 600).astype(int), minlength=144)
    rel = (counts - raw_counts * scale) / (raw_counts * scale)
    out["counts_node_scale"] = {
        "expected_total": round(float(raw_counts.sum() * scale), 1),
        "generated_total": len(node),
        "window_rel_err_median_abs": round(float(np.median(np.abs(rel))), 4),
        "window_rel_err_max_abs": round(float(np.abs(rel).max()), 4),
        "expected_per_window_min_max": [round(float(raw_counts.min() * scale)), round(float(raw_counts.max() * scale))],
    }
    for field, values in (("input_tokens", node.input_tokens), ("output_tokens", node.output_tokens)):
        pmf = raw_mixture(raw / category, day, field)
        cdf = np.cumsum(pmf)
        generated_cdf = np.bincount(np.minimum(values, len(pmf) - 1), minlength=len(pmf)).cumsum() / len(values)
        out[field] = {
            "raw_quantiles": [int(np.searchsorted(cdf, q)) for q in QUANTILES],
            "generated_quantiles": [int(np.quantile(values, q)) for q in QUANTILES],
            "raw_mean": round(float(pmf @ np.arange(len(pmf))), 1),
            "generated_mean": round(float(values.mean()), 1),
            "ks_distance": round(float(np.abs(generated_cdf - cdf).max()), 4),
        }
    out["over_8192_tokens_frac"] = round(float(np.mean(node.input_tokens + node.output_tokens > 8192)), 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("../shared/data/servegen"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, object] = {"load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count()}
    result["timing"] = timing(args.repeats)
    if (args.raw / "language/m-large").is_dir():
        result["validation"] = validation(args.raw)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
