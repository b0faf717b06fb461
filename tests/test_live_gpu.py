from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from unittest import mock

import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenrl.errors import InputError
from greenrl.live import gpu as gpu_mod
from greenrl.live import selfcheck
from greenrl.live.gpu import (
    H100_SM_CLOCKS_MHZ,
    FakeGpu,
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuSet,
    GpuUnavailableError,
    NvmlGpu,
    open_gpus,
    snap_clock_mhz,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


HANDLE = object()
DEFAULTS = {
    "nvmlInit": None,
    "nvmlShutdown": None,
    "nvmlDeviceGetCount": 2,
    "nvmlDeviceGetHandleByIndex": HANDLE,
    "nvmlDeviceGetName": b"NVIDIA H100 80GB HBM3",
    "nvmlDeviceGetTotalEnergyConsumption": 123_456_789,
    "nvmlDeviceGetPowerUsage": 312_345,
    "nvmlDeviceGetClockInfo": 1980,
    "nvmlDeviceGetSupportedMemoryClocks": [1593, 2619, 2619],
    "nvmlDeviceGetSupportedGraphicsClocks": [1980, 345, 360, 1965, 360, 1000],
    "nvmlDeviceSetGpuLockedClocks": None,
    "nvmlDeviceResetGpuLockedClocks": None,
    "nvmlDeviceGetPowerManagementLimit": 700_000,
    "nvmlDeviceGetEnforcedPowerLimit": 700_000,
    "nvmlDeviceGetPowerManagementDefaultLimit": 700_000,
    "nvmlDeviceGetPowerManagementLimitConstraints": [200_000, 700_000],
    "nvmlDeviceGetMaxClockInfo": 1980,
    "nvmlDeviceGetApplicationsClock": 1755,
    "nvmlDeviceGetDefaultApplicationsClock": 1755,
    "nvmlDeviceGetTemperature": 31,
    "nvmlDeviceGetPersistenceMode": 1,
    "nvmlDeviceGetMigMode": [0, 0],
    "nvmlDeviceGetCurrentClocksEventReasons": 1,
    "nvmlDeviceGetAPIRestriction": pynvml.NVML_FEATURE_ENABLED,
    "nvmlSystemGetDriverVersion": "580.95.05",
    "nvmlSystemGetCudaDriverVersion": 13000,
}


@pytest.fixture
def nvml() -> Iterator[dict[str, mock.MagicMock]]:
    """Patch the pynvml functions NvmlGpu uses (autospec keeps their signatures honest)."""
    with ExitStack() as stack:
        mocks = {
            name: stack.enter_context(mock.patch.object(pynvml, name, autospec=True, return_value=value))
            for name, value in DEFAULTS.items()
        }
        yield mocks


def _open(clock: FakeClock | None = None, **kwargs: float) -> NvmlGpu:
    return NvmlGpu(0, clock=clock or FakeClock(), **kwargs)


# -- unit conversions and queries -----------------------------------------------------------------


def test_nvml_units_converted_at_the_edge(nvml: dict[str, mock.MagicMock]) -> None:
    g = _open()
    assert g.name == "NVIDIA H100 80GB HBM3"
    assert g.energy_j() == pytest.approx(123_456.789)  # mJ -> J
    assert g.power_w() == pytest.approx(312.345)  # mW -> W
    assert g.sm_clock_mhz() == 1980
    nvml["nvmlDeviceGetClockInfo"].assert_called_once_with(HANDLE, pynvml.NVML_CLOCK_SM)
    nvml["nvmlDeviceGetTotalEnergyConsumption"].assert_called_once_with(HANDLE)


def test_supported_clocks_at_max_memory_clock_sorted_dedup(nvml: dict[str, mock.MagicMock]) -> None:
    g = _open()
    assert g.supported_sm_clocks_mhz() == [345, 360, 1000, 1965, 1980]
    nvml["nvmlDeviceGetSupportedGraphicsClocks"].assert_called_once_with(HANDLE, 2619)
    g.supported_sm_clocks_mhz()  # cached
    assert nvml["nvmlDeviceGetSupportedGraphicsClocks"].call_count == 1


def test_lock_uses_min_equals_max_and_close_resets(nvml: dict[str, mock.MagicMock]) -> None:
    g = _open()
    assert g.lock_sm_clock(990.0) == 1000
    nvml["nvmlDeviceSetGpuLockedClocks"].assert_called_once_with(HANDLE, 1000, 1000)
    g.close()
    nvml["nvmlDeviceResetGpuLockedClocks"].assert_called_once_with(HANDLE)
    nvml["nvmlShutdown"].assert_called_once()
    g.close()  # idempotent
    nvml["nvmlDeviceResetGpuLockedClocks"].assert_called_once()


def test_close_without_lock_does_not_reset(nvml: dict[str, mock.MagicMock]) -> None:
    g = _open()
    g.energy_j()
    g.close()
    nvml["nvmlDeviceResetGpuLockedClocks"].assert_not_called()
    nvml["nvmlShutdown"].assert_called_once()


# -- errors ---------------------------------------------------------------------------------------


def test_permission_error_names_the_privilege(nvml: dict[str, mock.MagicMock]) -> None:
    nvml["nvmlDeviceSetGpuLockedClocks"].side_effect = _nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)
    g = _open()
    with pytest.raises(GpuPermissionError) as info:
        g.lock_sm_clock(1500)
    message = str(info.value)
    assert "root" in message and "SYS_ADMIN" in message and "nvidia-smi" in message and "-lgc" in message
    assert isinstance(info.value.__cause__, pynvml.NVMLError_NoPermission)
    assert g.locked_sm_clock_mhz is None
    g.close()  # nothing was locked, so no reset is attempted (it would fail the same way)
    nvml["nvmlDeviceResetGpuLockedClocks"].assert_not_called()


