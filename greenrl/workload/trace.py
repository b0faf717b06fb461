"""Request traces: arrival times with paired input / output lengths, loaded from the bundled or a user's file.

A :class:`Trace` is the workload a serving node replays: request ``i`` arrives at ``arrival_s[i]``
seconds after the trace start with an ``input_tokens[i]``-token prompt and asks for
``output_tokens[i]`` tokens. Traces cover the half-open horizon ``[0, duration_s)`` and can be cut
(:meth:`Trace.window`), sped up or slowed down (:meth:`Trace.scale_rate`) and repeated
(:meth:`Trace.tile`). Everything is validated once, here, so consumers can trust the arrays.

Public names: Trace, load_trace, trace_names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from greenrl.errors import InputError

__all__ = ["Trace", "load_trace", "trace_names"]

logger = logging.getLogger(__name__)

TimeUnit = Literal["s", "ms", "datetime"]
_G = TypeVar("_G", bound=np.generic)


@dataclass(frozen=True, slots=True)
class _Builtin:
    file: str
    time_col: str
    input_col: str
    output_col: str
    time_unit: TimeUnit


_BUILTINS: dict[str, _Builtin] = {
    "azure-code": _Builtin("azure_llm_2023_code.csv", "TIMESTAMP", "ContextTokens", "GeneratedTokens", "datetime"),
    "azure-conv": _Builtin("azure_llm_2023_conv.csv", "TIMESTAMP", "ContextTokens", "GeneratedTokens", "datetime"),
    "mooncake-conv": _Builtin("mooncake_conversation_trace.csv", "timestamp", "input_length", "output_length", "ms"),
}

# Column names tried, in order, when the caller does not name a column: greenrl's own schema,
# then the Azure LLM inference trace's, then Mooncake's.
MAX_TOKENS = 2**31 - 1
"""The longest prompt or output a trace may ask for (tokens); larger counts are typos or overflow."""
_TIME_COLS = ("arrival_s", "TIMESTAMP", "timestamp")
_INPUT_COLS = ("input_tokens", "ContextTokens", "input_length")
_OUTPUT_COLS = ("output_tokens", "GeneratedTokens", "output_length")


def trace_names() -> list[str]:
    """The names of the bundled traces, accepted by :func:`load_trace`.

    Example:
        >>> trace_names()
        ['azure-code', 'azure-conv', 'mooncake-conv']
    """
    return sorted(_BUILTINS)


def _frozen(values: npt.ArrayLike, dtype: type[_G]) -> npt.NDArray[_G]:
    arr = np.array(values, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A stream of requests: when each arrives and how long its prompt and output are.

    The arrays are read-only copies, one entry per request, sorted by arrival (ties allowed).

    Attributes:
        name: label for logs and plots, e.g. ``azure-conv`` or a file stem.
        arrival_s: arrival time of each request, seconds from the trace start, non-decreasing,
            in ``[0, duration_s]`` (float64, s).
        input_tokens: prompt length of each request, >= 1 (int64, tokens).
        output_tokens: output length of each request, >= 1 (int64, tokens).
        duration_s: length of the horizon the trace covers, ``[0, duration_s)`` (s). For a trace
            read from a file it is the span from the first to the last arrival plus one mean
            inter-arrival gap, so that ``mean_rate_rps`` is ``(n - 1) / span`` and
            :meth:`tile` leaves one mean gap between copies.
        start_hour: hour of day (0-24) at t = 0, where the source knows it (a ServeGen window), else
            None; methods that move the time axis drop it.

    Raises:
        InputError: if the arrays differ in length, arrivals are unsorted, negative, non-finite or
            beyond ``duration_s``, a token count is below 1, or ``duration_s`` is not positive.
    """

    name: str
    arrival_s: npt.NDArray[np.float64]
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    duration_s: float
    start_hour: float | None = None

    def __post_init__(self) -> None:
        where = f"Trace({self.name!r})"
        arrival = _frozen(self.arrival_s, np.float64)
        inputs = _frozen(self.input_tokens, np.int64)
        outputs = _frozen(self.output_tokens, np.int64)
        for field, arr in (("arrival_s", arrival), ("input_tokens", inputs), ("output_tokens", outputs)):
            if arr.ndim != 1:
                raise InputError(where, field, f"must be 1-D, got shape {arr.shape}", "pass one value per request")
        if not len(arrival) == len(inputs) == len(outputs):
            raise InputError(
                where,
                "arrival_s/input_tokens/output_tokens",
                f"lengths differ ({len(arrival)}, {len(inputs)}, {len(outputs)})",
                "pass one arrival time, input length and output length per request",
            )
        duration_s = float(self.duration_s)
        if not (np.isfinite(duration_s) and duration_s > 0):
            raise InputError(
                where, "duration_s", f"must be a positive number of seconds, got {duration_s!r}", "pass e.g. 3600.0"
            )
        if not np.all(np.isfinite(arrival)):
            raise InputError(where, "arrival_s", "contains NaN or infinite times", "pass finite seconds")
        if len(arrival):
            if arrival[0] < 0:
                raise InputError(where, "arrival_s", f"negative arrival {arrival[0]!r} s", "rebase times to >= 0")
            if arrival[-1] > duration_s:
                raise InputError(
                    where,
                    "arrival_s",
                    f"last arrival {arrival[-1]:g} s is beyond duration_s {duration_s:g} s",
                    "pass a duration_s that covers every arrival",
                )
            back = np.flatnonzero(np.diff(arrival) < 0)
            if len(back):
                raise InputError(
                    where,
                    "arrival_s",
                    f"not sorted: request {back[0] + 1} arrives before request {back[0]} (0-based)",
                    "sort the requests by arrival time",
                )
        for field, arr in (("input_tokens", inputs), ("output_tokens", outputs)):
            bad = np.flatnonzero(arr < 1)
            if len(bad):
                raise InputError(where, field, f"request {bad[0]} has {arr[bad[0]]} tokens", "use counts >= 1")
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "input_tokens", inputs)
        object.__setattr__(self, "output_tokens", outputs)
        object.__setattr__(self, "duration_s", duration_s)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def __reduce__(self) -> tuple[type[Trace], tuple[object, ...]]:
        # Rebuild through __init__ so unpickled copies (e.g. in vectorised-env workers) are read-only too.
        return (Trace, (self.name, self.arrival_s, self.input_tokens, self.output_tokens, self.duration_s))

    def __repr__(self) -> str:
        return f"Trace(name={self.name!r}, requests={len(self)}, duration_s={self.duration_s:g})"

    @property
    def mean_rate_rps(self) -> float:
        """Mean arrival rate over the horizon, ``len(self) / duration_s`` (requests/s)."""
        return len(self) / self.duration_s

    def window(self, start_s: float, duration_s: float) -> Trace:
        """The requests arriving in ``[start_s, start_s + duration_s)``, with times rebased so ``start_s`` is 0.

        Args:
            start_s: start of the window, from the trace start (s), >= 0.
            duration_s: length of the window (s), > 0; the window must end within this trace's
                horizon (use :meth:`tile` first to go beyond it).

        Returns:
            A trace of horizon ``duration_s``.

        Raises:
            InputError: on a negative start, a non-positive length, a window past the horizon, or
                a window with no requests.
        """
        where = f"Trace({self.name!r}).window"
        if not (np.isfinite(start_s) and start_s >= 0):
            raise InputError(where, "start_s", f"must be >= 0 s, got {start_s!r}", "pass a start within the trace")
        if not (np.isfinite(duration_s) and duration_s > 0):
            raise InputError(where, "duration_s", f"must be > 0 s, got {duration_s!r}", "pass a positive length")
        end_s = start_s + duration_s
        if end_s > self.duration_s * (1 + 1e-12):
            raise InputError(
                where,
                "duration_s",
                f"window [{start_s:.10g}, {end_s:.10g}) s ends past the trace's {self.duration_s:.10g} s horizon",
                "shorten the window, or call tile() first to repeat the trace",
            )
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        if hi == lo:
            raise InputError(
                where,
                "start_s/duration_s",
                f"no request arrives in [{start_s:.10g}, {end_s:.10g}) s",
                "pick a window that contains arrivals, or a longer one",
            )
        return Trace(
            name=f"{self.name}[{start_s:g}s+{duration_s:g}s]",
            arrival_s=np.minimum(self.arrival_s[lo:hi] - start_s, duration_s),
            input_tokens=self.input_tokens[lo:hi],
            output_tokens=self.output_tokens[lo:hi],
            duration_s=duration_s,
        )

    def scale_rate(self, factor: float) -> Trace:
        """Compress time by ``factor``: arrivals and horizon are divided by it, so the rate is multiplied.

        Lengths are unchanged. ``factor=2`` doubles the request rate; ``0.5`` halves it.

        Args:
            factor: rate multiplier, > 0 (dimensionless).

        Raises:
            InputError: if ``factor`` is not a positive finite number.
        """
        if not (np.isfinite(factor) and factor > 0):
            raise InputError(
                f"Trace({self.name!r}).scale_rate", "factor", f"must be > 0, got {factor!r}", "pass e.g. 2.0"
            )
        duration_s = self.duration_s / factor
        return Trace(
            name=f"{self.name}[x{factor:g}]",
            arrival_s=np.minimum(self.arrival_s / factor, duration_s),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            duration_s=duration_s,
        )

    def scale_outputs(self, factor: float, max_model_len_tokens: int | None = None) -> Trace:
        """Every output length times ``factor`` (rounded, >= 1); arrivals and prompts unchanged.

        A synthetic change of the load's shape (e.g. toward long reasoning outputs) for training, not a
        measurement. With ``max_model_len_tokens``, an output is capped so that prompt + output fits the
        context, so the change itself adds no request vLLM would refuse.

        Args:
            factor: output-length multiplier, > 0 (dimensionless).
            max_model_len_tokens: the context length (tokens); None: no cap.

        Raises:
            InputError: if ``factor`` is not a positive finite number.
        """
        if not (np.isfinite(factor) and factor > 0):
            raise InputError(
                f"Trace({self.name!r}).scale_outputs", "factor", f"must be > 0, got {factor!r}", "pass e.g. 4.0"
            )
        outputs = np.maximum(1, np.rint(self.output_tokens * factor)).astype(np.int64)
        if max_model_len_tokens is not None:
            room = np.maximum(1, max_model_len_tokens - self.input_tokens)
            refused_already = self.input_tokens + self.output_tokens > max_model_len_tokens
            outputs = np.where(refused_already, outputs, np.minimum(outputs, room))
        return Trace(
            name=f"{self.name}[out x{factor:g}]",
            arrival_s=self.arrival_s,
            input_tokens=self.input_tokens,
            output_tokens=outputs,
            duration_s=self.duration_s,
            start_hour=self.start_hour,
        )

    def tile(self, duration_s: float) -> Trace:
        """Repeat the trace back to back (period ``self.duration_s``) and cut it at ``duration_s``.

        Copy ``k`` is shifted by ``k * self.duration_s``; requests arriving at or after
        ``duration_s`` are dropped. A ``duration_s`` shorter than the trace just truncates it.

        Args:
            duration_s: horizon of the result (s), > 0.

        Raises:
            InputError: if ``duration_s`` is not a positive finite number.
        """
        if not (np.isfinite(duration_s) and duration_s > 0):
            raise InputError(
                f"Trace({self.name!r}).tile", "duration_s", f"must be > 0 s, got {duration_s!r}", "pass e.g. 86400.0"
            )
        copies = int(np.ceil(duration_s / self.duration_s))
        shifts = np.arange(copies, dtype=np.float64) * self.duration_s
        arrival = (self.arrival_s[None, :] + shifts[:, None]).ravel()
        keep = arrival < duration_s
        return Trace(
            name=f"{self.name}[tile {duration_s:g}s]",
            arrival_s=arrival[keep],
            input_tokens=np.tile(self.input_tokens, copies)[keep],
            output_tokens=np.tile(self.output_tokens, copies)[keep],
            duration_s=duration_s,
        )


