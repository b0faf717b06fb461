"""Property-based fuzzing of the input loaders: whatever the file holds, the answer is a result or an InputError."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenrl.catalog import load_model
from greenrl.env import load_scenario
from greenrl.errors import InputError
from greenrl.workload import load_trace

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------- trace CSV

CELLS = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e30", "-1", "0", "1.5", "abc", "NA", "null", "9" * 30]),
    st.sampled_from(["2023-11-16 18:17:03.98", "2023-13-45", "1e308", "-1e308", "9223372036854775808"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6),
)
HEADERS = st.sampled_from(
    [
        ["arrival_s", "input_tokens", "output_tokens"],
        ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
        ["timestamp", "input_length", "output_length"],
        ["arrival_s", "input_tokens"],
        ["a", "b", "c"],
    ]
)


@FUZZ
@given(header=HEADERS, rows=st.lists(st.lists(CELLS, min_size=0, max_size=4), max_size=6))
def test_trace_csv_parser_raises_only_input_errors(header: list[str], rows: list[list[str]]) -> None:
    lines = [",".join(header), *(",".join(cell.replace("\n", " ") for cell in row) for row in rows)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.csv"
        path.write_text("\n".join(lines) + "\n", errors="surrogatepass")
        try:
            trace = load_trace(path)
        except InputError as err:
            assert err.where == str(path) and "\n" not in str(err)
            return
    assert len(trace) >= 2 and math.isfinite(trace.duration_s)
    assert (trace.input_tokens >= 1).all() and (trace.output_tokens >= 1).all()


@FUZZ
@given(data=st.binary(max_size=300))
def test_trace_parser_on_raw_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.csv"
        path.write_bytes(data)
        try:
            load_trace(path)
        except InputError as err:
            assert "\n" not in str(err)


# ---------------------------------------------------------------------------------------- scenario YAML

TINY = yaml.safe_load(Path(load_scenario("tiny").path).read_text())
KEYS = [
    "node",
    "node.gpus",
    "node.model",
    "node.gpu",
    "node.load_bandwidth_gbps",
    "node.clock_latency_s",
    "node.initial",
    "node.initial.tp",
    "node.mode",
    "workload",
    "workload.trace",
    "workload.synthetic",
    "workload.window_s",
    "workload.train_range_s",
    "workload.eval_windows_s",
    "workload.rate_scale",
    "workload.eval_rate_scale",
    "slo",
    "slo.ttft_floor_s",
    "control",
    "control.interval_s",
    "control.knobs",
    "control.knobs.tp",
    "control.knobs.sm_clock_mhz",
    "control.knobs.replicas",
    "control.min_dwell_steps",
    "control.prefill_clock_ttft_s",
    "reward.slo_weight",
    "reward.slo_reference",
    "episode.steps",
    "episode",
    "version",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from([0, 1, 2, 3, 8, 900.0, 2700.0, 5000.0, "azure-conv", "tiny"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_scenario_loader_raises_only_input_errors(changes: list[tuple[str, Any]]) -> None:
    raw = copy.deepcopy(TINY)
    for dotted, value in changes:
        *parents, leaf = dotted.split(".")
        node: Any = raw
        for p in parents:
            if not isinstance(node, dict):
                break
            node = node.setdefault(p, {})
        if isinstance(node, dict):
            node[leaf] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(raw))
        try:
            load_scenario(str(path))
        except InputError as err:
            assert err.where == str(path) and "\n" not in str(err), str(err)


@FUZZ
@given(data=st.binary(max_size=300))
def test_scenario_loader_on_raw_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(data)
        try:
            load_scenario(str(path))
        except InputError as err:
            assert "\n" not in str(err)


# ------------------------------------------------------------------------------------------ config.json

LLAMA = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -8, 10**400, 10**12 + 1, 1, 2, 3, 64, 128]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
FIELDS = [*LLAMA, "head_dim", "torch_dtype", "gated_mlp", "tie_word_embeddings"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4), drop=st.sets(st.sampled_from(FIELDS)))
def test_config_json_loader_raises_only_input_errors(changes: dict[str, Any], drop: set[str]) -> None:
    config = {k: v for k, v in (LLAMA | changes).items() if k not in drop}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(config))
        try:
            card = load_model(str(path))
        except InputError as err:
            assert err.where == str(path) and "\n" not in str(err)
            return
    assert card.weight_bytes > 0 and card.num_kv_heads >= 1 and card.head_dim >= 1
    assert card.experts_per_token <= card.num_experts
    for tp in (1, 2, 3, 8):
        with contextlib.suppress(InputError):
            card.check_tp(tp)
        assert card.kv_bytes_per_token_per_gpu(tp) > 0


@FUZZ
@given(data=st.binary(max_size=200))
def test_config_json_loader_on_raw_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.json"
        path.write_bytes(data)
        with contextlib.suppress(InputError):
            load_model(str(path))