def test_not_supported_and_other_nvml_errors(nvml: dict[str, mock.MagicMock]) -> None:
    nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    nvml["nvmlDeviceGetPowerUsage"].side_effect = _nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
    g = _open()
    with pytest.raises(GpuNotSupportedError, match="Volta"):
        g.energy_j()
    with pytest.raises(GpuError, match="GPU is lost"):
        g.power_w()


def test_nvml_init_failure_is_unavailable(nvml: dict[str, mock.MagicMock]) -> None:
    nvml["nvmlInit"].side_effect = _nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(GpuUnavailableError, match="NVML did not initialize"):
        NvmlGpu(0)


def test_bad_index_is_unavailable_and_shuts_down(nvml: dict[str, mock.MagicMock]) -> None:
    with pytest.raises(GpuUnavailableError, match=r"0\.\.1"):
        NvmlGpu(5)
    nvml["nvmlShutdown"].assert_called_once()


def test_bad_request_is_input_error() -> None:
    g = FakeGpu()
    with pytest.raises(InputError):
        g.lock_sm_clock(float("nan"))
    with pytest.raises(InputError):
        FakeGpu(min_interval_s=-1.0)
    with pytest.raises(InputError):
        g.add_energy_j(-1.0)


# -- clamping, snapping, rate limit ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    request_mhz=st.floats(min_value=-1e4, max_value=1e5, allow_nan=False),
    clocks=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=50),
)
def test_lock_is_always_supported_and_nearest(request_mhz: float, clocks: list[int]) -> None:
    g = FakeGpu(supported_sm_clocks_mhz=clocks, min_interval_s=0.0)
    supported = sorted(set(clocks))
    got = g.lock_sm_clock(request_mhz)
    assert got in supported
    clamped = min(max(request_mhz, supported[0]), supported[-1])
    assert abs(got - clamped) == min(abs(c - clamped) for c in supported)
    assert g.sm_clock_mhz() == got


def test_snap_clamps_and_ties_go_low() -> None:
    assert snap_clock_mhz(0, [345, 360]) == 345
    assert snap_clock_mhz(5000, [345, 360]) == 360
    assert snap_clock_mhz(352.5, [345, 360]) == 345
    assert snap_clock_mhz(353, [345, 360]) == 360


