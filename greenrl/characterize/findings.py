"""The study's headline findings and how a sweep compares with them (``STUDY_FINDINGS``, ``compare``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

_LOW_CLOCK_MHZ, _HIGH_CLOCK_MHZ = 1605, 1980  # the clock findings' pair (MHz)
# Findings about peak throughput: under a fixed offered load throughput is the load, not the node's.
_NEEDS_SATURATION = frozenset(
    {"tp_2_to_4_throughput_gain", "tp_4_to_8_throughput_gain", "clock_1605_vs_1980_throughput_ratio"}
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One headline shape of the study and the rule that says whether the sweep agrees with it.

    Attributes:
        key: machine-readable name.
        label: what is compared, in words.
        study_value: the study's figure (a gain as a fraction, or a ratio).
        study_text: the study's figure, in words.
        lo, hi: the simulator agrees when its figure lies in ``[lo, hi]``.
        definition: how the simulator's figure is computed from the sweep.
    """

    key: str
    label: str
    study_value: float
    study_text: str
    lo: float
    hi: float
    definition: str = ""


STUDY_FINDINGS: tuple[Finding, ...] = (
    Finding(
        "tp_2_to_4_throughput_gain",
        "TP 2 -> 4 throughput gain",
        0.75,
        "about +75%",
        0.5,
        1.125,
        "median over (length class, max batch) at the top clock of throughput(TP4) / throughput(TP2) - 1",
    ),
    Finding(
        "tp_4_to_8_throughput_gain",
        "TP 4 -> 8 throughput gain",
        0.40,
        "about +40%",
        0.4 / 1.5,
        0.6,
        "median over (length class, max batch) at the top clock of throughput(TP8) / throughput(TP4) - 1",
    ),
    Finding(
        "batch_4_to_8_goodput_ratio",
        "max batch 4 -> 8 goodput (within SLO)",
        7.0,
        "about 7x",
        7.0 / 1.5,
        10.5,
        "median over (TP, length class) at the top clock of goodput(8) / goodput(4), goodput = output tokens/s "
        "of requests meeting both the TTFT and the mean-TBT SLO",
    ),
    Finding(
        "clock_1605_vs_1980_throughput_ratio",
        "1605 vs 1980 MHz throughput",
        1.0,
        "about the same",
        0.9,
        1.1,
        "median over (TP, max batch, length class) of throughput(1605) / throughput(1980)",
    ),
    Finding(
        "clock_1605_vs_1980_energy_ratio",
        "1605 vs 1980 MHz energy/token",
        0.8,
        "under 80%",
        0.0,
        0.8,
        "median over (TP, max batch, length class) of energy per token(1605) / energy per token(1980)",
    ),
)
"""The study's headline shapes. "About X" agrees within a factor 1.5 of X (for a gain: of the gain);
"about the same" within 10%; "under 80%" means at most 0.80."""


def _median_ratio(
    df: pd.DataFrame, by: str, num: int, den: int, keys: list[str], metric: str
) -> tuple[float, float, float, int]:
    """Median, min and max over ``keys`` of metric(by=num) / metric(by=den), and how many pairs.

    A pair whose denominator is 0 and numerator positive counts as an infinite ratio; 0 / 0 pairs and
    non-finite values are left out.
    """
    a = df[df[by] == num].set_index(keys)[metric]
    b = df[df[by] == den].set_index(keys)[metric]
    joined = pd.concat([a.rename("num"), b.rename("den")], axis=1, join="inner")
    finite = np.isfinite(joined["den"]) & np.isfinite(joined["num"])
    joined = joined[finite & ((joined["den"] > 0) | (joined["num"] > 0))]
    if joined.empty:
        return math.nan, math.nan, math.nan, 0
    with np.errstate(divide="ignore"):
        r = (joined["num"] / joined["den"]).to_numpy(dtype=float)
    return float(np.median(r)), float(r.min()), float(r.max()), len(r)


def compare(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The study's headline shapes next to the sweep's (see ``STUDY_FINDINGS`` for each definition).

    Returns:
        One dict per finding: key, label, definition, sim (median; ``"inf"`` when a goodput ratio has a
        zero denominator), sim_min, sim_max, pairs, study,
        study_text, agree_range and verdict (``agrees``, ``disagrees``, or ``not measured`` when the
        sweep lacks the points). TP rows also carry ``sim_same_batch``: the median over the batches
        that both TPs' KV caches hold in full (a diagnostic; the verdict uses ``sim``).
    """
    out: list[dict[str, Any]] = []
    top = math.nan if df.empty else float(df["sm_clock_mhz"].max())
    fixed_load = not df.empty and bool((df["load"] != "saturating").any())
    at_top = df[df["sm_clock_mhz"] == top] if not df.empty else df
    cls = ["input_class", "output_class"]
    for f in STUDY_FINDINGS:
        same_batch: float | None = None
        if f.key.startswith("tp_"):
            lo, hi = (2, 4) if "2_to_4" in f.key else (4, 8)
            keys = [*cls, "max_num_seqs"]
            med, mn, mx, n = _median_ratio(at_top, "tp", hi, lo, keys, "throughput_tokens_per_s")
            med, mn, mx = med - 1.0, mn - 1.0, mx - 1.0
            # Diagnostic: only batches both TPs' KV caches hold in full, so both run the same batch.
            uncapped = at_top[at_top["max_num_seqs"] <= at_top["kv_batch_limit"]]
            same, _, _, n_same = _median_ratio(uncapped, "tp", hi, lo, keys, "throughput_tokens_per_s")
            same_batch = round(same - 1.0, 4) if n_same else None
        elif f.key.startswith("batch_"):
            med, mn, mx, n = _median_ratio(at_top, "max_num_seqs", 8, 4, [*cls, "tp"], "goodput_tokens_per_s")
        else:
            metric = "throughput_tokens_per_s" if "throughput" in f.key else "energy_per_output_token_j"
            keys = [*cls, "tp", "max_num_seqs"]
            med, mn, mx, n = (
                _median_ratio(df, "sm_clock_mhz", _LOW_CLOCK_MHZ, _HIGH_CLOCK_MHZ, keys, metric)
                if not df.empty
                else (math.nan, math.nan, math.nan, 0)
            )
        if n == 0:
            verdict = "not measured"
        elif fixed_load and f.key in _NEEDS_SATURATION:
            verdict = "not comparable"
        else:
            verdict = "agrees" if f.lo <= med <= f.hi else "disagrees"
        out.append(
            {
                "key": f.key,
                "label": f.label,
                "definition": f.definition,
                "sim": _json_num(med, n),
                "sim_min": _json_num(mn, n),
                "sim_max": _json_num(mx, n),
                "pairs": n,
                "sim_same_batch": same_batch,
                "study": f.study_value,
                "study_text": f.study_text,
                "agree_range": [round(f.lo, 4), round(f.hi, 4)],
                "verdict": verdict,
            }
        )
    return out


def _json_num(value: float, pairs: int) -> float | str | None:
    """A figure for JSON: None when nothing was measured, the string "inf" for an infinite ratio."""
    if pairs == 0 or math.isnan(value):
        return None
    return round(value, 4) if math.isfinite(value) else "inf"