def load_trace(
    name_or_path: str | Path,
    *,
    time_col: str | None = None,
    input_col: str | None = None,
    output_col: str | None = None,
    time_unit: TimeUnit | None = None,
) -> Trace:
    """Load a bundled trace by name, or a user's CSV / Parquet file of requests.

    Bundled names (see ``docs/workloads.md``): ``azure-code``, ``azure-conv``, ``mooncake-conv``.
    They are parsed once per process and the same read-only :class:`Trace` is returned after.

    A user file has one row per request and three columns: arrival time, input (prompt) tokens
    and output tokens. Unnamed columns are looked up in this order: time ``arrival_s``,
    ``TIMESTAMP``, ``timestamp``; input ``input_tokens``, ``ContextTokens``, ``input_length``;
    output ``output_tokens``, ``GeneratedTokens``, ``output_length``. Times are rebased so the
    first request arrives at 0 s; rows must already be in arrival order.

    Args:
        name_or_path: a bundled trace name, or the path of a ``.csv`` or ``.parquet`` file.
        time_col: name of the arrival-time column.
        input_col: name of the input-length column (tokens, integers >= 1).
        output_col: name of the output-length column (tokens, integers >= 1).
        time_unit: ``"s"`` or ``"ms"`` for numeric times, ``"datetime"`` for date-time strings
            such as ``2023-11-16 18:17:03.9799600`` (ISO 8601; time zones allowed). By default
            numbers are read as seconds and anything else as date-times.

    Returns:
        The trace, with ``name`` the bundled name or the file stem.

    Raises:
        InputError: naming the file, the column and the 1-based data row: unknown name, missing
            file or column, empty file, fewer than two requests, a time that does not parse, times
            that go backwards, or a token count that is empty, not a whole number, or below 1.
    """
    key = str(name_or_path)
    if key in _BUILTINS:
        if any(v is not None for v in (time_col, input_col, output_col, time_unit)):
            raise InputError(
                key,
                "time_col/input_col/output_col/time_unit",
                "a bundled trace has fixed columns and units",
                f"call load_trace({key!r}) without column options",
            )
        return _load_builtin(key)
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(
            key,
            "path",
            "no such trace file or bundled trace name",
            f"use one of {', '.join(trace_names())} or the path of a CSV/Parquet file",
        )
    return _read_file(path, path.stem, time_col, input_col, output_col, time_unit)