def test_rate_limit_ignores_changes_inside_the_interval() -> None:
    clock = FakeClock()
    g = FakeGpu(clock=clock, min_interval_s=1.0)
    assert g.lock_sm_clock(1005) == 1005
    clock.now_s += 0.5
    assert g.lock_sm_clock(1500) == 1005  # ignored: the lock in force is returned
    assert g.lock_sm_clock(1005) == 1005  # same clock: a no-op
    clock.now_s += 0.5
    assert g.lock_sm_clock(1500) == 1500
    assert g.calls == [("lock", 1005), ("lock", 1500)]
    g.reset_sm_clock()  # never rate-limited
    assert g.lock_sm_clock(600) == 600  # nothing locked: applies at once
    assert g.calls[-2:] == [("reset", None), ("lock", 600)]


def test_rate_limit_on_nvml(nvml: dict[str, mock.MagicMock]) -> None:
    clock = FakeClock()
    g = _open(clock, min_interval_s=2.0)
    g.lock_sm_clock(345)
    clock.now_s += 1.0
    assert g.lock_sm_clock(1980) == 345
    nvml["nvmlDeviceSetGpuLockedClocks"].assert_called_once_with(HANDLE, 345, 345)


# -- FakeGpu and GpuSet ---------------------------------------------------------------------------


def test_fake_gpu_defaults_and_energy() -> None:
    source_j = [10.0]
    g = FakeGpu(energy_source=lambda: source_j[0], power_w=250.0)
    assert g.supported_sm_clocks_mhz() == list(H100_SM_CLOCKS_MHZ)
    assert H100_SM_CLOCKS_MHZ[0] == 345 and H100_SM_CLOCKS_MHZ[-1] == 1980 and len(H100_SM_CLOCKS_MHZ) == 110
    assert g.sm_clock_mhz() == 1980
    assert g.energy_j() == 10.0
    source_j[0] = 25.0
    g.add_energy_j(5.0)
    g.add_energy_j(2.5)
    assert g.energy_j() == 32.5
    assert g.power_w() == 250.0


def test_fake_gpu_fault_injection() -> None:
    g = FakeGpu()
    g.fail("energy_j", GpuError(0, "energy_j", "boom", "none"))
    with pytest.raises(GpuError, match="boom"):
        g.energy_j()
    g.fail("energy_j", None)
    assert g.energy_j() == 0.0
    g.deny_permission()
    with pytest.raises(GpuPermissionError, match="root"):
        g.lock_sm_clock(1000)
    assert g.calls == []


def test_gpu_set_sums_and_locks_all() -> None:
    a, b = FakeGpu(0, power_w=100.0), FakeGpu(1, power_w=200.0)
    a.add_energy_j(1.5)
    b.add_energy_j(2.0)
    gs = GpuSet([a, b])
    assert gs.energy_j() == 3.5
    assert gs.power_w() == 300.0
    assert gs.lock_all(1234) == [1230, 1230]
    assert gs.indices == [0, 1] and len(gs) == 2 and gs[1] is b
    gs.reset_all()
    assert a.calls[-1] == ("reset", None) and b.calls[-1] == ("reset", None)
    with pytest.raises(InputError):
        GpuSet([FakeGpu(0), FakeGpu(0)])


def test_gpu_set_resets_on_context_exit() -> None:
    a, b = FakeGpu(0), FakeGpu(1)
    with GpuSet([a, b]) as gs:
        gs.lock_all(900)
    assert a.calls == [("lock", 900), ("reset", None)]
    assert b.calls == [("lock", 900), ("reset", None)]
    assert a.released and b.released


def test_gpu_set_resets_on_exception_and_keeps_the_error() -> None:
    a, b = FakeGpu(0), FakeGpu(1)
    with pytest.raises(RuntimeError, match="controller crashed"), GpuSet([a, b]):
        a.lock_sm_clock(900)
        b.lock_sm_clock(900)
        b.deny_permission()  # b's reset will fail; that must not hide the original error
        raise RuntimeError("controller crashed")
    assert a.calls == [("lock", 900), ("reset", None)]
    assert b.calls == [("lock", 900)] and b.released


