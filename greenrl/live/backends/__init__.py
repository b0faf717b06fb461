"""Knob backends: the one stack through which ``LiveNode`` and the serving controller reach a live node.

Both implement ``greenrl.core.KnobBackend`` (read the clock, energy and knobs in force; apply knobs;
restore a safe state on close):

* ``TwinBackend`` (``twin.py``): the digital twin's ``/greenrl/state`` and ``/greenrl/knobs``;
* ``GpuBackend`` (``gpu.py``): a real node's GPUs through NVML (``greenrl.live.clock`` for the SM
  clock knobs), an admission proxy for ``max_num_seqs``, a launcher for TP / replica restarts
  (``restart.py``).

Public names: AdmissionControl, BackendError, GpuBackend, Relauncher, ServerLayout, TwinBackend.
"""

from __future__ import annotations

from greenrl.live.backends.gpu import GpuBackend
from greenrl.live.backends.restart import AdmissionControl, Relauncher, ServerLayout
from greenrl.live.backends.twin import BackendError, TwinBackend

__all__ = ["AdmissionControl", "BackendError", "GpuBackend", "Relauncher", "ServerLayout", "TwinBackend"]
