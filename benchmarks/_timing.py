"""The benchmarks' one timer. Benchmarks run as scripts (``python benchmarks/<name>.py``), so their folder is
on ``sys.path`` and they import this module as ``_timing``."""

from __future__ import annotations

import timeit
from collections.abc import Callable


def best_s(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls (s): the least disturbed by other work on the machine."""
    return min(timeit.repeat(fn, number=1, repeat=repeats))
