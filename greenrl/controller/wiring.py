"""Run an exported controller against a live vLLM server or the digital twin: the command line and its wiring.

``build_parser`` holds the flags, ``build_controller`` turns them into a ``ServingController`` with its
observer and knob backend (``TwinBackend`` with ``--twin``, else ``GpuBackend`` with the admission
proxy and the launcher as asked), and ``main`` runs it until SIGTERM / SIGINT.

Public names: build_controller, build_parser, main.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from greenrl.controller.loop import ServingController
from greenrl.core import KnobBackend, Knobs
from greenrl.env.observation import ObservationBuilder
from greenrl.errors import InputError, exit_on_input_error
from greenrl.live.backends import GpuBackend, TwinBackend
from greenrl.live.deadline import PrefillDeadline
from greenrl.live.launcher import DEFAULT_COMMAND, LaunchError, ServerLauncher
from greenrl.live.observe import LiveObserver
from greenrl.live.proxy import AdmissionProxy
from greenrl.policy import ControllerPolicy
from greenrl.slo import SloJudge

if TYPE_CHECKING:
    from greenrl.env.scenario import Scenario

__all__ = ["build_controller", "build_parser", "main"]

logger = logging.getLogger(__name__)

PREFILL_CLOCK_MIN_INTERVAL_S = 0.05
"""Default GPU clock rate limit for a policy with a prefill clock: the simulator's ``clock_latency_s``."""


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m greenrl.controller``."""
    p = argparse.ArgumentParser(prog="python -m greenrl.controller", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="exported controller folder (controller.json + policy.npz)")
    p.add_argument("--vllm-url", default=None, help="the server's base URL (default with --launch: its own)")
    p.add_argument("--interval-s", type=float, default=30.0, help="control interval (s; default 30)")
    p.add_argument("--shadow", action="store_true", help="decide and log, never change a knob")
    p.add_argument("--gpus", default=None, help="NVML indices '0,1,...' or 'fake' (default: all; unused with --twin)")
    p.add_argument(
        "--clock-min-interval-s",
        type=float,
        default=None,
        help="fewest seconds between two SM clock changes of a GPU (default: 0.05 for a policy with a "
        "prefill_sm_clock_mhz knob, as the simulator assumes; else 1.0)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on port N (0: off)")
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics listen on (default 127.0.0.1, loopback only; another address is warned about)",
    )
    p.add_argument("--decision-log", default=None, help="JSON-lines decision log (default: none; '-': stdout)")
    p.add_argument("--max-intervals", type=int, default=None, help="stop after N decisions (default: run forever)")
    p.add_argument("--twin", action="store_true", help="the server is greenrl's twin: knobs and energy over HTTP")
    p.add_argument("--default-tp", type=int, default=None, help="TP of the safe default (default: largest TP knob)")
    p.add_argument("--scenario", default=None, help="scenario for GPU count, TDP and SLOs (default: the manifest's)")
    p.add_argument(
        "--min-dwell-intervals",
        type=int,
        default=None,
        help="fewest intervals between two TP (and two replica) changes (default: the scenario's min_dwell_steps)",
    )
    p.add_argument("--max-backoff-s", type=float, default=None, help="longest retry wait (default: 4 x interval)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="HTTP timeout (s; default 5)")
    g = p.add_argument_group("real node: admission proxy and launcher (not with --twin)")
    g.add_argument("--proxy-port", type=int, default=None, help="run the admission proxy on 127.0.0.1:N (0: free)")
    g.add_argument(
        "--proxy-max-wait-s",
        type=float,
        default=300.0,
        help="longest a proxy client waits for the first byte of its answer before a 504 (s; 300)",
    )
    g.add_argument("--launch", action="store_true", help="start and own the server (needed for TP changes)")
    g.add_argument(
        "--clock-helper",
        default=None,
        help="Unix socket of the privileged clock helper (python -m greenrl.live.clockd, run as root): the "
        "controller then runs unprivileged and asks it for SM clock changes (default: NVML directly)",
    )
    g.add_argument("--launch-command", default=DEFAULT_COMMAND, help="server command template (default: vllm serve)")
    g.add_argument("--model", default=None, help="{model} of the launch command (Hugging Face id or path)")
    g.add_argument("--server-port", type=int, default=None, help="{port} of the launched server (default: 8000)")
    g.add_argument("--server-log", default=None, help="file for the launched server's output (default: temp dir)")
    g.add_argument("--launch-timeout-s", type=float, default=900.0, help="longest server start-up (s; 900)")
    g.add_argument("--drain-timeout-s", type=float, default=120.0, help="longest drain before a restart (s; 120)")
    g.add_argument(
        "--prefill-clock-ttft-s",
        default=None,
        help="TTFT target of the prefill clock governor (s), or 'none' for the prefill clock whenever a "
        "request is pending (default: the policy's prefill_clock.ttft_target_s)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return p


def _prefill_target(policy: ControllerPolicy, flag: str | None) -> float | None:
    """The deadline governor's TTFT target: ``--prefill-clock-ttft-s``, else the policy's (None: off)."""
    if flag is None:
        return policy.prefill_clock_ttft_s
    if flag.strip().lower() == "none":
        return None
    try:
        target = float(flag)
    except ValueError:
        target = math.nan
    if not (math.isfinite(target) and target >= 0):
        raise InputError(
            "--prefill-clock-ttft-s", "ttft_target_s", f"{flag!r} is not a time >= 0 s", "e.g. 0.2 or none"
        )
    return target


def _parse_gpus(spec: str | None) -> tuple[list[int] | None, str]:
    if spec is None:
        return None, "nvml"
    if spec == "fake":
        return None, "fake"
    try:
        return [int(x) for x in spec.split(",") if x.strip()], "nvml"
    except ValueError:
        raise InputError("--gpus", "gpus", f"{spec!r} is not a list of indices", "e.g. 0,1 or fake") from None


def _check_flags(args: argparse.Namespace) -> None:
    if not args.interval_s > 0 or not math.isfinite(args.interval_s):
        raise InputError("--interval-s", "interval_s", f"{args.interval_s} is not > 0", "e.g. 30")
    if args.max_intervals is not None and args.max_intervals < 1:
        raise InputError("--max-intervals", "max_intervals", f"{args.max_intervals} < 1", "give N >= 1")
    if not 0 <= args.metrics_port <= 65535:
        raise InputError("--metrics-port", "port", f"{args.metrics_port} out of range", "use 0 (off) to 65535")
    if args.min_dwell_intervals is not None and args.min_dwell_intervals < 0:
        raise InputError("--min-dwell-intervals", "min_dwell_intervals", f"{args.min_dwell_intervals} < 0", "e.g. 10")


def build_controller(
    args: argparse.Namespace, decision_log: IO[str] | None, sleep: Callable[[float], bool] | None = None
) -> ServingController:
    """The controller the CLI's arguments describe (``sleep``: see ``ServingController``)."""
    from greenrl.catalog import load_gpu
    from greenrl.env.scenario import load_scenario
    from greenrl.policy import load_controller

    _check_flags(args)
    base = _server_url(args)
    folder = Path(args.checkpoint)
    if not folder.is_dir():
        raise InputError("--checkpoint", "checkpoint", f"{folder} is not a folder", "give an exported controller")
    policy = load_controller(folder)
    target = _prefill_target(policy, args.prefill_clock_ttft_s)
    scenario = load_scenario(args.scenario or policy.manifest["scenario"])
    builder = ObservationBuilder.for_scenario(scenario, load_gpu(scenario.node.gpu))
    backend: KnobBackend
    proxy: AdmissionProxy | None = None
    if args.twin:
        backend = TwinBackend(base, timeout_s=args.timeout_s)
        start_hour = scenario.workload.start_hour
        # the twin's simulated clock: rates and power per simulated second, its time of day
        observer = LiveObserver(
            base, backend, builder, hour_at=lambda t_s: start_hour + t_s / 3600.0, timeout_s=args.timeout_s
        )
    else:
        backend, proxy = _gpu_backend(args, policy, scenario, base, target)
        observer = LiveObserver(base, backend, builder, front_end=proxy, timeout_s=args.timeout_s)
    dwell = scenario.control.min_dwell_steps if args.min_dwell_intervals is None else args.min_dwell_intervals
    controller = ServingController(
        policy,
        observer,
        backend,
        gpus=scenario.node.gpus,
        default_tp=args.default_tp,
        shadow=args.shadow,
        interval_s=args.interval_s,
        max_backoff_s=args.max_backoff_s,
        min_dwell_intervals=dwell,
        guard_grow_queue=scenario.control.guard_grow_queue,
        decision_log=decision_log,
        sleep=sleep,
    )
    if isinstance(backend, GpuBackend):
        _start_server_side(controller, backend, proxy)
    return controller


