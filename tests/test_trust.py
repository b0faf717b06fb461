"""Trust in inputs: exported controllers (finite weights and decisions, the whole manifest hashed, every
malformed folder an ``InputError``), SB3 zips (pickle) and property-based fuzzing of the parsers."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenrl.controller import ServingController, main
from greenrl.core import BackendReading, Knobs
from greenrl.env.observation import OBS_FIELDS
from greenrl.errors import InputError
from greenrl.policy import ControllerPolicy, InvalidDecision, load_controller, manifest_digest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "default" / "maskable_ppo_s0"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _weights() -> dict[str, np.ndarray]:
    with np.load(CHECKPOINT / "policy.npz") as data:
        return {k: data[k] for k in data.files}


def _write(folder: Path, manifest: Any, weights: dict[str, Any] | bytes | None = None, rehash: bool = True) -> Path:
    """A controller folder with ``manifest`` and ``weights``, the hashes recomputed (a forger's best effort)."""
    folder.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = _weights()
    if isinstance(weights, bytes):
        data = weights
    else:
        buffer = io.BytesIO()
        np.savez(buffer, **weights)
        data = buffer.getvalue()
    if isinstance(manifest, dict) and isinstance(manifest.get("policy"), dict):
        name = manifest["policy"].get("file")
        if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
            (folder / name).write_bytes(data)
        if rehash:
            import hashlib

            manifest["policy"]["sha256"] = hashlib.sha256(data).hexdigest()
    if rehash and isinstance(manifest, dict):
        with contextlib.suppress(ValueError, TypeError):
            manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / "controller.json").write_text(json.dumps(manifest))
    return folder


def _manifest() -> dict[str, Any]:
    out: dict[str, Any] = json.loads((CHECKPOINT / "controller.json").read_text())
    return out


class _Observer:
    primed = True

    def observe(self, knobs: Knobs) -> Any:
        from greenrl.live.metrics import parse
        from greenrl.live.observe import Observation
        from greenrl.live.snapshot import Instant, start_snapshot

        metrics = parse("vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:generation_tokens 0\n")
        snap = start_snapshot(Instant(BackendReading(0.0, (0.0,), None, False), metrics, 0.0), knobs)
        return Observation(np.zeros(len(OBS_FIELDS), np.float32), {"slo_attainment": 1.0}, snap)

    def reset(self) -> None:
        pass


class _Backend:
    time_scale = 1.0
    discrete_time = False

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []

    def read(self) -> BackendReading:
        return BackendReading(0.0, (0.0,), None, False)

    def apply(self, knobs: Knobs, changed: Any = None) -> list[str]:
        self.calls.append({k: getattr(knobs, k) for k in changed})
        return list(changed)

    def close(self, restore: Any = None) -> None:
        pass


def _run_once(policy: ControllerPolicy) -> tuple[dict[str, Any], _Backend]:
    backend = _Backend()
    ctl = ServingController(policy, _Observer(), backend, gpus=8, metrics=False)
    return ctl.run_interval(), backend


# ------------------------------------------------------------------ 1: non-finite weights, masked-out decisions


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_at_load(tmp_path: Path, value: float) -> None:
    weights = _weights()
    weights["w2"] = np.full_like(weights["w2"], value)
    folder = _write(tmp_path / "ctl", _manifest(), weights)
    with pytest.raises(InputError, match="NaN or Inf"):
        load_controller(folder)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_output_is_a_policy_invalid_fallback(value: float) -> None:
    weights = {k: v.copy() for k, v in _weights().items()}
    weights["b2"][:] = value  # as if loaded by a reader that skipped the checks
    policy = ControllerPolicy(_manifest(), weights, CHECKPOINT)
    with pytest.raises(InvalidDecision):
        policy.predict(np.zeros(len(OBS_FIELDS), np.float32))
    record, backend = _run_once(policy)
    assert record["mode"] == "fallback" and record["fallback_reason"] == "policy_invalid"
    assert backend.calls[-1]["sm_clock_mhz"] == 1980  # the safe top clock, not index 0 (1005 MHz)


