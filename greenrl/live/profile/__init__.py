"""Live profiling: sweep a running vLLM node (or the twin) and write the measurement CSV the surrogate fit reads.

``greenrl profile --url ... --gpu ... --out my.csv`` then ``greenrl fit --data my.csv`` gives a surrogate (and so a
scenario) of one's own hardware; see "Profile your own node" in ``docs/live_node.md``.

Modules, one job each: ``grid`` (the grid, ``PointResult``, the CSV rows), ``measure`` (one point's steady state
through the knob backend, the load generator and ``/metrics``), ``cli`` (``main``: flags, backends, the sweep).

Public names: CSV_METRICS, GridPoint, MeasureError, PointResult, main, measure_point.
"""

from greenrl.live.profile.cli import main
from greenrl.live.profile.grid import CSV_METRICS, GridPoint, PointResult
from greenrl.live.profile.measure import MeasureError, measure_point

__all__ = ["CSV_METRICS", "GridPoint", "MeasureError", "PointResult", "main", "measure_point"]