def test_close_only_resets_locked_gpus() -> None:
    a, b = FakeGpu(0), FakeGpu(1)
    gs = GpuSet([a, b])
    a.lock_sm_clock(900)
    gs.close()
    assert a.calls[-1] == ("reset", None)
    assert b.calls == []
    assert b.released


def test_close_tries_every_gpu_then_raises() -> None:
    a, b = FakeGpu(0), FakeGpu(1)
    a.lock_sm_clock(900)
    b.lock_sm_clock(900)
    a.fail("reset", GpuError(0, "reset_sm_clock", "boom", "none"))
    with pytest.raises(GpuError, match="boom"):
        GpuSet([a, b]).close()
    assert b.calls[-1] == ("reset", None)
    assert a.released and b.released


def test_sigterm_resets_clocks_and_exits() -> None:
    before = signal.getsignal(signal.SIGTERM)
    a = FakeGpu(0)
    gs = GpuSet([a])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        gs.install_sigterm_handler()
        a.lock_sm_clock(900)
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)  # the handler runs before this returns
        assert info.value.code == 128 + signal.SIGTERM
        assert a.calls == [("lock", 900), ("reset", None)]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sigterm_chains_to_a_previous_python_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        a = FakeGpu(0)
        gs = GpuSet([a])
        gs.install_sigterm_handler()
        a.lock_sm_clock(900)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]
        assert a.calls[-1] == ("reset", None)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_open_gpus_fake_and_validation() -> None:
    with open_gpus([0, 2], backend="fake", min_interval_s=0.0) as gs:
        assert gs.indices == [0, 2]
        assert all(isinstance(g, FakeGpu) for g in gs)
    with pytest.raises(InputError):
        open_gpus([1, 1], backend="fake")
    with pytest.raises(InputError):
        open_gpus([0], backend="rocm")  # type: ignore[arg-type]


def test_open_gpus_nvml_all_and_cleanup_on_failure(nvml: dict[str, mock.MagicMock]) -> None:
    with open_gpus(backend="nvml") as gs:
        assert gs.indices == [0, 1]
    with pytest.raises(GpuUnavailableError):
        open_gpus([0, 7], backend="nvml")
    # every nvmlInit is matched by an nvmlShutdown
    assert nvml["nvmlInit"].call_count == nvml["nvmlShutdown"].call_count


def test_module_imports_without_pynvml_at_import_time() -> None:
    for module in (gpu_mod, gpu_mod.base, gpu_mod.nvml, gpu_mod.fake, gpu_mod.gpuset):
        assert "pynvml" not in vars(module)


# -- self-check ----------------------------------------------------------------------------------


