"""Plots of a characterization sweep: throughput, latency and clock figures (``write_plots``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from greenrl.characterize.grid import LENGTH_CLASSES
from greenrl.ioutil import atomic_savefig


def _reference(df: pd.DataFrame) -> tuple[str, str, int, float]:
    """The length classes, batch and clock the single-panel plots show."""
    inputs, outputs = list(dict.fromkeys(df["input_class"])), list(dict.fromkeys(df["output_class"]))
    inp = "medium" if "medium" in inputs else inputs[0]
    outp = "medium" if "medium" in outputs else outputs[0]
    batches = sorted(set(df["max_num_seqs"]))
    batch = 64 if 64 in batches else batches[len(batches) // 2]
    return inp, outp, int(batch), float(df["sm_clock_mhz"].max())


def _batch_axis(ax: Any, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches], fontsize=7)
    ax.minorticks_off()


def write_plots(df: pd.DataFrame, folder: Path, tbt_slo_s: float | None = None) -> list[Path]:
    """Write ``characterize_{throughput,latency,clock}.png`` into ``folder``; returns their paths.

    Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend is changed.

    Args:
        df: the sweep (``sweep``'s rows).
        folder: where the PNGs go (created if missing).
        tbt_slo_s: drawn as a line on the TBT panel when given (s).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if df.empty:
        return []
    inp, outp, ref_batch, top = _reference(df)
    tps = sorted(set(df["tp"]))
    batches = sorted(int(b) for b in set(df["max_num_seqs"]))
    colors = {tp: colormaps["viridis"](i / max(len(tps) - 1, 1) * 0.85) for i, tp in enumerate(tps)}
    paths = []

    pairs = sorted(
        {(i, o) for i, o in zip(df["input_class"], df["output_class"], strict=True)},
        key=lambda p: (list(LENGTH_CLASSES).index(p[0]), list(LENGTH_CLASSES).index(p[1])),
    )
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, (i, o) in zip(axes.flat, pairs, strict=False):
        sub = df[(df["input_class"] == i) & (df["output_class"] == o) & (df["sm_clock_mhz"] == top)]
        for tp in tps:
            d = sub[sub["tp"] == tp].sort_values("max_num_seqs")
            ax.plot(d["max_num_seqs"], d["throughput_tokens_per_s"], "-", color=colors[tp], label=f"TP{tp}")
            ok = d[d["within_slo"]]
            bad = d[~d["within_slo"]]
            ax.plot(ok["max_num_seqs"], ok["throughput_tokens_per_s"], "o", color=colors[tp], ms=4)
            ax.plot(bad["max_num_seqs"], bad["throughput_tokens_per_s"], "o", mfc="none", color=colors[tp], ms=4)
        _batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set_title(f"in {LENGTH_CLASSES[i][0]} / out {LENGTH_CLASSES[o][1]} tokens", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(pairs) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("max batch (max_num_seqs)")
    for ax in axes[:, 0]:
        ax.set_ylabel("output tokens/s")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Throughput vs max batch at {top:.0f} MHz (hollow: p99 TBT over the SLO)", fontsize=10)
    fig.tight_layout()
    paths.append(folder / "characterize_throughput.png")
    atomic_savefig(fig, paths[-1])

    sub = df[(df["input_class"] == inp) & (df["output_class"] == outp) & (df["sm_clock_mhz"] == top)]
    fig = Figure(figsize=(9, 3.3))
    axes = fig.subplots(1, 2)
    for ax, metric, name in ((axes[0], "ttft", "TTFT"), (axes[1], "tbt", "mean TBT per request")):
        for tp in tps:
            d = sub[sub["tp"] == tp].sort_values("max_num_seqs")
            ax.plot(d["max_num_seqs"], d[f"{metric}_p50_s"], "o-", color=colors[tp], ms=3, label=f"TP{tp} p50")
            ax.plot(d["max_num_seqs"], d[f"{metric}_p99_s"], "s--", color=colors[tp], ms=3, label=f"TP{tp} p99")
        _batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set_xlabel("max batch (max_num_seqs)")
        ax.set_ylabel(f"{name} (s)")
        ax.grid(alpha=0.3)
    if tbt_slo_s:
        axes[1].axhline(tbt_slo_s, color="red", lw=0.8, ls=":", label="TBT SLO")
    axes[1].legend(fontsize=7, ncol=2)
    in_tok, out_tok = LENGTH_CLASSES[inp][0], LENGTH_CLASSES[outp][1]
    fig.suptitle(f"Latency vs max batch, in {in_tok} / out {out_tok} tokens, {top:.0f} MHz", fontsize=10)
    fig.tight_layout()
    paths.append(folder / "characterize_latency.png")
    atomic_savefig(fig, paths[-1])

    sub = df[(df["input_class"] == inp) & (df["output_class"] == outp) & (df["max_num_seqs"] == ref_batch)]
    fig = Figure(figsize=(9, 3.3))
    axes = fig.subplots(1, 2)
    for ax, metric, name in (
        (axes[0], "power_w", "replica power (W)"),
        (axes[1], "energy_per_output_token_j", "J per output token"),
    ):
        for tp in tps:
            d = sub[sub["tp"] == tp].sort_values("sm_clock_mhz")
            ax.plot(d["sm_clock_mhz"], d[metric], "o-", color=colors[tp], ms=3, label=f"TP{tp}")
        ax.set_xlabel("SM clock (MHz)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Power and energy vs SM clock, max batch {ref_batch}, in {in_tok} / out {out_tok} tokens", fontsize=10
    )
    fig.tight_layout()
    paths.append(folder / "characterize_clock.png")
    atomic_savefig(fig, paths[-1])
    return paths