@cache
def _load_builtin(name: str) -> Trace:
    spec = _BUILTINS[name]
    with resources.as_file(resources.files("greenrl").joinpath("data/traces", spec.file)) as path:
        trace = _read_file(path, name, spec.time_col, spec.input_col, spec.output_col, spec.time_unit)
    logger.debug("loaded bundled trace %s: %d requests over %.1f s", name, len(trace), trace.duration_s)
    return trace


def _read_file(
    path: Path,
    name: str,
    time_col: str | None,
    input_col: str | None,
    output_col: str | None,
    time_unit: TimeUnit | None,
) -> Trace:
    where = str(path)
    if time_unit not in (None, "s", "ms", "datetime"):
        raise InputError(where, "time_unit", f"unknown unit {time_unit!r}", "use 's', 'ms' or 'datetime'")
    try:
        parquet = path.suffix.lower() == ".parquet"
        # keep_default_na=False: an empty cell stays "" and the text "nan" stays text, so messages tell them apart
        frame = pd.read_parquet(path) if parquet else pd.read_csv(path, skipinitialspace=True, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(where, "(file)", "the file is empty", "write a header row and one row per request") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        text = " ".join(str(err).split())  # one line
        raise InputError(where, "(file)", f"cannot be read as a table: {text}", "pass a CSV or Parquet file") from None
    columns = [str(c) for c in frame.columns]
    t_col = _pick_column(where, columns, time_col, _TIME_COLS, "time_col", "arrival time")
    i_col = _pick_column(where, columns, input_col, _INPUT_COLS, "input_col", "input tokens")
    o_col = _pick_column(where, columns, output_col, _OUTPUT_COLS, "output_col", "output tokens")
    if len(frame) < 2:
        raise InputError(
            where,
            "(rows)",
            f"has {len(frame)} data row{'s' * (len(frame) != 1)}; a trace needs at least 2 to define its duration",
            "add request rows below the header",
        )
    arrival_s = _parse_times(where, t_col, frame[t_col], time_unit)
    inputs = _parse_tokens(where, i_col, frame[i_col])
    outputs = _parse_tokens(where, o_col, frame[o_col])
    span_s = float(arrival_s[-1])
    if span_s <= 0:
        raise InputError(where, t_col, "every request arrives at the same instant", "give distinct arrival times")
    duration_s = span_s * len(arrival_s) / (len(arrival_s) - 1)
    if not np.isfinite(duration_s):
        raise InputError(where, t_col, f"spans {span_s:g} s, too long to represent", "use times in seconds")
    return Trace(name, arrival_s, inputs, outputs, duration_s=duration_s)


def _pick_column(
    where: str, columns: list[str], given: str | None, candidates: tuple[str, ...], option: str, what: str
) -> str:
    if given is not None:
        if given in columns:
            return given
        raise InputError(
            where, given, f"no such column (the file has {', '.join(columns)})", f"pass {option}= one of those"
        )
    for col in candidates:
        if col in columns:
            return col
    raise InputError(
        where,
        candidates[0],
        f"no {what} column: looked for {', '.join(candidates)}; the file has {', '.join(columns)}",
        f"rename the column or pass {option}=",
    )


def _refuse_rows(where: str, col: str, bad: npt.NDArray[np.bool_], problem: Callable[[int], str], fix: str) -> None:
    """One ``InputError`` naming the first bad 1-based data row (and how many more), if any row is bad.

    ``problem(row)`` says what is wrong with that row's cell.
    """
    rows = np.flatnonzero(bad)
    if len(rows):
        row, count = int(rows[0]) + 1, len(rows)
        more = f" (and {count - 1} more row{'s' * (count != 2)})" if count > 1 else ""
        raise InputError(where, col, f"data row {row}{more}: {problem(row)}", fix)


def _show(value: object) -> str:
    """How a bad cell reads in a message: its text, or 'an empty cell' for missing values."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, str) and not value.strip()):
        return "an empty cell"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _parse_tokens(where: str, col: str, values: pd.Series) -> npt.NDArray[np.int64]:
    if pd.api.types.is_integer_dtype(values.dtype) and not isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        ints = values.to_numpy(dtype=np.int64)
        if (ints >= 1).all() and (ints <= MAX_TOKENS).all():  # fast path: a clean integer column
            return ints
    raw = values.to_numpy(dtype=object)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    _refuse_rows(
        where,
        col,
        ~np.isfinite(numbers),
        lambda r: f"{_show(raw[r - 1])} is not a number",
        "give every request a whole number of tokens >= 1",
    )
    _refuse_rows(
        where,
        col,
        numbers != np.round(numbers),
        lambda r: f"{raw[r - 1]!r} is not a whole number",
        "use integer tokens",
    )
    _refuse_rows(
        where,
        col,
        numbers < 1,
        lambda r: f"{raw[r - 1]!r} tokens; counts must be >= 1",
        "drop or fix requests with zero or negative lengths",
    )
    _refuse_rows(
        where,
        col,
        numbers > MAX_TOKENS,
        lambda r: f"{raw[r - 1]!r} tokens is more than {MAX_TOKENS}",
        "fix the count (a token count, not bytes or a timestamp?)",
    )
    return numbers.astype(np.int64)


def _parse_times(where: str, col: str, values: pd.Series, unit: TimeUnit | None) -> npt.NDArray[np.float64]:
    raw = values.to_numpy(dtype=object)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        unit = "datetime"
    numbers = np.empty(0)
    if unit != "datetime":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if unit is None:
            # Mostly numbers: numeric times in seconds (the rest are reported as bad); else date-times.
            unit = "s" if np.isfinite(numbers).mean() > 0.5 else "datetime"
    if unit == "datetime":
        stamps = pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
        _refuse_rows(
            where,
            col,
            stamps.isna().to_numpy(),
            lambda r: f"{_show(raw[r - 1])} is not a date-time",
            "use e.g. '2023-11-16 18:17:03.98', or numbers with time_unit='s' or 'ms'",
        )
        seconds = (stamps - stamps.iloc[0]).to_numpy(dtype="timedelta64[ns]").astype(np.int64) / 1e9
    else:
        _refuse_rows(
            where,
            col,
            ~np.isfinite(numbers),
            lambda r: f"{_show(raw[r - 1])} is not a number (time_unit {unit!r})",
            f"give every request a numeric arrival time in {unit}, or pass time_unit='datetime'",
        )
        seconds = (numbers - numbers[0]) / (1000.0 if unit == "ms" else 1.0)
        _refuse_rows(
            where, col, ~np.isfinite(seconds), lambda r: f"{raw[r - 1]!r} is out of range", "use times in seconds"
        )
    # a row earlier than the one before it: the mask's row r - 1 is data row r
    _refuse_rows(
        where,
        col,
        np.concatenate([[False], np.diff(seconds) < 0]),
        lambda r: f"time {raw[r - 1]!r} is earlier than row {r - 1}'s {raw[r - 2]!r} (timestamps go backwards)",
        "sort the rows by arrival time",
    )
    return seconds
