"""The profiling grid and the measurement CSV it becomes.

A grid is the product of running batches (per replica, held by the admission cap), SM clocks (None: the
clock the node runs at), prompt lengths and output lengths. Each point's steady state (``PointResult``)
becomes rows of the measurement schema of ``docs/surrogate.md`` (``greenrl.surrogate.data.SCHEMA_COLUMNS``),
which ``greenrl fit --data`` reads. The fit has no clock column: rows at another clock than the GPU's top
one go to a second file with an ``sm_clock_mhz`` column, so a refit never reads them as top-clock rows.

Public names: GridPoint, PointResult, CSV_METRICS, grid, parse_ints, measurement_rows, write_csv.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from greenrl.errors import InputError
from greenrl.ioutil import atomic_write_text
from greenrl.surrogate.data import SCHEMA_COLUMNS

__all__ = ["CSV_METRICS", "GridPoint", "PointResult", "grid", "measurement_rows", "parse_ints", "write_csv"]

CSV_METRICS = ("mixed_step_s", "power_w", "output_tokens_per_s", "energy_per_output_token_j")
"""Metrics written per point, all steady-state figures of one replica (``greenrl.surrogate.steady``)."""


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One configuration to measure.

    Attributes:
        batch: running sequences per replica the admission cap holds (``max_num_seqs``).
        sm_clock_mhz: SM clock to lock (MHz); None: leave the clock as it is (the top clock, unlocked).
        input_tokens: prompt tokens per request.
        output_tokens: output tokens per request (every request generates all of them).
    """

    batch: int
    sm_clock_mhz: int | None
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class PointResult:
    """The steady state measured at one grid point, per replica.

    Attributes:
        point: the configuration.
        mean_running: mean running sequences per replica over the window (time average of the running gauge).
        decoding: mean sequences decoding per replica (sum of the window's inter-token gaps / its span).
        span_s: measured window, server seconds (the twin's simulated time, else wall time).
        output_tokens: tokens generated in the window (all replicas).
        energy_j: GPU energy in the window (all GPUs measured, J).
        mixed_step_s: mean time between tokens (server's ITL histogram sum / count), i.e. the mean iteration (s).
        power_w: mean power of one replica's GPUs (W).
        output_tokens_per_s: tokens per second of one replica.
        energy_per_output_token_j: GPU energy per generated token (J).
    """

    point: GridPoint
    mean_running: float
    decoding: float
    span_s: float
    output_tokens: float
    energy_j: float
    mixed_step_s: float
    power_w: float
    output_tokens_per_s: float
    energy_per_output_token_j: float


def parse_ints(text: str, flag: str, *, minimum: int = 1) -> list[int]:
    """A comma-separated list of integers >= ``minimum``, e.g. ``"4,16,64"``.

    Example:
        >>> parse_ints("4, 16,64", "--batch")
        [4, 16, 64]
    """
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise InputError(flag, flag.lstrip("-"), f"{part!r} is not an integer", f"pass e.g. {flag} 4,16") from None
        if value < minimum:
            raise InputError(flag, flag.lstrip("-"), f"{value} is below {minimum}", f"pass values >= {minimum}")
        values.append(value)
    if not values:
        raise InputError(flag, flag.lstrip("-"), "empty list: the grid has no point", f"pass e.g. {flag} 4,16")
    return sorted(set(values))


def grid(
    batches: Sequence[int],
    clocks: Sequence[int | None],
    inputs: Sequence[int],
    outputs: Sequence[int],
) -> list[GridPoint]:
    """Every combination, clock by clock (a clock change is the slowest knob), then batch, prompt, output."""
    if not (batches and clocks and inputs and outputs):
        raise InputError("grid", "points", "the grid is empty", "give at least one value per axis")
    return [GridPoint(b, c, i, o) for c, b, i, o in itertools.product(clocks, batches, inputs, outputs)]


def measurement_rows(
    results: Iterable[PointResult], *, model: str, gpu: str, tp: int, source: str
) -> list[dict[str, object]]:
    """Rows of the measurement schema (plus ``sm_clock_mhz``): one per point and metric in ``CSV_METRICS``."""
    rows: list[dict[str, object]] = []
    for r in results:
        for metric in CSV_METRICS:
            rows.append(
                {
                    "model": model,
                    "gpu": gpu,
                    "tp": tp,
                    "batch": round(r.mean_running, 3),
                    "output_tokens": r.point.output_tokens,
                    "metric": metric,
                    "value": float(f"{getattr(r, metric):.6g}"),
                    "input_tokens": r.point.input_tokens,
                    "workload": "",
                    "stack": "",
                    "weight_dtype": "",
                    "source": f"{source} cap={r.point.batch}",
                    "sm_clock_mhz": "" if r.point.sm_clock_mhz is None else r.point.sm_clock_mhz,
                }
            )
    return rows


def write_csv(path: str | Path, rows: Sequence[dict[str, object]], *, with_clock: bool) -> None:
    """Write ``rows`` atomically: the schema's columns, plus ``sm_clock_mhz`` when ``with_clock``."""
    columns = [*SCHEMA_COLUMNS, *(["sm_clock_mhz"] if with_clock else [])]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