def test_all_false_action_mask_is_refused_and_never_decides_index_0(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest["action_mask"] = [0] * len(manifest["action_mask"])
    with pytest.raises(InputError, match="masks out every value"):
        load_controller(_write(tmp_path / "ctl", manifest))
    policy = ControllerPolicy(manifest, _weights(), CHECKPOINT)
    record, backend = _run_once(policy)
    assert record["fallback_reason"] == "policy_invalid" and backend.calls[-1]["sm_clock_mhz"] == 1980


def test_export_refuses_non_finite_weights(tmp_path: Path) -> None:
    import torch
    from sb3_contrib import MaskablePPO

    from greenrl.env import ServingEnv
    from greenrl.policy import export_controller

    env = ServingEnv("tiny", "eval", 0)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, policy_kwargs={"net_arch": [8]}, seed=0)
    with torch.no_grad():
        model.policy.action_net.bias[0] = float("nan")  # type: ignore[operator]
    with pytest.raises(InputError, match="NaN or Inf"):
        export_controller(model, env, tmp_path / "ctl")
    assert not any(tmp_path.iterdir())  # no folder, no temp folder left


def test_evaluate_refuses_a_nan_controller(tmp_path: Path) -> None:
    from greenrl import evaluate as ev

    weights = _weights()
    weights["w0"][0, 0] = np.nan
    folder = _write(tmp_path / "nan_ctl", _manifest(), weights)
    with pytest.raises(InputError, match="NaN or Inf"):
        ev.evaluate([str(folder)], ["default"], seeds=1, arrivals="exact", progress=False)


# ------------------------------------------------------------------ 2: the whole manifest is hashed


@pytest.mark.parametrize(
    ("knob", "values"), [("sm_clock_mhz", [345, 1200, 1395, 1605, 1800, 1980]), ("max_num_seqs", [1, 32, 64, 128, 256])]
)
def test_an_edited_knob_value_is_refused(tmp_path: Path, knob: str, values: list[int]) -> None:
    folder = tmp_path / "ctl"
    shutil.copytree(CHECKPOINT, folder)
    manifest = _manifest()
    next(k for k in manifest["knobs"] if k["name"] == knob)["values"] = values
    (folder / "controller.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(InputError, match="manifest_sha256"):
        load_controller(folder)
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(folder), "--vllm-url", "http://127.0.0.1:1", "--twin"])
    assert exc.value.code == 2


@pytest.mark.parametrize("name", ["../policy.npz", "/etc/passwd", "sub/policy.npz", "..", "link.npz"])
def test_a_policy_file_outside_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "policy.npz"
    shutil.copy(CHECKPOINT / "policy.npz", outside)
    folder = tmp_path / "ctl"
    folder.mkdir()
    (folder / "sub").mkdir()
    shutil.copy(CHECKPOINT / "policy.npz", folder / "sub" / "policy.npz")
    (folder / "link.npz").symlink_to(outside)
    manifest = _manifest()
    manifest["policy"]["file"] = name
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / "controller.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="policy.file"):
        load_controller(folder)


def test_the_shipped_controllers_carry_a_manifest_hash() -> None:
    for path in sorted((ROOT / "checkpoints").glob("*/*/controller.json")):
        manifest = json.loads(path.read_text())
        assert manifest["manifest_sha256"] == manifest_digest(manifest)
        load_controller(path.parent)


# ------------------------------------------------------------------ 3: malformed folders are InputErrors (exit 2)


def _object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, w0=np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


def _mutations() -> list[tuple[str, Any, Any]]:
    def without_policy() -> dict[str, Any]:
        m = _manifest()
        del m["policy"]
        return m

    def activation(name: str) -> dict[str, Any]:
        m = _manifest()
        m["policy"]["activation"] = name
        return m

    def layers(n: Any) -> dict[str, Any]:
        m = _manifest()
        m["policy"]["layers"] = n
        return m

    return [
        ("no policy key", without_policy(), None),
        ("unknown activation", activation("gelu"), None),
        ("a JSON list", [1, 2, 3], None),
        ("a JSON string", "controller", None),
        ("empty npz", _manifest(), {}),
        ("object arrays", _manifest(), _object_npz()),
        ("not a zip", _manifest(), b"garbage"),
        ("too many layers", layers(4), None),
        ("layers a string", layers("3"), None),
        ("wrong shapes", _manifest(), {"w0": np.zeros((2, 2), np.float32), "b0": np.zeros(2, np.float32)}),
    ]