def _gpu_backend(
    args: argparse.Namespace, policy: ControllerPolicy, scenario: Scenario, base: str, target: float | None
) -> tuple[GpuBackend, AdmissionProxy | None]:
    """A real node's backend: the GPUs, and the admission proxy and launcher the flags ask for."""
    from greenrl.live.gpu import DEFAULT_MIN_INTERVAL_S, open_gpus

    indices, kind = _parse_gpus(args.gpus)
    launcher = None
    if args.launch:
        launcher = ServerLauncher(
            args.launch_command,
            model=args.model or "",
            port=int(base.rsplit(":", 1)[1]),
            gpus=indices,
            log_path=args.server_log,
            health_timeout_s=args.launch_timeout_s,
            drain_timeout_s=args.drain_timeout_s,
        )
    proxy = None
    if args.proxy_port is not None:
        slo = SloJudge.from_scenario(scenario)
        if not (math.isfinite(args.proxy_max_wait_s) and args.proxy_max_wait_s > 0):
            raise InputError("--proxy-max-wait-s", "max_wait_s", f"{args.proxy_max_wait_s} is not > 0", "e.g. 300")
        proxy = AdmissionProxy(
            base,
            port=args.proxy_port,
            slo=slo,
            connect_timeout_s=args.timeout_s,
            max_wait_s=args.proxy_max_wait_s,
            retry_wait_s=args.proxy_max_wait_s,
        )
    phase_aware = "prefill_sm_clock_mhz" in policy.knob_names
    min_interval_s = args.clock_min_interval_s
    if min_interval_s is None:
        # a phase-aware policy was trained with 50 ms clock switches; a plain one changes the clock per interval
        min_interval_s = PREFILL_CLOCK_MIN_INTERVAL_S if phase_aware else DEFAULT_MIN_INTERVAL_S
    if not (math.isfinite(min_interval_s) and min_interval_s >= 0):
        raise InputError("--clock-min-interval-s", "min_interval_s", f"{min_interval_s} is not >= 0", "e.g. 0.05")
    gpu_set = open_gpus(indices, kind, min_interval_s=min_interval_s)  # type: ignore[arg-type]
    if args.clock_helper is not None:
        from greenrl.live.clockd import helper_gpus

        gpu_set = helper_gpus(list(gpu_set), args.clock_helper, min_interval_s=min_interval_s)
    gpu_set.install_sigterm_handler()
    deadline = None
    if target is not None and proxy is not None and phase_aware:
        n = scenario.node
        deadline = PrefillDeadline(n.model, n.gpu, target, stack=n.stack)
        logger.info("prefill clock: the deadline governor, TTFT target %.3f s", target)
    values = dict(zip(policy.knob_names, policy.knob_values, strict=True))
    # with a proxy enforcing max_num_seqs, the server starts with the largest value so the cap can go up
    overrides = {"max_num_seqs": max(values.get("max_num_seqs", [256]))} if proxy is not None else {}
    backend = GpuBackend(
        gpu_set,
        proxy=proxy,
        launcher=launcher,
        launch_overrides=overrides,
        drain_timeout_s=args.drain_timeout_s,
        stop_server_on_close=True,
        owns_proxy=True,
        deadline=deadline,
        proxy_hint=" (run the controller with --proxy-port)",
        launcher_hint=" (run the controller with --launch)",
    )
    return backend, proxy


