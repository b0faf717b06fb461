"""Production-shaped request streams from ServeGen's per-client statistics (Alibaba Cloud Model Studio).

:func:`servegen_trace` turns a category (``language/m-large``) and a time range into a
:class:`~greenrl.workload.Trace`. The model follows ServeGen's own generator
(``servegen/construct.py``, ``_sample_iats`` and ``_sample_data_batch``, commit ``f891d11``):

- **Counts.** Client ``c`` sends ``rate_rps x 600 x scale`` requests in each 600-s window
  (``rate_rps x 600`` is a whole number in the data). A fractional count is rounded up with
  probability equal to its fraction (stochastic rounding), so the expected count is exact and
  ``scale=1`` reproduces the data's counts.
- **Arrival times.** Within a window the ``n`` requests are spaced by ``n + 1`` inter-arrival gaps
  drawn from the window's fitted law and rescaled to fill the 600 s. The data parameterises the
  laws as SciPy does and ServeGen draws them with SciPy: ``Gamma`` = ``scipy.stats.gamma(a=param1,
  scale=param2)`` (shape k, scale theta; density ``x^(k-1) e^(-x/theta) / (Gamma(k) theta^k)``),
  ``Weibull`` = ``scipy.stats.weibull_min(c=param1, scale=param2)`` (density
  ``(c/lambda) (x/lambda)^(c-1) e^(-(x/lambda)^c)``). Since the gaps are rescaled to the window,
  the scale parameter cancels and only the shape matters; it sets the burstiness (a Gamma law's
  coefficient of variation is ``1/sqrt(k)``, which equals the data's ``cv`` column). ServeGen
  draws ``n`` gaps and drops the arrival that lands on the window's end; the extra gap here is a
  random phase, so a window holds exactly ``n`` requests (for Poisson gaps, uniform order statistics).
- **Lengths.** Each request's prompt and output lengths are drawn independently from the client's
  distributions for the 6-hour window it arrives in, by inverse-CDF sampling between the stored
  knots (see :data:`~greenrl.workload.servegen_data.KNOT_P`; within a knot interval the length is
  uniform). ServeGen's generator uses one uniform number for both fields (perfectly rank-correlated
  lengths); the data gives the two marginals only, so they are drawn independently here. Clients
  without length data (their ``dataset.json`` is absent; 37 % of ``language/m-large``'s requests)
  keep their arrivals and borrow each request's lengths from a client with data, chosen with
  probability proportional to that client's requests in the same 6-hour window (ServeGen drops
  them). A length of 0 tokens (a few pdfs have mass there) is raised to 1.

Scaling: ``scale`` multiplies every client's rate, so the aggregate load and the mix of clients
keep their shape. :func:`scale_for_rate_rps` picks the factor for a target mean rate.

Days: window 0 starts at a midnight; days 0-9 train (:data:`TRAIN_DAYS`), 10-11 validate
(:data:`VALIDATE_DAYS`), 12-13 are held out for tests (:data:`TEST_DAYS`). ``reason/deepseek-r1``
has day 0 only.

Public names: servegen_trace, servegen_day, load_servegen, servegen_categories, scale_for_rate_rps,
split_days, over_context, ServeGenData, Split, DAY_S, TRAIN_DAYS, VALIDATE_DAYS, TEST_DAYS.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from greenrl.errors import InputError
from greenrl.workload.servegen_data import (
    LAW_GAMMA,
    LENGTH_WINDOW_S,
    WINDOW_S,
    ServeGenData,
    read_servegen_folder,
    read_servegen_npz,
)
from greenrl.workload.trace import Trace

__all__ = [
    "DAY_S",
    "TEST_DAYS",
    "TRAIN_DAYS",
    "VALIDATE_DAYS",
    "ServeGenData",
    "Split",
    "load_servegen",
    "over_context",
    "scale_for_rate_rps",
    "servegen_categories",
    "servegen_day",
    "servegen_trace",
    "split_days",
]

logger = logging.getLogger(__name__)

DAY_S = 86400.0
TRAIN_DAYS: tuple[int, ...] = tuple(range(10))
VALIDATE_DAYS: tuple[int, ...] = (10, 11)
TEST_DAYS: tuple[int, ...] = (12, 13)
Split = Literal["train", "validate", "test"]
_SPLITS: dict[str, tuple[int, ...]] = {"train": TRAIN_DAYS, "validate": VALIDATE_DAYS, "test": TEST_DAYS}
_SHIPPED = ("language/m-large", "language/m-small", "reason/deepseek-r1")
_PACKAGE_DIR = "data/servegen"


def split_days(split: Split) -> tuple[int, ...]:
    """The days of a split: ``train`` 0-9, ``validate`` 10-11, ``test`` 12-13 (held out).

    Example:
        >>> split_days("test")
        (12, 13)
    """
    if split not in _SPLITS:
        raise InputError("split_days", "split", f"unknown split {split!r}", "use 'train', 'validate' or 'test'")
    return _SPLITS[split]


def servegen_categories() -> list[str]:
    """The ServeGen categories shipped with greenrl, accepted by :func:`load_servegen`.

    Example:
        >>> servegen_categories()
        ['language/m-large', 'language/m-small', 'reason/deepseek-r1']
    """
    return list(_SHIPPED)


def load_servegen(category: str | Path) -> ServeGenData:
    """A shipped category by name, a ServeGen category folder, or a packed ``.npz`` file.

    Shipped categories are read once per process and the same object is returned after.

    Raises:
        InputError: an unknown name or path, or bad data (naming the file and the field).
    """
    key = str(category)
    if key in _SHIPPED:
        return _load_shipped(key)
    path = Path(category)
    if path.is_dir():
        return read_servegen_folder(path)
    if path.is_file() and path.suffix == ".npz":
        return read_servegen_npz(path, path.stem)
    raise InputError(
        key,
        "category",
        "no such shipped category, ServeGen folder or .npz file",
        f"use one of {', '.join(_SHIPPED)}, or a folder like .../servegen/language/m-large",
    )


@cache
def _load_shipped(name: str) -> ServeGenData:
    with resources.as_file(resources.files("greenrl").joinpath(_PACKAGE_DIR, f"{name}.npz")) as path:
        return read_servegen_npz(path, name)


def _data(category: str | Path | ServeGenData) -> ServeGenData:
    return category if isinstance(category, ServeGenData) else load_servegen(category)


def scale_for_rate_rps(
    category: str | Path | ServeGenData, mean_rps: float, days: tuple[int, ...] = TRAIN_DAYS
) -> float:
    """The ``scale`` that makes the category's mean aggregate rate over ``days`` equal ``mean_rps``.

    Args:
        category: as for :func:`servegen_trace`.
        mean_rps: target mean arrival rate (requests/s), > 0.
        days: days to average over; those beyond the data are ignored (``deepseek-r1`` has one).

    Raises:
        InputError: a non-positive target, or no day of ``days`` within the data.
    """
    data = _data(category)
    if not (np.isfinite(mean_rps) and mean_rps > 0):
        raise InputError(data.name, "mean_rps", f"must be > 0, got {mean_rps!r}", "pass e.g. 5.0")
    per_day = int(DAY_S // WINDOW_S)
    rates = data.rate_rps()
    picked = [rates[d * per_day : (d + 1) * per_day] for d in days if d >= 0 and (d + 1) * per_day <= len(rates)]
    if not picked:
        raise InputError(
            data.name,
            "days",
            f"none of {days} is within the data's {len(rates) // per_day} days",
            "pass days the category covers",
        )
    return float(mean_rps / np.concatenate(picked).mean())


def servegen_day(
    category: str | Path | ServeGenData, day: int, *, scale: float, seed: int | np.random.Generator
) -> Trace:
    """One whole day (``day`` 0-13) of a category: ``servegen_trace(category, day * 86400, 86400, ...)``."""
    return servegen_trace(category, day * DAY_S, DAY_S, scale=scale, seed=seed)


def servegen_trace(
    category: str | Path | ServeGenData,
    start_s: float,
    duration_s: float,
    *,
    scale: float,
    seed: int | np.random.Generator,
) -> Trace:
    """Requests of a ServeGen category in ``[start_s, start_s + duration_s)``, times rebased to 0.

    Args:
        category: a shipped name (:func:`servegen_categories`), a ServeGen category folder, a
            packed ``.npz`` file, or loaded :class:`ServeGenData`.
        start_s: start of the range, seconds from the data's first window (day ``d`` starts at
            ``d * 86400``), >= 0.
        duration_s: length of the range (s), > 0; the range must end within the data.
        scale: multiplier of every client's rate (dimensionless), > 0; see :func:`scale_for_rate_rps`.
        seed: an integer seed, or a ``np.random.Generator`` (which the call advances).

    Returns:
        A trace of horizon ``duration_s`` named ``servegen:<category>[<start>s+<duration>s x<scale>]``.

    Raises:
        InputError: a range outside the data, a non-positive scale or duration, an unknown category,
            or 6-hour windows with arrivals where no client has length data.
    """
    data = _data(category)
    where = f"servegen_trace({data.name!r})"
    _check_range(where, data, start_s, duration_s, scale)
    rng = np.random.default_rng(seed)
    end_s = start_s + duration_s
    w0, w1 = int(start_s // WINDOW_S), min(int(np.ceil(end_s / WINDOW_S)), data.n_windows)
    expected = data.requests[:, w0:w1] * scale
    counts = np.floor(expected + rng.random(expected.shape)).astype(np.int64)
    cells = np.flatnonzero(counts)
    client, window = np.divmod(cells, w1 - w0)
    window += w0
    arrival_s, owner = _arrivals(rng, data.law[client, window], data.shape[client, window], counts.ravel()[cells])
    arrival_s += window[owner] * WINDOW_S
    keep = (arrival_s >= start_s) & (arrival_s < end_s)
    arrival_s, client = arrival_s[keep], client[owner[keep]]
    order = np.argsort(arrival_s, kind="stable")
    arrival_s, client = arrival_s[order], client[order]
    inputs, outputs = _lengths(where, rng, data, client, arrival_s)
    name = f"servegen:{data.name}[{start_s:g}s+{duration_s:g}s x{scale:g}]"
    logger.debug("%s: %d requests", name, len(arrival_s))
    start_hour = (start_s / 3600.0) % 24.0  # window 0 starts at a midnight
    return Trace(name, arrival_s - start_s, inputs, outputs, duration_s=duration_s, start_hour=start_hour)


def over_context(trace: Trace, max_model_len_tokens: int) -> npt.NDArray[np.bool_]:
    """Which requests vLLM would refuse: ``input_tokens + output_tokens > max_model_len_tokens``.

    vLLM's OpenAI server answers such a request (prompt plus ``max_tokens``, which greenrl sets to
    ``output_tokens``) with HTTP 400 before scheduling it; count it as rejected and missed.

    Example:
        >>> t = Trace("t", [0.0, 1.0], [100, 4000], [50, 200], duration_s=2.0)
        >>> over_context(t, 4096).tolist()
        [False, True]
    """
    if not max_model_len_tokens >= 1:
        raise InputError(
            trace.name,
            "max_model_len_tokens",
            f"must be >= 1, got {max_model_len_tokens!r}",
            "pass the served model's context length, e.g. 8192",
        )
    return np.asarray(trace.input_tokens + trace.output_tokens > max_model_len_tokens)


def _check_range(where: str, data: ServeGenData, start_s: float, duration_s: float, scale: float) -> None:
    if not (np.isfinite(scale) and scale > 0):
        raise InputError(where, "scale", f"must be > 0, got {scale!r}", "pass the node's share of the load, e.g. 0.05")
    if not (np.isfinite(duration_s) and duration_s > 0):
        raise InputError(where, "duration_s", f"must be > 0 s, got {duration_s!r}", "pass e.g. 86400.0")
    if not (np.isfinite(start_s) and start_s >= 0 and start_s + duration_s <= data.span_s):
        raise InputError(
            where,
            "start_s/duration_s",
            f"range [{start_s:g}, {start_s + duration_s:g}) s is outside the data's [0, {data.span_s:g}) s "
            f"({data.span_s / DAY_S:g} days)",
            "pick a range within the data (day d is [d * 86400, (d + 1) * 86400))",
        )


def _arrivals(
    rng: np.random.Generator, law: npt.NDArray[np.int8], shape: npt.NDArray[np.float64], n: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Arrival offsets within their window (s) and the cell each belongs to, for cells of ``n`` requests."""
    gaps_per = n + 1
    first = np.cumsum(gaps_per) - gaps_per
    cell = np.repeat(np.arange(len(n)), gaps_per)
    k = shape[cell]
    gamma = law[cell] == LAW_GAMMA
    gaps = np.empty(len(cell))
    gaps[gamma] = rng.standard_gamma(k[gamma])
    gaps[~gamma] = rng.weibull(k[~gamma])
    total = np.add.reduceat(gaps, first) if len(first) else np.zeros(0)
    degenerate = ~(total > 0) | ~np.isfinite(total)  # tiny Gamma shapes can underflow every gap to 0
    if degenerate.any():
        gaps[degenerate[cell]] = 1.0
        total[degenerate] = gaps_per[degenerate]
    ends = np.cumsum(gaps / total[cell])  # segment i's gaps sum to 1, so its offsets are ends - i
    last = first + gaps_per - 1
    offsets = ends - np.concatenate([[0.0], ends[last[:-1]]])[cell]
    keep = np.ones(len(cell), dtype=bool)
    keep[last] = False  # the end of the last gap is the window's end: not an arrival
    return np.clip(offsets[keep], 0.0, 1.0 - 1e-12) * WINDOW_S, cell[keep]