@pytest.mark.parametrize(("label", "manifest", "weights"), _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_controller_folders_are_input_errors_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str, manifest: Any, weights: Any
) -> None:
    folder = _write(tmp_path / "ctl", manifest, weights)
    if label == "wrong shapes":
        manifest["policy"]["layers"] = 1
        folder = _write(folder, manifest, weights)
    with pytest.raises(InputError):
        load_controller(folder)
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(folder), "--vllm-url", "http://127.0.0.1:1", "--twin"])
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_export_replaces_a_folder_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sb3_contrib import MaskablePPO

    from greenrl.env import ServingEnv
    from greenrl.policy import export_controller

    env = ServingEnv("tiny", "eval", 0)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=64, policy_kwargs={"net_arch": [8]}, seed=0)
    folder = export_controller(model, env, tmp_path / "ctl", {"tag": "first"})
    real_rename = Path.rename

    def failing_rename(self: Path, target: Any) -> Any:
        if Path(target) == folder and self.name.endswith(".tmp"):
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        export_controller(model, env, folder, {"tag": "second"})
    assert load_controller(folder).manifest["tag"] == "first"  # the old folder is put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctl"]  # no temp or old folder left
    monkeypatch.setattr(Path, "rename", real_rename)
    export_controller(model, env, folder, {"tag": "third"})
    assert load_controller(folder).manifest["tag"] == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctl"]


# ------------------------------------------------------------------ fuzz: controller.json


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_paths = ["policy", "knobs", "action_mask", "observation", "prefill_clock", "format", "scenario"]


@FUZZ
@given(
    key=st.sampled_from(_paths + ["policy.file", "policy.layers", "policy.activation", "knobs.0", "knobs.0.values"]),
    value=_json,
)
def test_fuzzed_controller_json_raises_only_input_error(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: Any
) -> None:
    manifest = _manifest()
    node: Any = manifest
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    folder = _write(tmp_path_factory.mktemp("fuzz") / "ctl", manifest)
    try:
        policy = load_controller(folder)
    except InputError:
        return
    action, _ = policy.predict(np.zeros(len(OBS_FIELDS), np.float32))
    assert action.shape == (len(policy.nvec),)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzzed_controller_json_bytes_raise_only_input_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(CHECKPOINT / "policy.npz", folder / "policy.npz")
    (folder / "controller.json").write_bytes(data)
    with pytest.raises(InputError):
        load_controller(folder)


# ------------------------------------------------------------------ 7: SB3 zips are pickles


def _planted_zip(path: Path, marker: Path) -> Path:
    """A zip shaped like an SB3 save whose policy_class, when unpickled, creates ``marker``."""
    import base64
    import pickle
    import zipfile

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    blob = base64.b64encode(pickle.dumps(Payload())).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob, "__module__": "x"}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", json.dumps(data))
    return path


def test_a_planted_zip_is_refused_before_it_is_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from greenrl import evaluate as ev

    marker = tmp_path / "pwned"
    planted = _planted_zip(tmp_path / "model.zip", marker)
    with pytest.raises(SystemExit) as exc:
        ev.main(["--policies", str(planted), "--scenarios", "tiny", "--no-progress", "--no-plots"])
    assert exc.value.code == 2 and "--trust-pickle" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(InputError, match="pickle"):
        ev.evaluate([str(planted)], ["tiny"], seeds=1, arrivals="exact", progress=False)
    assert not marker.exists()


def test_a_zip_is_loaded_only_as_its_run_recorded_it(tmp_path: Path) -> None:
    from greenrl.evaluate_policies import resolve_policies
    from greenrl.trust import PICKLE_RECORD, check_pickle, record_pickle

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    zipped = run / "best" / "model.zip"
    zipped.write_bytes(b"PK-stand-in")
    with pytest.raises(InputError, match=PICKLE_RECORD):
        check_pickle(zipped)
    record_pickle(run, zipped)
    check_pickle(zipped)
    assert resolve_policies([str(zipped)])[0].kind == "sb3"
    zipped.write_bytes(b"PK-changed")
    with pytest.raises(InputError, match="changed since training"):
        resolve_policies([str(zipped)])
    assert resolve_policies([str(zipped)], trust_pickle=True)[0].trust_pickle
    other = run / "other.zip"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="does not record"):
        check_pickle(other)


