"""GPU facts (memory, bandwidth, peak FLOP/s, power, SM clock range) from ``greenrl/data/gpus.json``.

Public names: GpuSpec, load_gpu, gpu_names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from greenrl.errors import InputError

__all__ = ["GpuSpec", "gpu_names", "load_gpu"]


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU type. SI units throughout.

    Attributes:
        name: greenrl's key, e.g. ``h100-sxm-80gb``.
        chip: silicon family whose fitted efficiencies apply (``a100``, ``h100``).
        interconnect: key of the all-reduce profile for TP groups on this GPU.
        memory_bytes: HBM capacity per GPU (B).
        mem_bandwidth_bps: peak HBM bandwidth (B/s).
        bf16_flops: dense BF16 tensor-core peak (FLOP/s).
        fp8_flops: dense FP8 peak (FLOP/s), or the BF16 peak where FP8 is unsupported.
        tdp_w: board power limit (W).
        idle_power_w: power of an idle GPU (W).
        max_sm_clock_mhz, min_sm_clock_mhz, sm_clock_step_mhz: the settable SM clock grid (MHz).
    """

    name: str
    chip: str
    interconnect: str
    memory_bytes: float
    mem_bandwidth_bps: float
    bf16_flops: float
    fp8_flops: float
    tdp_w: float
    idle_power_w: float
    max_sm_clock_mhz: int
    min_sm_clock_mhz: int
    sm_clock_step_mhz: int

    def supported_clocks_mhz(self) -> list[int]:
        """Every settable SM clock, ascending (MHz)."""
        return list(range(self.min_sm_clock_mhz, self.max_sm_clock_mhz + 1, self.sm_clock_step_mhz))

    def check_clock(self, sm_clock_mhz: float, where: str = "--sm-clock-mhz") -> int:
        """Return the clock as an int if it is on this GPU's grid, else raise naming the nearest valid ones."""
        clocks = self.supported_clocks_mhz()
        if sm_clock_mhz in clocks:
            return int(sm_clock_mhz)
        lo = max((c for c in clocks if c <= sm_clock_mhz), default=clocks[0])
        hi = min((c for c in clocks if c >= sm_clock_mhz), default=clocks[-1])
        nearest = sorted({lo, hi})
        raise InputError(
            where,
            "sm_clock_mhz",
            f"{sm_clock_mhz:g} MHz is not a supported clock of {self.name} "
            f"({self.min_sm_clock_mhz}-{self.max_sm_clock_mhz} MHz in {self.sm_clock_step_mhz} MHz steps)",
            f"use {' or '.join(str(c) for c in nearest)}",
        )


@cache
def _catalog() -> dict[str, GpuSpec]:
    raw = json.loads(resources.files("greenrl").joinpath("data/gpus.json").read_text())
    out: dict[str, GpuSpec] = {}
    for g in raw["gpus"]:
        bf16 = float(g["bf16_dense_tflops"]) * 1e12
        spec = GpuSpec(
            name=g["name"],
            chip=g["chip"],
            interconnect=g["interconnect"],
            memory_bytes=float(g["memory_gb"]) * 1e9,
            mem_bandwidth_bps=float(g["mem_bandwidth_gbps"]) * 1e9,
            bf16_flops=bf16,
            fp8_flops=float(g["fp8_dense_tflops"]) * 1e12 if g["fp8_dense_tflops"] else bf16,
            tdp_w=float(g["tdp_w"]),
            idle_power_w=float(g["idle_power_w"]),
            max_sm_clock_mhz=int(g["max_sm_clock_mhz"]),
            min_sm_clock_mhz=int(g["min_sm_clock_mhz"]),
            sm_clock_step_mhz=int(g["sm_clock_step_mhz"]),
        )
        for key in [g["name"], *g["aliases"]]:
            out[key.lower()] = spec
    return out


def gpu_names() -> list[str]:
    """The canonical names of the built-in GPUs."""
    return sorted({g.name for g in _catalog().values()})


def load_gpu(name: str, where: str = "--gpu") -> GpuSpec:
    """Look up a GPU by name or alias (case-insensitive)."""
    try:
        return _catalog()[name.lower()]
    except KeyError:
        raise InputError(where, "gpu", f"unknown GPU {name!r}", f"use one of {', '.join(gpu_names())}") from None
