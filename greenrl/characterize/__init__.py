"""``python -m greenrl.characterize``: sweep the simulated node the way the seed study swept a real one.

Stojkovic et al., *Towards Greener LLMs* (arXiv 2403.20306) served Llama-2-70B with vLLM on a
DGX-H100 and varied tensor parallelism, SM clock, maximum batch and request lengths. This command
runs the same grid on ``SimNode``: one replica of each TP degree (the node's other GPUs idle and not
counted), fixed-length requests of each length class, and a load that either keeps the batch full
(``--load saturating``, the study's maximum-throughput measurement) or arrives as a seeded Poisson
stream (``--load RPS``). It writes one CSV row per grid point, plots, and prints the study's headline
shapes next to the ones computed from the sweep. Definitions are in ``docs/characterization.md``.

Example:
    python -m greenrl.characterize --out runs/characterize
    python -m greenrl.characterize --tp 4 8 --batches 4 8 --clocks 1605 1980 --inputs short --outputs short

Public names: LENGTH_CLASSES, DEFAULT_CLOCKS_MHZ, DEFAULT_BATCHES, STUDY_FINDINGS, SweepSpec, Finding,
measure_point, sweep, compare, write_plots, main.

Modules, one job each: ``grid`` (length classes, default grid, ``SweepSpec``), ``measure``
(``measure_point``, ``sweep``), ``findings`` (``STUDY_FINDINGS``, ``compare``), ``plots``
(``write_plots``), ``cli`` (flags, ``main``; ``__main__`` runs it).
"""

from __future__ import annotations

from greenrl.characterize.cli import main
from greenrl.characterize.findings import STUDY_FINDINGS, Finding, compare
from greenrl.characterize.grid import DEFAULT_BATCHES, DEFAULT_CLOCKS_MHZ, LENGTH_CLASSES, SweepSpec
from greenrl.characterize.measure import measure_point, sweep
from greenrl.characterize.plots import write_plots

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_CLOCKS_MHZ",
    "LENGTH_CLASSES",
    "STUDY_FINDINGS",
    "Finding",
    "SweepSpec",
    "compare",
    "main",
    "measure_point",
    "sweep",
    "write_plots",
]