# ------------------------------------------------------------------ fuzz: Prometheus text, SSE, HTTP requests, bodies

_METRIC_NAMES = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:inter_token_latency_seconds_bucket",
    "junk",
]
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e400", "-0", "x", ""]),
)
_labels = st.one_of(
    st.just(""),
    st.sampled_from(['{le="0.1"}', '{le="+Inf"}', '{le="x"}', '{le=""}', '{model_name="m"}', "{", '{le="0.1"']),
)
_lines = st.one_of(
    st.tuples(st.sampled_from(_METRIC_NAMES), _labels, _values).map(lambda t: f"{t[0]}{t[1]} {t[2]}"),
    st.sampled_from(["# TYPE vllm:time_to_first_token_seconds histogram", "# HELP x y", "#", "{}", " "]),
    st.text(max_size=30),
)


@FUZZ
@given(lines=st.lists(_lines, max_size=25))
def test_fuzzed_prometheus_text_raises_only_metrics_error(lines: list[str]) -> None:
    from greenrl.live.metrics import MetricsError, parse

    try:
        m = parse("\n".join(lines) + "\n")
    except MetricsError:
        return
    assert 0 <= m.running <= 1e6 and 0 <= m.waiting <= 1e6 and 0 <= m.kv_cache_usage_frac <= 1.0 + 1e-6
    assert np.all(np.isfinite(m.ttft_hist)) and np.all(m.ttft_hist >= 0)


_sse_events = st.one_of(
    st.binary(max_size=40),
    _json.map(lambda v: b"data: " + json.dumps(v).encode() + b"\n\n"),
    st.sampled_from([b"data: [DONE]\n\n", b'data: {"choices": [{"text": "x"}]}\n\n', b"\r\n", b"data:", b": c\n"]),
)


@FUZZ
@given(events=st.lists(_sse_events, max_size=12), cut=st.integers(1, 7))
def test_fuzzed_sse_streams_never_raise(events: list[bytes], cut: int) -> None:
    from greenrl.live.tokens import SseTokenCounter

    data = b"".join(events)
    counter = SseTokenCounter()
    total = sum(counter.feed(data[i : i + cut]) for i in range(0, len(data), cut))
    assert total >= 0


@FUZZ
@given(body=st.one_of(st.binary(max_size=80), _json.map(lambda v: json.dumps(v).encode())))
def test_fuzzed_request_bodies_raise_only_input_error(body: bytes) -> None:
    from greenrl.live.http import json_object
    from greenrl.live.proxy.accounting import Accounting
    from greenrl.live.tokens import approx_prompt_tokens

    try:
        obj = json_object(body, "/v1/completions")
    except InputError:
        obj = None
    track = Accounting().arrive(obj, 0.0)
    assert track.estimated_prompt_tokens >= 0 and approx_prompt_tokens(obj) >= 0


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.tuples(
            st.sampled_from(["GET", "POST", "X"]),
            st.sampled_from(["/v1/completions", "/", "*", ""]),
            st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", ""]),
            st.lists(
                st.sampled_from(
                    [
                        "Content-Length: 3",
                        "Content-Length: -1",
                        "Content-Length: x",
                        "Transfer-Encoding: chunked",
                        "Connection: close",
                        "bad header",
                        "",
                    ]
                ),
                max_size=4,
            ),
            st.binary(max_size=10),
        ).map(lambda t: f"{t[0]} {t[1]} {t[2]}\r\n{chr(10).join(t[3])}\r\n\r\n".encode() + t[4]),
    )
)
def test_fuzzed_http_requests_raise_only_http_errors(raw: bytes) -> None:
    import asyncio

    from greenrl.live.http import HttpError, read_request

    async def read() -> Any:
        reader = asyncio.StreamReader(limit=1024)
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_request(reader)

    with contextlib.suppress(HttpError, asyncio.IncompleteReadError):
        asyncio.run(read())


# ------------------------------------------------------------------ 8: the privileged clock helper