def _lengths(
    where: str,
    rng: np.random.Generator,
    data: ServeGenData,
    client: npt.NDArray[np.int64],
    arrival_s: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Prompt and output lengths (tokens) of requests by ``client`` arriving at ``arrival_s``."""
    n_length = data.has_lengths.shape[1]
    slot = np.minimum((arrival_s // LENGTH_WINDOW_S).astype(np.int64), n_length - 1)
    source = client.copy()
    borrow = ~data.has_lengths[client, slot]
    if borrow.any():
        source[borrow] = _donors(where, rng, data, slot[borrow])
    n_knots = len(data.knot_p)
    cell = (source * n_length + slot) * n_knots
    lut = _knot_lookup(data.knot_p)
    drawn = []
    for knots in (data.input_knots.ravel(), data.output_knots.ravel()):
        u = rng.random(len(client))
        j = lut[(u * len(lut)).astype(np.int64)]
        j += u >= data.knot_p[j + 1]  # at most one knot lies inside a lookup cell
        frac = (u - data.knot_p[j]) / (data.knot_p[j + 1] - data.knot_p[j])
        lo, hi = knots[cell + j], knots[cell + j + 1]
        drawn.append(np.maximum(np.rint(lo + frac * (hi - lo)).astype(np.int64), 1))
    return drawn[0], drawn[1]


def _knot_lookup(knot_p: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Index of the knot interval holding the left edge of each of ``2^m`` equal cells of [0, 1).

    The cells are narrower than the narrowest knot interval, so a cell holds at most one knot and
    one comparison finds the interval of any ``u`` in the cell (faster than ``np.searchsorted``).
    """
    size = int(2 ** np.ceil(np.log2(1.0 / np.diff(knot_p).min())))
    index = np.searchsorted(knot_p, np.arange(size) / size, side="right") - 1
    return np.minimum(index, len(knot_p) - 2)


def _donors(
    where: str, rng: np.random.Generator, data: ServeGenData, slot: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """A client with length data for each 6-hour window in ``slot``, weighted by its requests there."""
    n_clients, n_length = data.has_lengths.shape
    per = int(LENGTH_WINDOW_S // WINDOW_S)
    padded = np.zeros((n_clients, n_length * per))
    padded[:, : data.n_windows] = data.requests
    weight = padded.reshape(n_clients, n_length, per).sum(axis=2).T * data.has_lengths.T  # [L, C]
    total = weight.sum(axis=1)
    empty = np.unique(slot[total[slot] <= 0])
    if len(empty):
        raise InputError(
            where,
            "dataset.json",
            f"no client has length data for 6-hour window {empty[0]} (starting at {empty[0] * LENGTH_WINDOW_S:g} s)",
            "add the clients' dataset JSON files",
        )
    cdf = np.cumsum(weight / np.where(total > 0, total, 1.0)[:, None], axis=1) + np.arange(n_length)[:, None]
    cdf[:, -1] = np.arange(n_length) + 1.0
    pick = np.searchsorted(cdf.ravel(), slot + rng.random(len(slot)), side="right")
    return np.minimum(pick - slot * n_clients, n_clients - 1)