def _server_url(args: argparse.Namespace) -> str:
    """The server's base URL from ``--vllm-url`` / ``--server-port``; checks the flags that go together."""
    if args.twin and (args.launch or args.proxy_port is not None):
        raise InputError(
            "--twin",
            "twin",
            "--launch and --proxy-port drive a real server's process and admissions",
            "to rehearse them on the twin, leave out --twin and give --gpus fake and a twin --launch-command",
        )
    for flag, port in (("--proxy-port", args.proxy_port), ("--server-port", args.server_port)):
        if port is not None and not 0 <= port <= 65535:
            raise InputError(flag, "port", f"{port} is out of range", "use 0 to 65535")
    if args.vllm_url is None:
        if not args.launch:
            raise InputError("--vllm-url", "url", "is required without --launch", "e.g. http://127.0.0.1:8000")
        return f"http://127.0.0.1:{args.server_port or 8000}"
    if not args.vllm_url.startswith(("http://", "https://")):
        raise InputError("--vllm-url", "url", f"{args.vllm_url!r} is not an http(s) URL", "http://127.0.0.1:8000")
    base = args.vllm_url.rstrip("/")
    if args.launch:
        parsed = urllib.parse.urlsplit(base)
        if parsed.hostname not in ("127.0.0.1", "localhost") or parsed.path:
            raise InputError("--vllm-url", "url", f"{base} is not a local server", "leave it out with --launch")
        port = args.server_port or parsed.port or 8000
        base = f"http://127.0.0.1:{port}"
    return base


