"""ServeGen per-client workload statistics: read a ServeGen category folder or its packed derivative.

ServeGen (github.com/alibaba/ServeGen, Apache-2.0) publishes production LLM traffic of Alibaba Cloud
Model Studio per client (an API customer) as statistics, not request logs. A category folder
(``language/m-large``) holds, for each client ``<id>``:

- ``chunk-<id>-trace.csv``, no header, one row per 600-s window:
  ``window_start_s, rate_rps, cv, distribution, param1, param2``; ``rate_rps x 600`` is the
  window's request count, ``distribution`` the best-fitting inter-arrival law (``Gamma``: shape,
  scale; ``Weibull``: shape c, scale), empty when the window has no request.
- ``chunk-<id>-dataset.json`` (absent for some clients):
  ``{window_start_s: {"input_tokens": pdf, "output_tokens": pdf, ...}}``, one entry per
  21,600-s (6-hour) window, each pdf a string holding a dict literal ``{tokens: probability}``.

:class:`ServeGenData` keeps what the generator needs, as arrays: per client and 600-s window the
request count, law and shape; per client and 6-hour window each length distribution as its
inverse CDF at the probabilities :data:`KNOT_P` (the compact form that ships in the package, see
``greenrl/data/servegen/LICENSES.md``).

Public names: ServeGenData, read_servegen_folder, read_servegen_npz, WINDOW_S, LENGTH_WINDOW_S,
KNOT_P, LAW_NONE, LAW_GAMMA, LAW_WEIBULL.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from greenrl.errors import InputError

__all__ = [
    "KNOT_P",
    "LAW_GAMMA",
    "LAW_NONE",
    "LAW_WEIBULL",
    "LENGTH_WINDOW_S",
    "WINDOW_S",
    "ServeGenData",
    "read_servegen_folder",
    "read_servegen_npz",
]

logger = logging.getLogger(__name__)

WINDOW_S = 600.0  # one row of a trace CSV: rate and inter-arrival law (s)
LENGTH_WINDOW_S = 21600.0  # one entry of a dataset JSON: length distributions (s)
_PER_LENGTH_WINDOW = int(LENGTH_WINDOW_S // WINDOW_S)
LAW_NONE, LAW_GAMMA, LAW_WEIBULL = 0, 1, 2
_LAWS = {"Gamma": LAW_GAMMA, "Weibull": LAW_WEIBULL}
# Probabilities at which each length distribution's inverse CDF is kept: every 1/64, plus the tails.
KNOT_P: npt.NDArray[np.float64] = np.unique(np.concatenate([np.linspace(0.0, 1.0, 65), [1e-3, 5e-3, 0.995, 0.999]]))
KNOT_P.setflags(write=False)
_FIELDS = ("input_tokens", "output_tokens")
_COLUMNS = ["window_start_s", "rate_rps", "cv", "distribution", "param1", "param2"]
_CHUNK = re.compile(r"chunk-(\d+)-trace\.csv")
_NPZ_KEYS = ("client_ids", "requests", "law", "shape", "has_lengths", "input_knots", "output_knots", "knot_p")


@dataclass(frozen=True, slots=True, eq=False)
class ServeGenData:
    """One ServeGen category as arrays: C clients, W windows of 600 s, L windows of 6 h, K knots.

    Attributes:
        name: the category (``language/m-large``) or the folder / file it was read from.
        client_ids: ServeGen client number of each row, shape ``[C]``.
        requests: requests of each client in each 600-s window, ``rate_rps x 600``, shape ``[C, W]``.
        law: inter-arrival law per client and window: 0 none, 1 Gamma, 2 Weibull, shape ``[C, W]``.
        shape: the law's shape parameter (Gamma shape k, Weibull shape c), shape ``[C, W]``.
        has_lengths: whether the client has length data for each 6-hour window, shape ``[C, L]``.
        input_knots: prompt length at probabilities ``knot_p`` (inverse CDF, tokens), ``[C, L, K]``.
        output_knots: output length at probabilities ``knot_p`` (tokens), ``[C, L, K]``.
        knot_p: the probabilities, increasing from 0 to 1, shape ``[K]``.
    """

    name: str
    client_ids: npt.NDArray[np.int64]
    requests: npt.NDArray[np.float64]
    law: npt.NDArray[np.int8]
    shape: npt.NDArray[np.float64]
    has_lengths: npt.NDArray[np.bool_]
    input_knots: npt.NDArray[np.int64]
    output_knots: npt.NDArray[np.int64]
    knot_p: npt.NDArray[np.float64]

    @property
    def n_windows(self) -> int:
        """Number of 600-s windows the data covers."""
        return int(self.requests.shape[1])

    @property
    def span_s(self) -> float:
        """The time the data covers, from its first window's start (s)."""
        return self.n_windows * WINDOW_S

    def rate_rps(self) -> npt.NDArray[np.float64]:
        """Aggregate arrival rate of all clients in each 600-s window (requests/s), shape ``[W]``."""
        return np.asarray(self.requests.sum(axis=0) / WINDOW_S, dtype=np.float64)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """The arrays to store in an npz file (knots as non-negative increments, for compression)."""
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "client_ids": self.client_ids,
            "requests": self.requests,
            "law": self.law,
            "shape": self.shape.astype(np.float32),
            "has_lengths": self.has_lengths,
            "knot_p": self.knot_p,
        }
        for field in _FIELDS:
            knots = getattr(self, field.replace("tokens", "knots"))
            steps = np.diff(knots, axis=-1, prepend=0)
            arrays[field.replace("tokens", "knots")] = steps.astype(np.uint16 if steps.max() < 2**16 else np.uint32)
        return arrays


