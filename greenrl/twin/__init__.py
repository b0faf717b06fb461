"""Digital twin: a loopback HTTP server that speaks vLLM's OpenAI-compatible protocol, served by the simulator.

``python -m greenrl.twin --port 8000 --scenario tiny --time-scale 10`` serves ``GET /health``,
``GET /metrics`` (vLLM's Prometheus names), ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` (streaming or not) and two twin-only endpoints, ``POST /greenrl/knobs`` and
``GET /greenrl/state``. Every completion is injected into a ``SimNode`` as a live arrival; its tokens
are sent when the simulated request produces them, mapped to wall time by ``--time-scale`` (simulated
seconds per wall second).
See ``docs/twin.md`` for the protocol subset, the injection design and its limits.

Modules, one job each: ``livesim`` (``LiveSim``: the simulator hook), ``protocol`` (request checks,
response shapes), ``server`` (``TwinServer``: HTTP and the simulation driver), ``inprocess``
(``serving_in_thread``: a twin on a loop thread of this process), ``prometheus`` (``render_metrics``),
``cli`` (``main``).

Only the standard library, numpy, the simulator and ``greenrl.live.http`` / ``greenrl.live.tokens`` are
used (no optional dependency).

Public names: CapacityError, LiveSim, RequestProgress, TwinServer, main, prompt_token_count,
render_metrics, serving_in_thread.
"""

from greenrl.twin.cli import main
from greenrl.twin.inprocess import serving_in_thread
from greenrl.twin.livesim import CapacityError, LiveSim, RequestProgress
from greenrl.twin.prometheus import render_metrics
from greenrl.twin.protocol import prompt_token_count
from greenrl.twin.server import TwinServer

__all__ = [
    "CapacityError",
    "LiveSim",
    "RequestProgress",
    "TwinServer",
    "main",
    "prompt_token_count",
    "render_metrics",
    "serving_in_thread",
]
