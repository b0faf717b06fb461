"""Simulator speed, memory and fast/exact agreement on the Azure 2023 traces (one core).

Simulates one hour of serving on the default node (8 x H100, Llama-2-70B, tp=4, 2 replicas, top clock,
max_num_seqs=256) at 1x, 4x and 16x the conversation trace's load (the trace compressed, then tiled
to one hour), in fast and exact mode, and prints one JSON object. Timings are warm (numba's cached
machine code loaded once beforehand); ``first_call_overhead_s`` is that one-time cost.

Run: ``.venv/bin/python benchmarks/bench_sim.py``.
"""

from __future__ import annotations

import json
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from greenrl.sim import SimConfig, SimNode
from greenrl.workload import Trace, load_trace

HOUR_S = 3600.0
DRAIN_S = 1800.0  # serve the backlog after the last arrival, so every request finishes


def kpis(node: SimNode, energy_j: float) -> dict[str, float]:
    """The metrics the fast/exact agreement is judged on."""
    rec = node.requests()
    done = rec["state"] == 3
    ttft, tbt = rec["ttft_s"][done], rec["tbt_mean_s"][done & (rec["generated_tokens"] > 1)]
    return {
        "ttft_mean_s": float(ttft.mean()),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "tbt_mean_s": float(tbt.mean()),
        "tbt_p99_s": float(np.percentile(tbt, 99)),
        "energy_j": energy_j,
        "slo_attainment": node.slo_attainment(),
    }


def simulate(trace: Trace, mode: str) -> tuple[float, dict[str, float], int]:
    """Wall seconds to simulate the trace (plus drain), its KPIs and the iterations it ran."""
    node = SimNode(SimConfig(mode=mode), trace)  # type: ignore[arg-type]
    node.reset(seed=0)
    t0 = time.perf_counter()
    snap = node.advance(trace.duration_s + DRAIN_S)
    wall = time.perf_counter() - t0
    return wall, kpis(node, snap.energy_j), snap.iterations


def per_hour(trace: Trace, load: float) -> Trace:
    return trace.scale_rate(load).tile(HOUR_S) if load > 1 else trace


def main() -> None:
    conv, code = load_trace("azure-conv"), load_trace("azure-code")
    t0 = time.perf_counter()
    simulate(conv.window(0, 60), "fast")  # loads the compiled kernel
    first_call = time.perf_counter() - t0

    out: dict[str, object] = {"benchmark": "sim", "first_call_overhead_s": round(first_call, 3)}
    errors = {}
    for name, trace in (("conv", conv), ("code", code)):
        fast_wall, fast_kpi, iters = simulate(trace, "fast")
        exact_wall, exact_kpi, _ = simulate(trace, "exact")
        rel = {k: abs(fast_kpi[k] / exact_kpi[k] - 1) if exact_kpi[k] else abs(fast_kpi[k]) for k in fast_kpi}
        errors[name] = rel
        if name == "conv":
            out |= {
                "requests_per_sim_hour": len(trace) * HOUR_S / trace.duration_s,
                "iterations": iters,
                "fast_wall_s_per_sim_hour": round(fast_wall * HOUR_S / trace.duration_s, 4),
                "exact_wall_s_per_sim_hour": round(exact_wall * HOUR_S / trace.duration_s, 4),
                "kpis_exact": exact_kpi,
            }
    for load in (4, 16):
        trace = per_hour(conv, load)
        wall, kpi, _ = simulate(trace, "fast")
        out[f"fast_wall_s_per_sim_hour_{load}x"] = round(wall * HOUR_S / trace.duration_s, 4)
        out[f"requests_per_sim_hour_{load}x"] = len(trace)
        out[f"slo_attainment_{load}x"] = round(kpi["slo_attainment"], 4)
    out["fast_vs_exact_rel_err"] = {k: {m: float(f"{e:.2e}") for m, e in v.items()} for k, v in errors.items()}
    out["fast_vs_exact_max_rel_err"] = max(max(v.values()) for v in errors.values())
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
