"""Energy-attainment frontiers: which points of a grid no other point beats, and a policy's place against one.

A baseline tuned over a grid (the planner over its capacity headroom and forecast margin:
``benchmarks/fleet_planner_frontier.py``) gives a set of (energy, SLO attainment) points; "less energy than
the baseline at equal or better attainment" is read against that set's frontier, not against one default
point.

A grid read linearly between its points flatters whichever side the chord favours, so
``tune_to_attainment`` also searches the plane for a real planner point: the planner tuned to one
attainment, with nothing interpolated.

Public names: frontier, energy_at, versus_planner, tune_to_attainment, next_knobs, cheapest_reaching, TOLERANCE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "TOLERANCE",
    "cheapest_reaching",
    "energy_at",
    "frontier",
    "next_knobs",
    "tune_to_attainment",
    "versus_planner",
]

#: The planner's two tuning knobs, searched one at a time.
AXES = ("headroom_frac", "margin_frac")
#: The search stops bisecting a gap narrower than this, per knob (headroom_frac, margin_frac).
TOLERANCE = (0.0025, 0.1)


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


def tune_to_attainment(
    evaluate: Callable[[float, float], dict[str, Any]],
    points: list[dict[str, Any]],
    target: float,
    *,
    tol: tuple[float, float] = TOLERANCE,
    max_evals: int = 8,
) -> dict[str, Any] | None:
    """The cheapest planner point found at ``target`` attainment or above, by bisection from a grid.

    ``points`` holds evaluated points (``headroom_frac``, ``margin_frac``, ``energy_kwh``,
    ``slo_attainment``); new evaluations are appended, so several targets on one day share them. Each step
    looks along every line of one knob (the other held) for a point that misses the target but costs less
    than the best point that reaches it, followed on the line by one that reaches it: a cheaper point that
    reaches the target can lie between, and the middle of the gap is played. Where nothing follows on the
    line, the next value of that knob played on any line is tried first. Gaps go in order of the energy
    at which they may reach the target (linear between their ends; a line's last point's own energy where
    nothing follows). The search stops when every gap is within ``tol`` (one per knob)
    or after ``max_evals`` new evaluations. Energy need not be monotone in either knob, so this is a local
    search: its answer is a real point, an upper bound on the planner's least energy. None when no point
    reaches the target.
    """
    for used in range(max_evals + 1):
        best = cheapest_reaching(points, target)
        if best is None:
            return None
        knobs = next_knobs(points, best, target, tol)
        if knobs is None or used == max_evals:
            return best
        points.append(knobs | evaluate(knobs["headroom_frac"], knobs["margin_frac"]))
    raise AssertionError("unreachable")  # the loop returns on its last pass


def cheapest_reaching(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The point of least energy at ``target`` attainment or above (the higher attainment on a tie); None if none."""
    reaching = [p for p in points if p["slo_attainment"] >= target]
    return min(reaching, key=lambda p: (p["energy_kwh"], -p["slo_attainment"])) if reaching else None


def next_knobs(
    points: list[dict[str, Any]], best: dict[str, Any], target: float, tol: tuple[float, float] = TOLERANCE
) -> dict[str, float] | None:
    """The knobs ``tune_to_attainment`` plays next from ``best``, or None when every gap is within ``tol``."""
    gaps: list[tuple[float, dict[str, float]]] = []  # (energy it may reach the target at, knobs)
    for axis, other, axis_tol in ((AXES[0], AXES[1], tol[0]), (AXES[1], AXES[0], tol[1])):
        values = sorted({p[axis] for p in points})
        lines: dict[float, list[dict[str, Any]]] = {}
        for p in points:
            lines.setdefault(p[other], []).append(p)
        for held, line in lines.items():
            line.sort(key=lambda p: p[axis])
            for low, high in zip(line, [*line[1:], None], strict=True):
                if low["slo_attainment"] >= target or low["energy_kwh"] >= best["energy_kwh"]:
                    continue
                if high is None:  # nothing above on this line: the next value played on another line
                    above = [v for v in values if v > low[axis]]
                    if above:
                        gaps.append((low["energy_kwh"], {axis: above[0], other: held}))
                elif high["slo_attainment"] >= target and high[axis] - low[axis] > axis_tol:
                    share = (target - low["slo_attainment"]) / (high["slo_attainment"] - low["slo_attainment"])
                    guess = low["energy_kwh"] + share * (high["energy_kwh"] - low["energy_kwh"])
                    gaps.append((guess, {axis: (low[axis] + high[axis]) / 2, other: held}))
    if not gaps:
        return None
    return min(gaps, key=lambda g: g[0])[1]