def test_selfcheck_without_nvml_exits_zero(nvml: dict[str, mock.MagicMock], capsys: pytest.CaptureFixture[str]) -> None:
    nvml["nvmlInit"].side_effect = _nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    assert selfcheck.main(["--idle-s", "0", "--workload-s", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nvml"] is False and "NVML" in out["reason"]


def test_selfcheck_reads_settings_in_si_and_touches_no_clock(
    nvml: dict[str, mock.MagicMock], capsys: pytest.CaptureFixture[str]
) -> None:
    nvml["nvmlDeviceGetTotalEnergyConsumption"].side_effect = [1_000_000, 1_250_000]
    assert selfcheck.main(["--idle-s", "0", "--workload-s", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["settings"]
    assert s["power_limit_w"] == pytest.approx(700.0) and s["power_limit_range_w"] == [200.0, 700.0]  # mW -> W
    assert s["applications_sm_clock_mhz"] == 1755 and s["max_sm_clock_mhz"] == 1980
    assert s["persistence_mode"] is True and s["mig_mode"] == [0, 0] and s["driver_version"] == "580.95.05"
    assert s["application_clocks_restricted"] is True and s["unreadable"] == {}
    assert out["idle"]["energy_delta_j"] == pytest.approx(250.0)
    assert out["supported_sm_clocks"] == {"count": 5, "min_mhz": 345, "max_mhz": 1980}
    assert out["clock_lock_permission"]["euid"] == os.geteuid()
    assert out["settings_unchanged"] is True and "lock" not in out
    # permission is reported, never tried: no clock is locked, and none reset (an operator's lock stays)
    nvml["nvmlDeviceSetGpuLockedClocks"].assert_not_called()
    nvml["nvmlDeviceResetGpuLockedClocks"].assert_not_called()


def test_selfcheck_unsupported_read_is_listed_not_fatal(nvml: dict[str, mock.MagicMock]) -> None:
    nvml["nvmlDeviceGetMigMode"].side_effect = _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    out = selfcheck.selfcheck(0, idle_s=0.0, workload_s=0.0)
    assert out["settings"]["mig_mode"] is None and "mig_mode" in out["settings"]["unreadable"]
    assert out["settings_unchanged"] is True


def test_selfcheck_reports_settings_that_changed(
    nvml: dict[str, mock.MagicMock], capsys: pytest.CaptureFixture[str]
) -> None:
    nvml["nvmlDeviceGetPowerManagementLimit"].side_effect = [700_000, 500_000]  # someone capped it meanwhile
    assert selfcheck.main(["--idle-s", "0", "--workload-s", "0"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["settings_unchanged"] is False and out["settings_changed"] == {"power_limit_w": [700.0, 500.0]}


def test_selfcheck_workload_without_cuda_says_so(nvml: dict[str, mock.MagicMock]) -> None:
    out = selfcheck.selfcheck(0, idle_s=0.0, workload_s=0.01)
    assert out["workload"]["ran"] is False and "CUDA" in out["workload"]["reason"]  # the CPU build of torch


def test_selfcheck_try_lock_is_opt_in_and_resets(nvml: dict[str, mock.MagicMock]) -> None:
    out = selfcheck.selfcheck(0, idle_s=0.0, workload_s=0.0, try_lock_mhz=990.0)
    assert out["lock"]["ok"] is True and out["lock"]["set_mhz"] == 1000
    nvml["nvmlDeviceResetGpuLockedClocks"].assert_called_once_with(HANDLE)


def test_selfcheck_try_lock_reports_permission(nvml: dict[str, mock.MagicMock]) -> None:
    nvml["nvmlDeviceSetGpuLockedClocks"].side_effect = _nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)
    out = selfcheck.selfcheck(0, idle_s=0.0, workload_s=0.0, try_lock_mhz=1000.0)
    assert out["lock"]["ok"] is False and out["lock"]["permission"] is False
    assert "root" in out["lock"]["error"]


# -- real GPU (skipped without NVML) --------------------------------------------------------------


def _nvml_available() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return int(pynvml.nvmlDeviceGetCount()) > 0
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA GPU with NVML")
def test_gpu_nvml_real_device() -> None:
    with GpuSet([NvmlGpu(0)]) as gs:
        g = gs[0]
        start_j = g.energy_j()
        time.sleep(0.5)
        assert g.energy_j() > start_j
        clocks = g.supported_sm_clocks_mhz()
        assert clocks and clocks == sorted(set(clocks))
        assert g.power_w() > 0
        target = clocks[len(clocks) // 2]
        try:
            assert g.lock_sm_clock(target) == target
        except GpuPermissionError:
            pytest.skip("no permission to lock clocks (needs root/admin)")
        time.sleep(0.2)
        assert g.sm_clock_mhz() <= clocks[-1]
        g.reset_sm_clock()
        assert g.locked_sm_clock_mhz is None


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA GPU with NVML")
def test_selfcheck_real_device_energy_moves_and_settings_stay() -> None:
    out = selfcheck.selfcheck(0, idle_s=1.0, workload_s=2.0)
    assert out["nvml"] is True and out["settings_unchanged"] is True
    assert out["idle"]["energy_delta_j"] > 0
    if out["workload"].get("ran"):
        assert out["workload"]["mean_power_from_energy_w"] > out["idle"]["mean_power_from_energy_w"]
