"""The serving controller: every interval, observe a live server, ask an exported policy, set the knobs.

``python -m greenrl.controller --checkpoint checkpoints/default/maskable_ppo_s0 --vllm-url URL --twin``
drives the digital twin (knobs through ``POST /greenrl/knobs``, clock and energy from
``GET /greenrl/state``); without ``--twin`` it drives a vLLM node (``greenrl.live.backends.GpuBackend``):
the SM clock through NVML; ``max_num_seqs`` as the cap of the admission proxy (``--proxy-port``,
``greenrl.live.proxy``), which clients then send to and which also counts arrivals and SLO outcomes; and
a TP change as a drained restart of a server the controller started itself (``--launch``,
``greenrl.live.launcher``). A policy with a ``prefill_sm_clock_mhz`` knob gets a phase-aware clock
(``greenrl.live.governor``) driven by the proxy's count of requests pending their first token; with the
TTFT target the policy was trained with (``prefill_clock.ttft_target_s`` in controller.json, or
``--prefill-clock-ttft-s``) only once a pending request would, at the base clock, miss it
(``greenrl.live.deadline``). Without the proxy ``max_num_seqs`` and ``prefill_sm_clock_mhz`` are logged
as "would apply"; without ``--launch`` a TP change is refused and logged. ``--shadow`` decides and logs
but changes nothing. The controller observes and sets knobs with the same code as ``LiveNode``
(``greenrl.live.snapshot``, ``greenrl.env.observation``, ``greenrl.live.backends``) and follows the env's
replicas and dwell rules (``greenrl.core``). It never rejects or drops a client request: the proxy only
delays admissions and holds them over a restart. See ``docs/controller.md``.

Modules, one job each: ``loop`` (``ServingController``: observe -> decide -> apply, fallbacks),
``telemetry`` (Prometheus series, decision log), ``wiring`` (the command line: ``build_parser``,
``build_controller``, ``main``).

Public names: FALLBACK_REASONS, ServingController, build_controller, build_parser, main.
"""

from __future__ import annotations

from greenrl.controller.loop import ServingController
from greenrl.controller.telemetry import FALLBACK_REASONS
from greenrl.controller.wiring import build_controller, build_parser, main

__all__ = ["FALLBACK_REASONS", "ServingController", "build_controller", "build_parser", "main"]