def _start_server_side(controller: ServingController, backend: GpuBackend, proxy: AdmissionProxy | None) -> None:
    """Start the proxy, then the owned server at the safe default; undo both if the server fails."""
    safe = Knobs(**controller.safe)
    try:
        if proxy is not None:
            proxy.set_cap(safe.max_num_seqs * safe.replicas)
            logger.info("admission proxy: send requests to %s", proxy.start())
        if backend.owns_server:
            backend.start(safe)
        else:
            backend.assume(safe)  # the server runs at --default-tp; its layout cannot change
        controller.believe_in_force(backend.read().requested or safe)
    except LaunchError as err:
        backend.close()
        raise InputError("--launch-command", "command", f"the server did not start: {err}", "fix the command") from None
    except BaseException:
        backend.close()
        raise


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Run the controller until SIGTERM / SIGINT or ``--max-intervals`` decisions."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log: IO[str] | None = None
    if args.decision_log == "-":
        log = sys.stdout
    elif args.decision_log:
        path = Path(args.decision_log)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = path.open("a")
    try:
        controller = build_controller(args, log)
        backend = controller.backend
        if isinstance(backend, GpuBackend):
            if backend.proxy is None:
                logger.warning("no admission proxy (--proxy-port): max_num_seqs changes are only logged")
            if not backend.owns_server:
                logger.warning("the server is not owned (--launch): TP changes are refused and logged")

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: stopping", signum)
            controller.stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            if args.metrics_port:
                port = controller.serve_metrics(args.metrics_port, args.metrics_host)
                logger.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
            mode = "shadow" if args.shadow else "live"
            logger.info("controlling %s every %.1f s (%s mode)", args.vllm_url, args.interval_s, mode)
            made = controller.run(args.max_intervals)
            logger.info("stopped after %d decisions; fallbacks: %s", made, controller.fallback_counts or "none")
        finally:
            controller.close()
    finally:
        if log is not None and log is not sys.stdout:
            log.close()
    return 0
