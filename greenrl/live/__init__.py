"""Live serving node: real GPUs and a real vLLM server (the ``[live]`` extra).

Modules, one job each: ``gpu`` (NVML energy counter and clocks; ``FakeGpu``), ``metrics`` (vLLM's
``/metrics`` parser), ``snapshot`` (a live interval as a ``NodeSnapshot``: backend readings, scrapes,
front-end counts; shared by ``node`` and ``observe``), ``observe`` (the controller's observation),
``backends`` (the one knob stack, ``greenrl.core.KnobBackend``: ``TwinBackend`` for the twin, ``GpuBackend``
for NVML + proxy + launcher), ``launcher`` (start / drain-restart / stop a server from a command template),
``proxy`` (package: admission cap = ``max_num_seqs``, forwarding,
front-end counters and SLO verdicts), ``pending`` (the proxy's pending load and
earliest boost time), ``governor`` (the prefill SM clock while requests await a first token), ``deadline``
(when a request needs that clock: the deadline governor's prediction), ``clock`` (the SM clock knobs: a
direct lock or the governor), ``loadgen`` (package: replays a workload against the OpenAI API), ``node``
(``LiveNode``: the ``Node`` protocol over a live server), ``http`` (small asyncio HTTP helpers shared
with the twin), ``tokens`` (prompt and stream token counting shared by the twin, proxy and load generator),
``selfcheck`` (one GPU's NVML readings, settings and energy under a torch workload, as JSON).

Public names here: Gpu, NvmlGpu, FakeGpu, GpuSet, open_gpus, snap_clock_mhz, GpuError, GpuPermissionError,
GpuNotSupportedError, GpuUnavailableError (all from ``greenrl.live.gpu``); import the others from their
modules (``greenrl.live.node`` imports the env).

Importing this package imports no optional dependency: ``pynvml`` is imported only when an ``NvmlGpu`` is
created, so the package loads on a CPU-only machine.
"""

from __future__ import annotations

from greenrl.live.gpu import (
    FakeGpu,
    Gpu,
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuSet,
    GpuUnavailableError,
    NvmlGpu,
    open_gpus,
    snap_clock_mhz,
)

__all__ = [
    "FakeGpu",
    "Gpu",
    "GpuError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuSet",
    "GpuUnavailableError",
    "NvmlGpu",
    "open_gpus",
    "snap_clock_mhz",
]