def read_servegen_npz(path: Path, name: str) -> ServeGenData:
    """Read a packed category (written by ``greenrl.workload.servegen_pack``).

    Raises:
        InputError: naming the file and the array if it is missing, unreadable or mis-shaped.
    """
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(where, "(file)", f"cannot be read as an npz archive: {err}", "re-run servegen_pack") from None
    for key in _NPZ_KEYS:
        if key not in arrays:
            raise InputError(where, key, "array missing", "re-run greenrl.workload.servegen_pack on the ServeGen data")
    c, w = arrays["requests"].shape
    lengths = (c, -(-w // _PER_LENGTH_WINDOW), len(arrays["knot_p"]))
    for key, want in (("law", (c, w)), ("shape", (c, w)), ("input_knots", lengths), ("output_knots", lengths)):
        if arrays[key].shape != want:
            raise InputError(where, key, f"shape {arrays[key].shape}, expected {want}", "re-run servegen_pack")
    return ServeGenData(
        name=name,
        client_ids=arrays["client_ids"].astype(np.int64),
        requests=arrays["requests"].astype(np.float64),
        law=arrays["law"].astype(np.int8),
        shape=arrays["shape"].astype(np.float64),
        has_lengths=arrays["has_lengths"].astype(bool),
        input_knots=np.cumsum(arrays["input_knots"].astype(np.int64), axis=-1),
        output_knots=np.cumsum(arrays["output_knots"].astype(np.int64), axis=-1),
        knot_p=arrays["knot_p"].astype(np.float64),
    )


def read_servegen_folder(folder: Path) -> ServeGenData:
    """Read and validate a ServeGen category folder (``.../servegen/language/m-large``).

    Clients without ``chunk-<id>-dataset.json`` keep their arrivals; their lengths are borrowed
    from the other clients at generation time (see :func:`greenrl.workload.servegen_trace`).

    Raises:
        InputError: naming the file and field: no such folder, no trace file, a dataset JSON
            without its trace CSV, a row that is not ``window_start_s, rate_rps, cv, distribution,
            param1, param2``, windows that are not consecutive 600-s steps from 0, a negative or
            non-numeric rate, an unknown law or non-positive shape where the rate is positive,
            clients with different numbers of windows, a JSON that does not parse, a pdf that is
            not a ``{tokens: probability}`` literal or whose probabilities do not sum to 1.
    """
    where = str(folder)
    if not folder.is_dir():
        raise InputError(where, "path", "no such folder", "pass a ServeGen category folder, e.g. .../language/m-large")
    traces = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _CHUNK.fullmatch(p.name)))
    if not traces:
        raise InputError(
            where, "chunk-<client>-trace.csv", "no trace files in the folder", "point at a category folder"
        )
    ids = {cid for cid, _ in traces}
    for orphan in sorted(folder.glob("chunk-*-dataset.json")):
        cid_text = orphan.name.split("-")[1]
        if not cid_text.isdigit() or int(cid_text) not in ids:
            raise InputError(
                str(orphan.with_name(orphan.name.replace("dataset.json", "trace.csv"))),
                "(file)",
                f"missing: {orphan.name} has no trace file beside it",
                "restore the client's trace CSV, or remove its dataset JSON",
            )
    rows = [_read_trace_csv(path) for _, path in traces]
    n_windows = len(rows[0][0])
    for (_, path), (requests, _, _) in zip(traces, rows, strict=True):
        if len(requests) != n_windows:
            raise InputError(
                str(path),
                "window_start_s",
                f"{len(requests)} windows, but {traces[0][1].name} has {n_windows}",
                "give every client of the category the same windows",
            )
    n_length = -(-n_windows // _PER_LENGTH_WINDOW)
    knots = np.zeros((2, len(traces), n_length, len(KNOT_P)), dtype=np.int64)
    has_lengths = np.zeros((len(traces), n_length), dtype=bool)
    for row, (cid, _) in enumerate(traces):
        path = folder / f"chunk-{cid}-dataset.json"
        if path.is_file():
            _read_dataset_json(path, n_length, knots[:, row], has_lengths[row])
    logger.info("read ServeGen %s: %d clients, %d windows", where, len(traces), n_windows)
    return ServeGenData(
        name=where,
        client_ids=np.array([cid for cid, _ in traces], dtype=np.int64),
        requests=np.stack([r[0] for r in rows]),
        law=np.stack([r[1] for r in rows]),
        shape=np.stack([r[2] for r in rows]),
        has_lengths=has_lengths,
        input_knots=knots[0],
        output_knots=knots[1],
        knot_p=np.array(KNOT_P),
    )


def _bad_row(path: Path, column: str, mask: npt.NDArray[np.bool_], frame: pd.DataFrame, problem: str, fix: str) -> None:
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        raise InputError(str(path), column, f"row {row + 1}: {frame.iloc[row, :].tolist()!r}: {problem}", fix)


def _read_trace_csv(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    """Requests, law code and shape per window of one client's trace CSV."""
    fix_row = "each row must read window_start_s, rate_rps, cv, distribution, param1, param2"
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(str(path), "(file)", "the file is empty", fix_row) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise InputError(str(path), "(file)", f"cannot be read as CSV: {err}", fix_row) from None
    if frame.shape[1] != len(_COLUMNS):
        raise InputError(str(path), "(columns)", f"{frame.shape[1]} columns, expected {len(_COLUMNS)}", fix_row)
    frame.columns = _COLUMNS
    num = {col: pd.to_numeric(frame[col].str.strip(), errors="coerce").to_numpy(np.float64) for col in _COLUMNS}
    law_text = frame["distribution"].str.strip().to_numpy(dtype=str)
    start = num["window_start_s"]
    _bad_row(
        path,
        "window_start_s",
        start != np.arange(len(frame)) * WINDOW_S,
        frame,
        "not 600 s after the previous row",
        "list every 600-s window from 0 in order",
    )
    rate = num["rate_rps"]
    _bad_row(path, "rate_rps", ~(np.isfinite(rate) & (rate >= 0)), frame, "not a number >= 0", "give a rate in req/s")
    busy = rate > 0
    law = np.array([_LAWS.get(text, -1) for text in law_text], dtype=np.int8)
    _bad_row(
        path, "distribution", busy & (law < 0), frame, "unknown law where the rate is positive", "use Gamma or Weibull"
    )
    shape = num["param1"]
    _bad_row(
        path,
        "param1",
        busy & ~(np.isfinite(shape) & (shape > 0)),
        frame,
        "shape must be a number > 0",
        "give the fitted law's shape parameter",
    )
    law[~busy] = LAW_NONE
    return np.where(busy, rate * WINDOW_S, 0.0), law, np.where(busy, shape, 0.0)


def _read_dataset_json(path: Path, n_length: int, knots: npt.NDArray[np.int64], ok: npt.NDArray[np.bool_]) -> None:
    """Fill ``knots[field, window, :]`` and ``ok[window]`` from one client's dataset JSON."""
    where = str(path)
    try:
        with path.open() as handle:
            doc = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(where, "(file)", f"not valid JSON: {err}", "restore the file from ServeGen") from None
    if not isinstance(doc, dict):
        raise InputError(where, "(file)", "not a JSON object", "use {window_start_s: {field: pdf}}")
    for key, fields in doc.items():
        start_s = float(key) if key.strip().lstrip("-").isdigit() else -1.0
        window = int(start_s // LENGTH_WINDOW_S)
        if start_s % LENGTH_WINDOW_S or not 0 <= window < n_length:
            raise InputError(
                where,
                key,
                f"not a 6-hour window start within the {n_length} windows of the trace",
                "use keys 0, 21600, 43200, ...",
            )
        if not isinstance(fields, dict) or any(not isinstance(fields.get(f), str) for f in _FIELDS):
            raise InputError(
                where, f"{key}", "needs string pdfs input_tokens and output_tokens", "restore the file from ServeGen"
            )
        prompt, output = (_pdf_knots(where, f"{key}.{field}", fields[field]) for field in _FIELDS)
        if prompt is not None and output is not None:
            knots[0, window], knots[1, window] = prompt, output
            ok[window] = True


def _pdf_knots(where: str, field: str, text: str) -> npt.NDArray[np.int64] | None:
    """Inverse CDF of a ``{tokens: probability}`` literal at :data:`KNOT_P`; None for an empty pdf."""
    fix = "write the pdf as a dict literal {tokens: probability, ...} summing to 1"
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise InputError(where, field, f"not a dict literal: {text[:40]!r}", fix)
    inner = inner[1:-1].strip()
    if not inner:
        return None
    pairs = inner.count(":")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns (or raises) at text it cannot parse; counted below
            values = np.fromstring(inner.replace(":", ","), sep=",")
    except ValueError:
        values = np.zeros(0)
    if pairs == 0 or values.size != 2 * pairs or inner.count(",") != pairs - 1:
        raise InputError(where, field, f"cannot parse {text[:40]!r}...", fix)
    tokens, probs = values[0::2], values[1::2]
    if np.any(tokens < 0) or np.any(tokens != np.round(tokens)):
        raise InputError(where, field, "a token count is negative or not a whole number", fix)
    total = probs.sum()
    if not (np.all(probs >= 0) and abs(total - 1.0) < 1e-2):
        raise InputError(where, field, f"probabilities must be >= 0 and sum to 1 (sum {total:.6g})", fix)
    order = np.argsort(tokens, kind="stable")
    tokens, probs = tokens[order][probs[order] > 0], probs[order][probs[order] > 0]
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    index = np.minimum(np.searchsorted(cdf, KNOT_P, side="left"), len(cdf) - 1)
    return tokens[index].astype(np.int64)
