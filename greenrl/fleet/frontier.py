"""Energy-attainment frontiers: which points of a grid no other point beats, and a policy's place against one.

A baseline tuned over a grid (the planner over its capacity headroom and forecast margin:
``benchmarks/fleet_planner_frontier.py``) gives a set of (energy, SLO attainment) points; "less energy than
the baseline at equal or better attainment" is read against that set's frontier, not against one default
point.

Public names: frontier, energy_at, versus_planner.
"""

from __future__ import annotations

from typing import Any

__all__ = ["energy_at", "frontier", "versus_planner"]


def frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on energy (less) or attainment (higher) without losing on the other.

    Grid points with the same outcome count once (the first); the frontier is sorted by attainment.
    """
    kept: dict[tuple[float, float], dict[str, Any]] = {}
    for p in points:
        beaten = any(
            q["energy_kwh"] <= p["energy_kwh"]
            and q["slo_attainment"] >= p["slo_attainment"]
            and (q["energy_kwh"] < p["energy_kwh"] or q["slo_attainment"] > p["slo_attainment"])
            for q in points
        )
        if not beaten:
            kept.setdefault((p["energy_kwh"], p["slo_attainment"]), p)
    return sorted(kept.values(), key=lambda p: p["slo_attainment"])


def energy_at(front: list[dict[str, Any]], attainment: float) -> float | None:
    """The frontier's least energy at ``attainment`` or above (linear between neighbours); None beyond it."""
    for lo, hi in zip(front, front[1:], strict=False):
        if lo["slo_attainment"] <= attainment <= hi["slo_attainment"]:
            span = hi["slo_attainment"] - lo["slo_attainment"]
            w = 0.0 if span == 0 else (attainment - lo["slo_attainment"]) / span
            return float(lo["energy_kwh"] + w * (hi["energy_kwh"] - lo["energy_kwh"]))
    if front and attainment <= front[0]["slo_attainment"]:
        return float(front[0]["energy_kwh"])
    return None


def versus_planner(row: dict[str, Any], front: list[dict[str, Any]]) -> dict[str, Any]:
    """A controller's day against the planner's frontier.

    ``energy_vs_planner_at_this_attainment``: its energy over the planner's least energy at its attainment
    or above, minus 1 (None when no planner point reaches it). ``planner_closest_below``: the planner point
    of highest attainment not above the controller's, and ``energy_vs_closest_below`` against it: the
    comparison "equal or better attainment" allows when the planner cannot reach the controller's.
    """
    at = energy_at(front, row["slo_attainment"])
    below = [q for q in front if q["slo_attainment"] <= row["slo_attainment"]]
    closest = max(below, key=lambda q: q["slo_attainment"]) if below else None
    return {
        "planner_energy_kwh_at_this_attainment": at,
        "energy_vs_planner_at_this_attainment": None if at is None else row["energy_kwh"] / at - 1.0,
        "planner_closest_below": closest,
        "energy_vs_closest_below": None if closest is None else row["energy_kwh"] / closest["energy_kwh"] - 1.0,
    }