@pytest.fixture
def clock_helper(tmp_path: Path) -> Any:
    import threading

    from greenrl.live.clockd import ClockHelper
    from greenrl.live.gpu import FakeGpu, GpuSet

    served = GpuSet([FakeGpu(0, min_interval_s=0.0), FakeGpu(1, min_interval_s=0.0)])
    helper = ClockHelper(served, tmp_path / "clock.sock")
    thread = threading.Thread(target=helper.serve_forever, daemon=True)
    thread.start()
    try:
        yield helper
    finally:
        helper.shutdown()
        helper.close()
        thread.join(5.0)


def test_the_clock_helper_changes_only_clocks_for_an_unprivileged_controller(clock_helper: Any) -> None:
    import os
    import socket
    import stat

    from greenrl.live.clockd import HelperGpu
    from greenrl.live.gpu import FakeGpu, GpuError, GpuPermissionError

    assert stat.S_IMODE(os.stat(clock_helper.path).st_mode) == 0o600
    reader = FakeGpu(1, min_interval_s=0.0)
    reader.deny_permission()  # the controller's own NVML handle may not change clocks
    gpu = HelperGpu(reader, clock_helper.path, min_interval_s=0.0)
    assert gpu.lock_sm_clock(1203) == 1200
    assert clock_helper.gpus[1].locked_sm_clock_mhz == 1200 and reader.calls == []
    gpu.reset_sm_clock()
    assert clock_helper.gpus[1].locked_sm_clock_mhz is None
    # requests that are not clock changes of a served GPU are refused; the helper keeps serving
    for line in [
        b"garbage\n",
        b"[]\n",
        b'{"op": "exec", "gpu": 0}\n',
        b'{"op": "lock", "gpu": 7, "mhz": 1}\n',
        b'{"op": "lock", "gpu": 0, "mhz": NaN}\n',
        b'{"op": "lock", "gpu": true, "mhz": 1}\n',
        b"x" * 5000 + b"\n",
    ]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5.0)
            s.connect(str(clock_helper.path))
            s.sendall(line)
            answer = json.loads(s.makefile().readline())
        assert answer["ok"] is False and answer["kind"] == "request", line[:40]
    assert clock_helper.gpus[0].calls == []
    clock_helper.gpus[0].deny_permission()
    with pytest.raises(GpuPermissionError):
        HelperGpu(FakeGpu(0), clock_helper.path).lock_sm_clock(1200)
    with pytest.raises(GpuError, match="did not answer"):
        HelperGpu(FakeGpu(0), clock_helper.path.with_name("none.sock")).lock_sm_clock(1200)
    gpu.lock_sm_clock(1500)
    gpu.close()  # the controller's close resets through the helper
    assert clock_helper.gpus[1].locked_sm_clock_mhz is None


@FUZZ
@given(line=st.one_of(st.binary(max_size=100), _json.map(lambda v: json.dumps(v).encode())))
def test_fuzzed_clock_helper_requests_get_an_answer(tmp_path_factory: pytest.TempPathFactory, line: bytes) -> None:
    from greenrl.live.clockd import ClockHelper
    from greenrl.live.gpu import FakeGpu, GpuSet

    helper = ClockHelper(GpuSet([FakeGpu(0, min_interval_s=0.0)]), tmp_path_factory.mktemp("h") / "c.sock")
    try:
        answer = helper.handle(line)
        assert isinstance(answer, dict) and isinstance(answer["ok"], bool)
    finally:
        helper.close()


def test_the_controller_uses_the_clock_helper_when_given(clock_helper: Any) -> None:
    from greenrl.controller import build_controller, build_parser
    from greenrl.live.clockd import HelperGpu

    argv = ["--checkpoint", str(CHECKPOINT), "--vllm-url", "http://127.0.0.1:1", "--gpus", "0,1"]
    args = build_parser().parse_args([*argv, "--clock-helper", str(clock_helper.path)])
    args.gpus = "fake"  # the readers: fake GPUs 0 (one is enough to see the wiring)
    ctl = build_controller(args, None, sleep=lambda s: False)
    try:
        gpus = list(ctl.backend.gpus)  # type: ignore[attr-defined]
        assert gpus and all(isinstance(g, HelperGpu) for g in gpus)
        gpus[0].lock_sm_clock(1005)
        assert clock_helper.gpus[0].locked_sm_clock_mhz == 1005
    finally:
        ctl.close()
    assert clock_helper.gpus[0].locked_sm_clock_mhz is None
