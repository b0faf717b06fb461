"""``python -m greenrl.live.loadgen``: replay a scenario's request window against a server and print a summary.

Public names: main, scenario_trace.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from typing import Any

import numpy as np

from greenrl.errors import InputError, exit_on_input_error
from greenrl.ioutil import atomic_write_text
from greenrl.live.loadgen.generator import LoadGenerator
from greenrl.live.loadgen.summary import RequestSlo, summarize
from greenrl.workload import Trace

__all__ = ["main", "scenario_trace"]


def scenario_trace(scenario: Any, window: str = "eval:0", seed: int = 0) -> Trace:
    """A scenario's request window: ``eval:I`` (the I-th held-out window) or ``train`` (drawn from ``seed``).

    Raises:
        InputError: on an unknown window spec.
    """
    from greenrl.env.scenario import Scenario, load_scenario
    from greenrl.env.serving_env import episode_workload

    s: Scenario = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
    if window == "train":
        trace: Trace = episode_workload(s, "train", 0)(np.random.default_rng(seed))
        return trace
    kind, _, index = window.partition(":")
    if kind != "eval" or not index.isdigit():
        raise InputError("--window", "window", f"unknown window {window!r}", "use eval:0, eval:1, ... or train")
    trace = episode_workload(s, "eval", int(index))(np.random.default_rng(seed))
    return trace


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m greenrl.live.loadgen",
        description="Load generator: replay a workload against an OpenAI-compatible completions endpoint, streaming.",
    )
    p.add_argument("--url", required=True, help="server or proxy base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--scenario", default="tiny", help="scenario name in envs/ or a YAML path (default: tiny)")
    p.add_argument("--window", default="eval:0", help="eval:I (held-out window I) or train (default: eval:0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the train window and the prompt ids (default: 0)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="workload s per wall s, as the twin's; above 1 no client-side latency/SLO is reported (default: 1)",
    )
    p.add_argument("--duration-s", type=float, default=None, help="send requests arriving before this (workload s)")
    p.add_argument("--max-concurrency", type=int, default=256, help="most requests in flight (default: 256)")
    p.add_argument("--model", default=None, help="model name (default: the server's first in /v1/models)")
    p.add_argument("--request-timeout-s", type=float, default=600.0, help="longest request, wall s (default: 600)")
    p.add_argument("--drain-timeout-s", type=float, default=60.0, help="wait after the last send, wall s (default: 60)")
    p.add_argument("--json", default=None, help="write one JSON line per request here (atomically)")
    return p


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Replay a scenario's window against a server; print a summary (and per-request JSON lines)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from greenrl.env.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if args.duration_s is not None and not args.duration_s > 0:
        raise InputError("--duration-s", "duration_s", f"must be > 0, got {args.duration_s}", "pass e.g. 60")
    trace = scenario_trace(scenario, args.window, args.seed)
    gen = LoadGenerator(
        args.url,
        trace,
        model=args.model,
        time_scale=args.time_scale,
        max_concurrency=args.max_concurrency,
        duration_s=args.duration_s,
        request_timeout_s=args.request_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
        seed=args.seed,
    )
    interrupted = False
    try:
        asyncio.run(gen.run())
    except KeyboardInterrupt:
        interrupted = True
    records = sorted(gen.records(), key=lambda r: r.index)
    summary = summarize(records, RequestSlo.from_scenario(scenario), args.time_scale)
    summary.update(trace=trace.name, wall_s=round(gen.elapsed_s(), 3), interrupted=interrupted)
    if args.json:
        atomic_write_text(args.json, "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))
        summary["json"] = args.json
    if not summary["latency_measured"]:
        print(f"note: {summary['latency_not_measured']}", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 130 if interrupted else 0
