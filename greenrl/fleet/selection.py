"""Model selection for fleet training: the validation and held-out days, the day score, the ship verdict.

Both fleet trainers (the centralized controller, ``greenrl.fleet.learn``, and the policy shared by every
node, ``greenrl.fleet.shared_learn``) select their model here, through ``greenrl.fleet.trainer``'s loop:
whole validation days (10-11) of every category the fleet trains on, scored with the env's return, the best
model kept, the held-out days (12-13) evaluated once at the end against static-max, and a verdict on whether
the selection may ship.

Public names: evaluate_days, day_score, validate_policy, held_out_report, ship_verdict, fleet_files_sha256,
SHIP_MIN_ATTAINMENT.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from greenrl.fleet.cluster import FleetSim
from greenrl.fleet.config import FleetConfig
from greenrl.fleet.days import fleet_day, validation_day, validation_windows_s
from greenrl.fleet.policies import make_policy
from greenrl.fleet.rollout import run_policy

__all__ = [
    "SHIP_MIN_ATTAINMENT",
    "day_score",
    "evaluate_days",
    "fleet_files_sha256",
    "held_out_report",
    "ship_verdict",
    "validate_policy",
]

SHIP_MIN_ATTAINMENT = 0.99
"""A fleet controller ships only if it meets at least this SLO attainment on the validation days."""


def evaluate_days(config: FleetConfig, policy: Any, split: str, duration_s: float | None = None) -> dict[str, Any]:
    """Energy, requests, missed and attainment of ``policy`` over the validation (``val``) or held-out days.

    ``duration_s``: only each day's first seconds (a smoke test; every reported figure is whole days).
    """
    sim = FleetSim(config)
    if split == "val":
        traces = [validation_day(config, i, duration_s) for i in range(len(validation_windows_s(config)))]
    else:
        traces = [fleet_day(config, i, duration_s) for i in range(len(config.scenario.workload.eval_windows_s))]
    rows = [run_policy(sim, policy, t) for t in traces]
    total: dict[str, Any] = {k: sum(r[k] for r in rows) for k in ("energy_kwh", "requests", "missed")}
    total["slo_attainment"] = 1.0 - total["missed"] / max(1, total["requests"])
    total["days"] = rows
    return total


def day_score(row: dict[str, Any], config: FleetConfig, slo_weight: float) -> float:
    """The env's return over the row's days, with each interval's miss share replaced by the days' (per day)."""
    from greenrl.catalog import load_gpu

    s = config.scenario
    ref_w = config.nodes * s.node.gpus * load_gpu(s.node.gpu).tdp_w
    steps = 86400.0 / config.control.fleet_interval_s
    energy = row["energy_kwh"] * 3.6e6 / (ref_w * config.control.fleet_interval_s)
    score = -energy - slo_weight * steps * row["missed"] / max(1, row["requests"])
    return score / max(1, len(row["days"]))


FIGURES = ("energy_kwh", "slo_attainment", "missed")


def validate_policy(
    config: FleetConfig, policy: Any, slo_weight: float, duration_s: float | None = None
) -> dict[str, Any]:
    """``policy`` on the validation days of every ``workload.validation_categories``: what selection ranks.

    ``score`` is the mean of the categories' ``day_score``s: when ``category`` is among the training
    categories, the expected return of a training episode, which draws its category uniformly.
    ``energy_kwh``, ``missed`` and ``slo_attainment`` are over all of them; with more than one category,
    ``categories`` holds each one's figures, which ``ship_verdict`` checks one by one (a pooled attainment
    would let the easy load hide the hard one's misses). One category gives the entry a single-category
    fleet always had.
    """
    categories = config.workload.validation_categories
    rows = {c: evaluate_days(config.with_category(c), policy, "val", duration_s) for c in categories}
    scores = {c: day_score(row, config, slo_weight) for c, row in rows.items()}
    energy = sum(r["energy_kwh"] for r in rows.values())
    missed, requests = sum(r["missed"] for r in rows.values()), sum(r["requests"] for r in rows.values())
    entry: dict[str, Any] = {"score": sum(scores.values()) / len(scores), "energy_kwh": energy}
    entry |= {"slo_attainment": 1.0 - missed / max(1, requests), "missed": missed}
    if len(categories) > 1:
        entry["categories"] = {c: {"score": scores[c], **{k: rows[c][k] for k in FIGURES}} for c in categories}
    return entry


def ship_verdict(selected: dict[str, Any], planner: dict[str, Any]) -> tuple[bool, str]:
    """Whether a selected controller may ship, and why: what an operator would accept on the validation days.

    It must meet ``SHIP_MIN_ATTAINMENT`` and not be dominated by the planner (less energy, or higher
    attainment; the planner alone may sit below the floor), on each training category's validation days
    when the entries carry ``categories``. The held-out days never decide it.
    """
    if "categories" in selected:
        verdicts = {c: _verdict(f, planner["categories"][c]) for c, f in selected["categories"].items()}
        failed = [f"{c}: {reason}" for c, (ok, reason) in verdicts.items() if not ok]
        if failed:
            return False, failed[0]
        return True, "; ".join(f"{c}: {reason}" for c, (_, reason) in verdicts.items())
    return _verdict(selected, planner)


def _verdict(selected: dict[str, Any], planner: dict[str, Any]) -> tuple[bool, str]:
    att, energy = selected["slo_attainment"], selected["energy_kwh"]
    figures = f"validation {energy:.1f} kWh at {100 * att:.2f}% (planner {planner['energy_kwh']:.1f} kWh at "
    figures += f"{100 * planner['slo_attainment']:.2f}%)"
    if att < SHIP_MIN_ATTAINMENT:
        return False, f"attainment below {100 * SHIP_MIN_ATTAINMENT:g}%: {figures}"
    if energy >= planner["energy_kwh"] and att <= planner["slo_attainment"]:
        return False, f"dominated by the planner: {figures}"
    return True, f"meets {100 * SHIP_MIN_ATTAINMENT:g}% and is not dominated by the planner: {figures}"


def held_out_report(
    config: FleetConfig, selected: dict[str, Any], best_policy: Any, slo_weight: float, duration_s: float | None = None
) -> dict[str, Any]:
    """The closing figures of a run: the planner on the validation days, the verdict, the held-out days.

    The held-out comparison with static-max carries a node run's summary.json keys
    (``energy_saving_vs_static_max``, ``slo_attainment_delta``, ``eval_trained``, ``eval_static_max``), so
    ``greenrl.sweep`` reports fleets as it reports nodes; they are ``workload.category``'s days. The other
    training categories' held-out days, when there are any, are in ``held_out_categories``.
    """
    val_planner = validate_policy(config, make_policy("planner"), slo_weight, duration_s)
    shippable, reason = ship_verdict(selected, val_planner)
    report: dict[str, Any] = {
        "selected": selected,
        "validation_planner": val_planner,
        "shippable": shippable,
        "ship_verdict": reason,
    }
    for category in config.workload.validation_categories:
        held_out = evaluate_days(config.with_category(category), best_policy, "eval", duration_s)
        static_max = evaluate_days(config.with_category(category), make_policy("static-max"), "eval", duration_s)
        figures = {
            "energy_saving_vs_static_max": 1.0 - held_out["energy_kwh"] / static_max["energy_kwh"],
            "slo_attainment_delta": held_out["slo_attainment"] - static_max["slo_attainment"],
            "eval_trained": {k: held_out[k] for k in FIGURES},
            "eval_static_max": {k: static_max[k] for k in FIGURES},
        }
        if category == config.workload.category:
            report |= {"held_out": held_out, **figures}
        else:
            report.setdefault("held_out_categories", {})[category] = {"held_out": held_out, **figures}
    return report


def fleet_files_sha256(config: FleetConfig) -> dict[str, str]:
    """sha256 of the fleet YAML and of its node scenario YAML: a resumed run must train on the same fleet."""
    paths = (config.path, config.scenario.path)
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
